// ACPI tables, checked by the reference implementation: every table is disassembled with iasl (acpica-tools),
// which must report no warning or error, and the fields are read back from iasl's output; each disassembly is
// compiled back and must give the same bytes; acpiexec loads the whole set and builds the namespace. The RSDP
// (which iasl 20200925 cannot take from a file) and the pointer chain are checked by a walker written here.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  ACPI_TABLES_END,
  ACPI_TABLES_START,
  buildAcpiTables,
  type AcpiOptions,
  type AcpiTables,
} from '../../src/arch/x86_64/acpi/index.js';
import { ByteWriter, sum8 } from '../../src/arch/x86_64/acpi/sdt.js';
import { eisaId, integer, nameString, pkgLength } from '../../src/arch/x86_64/acpi/aml.js';
import { defaultIoapicId, MPTABLE_ADDRESS, writeMpTable } from '../../src/arch/x86_64/mptable.js';
import { ramRanges, IOAPIC_ADDRESS, LAPIC_ADDRESS } from '../../src/arch/x86_64/layout.js';
import { GuestMemory } from '../../src/base/guest-memory.js';
import { MIB } from '../../src/base/units.js';
import { serialPortModel } from '../../src/devices/legacy/uart-16550a.js';
import { pciRootModel } from '../../src/devices/pci/root.js';

const NO_IASL = 'iasl not installed: sudo apt-get install acpica-tools';

function tool(name: string): { version: string } | undefined {
  const r = spawnSync(name, ['-v'], { encoding: 'utf8' });
  if (r.error) return undefined;
  const m = /version (\d+)/.exec(`${r.stdout}${r.stderr}`);
  return { version: m ? m[1] : 'unknown' };
}
const iasl = tool('iasl');
const acpiexec = tool('acpiexec');

const range = (n: number, from = 0): number[] => Array.from({ length: n }, (_, i) => from + i);

/** The machine's COM1, described by its own device model as the builder does. */
const com1Aml = serialPortModel.describe!(new SharedArrayBuffer(0), { pciInterrupts: [] }).acpi ?? [];

function options(apicIds: number[]): AcpiOptions {
  return {
    apicIds,
    ioapicId: defaultIoapicId(apicIds),
    ioapicAddress: IOAPIC_ADDRESS,
    lapicAddress: LAPIC_ADDRESS,
    devices: com1Aml,
  };
}

/** 1 MiB of "low memory" the tables are written into, as the guest would see it. */
class LowMemory {
  readonly bytes = new Uint8Array(MIB);
  write(gpa: number, data: Uint8Array): void {
    assert.ok(gpa >= 0 && gpa + data.length <= this.bytes.length, `write at 0x${gpa.toString(16)} outside low memory`);
    this.bytes.set(data, gpa);
  }
  u32(gpa: number): number {
    return new DataView(this.bytes.buffer).getUint32(gpa, true);
  }
  u64(gpa: number): number {
    return Number(new DataView(this.bytes.buffer).getBigUint64(gpa, true));
  }
  ascii(gpa: number, n: number): string {
    return Buffer.from(this.bytes.subarray(gpa, gpa + n)).toString('latin1');
  }
}

// ---- what an OS does: find the RSDP by scanning, follow the pointers ----

interface Found {
  rsdp: number;
  xsdt: number;
  byPointer: Map<string, number>; // signature → address, reached from the XSDT (and FADT → DSDT)
}

