// ACPI 6.5 §5.2 ACPI System Description Tables: builds Partita's set (RSDP → XSDT → FADT → DSDT, XSDT → MADT)
// and places it in guest memory in the BIOS area, where OSPM finds the RSDP by scanning (§5.2.5.1).
//
//   ACPI_TABLES_START (0xE0000)  RSDP (36 bytes, 16-byte aligned, scanned for in 0xE0000-0xFFFFF)
//   then, each 16-byte aligned:  XSDT, FADT, MADT, DSDT, then the devices' own tables (MCFG with PCI)
//   … up to ACPI_TABLES_END (0xF0000); the MP table lives above it (mptable.ts, MPTABLE_ADDRESS).
//
// The whole range 0x9FC00-0x100000 is E820 "reserved" in the guest memory map (layout.ts), so the guest never
// uses it as RAM.
//
// Firmware boot: the same tables, laid out the same way from offset 0 of the fw_cfg file etc/acpi/tables (the
// RSDP in etc/acpi/rsdp), with etc/table-loader telling the firmware how to link them (acpiFirmwareFiles).
import { buildDsdt, type DsdtOptions } from './dsdt.js';
import type { Aml } from './aml.js';
import { buildFadt, FADT_LENGTH, type FadtOptions, type LegacyDevices } from './fadt.js';
import { buildMadt, MAX_XAPIC_ID, type InterruptOverride } from './madt.js';
import { buildRsdp, RSDP_LENGTH, RSDP_V1_LENGTH } from './rsdp.js';
import { SDT_CHECKSUM_OFFSET, SDT_HEADER_SIZE } from './sdt.js';
import { TABLE_LOADER_FILE, TableLoader } from './table-loader.js';
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

/** The tables whose bytes do not depend on where they are placed. */
interface TableContent {
  readonly dsdt: Uint8Array;
  readonly madt: Uint8Array;
  readonly extra: readonly Uint8Array[];
}

/** Where each table goes: guest-physical addresses (direct boot) or offsets in etc/acpi/tables (firmware). */
interface TablePlacement {
  readonly xsdt: number;
  readonly fadt: number;
  readonly madt: number;
  readonly dsdt: number;
  readonly extra: readonly number[];
  /** First byte after the last table. */
  readonly end: number;
}

/** The address-independent tables of `opts`, after checking it. */
function buildContent(opts: AcpiOptions): TableContent {
  validate(opts);
  const dsdt = buildDsdt({ processorCount: opts.apicIds.length, devices: opts.devices } satisfies DsdtOptions);
  const madt = buildMadt({
    apicIds: opts.apicIds,
    lapicAddress: opts.lapicAddress,
    ioapicId: opts.ioapicId,
    ioapicAddress: opts.ioapicAddress,
    overrides: opts.overrides,
  });
  return { dsdt, madt, extra: opts.tables ?? [] };
}

/** The tables one after the other from `xsdt`, each 16-byte aligned: XSDT, FADT, MADT, DSDT, the devices' tables. */
function placeTables(content: TableContent, xsdt: number): TablePlacement {
  const fadt = alignUp(xsdt + xsdtLength(2 + content.extra.length));
  const madt = alignUp(fadt + FADT_LENGTH);
  const dsdt = alignUp(madt + content.madt.length);
  let end = dsdt + content.dsdt.length;
  const extra = content.extra.map((t) => {
    const at = alignUp(end);
    end = at + t.length;
    return at;
  });
  return { xsdt, fadt, madt, dsdt, extra, end };
}

/** Every table but the RSDP, in placement order, with its pointers filled from `at`. */
function linkTables(opts: AcpiOptions, content: TableContent, at: TablePlacement): AcpiTable[] {
  const fadt = buildFadt({ dsdtAddress: at.dsdt, legacy: opts.legacy, reset: opts.reset, sleepPort: opts.sleepPort });
  const xsdt = buildXsdt([at.fadt, at.madt, ...at.extra]);
  return [
    { address: at.xsdt, bytes: xsdt, signature: 'XSDT' },
    { address: at.fadt, bytes: fadt, signature: 'FACP' },
    { address: at.madt, bytes: content.madt, signature: 'APIC' },
    { address: at.dsdt, bytes: content.dsdt, signature: 'DSDT' },
    ...content.extra.map((bytes, i) => ({
      address: at.extra[i],
      bytes,
      signature: Buffer.from(bytes.subarray(0, 4)).toString('latin1'),
    })),
  ];
}

/**
 * Builds the tables and, when `memory` is given, writes them into it. The result says where each one is; hand
 * `rsdpAddress` to the guest too where the boot protocol has a field for it (PVH, Linux boot_params).
 */
