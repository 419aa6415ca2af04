// Block benchmark: the virtio-blk backend (src/devices/virtio/block.ts) against the host's own pread/pwrite on the
// same 256 MiB raw image, for sequential and random reads and writes of 4 KiB and 64 KiB.
//
// The backend is driven the way a guest driver drives it: requests (header, data, status byte) sit in a split
// virtqueue in fake guest RAM, `depth` of them in flight; each completion interrupt reaps the used ring, refills
// the available ring and kicks. The driver runs on the same thread as the backend here (in a VM it is the guest on
// a vCPU), so its cost is charged to the backend: it is kept to what a real driver does (fixed descriptor
// chains per slot, a header store, a ring entry, an index store).
//
// Host baselines on the same file and memory: a synchronous loop of fs.readSync/fs.writeSync (one pread/pwrite
// per request, the cheapest a single thread can do), and the same with libuv's thread pool at the same depth.
// Both cycle through the same `depth` guest-RAM buffers the backend uses, so the copies touch the same memory.
// The file is written in full first, so every read is served from the page cache for all three.
//
// node bench/block.mjs [--seconds S] [--depth N] [--size MiB] [--runs N] [--json FILE]   (after npm run build)
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { GuestMemory } from '../dist/src/base/guest-memory.js';
import { SplitQueue } from '../dist/src/devices/virtio/queue.js';
import {
  openBlock,
  VirtioBlock,
  VIRTIO_BLK_S_OK,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
} from '../dist/src/devices/virtio/block.js';

const { values: args } = parseArgs({
  options: {
    seconds: { type: 'string', default: '1' },
    depth: { type: 'string', default: '32' },
    size: { type: 'string', default: '256' },
    runs: { type: 'string', default: '3' },
    json: { type: 'string' },
  },
});
const SECONDS = Number(args.seconds);
const DEPTH = Number(args.depth);
const FILE_SIZE = Number(args.size) * 1024 * 1024;
const RUNS = Number(args.runs);
const TARGET = 0.7;
const QUEUE_SIZE = 256;
const KIB = 1024;
if (!(DEPTH >= 1 && DEPTH * 3 <= QUEUE_SIZE)) throw new Error(`--depth must be 1..${Math.floor(QUEUE_SIZE / 3)}`);

// ---- the image ----
const image = path.join(os.tmpdir(), `partita-bench-block-${process.pid}.img`);
{
  const fd = fs.openSync(image, 'w');
  const chunk = Buffer.alloc(1024 * 1024);
  for (let i = 0; i < chunk.length; i++) chunk[i] = (i * 131 + 7) & 0xff;
  for (let off = 0; off < FILE_SIZE; off += chunk.length) fs.writeSync(fd, chunk, 0, chunk.length, off);
  fs.fsyncSync(fd);
  fs.closeSync(fd);
}
const cleanup = () => fs.rmSync(image, { force: true });
process.on('exit', cleanup);

// ---- guest RAM: rings at 64 KiB, per-slot header and status in one page, data buffers from 1 MiB ----
const memory = GuestMemory.allocateRanges([{ gpa: 0, size: 1024 * 1024 + DEPTH * 64 * KIB + 64 * KIB }]);
const DESC = 0x10000;
const AVAIL = DESC + 16 * QUEUE_SIZE;
const USED = (AVAIL + 6 + 2 * QUEUE_SIZE + 3) & ~3;
const SLOTS = 0x20000; // header (16 bytes) + status (1 byte) per slot, 32 bytes apart
const DATA = 1024 * 1024;
memory.fill(DESC, 0x10000);
for (let i = 0; i < DEPTH; i++) memory.fill(DATA + i * 64 * KIB, 64 * KIB, (i * 37 + 1) & 0xff);
const dataView = (slot, bs) => memory.slice(DATA + slot * 64 * KIB, bs);
const dv = (gpa, len) => {
  const s = memory.slice(gpa, len);
  return new DataView(s.buffer, s.byteOffset, len);
};

/** Offsets of the n-th request: sequential wraps at the end, random is a fixed xorshift sequence (same for all). */
function offsets(kind, bs) {
  const blocks = FILE_SIZE / bs;
  let seq = 0;
  let x = 0x9e3779b9;
  return kind === 'seq'
    ? () => {
        const o = seq * bs;
        seq = (seq + 1) % blocks;
        return o;
      }
    : () => {
        x ^= x << 13;
        x ^= x >>> 17;
        x ^= x << 5;
        return ((x >>> 0) % blocks) * bs;
      };
}

