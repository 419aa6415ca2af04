// virtio-blk (virtio 1.2 §5.2) over a temporary raw image and a fake guest driver: requests as Linux's driver sends
// them, hostile ones, resets with I/O in flight, multi-queue, and the image lock that keeps two VMs off one disk.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { native } from '../../src/native/index.js';
import { GuestMemory } from '../../src/base/guest-memory.js';
import { MIB } from '../../src/base/units.js';
import type { VirtioQueueContext } from '../../src/devices/virtio/device.js';
import { DeviceOpenError } from '../../src/devices/model.js';
import { SplitQueue } from '../../src/devices/virtio/queue.js';
import {
  BLOCK_CONFIG_SIZE,
  BLOCK_INFLIGHT_BUFFERS,
  BLOCK_INFLIGHT_BYTES,
  BLOCK_TURN_CHAINS,
  MAX_DISCARD_SECTORS,
  MAX_DISCARD_SEGMENTS,
  openBlock,
  VirtioBlock,
  VIRTIO_BLK_F_BLK_SIZE,
  VIRTIO_BLK_F_DISCARD,
  VIRTIO_BLK_F_FLUSH,
  VIRTIO_BLK_F_MQ,
  VIRTIO_BLK_F_RO,
  VIRTIO_BLK_F_SEG_MAX,
  VIRTIO_BLK_F_WRITE_ZEROES,
  VIRTIO_BLK_S_IOERR,
  VIRTIO_BLK_S_OK,
  VIRTIO_BLK_S_UNSUPP,
  VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_WRITE_ZEROES,
  type BlockHandle,
  type BlockOptions,
} from '../../src/devices/virtio/block.js';
import { FakeDriver, FakePackedDriver, type DriverBuffer, type UsedElement } from '../support/virtq-driver.js';
import { PackedQueue } from '../../src/devices/virtio/packed-queue.js';

const memory = GuestMemory.allocateRanges([{ gpa: 0, size: 128 * MIB }]);
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'partita-blk-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));

const SECTORS = 2048; // 1 MiB images
const QUEUE_SIZE = 128;

/** Every byte of a test image says which sector it is in and where: a misplaced read cannot go unnoticed. */
const patternAt = (offset: number): number => ((offset >> 9) * 31 + (offset & 511) * 7 + 1) & 0xff;

let images = 0;
function image(sectors = SECTORS, size = sectors * 512): string {
  const p = path.join(dir, `disk${images++}.img`);
  const bytes = new Uint8Array(size);
  for (let i = 0; i < size; i++) bytes[i] = patternAt(i);
  fs.writeFileSync(p, bytes);
  return p;
}

const fileBytes = (p: string, offset: number, length: number): Uint8Array =>
  new Uint8Array(fs.readFileSync(p).subarray(offset, offset + length));
const expected = (offset: number, length: number): Uint8Array =>
  Uint8Array.from({ length }, (_, i) => patternAt(offset + i));

let nextArea = 0x10000;
function area(): number {
  const base = nextArea;
  nextArea += 2 * MIB;
  assert.ok(nextArea <= 128 * MIB, 'test guest RAM exhausted');
  return base;
}

interface Rig {
  readonly block: VirtioBlock;
  readonly handle: BlockHandle;
  readonly drivers: FakeDriver[];
  /** The device's side of the drivers' queues (what a runner would have built). */
  readonly queues: SplitQueue[];
  readonly resets: string[];
  readonly interrupts: number[];
  activate(features?: bigint): void;
}

function rig(options: Partial<BlockOptions> & { path: string }, drivers = options.queues ?? 1): Rig {
  const handle = openBlock({ queueSize: QUEUE_SIZE, ...options });
  const block = new VirtioBlock(handle);
  const resets: string[] = [];
  const interrupts: number[] = [];
  const list: FakeDriver[] = [];
  const built: SplitQueue[] = [];
  const r: Rig = {
    block,
    handle,
    drivers: list,
    queues: built,
    resets,
    interrupts,
    activate(features = block.info.features) {
      list.length = 0;
      for (let i = 0; i < drivers; i++) list.push(FakeDriver.at(memory, QUEUE_SIZE, area(), MIB + 256 * 1024));
      const queues = list.map((d) => {
        const q = SplitQueue.create(memory, d.config({ indirect: true }));
        if (!(q instanceof SplitQueue)) throw q;
        return q;
      });
      built.splice(0, built.length, ...queues);
      const ctx: VirtioQueueContext = {
        memory,
        queues,
        features,
        interrupt: (q) => void interrupts.push(q),
        needsReset: (reason) => {
          // What the runner does: the backend is reset at once.
          resets.push(reason);
          block.reset();
        },
      };
      block.activate(ctx);
    },
  };
  r.activate();
  return r;
}

function header(type: number, sector: number | bigint): Uint8Array {
  const b = new Uint8Array(16);
  const v = new DataView(b.buffer);
  v.setUint32(0, type, true);
  v.setBigUint64(8, BigInt(sector), true);
  return b;
}

function segment(sector: number | bigint, sectors: number, flags = 0): Uint8Array {
  const b = new Uint8Array(16);
  const v = new DataView(b.buffer);
  v.setBigUint64(0, BigInt(sector), true);
  v.setUint32(8, sectors, true);
  v.setUint32(12, flags, true);
  return b;
}

type Parts = { out?: Uint8Array[]; in?: number[]; indirect?: boolean };

interface Sent {
  readonly head: number;
  readonly status: number;
  /** Guest addresses of the writable data buffers, in order. */
  readonly data: readonly { gpa: number; len: number }[];
}

