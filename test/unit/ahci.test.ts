// The AHCI controller (src/devices/storage/ahci.ts) with ATA disks, driven without KVM the way SeaBIOS drives it
// (test/support/ahci-driver.ts): PCI identity and ABAR, HBA registers, port bring-up, the IDENTIFY PACKET probe a
// disk must abort, IDENTIFY DEVICE, DMA and PIO reads and writes against the image file, FLUSH, read-only disks,
// hostile command lists and PRDTs, INTx and MSI delivery, and save/restore.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { drainEventfd } from '../support/eventfd.js';
import { AhciTestDriver, DATA, GSI, HIGH_RAM, RAM, clbOf, fbOf, succeeded, tableOf } from '../support/ahci-driver.js';
import {
  AHCI_CAP,
  ahciModel,
  CMD_CR,
  CMD_ST,
  IS_DHRS,
  IS_HBFS,
  IS_PSS,
  IS_TFES,
  PX_CI,
  PX_CMD,
  PX_IE,
  PX_IS,
  PX_SIG,
  PX_SSTS,
  PX_TFD,
  SSTS_LINKED,
} from '../../src/devices/storage/ahci.js';
import { DeviceOpenError, DeviceStateError } from '../../src/devices/model.js';
import { deviceRegistry } from '../../src/devices/registry.js';
import { validateMachineSpec } from '../../src/spec/validate.js';

