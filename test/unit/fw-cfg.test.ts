// The fw_cfg device driven as firmware drives it (SeaBIOS src/fw/paravirt.c, OVMF QemuFwCfgLib): through its
// ports on a PortIoBus, with DMA control structures in real guest RAM (GuestMemory). Signature and ID, the file
// directory, files read through the data port and through DMA (select, read, skip), reads past the end, unknown
// keys, refused writes, DMA addresses outside RAM and huge lengths, two threads' views, save/restore, the DSDT.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GuestMemory } from '../../src/base/guest-memory.js';
import { MIB } from '../../src/base/units.js';
import { MmioBus, PortIoBus } from '../../src/devices/bus.js';
import { DeviceStateError, type AttachedDevice, type DeviceAttachContext } from '../../src/devices/model.js';
import { PciBus } from '../../src/devices/pci/bus.js';
import {
  addFwCfgFile,
  createFwCfgState,
  fwCfgModel,
  FW_CFG_DMA_CTL_ERROR,
  FW_CFG_DMA_CTL_READ,
  FW_CFG_DMA_CTL_SELECT,
  FW_CFG_DMA_CTL_SKIP,
  FW_CFG_DMA_CTL_WRITE,
  type FwCfgState,
} from '../../src/devices/firmware/fw-cfg.js';
import { buildAcpiTables } from '../../src/arch/x86_64/acpi/index.js';
import { IOAPIC_ADDRESS, LAPIC_ADDRESS } from '../../src/arch/x86_64/layout.js';

const RAM_SIZE = 2 * MIB;
const ACCESS = 0x1000; // where the test's "firmware" puts its DMA control structure
const BUFFER = 0x2000; // and its buffers

const bswap32 = (v: number): number =>
  (((v & 0xff) << 24) | ((v & 0xff00) << 8) | ((v >>> 8) & 0xff00) | ((v >>> 24) & 0xff)) >>> 0;

/** A guest with RAM, a port bus and the fw_cfg device attached, and the port/DMA sequences firmware uses. */
class Guest {
  readonly pio = new PortIoBus();
  readonly device: AttachedDevice;
  constructor(
    readonly state: FwCfgState,
    readonly memory: GuestMemory,
  ) {
    const ctx: DeviceAttachContext = {
      vmFd: -1,
      router: undefined as never,
      pio: this.pio,
      mmio: new MmioBus(),
      pci: new PciBus(),
      memory,
      irqLine: () => ({ set: () => undefined }),
      host: { serialOutputFd: -1, stop: () => undefined, reset: () => undefined },
    };
    this.device = fwCfgModel.attach(state, ctx);
  }
  select(key: number): void {
    this.pio.write(0x510, 2, key);
  }
  /** insb from the data port. */
  read(n: number): Uint8Array {
    return Uint8Array.from({ length: n }, () => this.pio.read(0x511, 1));
  }
  readItem(key: number, n: number): Uint8Array {
    this.select(key);
    return this.read(n);
  }
  /** One DMA transfer: writes the control structure at `access`, starts it, returns the control word after. */
  dma(control: number, length: number, address: number | bigint, access: number | bigint = ACCESS): number {
    const a = BigInt(access);
    if (this.memory.contains(Number(a), 16)) {
      const s = new Uint8Array(16);
      const dv = new DataView(s.buffer);
      dv.setUint32(0, control >>> 0, false);
      dv.setUint32(4, length >>> 0, false);
      dv.setBigUint64(8, BigInt(address), false);
      this.memory.write(Number(a), s);
    }
    // As SeaBIOS and OVMF do: the big-endian halves written with outl (so byte-swapped), the low half last.
    const high = Number(a >> 32n);
    if (high !== 0) this.pio.write(0x514, 4, bswap32(high));
    this.pio.write(0x518, 4, bswap32(Number(a & 0xffff_ffffn)));
    return this.memory.contains(Number(a), 16) ? new DataView(this.memory.read(Number(a), 4).buffer).getUint32(0) : -1;
  }
  /** The directory as firmware reads it: BE32 count, then { BE32 size, BE16 select, u16, name[56] }. */
  directory(): { size: number; select: number; name: string }[] {
    this.select(0x19);
    const count = new DataView(this.read(4).buffer).getUint32(0, false);
    return Array.from({ length: count }, () => {
      const e = this.read(64);
      const dv = new DataView(e.buffer);
      const nameBytes = e.subarray(8);
      return {
        size: dv.getUint32(0, false),
        select: dv.getUint16(4, false),
        name: Buffer.from(nameBytes.subarray(0, nameBytes.indexOf(0))).toString('latin1'),
      };
    });
  }
}

