// Intel MultiProcessor Specification 1.4 (May 1997) tables: the MP Floating Pointer Structure (§4.1) and the MP
// Configuration Table (§4.2, base table entries §4.3), for guests that read the MP table rather than (or before)
// ACPI — Linux with acpi=off, older kernels and OSes.
//
// Placement: the floating pointer must lie on a 16-byte boundary in the first KiB of the EBDA (0x9FC00 here), the
// last KiB of base memory, or the BIOS ROM area 0xF0000-0xFFFFF (§4). The configuration table follows it
// directly. At 64 vCPUs the two take 1500 bytes, more than the EBDA's first KiB, so Partita puts them at
// MPTABLE_ADDRESS = 0xF0000 (above the ACPI tables at 0xE0000-0xEFFFF); Linux's find_smp_config scans 0xF0000-
// 0xFFFFF. The range is E820 "reserved" in the guest memory map (layout.ts).
//
// Interrupt routing described (the MP spec's default configuration, §5.3, with an I/O APIC): ISA IRQs 1 and
// 3-15 on I/O APIC pins of the same number, the PIT's IRQ0 on pin 2, the 8259 master's INTR on pin 0 as ExtINT,
// IRQ2 (the cascade) on no pin; every local APIC has ExtINT on LINT0 and NMI on LINT1. The floating pointer's
// IMCRP bit is clear: the platform runs in virtual-wire mode (KVM has no IMCR). With PCI (option `pci`), bus 0
// is the PCI bus and ISA becomes bus 1 (PCI bus IDs are the PCI bus numbers, ISA's come after them, MP spec
// Appendix D); each PCI slot's INTA# is an I/O interrupt entry (source IRQ = slot << 2 | pin, level, active low)
// on the same I/O APIC pin as in the ACPI _PRT.
import { LAPIC_ADDRESS } from './layout.js';

export const MPTABLE_ADDRESS = 0xf_0000;

/** Where a floating pointer may be (its 16 bytes inside one of these ranges, 16-byte aligned). */
export const MP_SEARCH_RANGES: readonly { readonly start: number; readonly end: number }[] = [
  { start: 0x9_fc00, end: 0xa_0000 }, // the first KiB of the EBDA (= the last KiB of the 639 KiB of base memory)
  { start: 0xf_0000, end: 0x10_0000 }, // the BIOS ROM area
];

export const MP_SPEC_REV = 4; // version 1.4
export const MP_FLOATING_POINTER_SIZE = 16;
export const MP_CONFIG_HEADER_SIZE = 44;
export const MP_PROCESSOR_ENTRY_SIZE = 20;
export const MP_ENTRY_SIZE = 8; // every other base entry type

export const MP_ENTRY_PROCESSOR = 0;
export const MP_ENTRY_BUS = 1;
export const MP_ENTRY_IOAPIC = 2;
export const MP_ENTRY_IO_INTERRUPT = 3;
export const MP_ENTRY_LOCAL_INTERRUPT = 4;

export const MP_INT = 0;
export const MP_NMI = 1;
export const MP_SMI = 2;
export const MP_EXTINT = 3;

export const MP_CPU_ENABLED = 1 << 0;
export const MP_CPU_BSP = 1 << 1;

/** KVM's in-kernel local APIC version (integrated xAPIC) and I/O APIC version registers. */
export const KVM_LAPIC_VERSION = 0x14;
export const KVM_IOAPIC_VERSION = 0x11;

export const MP_OEM_ID = 'PARTITA '; // 8 characters, space-filled
export const MP_PRODUCT_ID = 'PARTITA VM  '; // 12 characters

/** ISA bus ID of the I/O and local interrupt entries when the machine has no PCI (1 with PCI, after PCI bus 0). */
export const MP_ISA_BUS_ID = 0;
export const MP_PCI_BUS_ID = 0;
/** I/O interrupt entry flags for PCI: polarity active low (bits 0-1 = 3), trigger level (bits 2-3 = 3). */
export const MP_FLAGS_PCI = 0x0f;
/** Destination "all local APICs" of a local interrupt entry. */
export const MP_ALL_LAPICS = 0xff;

