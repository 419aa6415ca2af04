/* exits: count=N byte writes to port 0x80 in a tight loop; each is one exit to the VMM (benchmark guest). */
#include "runtime/guest.h"

int main(struct boot_info *bi) {
  (void)bi;
  u64 n = cmdline_number("count", 1000000);
  printf("exits: %lu port writes\n", n);
  if (n) __asm__ volatile("1: outb %%al, $0x80\n\tdec %0\n\tjnz 1b" : "+c"(n) : "a"(0) : "memory");
  printf("exits: done\n");
  return 0;
}