/**
 * Makes a request available the way Linux does: header (readable), OUT data or discard segments (readable), IN
 * data (writable, pre-filled with 0xee), status byte (writable, pre-set to 0xff so "not written" is visible).
 */
function send(d: FakeDriver, type: number, sector: number | bigint, parts: Parts = {}): Sent {
  const buffers: DriverBuffer[] = [{ len: 16, data: header(type, sector) }];
  for (const data of parts.out ?? []) buffers.push({ len: data.length, data });
  const data = (parts.in ?? []).map((len) => {
    const gpa = d.alloc(len);
    memory.fill(gpa, len, 0xee);
    return { gpa, len };
  });
  for (const b of data) buffers.push({ len: b.len, writable: true, gpa: b.gpa });
  const status = d.alloc(1);
  memory.writeU8(status, 0xff);
  buffers.push({ len: 1, writable: true, gpa: status });
  const head = d.addChain(buffers, { indirect: parts.indirect });
  return { head, status, data };
}

const tick = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/** Waits (bounded) until the device used `n` more chains; async I/O completes in later event-loop turns. */
async function used(d: FakeDriver, n = 1, ms = 60_000): Promise<UsedElement[]> {
  const out: UsedElement[] = [];
  const deadline = Date.now() + ms;
  for (;;) {
    out.push(...d.takeUsed());
    if (out.length >= n) return out;
    if (Date.now() > deadline) assert.fail(`the device used ${out.length} of ${n} chains within ${ms} ms`);
    await tick();
  }
}

/** Lets `ms` of event-loop turns pass (thread-pool I/O finishes meanwhile) and returns what was used. */
async function quiet(d: FakeDriver, ms = 250): Promise<UsedElement[]> {
  const end = Date.now() + ms;
  while (Date.now() < end) await new Promise((resolve) => setTimeout(resolve, 5));
  return d.takeUsed();
}

/** One request, served and completed: its used element and status byte. */
async function roundTrip(
  r: Rig,
  type: number,
  sector: number | bigint,
  parts: Parts = {},
  queue = 0,
): Promise<{ sent: Sent; usedLen: number; status: number }> {
  const d = r.drivers[queue];
  const sent = send(d, type, sector, parts);
  r.block.queueNotified(queue);
  const [u] = await used(d);
  assert.equal(u.id, sent.head);
  return { sent, usedLen: u.len, status: memory.readU8(sent.status) };
}

const readData = (sent: Sent): Uint8Array => {
  const parts = sent.data.map((b) => memory.read(b.gpa, b.len));
  return Uint8Array.from(parts.flatMap((p) => [...p]));
};

function opens(options: BlockOptions, message: RegExp): void {
  assert.throws(
    () => openBlock(options),
    (e: unknown) => e instanceof DeviceOpenError && message.test(e.message),
  );
}

test('openBlock: clear errors for missing, directory, empty, misaligned images and bad options', async (t) => {
  opens({ path: path.join(dir, 'nope.img') }, /disk image '.*nope\.img' does not exist/);
  opens({ path: dir }, /is a directory/);
  opens({ path: dir, readOnly: true }, /is a directory/);
  const empty = path.join(dir, 'empty.img');
  fs.writeFileSync(empty, '');
  opens({ path: empty }, /is empty/);
  const odd = image(1, 1000);
  opens({ path: odd }, /is 1000 bytes, not a multiple of the 512-byte sector size/);
  const ok = image(8);
  opens({ path: ok, serial: 'x'.repeat(21) }, /serial 'x{21}' is 21 bytes; at most 20/);
  opens({ path: ok, serial: 'é'.repeat(11) }, /is 22 bytes/);
  opens({ path: ok, queues: 0 }, /queues must be 1\.\.16, not 0/);
  opens({ path: ok, queues: 17 }, /queues must be 1\.\.16/);
  opens({ path: ok, queueSize: 100 }, /power of two/);
  opens({ path: '/dev/null' }, /not a regular file or a block device/);
  // The failed opens above must not have left the image locked.
  const h = openBlock({ path: ok, serial: 'x'.repeat(20) });
  assert.equal(h.capacity, 8);
  new VirtioBlock(h).close();
  await t.test(
    'a read-only image: permission denied for read-write, a read-only open works',
    { skip: process.getuid?.() === 0 && 'SKIPPED: running as root, which may write any file' },
    () => {
      fs.chmodSync(ok, 0o444);
      opens({ path: ok }, /permission denied for read-write/);
      new VirtioBlock(openBlock({ path: ok, readOnly: true })).close();
    },
  );
});

test('image lock: a second writer and a reader fail while a VM writes it; readers share; closing releases', () => {
  const p = image(8);
  const first = new VirtioBlock(openBlock({ path: p }));
  opens({ path: p }, new RegExp(`disk image '${p}' is in use by another VM \\(it is locked\\)`));
  opens({ path: p, readOnly: true }, /is in use by another VM/);
  first.close();
  const reader1 = new VirtioBlock(openBlock({ path: p, readOnly: true }));
  const reader2 = new VirtioBlock(openBlock({ path: p, readOnly: true }));
  opens({ path: p }, /is in use by another VM/);
  reader1.close();
  opens({ path: p }, /is in use by another VM/);
  reader2.close();
  new VirtioBlock(openBlock({ path: p })).close();
});