const FILES: [string, Uint8Array][] = [
  ['etc/table-loader', Uint8Array.from({ length: 300 }, (_, i) => (i * 7) & 0xff)],
  ['bootorder', new Uint8Array(Buffer.from('/pci@i0cf8/*@5\0'))],
  ['etc/e820', Uint8Array.from({ length: 40 }, (_, i) => 200 - i)],
  ['etc/acpi/rsdp', Uint8Array.from({ length: 36 }, (_, i) => i + 1)],
  ['Z', Uint8Array.of(0x5a)],
  ['etc/boot-fail-wait', Uint8Array.of(0x60, 0xea, 0, 0)],
  ['etc/empty', new Uint8Array(0)],
];

function withGuest(fn: (g: Guest, memory: GuestMemory) => void, files = FILES, cpus = 4): void {
  const memory = GuestMemory.allocateRanges([{ gpa: 0, size: RAM_SIZE }]);
  try {
    const state = createFwCfgState({ cpus, memory: 3 * 1024 * MIB });
    for (const [name, data] of files) addFwCfgFile(state, name, data);
    fn(new Guest(state, memory), memory);
  } finally {
    memory.release();
  }
}

test('fw_cfg: signature, ID (traditional + DMA), DMA signature, CPU and memory items, unknown keys', () => {
  withGuest((g) => {
    assert.equal(Buffer.from(g.readItem(0x0000, 4)).toString('latin1'), 'QEMU');
    assert.deepEqual([...g.read(3)], [0, 0, 0], 'past the end: zeros');
    assert.deepEqual([...g.readItem(0x0001, 4)], [3, 0, 0, 0], 'ID: bit 0 traditional, bit 1 DMA');
    // The DMA register reads "QEMU CFG", byte by byte and as two 32-bit halves (port I/O is little-endian).
    assert.equal(Buffer.from(Array.from({ length: 8 }, (_, i) => g.pio.read(0x514 + i, 1))).toString(), 'QEMU CFG');
    const halves = Buffer.alloc(8);
    halves.writeUInt32LE(g.pio.read(0x514, 4), 0);
    halves.writeUInt32LE(g.pio.read(0x518, 4), 4);
    assert.equal(halves.toString('latin1'), 'QEMU CFG');
    assert.deepEqual([...g.readItem(0x0005, 2)], [4, 0], 'CPU count LE16');
    assert.deepEqual([...g.readItem(0x000f, 2)], [4, 0], 'max CPUs LE16');
    assert.equal(Buffer.from(g.readItem(0x0003, 8)).readBigUInt64LE(), 3n << 30n, 'RAM size LE64');
    assert.deepEqual([...g.readItem(0x000e, 2)], [0, 0], 'boot menu off');
    assert.deepEqual([...g.readItem(0x8002, 4)], [1, 0, 0, 0], 'x86 IRQ0 override');
    for (const key of [0x0004, 0x000d, 0x0018, 0x1234, 0x3fff, 0x8000, 0x8003, 0xffff])
      assert.deepEqual([...g.readItem(key, 8)], [0, 0, 0, 0, 0, 0, 0, 0], `unknown key 0x${key.toString(16)}`);
    // Bit 14 (the old "write" bit) is ignored when looking up an item, as in QEMU.
    assert.equal(Buffer.from(g.readItem(0x4000, 4)).toString('latin1'), 'QEMU');
    // A 1-byte read of 0x510 is a data read too (QEMU's combined register); wider reads are not data.
    g.select(0);
    assert.equal(g.pio.read(0x510, 1), 0x51);
    assert.equal(g.pio.read(0x511, 2), 0xffff);
    assert.equal(g.pio.read(0x511, 1), 0x45, 'the 16-bit read did not advance the offset');
    // Writes to the data port and odd selector widths change nothing.
    g.pio.write(0x511, 1, 0xaa);
    g.pio.write(0x510, 1, 0x01);
    g.pio.write(0x510, 4, 0x01);
    assert.equal(g.pio.read(0x511, 1), 0x4d);
  });
});