function walk(mem: LowMemory): Found {
  let rsdp = -1;
  for (let a = 0xe0000; a < 0x100000; a += 16) {
    if (mem.ascii(a, 8) === 'RSD PTR ' && sum8(mem.bytes, a, a + 20) === 0) {
      rsdp = a;
      break;
    }
  }
  assert.notEqual(rsdp, -1, 'no RSDP found scanning 0xE0000-0xFFFFF');
  assert.equal(mem.bytes[rsdp + 15], 2, 'RSDP revision');
  assert.equal(mem.u32(rsdp + 20), 36, 'RSDP length');
  assert.equal(sum8(mem.bytes, rsdp, rsdp + 36), 0, 'RSDP extended checksum');
  assert.equal(mem.ascii(rsdp + 9, 6), 'PRTITA');
  const xsdt = mem.u64(rsdp + 24);
  const table = (at: number, sig: string): number => {
    assert.equal(mem.ascii(at, 4), sig, `table at 0x${at.toString(16)}`);
    const len = mem.u32(at + 4);
    assert.equal(sum8(mem.bytes, at, at + len), 0, `${sig} checksum`);
    return len;
  };
  const byPointer = new Map<string, number>();
  const xlen = table(xsdt, 'XSDT');
  for (let e = xsdt + 36; e < xsdt + xlen; e += 8) {
    const at = mem.u64(e);
    const sig = mem.ascii(at, 4);
    table(at, sig);
    byPointer.set(sig, at);
  }
  const fadt = byPointer.get('FACP');
  assert.ok(fadt !== undefined, 'XSDT has no FADT');
  const dsdt = mem.u64(fadt + 140);
  assert.equal(mem.u32(fadt + 40), dsdt, 'FADT DSDT and X_DSDT agree');
  table(dsdt, 'DSDT');
  byPointer.set('DSDT', dsdt);
  return { rsdp, xsdt, byPointer };
}

// ---- iasl ----

interface Field {
  offset: number;
  length: number;
  name: string;
  value: string;
  bits: Map<string, number>;
}

/** Parses iasl's data-table disassembly: "[02Ch 0044   1]   Subtable Type : 00 [Processor Local APIC]". */
function parseDataTable(dsl: string): Field[] {
  const fields: Field[] = [];
  for (const line of dsl.split('\n')) {
    let m = /^\[([0-9A-F]+)h \d+\s+(\d+)\]\s+(.*?) : (.*)$/.exec(line);
    if (m) {
      fields.push({
        offset: parseInt(m[1], 16),
        length: Number(m[2]),
        name: m[3].trim(),
        value: m[4].trim(),
        bits: new Map(),
      });
      continue;
    }
    m = /^\s+(\S.*?) : (\d+)$/.exec(line);
    if (m && fields.length > 0) fields[fields.length - 1].bits.set(m[1].trim(), Number(m[2]));
  }
  return fields;
}

const hex = (f: Field | undefined): number => {
  assert.ok(f, 'missing field');
  return parseInt(f.value.split(/\s/)[0], 16);
};
const quoted = (f: Field | undefined): string => {
  assert.ok(f, 'missing field');
  const m = /"(.*?)"/.exec(f.value);
  assert.ok(m, `no string in ${f.value}`);
  return m[1];
};
const at = (fields: Field[], offset: number, name: string): Field => {
  const f = fields.find((x) => x.offset === offset && x.name === name);
  assert.ok(f, `iasl shows no "${name}" at 0x${offset.toString(16)}`);
  return f;
};

const BAD_OUTPUT = /warning|error|abort|terminates|incorrect|invalid|not a valid|too long|\*\*\*\*/i;

function assertClean(what: string, text: string): void {
  const bad = text.split('\n').filter((l) => BAD_OUTPUT.test(l));
  assert.deepEqual(bad, [], `${what}: iasl complained`);
}

/** `iasl -d` on the table; returns the .dsl text after checking iasl's exit status, output and the .dsl itself. */
function disassemble(dir: string, name: string, bytes: Uint8Array): string {
  writeFileSync(join(dir, `${name}.dat`), bytes);
  const r = spawnSync('iasl', ['-d', `${name}.dat`], { cwd: dir, encoding: 'utf8' });
  const out = `${r.stdout}${r.stderr}`;
  assert.equal(r.status, 0, `iasl -d ${name}.dat exited ${r.status}:\n${out}`);
  assertClean(`iasl -d ${name}.dat`, out);
  const dsl = readFileSync(join(dir, `${name}.dsl`), 'utf8');
  assertClean(`${name}.dsl`, dsl);
  return dsl;
}

