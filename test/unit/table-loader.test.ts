// The ACPI handover to firmware: etc/acpi/rsdp, etc/acpi/tables and etc/table-loader (acpiFirmwareFiles), and
// the other fw_cfg files of a firmware boot (firmwareConfigFiles: etc/e820, bootorder, …). A small loader
// interpreter written here does what SeaBIOS's romfile_loader.c and OVMF's QemuFwCfgAcpi.c do (allocate each
// file in its zone, add allocation addresses to pointers, compute checksums); then an OS-style walk from the
// F segment (RSDP → XSDT → FADT → DSDT, MADT, MCFG) checks every pointer and checksum, the tables are compared
// with direct boot's, and iasl disassembles them. The last test goes through the whole path the lead wires:
// devices created and described, files added to the fw-cfg device, read back by a "firmware" over fw_cfg DMA.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  ACPI_RSDP_FILE,
  ACPI_TABLES_FILE,
  acpiFirmwareFiles,
  buildAcpiTables,
  type AcpiOptions,
} from '../../src/arch/x86_64/acpi/index.js';
import {
  decodeTableLoader,
  encodeTableLoader,
  LOADER_COMMAND_SIZE,
  TABLE_LOADER_FILE,
  TableLoader,
  type LoaderCommand,
} from '../../src/arch/x86_64/acpi/table-loader.js';
import { sum8 } from '../../src/arch/x86_64/acpi/sdt.js';
import { IOAPIC_ADDRESS, LAPIC_ADDRESS } from '../../src/arch/x86_64/layout.js';
import { defaultIoapicId } from '../../src/arch/x86_64/mptable.js';
import { GuestMemory } from '../../src/base/guest-memory.js';
import { GIB, MIB } from '../../src/base/units.js';
import { serialPortModel } from '../../src/devices/legacy/uart-16550a.js';
import { pciRootModel } from '../../src/devices/pci/root.js';
import { addFwCfgFile, type FwCfgState } from '../../src/devices/firmware/fw-cfg.js';
import { attachDevices, createDevices, describeDevices } from '../../src/vmm/device-set.js';
import {
  bootDevicePath,
  bootOrderFile,
  e820File,
  firmwareConfigFiles,
  type BootDevice,
} from '../../src/vmm/firmware-config.js';
import type { PlatformDescription } from '../../src/vmm/device-set.js';
import { QEMU, QEMU_MISSING, qemuAvailable } from '../support/qemu.js';
import { HANG_GUARD_MS } from '../support/partita.js';

const iasl = !spawnSync('iasl', ['-v']).error;

// ---- a loader interpreter, as firmware runs etc/table-loader ----

const FSEG = { start: 0xf_0000, end: 0x10_0000 };
const RAM_BYTES = 32 * MIB;

interface Loaded {
  readonly ram: Uint8Array;
  /** file name → where it was allocated */
  readonly at: Map<string, { address: number; size: number }>;
}

/**
 * Runs the loader script over `files` in a 32 MiB "RAM": FSEG allocations in 0xF0000-0xFFFFF, HIGH ones from
 * `highBase` up. Checksums the SeaBIOS way (the byte minus the range's sum) or the OVMF way (the byte zeroed,
 * then set to the range's checksum). Anything firmware would reject fails the test.
 */
function runLoader(files: Map<string, Uint8Array>, highBase: number, style: 'seabios' | 'ovmf'): Loaded {
  const ram = new Uint8Array(RAM_BYTES);
  const at = new Map<string, { address: number; size: number }>();
  const cursor = { fseg: FSEG.start, high: highBase };
  const script = files.get(TABLE_LOADER_FILE);
  assert.ok(script, 'no etc/table-loader');
  assert.equal(script.length % LOADER_COMMAND_SIZE, 0);
  const file = (name: string) => {
    const f = at.get(name);
    assert.ok(f, `'${name}' used before it was allocated`);
    return f;
  };
  for (const c of decodeTableLoader(script)) {
    if (c.kind === 'allocate') {
      const data = files.get(c.file);
      assert.ok(data, `ALLOCATE of '${c.file}', which is not a fw_cfg file`);
      assert.ok(!at.has(c.file), `'${c.file}' allocated twice`);
      assert.equal(c.align & (c.align - 1), 0, 'alignment is a power of two');
      const address = Math.ceil(cursor[c.zone] / c.align) * c.align;
      cursor[c.zone] = address + data.length;
      if (c.zone === 'fseg') assert.ok(cursor.fseg <= FSEG.end, 'FSEG overflow');
      ram.set(data, address);
      at.set(c.file, { address, size: data.length });
    } else if (c.kind === 'add-pointer') {
      const dest = file(c.destFile);
      const src = file(c.srcFile);
      assert.ok([1, 2, 4, 8].includes(c.size));
      assert.ok(c.offset + c.size <= dest.size, 'pointer inside its file');
      const dv = new DataView(ram.buffer, dest.address + c.offset, c.size);
      let v = 0n;
      for (let i = c.size - 1; i >= 0; i--) v = (v << 8n) | BigInt(dv.getUint8(i));
      v = (v + BigInt(src.address)) & ((1n << BigInt(8 * c.size)) - 1n);
      for (let i = 0; i < c.size; i++) dv.setUint8(i, Number((v >> BigInt(8 * i)) & 0xffn));
    } else {
      const f = file(c.file);
      assert.ok(c.offset < f.size && c.start + c.length <= f.size, 'checksum inside its file');
      const byte = f.address + c.offset;
      if (style === 'ovmf') ram[byte] = 0;
      const s = sum8(ram, f.address + c.start, f.address + c.start + c.length);
      ram[byte] = (ram[byte] - s) & 0xff;
    }
  }
  return { ram, at };
}