test('fw_cfg: the file directory is sorted by name with ascending keys from 0x20, and every file reads back', () => {
  withGuest((g) => {
    const dir = g.directory();
    const names = FILES.map(([n]) => n).sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
    assert.deepEqual(
      dir.map((e) => e.name),
      names,
    );
    assert.deepEqual(
      dir.map((e) => e.select),
      names.map((_, i) => 0x20 + i),
    );
    const byName = new Map(FILES);
    for (const e of dir) {
      const data = byName.get(e.name)!;
      assert.equal(e.size, data.length, `${e.name} size`);
      // By port: select, then insb.
      assert.deepEqual(g.readItem(e.select, data.length), data, `${e.name} through the data port`);
      // By DMA: select + read in one transfer, as SeaBIOS's qemu_cfg_read_entry.
      g.memory.fill(BUFFER, 512, 0xcc);
      assert.equal(g.dma((e.select << 16) | FW_CFG_DMA_CTL_SELECT | FW_CFG_DMA_CTL_READ, data.length, BUFFER), 0);
      assert.deepEqual(g.memory.read(BUFFER, data.length), data, `${e.name} through DMA`);
      assert.equal(g.memory.readU8(BUFFER + data.length), 0xcc, 'nothing written beyond the length');
    }
    // The directory itself through DMA: the same bytes as through the port.
    g.select(0x19);
    const viaPort = g.read(4 + 64 * dir.length);
    assert.equal(g.dma((0x19 << 16) | FW_CFG_DMA_CTL_SELECT | FW_CFG_DMA_CTL_READ, viaPort.length, BUFFER), 0);
    assert.deepEqual(g.memory.read(BUFFER, viaPort.length), viaPort);
  });
});

test('fw_cfg DMA: skip, read on from the offset, zeros past the end, select without transfer, port and DMA share the offset', () => {
  withGuest((g) => {
    const [, data] = FILES[0];
    const key = g.directory().find((e) => e.name === 'etc/table-loader')!.select;
    // Select by port, skip 100 by DMA (address ignored), read 50 by port, then the rest and 20 more by DMA.
    g.select(key);
    assert.equal(g.dma(FW_CFG_DMA_CTL_SKIP, 100, 0), 0);
    assert.deepEqual(g.read(50), data.subarray(100, 150));
    g.memory.fill(BUFFER, 400, 0xcc);
    assert.equal(g.dma(FW_CFG_DMA_CTL_READ, 170, BUFFER), 0);
    assert.deepEqual(g.memory.read(BUFFER, 150), data.subarray(150));
    assert.deepEqual([...g.memory.read(BUFFER + 150, 20)], new Array(20).fill(0), 'read past the end gives zeros');
    assert.equal(g.memory.readU8(BUFFER + 170), 0xcc);
    assert.deepEqual([...g.read(4)], [0, 0, 0, 0], 'the offset stays at the end');
    // A skip past the end is fine too, and a control word with no operation is a select only.
    assert.equal(g.dma(FW_CFG_DMA_CTL_SKIP, 1000, 0), 0);
    assert.equal(g.dma((0x0000 << 16) | FW_CFG_DMA_CTL_SELECT, 1234, BUFFER), 0);
    assert.equal(Buffer.from(g.read(4)).toString('latin1'), 'QEMU', 'selected, offset 0, nothing transferred');
    // Zero-length read: nothing happens, success.
    g.memory.fill(BUFFER, 4, 0xcc);
    assert.equal(g.dma((0x0001 << 16) | FW_CFG_DMA_CTL_SELECT | FW_CFG_DMA_CTL_READ, 0, BUFFER), 0);
    assert.equal(g.memory.readU32(BUFFER), 0xcccccccc);
    // An empty file reads as zeros.
    const empty = g.directory().find((e) => e.name === 'etc/empty')!;
    assert.equal(empty.size, 0);
    assert.equal(g.dma((empty.select << 16) | FW_CFG_DMA_CTL_SELECT | FW_CFG_DMA_CTL_READ, 4, BUFFER), 0);
    assert.equal(g.memory.readU32(BUFFER), 0);
  });
});

test('fw_cfg DMA: writes are refused, items stay as they were', () => {
  withGuest((g) => {
    const rsdp = g.directory().find((e) => e.name === 'etc/acpi/rsdp')!;
    g.memory.fill(BUFFER, 36, 0xee);
    const ctl = g.dma((rsdp.select << 16) | FW_CFG_DMA_CTL_SELECT | FW_CFG_DMA_CTL_WRITE, 36, BUFFER);
    assert.equal(ctl, FW_CFG_DMA_CTL_ERROR);
    assert.deepEqual(g.readItem(rsdp.select, 36), FILES[3][1]);
    // Writing an unknown key is an error as well; a zero-length write is not (nothing to refuse).
    assert.equal(g.dma((0x1234 << 16) | FW_CFG_DMA_CTL_SELECT | FW_CFG_DMA_CTL_WRITE, 4, BUFFER), FW_CFG_DMA_CTL_ERROR);
    assert.equal(g.dma((rsdp.select << 16) | FW_CFG_DMA_CTL_SELECT | FW_CFG_DMA_CTL_WRITE, 0, BUFFER), 0);
    // After an error, the next transfer works (the error bit is the guest's to read, not sticky in the device).
    assert.equal(g.dma((rsdp.select << 16) | FW_CFG_DMA_CTL_SELECT | FW_CFG_DMA_CTL_READ, 36, BUFFER), 0);
    assert.deepEqual(g.memory.read(BUFFER, 36), FILES[3][1]);
  });
});