test('device info and config space (§5.2.4): capacity, seg_max, blk_size, num_queues, discard limits', () => {
  const p = image();
  const rw = new VirtioBlock(openBlock({ path: p, queueSize: 256 }));
  assert.equal(rw.info.deviceType, 2);
  assert.equal(rw.info.classCode, 0x010000);
  assert.deepEqual(rw.info.queueSizes, [256]);
  assert.equal(rw.info.configSize, 60);
  const bit = (b: bigint): boolean => ((rw.info.features >> b) & 1n) === 1n;
  for (const b of [VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH]) assert.ok(bit(b), `bit ${b}`);
  assert.ok(bit(VIRTIO_BLK_F_DISCARD) && bit(VIRTIO_BLK_F_WRITE_ZEROES));
  assert.ok(!bit(VIRTIO_BLK_F_RO) && !bit(VIRTIO_BLK_F_MQ));
  assert.equal(rw.info.features >> 15n, 0n, 'nothing above WRITE_ZEROES offered');
  const c = rw.configBytes();
  assert.equal(c.length, BLOCK_CONFIG_SIZE);
  const v = new DataView(c.buffer, c.byteOffset);
  assert.equal(v.getBigUint64(0, true), BigInt(SECTORS), 'capacity');
  assert.equal(v.getUint32(12, true), 254, 'seg_max');
  assert.equal(v.getUint32(20, true), 512, 'blk_size');
  assert.equal(v.getUint16(34, true), 1, 'num_queues');
  assert.equal(v.getUint32(36, true), MAX_DISCARD_SECTORS, 'max_discard_sectors');
  assert.equal(v.getUint32(40, true), MAX_DISCARD_SEGMENTS, 'max_discard_seg');
  assert.equal(v.getUint32(48, true), MAX_DISCARD_SECTORS, 'max_write_zeroes_sectors');
  assert.equal(v.getUint32(52, true), MAX_DISCARD_SEGMENTS, 'max_write_zeroes_seg');
  rw.close();

  const ro = new VirtioBlock(openBlock({ path: p, readOnly: true, queues: 4, queueSize: 64 }));
  const roBit = (b: bigint): boolean => ((ro.info.features >> b) & 1n) === 1n;
  assert.ok(roBit(VIRTIO_BLK_F_RO) && roBit(VIRTIO_BLK_F_MQ));
  assert.ok(!roBit(VIRTIO_BLK_F_DISCARD) && !roBit(VIRTIO_BLK_F_WRITE_ZEROES), 'no discard on a read-only disk');
  assert.deepEqual(ro.info.queueSizes, [64, 64, 64, 64]);
  const rc = new DataView(ro.configBytes().buffer);
  assert.equal(rc.getUint16(34, true), 4, 'num_queues');
  assert.equal(rc.getUint32(12, true), 62, 'seg_max');
  assert.equal(rc.getUint32(36, true), 0, 'no discard limits when discard is not offered');
  ro.close();
});

test('read sector 0, and a scattered read through an indirect table', async () => {
  const p = image();
  const r = rig({ path: p });
  const d = r.drivers[0];
  const one = await roundTrip(r, VIRTIO_BLK_T_IN, 0, { in: [512] });
  assert.equal(one.status, VIRTIO_BLK_S_OK);
  assert.equal(one.usedLen, 513, 'data and status byte written');
  assert.deepEqual(readData(one.sent), expected(0, 512));
  // 4 KiB at sector 100 in odd-sized pieces: one preadv across guest buffers.
  const sc = await roundTrip(r, VIRTIO_BLK_T_IN, 100, { in: [512, 1536, 100, 1948], indirect: true });
  assert.equal(sc.status, VIRTIO_BLK_S_OK);
  assert.deepEqual(readData(sc.sent), expected(100 * 512, 4096));
  assert.ok(r.interrupts.length > 0 && r.interrupts.every((q) => q === 0), 'queue 0 interrupted');
  assert.deepEqual(r.resets, []);
  d.resetHeap();
  r.block.close();
});

test('write then read back; the file holds the bytes and nothing else changed', async () => {
  const p = image();
  const r = rig({ path: p });
  const data = Uint8Array.from({ length: 8192 }, (_, i) => (i * 13 + 5) & 0xff);
  const w = await roundTrip(r, VIRTIO_BLK_T_OUT, 7, { out: [data.subarray(0, 1000), data.subarray(1000)] });
  assert.equal(w.status, VIRTIO_BLK_S_OK);
  assert.equal(w.usedLen, 1, 'only the status byte is written');
  assert.deepEqual(fileBytes(p, 7 * 512, 8192), data);
  assert.deepEqual(fileBytes(p, 0, 7 * 512), expected(0, 7 * 512), 'before the write: untouched');
  assert.deepEqual(fileBytes(p, 23 * 512, 512), expected(23 * 512, 512), 'after the write: untouched');
  const back = await roundTrip(r, VIRTIO_BLK_T_IN, 7, { in: [8192] });
  assert.deepEqual(readData(back.sent), data);
  const f = await roundTrip(r, VIRTIO_BLK_T_FLUSH, 0);
  assert.equal(f.status, VIRTIO_BLK_S_OK);
  assert.equal(fs.statSync(p).size, SECTORS * 512, 'the image keeps its size');
  r.block.close();
});

test('more than IOV_MAX guest buffers: the transfer continues where the short preadv/pwritev stopped', async () => {
  const p = image();
  const r = rig({ path: p });
  const pieces = Array.from({ length: 1100 }, () => 512);
  const rd = await roundTrip(r, VIRTIO_BLK_T_IN, 3, { in: pieces, indirect: true });
  assert.equal(rd.status, VIRTIO_BLK_S_OK);
  assert.deepEqual(readData(rd.sent), expected(3 * 512, 1100 * 512));
  r.drivers[0].resetHeap();
  const out = Array.from({ length: 1100 }, (_, i) => new Uint8Array(512).fill(i & 0xff));
  const wr = await roundTrip(r, VIRTIO_BLK_T_OUT, 900, { out, indirect: true });
  assert.equal(wr.status, VIRTIO_BLK_S_OK);
  const file = fileBytes(p, 900 * 512, 1100 * 512);
  for (let i = 0; i < 1100; i++) assert.equal(file[i * 512 + 511], i & 0xff, `sector ${900 + i}`);
  r.block.close();
});

