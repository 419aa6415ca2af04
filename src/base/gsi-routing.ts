// The VM's GSI routing table (KVM_SET_GSI_ROUTING) and irqfds. KVM replaces the whole table on every update,
// so the table is kept in shared memory, under a lock, and any thread can change one route and commit it all.
// GSIs 0-23 keep KVM's default wiring (PIC for 0-15, IOAPIC pins 0-23); MSI routes are allocated above them.
import {
  ioctls,
  kvm_irq_routing,
  kvm_irq_routing_entry,
  kvm_irqfd,
  KVM_IRQ_ROUTING_IRQCHIP,
  KVM_IRQ_ROUTING_MSI,
  KVM_IRQCHIP_IOAPIC,
  KVM_IRQCHIP_PIC_MASTER,
  KVM_IRQCHIP_PIC_SLAVE,
} from '../kvm/abi.js';
import { check, native } from '../native/index.js';
import { SharedLock } from './shared-lock.js';

export const FIRST_MSI_GSI = 24;
const MAX_MSI_ROUTES = 1024;
// Per MSI route: used, address_lo, address_hi, data (Int32 each).
const ROUTE_INTS = 4;
const HEADER_INTS = 2; // lock, next free index

export class GsiRouter {
  private readonly ints: Int32Array;
  private readonly lock: SharedLock;

  constructor(
    private readonly vmFd: number,
    readonly buffer: SharedArrayBuffer = new SharedArrayBuffer((HEADER_INTS + MAX_MSI_ROUTES * ROUTE_INTS) * 4),
  ) {
    this.ints = new Int32Array(buffer);
    this.lock = new SharedLock(buffer, 0);
  }

  /** Reserves a GSI for an MSI vector (not routed until set). */
  allocateMsi(): number {
    return this.lock.with(() => {
      const i = this.ints[1];
      if (i >= MAX_MSI_ROUTES) throw new RangeError('out of MSI routes');
      this.ints[1] = i + 1;
      return FIRST_MSI_GSI + i;
    });
  }

  /** Points an MSI GSI at an address/data pair and commits the table (no-op when unchanged). */
  setMsi(gsi: number, addressLo: number, addressHi: number, data: number): void {
    const at = HEADER_INTS + (gsi - FIRST_MSI_GSI) * ROUTE_INTS;
    this.lock.with(() => {
      const r = this.ints;
      if (r[at] === 1 && r[at + 1] === (addressLo | 0) && r[at + 2] === (addressHi | 0) && r[at + 3] === (data | 0))
        return;
      r[at] = 1;
      r[at + 1] = addressLo | 0;
      r[at + 2] = addressHi | 0;
      r[at + 3] = data | 0;
      this.commitLocked();
    });
  }

  private commitLocked(): void {
    const msiCount = this.ints[1];
    const entries: { gsi: number; type: number; a: number; b: number; c: number }[] = [];
    for (let gsi = 0; gsi < 24; gsi++) {
      if (gsi < 16 && gsi !== 2)
        entries.push({
          gsi,
          type: KVM_IRQ_ROUTING_IRQCHIP,
          a: gsi < 8 ? KVM_IRQCHIP_PIC_MASTER : KVM_IRQCHIP_PIC_SLAVE,
          b: gsi % 8,
          c: 0,
        });
      entries.push({ gsi, type: KVM_IRQ_ROUTING_IRQCHIP, a: KVM_IRQCHIP_IOAPIC, b: gsi, c: 0 });
    }
    for (let i = 0; i < msiCount; i++) {
      const at = HEADER_INTS + i * ROUTE_INTS;
      if (this.ints[at] !== 1) continue;
      entries.push({
        gsi: FIRST_MSI_GSI + i,
        type: KVM_IRQ_ROUTING_MSI,
        a: this.ints[at + 1],
        b: this.ints[at + 2],
        c: this.ints[at + 3],
      });
    }
    const E = kvm_irq_routing_entry.fields;
    const buf = new DataView(new ArrayBuffer(kvm_irq_routing.size + entries.length * kvm_irq_routing_entry.size));
    buf.setUint32(kvm_irq_routing.fields.nr.offset, entries.length, true);
    entries.forEach((e, i) => {
      const o = kvm_irq_routing.size + i * kvm_irq_routing_entry.size;
      buf.setUint32(o + E.gsi.offset, e.gsi, true);
      buf.setUint32(o + E.type.offset, e.type, true);
      if (e.type === KVM_IRQ_ROUTING_IRQCHIP) {
        buf.setUint32(o + E['u.irqchip.irqchip'].offset, e.a, true);
        buf.setUint32(o + E['u.irqchip.pin'].offset, e.b, true);
      } else {
        buf.setUint32(o + E['u.msi.address_lo'].offset, e.a >>> 0, true);
        buf.setUint32(o + E['u.msi.address_hi'].offset, e.b >>> 0, true);
        buf.setUint32(o + E['u.msi.data'].offset, e.c >>> 0, true);
      }
    });
    check(native.ioctl(this.vmFd, ioctls.KVM_SET_GSI_ROUTING, buf), 'KVM_SET_GSI_ROUTING');
  }

  /** Binds an eventfd to a GSI: a write to the eventfd injects the interrupt without leaving the kernel. */
  attachIrqfd(gsi: number, eventFd: number): void {
    const buf = new DataView(new ArrayBuffer(kvm_irqfd.size));
    buf.setUint32(kvm_irqfd.fields.fd.offset, eventFd, true);
    buf.setUint32(kvm_irqfd.fields.gsi.offset, gsi, true);
    check(native.ioctl(this.vmFd, ioctls.KVM_IRQFD, buf), 'KVM_IRQFD', `gsi ${gsi}`);
  }
}
