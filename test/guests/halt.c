/* halt: stops with interrupts disabled; a VMM must end the VM instead of waiting forever. */
#include "runtime/guest.h"

int main(struct boot_info *bi) {
  (void)bi;
  printf("halt: stopping with interrupts disabled\n");
  for (;;) __asm__ volatile("cli; hlt");
}