test('many requests in flight on one queue all complete, each with its own data', async () => {
  const p = image();
  const r = rig({ path: p });
  const d = r.drivers[0];
  const sent = Array.from({ length: 32 }, (_, i) => send(d, VIRTIO_BLK_T_IN, i * 61, { in: [2048] }));
  r.block.queueNotified(0);
  const u = await used(d, 32);
  assert.deepEqual(new Set(u.map((e) => e.id)), new Set(sent.map((s) => s.head)));
  sent.forEach((s, i) => {
    assert.equal(memory.readU8(s.status), VIRTIO_BLK_S_OK);
    assert.deepEqual(readData(s), expected(i * 61 * 512, 2048), `request ${i}`);
  });
  r.block.close();
});

test('adjacent requests (merged into one transfer) each get their own data and status', async () => {
  const p = image();
  const r = rig({ path: p });
  const d = r.drivers[0];
  const writes = Array.from({ length: 16 }, (_, i) =>
    send(d, VIRTIO_BLK_T_OUT, 64 + 8 * i, { out: [new Uint8Array(4096).fill(i + 1)] }),
  );
  r.block.queueNotified(0);
  await used(d, 16);
  for (const w of writes) assert.equal(memory.readU8(w.status), VIRTIO_BLK_S_OK);
  const file = fileBytes(p, 64 * 512, 16 * 4096);
  for (let i = 0; i < 16; i++)
    assert.ok(
      file.subarray(i * 4096, (i + 1) * 4096).every((b) => b === i + 1),
      `${i}`,
    );
  assert.deepEqual(fileBytes(p, 63 * 512, 512), expected(63 * 512, 512));
  assert.deepEqual(fileBytes(p, (64 + 128) * 512, 512), expected((64 + 128) * 512, 512));
  d.resetHeap();
  const reads = Array.from({ length: 16 }, (_, i) => send(d, VIRTIO_BLK_T_IN, 64 + 8 * i, { in: [4096] }));
  r.block.queueNotified(0);
  await used(d, 16);
  reads.forEach((s, i) =>
    assert.ok(
      readData(s).every((b) => b === i + 1),
      `read ${i}`,
    ),
  );
  d.resetHeap();

  // The image shrinks under the device (someone truncated it): a merged read that runs into the new end fails
  // and is redone request by request, so only the request past the end reports an error.
  fs.truncateSync(p, 8 * 4096);
  const [inside, past] = [send(d, VIRTIO_BLK_T_IN, 56, { in: [4096] }), send(d, VIRTIO_BLK_T_IN, 64, { in: [4096] })];
  r.block.queueNotified(0);
  await used(d, 2);
  assert.equal(memory.readU8(inside.status), VIRTIO_BLK_S_OK);
  assert.deepEqual(readData(inside), expected(56 * 512, 4096));
  assert.equal(memory.readU8(past.status), VIRTIO_BLK_S_IOERR);
  r.block.close();
});

test('GET_ID answers the serial, NUL-padded to 20 bytes, cut to a shorter buffer', async () => {
  const r = rig({ path: image(), serial: 'PARTITA-0001' });
  const id = await roundTrip(r, VIRTIO_BLK_T_GET_ID, 0, { in: [20] });
  assert.equal(id.status, VIRTIO_BLK_S_OK);
  const want = new Uint8Array(20);
  want.set(Buffer.from('PARTITA-0001'));
  assert.deepEqual(readData(id.sent), want);
  const short = await roundTrip(r, VIRTIO_BLK_T_GET_ID, 0, { in: [4] });
  assert.equal(short.status, VIRTIO_BLK_S_OK);
  assert.deepEqual(readData(short.sent), Uint8Array.from(Buffer.from('PART')));
  r.block.close();
});