function hostSync(write, kind, bs) {
  const fd = fs.openSync(image, 'r+');
  const next = offsets(kind, bs);
  const views = Array.from({ length: DEPTH }, (_, i) => dataView(i, bs));
  let n = 0;
  const t0 = performance.now();
  const end = t0 + SECONDS * 1000;
  while (performance.now() < end) {
    for (let k = 0; k < 64; k++, n++) {
      const v = views[n % DEPTH];
      if (write) fs.writeSync(fd, v, 0, bs, next());
      else fs.readSync(fd, v, 0, bs, next());
    }
  }
  const seconds = (performance.now() - t0) / 1000;
  fs.closeSync(fd);
  return n / seconds;
}

function hostAsync(write, kind, bs) {
  const fd = fs.openSync(image, 'r+');
  const next = offsets(kind, bs);
  return new Promise((resolve) => {
    let n = 0;
    let inflight = 0;
    const t0 = performance.now();
    const end = t0 + SECONDS * 1000;
    const go = (slot) => {
      const v = dataView(slot, bs);
      inflight++;
      const done = (err) => {
        if (err) throw err;
        inflight--;
        n++;
        if (performance.now() < end) go(slot);
        else if (inflight === 0) {
          fs.closeSync(fd);
          resolve(n / ((performance.now() - t0) / 1000));
        }
      };
      if (write) fs.write(fd, v, 0, bs, next(), done);
      else fs.read(fd, v, 0, bs, next(), done);
    };
    for (let i = 0; i < DEPTH; i++) go(i);
  });
}