// ---- what an OS does afterwards: scan for the RSDP, follow the pointers, check every checksum ----

interface Walked {
  rsdp: number;
  tables: Map<string, { address: number; bytes: Uint8Array }>;
  xsdtEntries: number[];
}

function walk(ram: Uint8Array): Walked {
  const dv = new DataView(ram.buffer);
  const ascii = (a: number, n: number) => Buffer.from(ram.subarray(a, a + n)).toString('latin1');
  let rsdp = -1;
  for (let a = 0xe_0000; a < 0x10_0000; a += 16)
    if (ascii(a, 8) === 'RSD PTR ' && sum8(ram, a, a + 20) === 0) {
      rsdp = a;
      break;
    }
  assert.ok(rsdp >= 0, 'RSDP found by scanning 0xE0000-0xFFFFF');
  assert.equal(sum8(ram, rsdp, rsdp + 36), 0, 'RSDP extended checksum');
  assert.equal(ram[rsdp + 15], 2, 'RSDP revision 2');
  assert.equal(dv.getUint32(rsdp + 16, true), 0, 'no RSDT');
  const tables = new Map<string, { address: number; bytes: Uint8Array }>();
  const table = (address: number, sig: string) => {
    assert.ok(address > 0 && address < ram.length, `${sig} at 0x${address.toString(16)}`);
    assert.equal(ascii(address, 4), sig, `table at 0x${address.toString(16)}`);
    const len = dv.getUint32(address + 4, true);
    assert.equal(sum8(ram, address, address + len), 0, `${sig} checksum`);
    tables.set(sig, { address, bytes: ram.slice(address, address + len) });
  };
  const xsdt = Number(dv.getBigUint64(rsdp + 24, true));
  table(xsdt, 'XSDT');
  const xlen = dv.getUint32(xsdt + 4, true);
  const xsdtEntries: number[] = [];
  for (let e = xsdt + 36; e < xsdt + xlen; e += 8) {
    const a = Number(dv.getBigUint64(e, true));
    xsdtEntries.push(a);
    table(a, ascii(a, 4));
  }
  const fadt = tables.get('FACP');
  assert.ok(fadt, 'the XSDT points at a FADT');
  const dsdt = Number(dv.getBigUint64(fadt.address + 140, true));
  assert.equal(dv.getUint32(fadt.address + 40, true), dsdt, 'FADT DSDT and X_DSDT agree');
  table(dsdt, 'DSDT');
  assert.ok(tables.has('APIC'), 'the XSDT points at a MADT');
  // A FACS, if any, through FIRMWARE_CTRL (X_FIRMWARE_CTRL is for one above 4 GiB): 64-byte aligned, no checksum.
  const facs = dv.getUint32(fadt.address + 36, true);
  const xfacs = Number(dv.getBigUint64(fadt.address + 132, true));
  assert.ok(xfacs === 0 || xfacs === facs, 'X_FIRMWARE_CTRL is 0 or agrees with FIRMWARE_CTRL');
  if (facs !== 0) {
    assert.equal(facs % 64, 0, 'FACS alignment');
    assert.equal(ascii(facs, 4), 'FACS');
    assert.equal(dv.getUint32(facs + 4, true), 64);
    tables.set('FACS', { address: facs, bytes: ram.slice(facs, facs + 64) });
  }
  return { rsdp, tables, xsdtEntries };
}

// ---- configurations ----

