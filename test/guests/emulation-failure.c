/* emulation-failure: runs LOCK CMPXCHG16B, which hardware KVM executes natively and KVM's instruction
 * emulator cannot (KVM_EXIT_INTERNAL_ERROR on emulated/nested KVM such as PVM). */
#include "runtime/guest.h"

static u64 slot[2] __attribute__((aligned(16)));

int main(struct boot_info *bi) {
  (void)bi;
  printf("emulation-failure: running cmpxchg16b\n");
  u64 lo = 0, hi = 0;
  __asm__ volatile("lock cmpxchg16b (%4)" : "+a"(lo), "+d"(hi) : "b"(1ULL), "c"(2ULL), "r"(slot) : "memory");
  printf("emulation-failure: instruction ran natively\n");
  return 0;
}