function backend(write, kind, bs) {
  const handle = openBlock({ path: image, queueSize: QUEUE_SIZE });
  const block = new VirtioBlock(handle);
  const next = offsets(kind, bs);
  // Fixed chains: slot i is descriptors 3i (header), 3i+1 (data), 3i+2 (status), as a driver's request pool.
  const desc = dv(DESC, 16 * QUEUE_SIZE);
  const setDesc = (i, addr, len, flags, nextIndex) => {
    desc.setBigUint64(16 * i, BigInt(addr), true);
    desc.setUint32(16 * i + 8, len, true);
    desc.setUint16(16 * i + 12, flags, true);
    desc.setUint16(16 * i + 14, nextIndex, true);
  };
  const headers = [];
  for (let s = 0; s < DEPTH; s++) {
    const h = SLOTS + 32 * s;
    setDesc(3 * s, h, 16, 1, 3 * s + 1);
    setDesc(3 * s + 1, DATA + s * 64 * KIB, bs, 1 | (write ? 0 : 2), 3 * s + 2);
    setDesc(3 * s + 2, h + 16, 1, 2, 0);
    headers.push(dv(h, 17));
  }
  memory.fill(AVAIL, 6 + 2 * QUEUE_SIZE);
  memory.fill(USED, 6 + 8 * QUEUE_SIZE);
  const availBytes = memory.slice(AVAIL, 4 + 2 * QUEUE_SIZE);
  const availRing = new Uint16Array(availBytes.buffer, availBytes.byteOffset, 2 + QUEUE_SIZE);
  const usedRing = dv(USED, 4 + 8 * QUEUE_SIZE);
  const queue = SplitQueue.create(memory, {
    size: QUEUE_SIZE,
    descTable: DESC,
    availRing: AVAIL,
    usedRing: USED,
  });
  if (!(queue instanceof SplitQueue)) throw queue;
  let availIdx = 0;
  let lastUsed = 0;
  const type = write ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN;
  const submit = (slot) => {
    const h = headers[slot];
    h.setUint32(0, type, true);
    h.setBigUint64(8, BigInt(next() / 512), true);
    h.setUint8(16, 0xff);
    availRing[2 + (availIdx & (QUEUE_SIZE - 1))] = 3 * slot;
    availIdx = (availIdx + 1) & 0xffff;
    Atomics.store(availRing, 1, availIdx);
  };
  return new Promise((resolve, reject) => {
    let n = 0;
    let inflight = 0;
    const t0 = performance.now();
    const end = t0 + SECONDS * 1000;
    const onInterrupt = () => {
      const usedIdx = usedRing.getUint16(2, true);
      let refilled = false;
      const more = performance.now() < end;
      while (lastUsed !== usedIdx) {
        const id = usedRing.getUint32(4 + 8 * (lastUsed & (QUEUE_SIZE - 1)), true);
        lastUsed = (lastUsed + 1) & 0xffff;
        const slot = id / 3;
        const status = headers[slot].getUint8(16);
        if (status !== VIRTIO_BLK_S_OK) return reject(new Error(`request failed with status ${status}`));
        inflight--;
        n++;
        if (more) {
          submit(slot);
          inflight++;
          refilled = true;
        }
      }
      if (refilled) block.queueNotified(0);
      if (inflight === 0) {
        const rate = n / ((performance.now() - t0) / 1000);
        block.close();
        resolve(rate);
      }
    };
    block.activate({
      memory,
      queues: [queue],
      features: block.info.features,
      interrupt: onInterrupt,
      needsReset: (reason) => reject(new Error(`device needs reset: ${reason}`)),
    });
    for (let s = 0; s < DEPTH; s++) {
      submit(s);
      inflight++;
    }
    block.queueNotified(0);
  });
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
/** Writes the image's dirty pages back, so no measurement starts with another one's writeback still to do. */
function settle() {
  const fd = fs.openSync(image, 'r+');
  fs.fdatasyncSync(fd);
  fs.closeSync(fd);
}
/** Runs the variants interleaved RUNS times (the machine drifts; interleaving spreads it evenly); medians. */
async function measure(variants) {
  const rates = variants.map(() => []);
  for (let i = 0; i < RUNS; i++) {
    for (const [v, fn] of variants.entries()) {
      settle();
      rates[v].push(await fn());
    }
  }
  return rates.map(median);
}

const cases = [];
for (const bs of [4 * KIB, 64 * KIB]) {
  for (const [name, write, kind] of [
    ['seq read', false, 'seq'],
    ['seq write', true, 'seq'],
    ['random read', false, 'rand'],
    ['random write', true, 'rand'],
  ]) {
    cases.push({ name, write, kind, bs });
  }
}

console.log(
  `virtio-blk backend vs host, ${FILE_SIZE / 1024 / 1024} MiB image in ${os.tmpdir()} (page cache), ` +
    `queue depth ${DEPTH}, ${SECONDS} s per measurement, median of ${RUNS}; ${os.cpus().length} CPUs, Node ${process.version}`,
);
const rows = [];
for (const c of cases) {
  await backend(c.write, c.kind, c.bs); // warm-up: JIT, page cache
  const [sync, async_, dev] = await measure([
    () => hostSync(c.write, c.kind, c.bs),
    () => hostAsync(c.write, c.kind, c.bs),
    () => backend(c.write, c.kind, c.bs),
  ]);
  const row = {
    case: c.name,
    blockSize: c.bs,
    hostSync: sync,
    hostAsync: async_,
    backend: dev,
    ratio: dev / sync,
    ratioAsync: dev / async_,
  };
  rows.push(row);
  process.stderr.write(`  ${c.name} ${c.bs / KIB} KiB done\n`);
}

const mb = (rate, bs) => ((rate * bs) / 1e6).toFixed(0);
const k = (rate) => (rate / 1000).toFixed(1) + 'k';
const header = [
  'case',
  'size',
  'host pread/pwrite req/s',
  'MB/s',
  'host libuv qd req/s',
  'MB/s',
  'backend req/s',
  'MB/s',
  'backend/host',
  'backend/libuv',
];
const table = rows.map((r) => [
  r.case,
  `${r.blockSize / KIB} KiB`,
  k(r.hostSync),
  mb(r.hostSync, r.blockSize),
  k(r.hostAsync),
  mb(r.hostAsync, r.blockSize),
  k(r.backend),
  mb(r.backend, r.blockSize),
  `${(r.ratio * 100).toFixed(0)}%`,
  `${(r.ratioAsync * 100).toFixed(0)}%`,
]);
console.log(`| ${header.join(' | ')} |`);
console.log(`|${header.map(() => '---').join('|')}|`);
for (const t of table) console.log(`| ${t.join(' | ')} |`);
const big = rows.filter((r) => r.blockSize === 64 * KIB);
const worst = big.reduce((a, b) => (a.ratio < b.ratio ? a : b));
const met = big.every((r) => r.ratio >= TARGET);
console.log(
  `64 KiB target (backend >= ${TARGET * 100}% of host pread/pwrite in every case): ${met ? 'MET' : 'NOT MET'} ` +
    `(lowest: ${worst.case}, ${(worst.ratio * 100).toFixed(0)}%)`,
);
if (args.json) fs.writeFileSync(args.json, JSON.stringify({ seconds: SECONDS, depth: DEPTH, rows }, null, 2));