/** The largest APIC ID the MP table's one-byte fields can carry (0xFF means "all"). */
export const MP_MAX_APIC_ID = 254;

export interface MpTableOptions {
  /** vCPU APIC IDs, unique, each ≤ 254; the first is the boot processor. */
  readonly apicIds: readonly number[];
  /** Must differ from every local APIC ID (Linux and Windows require it); see defaultIoapicId. */
  readonly ioapicId: number;
  readonly ioapicAddress: number;
  readonly lapicAddress?: number;
  /** CPUID leaf 1 EAX (stepping/model/family) and EDX (features) for the processor entries; default family 6, FPU+APIC. */
  readonly cpuSignature?: number;
  readonly cpuFeatures?: number;
  /** PCI bus 0 and the I/O APIC pin of each slot's INTA#; no PCI bus entry when absent. */
  readonly pci?: { readonly intx: readonly { readonly slot: number; readonly gsi: number }[] };
}

export interface MpTable {
  /** Guest-physical address of the floating pointer (= `at`); the configuration table is at floatingPointer + 16. */
  readonly floatingPointer: number;
  readonly configTable: number;
  /** Floating pointer followed by the configuration table: copy it to `floatingPointer`. */
  readonly bytes: Uint8Array;
}

/**
 * The I/O APIC ID Partita uses: the lowest ID no vCPU has. With contiguous APIC IDs 0..n-1 that is n, the number
 * of vCPUs; with gaps (SMT layouts) it is the first gap. MP tables need it unique among all APIC IDs; ACPI does
 * not, but both tables use the same value.
 */
export function defaultIoapicId(apicIds: readonly number[]): number {
  const used = new Set(apicIds);
  let id = 0;
  while (used.has(id)) id++;
  return id;
}

export function mpTableSize(cpus: number, pci?: MpTableOptions['pci']): number {
  const pciEntries = pci ? 1 + pci.intx.length : 0;
  return (
    MP_FLOATING_POINTER_SIZE +
    MP_CONFIG_HEADER_SIZE +
    cpus * MP_PROCESSOR_ENTRY_SIZE +
    (1 + 1 + 16 + 2 + pciEntries) * MP_ENTRY_SIZE
  );
}

function sum8(bytes: Uint8Array, start: number, end: number): number {
  let s = 0;
  for (let i = start; i < end; i++) s = (s + bytes[i]) & 0xff;
  return s;
}

function checkByteId(v: number, what: string): void {
  if (!Number.isInteger(v) || v < 0 || v > MP_MAX_APIC_ID)
    throw new RangeError(`${what} ${v} does not fit the MP table (0..${MP_MAX_APIC_ID})`);
}

function validate(opts: MpTableOptions, at: number, size: number): void {
  for (const { slot, gsi } of opts.pci?.intx ?? []) {
    if (!Number.isInteger(slot) || slot < 0 || slot > 31)
      throw new RangeError(`PCI slot ${slot} is out of range 0..31`);
    if (!Number.isInteger(gsi) || gsi < 0 || gsi > 23)
      throw new RangeError(`I/O APIC pin ${gsi} is out of range 0..23`);
  }
  const ids = opts.apicIds;
  if (ids.length < 1) throw new RangeError('the MP table needs at least one processor');
  const seen = new Set<number>();
  for (const id of ids) {
    checkByteId(id, 'APIC ID');
    if (seen.has(id)) throw new RangeError(`APIC ID ${id} is given twice`);
    seen.add(id);
  }
  checkByteId(opts.ioapicId, 'I/O APIC ID');
  if (seen.has(opts.ioapicId)) throw new RangeError(`I/O APIC ID ${opts.ioapicId} is also a local APIC ID`);
  for (const [what, a] of [
    ['I/O APIC', opts.ioapicAddress],
    ['local APIC', opts.lapicAddress ?? LAPIC_ADDRESS],
  ] as const) {
    if (!Number.isInteger(a) || a <= 0 || a > 0xffff_ffff || a % 16 !== 0) {
      throw new RangeError(`${what} address ${a} is not a 32-bit aligned address`);
    }
  }
  if (!Number.isInteger(at) || at % 16 !== 0)
    throw new RangeError(`MP floating pointer address 0x${at.toString(16)} is not 16-byte aligned`);
  const range = MP_SEARCH_RANGES.find((r) => at >= r.start && at + MP_FLOATING_POINTER_SIZE <= r.end);
  if (!range)
    throw new RangeError(`MP floating pointer address 0x${at.toString(16)} is outside the ranges guests search`);
  if (at + size > range.end) {
    throw new RangeError(`MP table (${size} bytes at 0x${at.toString(16)}) runs past 0x${range.end.toString(16)}`);
  }
}