/** Compiles iasl's disassembly back: no error, warning or remark; returns the AML/binary iasl produced. */
function recompile(dir: string, name: string): Uint8Array {
  const r = spawnSync('iasl', ['-p', `${name}-rt`, `${name}.dsl`], { cwd: dir, encoding: 'utf8' });
  const out = `${r.stdout}${r.stderr}`;
  assert.equal(r.status, 0, `iasl ${name}.dsl exited ${r.status}:\n${out}`);
  assert.match(out, /Compilation successful\. 0 Errors, 0 Warnings, 0 Remarks/, out);
  return readFileSync(join(dir, `${name}-rt.aml`));
}

/** The compiler fills in its own Creator ID/Revision and checksum; everything else must come back identical. */
function assertSameTable(name: string, original: Uint8Array, compiled: Uint8Array): void {
  assert.equal(compiled.length, original.length, `${name}: recompiled length`);
  const mask = (b: Uint8Array) => {
    const c = Uint8Array.from(b);
    c.fill(0, 28, 36);
    c[9] = 0;
    return Buffer.from(c).toString('hex');
  };
  assert.equal(mask(compiled), mask(original), `${name}: the disassembly does not compile back to the same table`);
}

function subtables(fields: Field[]): Map<string, Field>[] {
  const out: Map<string, Field>[] = [];
  for (const f of fields) {
    if (f.offset < 0x2c) continue;
    if (f.name === 'Subtable Type') out.push(new Map());
    out[out.length - 1]?.set(f.name, f);
  }
  return out;
}

function checkHeader(fields: Field[], signature: string, revision: number, length: number): void {
  assert.equal(quoted(at(fields, 0, 'Signature')), signature);
  assert.equal(hex(at(fields, 4, 'Table Length')), length);
  assert.equal(hex(at(fields, 8, 'Revision')), revision);
  assert.equal(quoted(at(fields, 10, 'Oem ID')), 'PRTITA');
  assert.equal(quoted(at(fields, 16, 'Oem Table ID')), `PRTT${signature}`);
  assert.equal(hex(at(fields, 24, 'Oem Revision')), 1);
  assert.equal(quoted(at(fields, 28, 'Asl Compiler ID')), 'PRTA');
}

