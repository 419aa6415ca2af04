// The ATAPI CD-ROM behind the AHCI controller (src/devices/storage/atapi-cdrom.ts), driven as SeaBIOS's
// cdrom.c/ahci.c and Linux's sr/libata do, on a real El Torito ISO built here with xorriso: IDENTIFY PACKET
// DEVICE, the ATAPI signature, TEST UNIT READY and REQUEST SENSE around media changes, READ(10) of the boot
// catalog, READ CAPACITY, READ TOC, INQUIRY, MODE SENSE, GET CONFIGURATION, GET EVENT STATUS NOTIFICATION,
// START STOP UNIT with PREVENT ALLOW MEDIUM REMOVAL.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import {
  closeSync,
  ftruncateSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AhciTestDriver, DATA, fbOf, succeeded, type CommandResult } from '../support/ahci-driver.js';
import { IS_DHRS, IS_HBFS, IS_PSS, IS_TFES, PX_SIG, PX_SSTS, SSTS_LINKED } from '../../src/devices/storage/ahci.js';
import { readIsoInfo } from '../../src/devices/storage/iso9660.js';
import { DeviceStateError } from '../../src/devices/model.js';

const tmp = mkdtempSync(join(tmpdir(), 'partita-atapi-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

/** An El Torito ISO (no-emulation boot image) made by xorriso, as an installer ISO is. */
function makeIso(name: string, volume: string): string {
  const dir = join(tmp, `${name}.d`);
  mkdirSync(dir, { recursive: true });
  const boot = Buffer.alloc(2048, 0x90);
  boot.write('PARTITA BOOT IMAGE', 0, 'latin1');
  writeFileSync(join(dir, 'boot.img'), boot);
  writeFileSync(join(dir, 'hello.txt'), `hello from ${volume}\n`);
  const iso = join(tmp, name);
  execFileSync(
    'xorriso',
    ['-as', 'mkisofs', '-quiet', '-V', volume, '-o', iso, '-b', 'boot.img', '-c', 'boot.cat', '-no-emul-boot', dir],
    { stdio: 'ignore' },
  );
  return iso;
}

const iso = makeIso('a.iso', 'PARTITA_A');
const iso2 = makeIso('b.iso', 'PARTITA_B');
const isoSectors = statSync(iso).size / 2048;

/** Sense key, ASC, ASCQ through REQUEST SENSE (fixed format). */
function requestSense(d: AhciTestDriver): [number, number, number] {
  const r = d.packet(0, [0x03, 0, 0, 0, 18, 0, 0, 0, 0, 0, 0, 0], 18);
  assert.ok(succeeded(r), 'REQUEST SENSE itself succeeds');
  const s = d.data(18);
  assert.equal(s[0], 0x70, 'fixed format, current');
  assert.equal(s[7], 10, 'additional length');
  return [s[2] & 0x0f, s[12], s[13]];
}

const tur = (d: AhciTestDriver): CommandResult => d.packet(0, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);

/** A controller with a CD drive on port 0, brought up as SeaBIOS does. */
function cdrom(path?: string): AhciTestDriver {
  const d = new AhciTestDriver({ kind: 'ahci', drives: [path ? { type: 'cdrom', path } : { type: 'cdrom' }] });
  d.enable();
  assert.equal(d.setupPort(0), SSTS_LINKED);
  return d;
}

/** After an error SeaBIOS restarts the port; so does this test. */
function checkCondition(d: AhciTestDriver, r: CommandResult, key: number): void {
  assert.ok(!succeeded(r) && r.is & IS_TFES && r.is & IS_DHRS, `CHECK CONDITION (status ${r.status.toString(16)})`);
  assert.equal(r.error >> 4, key, 'sense key in the error register');
  d.recover(0);
}

test('iso9660: the primary volume descriptor and the El Torito boot record are found', () => {
  const fd = openSync(iso, 'r');
  try {
    const info = readIsoInfo(fd);
    assert.ok(info);
    assert.equal(info.volumeId, 'PARTITA_A');
    assert.equal(info.volumeSectors, isoSectors);
    assert.ok(info.bootCatalogSector && info.bootCatalogSector > 17);
  } finally {
    closeSync(fd);
  }
  const fd2 = openSync(join(tmp, 'a.iso.d', 'boot.img'), 'r');
  assert.equal(readIsoInfo(fd2), undefined, 'a file that is not ISO 9660');
  closeSync(fd2);
});

test('atapi: the SeaBIOS probe finds a CD-ROM (signature, IDENTIFY PACKET DEVICE)', () => {
  const d = cdrom(iso);
  try {
    assert.equal(d.portRead(0, PX_SIG), 0xeb14_0101, 'ATAPI signature');
    assert.equal(d.memory.readU8(fbOf(0) + 0x40 + 5), 0x14);
    assert.equal(d.memory.readU8(fbOf(0) + 0x40 + 6), 0xeb);
    const id = d.issue(0, { command: 0xa1, bytes: 512 });
    assert.ok(id.is & IS_PSS && succeeded(id), 'IDENTIFY PACKET DEVICE succeeds through a PIO Setup FIS');
    const w = d.data(512);
    const w0 = w.readUInt16LE(0);
    assert.equal(w0 >> 14, 2, 'ATAPI');
    assert.equal((w0 >> 8) & 0x1f, 5, 'CD-ROM (SeaBIOS: iscd)');
    assert.ok(w0 & 0x80, 'removable');
    assert.equal(w.reduce((a, b) => a + b, 0) & 0xff, 0, 'checksum');
    let model = '';
    for (let i = 27; i < 47; i++) model += String.fromCharCode(w[2 * i + 1], w[2 * i]);
    assert.equal(model.trim(), 'PARTITA DVD-ROM');
    const ata = d.issue(0, { command: 0xec, bytes: 512 });
    assert.ok(!succeeded(ata) && ata.error === 0x04, 'IDENTIFY DEVICE aborted');
    assert.equal(d.memory.readU8(fbOf(0) + 0x40 + 6), 0xeb, '…with the PACKET signature in the registers');
    d.recover(0);
  } finally {
    d.close();
  }
});

test('atapi: SeaBIOS no-data packets (one 4 MiB PRDT entry at its buffer, past the end of RAM) succeed', () => {
  const d = cdrom(iso);
  try {
    // ahci_command(port, 0, 1, buf, 0): PRDT flags = 0 - 1, so DBC says 4 MiB; nothing moves, nothing is checked.
    const r = d.issue(0, {
      command: 0xa0,
      features: 1,
      cdb: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
      prdt: [{ address: (4 << 20) - 0x1000, bytes: 4 << 20 }],
    });
    assert.ok(succeeded(r), `TEST UNIT READY (PxIS ${r.is.toString(16)})`);
    assert.equal(r.transferred, 0);
    // The same PRDT for a read that needs it: the transfer reaches past RAM, a host bus error.
    const bad = d.issue(0, {
      command: 0xa0,
      features: 1,
      cdb: [0x28, 0, 0, 0, 0, 16, 0, 0, 3, 0, 0, 0],
      prdt: [{ address: (4 << 20) - 0x1000, bytes: 4 << 20 }],
    });
    assert.ok(bad.is & IS_HBFS && !succeeded(bad));
    d.recover(0);
    assert.ok(succeeded(tur(d)));
  } finally {
    d.close();
  }
});

test('atapi: READ(10) of the El Torito boot catalog and the boot image, READ CAPACITY, READ TOC', () => {
  const d = cdrom(iso);
  const image = readFileSync(iso);
  try {
    assert.ok(succeeded(tur(d)), 'a disc present at power-on: ready, no unit attention');
    // Volume descriptor 17: El Torito boot record (what SeaBIOS's cdrom_boot reads first).
    const r17 = d.packet(0, [0x28, 0, 0, 0, 0, 17, 0, 0, 1, 0, 0, 0], 2048);
    assert.ok(succeeded(r17) && r17.is & IS_DHRS && r17.transferred === 2048);
    const brvd = d.data(2048);
    assert.equal(brvd.toString('latin1', 1, 6), 'CD001');
    assert.equal(brvd.toString('latin1', 7, 30), 'EL TORITO SPECIFICATION');
    const catalog = brvd.readUInt32LE(0x47);
    const r = d.packet(
      0,
      [
        0x28,
        0,
        (catalog >> 24) & 0xff,
        (catalog >> 16) & 0xff,
        (catalog >> 8) & 0xff,
        catalog & 0xff,
        0,
        0,
        1,
        0,
        0,
        0,
      ],
      2048,
    );
    assert.ok(succeeded(r));
    const cat = d.data(2048);
    assert.equal(cat[0], 0x01, 'validation entry');
    assert.equal(cat[0x1e], 0x55);
    assert.equal(cat[0x1f], 0xaa);
    let sum = 0;
    for (let i = 0; i < 32; i += 2) sum = (sum + cat.readUInt16LE(i)) & 0xffff;
    assert.equal(sum, 0, 'validation entry checksum');
    assert.equal(cat[32], 0x88, 'initial entry: bootable');
    const bootLba = cat.readUInt32LE(32 + 8);
    // READ(12) of the boot image, two PRDT entries.
    const r12 = d.issue(0, {
      command: 0xa0,
      features: 1,
      cdb: [
        0xa8,
        0,
        (bootLba >> 24) & 0xff,
        (bootLba >> 16) & 0xff,
        (bootLba >> 8) & 0xff,
        bootLba & 0xff,
        0,
        0,
        0,
        1,
        0,
        0,
      ],
      prdt: [
        { address: DATA, bytes: 1024 },
        { address: DATA + 0x8000, bytes: 1024 },
      ],
    });
    assert.ok(succeeded(r12));
    assert.equal(d.data(18).toString('latin1'), 'PARTITA BOOT IMAGE');
    assert.deepEqual(
      Buffer.concat([d.data(1024), d.data(1024, DATA + 0x8000)]),
      image.subarray(bootLba * 2048, bootLba * 2048 + 2048),
    );

    const cap = d.packet(0, [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8);
    assert.ok(succeeded(cap));
    assert.equal(d.data(8).readUInt32BE(0), isoSectors - 1, 'last LBA');
    assert.equal(d.data(8).readUInt32BE(4), 2048, 'block length');

    const toc = d.packet(0, [0x43, 0, 0, 0, 0, 0, 0, 0, 100, 0, 0, 0], 100);
    assert.ok(succeeded(toc));
    const t = d.data(20);
    assert.equal(t.readUInt16BE(0), 18, 'TOC data length: 2 + 2 descriptors');
    assert.deepEqual([t[2], t[3]], [1, 1], 'first and last track');
    assert.deepEqual([t[5], t[6], t.readUInt32BE(8)], [0x14, 1, 0], 'track 1: data, LBA 0');
    assert.deepEqual([t[14], t.readUInt32BE(16)], [0xaa, isoSectors], 'lead-out');
    const msf = d.packet(0, [0x43, 0x02, 0, 0, 0, 0, 0, 0, 100, 0, 0, 0], 100);
    assert.ok(succeeded(msf));
    assert.deepEqual([...d.data(12).subarray(8, 12)], [0, 0, 2, 0], 'track 1 at 00:02:00');
    const session = d.packet(0, [0x43, 0, 1, 0, 0, 0, 0, 0, 12, 0, 0, 0], 12);
    assert.ok(succeeded(session));
    assert.equal(d.data(12).readUInt16BE(0), 10, 'session information');
    const raw = d.packet(0, [0x43, 0, 2, 0, 0, 0, 0, 0, 200, 0, 0, 0], 200);
    assert.ok(succeeded(raw) && raw.transferred === 48, 'raw TOC: 4 points');

    const beyond = d.packet(0, [0x28, 0, 0, 0, (isoSectors >> 8) & 0xff, isoSectors & 0xff, 0, 0, 1, 0, 0, 0], 2048);
    checkCondition(d, beyond, 5);
    assert.deepEqual(requestSense(d), [5, 0x21, 0], 'LBA out of range');
    const bad = d.packet(0, [0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    checkCondition(d, bad, 5);
    assert.deepEqual(requestSense(d), [5, 0x20, 0], 'invalid command operation code');
    // A PRDT too small for the transfer is an error, not a partial read.
    const short = d.packet(0, [0x28, 0, 0, 0, 0, 16, 0, 0, 2, 0, 0, 0], 2048);
    checkCondition(d, short, 5);
  } finally {
    d.close();
  }
});

test('atapi: media change raises UNIT ATTENTION and a media event; eject with and without the lock', () => {
  const d = cdrom(iso);
  try {
    assert.ok(succeeded(tur(d)));
    d.controller.ejectMedia(0);
    assert.equal(d.controller.mediaPath(0), '');
    checkCondition(d, tur(d), 2);
    assert.deepEqual(requestSense(d), [2, 0x3a, 0x02], 'medium not present, tray open');
    // GET EVENT STATUS NOTIFICATION (polled, media class): the removal.
    const gesn = (): Buffer => {
      assert.ok(succeeded(d.packet(0, [0x4a, 1, 0, 0, 0x10, 0, 0, 0, 8, 0, 0, 0], 8)));
      return d.data(8);
    };
    let e = gesn();
    assert.deepEqual([e[2], e[4], e[5]], [4, 3, 0x01], 'media class: removal, door open');
    assert.equal(gesn()[4], 0, 'an event is reported once');

    d.controller.insertMedia(0, iso2);
    assert.equal(d.controller.mediaPath(0), iso2);
    e = gesn();
    assert.deepEqual([e[4], e[5]], [2, 0x02], 'new media, present');
    assert.deepEqual(requestSense(d), [6, 0x28, 0], 'REQUEST SENSE reports the UNIT ATTENTION');
    assert.ok(succeeded(tur(d)), 'then the drive is ready');
    const pvd = d.packet(0, [0x28, 0, 0, 0, 0, 16, 0, 0, 1, 0, 0, 0], 2048);
    assert.ok(succeeded(pvd));
    assert.equal(d.data(2048).toString('latin1', 40, 49), 'PARTITA_B', 'the new disc is read');

    d.controller.insertMedia(0, iso);
    checkCondition(d, tur(d), 6);
    assert.deepEqual(requestSense(d), [6, 0x28, 0], 'the UNIT ATTENTION that TEST UNIT READY reported');
    assert.ok(succeeded(tur(d)));

    // PREVENT, then eject: refused. ALLOW, eject, load again.
    assert.ok(succeeded(d.packet(0, [0x1e, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0])));
    checkCondition(d, d.packet(0, [0x1b, 0, 0, 0, 0x02, 0, 0, 0, 0, 0, 0, 0]), 5);
    assert.deepEqual(requestSense(d), [5, 0x53, 0x02], 'medium removal prevented');
    assert.ok(succeeded(d.packet(0, [0x1e, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])));
    assert.ok(succeeded(d.packet(0, [0x1b, 0, 0, 0, 0x02, 0, 0, 0, 0, 0, 0, 0])), 'eject');
    checkCondition(d, tur(d), 2);
    assert.ok(succeeded(d.packet(0, [0x1b, 0, 0, 0, 0x03, 0, 0, 0, 0, 0, 0, 0])), 'load');
    checkCondition(d, tur(d), 6);
    assert.ok(succeeded(tur(d)));
    // MECHANISM STATUS: tray closed.
    assert.ok(succeeded(d.packet(0, [0xbd, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0], 8)));
    assert.equal(d.data(8)[1] & 0x10, 0);

    assert.throws(() => d.controller.insertMedia(0, join(tmp, 'a.iso.d', 'boot.img')), /not an ISO 9660 image/);
    assert.equal(d.controller.mediaPath(0), iso, 'a refused image changes nothing');
    assert.throws(() => d.controller.insertMedia(1, iso), /no CD-ROM drive/);
  } finally {
    d.close();
  }
});

test('atapi: INQUIRY, MODE SENSE 2Ah, GET CONFIGURATION, READ DISC INFORMATION, SET CD SPEED; PIO packets', () => {
  const d = cdrom(iso);
  try {
    const inq = d.packet(0, [0x12, 0, 0, 0, 36, 0, 0, 0, 0, 0, 0, 0], 36, false);
    assert.ok(succeeded(inq) && inq.is & IS_DHRS, 'a PIO packet command ends with a D2H FIS');
    const q = d.data(36);
    assert.equal(q[0] & 0x1f, 5, 'peripheral device type 5 (CD/DVD)');
    assert.ok(q[1] & 0x80, 'removable');
    assert.equal(q.toString('latin1', 8, 16), 'PARTITA ');
    const ms = d.packet(0, [0x5a, 0, 0x2a, 0, 0, 0, 0, 0, 64, 0, 0, 0], 64);
    assert.ok(succeeded(ms));
    const m = d.data(30);
    assert.equal(m.readUInt16BE(0), 8 + 22 - 2, 'mode data length');
    assert.deepEqual([m[8], m[9]], [0x2a, 20], 'capabilities page');
    assert.ok(m[8 + 6] & 0x08, 'eject supported');
    const ms6 = d.packet(0, [0x1a, 0, 0x3f, 0, 255, 0, 0, 0, 0, 0, 0, 0], 255);
    assert.ok(succeeded(ms6) && ms6.transferred === 4 + 8 + 22, 'MODE SENSE(6), all pages');
    checkCondition(d, d.packet(0, [0x5a, 0, 0x05, 0, 0, 0, 0, 0, 64, 0, 0, 0], 64), 5);

    const gc = d.packet(0, [0x46, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0], 256);
    assert.ok(succeeded(gc));
    const g = d.data(gc.transferred);
    assert.equal(g.readUInt16BE(6), 0x0008, 'current profile: CD-ROM');
    assert.equal(g.readUInt32BE(0), gc.transferred - 4);
    assert.equal(g.readUInt16BE(8), 0x0000, 'first feature: the profile list');
    const one = d.packet(0, [0x46, 2, 0, 0x03, 0, 0, 0, 1, 0, 0, 0, 0], 256);
    assert.ok(succeeded(one) && one.transferred === 8 + 8, 'RT 2: just the removable medium feature');
    assert.equal(d.data(16).readUInt16BE(8), 0x0003);

    const di = d.packet(0, [0x51, 0, 0, 0, 0, 0, 0, 0, 34, 0, 0, 0], 34);
    assert.ok(succeeded(di) && d.data(34).readUInt16BE(0) === 32);
    assert.ok(succeeded(d.packet(0, [0xbb, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0])), 'SET CD SPEED');
    checkCondition(d, d.packet(0, [0x12, 1, 0x80, 0, 36, 0, 0, 0, 0, 0, 0, 0], 36), 5); // no VPD pages

    // A read through PIO: a PIO Setup FIS opens the data phase and the D2H FIS ends it.
    const pio = d.packet(0, [0x28, 0, 0, 0, 0, 16, 0, 0, 1, 0, 0, 0], 2048, false);
    assert.ok(pio.is & IS_PSS && pio.is & IS_DHRS);
    assert.equal(d.memory.readU8(fbOf(0) + 0x40 + 2) & 0x01, 0, 'D2H: no error');
    assert.equal(d.data(2048).toString('latin1', 1, 6), 'CD001');
  } finally {
    d.close();
  }
});

test('atapi: an empty drive, and save/restore keeps the disc and the pending sense', () => {
  const empty = cdrom();
  try {
    checkCondition(empty, tur(empty), 2);
    assert.deepEqual(requestSense(empty), [2, 0x3a, 0x01], 'no medium, tray closed');
    const g = empty.packet(0, [0x46, 1, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0], 8);
    assert.ok(succeeded(g));
    assert.equal(empty.data(8).readUInt16BE(6), 0, 'no current profile');

    empty.controller.insertMedia(0, iso2);
    const snapshot = JSON.parse(JSON.stringify(empty.controller.saveState()));
    const restored = new AhciTestDriver({ kind: 'ahci', drives: [{ type: 'cdrom' }] });
    try {
      restored.memory.slice(0, 4 << 20).set(empty.memory.slice(0, 4 << 20));
      restored.controller.restoreState(snapshot);
      assert.equal(restored.controller.mediaPath(0), iso2, 'the disc is loaded again');
      for (const r of [empty, restored]) {
        checkCondition(r, tur(r), 6);
        assert.deepEqual(requestSense(r), [6, 0x28, 0]);
        assert.ok(succeeded(r.packet(0, [0x28, 0, 0, 0, 0, 16, 0, 0, 1, 0, 0, 0], 2048)));
        assert.equal(r.data(2048).toString('latin1', 40, 49), 'PARTITA_B');
      }
      const bad = {
        ...snapshot,
        data: { ...snapshot.data, media: [join(tmp, 'missing.iso'), null, null, null, null, null] },
      };
      assert.throws(() => restored.controller.restoreState(bad), DeviceStateError);
      assert.equal(restored.controller.mediaPath(0), iso2, 'a refused snapshot changes nothing');
    } finally {
      restored.close();
    }
    assert.equal(empty.portRead(0, PX_SSTS), SSTS_LINKED);
  } finally {
    empty.close();
  }
});

test('atapi: DVD media (above a CD’s size) report the DVD-ROM profile and answer READ DISC STRUCTURE', () => {
  // A sparse image of 4.7 GB whose sector 16 holds a primary volume descriptor: an ISO as far as the drive cares.
  const path = join(tmp, 'dvd.iso');
  const fd = openSync(path, 'w');
  const pvd = Buffer.alloc(2048);
  pvd[0] = 1;
  pvd.write('CD001', 1, 'latin1');
  pvd[6] = 1;
  pvd.write('PARTITA_DVD', 40, 'latin1');
  writeSync(fd, pvd, 0, 2048, 16 * 2048);
  const term = Buffer.alloc(2048);
  term[0] = 255;
  term.write('CD001', 1, 'latin1');
  writeSync(fd, term, 0, 2048, 17 * 2048);
  ftruncateSync(fd, 2_295_104 * 2048);
  closeSync(fd);
  const d = cdrom(path);
  try {
    assert.ok(succeeded(d.packet(0, [0x46, 1, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0], 8)));
    assert.equal(d.data(8).readUInt16BE(6), 0x0010, 'current profile: DVD-ROM');
    const phys = d.packet(0, [0xad, 0, 0, 0, 0, 0, 0, 0x00, 0x08, 0x04, 0, 0], 2052);
    assert.ok(succeeded(phys) && phys.transferred === 2052);
    const p = d.data(20);
    assert.equal(p.readUInt16BE(0), 2050);
    assert.equal(p[4], 0x01, 'DVD-ROM book');
    assert.equal(p.readUInt32BE(12) - p.readUInt32BE(8), 2_295_104 - 1, 'data area');
    assert.ok(succeeded(d.packet(0, [0xad, 0, 0, 0, 0, 0, 0, 0x01, 0, 8, 0, 0], 8)), 'copyright');
    assert.equal(d.data(8)[4], 0, 'no protection');
    checkCondition(d, d.packet(0, [0xad, 0, 0, 0, 0, 0, 0, 0x30, 0, 8, 0, 0], 8), 5);
  } finally {
    d.close();
  }
  const cd = cdrom(iso);
  try {
    checkCondition(cd, cd.packet(0, [0xad, 0, 0, 0, 0, 0, 0, 0, 0x08, 0x04, 0, 0], 2052), 5);
    assert.deepEqual(requestSense(cd), [5, 0x30, 0x02], 'a CD has no DVD structures');
  } finally {
    cd.close();
  }
});