const com1 = serialPortModel.describe!(new SharedArrayBuffer(0), { pciInterrupts: [] });
const root = pciRootModel.describe!(
  { hostBridge: new SharedArrayBuffer(0) },
  {
    pciInterrupts: [
      { slot: 1, gsi: 16 },
      { slot: 2, gsi: 17 },
    ],
  },
);

function options(apicIds: number[], pci: boolean): AcpiOptions {
  return {
    apicIds,
    ioapicId: defaultIoapicId(apicIds),
    ioapicAddress: IOAPIC_ADDRESS,
    lapicAddress: LAPIC_ADDRESS,
    devices: [...(com1.acpi ?? []), ...(pci ? (root.acpi ?? []) : [])],
    tables: pci ? root.acpiTables : undefined,
    legacy: { i8042: true, rtc: true, vga: true },
    reset: { port: 0xcf9, value: 6 },
  };
}

const CONFIGS: [string, AcpiOptions][] = [
  ['1 vCPU, no PCI', options([0], false)],
  ['4 vCPUs with the PCI root (MCFG)', options([0, 1, 2, 3], true)],
  ['x2APIC IDs', options([0, 1, 255, 256, 0x1000], true)],
];

const filesOf = (list: readonly { name: string; data: Uint8Array }[]) => new Map(list.map((f) => [f.name, f.data]));

for (const [label, opts] of CONFIGS) {
  test(`ACPI handover, ${label}: linked by the loader anywhere, the same tables as direct boot`, () => {
    const list = acpiFirmwareFiles(opts);
    assert.deepEqual(
      list.map((f) => f.name),
      [ACPI_RSDP_FILE, ACPI_TABLES_FILE, TABLE_LOADER_FILE],
    );
    const files = filesOf(list);
    const rsdp = files.get(ACPI_RSDP_FILE)!;
    assert.equal(rsdp.length, 36);
    assert.equal(rsdp[8] | rsdp[32], 0, 'RSDP checksums are left to the loader');

    const cmds = decodeTableLoader(files.get(TABLE_LOADER_FILE)!);
    assert.deepEqual(
      cmds.filter((c) => c.kind === 'allocate'),
      [
        { kind: 'allocate', file: ACPI_TABLES_FILE, align: 64, zone: 'high' },
        { kind: 'allocate', file: ACPI_RSDP_FILE, align: 16, zone: 'fseg' },
      ],
    );
    // Each checksum comes after every pointer patched into its range.
    cmds.forEach((c, i) => {
      if (c.kind !== 'add-pointer') return;
      const later = cmds.slice(i + 1);
      const covering = cmds
        .slice(0, i)
        .filter(
          (k): k is Extract<LoaderCommand, { kind: 'add-checksum' }> =>
            k.kind === 'add-checksum' && k.file === c.destFile && c.offset >= k.start && c.offset < k.start + k.length,
        );
      assert.deepEqual(covering, [], `a checksum over ${c.destFile}+${c.offset} runs before its pointer`);
      assert.ok(
        later.some((k) => k.kind === 'add-checksum' && k.file === c.destFile),
        'a checksum follows the pointer',
      );
    });

    const directRam = new Uint8Array(2 * MIB);
    const direct = buildAcpiTables(opts, { write: (gpa, data) => directRam.set(data, gpa) });
    assert.deepEqual(
      [...walk(directRam).tables.keys()].sort(),
      direct.tables
        .map((x) => x.signature)
        .filter((x) => x !== 'RSD PTR ')
        .sort(),
      'direct boot links the same tables',
    );
    const directBySig = new Map(direct.tables.map((t) => [t.signature, t.bytes]));
    const results = [
      runLoader(files, 0x7f_0000, 'seabios'),
      runLoader(files, 0x1ab_cdc0, 'seabios'), // a different address: the pointers follow
      runLoader(files, 0x7f_0000, 'ovmf'),
    ];
    const walked = results.map((r) => walk(r.ram));
    for (const [i, w] of walked.entries()) {
      const { at } = results[i];
      assert.equal(w.rsdp, at.get(ACPI_RSDP_FILE)!.address);
      assert.ok(w.rsdp >= FSEG.start && w.rsdp + 36 <= FSEG.end, 'the RSDP is in the F segment');
      const blob = at.get(ACPI_TABLES_FILE)!;
      for (const [sig, t] of w.tables)
        assert.ok(t.address >= blob.address && t.address < blob.address + blob.size, `${sig} is in the tables file`);
      const sigs = [...w.tables.keys()].sort();
      assert.deepEqual(sigs, [...directBySig.keys()].filter((s) => s !== 'RSD PTR ').sort(), 'the same tables');
      for (const [sig, t] of w.tables) {
        const d = directBySig.get(sig)!;
        assert.equal(t.bytes.length, d.length, `${sig} length`);
        // Tables without pointers are byte-identical to direct boot's; the others differ only in pointers and
        // their checksum.
        const mask = (b: Uint8Array) => {
          const c = Uint8Array.from(b);
          c[9] = 0;
          if (sig === 'XSDT') c.fill(0, 36);
          if (sig === 'FACP') c.fill(0, 36, 44).fill(0, 132, 148);
          if (sig === 'FACS') c[9] = b[9]; // part of its Hardware Signature: a FACS has no checksum
          return Buffer.from(c).toString('hex');
        };
        assert.equal(mask(t.bytes), mask(d), `${sig} as in direct boot`);
      }
      // The XSDT lists the tables in the same order as direct boot's.
      const order = (entries: number[], sigOf: (a: number) => string) => entries.map(sigOf);
      const ram = results[i].ram;
      const dd = new DataView(directBySig.get('XSDT')!.buffer);
      const directOrder = Array.from({ length: (dd.byteLength - 36) / 8 }, (_, k) =>
        Number(dd.getBigUint64(36 + 8 * k, true)),
      ).map((a) => direct.tables.find((t) => t.address === a)!.signature);
      assert.deepEqual(
        order(w.xsdtEntries, (a) => Buffer.from(ram.subarray(a, a + 4)).toString('latin1')),
        directOrder,
      );
    }
    // SeaBIOS and OVMF checksum styles give the same memory.
    assert.deepEqual(results[0].ram, results[2].ram);
  });
}

