/* serial-echo: echoes every byte received on COM1, taken in the UART's receive interrupt (IRQ 4 through the
 * IOAPIC to the local APIC, handled in long mode and returned from with IRETQ); 'q' ends it. */
#include "runtime/guest.h"

#define LAPIC 0xfee00000ULL
#define IOAPIC 0xfec00000ULL
#define VECTOR 0x24

struct idt_entry { u16 off0, sel; u8 ist, attr; u16 off1; u32 off2, zero; } __attribute__((packed));
static struct idt_entry idt[256] __attribute__((aligned(16)));
static volatile u32 interrupts;
static volatile int quit;

static void set_gate(int vector, void (*fn)(void)) {
  u64 a = (u64)fn;
  idt[vector] = (struct idt_entry){ (u16)a, 0x18, 0, 0x8e, (u16)(a >> 16), (u32)(a >> 32), 0 };
}

static void ioapic_write(u32 reg, u32 v) { mmio_write32(IOAPIC, reg); mmio_write32(IOAPIC + 0x10, v); }

void interrupt_handler(int vector) {
  (void)vector;
  interrupts++;
  while (inb(0x3f8 + 5) & 1) {
    char c = (char)inb(0x3f8);
    putc(c);
    if (c == 'q') quit = 1;
  }
  mmio_write32(LAPIC + 0xb0, 0); /* EOI */
}

int main(struct boot_info *bi) {
  (void)bi;
  outb(0x21, 0xff);                                   /* mask both 8259s */
  outb(0xa1, 0xff);
  set_gate(VECTOR, isr_serial);
  set_gate(0xff, isr_spurious);
  struct { u16 limit; u64 base; } __attribute__((packed)) idtr = { sizeof idt - 1, (u64)idt };
  __asm__ volatile("lidt %0" : : "m"(idtr));
  mmio_write32(LAPIC + 0x80, 0);                      /* TPR: accept everything */
  mmio_write32(LAPIC + 0xf0, 0x1ff);                  /* SVR: enable, spurious vector 0xff */
  u32 apic_id = mmio_read32(LAPIC + 0x20) >> 24;
  ioapic_write(0x10 + 2 * 4 + 1, apic_id << 24);      /* pin 4: destination */
  ioapic_write(0x10 + 2 * 4, VECTOR);                 /* fixed, physical, edge, active high, unmasked */
  outb(0x3f8 + 1, 0x01);                              /* IER: received data available */
  outb(0x3f8 + 4, 0x0b);                              /* MCR: DTR, RTS, OUT2 */
  printf("serial-echo: ready\n");
  while (!quit) __asm__ volatile("sti; hlt; cli");
  printf("\nserial-echo: bye after %u interrupts\n", interrupts);
  return 0;
}