test('discard and write-zeroes zero their ranges; bad segments are rejected before anything is touched', async () => {
  const p = image();
  const r = rig({ path: p });
  const before = fs.readFileSync(p);
  const bad: [Uint8Array[], number, string][] = [
    [[segment(10, 4, 1)], VIRTIO_BLK_S_UNSUPP, 'UNMAP on a discard'],
    [[segment(10, 4, 2)], VIRTIO_BLK_S_UNSUPP, 'an unknown flag'],
    [[segment(SECTORS - 2, 4)], VIRTIO_BLK_S_IOERR, 'past the end'],
    [[segment(2n ** 64n - 1n, 2)], VIRTIO_BLK_S_IOERR, 'a sector wrapping 2^64'],
    [[segment(0, MAX_DISCARD_SECTORS + 1)], VIRTIO_BLK_S_IOERR, 'more than max_discard_sectors'],
    [Array.from({ length: MAX_DISCARD_SEGMENTS + 1 }, (_, i) => segment(i, 1)), VIRTIO_BLK_S_IOERR, 'too many'],
    [[new Uint8Array(8)], VIRTIO_BLK_S_IOERR, 'a torn segment'],
    [[], VIRTIO_BLK_S_IOERR, 'no segment'],
    [[segment(1, 1), segment(SECTORS, 1)], VIRTIO_BLK_S_IOERR, 'a good segment then a bad one'],
  ];
  for (const [segs, status, what] of bad) {
    const res = await roundTrip(r, VIRTIO_BLK_T_DISCARD, 0, { out: segs });
    assert.equal(res.status, status, what);
  }
  assert.deepEqual(fs.readFileSync(p), before, 'rejected requests changed nothing');

  const disc = await roundTrip(r, VIRTIO_BLK_T_DISCARD, 0, { out: [segment(10, 4), segment(40, 1)] });
  assert.equal(disc.status, VIRTIO_BLK_S_OK);
  const wz = await roundTrip(r, VIRTIO_BLK_T_WRITE_ZEROES, 0, { out: [segment(100, SECTORS - 100 + 1, 1)] });
  assert.equal(wz.status, VIRTIO_BLK_S_IOERR, 'one sector past the end');
  const wz2 = await roundTrip(r, VIRTIO_BLK_T_WRITE_ZEROES, 0, { out: [segment(100, SECTORS - 100, 1)] });
  assert.equal(wz2.status, VIRTIO_BLK_S_OK, 'to the last sector, with UNMAP');
  const after = fs.readFileSync(p);
  const zero = (from: number, sectors: number): void =>
    assert.ok(
      after.subarray(from * 512, (from + sectors) * 512).every((b) => b === 0),
      `sectors ${from}+${sectors} are zero`,
    );
  zero(10, 4);
  zero(40, 1);
  zero(100, 1948);
  assert.deepEqual(new Uint8Array(after.subarray(0, 10 * 512)), expected(0, 10 * 512));
  assert.deepEqual(new Uint8Array(after.subarray(14 * 512, 40 * 512)), expected(14 * 512, 26 * 512));
  assert.deepEqual(new Uint8Array(after.subarray(41 * 512, 100 * 512)), expected(41 * 512, 59 * 512));
  r.block.close();
});

test('with a native fallocate: discard punches a hole, write-zeroes zeroes a range, EOPNOTSUPP falls back', async () => {
  type Fallocate = (fd: number, mode: number, offset: number, length: number) => number;
  const slot = native as unknown as { fallocate?: Fallocate };
  const original = slot.fallocate; // a native layer that has it gets it back afterwards
  const calls: [number, number, number][] = [];
  let answer = 0;
  slot.fallocate = (fd, mode, offset, length) => {
    calls.push([mode, offset, length]);
    if (answer === 0) fs.writeSync(fd, new Uint8Array(length), 0, length, offset); // what the kernel would do
    return answer;
  };
  try {
    const p = image();
    const r = rig({ path: p });
    assert.equal(r.block.configBytes()[56], 1, 'write_zeroes_may_unmap');
    assert.equal((await roundTrip(r, VIRTIO_BLK_T_DISCARD, 0, { out: [segment(8, 8)] })).status, VIRTIO_BLK_S_OK);
    const wz = await roundTrip(r, VIRTIO_BLK_T_WRITE_ZEROES, 0, { out: [segment(32, 2), segment(64, 1, 1)] });
    assert.equal(wz.status, VIRTIO_BLK_S_OK);
    assert.deepEqual(calls, [
      [0x03, 8 * 512, 8 * 512], // PUNCH_HOLE | KEEP_SIZE
      [0x11, 32 * 512, 2 * 512], // ZERO_RANGE | KEEP_SIZE
      [0x03, 64 * 512, 512], // UNMAP: PUNCH_HOLE | KEEP_SIZE
    ]);
    answer = -95; // EOPNOTSUPP: the file system cannot; zeros are written instead
    assert.equal((await roundTrip(r, VIRTIO_BLK_T_DISCARD, 0, { out: [segment(200, 3)] })).status, VIRTIO_BLK_S_OK);
    assert.ok(fileBytes(p, 200 * 512, 3 * 512).every((b) => b === 0));
    answer = -5; // EIO
    assert.equal((await roundTrip(r, VIRTIO_BLK_T_DISCARD, 0, { out: [segment(300, 3)] })).status, VIRTIO_BLK_S_IOERR);
    assert.deepEqual(fileBytes(p, 300 * 512, 3 * 512), expected(300 * 512, 3 * 512));
    r.block.close();
  } finally {
    if (original) slot.fallocate = original;
    else delete slot.fallocate;
  }
  const plain = new VirtioBlock(openBlock({ path: image(8) }));
  assert.equal(plain.configBytes()[56], original ? 1 : 0, 'write_zeroes_may_unmap only with fallocate');
  plain.close();
});

test('read-only disk: writes get IOERR and change nothing; discard is UNSUPP; reads and flush work', async () => {
  const p = image();
  const r = rig({ path: p, readOnly: true });
  const before = fs.readFileSync(p);
  const w = await roundTrip(r, VIRTIO_BLK_T_OUT, 0, { out: [new Uint8Array(512).fill(9)] });
  assert.equal(w.status, VIRTIO_BLK_S_IOERR);
  assert.equal((await roundTrip(r, VIRTIO_BLK_T_DISCARD, 0, { out: [segment(0, 1)] })).status, VIRTIO_BLK_S_UNSUPP);
  const wz = await roundTrip(r, VIRTIO_BLK_T_WRITE_ZEROES, 0, { out: [segment(0, 1)] });
  assert.equal(wz.status, VIRTIO_BLK_S_UNSUPP);
  assert.deepEqual(fs.readFileSync(p), before);
  const rd = await roundTrip(r, VIRTIO_BLK_T_IN, 1, { in: [512] });
  assert.equal(rd.status, VIRTIO_BLK_S_OK);
  assert.deepEqual(readData(rd.sent), expected(512, 512));
  assert.equal((await roundTrip(r, VIRTIO_BLK_T_FLUSH, 0)).status, VIRTIO_BLK_S_OK);
  r.block.close();
});