test('ACPI handover: iasl disassembles the loaded tables cleanly', (t) => {
  if (!iasl) {
    t.skip('iasl not installed: sudo apt-get install acpica-tools');
    return;
  }
  const { ram } = runLoader(filesOf(acpiFirmwareFiles(CONFIGS[1][1])), 0x7f_0000, 'seabios');
  const w = walk(ram);
  const dir = mkdtempSync(join(tmpdir(), 'partita-loader-'));
  try {
    for (const [sig, tbl] of w.tables) {
      const name = sig.toLowerCase();
      writeFileSync(join(dir, `${name}.dat`), tbl.bytes);
      const r = spawnSync('iasl', ['-d', `${name}.dat`], { cwd: dir, encoding: 'utf8' });
      const out = `${r.stdout}${r.stderr}`;
      assert.equal(r.status, 0, `iasl -d ${name}.dat:\n${out}`);
      const dsl = readFileSync(join(dir, `${name}.dsl`), 'utf8');
      const bad = `${out}\n${dsl}`.split('\n').filter((l) => /warning|error|invalid|incorrect|\*\*\*\*/i.test(l));
      assert.deepEqual(bad, [], `${sig}: iasl complained`);
      if (sig === 'FACP') {
        const dsdt = w.tables.get('DSDT')!.address.toString(16).toUpperCase().padStart(8, '0');
        assert.match(dsl, new RegExp(`\\[028h 0040\\s+4\\]\\s+DSDT Address : ${dsdt}`));
        assert.match(dsl, new RegExp(`\\[08Ch 0140\\s+8\\]\\s+DSDT Address : 00000000${dsdt}`));
      }
      if (sig === 'XSDT') {
        const fadt = w.tables.get('FACP')!.address.toString(16).toUpperCase().padStart(16, '0');
        assert.match(dsl, new RegExp(`ACPI Table Address\\s+0 : ${fadt}`));
      }
      if (sig === 'DSDT') assert.match(dsl, /Device \(PCI0\)/);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('table loader: the 128-byte command layout, decoding, and what the builder refuses', () => {
  const loader = new TableLoader()
    .allocate('etc/acpi/tables', 0x200, 64, 'high')
    .allocate('etc/acpi/rsdp', 36, 16, 'fseg')
    .addPointer('etc/acpi/rsdp', 'etc/acpi/tables', 24, 8)
    .addChecksum('etc/acpi/tables', 9, 0, 0x24);
  const bytes = loader.encode();
  assert.equal(bytes.length, 4 * 128);
  const dv = new DataView(bytes.buffer);
  const name = (at: number) => Buffer.from(bytes.subarray(at, at + 56)).toString('latin1');
  // ALLOCATE: command, file[56], align, zone.
  assert.equal(dv.getUint32(0, true), 1);
  assert.equal(name(4), 'etc/acpi/tables'.padEnd(56, '\0'));
  assert.equal(dv.getUint32(60, true), 64);
  assert.equal(bytes[64], 1, 'zone HIGH');
  assert.equal(bytes[128 + 64], 2, 'zone FSEG');
  // ADD_POINTER: command, dest[56], src[56], offset, size.
  assert.equal(dv.getUint32(256, true), 2);
  assert.equal(name(256 + 4), 'etc/acpi/rsdp'.padEnd(56, '\0'));
  assert.equal(name(256 + 60), 'etc/acpi/tables'.padEnd(56, '\0'));
  assert.equal(dv.getUint32(256 + 116, true), 24);
  assert.equal(bytes[256 + 120], 8);
  // ADD_CHECKSUM: command, file[56], offset, start, length.
  assert.equal(dv.getUint32(384, true), 3);
  assert.deepEqual(
    [dv.getUint32(384 + 60, true), dv.getUint32(384 + 64, true), dv.getUint32(384 + 68, true)],
    [9, 0, 0x24],
  );
  // Everything else is zero padding.
  for (const [cmd, used] of [
    [0, 65],
    [1, 65],
    [2, 121],
    [3, 72],
  ])
    assert.ok(
      bytes.subarray(cmd * 128 + used, cmd * 128 + 128).every((b) => b === 0),
      `command ${cmd} padding`,
    );
  assert.deepEqual(decodeTableLoader(bytes), loader.commands);
  assert.deepEqual(encodeTableLoader(decodeTableLoader(bytes)), bytes);
  // Unknown commands are skipped when decoding (firmware skips them); a partial command is refused.
  const withUnknown = new Uint8Array(3 * 128);
  withUnknown.set(bytes.subarray(0, 128));
  withUnknown[128] = 4; // WRITE_POINTER: not used here
  withUnknown.set(bytes.subarray(384, 512), 256);
  assert.equal(decodeTableLoader(withUnknown).length, 2);
  assert.throws(() => decodeTableLoader(bytes.subarray(0, 100)), RangeError);

  const t = () => new TableLoader().allocate('a', 16, 16, 'high');
  assert.throws(() => t().allocate('a', 16, 16, 'high'), /twice/);
  assert.throws(() => t().allocate('b', 16, 12, 'high'), /power of 2/);
  assert.throws(() => t().allocate('x'.repeat(56), 16, 16, 'high'), RangeError);
  assert.throws(() => t().addPointer('a', 'b', 0, 8), /before it is allocated/);
  assert.throws(() => t().addPointer('a', 'a', 12, 8), /outside the file/);
  assert.throws(() => t().addChecksum('a', 16, 0, 16), /outside the file/);
  assert.throws(() => t().addChecksum('a', 4, 0, 17), /outside the file/);
  assert.throws(() => t().addChecksum('a', 4, 5, 8), /outside the file/, 'the checksum byte must be in its range');
});

// ---- the other files of a firmware boot ----

const platformOf = (extra: Partial<PlatformDescription> = {}): PlatformDescription => ({
  acpi: [...(com1.acpi ?? []), ...(root.acpi ?? [])],
  acpiTables: root.acpiTables ?? [],
  pciInterrupts: [],
  reserved: root.reserved ?? [],
  firmwareFiles: [],
  interruptOverrides: [],
  coalescedMmio: [],
  legacy: {},
  ...extra,
});

interface E820 {
  base: number;
  size: number;
  type: number;
}
function parseE820(bytes: Uint8Array): E820[] {
  assert.equal(bytes.length % 20, 0);
  const dv = new DataView(bytes.buffer, bytes.byteOffset);
  return Array.from({ length: bytes.length / 20 }, (_, i) => ({
    base: Number(dv.getBigUint64(i * 20, true)),
    size: Number(dv.getBigUint64(i * 20 + 8, true)),
    type: dv.getUint32(i * 20 + 16, true),
  }));
}

test('etc/e820: RAM below the PCI hole and above 4 GiB, the devices’ reservations and KVM’s pages', () => {
  const ecam = { base: 0xe000_0000, size: 0x1000_0000, type: 2 };
  const kvm = { base: 0xfeff_c000, size: 0x4000, type: 2 };
  assert.deepEqual(parseE820(e820File(512 * MIB, [ecam])), [{ base: 0, size: 512 * MIB, type: 1 }, ecam, kvm]);
  assert.deepEqual(parseE820(e820File(3 * GIB, [ecam])), [{ base: 0, size: 3 * GIB, type: 1 }, ecam, kvm]);
  assert.deepEqual(parseE820(e820File(5 * GIB + 4096, [ecam])), [
    { base: 0, size: 3 * GIB, type: 1 },
    ecam,
    kvm,
    { base: 4 * GIB, size: 2 * GIB + 4096, type: 1 },
  ]);
  assert.deepEqual(parseE820(e820File(64 * MIB, [])), [{ base: 0, size: 64 * MIB, type: 1 }, kvm]);
});

/** SeaBIOS's boot.c glob_prefix, restated: '*' matches characters up to '/' or the glob's next character. */
function globPrefix(glob: string, str: string): boolean {
  let g = 0;
  let s = 0;
  for (;;) {
    if (g === glob.length && (s === str.length || str[s] === '/')) return true;
    if (glob[g] === '*') {
      if (s === str.length || str[s] === '/' || str[s] === glob[g + 1]) g++;
      else s++;
      continue;
    }
    if (g === glob.length || s === str.length || glob[g] !== str[s]) return false;
    g++;
    s++;
  }
}

test('bootorder: the OpenFirmware paths QEMU writes, found by SeaBIOS, in the order given', () => {
  const devices: BootDevice[] = [
    { kind: 'ahci', slot: 3, port: 2 },
    { kind: 'virtio-blk', slot: 5 },
    { kind: 'net', slot: 6 },
  ];
  // What QEMU 7.2 writes for -device ahci,addr=3 + ide-hd on ahci.2, virtio-blk-pci,addr=5, e1000,addr=6 with
  // bootindex 1, 2, 3 and -boot strict=on (SeaBIOS's debug log, "boot order:").
  const text = Buffer.from(bootOrderFile(devices, true)).toString('latin1');
  assert.equal(
    text,
    '/pci@i0cf8/pci8086,2922@3/drive@2/disk@0\n/pci@i0cf8/scsi@5/disk@0,0\n/pci@i0cf8/ethernet@6/ethernet-phy@0\nHALT\0',
  );
  const more: BootDevice[] = [
    { kind: 'ahci', slot: 3, fn: 1, port: 0x1f, name: '*' },
    { kind: 'pci', slot: 0x1a },
    { kind: 'pci', slot: 2, fn: 3, name: 'display' },
  ];
  assert.deepEqual(more.map(bootDevicePath), [
    '/pci@i0cf8/*@3,1/drive@1f/disk@0',
    '/pci@i0cf8/*@1a',
    '/pci@i0cf8/display@2,3',
  ]);
  assert.equal(Buffer.from(bootOrderFile(more.slice(1, 2))).toString('latin1'), '/pci@i0cf8/*@1a\0', 'no HALT');
  // What SeaBIOS searches for (boot.c, as its log shows): the first line the glob is a prefix of wins.
  const lines = [...text.replace(/\0$/, '').split('\n'), ...more.map(bootDevicePath)];
  const prio = (glob: string) => lines.findIndex((l) => globPrefix(glob, l)) + 1;
  assert.equal(prio('/pci@i0cf8/*@3/drive@2/disk@0'), 1, 'AHCI 00:03.0 port 2 (bootprio_find_ata_device)');
  assert.equal(prio('/pci@i0cf8/*@3/drive@0/disk@0'), 0, 'another port of it is not listed');
  assert.equal(prio('/pci@i0cf8/*@5'), 2, 'virtio-blk at 00:05.0 (bootprio_find_pci_device)');
  assert.equal(prio('/pci@i0cf8/*@6'), 3, "the NIC's option ROM at 00:06.0 (bootprio_find_pci_rom)");
  assert.equal(prio('HALT'), 4);
  assert.equal(prio('/pci@i0cf8/*@3,1/drive@1f/disk@0'), 5, 'a literal * in the path matches too');
  assert.equal(prio('/pci@i0cf8/*@1a'), 6);
  assert.equal(prio('/pci@i0cf8/*@2,3'), 7);
  assert.equal(prio('/pci@i0cf8/*@2'), 0, 'function 0 is not function 3');
  assert.throws(() => bootDevicePath({ kind: 'pci', slot: 32 }), RangeError);
  assert.throws(() => bootDevicePath({ kind: 'net', slot: 3, fn: 8 }), RangeError);
  assert.throws(() => bootDevicePath({ kind: 'ahci', slot: 3, port: 32 }), RangeError);
  assert.throws(() => bootDevicePath({ kind: 'pci', slot: 3, name: 'a/b' }), RangeError);
});

test('firmwareConfigFiles: every file, the small settings, the devices’ files, duplicates refused', () => {
  const rom = { name: 'vgaroms/vgabios-stdvga.bin', data: Uint8Array.of(0x55, 0xaa, 1) };
  const files = firmwareConfigFiles({
    cpus: 3,
    apicIds: [0, 1, 2],
    memory: 256 * MIB,
    platform: platformOf({ firmwareFiles: [rom] }),
    bootOrder: [{ kind: 'virtio-blk', slot: 5 }],
    serialConsolePort: 0x3f8,
    bootFailWaitMs: 5000,
  });
  const byName = filesOf(files);
  assert.deepEqual(
    files.map((f) => f.name),
    [
      'etc/acpi/rsdp',
      'etc/acpi/tables',
      'etc/table-loader',
      'etc/e820',
      'etc/boot-cpus',
      'etc/boot-fail-wait',
      'etc/sercon-port',
      'bootorder',
      rom.name,
    ],
  );
  assert.deepEqual([...byName.get('etc/boot-cpus')!], [3, 0]);
  assert.deepEqual([...byName.get('etc/boot-fail-wait')!], [0x88, 0x13, 0, 0]);
  assert.deepEqual([...byName.get('etc/sercon-port')!], [0xf8, 0x03]);
  assert.equal(byName.get(rom.name), rom.data);
  assert.equal(Buffer.from(byName.get('bootorder')!).toString('latin1'), '/pci@i0cf8/scsi@5/disk@0,0\0');
  assert.deepEqual(parseE820(byName.get('etc/e820')!)[0], { base: 0, size: 256 * MIB, type: 1 });
  // The ACPI files describe the 3 CPUs.
  const w = walk(runLoader(byName, 0x7f_0000, 'seabios').ram);
  const madt = w.tables.get('APIC')!.bytes;
  let cpus = 0;
  for (let at = 44; at < madt.length; at += madt[at + 1]) if (madt[at] === 0) cpus++;
  assert.equal(cpus, 3);

  const defaults = filesOf(firmwareConfigFiles({ cpus: 1, apicIds: [0], memory: 64 * MIB, platform: platformOf() }));
  assert.deepEqual([...defaults.get('etc/sercon-port')!], [0, 0], 'serial console off');
  assert.deepEqual([...defaults.get('etc/boot-fail-wait')!], [0x60, 0xea, 0, 0], '60 s');
  assert.equal(defaults.has('bootorder'), false, 'no order given: the firmware decides');
  assert.throws(
    () =>
      firmwareConfigFiles({
        cpus: 1,
        apicIds: [0],
        memory: 64 * MIB,
        platform: platformOf({ firmwareFiles: [{ name: 'etc/e820', data: new Uint8Array(20) }] }),
      }),
    /given twice/,
  );
  assert.throws(() => firmwareConfigFiles({ cpus: 2, apicIds: [0], memory: 64 * MIB, platform: platformOf() }));
});

test('end to end: devices described, files added to fw-cfg, read back by a firmware over DMA and linked', () => {
  const memorySize = 64 * MIB;
  const shared = createDevices([], {
    vmFd: -1,
    placeBars: false,
    machine: { cpus: 2, memory: memorySize, boot: 'firmware' },
    platform: [{ kind: 'pci-root' }, { kind: 'uart-16550a' }, { kind: 'fw-cfg' }],
  });
  const platform = describeDevices(shared);
  const files = firmwareConfigFiles({
    cpus: 2,
    apicIds: [0, 1],
    memory: memorySize,
    platform,
    bootOrder: [{ kind: 'pci', slot: 1 }],
  });
  const fwCfg = shared.devices.find((d) => d.kind === 'fw-cfg')!.state as FwCfgState;
  for (const f of files) addFwCfgFile(fwCfg, f.name, f.data);

  const memory = GuestMemory.allocateRanges([{ gpa: 0, size: memorySize }]);
  try {
    const set = attachDevices(
      shared,
      { vmFd: -1, serialOutputFd: -1, stop: () => undefined, reset: () => undefined },
      memory,
    );
    // The firmware's side (SeaBIOS qemu_cfg_init): signature by port, then everything by DMA.
    set.pio.write(0x510, 2, 0);
    assert.equal(String.fromCharCode(...[0, 1, 2, 3].map(() => set.pio.read(0x511, 1))), 'QEMU');
    const ACCESS = 0x8000;
    const BUF = 0x10000;
    const dmaRead = (key: number, length: number): Uint8Array => {
      const s = new DataView(new ArrayBuffer(16));
      s.setUint32(0, (key << 16) | 0x08 | 0x02);
      s.setUint32(4, length);
      s.setBigUint64(8, BigInt(BUF));
      memory.write(ACCESS, new Uint8Array(s.buffer));
      set.pio.write(0x518, 4, Buffer.from(new Uint32Array([ACCESS]).buffer).readUInt32BE()); // outl(cpu_to_be32(a))
      assert.equal(memory.readU32(ACCESS), 0, 'DMA completed without error');
      return memory.read(BUF, length);
    };
    const count = new DataView(dmaRead(0x19, 4).buffer).getUint32(0, false);
    assert.equal(count, files.length);
    const dir = dmaRead(0x19, 4 + 64 * count);
    const loaded = new Map<string, Uint8Array>();
    for (let i = 0; i < count; i++) {
      const e = dir.subarray(4 + 64 * i, 4 + 64 * (i + 1));
      const dv = new DataView(e.buffer, e.byteOffset);
      const name = Buffer.from(e.subarray(8, 8 + e.subarray(8).indexOf(0))).toString('latin1');
      loaded.set(name, dmaRead(dv.getUint16(4, false), dv.getUint32(0, false)));
    }
    assert.deepEqual(loaded, filesOf(files), 'every file arrives intact');
    // The DSDT the firmware installs declares the fw_cfg device it was read from.
    const w = walk(runLoader(loaded, 0x100_0000, 'seabios').ram);
    assert.ok(Buffer.from(w.tables.get('DSDT')!.bytes).includes('QEMU0002'));
    assert.ok(w.tables.has('MCFG'));
    assert.ok(
      parseE820(loaded.get('etc/e820')!).some((e) => e.base === 0xe000_0000 && e.type === 2),
      'ECAM reserved',
    );
  } finally {
    memory.release();
  }
});

test('real SeaBIOS (QEMU -M pc,acpi=off) runs the handover: it installs these tables, linked and checksummed', async (t) => {
  if (!qemuAvailable()) {
    t.skip(QEMU_MISSING);
    return;
  }
  const opts = CONFIGS[1][1];
  const dir = mkdtempSync(join(tmpdir(), 'partita-seabios-'));
  try {
    const fwCfgArgs: string[] = [];
    for (const f of acpiFirmwareFiles(opts)) {
      const file = f.name.replaceAll('/', '_');
      writeFileSync(join(dir, file), f.data);
      fwCfgArgs.push('-fw_cfg', `name=${f.name},file=${file}`);
    }
    // QEMU's own tables off, ours given as fw_cfg files; SeaBIOS's debug log on port 0x402. When SeaBIOS has
    // given up booting (no disks), its RAM is saved through the monitor: low 1 MiB (RSDP) and the top 1 MiB
    // (where SeaBIOS's high zone puts etc/acpi/tables).
    const memory = 128 * MIB;
    const child = spawn(
      QEMU,
      [
        ...['-M', 'pc,acpi=off', '-accel', 'tcg', '-m', '128M', '-display', 'none', '-nodefaults', '-no-user-config'],
        ...[
          '-monitor',
          'stdio',
          '-chardev',
          'file,path=seabios.log,id=dbg',
          '-device',
          'isa-debugcon,iobase=0x402,chardev=dbg',
        ],
        ...fwCfgArgs,
      ],
      { cwd: dir, stdio: ['pipe', 'ignore', 'pipe'] },
    );
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
    const log = () => {
      try {
        return readFileSync(join(dir, 'seabios.log'), 'latin1');
      } catch {
        return '';
      }
    };
    const started = Date.now();
    while (!/No bootable device|Booting from/.test(log())) {
      if (Date.now() - started > HANG_GUARD_MS || child.exitCode !== null) {
        child.kill('SIGKILL');
        assert.fail(`SeaBIOS did not reach the boot stage (hang guard):\n${stderr}\n${log().slice(-2000)}`);
      }
      await new Promise((r) => setTimeout(r, 200));
    }
    child.stdin.write(`pmemsave 0 0x100000 "low.bin"\npmemsave ${memory - MIB} 0x100000 "high.bin"\nquit\n`);
    assert.equal(await exited, 0, stderr);
    const text = log();
    assert.doesNotMatch(text, /internal error|WARNING/, 'SeaBIOS ran the loader without complaint');
    const ram = new Uint8Array(memory);
    ram.set(readFileSync(join(dir, 'low.bin')), 0);
    ram.set(readFileSync(join(dir, 'high.bin')), memory - MIB);
    const w = walk(ram);
    assert.equal(Buffer.from(ram.subarray(w.rsdp + 9, w.rsdp + 15)).toString('latin1'), 'PRTITA', 'our RSDP');
    assert.match(text, new RegExp(`ACPI: parse DSDT at 0x0*${w.tables.get('DSDT')!.address.toString(16)}`));
    const direct = new Map(buildAcpiTables(opts).tables.map((x) => [x.signature, x.bytes]));
    for (const sig of ['APIC', 'DSDT', 'MCFG'])
      assert.deepEqual(w.tables.get(sig)?.bytes, direct.get(sig), `${sig} as in direct boot`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
