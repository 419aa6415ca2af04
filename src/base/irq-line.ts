// The one thing a device knows about interrupt delivery: a line it drives. Implemented by the VM (in-kernel
// PIC/IOAPIC through KVM_IRQ_LINE) and by tests.
/** An interrupt line of the platform (an ISA IRQ on the in-kernel PIC/IOAPIC, or a GSI). */
export interface IrqLine {
  /** Drives the line: true = asserted. Edge-triggered inputs see the 0→1 change. */
  set(level: boolean): void;
}