test('out-of-range and malformed data requests get IOERR and leave the file alone; unknown types UNSUPP', async () => {
  const p = image();
  const r = rig({ path: p });
  const before = fs.readFileSync(p);
  const sector = new Uint8Array(512).fill(0x5a);
  const cases: [number, number | bigint, Parts, number, string][] = [
    [VIRTIO_BLK_T_IN, SECTORS, { in: [512] }, VIRTIO_BLK_S_IOERR, 'read at capacity'],
    [VIRTIO_BLK_T_IN, SECTORS - 1, { in: [1024] }, VIRTIO_BLK_S_IOERR, 'read over the end'],
    [VIRTIO_BLK_T_OUT, SECTORS, { out: [sector] }, VIRTIO_BLK_S_IOERR, 'write at capacity'],
    [VIRTIO_BLK_T_OUT, SECTORS - 1, { out: [sector, sector] }, VIRTIO_BLK_S_IOERR, 'write over the end'],
    [VIRTIO_BLK_T_OUT, 2n ** 64n - 1n, { out: [sector] }, VIRTIO_BLK_S_IOERR, 'sector 2^64 - 1'],
    [VIRTIO_BLK_T_OUT, 2n ** 55n, { out: [sector] }, VIRTIO_BLK_S_IOERR, 'a sector beyond 2^53 bytes'],
    [VIRTIO_BLK_T_OUT, 0, { out: [sector.subarray(0, 100)] }, VIRTIO_BLK_S_IOERR, 'write of 100 bytes'],
    [VIRTIO_BLK_T_IN, 0, { in: [700] }, VIRTIO_BLK_S_IOERR, 'read of 700 bytes'],
    [99, 0, { in: [512] }, VIRTIO_BLK_S_UNSUPP, 'unknown type'],
    [10, 0, { in: [512] }, VIRTIO_BLK_S_UNSUPP, 'GET_LIFETIME (not offered)'],
  ];
  for (const [type, at, parts, status, what] of cases) {
    const res = await roundTrip(r, type, at, parts);
    assert.equal(res.status, status, what);
    if (parts.in)
      assert.ok(
        readData(res.sent).every((b) => b === 0xee),
        `${what}: no data written to the guest`,
      );
  }
  const empty = await roundTrip(r, VIRTIO_BLK_T_IN, SECTORS, {});
  assert.equal(empty.status, VIRTIO_BLK_S_OK, 'a zero-length read at the end is in range');
  assert.deepEqual(fs.readFileSync(p), before);
  assert.deepEqual(r.resets, []);
  r.block.close();
});

test('chains that are not requests (short header, no status byte) need a reset and never touch the file', async () => {
  const p = image();
  const before = fs.readFileSync(p);
  const write = header(VIRTIO_BLK_T_OUT, 0);
  const shapes: [DriverBuffer[], RegExp][] = [
    [
      [
        { len: 8, data: write.subarray(0, 8) },
        { len: 1, writable: true },
      ],
      /8-byte header; 16 needed/,
    ],
    [
      [
        { len: 16, data: write },
        { len: 512, data: new Uint8Array(512) },
      ],
      /no device-writable status byte/,
    ],
    [
      [
        { len: 16, data: write },
        { len: 512, data: new Uint8Array(512) },
        { len: 1, data: new Uint8Array(1) },
      ],
      /no device-writable status byte/,
    ],
    [[{ len: 16, writable: true }], /0-byte header/],
    [
      [
        { len: 16, data: write },
        { len: 0, writable: true },
      ],
      /no device-writable status byte/,
    ],
  ];
  for (const [buffers, message] of shapes) {
    const r = rig({ path: p });
    const d = r.drivers[0];
    d.addChain(buffers);
    assert.doesNotThrow(() => r.block.queueNotified(0));
    assert.equal(r.resets.length, 1);
    assert.match(r.resets[0], message);
    assert.deepEqual(await quiet(d, 30), [], 'nothing used');
    r.block.close();
  }
  // A malformed ring (head index outside the queue) is the queue's VirtqueueError: a reset too.
  const r = rig({ path: p });
  const d = r.drivers[0];
  send(d, VIRTIO_BLK_T_OUT, 0, { out: [new Uint8Array(512).fill(1)] });
  memory.writeU16(d.avail + 4, QUEUE_SIZE + 3);
  r.block.queueNotified(0);
  assert.match(r.resets[0] ?? '', /queue 0: .*outside the queue/);
  assert.deepEqual(await quiet(d, 30), []);
  r.block.queueNotified(0); // after the reset the device serves nothing until activated again
  assert.equal(r.resets.length, 1);
  assert.deepEqual(fs.readFileSync(p), before);
  r.block.close();
});

test('multi-queue: each queue is served on its own and interrupted on its own', async () => {
  const p = image();
  const r = rig({ path: p, queues: 2 });
  assert.ok(((r.block.info.features >> VIRTIO_BLK_F_MQ) & 1n) === 1n);
  const [d0, d1] = r.drivers;
  const a = send(d0, VIRTIO_BLK_T_IN, 5, { in: [512] });
  const b = send(d1, VIRTIO_BLK_T_IN, 6, { in: [1024] });
  r.block.queueNotified(1);
  assert.deepEqual(await used(d1), [{ id: b.head, len: 1025 }]);
  assert.deepEqual(await quiet(d0, 30), [], 'queue 0 was not kicked: its request waits');
  assert.ok(r.interrupts.includes(1) && !r.interrupts.includes(0));
  r.block.queueNotified(0);
  assert.deepEqual(await used(d0), [{ id: a.head, len: 513 }]);
  await tick();
  assert.ok(r.interrupts.includes(0));
  assert.deepEqual(readData(a), expected(5 * 512, 512));
  assert.deepEqual(readData(b), expected(6 * 512, 1024));
  r.block.queueNotified(7); // a queue that does not exist: ignored
  r.block.close();
});