test('fw_cfg DMA: addresses outside guest RAM and huge lengths set the error bit and never throw', () => {
  withGuest((g, memory) => {
    const sig = (0x0000 << 16) | FW_CFG_DMA_CTL_SELECT | FW_CFG_DMA_CTL_READ;
    const before = memory.read(RAM_SIZE - 4096, 4096);
    // Destination outside RAM, straddling its end, at 4 GiB and near 2^64.
    for (const dest of [RAM_SIZE, RAM_SIZE - 2, 0x1_0000_0000, 0xffff_ffff_ffff_fff0n]) {
      assert.equal(g.dma(sig, 4, dest), FW_CFG_DMA_CTL_ERROR, `destination ${dest.toString(16)}`);
    }
    assert.deepEqual(memory.read(RAM_SIZE - 4096, 4096), before, 'nothing written near the end of RAM');
    // Huge lengths: the item's bytes fit, the zeros after them do not (RAM is 2 MiB).
    memory.fill(BUFFER, 8, 0xcc);
    assert.equal(g.dma(sig, 0xffff_ffff, BUFFER), FW_CFG_DMA_CTL_ERROR);
    assert.equal(Buffer.from(memory.read(BUFFER, 4)).toString('latin1'), 'QEMU');
    assert.equal(memory.readU32(BUFFER + 4), 0xcccccccc, 'no zeros written when the whole zero range is not RAM');
    assert.equal(g.dma(FW_CFG_DMA_CTL_SKIP, 0xffff_ffff, 0), 0, 'a huge skip touches no memory');
    // Control structures outside RAM (or straddling its end): no transfer, no report, no exception; the
    // device still works afterwards.
    for (const access of [RAM_SIZE, RAM_SIZE - 8, 0x1_0000_0000n, 0xffff_ffff_0000_0000n, 0xffff_ffff_ffff_fff8n]) {
      assert.doesNotThrow(() => g.dma(sig, 4, BUFFER, access));
    }
    // A high half written and never used is cleared by the next transfer's completion, not carried into it.
    g.pio.write(0x514, 4, bswap32(0x1));
    g.pio.write(0x518, 4, bswap32(ACCESS));
    assert.equal(g.dma(sig, 4, BUFFER + 16), 0, 'a transfer at low addresses after one aimed at 4 GiB');
    assert.equal(Buffer.from(memory.read(BUFFER + 16, 4)).toString('latin1'), 'QEMU');
    // Odd-width and odd-offset writes to the DMA register start nothing.
    memory.fill(BUFFER, 4, 0);
    const s = new DataView(new ArrayBuffer(16));
    s.setUint32(0, sig);
    s.setUint32(4, 4);
    s.setBigUint64(8, BigInt(BUFFER));
    memory.write(ACCESS, new Uint8Array(s.buffer));
    g.pio.write(0x518, 2, bswap32(ACCESS));
    g.pio.write(0x518, 1, bswap32(ACCESS));
    g.pio.write(0x516, 4, bswap32(ACCESS));
    assert.equal(memory.readU32(BUFFER), 0, 'no transfer');
    assert.equal(memory.readU32(ACCESS), bswap32(sig), 'control word untouched');
  });
});

test('fw_cfg: file names, duplicates and late additions are refused', () => {
  const state = createFwCfgState({ cpus: 1, memory: 64 * MIB });
  addFwCfgFile(state, 'x'.repeat(55), new Uint8Array(1));
  assert.throws(() => addFwCfgFile(state, 'y'.repeat(56), new Uint8Array(1)), /55 bytes/);
  assert.throws(() => addFwCfgFile(state, '', new Uint8Array(1)), RangeError);
  assert.throws(() => addFwCfgFile(state, 'a\0b', new Uint8Array(1)), RangeError);
  assert.throws(() => addFwCfgFile(state, 'x'.repeat(55), new Uint8Array(2)), /twice/);
  // The bytes are copied: changing the caller's array later changes nothing the guest sees.
  const data = Uint8Array.of(1, 2, 3);
  addFwCfgFile(state, 'copy', data);
  data[0] = 99;
  const memory = GuestMemory.allocateRanges([{ gpa: 0, size: RAM_SIZE }]);
  try {
    const g = new Guest(state, memory);
    const e = g.directory().find((d) => d.name === 'copy')!;
    assert.deepEqual([...g.readItem(e.select, 3)], [1, 2, 3]);
    assert.throws(() => addFwCfgFile(state, 'late', new Uint8Array(1)), /after the device was attached/);
  } finally {
    memory.release();
  }
});

