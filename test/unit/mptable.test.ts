// The MP table, read back the way Linux's find_smp_config / smp_read_mpc read it: scan the places the spec
// allows for a valid "_MP_" floating pointer, follow it to the "PCMP" configuration table, check both checksums,
// then walk the base entries by type (an unknown type is a broken table).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  buildMpTable,
  defaultIoapicId,
  mpTableSize,
  MPTABLE_ADDRESS,
  writeMpTable,
  type MpTableOptions,
} from '../../src/arch/x86_64/mptable.js';
import { EBDA_START, IOAPIC_ADDRESS, LAPIC_ADDRESS } from '../../src/arch/x86_64/layout.js';
import { MIB } from '../../src/base/units.js';

const range = (n: number): number[] => Array.from({ length: n }, (_, i) => i);

function sum8(b: Uint8Array, start: number, end: number): number {
  let s = 0;
  for (let i = start; i < end; i++) s = (s + b[i]) & 0xff;
  return s;
}

interface Processor {
  apicId: number;
  version: number;
  enabled: boolean;
  bsp: boolean;
  signature: number;
  features: number;
}
interface IoInterrupt {
  type: number;
  flags: number;
  bus: number;
  irq: number;
  apic: number;
  pin: number;
}
interface Parsed {
  floatingPointer: number;
  configTable: number;
  oem: string;
  product: string;
  lapic: number;
  processors: Processor[];
  buses: { id: number; type: string }[];
  ioapics: { id: number; version: number; enabled: boolean; address: number }[];
  ioInterrupts: IoInterrupt[];
  localInterrupts: IoInterrupt[];
}

/** Linux's scan order: the first KiB of RAM, the last KiB of base memory (the EBDA here), the BIOS ROM. */
const SCAN: [number, number][] = [
  [0, 0x400],
  [639 * 0x400, 0x400],
  [0xf0000, 0x10000],
];

function parse(mem: Uint8Array): Parsed {
  const dv = new DataView(mem.buffer, mem.byteOffset, mem.byteLength);
  const ascii = (at: number, n: number) => Buffer.from(mem.subarray(at, at + n)).toString('latin1');
  let mpf = -1;
  outer: for (const [base, length] of SCAN) {
    for (let a = base; a < base + length; a += 16) {
      if (
        ascii(a, 4) === '_MP_' &&
        mem[a + 8] === 1 &&
        sum8(mem, a, a + 16) === 0 &&
        (mem[a + 9] === 1 || mem[a + 9] === 4)
      ) {
        mpf = a;
        break outer;
      }
    }
  }
  assert.notEqual(mpf, -1, 'no MP floating pointer found');
  assert.equal(mem[mpf + 9], 4, 'floating pointer: spec rev 1.4');
  assert.equal(mem[mpf + 11], 0, 'feature byte 1: 0 = a configuration table is present (no default config)');
  assert.equal(mem[mpf + 12] & 0x80, 0, 'IMCRP clear: virtual wire mode');
  const cfg = dv.getUint32(mpf + 4, true);
  assert.ok(cfg !== 0, 'floating pointer has no configuration table');
  assert.equal(ascii(cfg, 4), 'PCMP');
  const length = dv.getUint16(cfg + 4, true);
  assert.equal(mem[cfg + 6], 4, 'configuration table: spec rev 1.4');
  assert.equal(sum8(mem, cfg, cfg + length), 0, 'configuration table checksum');
  assert.equal(dv.getUint32(cfg + 28, true), 0, 'no OEM table');
  assert.equal(dv.getUint16(cfg + 32, true), 0);
  assert.equal(dv.getUint16(cfg + 40, true), 0, 'no extended table');
  assert.equal(mem[cfg + 42], 0, 'extended table checksum');
  const count = dv.getUint16(cfg + 34, true);
  const out: Parsed = {
    floatingPointer: mpf,
    configTable: cfg,
    oem: ascii(cfg + 8, 8),
    product: ascii(cfg + 16, 12),
    lapic: dv.getUint32(cfg + 36, true),
    processors: [],
    buses: [],
    ioapics: [],
    ioInterrupts: [],
    localInterrupts: [],
  };
  let at = cfg + 44;
  let entries = 0;
  let lastType = 0;
  while (at < cfg + length) {
    const type = mem[at];
    assert.ok(type >= lastType, 'entries sorted by type');
    lastType = type;
    const interrupt = (): IoInterrupt => ({
      type: mem[at + 1],
      flags: dv.getUint16(at + 2, true),
      bus: mem[at + 4],
      irq: mem[at + 5],
      apic: mem[at + 6],
      pin: mem[at + 7],
    });
    switch (type) {
      case 0:
        out.processors.push({
          apicId: mem[at + 1],
          version: mem[at + 2],
          enabled: (mem[at + 3] & 1) !== 0,
          bsp: (mem[at + 3] & 2) !== 0,
          signature: dv.getUint32(at + 4, true),
          features: dv.getUint32(at + 8, true),
        });
        assert.deepEqual([...mem.subarray(at + 12, at + 20)], [0, 0, 0, 0, 0, 0, 0, 0], 'reserved');
        at += 20;
        break;
      case 1:
        out.buses.push({ id: mem[at + 1], type: ascii(at + 2, 6) });
        at += 8;
        break;
      case 2:
        out.ioapics.push({
          id: mem[at + 1],
          version: mem[at + 2],
          enabled: (mem[at + 3] & 1) !== 0,
          address: dv.getUint32(at + 4, true),
        });
        at += 8;
        break;
      case 3:
        out.ioInterrupts.push(interrupt());
        at += 8;
        break;
      case 4:
        out.localInterrupts.push(interrupt());
        at += 8;
        break;
      default:
        assert.fail(`unknown MP entry type ${type} at 0x${at.toString(16)}`);
    }
    entries++;
  }
  assert.equal(at, cfg + length, 'entries end exactly at the base table length');
  assert.equal(entries, count, 'entry count');
  return out;
}

