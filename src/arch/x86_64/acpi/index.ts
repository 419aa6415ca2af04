// ACPI 6.5 §5.2 ACPI System Description Tables: builds Partita's set (RSDP → XSDT → FADT → DSDT, XSDT → MADT)
// and places it in guest memory in the BIOS area, where OSPM finds the RSDP by scanning (§5.2.5.1).
//
//   ACPI_TABLES_START (0xE0000)  RSDP (36 bytes, 16-byte aligned, scanned for in 0xE0000-0xFFFFF)
//   then, each 16-byte aligned:  XSDT, FADT, MADT, DSDT, then the devices' own tables (MCFG with PCI)
//   then, with fixed-hardware ACPI, the FACS (64-byte aligned, pointed to by the FADT only)
//   … up to ACPI_TABLES_END (0xF0000); the MP table lives above it (mptable.ts, MPTABLE_ADDRESS).
//
// The whole range 0x9FC00-0x100000 is E820 "reserved" in the guest memory map (layout.ts), so the guest never
// uses it as RAM.
import { buildDsdt, type DsdtOptions } from './dsdt.js';
import type { Aml } from './aml.js';
import { buildFacs, FACS_LENGTH } from './facs.js';
import { buildFadt, FADT_LENGTH, type FadtOptions, type FixedHardware, type LegacyDevices } from './fadt.js';
import {
  buildMadt,
  DEFAULT_OVERRIDES,
  MAX_XAPIC_ID,
  MPS_INTI_POLARITY_HIGH,
  MPS_INTI_TRIGGER_LEVEL,
  type InterruptOverride,
} from './madt.js';
import { buildRsdp, RSDP_LENGTH } from './rsdp.js';
import { buildXsdt, xsdtLength } from './xsdt.js';

export const ACPI_TABLES_START = 0xe_0000;
export const ACPI_TABLES_END = 0xf_0000;
const ALIGN = 16;

export interface AcpiOptions {
  /** vCPU APIC IDs (unique, any order, gaps allowed); the first is the boot processor. At most 255 vCPUs. */
  readonly apicIds: readonly number[];
  readonly ioapicId: number;
  readonly ioapicAddress: number;
  readonly lapicAddress: number;
  /** Legacy PC devices the machine has (FADT IAPC_BOOT_ARCH); each defaults to absent. */
  readonly legacy?: LegacyDevices;
  /** FADT reset register (an I/O port and the value to write). */
  readonly reset?: FadtOptions['reset'];
  /** FADT HW-reduced sleep control/status register port. */
  readonly sleepPort?: number;
  /** Interrupt source overrides; default IRQ0 → GSI2. */
  readonly overrides?: readonly InterruptOverride[];
  /** Further overrides the devices ask for (DeviceDescription.interruptOverrides), after `overrides`. */
  readonly interruptOverrides?: readonly InterruptOverride[];
  /**
   * Fixed-hardware ACPI (DeviceDescription.fadt): the FADT points at these register blocks and a FACS instead of
   * being hardware-reduced, the MADT makes the SCI level/active-high, \_S5_ takes the chipset's SLP_TYP.
   */
  readonly fixedHardware?: FixedHardware;
  /** The devices' own AML (under \_SB_ in the DSDT), e.g. COM1 and the PCI root bridge. */
  readonly devices?: readonly Aml[];
  /** Further tables the devices bring (e.g. MCFG), each a complete SDT; the XSDT points at them after the MADT. */
  readonly tables?: readonly Uint8Array[];
  /** Where the RSDP goes (16-byte aligned, in [0xE0000, 0x100000)); default ACPI_TABLES_START. */
  readonly base?: number;
}

export interface AcpiTable {
  readonly address: number;
  readonly bytes: Uint8Array;
  /** Table signature ("XSDT", "FACP", "APIC", "DSDT"), or "RSD PTR " for the RSDP. */
  readonly signature: string;
}

export interface AcpiTables {
  readonly rsdpAddress: number;
  /** Everything to copy into guest memory, the RSDP first. */
  readonly tables: readonly AcpiTable[];
  /** First byte after the last table. */
  readonly end: number;
}

/** Anything with GuestMemory's write(): the tables can be written to guest RAM or to a test buffer. */
export interface MemoryWriter {
  write(gpa: number, data: Uint8Array): void;
}

function validate(opts: AcpiOptions): void {
  const ids = opts.apicIds;
  if (ids.length < 1 || ids.length > 255) throw new RangeError(`${ids.length} vCPUs: ACPI tables support 1..255`);
  const seen = new Set<number>();
  for (const id of ids) {
    if (!Number.isInteger(id) || id < 0 || id > 0xffff_fffe) throw new RangeError(`APIC ID ${id} is out of range`);
    if (seen.has(id)) throw new RangeError(`APIC ID ${id} is given twice`);
    seen.add(id);
  }
  if (!Number.isInteger(opts.ioapicId) || opts.ioapicId < 0 || opts.ioapicId > MAX_XAPIC_ID) {
    throw new RangeError(`I/O APIC ID ${opts.ioapicId} is out of range 0..${MAX_XAPIC_ID}`);
  }
  for (const [what, a] of [
    ['I/O APIC', opts.ioapicAddress],
    ['local APIC', opts.lapicAddress],
  ] as const) {
    if (!Number.isInteger(a) || a < 0 || a > 0xffff_ffff || a % 16 !== 0)
      throw new RangeError(`${what} address ${a} is not a 32-bit aligned address`);
  }
}