test('reset with I/O in flight: no status byte, no used entry afterwards; the device works again after activation', async () => {
  const p = image();
  const r = rig({ path: p });
  let d = r.drivers[0];
  // Without a reset, the same kind of requests complete (and interrupt).
  const control = [send(d, VIRTIO_BLK_T_IN, 0, { in: [65536] }), send(d, VIRTIO_BLK_T_FLUSH, 0)];
  r.block.queueNotified(0);
  assert.equal((await used(d, control.length)).length, control.length);
  await tick();
  d.resetHeap();

  const interrupted = r.interrupts.length;
  const inflight = [
    send(d, VIRTIO_BLK_T_IN, 0, { in: [65536] }),
    send(d, VIRTIO_BLK_T_OUT, 200, { out: [new Uint8Array(4096).fill(3)] }),
    send(d, VIRTIO_BLK_T_FLUSH, 0),
    send(d, VIRTIO_BLK_T_WRITE_ZEROES, 0, { out: [segment(300, 8)] }),
  ];
  r.block.queueNotified(0);
  // Requests the backend finished synchronously (write-zeroes is a hole punch when native fallocate exists)
  // were done before the reset; thread-pool I/O cannot have called back yet.
  const done = new Set(d.takeUsed().map((u) => u.id));
  r.block.reset();
  assert.deepEqual(await quiet(d, 250), [], 'no used entry after the reset');
  const pending = inflight.filter((s) => !done.has(s.head));
  assert.ok(pending.length >= 3, 'the reads, writes and flush were still in flight');
  for (const s of pending) assert.equal(memory.readU8(s.status), 0xff, 'status byte untouched');
  await tick();
  assert.equal(r.interrupts.length, interrupted, 'no interrupt after the reset');

  const old = d;
  r.activate();
  d = r.drivers[0];
  const again = await roundTrip(r, VIRTIO_BLK_T_IN, 4, { in: [512] });
  assert.equal(again.status, VIRTIO_BLK_S_OK);
  assert.deepEqual(readData(again.sent), expected(4 * 512, 512));
  assert.deepEqual(old.takeUsed(), [], 'still nothing on the old rings');
  for (const s of pending) assert.equal(memory.readU8(s.status), 0xff);
  r.block.close();
});

test('close with I/O in flight: nothing is used, and the lock is released once the I/O is back', async () => {
  const p = image();
  const r = rig({ path: p });
  const d = r.drivers[0];
  const s = send(d, VIRTIO_BLK_T_IN, 0, { in: [65536] });
  r.block.queueNotified(0);
  r.block.close();
  r.block.queueNotified(0); // a late kick after close: ignored
  assert.deepEqual(await quiet(d, 250), []);
  assert.equal(memory.readU8(s.status), 0xff);
  new VirtioBlock(openBlock({ path: p })).close(); // the fd (and so the lock) is gone
});

test('without FLUSH negotiated, writes are written through and still complete', async () => {
  const p = image();
  const r = rig({ path: p });
  r.block.reset();
  r.activate(r.block.info.features & ~(1n << VIRTIO_BLK_F_FLUSH));
  const data = new Uint8Array(1024).fill(0x42);
  assert.equal((await roundTrip(r, VIRTIO_BLK_T_OUT, 2, { out: [data] })).status, VIRTIO_BLK_S_OK);
  assert.equal((await roundTrip(r, VIRTIO_BLK_T_WRITE_ZEROES, 0, { out: [segment(2, 1)] })).status, VIRTIO_BLK_S_OK);
  assert.deepEqual(fileBytes(p, 2 * 512, 1024), Uint8Array.from([...new Uint8Array(512), ...data.subarray(512)]));
  r.block.close();
});

test('packed ring (§2.8): a write then a read of it back, through the same backend', async () => {
  const p = image();
  const handle = openBlock({ path: p, queueSize: QUEUE_SIZE });
  const block = new VirtioBlock(handle);
  const d = FakePackedDriver.at(memory, 100, area(), MIB); // packed sizes need not be powers of two
  const q = PackedQueue.create(memory, d.config({ indirect: true }));
  if (!(q instanceof PackedQueue)) throw q;
  const resets: string[] = [];
  block.activate({
    memory,
    queues: [q],
    features: block.info.features,
    interrupt: () => undefined,
    needsReset: (r) => void resets.push(r),
  });
  const waitUsed = async (n: number): Promise<UsedElement[]> => {
    const got: UsedElement[] = [];
    const end = Date.now() + 60_000;
    while (got.length < n && Date.now() < end) {
      got.push(...d.takeUsed());
      if (got.length < n) await new Promise((r) => setTimeout(r, 2));
    }
    return got;
  };
  const data = new Uint8Array(1024).map((_, i) => (i * 13) & 0xff);
  const wStatus = d.alloc(1);
  d.addChain([
    { len: 16, data: header(VIRTIO_BLK_T_OUT, 3) },
    { len: data.length, data },
    { len: 1, writable: true, gpa: wStatus },
  ]);
  block.queueNotified(0);
  assert.equal((await waitUsed(1)).length, 1);
  assert.equal(memory.readU8(wStatus), VIRTIO_BLK_S_OK);
  assert.deepEqual(fileBytes(p, 3 * 512, 1024), data);

  const into = d.alloc(1024);
  const rStatus = d.alloc(1);
  d.addChain(
    [
      { len: 16, data: header(VIRTIO_BLK_T_IN, 3) },
      { len: 1024, writable: true, gpa: into },
      { len: 1, writable: true, gpa: rStatus },
    ],
    { indirect: true },
  );
  block.queueNotified(0);
  const used = await waitUsed(1);
  assert.equal(used[0]?.len, 1025, 'data and status written');
  assert.equal(memory.readU8(rStatus), VIRTIO_BLK_S_OK);
  assert.deepEqual(memory.read(into, 1024), data);
  assert.deepEqual(resets, []);
  block.close();
});