function lowMemory(): { bytes: Uint8Array; write(gpa: number, data: Uint8Array): void } {
  const bytes = new Uint8Array(1 * MIB);
  return { bytes, write: (gpa, data) => bytes.set(data, gpa) };
}

function options(apicIds: number[]): MpTableOptions {
  return { apicIds, ioapicId: defaultIoapicId(apicIds), ioapicAddress: IOAPIC_ADDRESS };
}

const MP_INT = 0;
const MP_NMI = 1;
const MP_EXTINT = 3;

function check(apicIds: number[], at?: number): Parsed {
  const opts = options(apicIds);
  const mem = lowMemory();
  const table = writeMpTable(mem, opts, at);
  const p = parse(mem.bytes);
  assert.equal(p.floatingPointer, table.floatingPointer);
  assert.equal(p.configTable, table.configTable);
  assert.equal(p.floatingPointer % 16, 0, 'floating pointer on a 16-byte boundary');
  const inEbda = p.floatingPointer >= EBDA_START && p.floatingPointer + 16 <= EBDA_START + 0x400;
  const inBios = p.floatingPointer >= 0xf0000 && p.floatingPointer + 16 <= 0x100000;
  assert.ok(inEbda || inBios, 'floating pointer in the first KiB of the EBDA or in 0xF0000-0xFFFFF');
  assert.equal(table.bytes.length, mpTableSize(apicIds.length));
  const end = p.floatingPointer + table.bytes.length;
  assert.ok(inEbda ? end <= 0xa0000 : end <= 0x100000, 'the table stays out of the VGA window / below 1 MiB');

  assert.equal(p.oem, 'PARTITA ');
  assert.equal(p.product, 'PARTITA VM  ');
  assert.equal(p.lapic, LAPIC_ADDRESS);
  // processors: in order, all enabled, the first one the BSP
  assert.deepEqual(
    p.processors.map((x) => x.apicId),
    apicIds,
  );
  assert.deepEqual(
    p.processors.map((x) => x.bsp),
    apicIds.map((_, i) => i === 0),
  );
  assert.ok(
    p.processors.every((x) => x.enabled && x.version === 0x14 && x.signature === 0x600 && x.features === 0x201),
  );
  // one ISA bus, one I/O APIC with an ID no local APIC has
  assert.deepEqual(p.buses, [{ id: 0, type: 'ISA   ' }]);
  assert.deepEqual(p.ioapics, [{ id: opts.ioapicId, version: 0x11, enabled: true, address: IOAPIC_ADDRESS }]);
  assert.ok(!apicIds.includes(opts.ioapicId), 'I/O APIC ID unique among APIC IDs');
  // ISA interrupts: 8259 ExtINT on pin 0, IRQ0 on pin 2, IRQ1 and 3-15 identity mapped, IRQ2 nowhere
  assert.ok(p.ioInterrupts.every((x) => x.bus === 0 && x.apic === opts.ioapicId && x.flags === 0));
  assert.deepEqual(
    p.ioInterrupts.map((x) => [x.type, x.irq, x.pin]),
    [
      [MP_EXTINT, 0, 0],
      [MP_INT, 0, 2],
      [MP_INT, 1, 1],
      ...range(16)
        .slice(3)
        .map((i) => [MP_INT, i, i]),
    ],
  );
  assert.ok(!p.ioInterrupts.some((x) => x.type === MP_INT && x.irq === 2));
  assert.equal(p.ioInterrupts.length, 16);
  // every local APIC: ExtINT on LINT0, NMI on LINT1
  assert.deepEqual(
    p.localInterrupts.map((x) => [x.type, x.flags, x.bus, x.irq, x.apic, x.pin]),
    [
      [MP_EXTINT, 0, 0, 0, 0xff, 0],
      [MP_NMI, 0, 0, 0, 0xff, 1],
    ],
  );
  return p;
}