const tmp = mkdtempSync(join(tmpdir(), 'partita-ahci-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

const SECTORS = 2048; // 1 MiB disk
function makeDisk(name: string, sectors = SECTORS): string {
  const path = join(tmp, name);
  const b = Buffer.alloc(sectors * 512);
  for (let s = 0; s < sectors; s++) {
    b.write(`SECTOR ${s}`, s * 512, 'latin1');
    for (let i = 16; i < 512; i++) b[s * 512 + i] = (s * 7 + i) & 0xff;
  }
  writeFileSync(path, b);
  return path;
}

const ATA = {
  IDENTIFY: 0xec,
  IDENTIFY_PACKET: 0xa1,
  READ_DMA: 0xc8,
  READ_DMA_EXT: 0x25,
  WRITE_DMA: 0xca,
  WRITE_DMA_EXT: 0x35,
  READ_SECTORS: 0x20,
  WRITE_SECTORS: 0x30,
  FLUSH_CACHE_EXT: 0xea,
  SET_FEATURES: 0xef,
  CHECK_POWER_MODE: 0xe5,
  STANDBY_IMMEDIATE: 0xe0,
  SET_MULTIPLE: 0xc6,
};

/** A controller with `drives`, enabled and with port 0 brought up as SeaBIOS does. */
function controller(drives: object[]): AhciTestDriver {
  const d = new AhciTestDriver({ kind: 'ahci', drives });
  d.enable();
  return d;
}

test('ahci: PCI identity, ABAR sizing, MSI capability, HBA registers', () => {
  const d = new AhciTestDriver({ kind: 'ahci', drives: [] });
  try {
    assert.equal(d.configRead(0x00), 0x2922_8086, 'ICH9 AHCI');
    assert.equal(d.configRead(0x08) >>> 8, 0x010601, 'class: SATA, AHCI 1.0 programming interface');
    assert.equal(d.configRead(0x3d, 1), 1, 'INTA#');
    assert.equal(d.configRead(0x3c, 1), GSI, 'interrupt line = the slot GSI');
    d.configWrite(0x24, 4, 0xffffffff);
    assert.equal(d.configRead(0x24), 0xfffff000, 'BAR 5: 4 KiB, 32-bit memory');
    // Capability list: MSI (05h) with a 64-bit address.
    assert.ok(d.configRead(0x06, 2) & 0x10, 'capability list');
    const cap = d.configRead(0x34, 1);
    assert.equal(d.configRead(cap, 1), 0x05);
    assert.ok(d.configRead(cap + 2, 2) & 0x80, '64-bit MSI');

    d.enable();
    assert.equal(d.readl(0x00), AHCI_CAP);
    assert.equal(AHCI_CAP & 0x1f, 5, 'CAP.NP: 6 ports');
    assert.equal((AHCI_CAP >>> 8) & 0x1f, 31, 'CAP.NCS: 32 slots');
    assert.ok(AHCI_CAP & (1 << 31) && AHCI_CAP & (1 << 18) && AHCI_CAP & (1 << 27), 'S64A, SAM, SSS');
    assert.equal(AHCI_CAP & (1 << 30), 0, 'no NCQ');
    assert.equal(d.readl(0x0c), 0x3f, 'PI');
    assert.equal(d.readl(0x10), 0x0001_0301, 'AHCI 1.3.1');
    assert.equal(d.readl(0x24), 0, 'CAP2');
    assert.ok(d.readl(0x04) & 0x8000_0000, 'GHC.AE (AHCI only)');
    // Empty ports: no device, no link.
    assert.equal(d.portRead(0, PX_SSTS), 0);
    assert.equal(d.portRead(0, PX_SIG), 0xffffffff);
    assert.equal(d.setupPort(0), 0, 'an empty port never links up');
  } finally {
    d.close();
  }
});

test('ahci disk: the SeaBIOS probe (IDENTIFY PACKET aborted, recovery, IDENTIFY DEVICE)', () => {
  const path = makeDisk('probe.img');
  const d = controller([{ type: 'disk', path, serial: 'SER-123' }]);
  try {
    assert.equal(d.portRead(0, PX_SSTS), 0, 'staggered spin-up: no link before SUD');
    assert.equal(d.setupPort(0), SSTS_LINKED, 'SSTS: DET 3, Gen1, active');
    assert.equal(d.portRead(0, PX_SIG), 0x0000_0101, 'ATA signature');
    assert.equal(d.portRead(0, PX_TFD) & 0x88, 0, 'not busy');
    assert.equal(d.memory.readU8(fbOf(0) + 0x40), 0x34, 'the signature D2H FIS was received');
    assert.equal(d.memory.readU8(fbOf(0) + 0x40 + 5), 0x00, 'LBA mid of an ATA signature');

    const packet = d.issue(0, { command: ATA.IDENTIFY_PACKET, bytes: 512 });
    assert.ok(packet.is & IS_DHRS && packet.is & IS_TFES, 'D2H FIS and a task-file error');
    assert.equal(packet.status & 0x01, 1, 'ERR');
    assert.equal(packet.error, 0x04, 'ABRT');
    assert.ok(!succeeded(packet));
    assert.equal(packet.ci, 1, 'a failed slot stays in PxCI (AHCI §6.2.2)');
    assert.equal(d.portRead(0, PX_TFD), 0x0451);
    d.recover(0);
    assert.equal(d.portRead(0, PX_CI), 0, 'clearing ST cleared PxCI');
    assert.ok(d.portRead(0, PX_CMD) & CMD_CR, 'running again');

    const id = d.issue(0, { command: ATA.IDENTIFY, bytes: 512 });
    assert.ok(id.is & IS_PSS, 'PIO Setup FIS');
    assert.ok(succeeded(id), `status ${id.status.toString(16)}`);
    assert.equal(id.transferred, 512);
    const w = new Uint16Array(new Uint8Array(d.data(512)).buffer);
    const str = (from: number, n: number): string => {
      let s = '';
      for (let i = 0; i < n; i++) s += String.fromCharCode(w[from + i] >> 8, w[from + i] & 0xff);
      return s.trim();
    };
    assert.equal(str(27, 20), 'PARTITA HARDDISK');
    assert.equal(str(10, 10), 'SER-123');
    assert.equal(w[0] & 0x8000, 0, 'ATA device');
    assert.equal(w[60] | (w[61] << 16), SECTORS, 'LBA28 capacity');
    assert.equal(w[100] + w[101] * 65536, SECTORS, 'LBA48 capacity');
    assert.ok(w[83] & (1 << 10) && w[83] & (1 << 13), 'LBA48, FLUSH CACHE EXT');
    assert.ok(w[82] & (1 << 5) && w[85] & (1 << 5), 'write cache supported and on');
    assert.ok(w[88] & 0x3f && w[49] & (1 << 8), 'DMA');
    const bytes = d.data(512);
    assert.equal(w[255] & 0xff, 0xa5);
    assert.equal(bytes.reduce((a, b) => a + b, 0) & 0xff, 0, 'IDENTIFY checksum');
    // SeaBIOS then sets the transfer mode (SET FEATURES 03h, count 45h: Ultra DMA mode 5), as QEMU's trace shows.
    assert.ok(succeeded(d.issue(0, { command: ATA.SET_FEATURES, features: 0x03, count: 0x45 })));
    d.issue(0, { command: ATA.IDENTIFY, bytes: 512 });
    assert.equal(d.data(512).readUInt16LE(88 * 2), 0x203f, 'UDMA 5 selected');
  } finally {
    d.close();
  }
});

test('ahci disk: READ DMA, READ DMA EXT, PIO reads, WRITE DMA + FLUSH reach the image', () => {
  const path = makeDisk('rw.img');
  const image = readFileSync(path);
  const d = controller([{ type: 'disk', path }]);
  try {
    d.setupPort(0);
    const r0 = d.issue(0, { command: ATA.READ_DMA, lba: 0, count: 1, bytes: 512 });
    assert.ok(succeeded(r0) && r0.is & IS_DHRS, 'DMA ends with a D2H FIS');
    assert.equal(r0.ci, 0);
    assert.deepEqual(d.data(512), image.subarray(0, 512), 'sector 0');

    // READ DMA EXT of 3 sectors over a PRDT of two entries (scatter).
    const r1 = d.issue(0, {
      command: ATA.READ_DMA_EXT,
      lba: 2000,
      count: 3,
      prdt: [
        { address: DATA + 0x10000, bytes: 1024 },
        { address: DATA + 0x30000, bytes: 512 },
      ],
    });
    assert.ok(succeeded(r1));
    assert.equal(r1.transferred, 1536);
    assert.deepEqual(d.data(1024, DATA + 0x10000), image.subarray(2000 * 512, 2002 * 512));
    assert.deepEqual(d.data(512, DATA + 0x30000), image.subarray(2002 * 512, 2003 * 512));

    const pio = d.issue(0, { command: ATA.READ_SECTORS, lba: 5, count: 2, bytes: 1024 });
    assert.ok(pio.is & IS_PSS && succeeded(pio), 'PIO read: PIO Setup FIS');
    assert.equal(d.memory.readU8(fbOf(0) + 0x20 + 15), 0x50, 'E_Status');
    assert.deepEqual(d.data(1024), image.subarray(5 * 512, 7 * 512));

    const beyond = d.issue(0, { command: ATA.READ_DMA_EXT, lba: SECTORS - 1, count: 2, bytes: 1024 });
    assert.ok(!succeeded(beyond) && beyond.error & 0x10, 'IDNF past the end');
    d.recover(0);

    const payload = Buffer.alloc(1024, 0x5a);
    payload.write('WRITTEN BY AHCI', 0, 'latin1');
    d.memory.write(DATA, payload);
    const w = d.issue(0, { command: ATA.WRITE_DMA_EXT, lba: 100, count: 2, write: true, bytes: 1024 });
    assert.ok(succeeded(w));
    const f = d.issue(0, { command: ATA.FLUSH_CACHE_EXT });
    assert.ok(succeeded(f) && f.is & IS_DHRS);
    assert.deepEqual(readFileSync(path).subarray(100 * 512, 102 * 512), payload, 'on the image');
    assert.deepEqual(readFileSync(path).subarray(0, 100 * 512), image.subarray(0, 100 * 512), 'nothing else');

    d.memory.fill(DATA, 512, 0x33);
    const pw = d.issue(0, { command: ATA.WRITE_SECTORS, lba: 7, count: 1, write: true, bytes: 512 });
    assert.ok(succeeded(pw) && pw.is & IS_DHRS, 'PIO write ends with a D2H FIS');
    assert.deepEqual(readFileSync(path).subarray(7 * 512, 8 * 512), Buffer.alloc(512, 0x33));

    // Small commands: power mode, multiple mode, features.
    assert.equal(d.issue(0, { command: ATA.STANDBY_IMMEDIATE }).status & 1, 0);
    d.issue(0, { command: ATA.CHECK_POWER_MODE });
    assert.equal(d.memory.readU8(fbOf(0) + 0x40 + 12), 0x00, 'standby');
    assert.ok(succeeded(d.issue(0, { command: ATA.SET_MULTIPLE, count: 8 })));
    assert.ok(!succeeded(d.issue(0, { command: ATA.SET_MULTIPLE, count: 3 })), 'not a power of two');
    d.recover(0);
    assert.ok(succeeded(d.issue(0, { command: ATA.SET_FEATURES, features: 0x82 })), 'write cache off');
    d.issue(0, { command: ATA.IDENTIFY, bytes: 512 });
    assert.equal(d.data(512).readUInt16LE(85 * 2) & (1 << 5), 0, 'IDENTIFY says the cache is off');
    assert.ok(!succeeded(d.issue(0, { command: 0xb0 })), 'SMART is not there');
  } finally {
    d.close();
  }
});

test('ahci disk: a read-only disk aborts writes and keeps the image', () => {
  const path = makeDisk('ro.img');
  const before = readFileSync(path);
  const d = controller([{ type: 'disk', path, readonly: true }]);
  try {
    d.setupPort(0);
    d.memory.fill(DATA, 512, 0xee);
    const w = d.issue(0, { command: ATA.WRITE_DMA, lba: 0, count: 1, write: true, bytes: 512 });
    assert.ok(!succeeded(w) && w.error === 0x04 && w.is & IS_TFES, 'aborted');
    d.recover(0);
    assert.ok(succeeded(d.issue(0, { command: ATA.READ_DMA, lba: 0, count: 1, bytes: 512 })), 'reads still work');
    assert.deepEqual(readFileSync(path), before);
  } finally {
    d.close();
  }
});

test('ahci: hostile command lists and PRDTs end in an error status, never outside guest RAM', () => {
  const path = makeDisk('hostile.img');
  const before = readFileSync(path);
  const d = controller([{ type: 'disk', path }]);
  try {
    d.setupPort(0);
    const expectFatal = (what: string, r: ReturnType<AhciTestDriver['issue']>, bit = IS_HBFS): void => {
      assert.ok(r.is & bit, `${what}: PxIS ${r.is.toString(16)}`);
      assert.ok(r.is & IS_TFES && r.status & 1, `${what}: an error the guest sees`);
      d.recover(0);
      assert.ok(succeeded(d.issue(0, { command: ATA.READ_DMA, lba: 1, count: 1, bytes: 512 })), `${what}: alive`);
    };
    const read = { command: ATA.READ_DMA_EXT, lba: 0, count: 8 };
    expectFatal('PRDT beyond RAM', d.issue(0, { ...read, prdt: [{ address: RAM + 0x1000, bytes: 4096 }] }));
    expectFatal('PRDT across the end of RAM', d.issue(0, { ...read, prdt: [{ address: RAM - 512, bytes: 4096 }] }));
    expectFatal('PRDT at 2^52', d.issue(0, { ...read, prdt: [{ address: 2 ** 52, bytes: 4096 }] }));
    expectFatal('command table beyond RAM', d.issue(0, read, { table: 0xffff_ff80 }));
    expectFatal('PRDT of 65535 entries past RAM', d.issue(0, read, { table: RAM - 0x100, entries: 65535 }));
    // Zero PRDT entries: the data has nowhere to go.
    const none = d.issue(0, { ...read, prdt: [] });
    assert.ok(none.status & 1 && none.is & IS_TFES, 'no PRDT: error');
    assert.equal(none.transferred, 0);
    d.recover(0);
    // Huge byte counts (4 MiB per entry) over RAM that exists: bounded by the command, not by the PRDT.
    const huge = d.issue(0, {
      ...read,
      prdt: Array.from({ length: 4 }, () => ({ address: 0, bytes: 4 << 20 })),
    });
    assert.ok(succeeded(huge) && huge.transferred === 8 * 512, 'only the command’s 8 sectors move');
    // A non-H2D FIS type and a too short FIS length.
    const cfl = d.issue(0, read, { cfl: 2 });
    assert.ok(cfl.status & 1);
    d.recover(0);
    // Command list itself outside RAM.
    d.portWrite(0, PX_CMD, d.portRead(0, PX_CMD) & ~CMD_ST);
    d.portWrite(0, 0x00, 0xfff0_0000); // PxCLB
    d.portWrite(0, PX_CMD, d.portRead(0, PX_CMD) | CMD_ST);
    d.portWrite(0, PX_CI, 1);
    assert.ok(d.portRead(0, PX_IS) & IS_HBFS, 'bad PxCLB: host bus fatal error');
    assert.deepEqual(readFileSync(path), before, 'the image is untouched');
  } finally {
    d.close();
  }
});

test('ahci: INTx follows GHC.IE, PxIE and PxIS; MSI sends one message per event', () => {
  const path = makeDisk('irq.img');
  const d = controller([{ type: 'disk', path }]);
  try {
    d.setupPort(0);
    d.portWrite(0, PX_IE, 0x7dc0_00ff);
    d.issue(0, { command: ATA.READ_DMA, count: 1, bytes: 512 });
    assert.deepEqual(d.intx, [], 'GHC.IE off: no interrupt');
    assert.equal(d.readl(0x08), 1, 'IS: port 0 pending');
    d.writel(0x04, d.readl(0x04) | 2); // GHC.IE
    assert.deepEqual(d.intx, [true], 'pending interrupt raised when enabled');
    d.portWrite(0, PX_IS, 0xffffffff);
    d.writel(0x08, 1);
    assert.deepEqual(d.intx, [true, false]);
    assert.equal(d.readl(0x08), 0);
    // issue() clears PxIS itself after reading it, so look at the line just after the command.
    d.portWrite(0, PX_CI, 0); // no-op
    d.memory.writeU32(clbOf(0), (1 << 16) | 5);
    d.portWrite(0, PX_CI, 1);
    assert.deepEqual(d.intx, [true, false, true], 'command completion');
    d.portWrite(0, PX_IS, d.portRead(0, PX_IS));
    assert.deepEqual(d.intx, [true, false, true, false]);

    // MSI: address/data, enable; INTA# stays low from now on.
    const cap = d.configRead(0x34, 1);
    d.configWrite(cap + 4, 4, 0xfee0_0000);
    d.configWrite(cap + 8, 4, 0);
    d.configWrite(cap + 12, 2, 0x0041);
    d.configWrite(cap + 2, 2, 0x0001);
    const fd = d.state.msiEventFd;
    drainEventfd(fd);
    d.portWrite(0, PX_CI, 1);
    assert.equal(drainEventfd(fd), 1, 'one MSI');
    assert.deepEqual(d.router.routes.get(d.state.msiGsi), { lo: 0xfee0_0000, hi: 0, data: 0x41 });
    assert.equal(d.intx.length, 4, 'no INTx while MSI is on');
    d.portWrite(0, PX_IS, d.portRead(0, PX_IS));
    assert.equal(drainEventfd(fd), 0, 'clearing sends nothing');
    // Bus mastering off: the device may not write the message.
    d.configWrite(0x04, 2, 0x0002);
    d.portWrite(0, PX_CI, 1);
    assert.equal(drainEventfd(fd), 0, 'no MSI without bus master');
  } finally {
    d.close();
  }
});

test('ahci: COMRESET, software reset and HBA reset bring the signature back', () => {
  const path = makeDisk('reset.img');
  const d = controller([{ type: 'disk', path }]);
  try {
    d.setupPort(0);
    d.comreset(0);
    assert.equal(d.portRead(0, PX_SSTS), SSTS_LINKED);
    assert.equal(d.memory.readU8(fbOf(0) + 0x40), 0x34, 'a D2H FIS after COMRESET');
    assert.equal(d.portRead(0, PX_TFD), 0x0150);
    // Software reset: two H2D FISes with C = 0, SRST set then clear.
    const srst = (control: number): void => {
      d.memory.writeU32(clbOf(0), (1 << 8) | 5);
      d.memory.writeU32(clbOf(0) + 8, tableOf(0));
      const f = new Uint8Array(20);
      f[0] = 0x27;
      f[15] = control;
      d.memory.write(tableOf(0), f);
      d.portWrite(0, PX_CI, 1);
    };
    srst(0x04);
    assert.equal(d.portRead(0, PX_TFD) & 0x80, 0x80, 'BSY while SRST is set');
    srst(0x00);
    assert.equal(d.portRead(0, PX_TFD) & 0x80, 0, 'reset done');
    assert.equal(d.portRead(0, PX_SIG), 0x101);
    d.writel(0x04, 1); // GHC.HR
    assert.equal(d.readl(0x04) & 1, 0, 'HR self-clears');
    assert.equal(d.portRead(0, PX_CMD) & CMD_ST, 0);
    assert.equal(d.portRead(0, PX_SSTS), 0, 'links wait for spin-up again');
    assert.equal(d.setupPort(0), SSTS_LINKED);
    assert.ok(succeeded(d.issue(0, { command: ATA.IDENTIFY, bytes: 512 })));
  } finally {
    d.close();
  }
});

test('ahci: save and restore give the same registers and the same next command', () => {
  const path = makeDisk('state.img');
  const d = controller([{ type: 'disk', path }]);
  try {
    d.setupPort(0);
    d.portWrite(0, PX_IE, 0x1);
    d.writel(0x04, 2);
    d.issue(0, { command: ATA.SET_MULTIPLE, count: 4 });
    const snapshot = JSON.parse(JSON.stringify(d.controller.saveState()));
    // A second controller over the same host side (as a restore in a new process opens the same image).
    const e = new AhciTestDriver({ kind: 'ahci', drives: [] }, d.memory);
    assert.throws(() => e.controller.restoreState({ ...snapshot, kind: 'virtio-blk' }), DeviceStateError);
    assert.throws(() => e.controller.restoreState(snapshot), /has drives/, 'a controller without that disk refuses it');
    const f = new AhciTestDriver(
      { kind: 'ahci', drives: [] },
      undefined,
      ahciModel.create(
        { kind: 'ahci', drives: [{ type: 'disk', path: makeDisk('state2.img') }] },
        {
          vmFd: -1,
          router: e.router,
          irqLine: () => ({ set: () => undefined }),
          diskImages: [],
          name: () => 'ahci0',
          pci: { slot: 3, gsi: GSI },
          machine: { cpus: 1, memory: RAM, boot: 'firmware' },
          deviceMemory: () => {
            throw new Error('none');
          },
        },
      ),
    );
    f.memory.slice(0, RAM).set(d.memory.slice(0, RAM));
    f.controller.restoreState(snapshot);
    for (const reg of [0x04, 0x08, 0x0c]) assert.equal(f.readl(reg), d.readl(reg), `HBA 0x${reg.toString(16)}`);
    for (let reg = 0; reg < 0x40; reg += 4)
      assert.equal(f.portRead(0, reg), d.portRead(0, reg), `port 0x${reg.toString(16)}`);
    f.configWrite(0x24, 4, 0xc000_1000);
    const a = d.issue(0, { command: ATA.IDENTIFY, bytes: 512 });
    const b = f.issue(0, { command: ATA.IDENTIFY, bytes: 512 });
    assert.deepEqual(b, a);
    assert.deepEqual(f.data(512).readUInt16LE(59 * 2), 0x104, 'multiple mode 4 survived');
    e.close();
    f.close();
  } finally {
    d.close();
  }
});

test('ahci: host-side errors are one line: small image, non-ISO CD, writable CD, spec schema', () => {
  const small = join(tmp, 'small.img');
  writeFileSync(small, Buffer.alloc(100));
  assert.throws(
    () => new AhciTestDriver({ kind: 'ahci', drives: [{ type: 'disk', path: small }] }),
    (e: Error) => e instanceof DeviceOpenError && !e.message.includes('\n') && /small\.img/.test(e.message),
  );
  const notIso = makeDisk('not-iso.img', 128);
  assert.throws(
    () => new AhciTestDriver({ kind: 'ahci', drives: [{ type: 'cdrom', path: notIso }] }),
    /not an ISO 9660 image/,
  );
  assert.throws(
    () => new AhciTestDriver({ kind: 'ahci', drives: [{ type: 'cdrom', readonly: false }] }),
    (e: Error) => e instanceof DeviceOpenError && /read-only/.test(e.message),
  );
  assert.equal(deviceRegistry.get('ahci'), ahciModel as never, 'registered');
  assert.deepEqual(
    ahciModel.diskImages!({
      kind: 'ahci',
      drives: [{ type: 'disk', path: '/a' }, { type: 'cdrom' }, { type: 'cdrom', path: '/b' }],
    }),
    ['/a', '/b'],
  );
});

test('ahci: machine spec entries are checked by the schema; one image twice is refused', () => {
  const disk = makeDisk('spec.img', 8);
  const spec = (drives: unknown[]): unknown => ({
    version: 1,
    cpus: 1,
    memory: 64 << 20,
    boot: { kind: 'kernel', kernel: '/k' },
    devices: [{ kind: 'ahci', drives }],
  });
  validateMachineSpec(spec([{ type: 'disk', path: disk, readonly: true, serial: 'S1' }, { type: 'cdrom' }]));
  assert.throws(() => validateMachineSpec(spec([{ type: 'floppy', path: disk }])), /\/devices\/0\/drives\/0/);
  assert.throws(() => validateMachineSpec(spec(new Array(7).fill({ type: 'cdrom' }))), /\/devices\/0\/drives/);
  assert.throws(
    () =>
      validateMachineSpec(
        spec([
          { type: 'disk', path: disk },
          { type: 'disk', path: disk },
        ]),
      ),
    /given twice/,
  );
});

test('ahci: the Linux libahci bring-up (HBA reset, port init, hardreset, classify, interrupt-driven IDENTIFY)', () => {
  const path = makeDisk('linux.img');
  const d = controller([{ type: 'disk', path }, { type: 'cdrom' }]);
  try {
    d.writel(0x04, d.readl(0x04) | 1); // ahci_reset_controller
    assert.equal(d.readl(0x04) & 1, 0);
    d.writel(0x04, 0x8000_0000);
    for (const port of [0, 1]) {
      // ahci_port_init / ahci_start_port
      d.portWrite(port, PX_CMD, d.portRead(port, PX_CMD) & ~CMD_ST);
      assert.equal(d.portRead(port, PX_CMD) & CMD_CR, 0);
      d.portWrite(port, 0x30, d.portRead(port, 0x30));
      d.portWrite(port, PX_IS, d.portRead(port, PX_IS));
      d.portWrite(port, 0x00, clbOf(port));
      d.portWrite(port, 0x08, fbOf(port));
      d.portWrite(port, PX_CMD, d.portRead(port, PX_CMD) | 0x10); // FRE
      d.portWrite(port, PX_CMD, d.portRead(port, PX_CMD) | 0x2 | (1 << 28)); // SUD, ICC active
      // ahci_do_hardreset: a BSY D2H FIS in the receive area, COMRESET, wait for a D2H FIS that is not busy.
      d.memory.writeU8(fbOf(port) + 0x40 + 2, 0x80);
      d.portWrite(port, 0x2c, 0x301);
      d.portWrite(port, 0x2c, 0x300);
      assert.equal(d.portRead(port, PX_SSTS), SSTS_LINKED);
      assert.equal(d.portRead(port, PX_TFD) & 0x80, 0, 'ahci_check_ready');
      assert.equal(d.memory.readU8(fbOf(port) + 0x40 + 2) & 0x80, 0, 'the D2H FIS replaced the BSY one');
      d.portWrite(port, PX_CMD, d.portRead(port, PX_CMD) | CMD_ST);
      d.portWrite(port, PX_IE, 0x7dc0_007f);
    }
    assert.equal(d.portRead(0, PX_SIG), 0x101, 'ATA_DEV_ATA');
    assert.equal(d.portRead(1, PX_SIG), 0xeb14_0101, 'ATA_DEV_ATAPI (an empty drive still answers)');
    d.writel(0x04, d.readl(0x04) | 2);
    const id = d.issue(0, { command: ATA.IDENTIFY, bytes: 512 });
    assert.ok(id.is & IS_PSS && id.ci === 0 && succeeded(id));
    assert.equal(d.readl(0x08), 1, 'IS names port 0');
    assert.deepEqual(d.intx, [true]);
    const pid = d.issue(1, { command: ATA.IDENTIFY_PACKET, bytes: 512 });
    assert.ok(pid.is & IS_PSS && succeeded(pid));
    assert.equal(d.readl(0x08), 3, 'both ports pending');
  } finally {
    d.close();
  }
});

test('ahci: command lists, tables, PRDTs and received FISes above 2 GiB', () => {
  const path = makeDisk('high.img');
  const image = readFileSync(path);
  const d = controller([{ type: 'disk', path }]);
  try {
    const clb = HIGH_RAM + 0x1000;
    const fb = HIGH_RAM + 0x1400;
    const table = HIGH_RAM + 0x2000;
    const buffer = HIGH_RAM + 0x10000;
    assert.equal(d.setupPort(0, { clb, fb }), SSTS_LINKED);
    assert.equal(d.portRead(0, 0x00), clb, 'PxCLB');
    assert.equal(d.memory.readU8(fb + 0x40), 0x34, 'signature FIS in high memory');
    // Slot 0 as issue() lays it out, but in high memory.
    d.memory.writeU32(clb, (1 << 16) | 5);
    d.memory.writeU32(clb + 8, table);
    const fis = new Uint8Array(20);
    fis.set([0x27, 0x80, ATA.READ_DMA_EXT, 0, 9, 0, 0, 0x40]);
    fis[12] = 2;
    d.memory.write(table, fis);
    d.memory.writeU32(table + 0x80, buffer);
    d.memory.writeU32(table + 0x8c, 1023);
    d.portWrite(0, PX_CI, 1);
    assert.equal(d.portRead(0, PX_CI), 0);
    assert.equal(d.portRead(0, PX_IS) & (IS_HBFS | IS_TFES), 0, 'no error');
    assert.ok(d.portRead(0, PX_IS) & IS_DHRS);
    assert.equal(d.memory.readU32(clb + 4), 1024, 'PRDBC');
    assert.deepEqual(Buffer.from(d.memory.read(buffer, 1024)), image.subarray(9 * 512, 11 * 512));
    assert.equal(d.memory.readU8(fb + 0x40 + 2), 0x50, 'D2H FIS in high memory');
  } finally {
    d.close();
  }
});

test('ahci: a platform reset clears PCI programming, the HBA and disk settings; CD drives keep their disc', () => {
  const path = makeDisk('platform-reset.img');
  const iso = join(tmp, 'reset.iso');
  const dir = join(tmp, 'reset.d');
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'x.txt'), 'x');
  execFileSync('xorriso', ['-as', 'mkisofs', '-quiet', '-o', iso, dir], { stdio: 'ignore' });
  const d = controller([
    { type: 'disk', path },
    { type: 'cdrom', path: iso },
  ]);
  try {
    d.setupPort(0);
    d.issue(0, { command: ATA.SET_FEATURES, features: 0x82 }); // write cache off
    const cap = d.configRead(0x34, 1);
    d.configWrite(cap + 4, 4, 0xfee0_0000);
    d.configWrite(cap + 2, 2, 1);
    d.controller.reset();
    assert.equal(d.configRead(0x04, 2), 0, 'command register');
    assert.equal(d.configRead(0x24), 0, 'BAR 5');
    assert.equal(d.configRead(cap + 2, 2) & 1, 0, 'MSI off');
    assert.equal(d.configRead(cap + 4), 0);
    assert.equal(d.configRead(0x3c, 1), GSI, 'interrupt line kept');
    d.enable();
    assert.equal(d.portRead(0, 0x00), 0, 'PxCLB');
    assert.equal(d.portRead(0, PX_CMD), 0x4, 'only POD');
    assert.equal(d.portRead(0, PX_SSTS), 0, 'links wait for spin-up');
    d.setupPort(0);
    d.issue(0, { command: ATA.IDENTIFY, bytes: 512 });
    assert.ok(d.data(512).readUInt16LE(85 * 2) & (1 << 5), 'write cache back on');
    assert.equal(d.controller.mediaPath(1), iso, 'the disc stays');
  } finally {
    d.close();
  }
});