test('a driver re-posting the head of a request still in flight: NEEDS_RESET, never one request per re-post', async () => {
  const p = image();
  const r = rig({ path: p });
  const d = r.drivers[0];
  const sent = send(d, VIRTIO_BLK_T_IN, 0, { in: [65536] });
  r.block.queueNotified(0);
  // The read is in libuv's thread pool: it cannot have called back within this turn. Post its head again, the
  // way the flood guest does, many times over.
  for (let i = 0; i < 1000 && r.resets.length === 0; i++) {
    d.publish(sent.head);
    r.block.queueNotified(0);
  }
  assert.equal(r.resets.length, 1, 'the device asked for a reset');
  assert.match(r.resets[0], /queue 0: available ring entry 1 names descriptor \d+, whose chain is still in flight/);
  assert.ok(r.queues[0].inFlight <= QUEUE_SIZE);
  assert.deepEqual(await quiet(d, 100), [], 'nothing of the old session is used after the reset');
  r.block.close();
});

test('one turn of the I/O thread serves at most BLOCK_TURN_CHAINS requests per queue, then continues', async () => {
  const p = image();
  const r = rig({ path: p });
  const d = r.drivers[0];
  const n = 2 * BLOCK_TURN_CHAINS; // GET_ID is answered at once: without a budget all of them in one call
  assert.ok(n <= QUEUE_SIZE);
  for (let i = 0; i < n; i++) send(d, VIRTIO_BLK_T_GET_ID, 0, { in: [20], indirect: true });
  r.block.queueNotified(0);
  assert.equal(d.takeUsed().length, BLOCK_TURN_CHAINS, 'the first turn stops at the budget');
  r.block.queueNotified(0); // a kick meanwhile does not break the budget
  assert.equal(d.takeUsed().length, 0);
  const rest = await used(d, n - BLOCK_TURN_CHAINS);
  assert.equal(rest.length, n - BLOCK_TURN_CHAINS, 'the rest on later turns, without another kick');
  r.block.close();
});

test('in-flight limits: new requests wait in the ring while 64 MiB of data are in flight, and run as others complete', async () => {
  const p = path.join(dir, `disk${images++}.img`);
  fs.writeFileSync(p, '');
  fs.truncateSync(p, 256 * MIB); // sparse
  const r = rig({ path: p });
  const d = r.drivers[0];
  // Each request reads 32 MiB through 64 buffers that all alias one 512 KiB guest area.
  const target = d.alloc(512 * 1024, 4096);
  const perRequest = 64 * 512 * 1024;
  const count = BLOCK_INFLIGHT_BYTES / perRequest + 2;
  const heads: number[] = [];
  for (let i = 0; i < count; i++) {
    const status = d.alloc(1);
    memory.writeU8(status, 0xff);
    const buffers: DriverBuffer[] = [{ len: 16, data: header(VIRTIO_BLK_T_IN, i * 65536) }];
    for (let j = 0; j < 64; j++) buffers.push({ len: 512 * 1024, writable: true, gpa: target });
    buffers.push({ len: 1, writable: true, gpa: status });
    heads.push(d.addChain(buffers, { indirect: true }));
  }
  r.block.queueNotified(0);
  assert.equal(r.queues[0].nextAvailIndex, BLOCK_INFLIGHT_BYTES / perRequest, 'popped up to the limit, no further');
  const u = await used(d, count, 20_000);
  assert.deepEqual(new Set(u.map((e) => e.id)), new Set(heads), 'the waiting requests ran once others completed');
  assert.deepEqual(r.resets, []);
  r.block.close();
});

test('in-flight limits: guest buffers count too, however short (each costs a host view)', async () => {
  const p = image();
  const r = rig({ path: p });
  const d = r.drivers[0];
  const target = d.alloc(512);
  const pieces = 1024; // 512 KiB per request, in 1024 buffers aliasing one sector
  const fit = Math.ceil(BLOCK_INFLIGHT_BUFFERS / (pieces + 2));
  const heads: number[] = [];
  for (let i = 0; i <= fit; i++) {
    const status = d.alloc(1);
    const buffers: DriverBuffer[] = [{ len: 16, data: header(VIRTIO_BLK_T_IN, 0) }];
    for (let j = 0; j < pieces; j++) buffers.push({ len: 512, writable: true, gpa: target });
    buffers.push({ len: 1, writable: true, gpa: status });
    heads.push(d.addChain(buffers, { indirect: true }));
  }
  r.block.queueNotified(0);
  assert.equal(r.queues[0].nextAvailIndex, fit, 'popped until the buffers in flight reached the limit');
  const u = await used(d, fit + 1, 20_000);
  assert.deepEqual(new Set(u.map((e) => e.id)), new Set(heads));
  r.block.close();
});
