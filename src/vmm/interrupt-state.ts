// A developer aid for a guest that stopped making progress (printed on SIGQUIT): the in-kernel interrupt
// controllers and timer as KVM holds them, read-only. A HLT with IF=1 that never wakes is either a timer that
// is not counting, a line masked at the PIC/IOAPIC/LAPIC, or an interrupt stuck in service (ISR bit never
// EOIed); these lines tell the three apart. Layouts: struct kvm_pic_state, kvm_ioapic_state, kvm_pit_state2 and
// the local APIC register page (Intel SDM vol. 3 §11.4.1, table 11-1) from <linux/kvm.h>.
import {
  ioctls,
  kvm_irqchip,
  kvm_lapic_state,
  kvm_pit_state2,
  kvm_vcpu_events,
  KVM_IRQCHIP_IOAPIC,
  KVM_IRQCHIP_PIC_MASTER,
  KVM_IRQCHIP_PIC_SLAVE,
  mpStates,
} from '../kvm/abi.js';
import { check, native } from '../native/index.js';
import type { Vcpu } from './vcpu.js';

const hex = (n: number | bigint, width = 2): string => `0x${n.toString(16).padStart(width, '0')}`;

/** Each line says what it read, or why it could not. */
export function describeInterruptState(vmFd: number, vcpu: Vcpu): string {
  const lines: string[] = [];
  const attempt = (what: string, read: () => string): void => {
    try {
      lines.push(read());
    } catch (e) {
      lines.push(`${what}: unavailable (${(e as Error).message})`);
    }
  };
  attempt('mp_state', () => {
    const mp = vcpu.getMpState();
    const name = Object.entries(mpStates).find(([, v]) => v === mp)?.[0] ?? String(mp);
    const ifFlag = (vcpu.getRegs().rflags & 0x200n) !== 0n ? 1 : 0;
    return `vCPU ${vcpu.id}: ${name}, IF=${ifFlag}`;
  });
  attempt('vCPU events', () => {
    const ev = new DataView(new ArrayBuffer(kvm_vcpu_events.size));
    check(native.ioctl(vcpu.fd, ioctls.KVM_GET_VCPU_EVENTS, ev), 'KVM_GET_VCPU_EVENTS');
    const f = kvm_vcpu_events.fields;
    const u8 = (field: keyof typeof f): number => ev.getUint8(f[field].offset);
    return (
      `vCPU events: interrupt injected=${u8('interrupt.injected')} nr=${hex(u8('interrupt.nr'))} ` +
      `shadow=${u8('interrupt.shadow')}; exception injected=${u8('exception.injected')} nr=${u8('exception.nr')}; ` +
      `nmi injected=${u8('nmi.injected')} pending=${u8('nmi.pending')} masked=${u8('nmi.masked')}`
    );
  });
  for (const [id, name] of [
    [KVM_IRQCHIP_PIC_MASTER, 'PIC master'],
    [KVM_IRQCHIP_PIC_SLAVE, 'PIC slave'],
  ] as const)
    attempt(name, () => {
      const chip = readChip(vmFd, id);
      const at = kvm_irqchip.fields.chip.offset;
      const b = (i: number): string => hex(chip.getUint8(at + i));
      // kvm_pic_state: last_irr, irr, imr, isr, priority_add, irq_base, read_reg_select, poll, special_mask,
      // init_state, auto_eoi, rotate_on_auto_eoi, special_fully_nested_mode, init4, elcr, elcr_mask.
      return `${name}: irr=${b(1)} imr=${b(2)} isr=${b(3)} base=${b(5)} init_state=${b(9)} auto_eoi=${b(10)} elcr=${b(14)}`;
    });
  attempt('IOAPIC', () => {
    const chip = readChip(vmFd, KVM_IRQCHIP_IOAPIC);
    const at = kvm_irqchip.fields.chip.offset;
    // kvm_ioapic_state: u64 base_address, u32 ioregsel, u32 id, u32 irr, u32 pad, u64 redirtbl[24].
    const irr = chip.getUint32(at + 16, true);
    const pins: string[] = [];
    for (let pin = 0; pin < 24; pin++) {
      const entry = chip.getBigUint64(at + 24 + pin * 8, true);
      const masked = (entry >> 16n) & 1n;
      if (masked && !(irr & (1 << pin))) continue;
      const vector = Number(entry & 0xffn);
      const level = (entry >> 15n) & 1n ? 'level' : 'edge';
      const remoteIrr = (entry >> 14n) & 1n;
      pins.push(`${pin}:${hex(vector)} ${level}${masked ? ' masked' : ''}${remoteIrr ? ' remote-irr' : ''}`);
    }
    return `IOAPIC: irr=${hex(irr, 6)} unmasked pins: ${pins.join(', ') || 'none'}`;
  });
  attempt('PIT', () => {
    const pit = new DataView(new ArrayBuffer(kvm_pit_state2.size));
    check(native.ioctl(vmFd, ioctls.KVM_GET_PIT2, pit), 'KVM_GET_PIT2');
    // kvm_pit_channel_state (24 bytes): u32 count, u16 latched_count, u8 count_latched, status_latched, status,
    // read_state, write_state, write_latch, rw_mode, mode, bcd, gate, s64 count_load_time.
    const channels = [0, 1, 2].map((c) => {
      const o = c * 24;
      return `ch${c} count=${pit.getUint32(o, true)} mode=${pit.getUint8(o + 13)} gate=${pit.getUint8(o + 15)}`;
    });
    return `PIT: ${channels.join('; ')} flags=${hex(pit.getUint32(kvm_pit_state2.fields.flags.offset, true))}`;
  });
  attempt('LAPIC', () => {
    const page = new DataView(new ArrayBuffer(kvm_lapic_state.size));
    check(native.ioctl(vcpu.fd, ioctls.KVM_GET_LAPIC, page), 'KVM_GET_LAPIC');
    const reg = (offset: number): number => page.getUint32(offset, true);
    const vectors = (base: number): string => {
      const set: number[] = [];
      for (let word = 0; word < 8; word++)
        for (let bit = 0; bit < 32; bit++) if (reg(base + word * 0x10) & (1 << bit)) set.push(word * 32 + bit);
      return set.length ? set.map((v) => hex(v)).join(',') : '-';
    };
    return (
      `LAPIC: tpr=${hex(reg(0x80))} svr=${hex(reg(0xf0), 3)} isr=${vectors(0x100)} irr=${vectors(0x200)} ` +
      `lvt_timer=${hex(reg(0x320), 5)} lint0=${hex(reg(0x350), 5)} lint1=${hex(reg(0x360), 5)} ` +
      `tmict=${reg(0x380)} tmcct=${reg(0x390)}`
    );
  });
  return lines.join('\n');
}

function readChip(vmFd: number, id: number): DataView {
  const chip = new DataView(new ArrayBuffer(kvm_irqchip.size));
  chip.setUint32(kvm_irqchip.fields.chip_id.offset, id, true);
  check(native.ioctl(vmFd, ioctls.KVM_GET_IRQCHIP, chip), 'KVM_GET_IRQCHIP');
  return chip;
}