const alignUp = (v: number): number => Math.ceil(v / ALIGN) * ALIGN;

/**
 * Builds the tables and, when `memory` is given, writes them into it. The result says where each one is; hand
 * `rsdpAddress` to the guest too where the boot protocol has a field for it (PVH, Linux boot_params).
 */
export function buildAcpiTables(opts: AcpiOptions, memory?: MemoryWriter): AcpiTables {
  validate(opts);
  const base = opts.base ?? ACPI_TABLES_START;
  if (!Number.isInteger(base) || base % ALIGN !== 0 || base < 0xe_0000 || base + RSDP_LENGTH > 0x10_0000) {
    throw new RangeError(`RSDP address 0x${base.toString(16)} is not 16-byte aligned in 0xE0000-0xFFFFF`);
  }
  const hw = opts.fixedHardware;
  const dsdt = buildDsdt({
    processorCount: opts.apicIds.length,
    devices: opts.devices,
    ...(hw ? { s5SleepType: hw.sleepTypeS5 } : {}),
  } satisfies DsdtOptions);
  const madt = buildMadt({
    apicIds: opts.apicIds,
    lapicAddress: opts.lapicAddress,
    ioapicId: opts.ioapicId,
    ioapicAddress: opts.ioapicAddress,
    overrides: madtOverrides(opts),
  });
  const extra = opts.tables ?? [];

  const xsdtAddress = alignUp(base + RSDP_LENGTH);
  const fadtAddress = alignUp(xsdtAddress + xsdtLength(2 + extra.length));
  const madtAddress = alignUp(fadtAddress + FADT_LENGTH);
  const dsdtAddress = alignUp(madtAddress + madt.length);
  let end = dsdtAddress + dsdt.length;
  const extraAddresses = extra.map((t) => {
    const at = alignUp(end);
    end = at + t.length;
    return at;
  });
  let facsAddress: number | undefined;
  if (hw) {
    facsAddress = Math.ceil(end / 64) * 64;
    end = facsAddress + FACS_LENGTH;
  }
  const limit = base < ACPI_TABLES_END ? ACPI_TABLES_END : 0x10_0000;
  if (end > limit)
    throw new RangeError(`ACPI tables (0x${base.toString(16)}-0x${end.toString(16)}) overflow 0x${limit.toString(16)}`);

  const fadt = buildFadt({
    dsdtAddress,
    legacy: opts.legacy,
    reset: opts.reset,
    sleepPort: opts.sleepPort,
    ...(hw ? { fixedHardware: hw, facsAddress } : {}),
  });
  const xsdt = buildXsdt([fadtAddress, madtAddress, ...extraAddresses]);
  const rsdp = buildRsdp(xsdtAddress);
  const tables: AcpiTable[] = [
    { address: base, bytes: rsdp, signature: 'RSD PTR ' },
    { address: xsdtAddress, bytes: xsdt, signature: 'XSDT' },
    { address: fadtAddress, bytes: fadt, signature: 'FACP' },
    { address: madtAddress, bytes: madt, signature: 'APIC' },
    { address: dsdtAddress, bytes: dsdt, signature: 'DSDT' },
    ...extra.map((bytes, i) => ({
      address: extraAddresses[i],
      bytes,
      signature: Buffer.from(bytes.subarray(0, 4)).toString('latin1'),
    })),
    ...(facsAddress === undefined ? [] : [{ address: facsAddress, bytes: buildFacs(), signature: 'FACS' }]),
  ];
  if (memory) for (const t of tables) memory.write(t.address, t.bytes);
  return { rsdpAddress: base, tables, end };
}

/**
 * The MADT's interrupt source overrides: the given (or default) ones, the devices' own, and with fixed-hardware
 * ACPI one for the SCI (unless another already names its IRQ). Without it OSPM would take the SCI as the ACPI
 * default, shared level active-low (§5.2.9 SCI_INT); KVM's lines are asserted high, so it is declared
 * level-triggered, active-high, as QEMU's PC does.
 */
function madtOverrides(opts: AcpiOptions): readonly InterruptOverride[] | undefined {
  const extra = opts.interruptOverrides ?? [];
  const hw = opts.fixedHardware;
  if (extra.length === 0 && !hw) return opts.overrides;
  const all = [...(opts.overrides ?? DEFAULT_OVERRIDES), ...extra];
  if (hw && !all.some((o) => o.irq === hw.sciInterrupt))
    all.push({ irq: hw.sciInterrupt, gsi: hw.sciInterrupt, flags: MPS_INTI_POLARITY_HIGH | MPS_INTI_TRIGGER_LEVEL });
  return all.sort((a, b) => a.irq - b.irq);
}
