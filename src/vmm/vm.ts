// One KVM virtual machine: its fd, in-kernel irqchip (PIC + IOAPIC + per-vCPU LAPICs) and PIT, the TSS and
// identity-map pages KVM needs on Intel, its memory slots (RAM, ROM, device memory), and its interrupt lines.
import { ioctls, kvm_irq_level, kvm_pit_config, KVM_PIT_SPEAKER_DUMMY } from '../kvm/abi.js';
import type { KvmSystem } from '../kvm/system.js';
import { check, native } from '../native/index.js';
import { KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS, ramRanges } from '../arch/x86_64/layout.js';
import type { IrqLine } from '../base/irq-line.js';
import type { GuestMemory, RamRange } from '../base/guest-memory.js';
import { MemorySlots } from './memory-slots.js';

export class Vm {
  private constructor(
    readonly fd: number,
    readonly slots: MemorySlots,
    readonly memory: GuestMemory,
  ) {}

  /**
   * A VM with its interrupt controllers and `ram` registered as guest RAM (a size: laid out below the PCI hole,
   * then above 4 GiB); more slots (ROM, device memory) come through `slots`.
   */
  static create(kvm: KvmSystem, ram: number | readonly RamRange[]): Vm {
    const fd = check(native.ioctl(kvm.fd, ioctls.KVM_CREATE_VM, 0), 'KVM_CREATE_VM');
    let memory: GuestMemory | undefined;
    try {
      check(native.ioctl(fd, ioctls.KVM_SET_TSS_ADDR, KVM_TSS_ADDRESS), 'KVM_SET_TSS_ADDR');
      const idmap = new BigUint64Array([BigInt(KVM_IDENTITY_MAP_ADDRESS)]);
      check(native.ioctl(fd, ioctls.KVM_SET_IDENTITY_MAP_ADDR, idmap), 'KVM_SET_IDENTITY_MAP_ADDR');
      check(native.ioctl(fd, ioctls.KVM_CREATE_IRQCHIP), 'KVM_CREATE_IRQCHIP');
      const pit = new DataView(new ArrayBuffer(kvm_pit_config.size));
      pit.setUint32(kvm_pit_config.fields.flags.offset, KVM_PIT_SPEAKER_DUMMY, true);
      check(native.ioctl(fd, ioctls.KVM_CREATE_PIT2, pit), 'KVM_CREATE_PIT2');
      const slots = new MemorySlots(fd);
      memory = slots.addRam(typeof ram === 'number' ? ramRanges(ram) : ram);
      return new Vm(fd, slots, memory);
    } catch (e) {
      memory?.release();
      native.close(fd);
      throw e;
    }
  }

  /** An ISA interrupt line of the in-kernel PIC/IOAPIC (KVM_IRQ_LINE); usable from any thread. */
  static irqLine(vmFd: number, irq: number): IrqLine {
    const buf = new DataView(new ArrayBuffer(kvm_irq_level.size));
    buf.setUint32(kvm_irq_level.fields.irq.offset, irq, true);
    return {
      set(level: boolean): void {
        buf.setUint32(kvm_irq_level.fields.level.offset, level ? 1 : 0, true);
        check(native.ioctl(vmFd, ioctls.KVM_IRQ_LINE, buf), 'KVM_IRQ_LINE', `irq ${irq}`);
      },
    };
  }

  close(): void {
    native.close(this.fd);
    this.memory.release();
  }
}
