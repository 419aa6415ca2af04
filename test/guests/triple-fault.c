/* triple-fault: with an empty IDT, #UD cannot be delivered, nor can the #DF that follows: a triple fault. */
#include "runtime/guest.h"

int main(struct boot_info *bi) {
  (void)bi;
  printf("triple-fault: loading an empty IDT\n");
  struct { u16 limit; u64 base; } __attribute__((packed)) idtr = { 0, 0 };
  __asm__ volatile("lidt %0; ud2" : : "m"(idtr));
  return 0x7d;
}