function checkWithIasl(dir: string, opts: AcpiOptions, result: AcpiTables): void {
  const bySig = new Map(result.tables.map((t) => [t.signature, t]));
  const get = (sig: string) => {
    const t = bySig.get(sig);
    assert.ok(t, `no ${sig}`);
    return t;
  };
  const [xsdt, fadt, madt, dsdt] = ['XSDT', 'FACP', 'APIC', 'DSDT'].map(get);

  // XSDT: two entries, the FADT and the MADT, at the addresses they were placed at
  const x = parseDataTable(disassemble(dir, 'xsdt', xsdt.bytes));
  checkHeader(x, 'XSDT', 1, 52);
  assert.equal(hex(at(x, 36, 'ACPI Table Address   0')), fadt.address);
  assert.equal(hex(at(x, 44, 'ACPI Table Address   1')), madt.address);
  assertSameTable('XSDT', xsdt.bytes, recompile(dir, 'xsdt'));

  // FADT: revision 6.5, HW-reduced, pointing to the DSDT with both fields, no FACS
  const f = parseDataTable(disassemble(dir, 'facp', fadt.bytes));
  checkHeader(f, 'FACP', 6, 276);
  assert.equal(hex(at(f, 0x83, 'FADT Minor Revision')), 5);
  assert.equal(hex(at(f, 0x28, 'DSDT Address')), dsdt.address);
  assert.equal(hex(at(f, 0x8c, 'DSDT Address')), dsdt.address);
  assert.equal(hex(at(f, 0x24, 'FACS Address')), 0);
  assert.equal(hex(at(f, 0x84, 'FACS Address')), 0);
  const flags = at(f, 0x70, 'Flags (decoded below)');
  assert.equal(flags.bits.get('Hardware Reduced (V5)'), 1);
  assert.equal(flags.bits.get('WBINVD instruction is operational (V1)'), 1);
  assert.equal(flags.bits.get('Reset Register Supported (V2)'), 0);
  const boot = at(f, 0x6d, 'Boot Flags (decoded below)');
  assert.equal(boot.bits.get('Legacy Devices Supported (V2)'), 1);
  assert.equal(boot.bits.get('8042 Present on ports 60/64 (V2)'), 0);
  assert.equal(boot.bits.get('CMOS RTC Not Present (V5)'), 1);
  assert.equal(boot.bits.get('VGA Not Present (V4)'), 1);
  assertSameTable('FACP', fadt.bytes, recompile(dir, 'facp'));

  // MADT: one local APIC (or x2APIC) per vCPU in the given order, the I/O APIC, IRQ0 → GSI2, LINT1 NMI
  const m = parseDataTable(disassemble(dir, 'apic', madt.bytes));
  checkHeader(m, 'APIC', 6, madt.bytes.length);
  assert.equal(hex(at(m, 36, 'Local Apic Address')), LAPIC_ADDRESS);
  assert.equal(at(m, 40, 'Flags (decoded below)').bits.get('PC-AT Compatibility'), 1);
  const subs = subtables(m);
  const type = (s: Map<string, Field>) => hex(s.get('Subtable Type'));
  const cpus = subs.filter((s) => type(s) === 0 || type(s) === 9);
  assert.equal(cpus.length, opts.apicIds.length);
  cpus.forEach((s, uid) => {
    const id = opts.apicIds[uid];
    if (id < 255) {
      assert.equal(type(s), 0, `APIC ID ${id} is in a Processor Local APIC structure`);
      assert.equal(hex(s.get('Local Apic ID')), id);
      assert.equal(hex(s.get('Processor ID')), uid);
    } else {
      assert.equal(type(s), 9, `APIC ID ${id} is in a Processor Local x2APIC structure`);
      assert.equal(hex(s.get('Processor x2Apic ID')), id);
      assert.equal(hex(s.get('Processor UID')), uid);
    }
    assert.equal(s.get('Flags (decoded below)')?.bits.get('Processor Enabled'), 1);
  });
  const ioapics = subs.filter((s) => type(s) === 1);
  assert.equal(ioapics.length, 1);
  assert.equal(hex(ioapics[0].get('I/O Apic ID')), opts.ioapicId);
  assert.equal(hex(ioapics[0].get('Address')), IOAPIC_ADDRESS);
  assert.equal(hex(ioapics[0].get('Interrupt')), 0, 'GSI base');
  const overrides = subs.filter((s) => type(s) === 2);
  assert.deepEqual(
    overrides.map((s) => [
      hex(s.get('Bus')),
      hex(s.get('Source')),
      hex(s.get('Interrupt')),
      hex(s.get('Flags (decoded below)')),
    ]),
    [[0, 0, 2, 0]],
    'interrupt source overrides: exactly IRQ0 → GSI2, conforming to the ISA bus',
  );
  const nmis = subs.filter((s) => type(s) === 4);
  assert.equal(nmis.length, 1);
  assert.equal(hex(nmis[0].get('Processor ID')), 0xff);
  assert.equal(hex(nmis[0].get('Interrupt Input LINT')), 1);
  const x2nmis = subs.filter((s) => type(s) === 10);
  const anyX2 = opts.apicIds.some((id) => id >= 255);
  assert.equal(x2nmis.length, anyX2 ? 1 : 0);
  if (anyX2) {
    assert.equal(hex(x2nmis[0].get('Processor UID')), 0xffffffff);
    assert.equal(hex(x2nmis[0].get('Interrupt Input LINT')), 1);
  }
  assert.equal(subs.length, cpus.length + 1 + 1 + 1 + (anyX2 ? 1 : 0), 'no other MADT structures');
  assertSameTable('APIC', madt.bytes, recompile(dir, 'apic'));

  // DSDT: \_SB_ with processor devices C000… (_UID = MADT processor UID), COM1 and its resources, \_S5_
  const d = disassemble(dir, 'dsdt', dsdt.bytes);
  assert.match(d, /DefinitionBlock \("", "DSDT", 2, "PRTITA", "PRTTDSDT", 0x00000001\)/);
  assert.match(d, /Scope \(\\_SB\)/);
  assert.match(d, /Device \(COM1\)\s*\{\s*Name \(_HID, EisaId \("PNP0501"\)/);
  assert.match(
    d,
    /IO \(Decode16,\s*0x03F8,\s*\/\/ Range Minimum\s*0x03F8,\s*\/\/ Range Maximum\s*0x01,\s*\/\/ Alignment\s*0x08,\s*\/\/ Length/,
  );
  assert.match(d, /IRQNoFlags \(\)\s*\{4\}/);
  assert.match(d, /Name \(\\_S5, Package \(0x04\)/);
  const procs = [
    ...d.matchAll(/Device \((C[0-9A-F]{3})\)\s*\{\s*Name \(_HID, "ACPI0007"[^)]*\)[^\n]*\n\s*Name \(_UID, (\w+)\)/g),
  ];
  assert.equal(procs.length, opts.apicIds.length, 'one processor device per vCPU');
  procs.forEach((p, uid) => {
    assert.equal(p[1], `C${uid.toString(16).toUpperCase().padStart(3, '0')}`);
    assert.equal(p[2] === 'Zero' ? 0 : p[2] === 'One' ? 1 : Number(p[2]), uid);
  });
  recompile(dir, 'dsdt'); // clean compile; the compiler shortens name paths, so the bytes may differ

  // acpiexec: loads the tables and builds the namespace as an OS would (acpica-tools has it next to iasl)
  if (!acpiexec) console.warn('\n*** SKIPPED: acpiexec not installed: sudo apt-get install acpica-tools\n');
  else {
    const r = spawnSync('acpiexec', ['-b', 'Namespace', 'facp.dat', 'apic.dat', 'dsdt.dat', 'xsdt.dat'], {
      cwd: dir,
      encoding: 'utf8',
    });
    const out = `${r.stdout}${r.stderr}`;
    assert.equal(r.status, 0, out);
    assertClean('acpiexec', out.replace(/No outstanding allocations/, ''));
    assert.match(out, /1 ACPI AML tables successfully acquired and loaded/);
    assert.match(out, /COM1 Device/);
    assert.match(out, /_CRS Buffer\s+\S+\s+\S+\s+Len 0D = 47 01 F8 03 F8 03 01 08 22 10 00 79/);
    assert.equal([...out.matchAll(/_HID String\s+\S+\s+\S+\s+Len 08 "ACPI0007"/g)].length, opts.apicIds.length);
  }
}

const CONFIGS: [string, number[]][] = [
  ['1 vCPU', [0]],
  ['2 vCPUs', [0, 1]],
  ['16 vCPUs', range(16)],
  ['64 vCPUs', range(64)],
  ['gapped APIC IDs (SMT layout)', [0, 1, 2, 3, 8, 9, 10, 11]],
  ['APIC IDs ≥ 255 (x2APIC entries)', [0, 1, 254, 255, 256, 0x1000]],
  ['64 vCPUs, all x2APIC but the BSP', [0, ...range(63, 300)]],
];

for (const [label, apicIds] of CONFIGS) {
  test(`ACPI tables, ${label}: placement, pointers, checksums`, () => {
    const opts = options(apicIds);
    const mem = new LowMemory();
    const result = buildAcpiTables(opts, mem);
    writeMpTable(mem, {
      apicIds: apicIds.filter((id) => id < 255),
      ioapicId: opts.ioapicId,
      ioapicAddress: IOAPIC_ADDRESS,
    });

    assert.equal(result.rsdpAddress, ACPI_TABLES_START);
    assert.equal(result.rsdpAddress % 16, 0);
    // in [0xE0000, 0xF0000), not overlapping each other or the MP table, checksums valid
    const sorted = [...result.tables].sort((a, b) => a.address - b.address);
    for (let i = 0; i < sorted.length; i++) {
      const t = sorted[i];
      assert.ok(
        t.address >= ACPI_TABLES_START && t.address + t.bytes.length <= ACPI_TABLES_END,
        `${t.signature} placement`,
      );
      assert.ok(t.address + t.bytes.length <= MPTABLE_ADDRESS);
      if (i > 0) assert.ok(sorted[i - 1].address + sorted[i - 1].bytes.length <= t.address, 'tables overlap');
      if (t.signature !== 'RSD PTR ') {
        assert.equal(sum8(t.bytes), 0, `${t.signature} checksum`);
        assert.equal(
          new DataView(t.bytes.buffer, t.bytes.byteOffset).getUint32(4, true),
          t.bytes.length,
          `${t.signature} length`,
        );
      }
    }
    assert.equal(result.end, sorted[sorted.length - 1].address + sorted[sorted.length - 1].bytes.length);

    const found = walk(mem);
    assert.equal(found.rsdp, result.rsdpAddress);
    for (const t of result.tables) {
      if (t.signature === 'RSD PTR ') continue;
      if (t.signature === 'XSDT') assert.equal(found.xsdt, t.address);
      else assert.equal(found.byPointer.get(t.signature), t.address, `${t.signature} reached by pointer`);
    }
  });

  test(`ACPI tables, ${label}: iasl disassembles them cleanly and reads back the fields`, (t) => {
    if (!iasl) {
      t.skip(NO_IASL);
      return;
    }
    t.diagnostic(`iasl ${iasl.version}${acpiexec ? `, acpiexec ${acpiexec.version}` : ', no acpiexec'}`);
    const dir = mkdtempSync(join(tmpdir(), 'partita-acpi-'));
    try {
      const opts = options(apicIds);
      checkWithIasl(dir, opts, buildAcpiTables(opts));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
}

test('ACPI tables: FADT options (legacy devices, reset register, sleep register)', (t) => {
  const opts: AcpiOptions = {
    ...options([0, 1]),
    legacy: { i8042: true, rtc: true },
    reset: { port: 0xcf9, value: 0x06 },
    sleepPort: 0x3c0,
  };
  const fadt = buildAcpiTables(opts).tables.find((x) => x.signature === 'FACP');
  assert.ok(fadt);
  const dv = new DataView(fadt.bytes.buffer, fadt.bytes.byteOffset);
  assert.equal(dv.getUint16(109, true), 0b000111, 'IAPC_BOOT_ARCH: legacy devices, 8042, no VGA (RTC present)');
  assert.equal(dv.getUint32(112, true) & (1 << 10), 1 << 10, 'RESET_REG_SUP');
  assert.deepEqual([...fadt.bytes.subarray(116, 129)], [1, 8, 0, 1, 0xf9, 0x0c, 0, 0, 0, 0, 0, 0, 0x06]);
  assert.deepEqual([...fadt.bytes.subarray(244, 256)], [1, 8, 0, 1, 0xc0, 0x03, 0, 0, 0, 0, 0, 0]);
  assert.deepEqual([...fadt.bytes.subarray(256, 268)], [1, 8, 0, 1, 0xc0, 0x03, 0, 0, 0, 0, 0, 0]);
  if (!iasl) {
    t.skip(NO_IASL);
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), 'partita-acpi-'));
  try {
    const f = parseDataTable(disassemble(dir, 'facp', fadt.bytes));
    assert.equal(at(f, 0x70, 'Flags (decoded below)').bits.get('Reset Register Supported (V2)'), 1);
    assert.equal(at(f, 0x6d, 'Boot Flags (decoded below)').bits.get('CMOS RTC Not Present (V5)'), 0);
    assert.equal(hex(at(f, 0x80, 'Value to cause reset')), 6);
    assertSameTable('FACP', fadt.bytes, recompile(dir, 'facp'));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('ACPI tables: bad input is refused', () => {
  assert.throws(() => buildAcpiTables(options([])), RangeError);
  assert.throws(() => buildAcpiTables(options([0, 1, 1])), /twice/);
  assert.throws(() => buildAcpiTables(options(range(256))), RangeError);
  assert.throws(() => buildAcpiTables({ ...options([0]), ioapicId: 255 }), RangeError);
  assert.throws(() => buildAcpiTables({ ...options([0]), base: 0xe0008 }), /16-byte/);
  assert.throws(() => buildAcpiTables({ ...options([0]), base: 0xd0000 }), RangeError);
  assert.throws(() => buildAcpiTables({ ...options([0]), lapicAddress: 0x1_0000_0000 }), RangeError);
});

test('AML encoder: package lengths, names, integers, EISA IDs', () => {
  assert.deepEqual(pkgLength(0), [1]);
  assert.deepEqual(pkgLength(62), [63]);
  assert.deepEqual(pkgLength(63), [0x40 | ((63 + 2) & 0xf), (63 + 2) >> 4]);
  assert.deepEqual(pkgLength(0xffd), [0x40 | 0xf, 0xff]); // 0xffd + 2 = 0xfff: the most two bytes hold
  assert.deepEqual(pkgLength(0xffe), [0x80 | 1, 0x00, 0x01]); // 0xffe + 3 = 0x1001
  assert.deepEqual(nameString('\\_SB_.COM1'), [0x5c, 0x2e, ...Buffer.from('_SB_COM1')]);
  assert.deepEqual(nameString('_S5'), [...Buffer.from('_S5_')]);
  assert.deepEqual(nameString('^^A.B.C'), [0x5e, 0x5e, 0x2f, 3, ...Buffer.from('A___B___C___')]);
  assert.deepEqual([...integer(0)], [0x00]);
  assert.deepEqual([...integer(1)], [0x01]);
  assert.deepEqual([...integer(0x3f8)], [0x0b, 0xf8, 0x03]);
  assert.deepEqual([...integer(0x1_0000_0000n)], [0x0e, 0, 0, 0, 0, 1, 0, 0, 0]);
  assert.deepEqual([...eisaId('PNP0501')], [0x0c, 0x41, 0xd0, 0x05, 0x01]);
  assert.deepEqual([...eisaId('PNP0A03')], [0x0c, 0x41, 0xd0, 0x0a, 0x03]);
  assert.throws(() => nameString('\\_SB_.com1'), RangeError);
});

test('ACPI and MP tables written into real guest RAM (GuestMemory)', () => {
  const memory = GuestMemory.allocateRanges(ramRanges(2 * MIB));
  try {
    const opts = options([0, 1, 2, 3]);
    const acpi = buildAcpiTables(opts, memory);
    for (const t of acpi.tables) assert.deepEqual(memory.read(t.address, t.bytes.length), t.bytes);
    const mp = writeMpTable(memory, { apicIds: opts.apicIds, ioapicId: opts.ioapicId, ioapicAddress: IOAPIC_ADDRESS });
    assert.deepEqual(memory.read(mp.floatingPointer, mp.bytes.length), mp.bytes);
    assert.equal(memory.readCString(acpi.rsdpAddress, 8), 'RSD PTR ');
  } finally {
    memory.release();
  }
});

test('ByteWriter: fields written across buffer growth land in the result', () => {
  const w = new ByteWriter();
  for (let i = 0; i < 1000; i++) {
    if (i % 3 === 0) w.u8(i & 0xff);
    else if (i % 3 === 1) w.u16(i);
    else w.u32(i * 1000);
  }
  const b = w.finish();
  const dv = new DataView(b.buffer);
  let at = 0;
  for (let i = 0; i < 1000; i++) {
    if (i % 3 === 0) {
      assert.equal(b[at], i & 0xff);
      at += 1;
    } else if (i % 3 === 1) {
      assert.equal(dv.getUint16(at, true), i);
      at += 2;
    } else {
      assert.equal(dv.getUint32(at, true), i * 1000);
      at += 4;
    }
  }
  assert.equal(at, b.length);
  assert.throws(() => new ByteWriter().u8(256), RangeError);
  assert.throws(() => new ByteWriter().ascii('ABC', 4), RangeError);
});

test('ACPI tables with PCI: MCFG names the ECAM window, DSDT has PCI0 with its windows and _PRT', (t) => {
  // As the PCI root device describes itself (src/devices/pci/root.ts) with two PCI functions on the bus.
  const root = pciRootModel.describe!(
    { hostBridge: new SharedArrayBuffer(0) },
    {
      pciInterrupts: [
        { slot: 1, gsi: 16 },
        { slot: 2, gsi: 17 },
      ],
    },
  );
  const opts = { ...options([0, 1]), devices: [...com1Aml, ...(root.acpi ?? [])], tables: root.acpiTables };
  const mem = new LowMemory();
  const result = buildAcpiTables(opts, mem);
  const mcfg = result.tables.find((x) => x.signature === 'MCFG');
  assert.ok(mcfg, 'an MCFG table is built');
  assert.equal(walk(mem).byPointer.get('MCFG'), mcfg.address, 'the XSDT points at the MCFG');
  assert.equal(sum8(mcfg.bytes), 0);
  assert.equal(
    buildAcpiTables(options([0])).tables.find((x) => x.signature === 'MCFG'),
    undefined,
    'no PCI, no MCFG',
  );
  if (!iasl) {
    t.skip(NO_IASL);
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), 'partita-acpi-'));
  try {
    const m = disassemble(dir, 'mcfg', mcfg.bytes);
    assert.match(m, /Base Address : 00000000E0000000/);
    assert.match(m, /Segment Group Number : 0000/);
    assert.match(m, /Start Bus Number : 00/);
    assert.match(m, /End Bus Number : FF/);
    const dsdt = result.tables.find((x) => x.signature === 'DSDT');
    assert.ok(dsdt);
    const d = disassemble(dir, 'dsdt', dsdt.bytes);
    assert.match(d, /Device \(PCI0\)\s*\{\s*Name \(_HID, EisaId \("PNP0A08"\)/);
    assert.match(d, /Name \(_CID, EisaId \("PNP0A03"\)/);
    assert.match(
      d,
      /WordBusNumber \(ResourceProducer, MinFixed, MaxFixed, PosDecode,\s*0x0000,\s*\/\/ Granularity\s*0x0000,\s*\/\/ Range Minimum\s*0x00FF,/,
    );
    assert.match(
      d,
      /WordIO \(ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange,\s*0x0000,\s*\/\/ Granularity\s*0xC000,\s*\/\/ Range Minimum\s*0xFFFF,/,
    );
    assert.match(
      d,
      /DWordMemory \(ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite,\s*0x00000000,\s*\/\/ Granularity\s*0xC0000000,\s*\/\/ Range Minimum\s*0xDFFFFFFF,/,
    );
    assert.match(d, /Package \(0x04\)\s*\{\s*0x0001FFFF,\s*Zero,\s*Zero,\s*0x10\s*\}/);
    assert.match(d, /Package \(0x04\)\s*\{\s*0x0002FFFF,\s*Zero,\s*Zero,\s*0x11\s*\}/);
    assert.match(d, /Memory32Fixed \(ReadWrite,\s*0xE0000000,\s*\/\/ Address Base\s*0x10000000,/);
    recompile(dir, 'dsdt');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