export function buildAcpiTables(opts: AcpiOptions, memory?: MemoryWriter): AcpiTables {
  const base = opts.base ?? ACPI_TABLES_START;
  const content = buildContent(opts);
  if (!Number.isInteger(base) || base % ALIGN !== 0 || base < 0xe_0000 || base + RSDP_LENGTH > 0x10_0000) {
    throw new RangeError(`RSDP address 0x${base.toString(16)} is not 16-byte aligned in 0xE0000-0xFFFFF`);
  }
  const at = placeTables(content, alignUp(base + RSDP_LENGTH));
  const limit = base < ACPI_TABLES_END ? ACPI_TABLES_END : 0x10_0000;
  if (at.end > limit)
    throw new RangeError(
      `ACPI tables (0x${base.toString(16)}-0x${at.end.toString(16)}) overflow 0x${limit.toString(16)}`,
    );
  const tables: AcpiTable[] = [
    { address: base, bytes: buildRsdp(at.xsdt), signature: 'RSD PTR ' },
    ...linkTables(opts, content, at),
  ];
  if (memory) for (const t of tables) memory.write(t.address, t.bytes);
  return { rsdpAddress: base, tables, end: at.end };
}

// ---- firmware handover: the same tables as fw_cfg files linked by etc/table-loader (table-loader.ts) ----

/** fw_cfg file holding the RSDP: allocated in the F segment, where OSPM scans for it. */
export const ACPI_RSDP_FILE = 'etc/acpi/rsdp';
/** fw_cfg file holding every other table, back to back (16-byte aligned inside), allocated anywhere below 4 GiB. */
export const ACPI_TABLES_FILE = 'etc/acpi/tables';
/** Alignment asked for etc/acpi/tables (QEMU asks 64, the FACS's alignment). */
const TABLES_FILE_ALIGN = 64;

/** Pointer fields the loader patches (ACPI 6.5 §5.2.5.3 RSDP, §5.2.8 XSDT, §5.2.9 FADT). */
const RSDP_XSDT_ADDRESS = 24;
const RSDP_CHECKSUM = 8;
const RSDP_EXTENDED_CHECKSUM = 32;
const XSDT_FIRST_ENTRY = SDT_HEADER_SIZE;
const FADT_DSDT = 40;
const FADT_X_DSDT = 140;

export interface FirmwareFile {
  readonly name: string;
  readonly data: Uint8Array;
}

/**
 * The same tables as buildAcpiTables() for firmware to install (SeaBIOS, OVMF): etc/acpi/rsdp, etc/acpi/tables
 * and etc/table-loader. Every pointer field holds the offset of its target inside etc/acpi/tables and every
 * checksum byte is 0; the loader allocates both files, adds the allocation addresses to the pointers (RSDP →
 * XSDT, XSDT → each table, FADT → DSDT through DSDT and X_DSDT) and then computes every checksum.
 */
export function acpiFirmwareFiles(opts: Omit<AcpiOptions, 'base'>): FirmwareFile[] {
  const content = buildContent(opts);
  const at = placeTables(content, 0);
  const linked = linkTables(opts, content, at);
  const blob = new Uint8Array(at.end);
  for (const t of linked) {
    blob.set(t.bytes, t.address);
    blob[t.address + SDT_CHECKSUM_OFFSET] = 0;
  }
  const rsdp = buildRsdp(at.xsdt);
  rsdp[RSDP_CHECKSUM] = 0;
  rsdp[RSDP_EXTENDED_CHECKSUM] = 0;

  const T = ACPI_TABLES_FILE;
  const loader = new TableLoader()
    .allocate(T, blob.length, TABLES_FILE_ALIGN, 'high')
    .allocate(ACPI_RSDP_FILE, rsdp.length, ALIGN, 'fseg');
  for (const t of linked) {
    // Pointers first, then the checksum over the patched table.
    if (t.signature === 'XSDT') {
      const entries = (t.bytes.length - XSDT_FIRST_ENTRY) / 8;
      for (let i = 0; i < entries; i++) loader.addPointer(T, T, t.address + XSDT_FIRST_ENTRY + 8 * i, 8);
    } else if (t.signature === 'FACP') {
      loader.addPointer(T, T, t.address + FADT_DSDT, 4).addPointer(T, T, t.address + FADT_X_DSDT, 8);
    }
    loader.addChecksum(T, t.address + SDT_CHECKSUM_OFFSET, t.address, t.bytes.length);
  }
  loader
    .addPointer(ACPI_RSDP_FILE, T, RSDP_XSDT_ADDRESS, 8)
    .addChecksum(ACPI_RSDP_FILE, RSDP_CHECKSUM, 0, RSDP_V1_LENGTH) // the ACPI 1.0 part first: the extended
    .addChecksum(ACPI_RSDP_FILE, RSDP_EXTENDED_CHECKSUM, 0, RSDP_LENGTH); // checksum covers that byte too
  return [
    { name: ACPI_RSDP_FILE, data: rsdp },
    { name: ACPI_TABLES_FILE, data: blob },
    { name: TABLE_LOADER_FILE, data: loader.encode() },
  ];
}