for (const [label, ids] of [
  ['1 vCPU', [0]],
  ['2 vCPUs', [0, 1]],
  ['16 vCPUs', range(16)],
  ['64 vCPUs', range(64)],
  ['gapped APIC IDs (SMT layout)', [0, 1, 2, 3, 8, 9, 10, 11]],
  ['BSP not APIC ID 0, IDs up to 254', [5, 0, 254, 100]],
] as [string, number[]][]) {
  test(`MP table, ${label}: found and walked as Linux does`, () => {
    const p = check(ids);
    assert.equal(p.floatingPointer, MPTABLE_ADDRESS);
  });
}

test('MP table: may also go in the first KiB of the EBDA when it fits', () => {
  const p = check(range(4), EBDA_START);
  assert.equal(p.floatingPointer, EBDA_START);
  assert.equal(p.configTable, EBDA_START + 16);
  // 64 vCPUs (1500 bytes) do not fit below the VGA window
  assert.throws(() => buildMpTable(options(range(64)), EBDA_START), /runs past 0xa0000/);
});

test('MP table: default I/O APIC ID is the number of vCPUs, or the first free ID when APIC IDs have gaps', () => {
  assert.equal(defaultIoapicId([0]), 1);
  assert.equal(defaultIoapicId(range(64)), 64);
  assert.equal(defaultIoapicId([0, 1, 2, 3, 8, 9, 10, 11]), 4);
  assert.equal(defaultIoapicId([1, 2]), 0);
});

test('MP table: what it cannot describe is refused', () => {
  const good = options([0, 1]);
  assert.throws(() => buildMpTable({ ...good, apicIds: [] }), RangeError);
  assert.throws(() => buildMpTable({ ...good, apicIds: [0, 255] }), /does not fit the MP table/); // x2APIC IDs: ACPI only
  assert.throws(() => buildMpTable({ ...good, apicIds: [0, 0] }), /twice/);
  assert.throws(() => buildMpTable({ ...good, ioapicId: 1 }), /also a local APIC ID/);
  assert.throws(() => buildMpTable({ ...good, ioapicId: 255 }), RangeError);
  assert.throws(() => buildMpTable(good, 0xf0008), /16-byte aligned/);
  assert.throws(() => buildMpTable({ ...good, ioapicAddress: 0x1_0000_0000 }), /32-bit/);
  assert.throws(() => buildMpTable(good, 0xe0000), /outside the ranges/);
  assert.throws(() => buildMpTable(good, 0x9f800), /outside the ranges/);
  assert.throws(() => buildMpTable(good, 0xffff0), /runs past 0x100000/);
});

test('MP table: CPU signature and feature flags can come from CPUID', () => {
  const t = buildMpTable({ ...options([0, 1]), cpuSignature: 0x000906ea, cpuFeatures: 0xbfebfbff });
  const dv = new DataView(t.bytes.buffer);
  assert.equal(dv.getUint32(16 + 44 + 4, true), 0x000906ea);
  assert.equal(dv.getUint32(16 + 44 + 8, true), 0xbfebfbff);
});

test('MP table with PCI: bus 0 is PCI, ISA follows as bus 1, INTA# of each slot on its I/O APIC pin (level, active low)', () => {
  const apicIds = [0, 1];
  const opts = {
    apicIds,
    ioapicId: 2,
    ioapicAddress: IOAPIC_ADDRESS,
    pci: {
      intx: [
        { slot: 1, gsi: 16 },
        { slot: 2, gsi: 17 },
        { slot: 9, gsi: 16 },
      ],
    },
  };
  const mem = lowMemory();
  const table = writeMpTable(mem, opts);
  assert.equal(table.bytes.length, mpTableSize(2, opts.pci));
  const p = parse(mem.bytes);
  assert.deepEqual(p.buses, [
    { id: 0, type: 'PCI   ' },
    { id: 1, type: 'ISA   ' },
  ]);
  const pci = p.ioInterrupts.filter((x) => x.bus === 0);
  assert.deepEqual(
    pci.map((x) => [x.type, x.flags, x.irq, x.apic, x.pin]),
    [
      [MP_INT, 0x0f, 1 << 2, 2, 16],
      [MP_INT, 0x0f, 2 << 2, 2, 17],
      [MP_INT, 0x0f, 9 << 2, 2, 16],
    ],
  );
  const isa = p.ioInterrupts.filter((x) => x.bus === 1);
  assert.equal(isa.length, 16, 'the ISA interrupts moved to bus 1');
  assert.ok(p.localInterrupts.every((x) => x.bus === 1));
  assert.throws(() => writeMpTable(mem, { ...opts, pci: { intx: [{ slot: 32, gsi: 16 }] } }), /slot 32/);
  assert.throws(() => writeMpTable(mem, { ...opts, pci: { intx: [{ slot: 1, gsi: 24 }] } }), /pin 24/);
});