test('fw_cfg: two threads share selector and offset (structured clone of the state), save/restore', () => {
  const memory = GuestMemory.allocateRanges([{ gpa: 0, size: RAM_SIZE }]);
  try {
    const state = createFwCfgState({ cpus: 2, memory: 64 * MIB });
    for (const [name, data] of FILES) addFwCfgFile(state, name, data);
    const main = new Guest(state, memory);
    const io = new Guest(structuredClone(state), memory); // what postMessage gives the I/O thread
    const e820 = main.directory().find((d) => d.name === 'etc/e820')!;
    assert.deepEqual(
      io.directory().find((d) => d.name === 'etc/e820'),
      e820,
      'same directory',
    );
    main.select(e820.select);
    assert.deepEqual([...main.read(3)], [200, 199, 198]);
    assert.deepEqual([...io.read(2)], [197, 196], 'the other thread reads on from the same offset');
    main.pio.write(0x514, 4, bswap32(0x12)); // a high half written, transfer not started yet

    const snapshot = JSON.parse(JSON.stringify(main.device.saveState()));
    assert.equal(snapshot.kind, 'fw-cfg');
    const fresh = createFwCfgState({ cpus: 2, memory: 64 * MIB });
    for (const [name, data] of FILES) addFwCfgFile(fresh, name, data);
    const restored = new Guest(fresh, memory);
    restored.device.restoreState(snapshot);
    assert.deepEqual(restored.device.saveState(), main.device.saveState());
    assert.deepEqual([...restored.read(2)], [195, 194], 'the restored device reads on from the saved offset');
    assert.deepEqual([...main.read(2)], [195, 194]);

    for (const bad of [
      { ...snapshot, version: 2 },
      { ...snapshot, kind: 'uart-16550a' },
      { ...snapshot, data: { ...snapshot.data, selector: 0x10000 } },
      { ...snapshot, data: { ...snapshot.data, offset: -1 } },
      { ...snapshot, data: { ...snapshot.data, dmaAddressHigh: 'x' } },
    ]) {
      assert.throws(() => restored.device.restoreState(bad), DeviceStateError);
    }
    assert.deepEqual([...restored.read(1)], [193], 'a refused snapshot changed nothing');
  } finally {
    memory.release();
  }
});

test('fw_cfg: described as QEMU declares it (DSDT device QEMU0002, ports 0x510 + 12), no reserved memory', (t) => {
  const state = createFwCfgState({ cpus: 1, memory: 64 * MIB });
  const d = fwCfgModel.describe!(state, { pciInterrupts: [] });
  assert.equal(d.reserved, undefined);
  assert.equal(d.firmwareFiles, undefined);
  const tables = buildAcpiTables({
    apicIds: [0],
    ioapicId: 1,
    ioapicAddress: IOAPIC_ADDRESS,
    lapicAddress: LAPIC_ADDRESS,
    devices: d.acpi,
  });
  const dsdt = tables.tables.find((x) => x.signature === 'DSDT')!;
  // The raw resource template: IO (Decode16, 0x0510, 0x0510, 0x01, 0x0C) and the end tag.
  assert.ok(Buffer.from(dsdt.bytes).includes(Buffer.from([0x47, 0x01, 0x10, 0x05, 0x10, 0x05, 0x01, 0x0c, 0x79])));
  if (spawnSync('iasl', ['-v']).error) {
    t.skip('iasl not installed: sudo apt-get install acpica-tools');
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), 'partita-fwcfg-'));
  try {
    writeFileSync(join(dir, 'dsdt.dat'), dsdt.bytes);
    const r = spawnSync('iasl', ['-d', 'dsdt.dat'], { cwd: dir, encoding: 'utf8' });
    assert.equal(r.status, 0, `${r.stdout}${r.stderr}`);
    const dsl = readFileSync(join(dir, 'dsdt.dsl'), 'utf8');
    assert.match(dsl, /Device \(FWCF\)\s*\{\s*Name \(_HID, "QEMU0002"\)/);
    assert.match(dsl, /Name \(_STA, 0x0B\)/);
    assert.match(
      dsl,
      /IO \(Decode16,\s*0x0510,\s*\/\/ Range Minimum\s*0x0510,\s*\/\/ Range Maximum\s*0x01,\s*\/\/ Alignment\s*0x0C,\s*\/\/ Length/,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