/** Builds the floating pointer and configuration table for placement at `at` (see MP_SEARCH_RANGES). */
export function buildMpTable(opts: MpTableOptions, at: number = MPTABLE_ADDRESS): MpTable {
  const n = opts.apicIds.length;
  const size = mpTableSize(n, opts.pci);
  const isaBus = opts.pci ? MP_PCI_BUS_ID + 1 : MP_ISA_BUS_ID;
  validate(opts, at, size);
  const bytes = new Uint8Array(size);
  const dv = new DataView(bytes.buffer);
  const ascii = (off: number, text: string) => {
    for (let i = 0; i < text.length; i++) bytes[off + i] = text.charCodeAt(i);
  };
  const configTable = at + MP_FLOATING_POINTER_SIZE;
  const cfg = MP_FLOATING_POINTER_SIZE; // offset of the configuration table in `bytes`
  const lapicAddress = opts.lapicAddress ?? LAPIC_ADDRESS;

  // §4.1 MP Floating Pointer Structure
  ascii(0, '_MP_');
  dv.setUint32(4, configTable, true); // PHYSICAL ADDRESS POINTER
  bytes[8] = 1; //                       LENGTH, in 16-byte paragraphs
  bytes[9] = MP_SPEC_REV; //             SPEC_REV
  //       10                            CHECKSUM, below
  bytes[11] = 0; //                      MP FEATURE BYTE 1: 0 = a configuration table is present
  bytes[12] = 0; //                      MP FEATURE BYTE 2: IMCRP clear = virtual wire mode; bytes 13-15 reserved

  // §4.3 base table entries, sorted by entry type (§4.2)
  let off = cfg + MP_CONFIG_HEADER_SIZE;
  let entries = 0;
  opts.apicIds.forEach((apicId, i) => {
    // §4.3.1 Processor Entries
    bytes[off] = MP_ENTRY_PROCESSOR;
    bytes[off + 1] = apicId;
    bytes[off + 2] = KVM_LAPIC_VERSION;
    bytes[off + 3] = MP_CPU_ENABLED | (i === 0 ? MP_CPU_BSP : 0);
    dv.setUint32(off + 4, (opts.cpuSignature ?? 0x600) >>> 0, true); // CPU SIGNATURE: family 6
    dv.setUint32(off + 8, (opts.cpuFeatures ?? 0x201) >>> 0, true); // FEATURE FLAGS: FPU (bit 0), APIC (bit 9)
    off += MP_PROCESSOR_ENTRY_SIZE; // bytes 12-19 reserved
    entries++;
  });
  // §4.3.2 Bus Entries
  if (opts.pci) {
    bytes[off] = MP_ENTRY_BUS;
    bytes[off + 1] = MP_PCI_BUS_ID;
    ascii(off + 2, 'PCI   ');
    off += MP_ENTRY_SIZE;
    entries++;
  }
  bytes[off] = MP_ENTRY_BUS;
  bytes[off + 1] = isaBus;
  ascii(off + 2, 'ISA   ');
  off += MP_ENTRY_SIZE;
  entries++;
  // §4.3.3 I/O APIC Entries
  bytes[off] = MP_ENTRY_IOAPIC;
  bytes[off + 1] = opts.ioapicId;
  bytes[off + 2] = KVM_IOAPIC_VERSION;
  bytes[off + 3] = 1; // EN
  dv.setUint32(off + 4, opts.ioapicAddress, true);
  off += MP_ENTRY_SIZE;
  entries++;
  // §4.3.4 I/O Interrupt Assignment Entries; flags 0 = conforms to the bus (ISA: edge, active high)
  const ioInterrupt = (type: number, irq: number, pin: number, bus = isaBus, flags = 0) => {
    bytes.set([MP_ENTRY_IO_INTERRUPT, type, flags, 0, bus, irq, opts.ioapicId, pin], off);
    off += MP_ENTRY_SIZE;
    entries++;
  };
  ioInterrupt(MP_EXTINT, 0, 0); // the 8259 master's INTR on pin 0
  for (let irq = 0; irq < 16; irq++) {
    if (irq === 2) continue; // the 8259 cascade: no I/O APIC pin
    ioInterrupt(MP_INT, irq, irq === 0 ? 2 : irq); // PIT: IRQ0 on pin 2
  }
  // PCI: source bus IRQ = device number in bits 2-6, INTA# (0) in bits 0-1 (Appendix D.3)
  for (const { slot, gsi } of opts.pci?.intx ?? []) ioInterrupt(MP_INT, slot << 2, gsi, MP_PCI_BUS_ID, MP_FLAGS_PCI);
  // §4.3.5 Local Interrupt Assignment Entries
  const localInterrupt = (type: number, lint: number) => {
    bytes.set([MP_ENTRY_LOCAL_INTERRUPT, type, 0, 0, isaBus, 0, MP_ALL_LAPICS, lint], off);
    off += MP_ENTRY_SIZE;
    entries++;
  };
  localInterrupt(MP_EXTINT, 0);
  localInterrupt(MP_NMI, 1);
  if (off !== size) throw new Error(`MP table size mismatch: wrote ${off}, expected ${size}`);

  // §4.2 MP Configuration Table Header
  ascii(cfg, 'PCMP');
  dv.setUint16(cfg + 4, size - cfg, true); //  BASE TABLE LENGTH
  bytes[cfg + 6] = MP_SPEC_REV; //              SPEC_REV
  //        cfg + 7                             CHECKSUM, below
  ascii(cfg + 8, MP_OEM_ID); //                 OEM ID
  ascii(cfg + 16, MP_PRODUCT_ID); //            PRODUCT ID
  dv.setUint32(cfg + 28, 0, true); //           OEM TABLE POINTER: none
  dv.setUint16(cfg + 32, 0, true); //           OEM TABLE SIZE
  dv.setUint16(cfg + 34, entries, true); //     ENTRY COUNT
  dv.setUint32(cfg + 36, lapicAddress, true); // ADDRESS OF LOCAL APIC
  dv.setUint16(cfg + 40, 0, true); //           EXTENDED TABLE LENGTH: none
  bytes[cfg + 42] = 0; //                       EXTENDED TABLE CHECKSUM; byte 43 reserved

  bytes[cfg + 7] = (0x100 - sum8(bytes, cfg, size)) & 0xff;
  bytes[10] = (0x100 - sum8(bytes, 0, MP_FLOATING_POINTER_SIZE)) & 0xff;
  return { floatingPointer: at, configTable, bytes };
}

/** Builds the MP table and copies it into guest memory at `at`. */
export function writeMpTable(
  memory: { write(gpa: number, data: Uint8Array): void },
  opts: MpTableOptions,
  at: number = MPTABLE_ADDRESS,
): MpTable {
  const table = buildMpTable(opts, at);
  memory.write(at, table.bytes);
  return table;
}
