// ACPI 6.5 §5.2.12 Multiple APIC Description Table (MADT): local APICs (§5.2.12.2) or local x2APICs
// (§5.2.12.12), the I/O APIC (§5.2.12.3), interrupt source overrides (§5.2.12.5) and LINT1 NMIs (§5.2.12.7,
// §5.2.12.13).
import { buildSdt, ByteWriter } from './sdt.js';

/** MADT revision of ACPI 6.5. */
export const MADT_REVISION = 6;

/** Multiple APIC Flags: PCAT_COMPAT, the platform also has dual 8259s (KVM's in-kernel PICs). */
export const MADT_PCAT_COMPAT = 1 << 0;

export const MADT_TYPE_LOCAL_APIC = 0;
export const MADT_TYPE_IO_APIC = 1;
export const MADT_TYPE_INTERRUPT_OVERRIDE = 2;
export const MADT_TYPE_LOCAL_APIC_NMI = 4;
export const MADT_TYPE_LOCAL_X2APIC = 9;
export const MADT_TYPE_LOCAL_X2APIC_NMI = 10;

/** Local APIC / x2APIC flags: Enabled. */
export const MADT_LAPIC_ENABLED = 1 << 0;

/** MPS INTI flags (§5.2.12.5): polarity bits 1:0, trigger mode bits 3:2; 0 = "conforms to the bus". */
export const MPS_INTI_POLARITY_HIGH = 0b01;
export const MPS_INTI_POLARITY_LOW = 0b11;
export const MPS_INTI_TRIGGER_EDGE = 0b01 << 2;
export const MPS_INTI_TRIGGER_LEVEL = 0b11 << 2;

/** The largest APIC ID a Processor Local APIC structure (one byte, 0xFF meaning broadcast) can carry. */
export const MAX_XAPIC_ID = 254;

export interface InterruptOverride {
  /** ISA IRQ (bus 0 = ISA). */
  readonly irq: number;
  readonly gsi: number;
  /** MPS INTI flags. */
  readonly flags: number;
}

/** The one override every PC has: the PIT on ISA IRQ 0 arrives on I/O APIC pin 2 (edge, high: the ISA default). */
export const DEFAULT_OVERRIDES: readonly InterruptOverride[] = [{ irq: 0, gsi: 2, flags: 0 }];

export interface MadtOptions {
  /** vCPU APIC IDs; the first is the boot processor. The ACPI Processor UID of apicIds[i] is i. */
  readonly apicIds: readonly number[];
  readonly lapicAddress: number;
  readonly ioapicId: number;
  readonly ioapicAddress: number;
  readonly overrides?: readonly InterruptOverride[];
}

export function buildMadt(opts: MadtOptions): Uint8Array {
  const w = new ByteWriter();
  w.u32(opts.lapicAddress).u32(MADT_PCAT_COMPAT);
  let x2apic = false;
  opts.apicIds.forEach((apicId, uid) => {
    if (apicId <= MAX_XAPIC_ID) {
      // §5.2.12.2: type, length, ACPI Processor UID, APIC ID, flags
      w.u8(MADT_TYPE_LOCAL_APIC).u8(8).u8(uid).u8(apicId).u32(MADT_LAPIC_ENABLED);
    } else {
      // §5.2.12.12: type, length, reserved, x2APIC ID, flags, ACPI Processor UID
      x2apic = true;
      w.u8(MADT_TYPE_LOCAL_X2APIC).u8(16).u16(0).u32(apicId).u32(MADT_LAPIC_ENABLED).u32(uid);
    }
  });
  // §5.2.12.3: type, length, I/O APIC ID, reserved, address, global system interrupt base
  w.u8(MADT_TYPE_IO_APIC).u8(12).u8(opts.ioapicId).u8(0).u32(opts.ioapicAddress).u32(0);
  for (const o of opts.overrides ?? DEFAULT_OVERRIDES) {
    // §5.2.12.5: type, length, bus (0 = ISA), source IRQ, global system interrupt, flags
    w.u8(MADT_TYPE_INTERRUPT_OVERRIDE).u8(10).u8(0).u8(o.irq).u32(o.gsi).u16(o.flags);
  }
  // §5.2.12.7: type, length, ACPI Processor UID (0xFF: all), flags (conforms to bus), LINT# — NMI on LINT1
  w.u8(MADT_TYPE_LOCAL_APIC_NMI).u8(6).u8(0xff).u16(0).u8(1);
  if (x2apic) {
    // §5.2.12.13: type, length, flags, ACPI Processor UID (0xFFFFFFFF: all), LINT#, reserved
    w.u8(MADT_TYPE_LOCAL_X2APIC_NMI).u8(12).u16(0).u32(0xffff_ffff).u8(1).zeros(3);
  }
  return buildSdt('APIC', MADT_REVISION, w.finish());
}
