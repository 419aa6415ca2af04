// Seeded fuzzing of the virtio device backends' request handling: virtio-blk (virtio 1.2 §5.2.6), virtio-net
// (§5.1.6), virtio-console (§5.3.6) and virtio-rng (§5.4.6), each driven through the VirtioBackend contract the
// runner uses (activate, queueNotified, reset, close) by a hostile fake driver over a real GuestMemory.
//
// The queue walkers have their own fuzz (virtqueue-fuzz.test.ts); here the chains are mostly well formed and the
// CONTENT is hostile: request types, sectors near and far past capacity, lengths that are 0, odd or huge, buffers
// at the end of a RAM region, across a 1 GiB view window, above 4 GiB, or overlapping the rings (readable ones:
// the device then parses ring bytes), split or packed rings, indirect tables or not, EVENT_IDX or not, resets
// with I/O in flight. The driver kicks only when the device asks for kicks, as Linux does, so a lost wake-up
// shows. Each device is checked against a model of the spec written here, independently of the backend's code:
// which status every request gets, what lands in the image, the network, the console file or the guest's
// buffers, and that nothing is touched after a reset has drained. A few batches are "chaos": device-writable
// buffers anywhere, overlapping rings and each other; only robustness is checked there (no exception, needsReset
// only for driver errors, the image never grows). What the four fuzzers share (the run loop, buffer placement,
// posting, kicking and collecting used chains, the needsReset checks) is the DeviceFuzz base class; each device's
// subclass holds only its model and checks.
//
// PARTITA_FUZZ_SEED=<n> replays a run (the seed is printed); PARTITA_FUZZ_ITERATIONS=<n> sets the number of
// requests per device (default DEFAULT_REQUESTS); PARTITA_FUZZ_TRACE=1 prints the virtio-net operations.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { randomInt } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createServer, type Server, type Socket } from 'node:net';
import { GuestMemory } from '../../src/base/guest-memory.js';
import { GIB, KIB, MIB } from '../../src/base/units.js';
import type { VirtioBackend, VirtioQueueContext } from '../../src/devices/virtio/device.js';
import { availRingSize, SplitQueue, usedRingSize, type Virtqueue } from '../../src/devices/virtio/queue.js';
import {
  EVENT_SUPPRESSION_SIZE,
  PackedQueue,
  RING_EVENT_FLAGS_DISABLE,
} from '../../src/devices/virtio/packed-queue.js';
import {
  VIRTIO_F_RING_EVENT_IDX,
  VIRTIO_F_RING_INDIRECT_DESC,
  VIRTIO_F_RING_PACKED,
  VIRTIO_F_VERSION_1,
} from '../../src/devices/virtio/pci-transport.js';
import {
  ID_BYTES,
  MAX_DISCARD_SECTORS,
  MAX_DISCARD_SEGMENTS,
  openBlock,
  VirtioBlock,
  VIRTIO_BLK_F_FLUSH,
  VIRTIO_BLK_S_IOERR,
  VIRTIO_BLK_S_OK,
  VIRTIO_BLK_S_UNSUPP,
  VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_WRITE_ZEROES,
} from '../../src/devices/virtio/block.js';
import {
  NET_MAX_FRAME,
  NET_MAX_TX_CHAIN,
  NET_RX_QUEUE,
  NET_TX_QUEUE,
  openNet,
  VirtioNet,
  VIRTIO_NET_F_MRG_RXBUF,
  VIRTIO_NET_HDR_SIZE,
} from '../../src/devices/virtio/net.js';
import { encodeFrame, FrameDecoder } from '../../src/devices/net/stream-socket.js';
import {
  CONSOLE_RECEIVEQ,
  CONSOLE_TRANSMITQ,
  CONSOLE_TX_CHAIN_MAX,
  openConsole,
  VirtioConsole,
} from '../../src/devices/virtio/console.js';
import { ENTROPY_MAX_REQUEST, ENTROPY_REQUESTQ, openEntropy, VirtioEntropy } from '../../src/devices/virtio/entropy.js';
import { FakeDriver, FakePackedDriver, type UsedElement } from '../support/virtq-driver.js';
import { Rng } from '../support/rng.js';

/** Requests (chains) per device in the default run: keeps the whole file within ~20 s on a 2-core machine. */
const DEFAULT_REQUESTS = 6000;
const REQUESTS = Number(process.env.PARTITA_FUZZ_ITERATIONS ?? DEFAULT_REQUESTS);
/** Long runs (PARTITA_FUZZ_ITERATIONS) get a proportionally longer deadline. */
const TIMEOUT_MS = Math.max(300_000, Math.ceil((REQUESTS / DEFAULT_REQUESTS) * 300_000));

// ---- seeded runs (the generator of virtqueue-fuzz.test.ts, test/support/rng.ts: seeds mean the same thing) ----

interface Fuzz {
  readonly seed: number;
  readonly rng: Rng;
  readonly requests: number;
}

/** Seed and length of one device's run, printed so a failure can be replayed. */
function fuzzSetup(t: TestContext, what: string, seedOffset: number): Fuzz {
  const seed = (Number(process.env.PARTITA_FUZZ_SEED ?? randomInt(2 ** 32)) + seedOffset) >>> 0;
  t.diagnostic(
    `${what}: seed ${seed} (replay with PARTITA_FUZZ_SEED=${(seed - seedOffset) >>> 0}), ${REQUESTS} requests`,
  );
  return { seed, rng: new Rng(seed), requests: REQUESTS };
}

// ---- guest RAM and where buffers go ------------------------------------------------------------------------

/**
 * Two RAM regions of 1 GiB + 4 MiB (MAP_NORESERVE: only touched pages cost), below and above a hole, as guest RAM
 * is around the PCI window: buffers can sit above 4 GiB (both halves of a descriptor's address), cross a 1 GiB
 * view window of GuestMemory, end at the last byte of a region, or run into the hole.
 */
const REGION_SIZE = GIB + 4 * MIB;
const HIGH = 4 * GIB;
const RAM: readonly { gpa: number; size: number }[] = [
  { gpa: 0, size: REGION_SIZE },
  { gpa: HIGH, size: REGION_SIZE },
];
const RAM_ENDS = RAM.map((r) => r.gpa + r.size);
/** Four ring slots (two activations × up to two queues, alternating so old rings stay inspectable after a reset). */
const SLOTS_BASE = MIB;
const SLOT_SIZE = 4 * MIB;
/** Each fake driver's own heap, after its rings: indirect tables only (buffers are placed by Placer). */
const DRIVER_HEAP = 2 * MIB;

type Where = 'heap' | 'end' | 'window' | 'huge' | 'ring' | 'anywhere';

interface Zones {
  readonly heap: readonly [number, number];
  readonly huge: readonly [number, number];
  /** A 1 GiB view-window boundary buffers may straddle, and a zone ending at the end of a RAM region. */
  readonly edges?: { readonly window: number; readonly end: readonly [number, number] };
}

/** Below 4 GiB: transient buffers (one batch). */
const LOW_ZONES: Zones = {
  heap: [20 * MIB, 40 * MIB],
  huge: [64 * MIB, 512 * MIB],
  edges: { window: GIB, end: [GIB + 2 * MIB, REGION_SIZE] },
};
/** Above 4 GiB: transient buffers, or the persistent receive buffers of virtio-net. */
const HIGH_ZONES: Zones = {
  heap: [HIGH + 16 * MIB, HIGH + 64 * MIB],
  huge: [HIGH + 64 * MIB, HIGH + GIB - 2 * MIB],
  edges: { window: HIGH + GIB, end: [HIGH + GIB + 2 * MIB, HIGH + REGION_SIZE] },
};
/** Below 4 GiB, apart: receive buffers that stay posted across batches (virtio-console). */
const RX_ZONES: Zones = { heap: [40 * MIB, 64 * MIB], huge: [512 * MIB, GIB - 2 * MIB] };
/** Where malformed chains point: never read or written, since the queue refuses them. */
const NOWHERE = 18 * MIB;

interface Buf {
  readonly gpa: number;
  readonly len: number;
  readonly writable: boolean;
  /** Overlaps rings or other buffers on purpose: the test writes nothing into it. */
  readonly shared?: boolean;
}

interface RingSpan {
  /** Driver-written ring memory that stays put while the device works (split: descriptor table, available ring). */
  readonly stable: { readonly start: number; readonly end: number } | undefined;
  /** All of the queue's rings, the parts the device writes included. */
  readonly start: number;
  readonly end: number;
}

/** Bump allocation of guest buffers from zones; every placement but 'ring' and 'anywhere' is exclusive. */
class Placer {
  private heap = 0;
  private huge = 0;
  private end = 0;
  private window = -1;
  private readonly placed: { gpa: number; len: number }[] = [];
  rings: RingSpan[] = [];

  constructor(
    private readonly rng: Rng,
    private readonly zones: Zones,
  ) {
    this.reset();
  }

  reset(): void {
    this.heap = this.zones.heap[0];
    this.huge = this.zones.huge[0];
    this.end = this.zones.edges?.end[1] ?? 0;
    this.window = -1;
    this.placed.length = 0;
  }

  hugeRoom(): number {
    return this.zones.huge[1] - this.huge;
  }

  /** Room for a buffer of `len` bytes, or undefined when the zones are full (the caller drops the request). */
  place(len: number, where: Where): { gpa: number; len: number; shared: boolean } | undefined {
    const rng = this.rng;
    if (len === 0 && where !== 'anywhere') {
      // An empty buffer takes no room; its address only has to be inside RAM, and may be RAM's very end.
      const r = rng.pick(RAM);
      return {
        gpa: rng.pick([r.gpa + r.size, r.gpa, r.gpa + GIB, this.heap, r.gpa + rng.below(r.size)]),
        len,
        shared: true,
      };
    }
    const stable = this.rings.filter((r) => r.stable).map((r) => r.stable!);
    if (where === 'ring' && stable.length) {
      const r = rng.pick(stable);
      const gpa = r.start + rng.below(r.end - r.start);
      return { gpa, len: Math.min(len, r.end - gpa), shared: true };
    }
    if (where === 'anywhere') return { ...this.anywhere(len), shared: true };
    if (len > 4 * MIB) where = 'huge';
    const edges = this.zones.edges;
    if (edges && where === 'end' && this.end - len >= edges.end[0]) {
      this.end -= len;
      return this.keep(this.end, len);
    }
    if (edges && where === 'window' && len <= 512 * KIB) {
      let gpa: number;
      if (this.window < 0) {
        // The first one of a batch straddles the window boundary (or touches it, when it is a single byte).
        gpa = len >= 2 ? edges.window - 1 - rng.below(len - 1) : edges.window - rng.below(2);
      } else {
        gpa = this.window + rng.below(4);
      }
      if (gpa + len <= edges.window + MIB) {
        this.window = gpa + len;
        return this.keep(gpa, len);
      }
    }
    if (where === 'huge') {
      if (this.huge + len > this.zones.huge[1]) return undefined;
      const gpa = this.huge;
      this.huge = Math.ceil((gpa + len) / 4096) * 4096;
      return this.keep(gpa, len);
    }
    const gpa = this.heap + rng.below(4);
    if (gpa + len > this.zones.heap[1]) return undefined;
    this.heap = gpa + len;
    return this.keep(gpa, len);
  }

  private keep(gpa: number, len: number): { gpa: number; len: number; shared: boolean } {
    this.placed.push({ gpa, len });
    return { gpa, len, shared: false };
  }

  /** Chaos: over a ring (the used ring too), over another buffer of the batch, or anywhere in RAM. */
  private anywhere(len: number): { gpa: number; len: number } {
    const rng = this.rng;
    const region = rng.pick(RAM);
    len = Math.min(len, region.size);
    let gpa: number;
    const roll = rng.below(3);
    if (roll === 0 && this.rings.length) {
      const r = rng.pick(this.rings);
      gpa = r.start + rng.below(r.end - r.start);
    } else if (roll === 1 && this.placed.length) {
      const p = rng.pick(this.placed);
      gpa = p.gpa + rng.below(p.len + 1) - rng.below(64);
    } else {
      gpa = region.gpa + rng.below(region.size);
    }
    // inside the region that holds gpa (a placed buffer or a ring may be in either)
    const home = RAM.find((r) => gpa >= r.gpa && gpa <= r.gpa + r.size) ?? region;
    len = Math.min(len, home.size);
    gpa = Math.max(home.gpa, Math.min(gpa, home.gpa + home.size - len));
    return { gpa, len };
  }
}

/** Where a non-empty buffer goes: mostly the heap, sometimes the edges of RAM, readable ones sometimes over a ring. */
function where(rng: Rng, writable: boolean, chaos: boolean): Where {
  if (chaos && rng.chance(writable ? 0.5 : 0.3)) return 'anywhere';
  const roll = rng.below(100);
  if (roll < 7) return 'end';
  if (roll < 14) return 'window';
  if (!writable && roll < 19) return 'ring';
  return 'heap';
}

/** `total` bytes cut into 1..maxParts pieces, sometimes with an empty one in between. */
function pieces(rng: Rng, total: number, maxParts: number): number[] {
  const n = 1 + rng.below(maxParts);
  const points = Array.from({ length: n - 1 }, () => rng.below(total + 1)).sort((a, b) => a - b);
  const out: number[] = [];
  let prev = 0;
  for (const p of points) {
    out.push(p - prev);
    prev = p;
  }
  out.push(total - prev);
  if (rng.chance(0.08)) out.splice(rng.below(out.length + 1), 0, 0);
  return out;
}

/** Places pieces; undefined when the zones are full. */
function layout(
  placer: Placer,
  rng: Rng,
  lengths: readonly number[],
  writable: boolean,
  chaos: boolean,
): Buf[] | undefined {
  const out: Buf[] = [];
  for (const len of lengths) {
    const s = placer.place(len, where(rng, writable, chaos));
    if (!s) return undefined;
    out.push({ gpa: s.gpa, len: s.len, writable, shared: s.shared });
  }
  return out;
}

const sum = (bufs: readonly Buf[], writable: boolean): number =>
  bufs.reduce((n, b) => (b.writable === writable ? n + b.len : n), 0);

/** `length` bytes of a chain's readable or writable part from byte `offset`: what the device sees in guest RAM. */
function partBytes(
  memory: GuestMemory,
  bufs: readonly Buf[],
  writable: boolean,
  offset: number,
  length: number,
): Uint8Array {
  const out = new Uint8Array(length);
  let skip = offset;
  let at = 0;
  for (const b of bufs) {
    if (b.writable !== writable || at >= length) continue;
    if (skip >= b.len) {
      skip -= b.len;
      continue;
    }
    const n = Math.min(b.len - skip, length - at);
    out.set(memory.read(b.gpa + skip, n), at);
    at += n;
    skip = 0;
  }
  return out.subarray(0, at);
}

/** Writes the first `payload.length` bytes of the readable part (shared buffers keep what they overlap). */
function writeReadable(memory: GuestMemory, bufs: readonly Buf[], payload: Uint8Array): void {
  let at = 0;
  for (const b of bufs) {
    if (b.writable) continue;
    if (!b.shared && at < payload.length) {
      memory.write(b.gpa, payload.subarray(at, Math.min(at + b.len, payload.length)));
    }
    at += b.len;
  }
}

/** What device-writable bytes hold until the device writes them. */
const FILL = 0xee;
/** What a block status byte holds until the device writes it. */
const STATUS_UNSET = 0xff;

/** Pre-fills writable buffers (huge ones at both ends only: that is all the checks look at). */
function prefill(memory: GuestMemory, bufs: readonly Buf[]): void {
  for (const b of bufs) {
    if (!b.writable || b.shared || b.len === 0) continue;
    if (b.len <= 256 * KIB) {
      memory.fill(b.gpa, b.len, FILL);
    } else {
      memory.fill(b.gpa, 256 * KIB, FILL);
      memory.fill(b.gpa + b.len - 128, 128, FILL);
    }
  }
}

/** The writable part's bytes [from, to) must still be FILL (sampled at both ends: a write always touches an end). */
function checkFill(memory: GuestMemory, bufs: readonly Buf[], from: number, to: number, where: string): void {
  if (to <= from) return;
  const ranges: [number, number][] = [[from, Math.min(to, from + 64)]];
  if (to - from > 64) ranges.push([Math.max(from + 64, to - 64), to]);
  for (const [a, b] of ranges) {
    const got = partBytes(memory, bufs, true, a, b - a);
    const bad = got.findIndex((v) => v !== FILL);
    assert.ok(
      bad < 0,
      `${where}: writable byte ${a + bad} was written (0x${got[bad]?.toString(16)}) but should not be`,
    );
  }
}

/** The last byte of the last non-empty writable buffer: where a block status goes; -1 when there is none. */
function lastWritableByte(bufs: readonly Buf[]): number {
  for (let i = bufs.length - 1; i >= 0; i--)
    if (bufs[i].writable && bufs[i].len > 0) return bufs[i].gpa + bufs[i].len - 1;
  return -1;
}

/** Malformed chains the queue itself refuses (VirtqueueError → needsReset), built on purpose. */
type QueueFault = 'outside' | 'order' | 'indirect' | 'overflow';

const QUEUE_FAULT_REASON: Record<QueueFault, RegExp> = {
  outside: /is not inside guest RAM/,
  order: /a device-readable buffer follows a device-writable one/,
  indirect: /INDIRECT but VIRTIO_F_INDIRECT_DESC was not negotiated/,
  overflow: /add up to more than 2\^32 - 1 bytes/,
};

/** Makes `bufs` a chain the queue refuses; returns the fault (and the needsReset reason it must cause). */
function queueFault(
  rng: Rng,
  bufs: Buf[],
  indirectNegotiated: boolean,
): { fault: QueueFault; indirect: boolean; reason: RegExp } {
  const faults: QueueFault[] = ['outside', 'order', 'overflow'];
  if (!indirectNegotiated) faults.push('indirect');
  const fault = rng.pick(faults);
  switch (fault) {
    case 'outside': {
      // past the end of a region, into the hole or beyond RAM
      const len = rng.pick([0, 1, 16, 4096]);
      const end = rng.pick(RAM_ENDS);
      const gpa = len === 0 ? end + 1 + rng.below(64) : end - rng.below(len);
      bufs.splice(rng.below(bufs.length + 1), 0, { gpa, len, writable: rng.chance(0.5), shared: true });
      // keep readable-before-writable so that only the address is wrong
      bufs.sort((a, b) => Number(a.writable) - Number(b.writable));
      break;
    }
    case 'order':
      bufs.push({ gpa: NOWHERE, len: 1 + rng.below(64), writable: true, shared: true });
      bufs.push({ gpa: NOWHERE, len: rng.below(64), writable: false, shared: true });
      break;
    case 'overflow':
      // Five readable buffers of 900 MiB over the same RAM: each is valid, together they exceed a u32.
      for (let i = 0; i < 5; i++) bufs.unshift({ gpa: 64 * MIB, len: 900 * MIB, writable: false, shared: true });
      break;
    case 'indirect':
      return { fault, indirect: true, reason: QUEUE_FAULT_REASON[fault] };
  }
  return { fault, indirect: indirectNegotiated && rng.chance(0.4), reason: QUEUE_FAULT_REASON[fault] };
}

// ---- driving a backend ---------------------------------------------------------------------------------------

/** Calls into the backend; an exception out of it is a crash, reported with where it happened. */
function call<T>(where: string, fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    assert.fail(`${where}: the backend threw: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
  }
}

const tick = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Waits (bounded) for `cond`: event-loop turns first (thread-pool I/O completes meanwhile), then 1 ms sleeps. */
async function until(cond: () => boolean, what: () => string, ms = 60_000): Promise<void> {
  const deadline = Date.now() + ms;
  for (let i = 0; !cond(); i++) {
    if (Date.now() > deadline) assert.fail(`timed out after ${ms} ms waiting for ${what()}`);
    if (i < 32) await tick();
    else await sleep(1);
  }
}

/** A few event-loop turns and timers: long enough for anything that was going to happen after a reset. */
async function settle(): Promise<void> {
  for (let i = 0; i < 4; i++) await tick();
  await sleep(2);
  for (let i = 0; i < 4; i++) await tick();
}

/** Waits until the used rings stop moving (chaos batches, where what completes cannot be predicted). */
async function quiet(guest: Guest): Promise<void> {
  let last = '';
  let stable = 0;
  const deadline = Date.now() + 1000;
  while (stable < 5 && Date.now() < deadline) {
    await sleep(1);
    const now = guest.drivers.map((d) => d.deviceSide()).join(',');
    stable = now === last ? stable + 1 : 0;
    last = now;
  }
}

/** Reasons a backend may give for DEVICE_NEEDS_RESET: driver errors only, never an internal failure. */
const DRIVER_ERRORS: readonly RegExp[] = [
  /is not inside guest RAM/,
  /wraps past 2\^64/,
  /add up to more than 2\^32 - 1 bytes/,
  /a device-readable buffer follows a device-writable one/,
  /INDIRECT but VIRTIO_F_INDIRECT_DESC was not negotiated/,
  /has both INDIRECT and NEXT/,
  /INDIRECT inside an indirect table/,
  /indirect table at \S+ (has length|has \d+ entries|\(\+0x)/,
  /outside the queue of size/,
  /outside the table's/,
  /descriptors \(the queue size\)|a NEXT loop/,
  /ahead of the device's/,
  // packed rings (§2.8)
  /longer than the \d+ descriptors the ring can hold/,
  /continues the list but is not marked available/,
  /INDIRECT inside a NEXT-linked list/,
  // virtio-blk: a chain that is not a request (§5.2.6)
  /has no device-writable status byte/,
  /-byte header; 16 needed/,
  // virtio-net: §5.1.6.2 (transmit) and §5.1.6.3.1 (receive) chain shapes
  /device-readable buffer\(s\)/,
  /less than the 12-byte header/,
  /has \d+ device-writable bytes/,
];

function checkReason(reason: string, where: string): void {
  assert.ok(
    !/internal error/.test(reason) && DRIVER_ERRORS.some((r) => r.test(reason)),
    `${where}: needsReset for something that is not a driver error: ${reason}`,
  );
}

/** The fake driver of one queue, split (§2.7) or packed (§2.8): what the fuzzers need of either. */
interface QueueDriver {
  readonly size: number;
  readonly queue: Virtqueue;
  readonly rings: RingSpan;
  /** Publishes a chain; returns the id its used element will carry. Throws when the ring or the heap is full. */
  post(bufs: readonly Buf[], indirect: boolean, directFirst: number): number;
  takeUsed(): UsedElement[];
  resetHeap(): void;
  /** The driver's notification decision after publishing (Linux's virtqueue_kick_prepare). */
  kickWanted(): boolean;
  /** What the last decision was based on, for failure messages. */
  readonly kickBasis: string;
  /** The bytes the device writes for this queue: nothing may change them once a reset has drained. */
  deviceSide(): string;
}

const driverBuffers = (bufs: readonly Buf[]): { len: number; writable: boolean; gpa: number }[] =>
  bufs.map((b) => ({ len: b.len, writable: b.writable, gpa: b.gpa }));

class SplitDriver implements QueueDriver {
  readonly queue: Virtqueue;
  readonly rings: RingSpan;
  private readonly d: FakeDriver;
  /** The avail idx at the last notification decision. */
  private synced = 0;
  kickBasis = '';

  constructor(
    private readonly memory: GuestMemory,
    readonly size: number,
    base: number,
    private readonly eventIdx: boolean,
    indirect: boolean,
  ) {
    const d = (this.d = FakeDriver.at(memory, size, base, DRIVER_HEAP));
    const q = SplitQueue.create(memory, d.config({ eventIdx, indirect }));
    if (!(q instanceof SplitQueue)) throw q;
    this.queue = q;
    this.rings = {
      stable: { start: d.desc, end: d.avail + availRingSize(size) },
      start: d.desc,
      end: d.used + usedRingSize(size),
    };
  }

  post(bufs: readonly Buf[], indirect: boolean, directFirst: number): number {
    return this.d.addChain(driverBuffers(bufs), { indirect, directFirst });
  }

  takeUsed(): UsedElement[] {
    return this.d.takeUsed();
  }

  resetHeap(): void {
    this.d.resetHeap();
  }

  kickWanted(): boolean {
    const wanted = this.d.mustKick(this.synced, this.eventIdx); // avail_event (EVENT_IDX) or VIRTQ_USED_F_NO_NOTIFY
    this.kickBasis = this.eventIdx
      ? `split ring, EVENT_IDX: avail idx ${this.synced} -> ${this.d.availIdx}, device's avail_event ${this.d.availEvent}`
      : `split ring: used flags ${this.d.usedFlags}`;
    this.synced = this.d.availIdx;
    return wanted;
  }

  deviceSide(): string {
    return Buffer.from(this.memory.read(this.d.used, usedRingSize(this.size))).toString('base64');
  }
}

class PackedDriver implements QueueDriver {
  readonly queue: Virtqueue;
  readonly rings: RingSpan;
  private readonly d: FakePackedDriver;

  constructor(
    private readonly memory: GuestMemory,
    readonly size: number,
    base: number,
    eventIdx: boolean,
    indirect: boolean,
  ) {
    const d = (this.d = FakePackedDriver.at(memory, size, base, DRIVER_HEAP));
    const q = PackedQueue.create(memory, d.config({ eventIdx, indirect }));
    if (!(q instanceof PackedQueue)) throw q;
    this.queue = q;
    // The device writes used descriptors into the ring itself: no part of it is stable.
    this.rings = { stable: undefined, start: d.desc, end: d.deviceArea + EVENT_SUPPRESSION_SIZE };
  }

  post(bufs: readonly Buf[], indirect: boolean): number {
    return this.d.addChain(driverBuffers(bufs), { indirect });
  }

  takeUsed(): UsedElement[] {
    return this.d.takeUsed();
  }

  resetHeap(): void {
    this.d.resetHeap();
  }

  get kickBasis(): string {
    return `packed ring: device event flags ${this.d.deviceEventFlags & 3}`;
  }

  kickWanted(): boolean {
    // The device's event suppression flags (§2.8.10); this device never asks for RING_EVENT_FLAGS_DESC.
    return (this.d.deviceEventFlags & 3) !== RING_EVENT_FLAGS_DISABLE;
  }

  deviceSide(): string {
    const ring = this.memory.read(this.d.desc, 16 * this.size);
    const area = this.memory.read(this.d.deviceArea, EVENT_SUPPRESSION_SIZE);
    return Buffer.concat([ring, area]).toString('base64');
  }
}

/** Used elements of a chaos batch: anything at all, which a strict fake driver may refuse to read. */
function drainChaos(d: QueueDriver): void {
  try {
    d.takeUsed();
  } catch {
    // garbage in the used ring: the rings are abandoned anyway
  }
}

/**
 * One activation, as the runner makes it (runner.ts): validated split or packed queues over fresh rings, a
 * context whose needsReset stops the backend at once (backend.reset(), its drain promise kept), kicks only while
 * active.
 */
class Guest {
  readonly drivers: QueueDriver[] = [];
  readonly interrupts: number[] = [];
  readonly resets: string[] = [];
  readonly ctx: VirtioQueueContext;
  drain: Promise<void> | undefined;
  dead = false;

  constructor(
    memory: GuestMemory,
    private readonly backend: VirtioBackend,
    generation: number,
    sizes: readonly number[],
    features: bigint,
    readonly packed: boolean,
    readonly eventIdx: boolean,
    readonly indirect: boolean,
    private readonly where: () => string,
  ) {
    sizes.forEach((size, i) => {
      const base = SLOTS_BASE + ((generation % 2) * sizes.length + i) * SLOT_SIZE;
      this.drivers.push(
        packed
          ? new PackedDriver(memory, size, base, eventIdx, indirect)
          : new SplitDriver(memory, size, base, eventIdx, indirect),
      );
    });
    const queues = this.drivers.map((d) => d.queue);
    this.ctx = {
      memory,
      queues,
      features,
      interrupt: (q) => {
        this.interrupts.push(q);
        queues[q]?.needsNotification(); // what the runner asks before raising it
      },
      needsReset: (reason) => {
        this.resets.push(reason);
        this.stop();
      },
    };
    call(where(), () => backend.activate(this.ctx));
  }

  get rings(): RingSpan[] {
    return this.drivers.map((d) => d.rings);
  }

  /** The driver made chains available on `q`: kicks when the device asked for kicks, sometimes spuriously. */
  notify(q: number, rng: Rng, spurious = 0.1): { wanted: boolean; kicked: boolean } {
    const wanted = this.drivers[q].kickWanted();
    const kicked = !this.dead && (wanted || rng.chance(spurious));
    if (kicked) call(this.where(), () => this.backend.queueNotified(q));
    return { wanted, kicked };
  }

  /** A kick for a queue the device does not have, or while it is stopped: must be ignored. */
  strayKick(q: number): void {
    if (!this.dead) call(this.where(), () => this.backend.queueNotified(q));
  }

  /** The driver resets the device (status 0), as VirtioRunner.stopBackend does. */
  stop(): void {
    if (this.dead) return;
    this.dead = true;
    const r = call(this.where(), () => this.backend.reset());
    this.drain = r instanceof Promise ? r : undefined;
  }

  /** Resets and waits for the drain; then nothing may move on these rings, and no interrupt may come. */
  async stopAndCheck(where: string): Promise<void> {
    const used = this.drivers.map((d) => d.deviceSide());
    const interrupts = this.interrupts.length;
    const wasDead = this.dead;
    this.stop();
    await this.drain;
    await settle();
    assert.deepEqual(
      this.drivers.map((d) => d.deviceSide()),
      used,
      `${where}: the device used chains on its old rings after the reset${wasDead ? ' (needsReset)' : ''}`,
    );
    assert.equal(this.interrupts.length, interrupts, `${where}: an interrupt came after the reset`);
  }
}

/** A queue size the driver may choose: up to the device's maximum; a power of two unless packed (§2.8.10.1). */
function queueSize(rng: Rng, max: number, packed: boolean, min = 2): number {
  const options: number[] = [];
  for (let s = min; s <= max; s *= 2) options.push(s);
  if (rng.chance(0.3)) return max;
  return packed && rng.chance(0.5) ? rng.int(min, max) : rng.pick(options);
}

/** The ring format and ring features of one activation, as a driver would negotiate them. */
interface RingChoice {
  readonly packed: boolean;
  readonly eventIdx: boolean;
  readonly indirect: boolean;
  readonly bits: bigint;
}

function ringFeatures(rng: Rng): RingChoice {
  const packed = rng.chance(0.4);
  const eventIdx = rng.chance(0.5);
  const indirect = rng.chance(0.7);
  let bits = 1n << VIRTIO_F_VERSION_1;
  if (packed) bits |= 1n << VIRTIO_F_RING_PACKED;
  if (eventIdx) bits |= 1n << VIRTIO_F_RING_EVENT_IDX;
  if (indirect) bits |= 1n << VIRTIO_F_RING_INDIRECT_DESC;
  return { packed, eventIdx, indirect, bits };
}

// ---- what the device fuzzers share -----------------------------------------------------------------------------

/** The counters every device fuzzer keeps. */
interface CommonStats {
  runs: number;
  needsReset: number;
  plannedResets: number;
}

/**
 * One device's fuzzer, minus the device: the seeded generator, buffer placers below and above 4 GiB, the current
 * activation (a Guest over the device), and the run loop: open and activate a fresh device, a random number of
 * steps (batches of chains, or operations), then stop it, close it and check what the run left. Subclasses hold
 * the device's model of the spec and its checks.
 */
abstract class DeviceFuzz<D extends VirtioBackend, S extends CommonStats> {
  abstract readonly stats: S;
  protected readonly rng: Rng;
  protected readonly placers: readonly [low: Placer, high: Placer];
  /** Where this batch's transient buffers go: one of `placers`. */
  protected placer: Placer;
  protected context = '';
  /** What the run loop calls a step in failure messages. */
  protected readonly stepName: string = 'batch';
  // Set by start() before anything else uses them (shutdown() copes with a failure before that).
  protected device!: D;
  protected guest!: Guest;
  private generation = 0;

  constructor(
    protected readonly fuzz: Fuzz,
    protected readonly memory: GuestMemory,
    /** A scratch directory for the device's files (images, output), removed after the test. */
    protected readonly dir: string,
  ) {
    this.rng = fuzz.rng;
    this.placers = [new Placer(this.rng, LOW_ZONES), new Placer(this.rng, HIGH_ZONES)];
    this.placer = this.placers[0];
  }

  /** The requests (chains, frames) made so far: the test runs until they reach fuzz.requests. */
  abstract get requestsMade(): number;

  /** Opens a fresh device and activates it; returns how many steps the run makes. */
  protected abstract start(run: number): number | Promise<number>;

  protected abstract step(): Promise<void>;

  /** The end of the run, before the device is closed: by default a reset, after which nothing may move. */
  protected async finish(_run: number): Promise<void> {
    await this.guest.stopAndCheck(this.where());
  }

  /** The end of the run, after the device is closed: what it left behind. */
  protected checkRun(): void {}

  protected where = (): string => `seed ${this.fuzz.seed} ${this.context}`;

  async run(): Promise<void> {
    const run = this.stats.runs++;
    this.context = `run ${run}`;
    const steps = await this.start(run);
    for (let i = 0; i < steps && this.requestsMade < this.fuzz.requests; i++) {
      this.context = `run ${run} ${this.stepName} ${i}`;
      await this.step();
    }
    this.context = `run ${run} end`;
    await this.finish(run);
    call(this.where(), () => this.device.close());
    this.checkRun();
  }

  /** After a failure too: nothing may be left that writes guest RAM once the test unmaps it. */
  async shutdown(): Promise<void> {
    try {
      this.guest?.stop();
      await this.guest?.drain;
      this.device?.close();
    } catch {
      // the failure being reported matters more
    }
  }

  /** A new activation of the device over fresh rings (ring slots alternate, so the old rings stay inspectable). */
  protected attach(sizes: readonly number[], ring: RingChoice, features: bigint): void {
    this.guest = new Guest(
      this.memory,
      this.device,
      this.generation++,
      sizes,
      features,
      ring.packed,
      ring.eventIdx,
      ring.indirect,
      this.where,
    );
  }

  /** A batch's transient buffers: below or above 4 GiB, the zones empty again, readable ones maybe over a ring. */
  protected pickPlacer(): void {
    this.placer = this.placers[this.rng.chance(0.3) ? 1 : 0];
    this.placer.reset();
    this.placer.rings = this.guest.rings;
  }

  /**
   * Makes a chain available, through an indirect table if asked (sometimes after some direct descriptors);
   * undefined when the ring or the indirect heap is full: the driver would wait.
   */
  protected post(d: QueueDriver, bufs: readonly Buf[], indirect: boolean): number | undefined {
    const directFirst = indirect && this.rng.chance(0.15) ? this.rng.below(bufs.length) : 0;
    try {
      return d.post(bufs, indirect, directFirst);
    } catch {
      return undefined;
    }
  }

  /**
   * Posts a chain of `bufs` (readable part already written) with its writable part pre-filled: indirect or not,
   * and now and then, outside chaos, malformed so that the queue refuses it (`bad`: the needsReset reason).
   */
  protected postChain(
    d: QueueDriver,
    bufs: Buf[],
    chaos: boolean,
  ): { head: number; bad: RegExp | undefined } | undefined {
    const rng = this.rng;
    let bad: RegExp | undefined;
    let indirect = this.guest.indirect && rng.chance(0.4);
    if (!chaos && rng.chance(0.02)) {
      const f = queueFault(rng, bufs, this.guest.indirect);
      indirect = f.indirect;
      bad = f.reason;
    }
    prefill(this.memory, bufs);
    const head = this.post(d, bufs, indirect);
    return head === undefined ? undefined : { head, bad };
  }

  /**
   * Kicks queue `q` for a batch of `chains` new chains, the first `served` of them requests (`failure`: the
   * reason a malformed one after them must give), and collects the used elements: all of them, or after a few
   * event-loop turns (a planned reset, sometimes when nothing is malformed) what came before the driver reset.
   */
  protected async kickAndCollect(
    q: number,
    chains: number,
    served: number,
    failure: RegExp | undefined,
    what: string,
  ): Promise<{ used: UsedElement[]; planned: boolean }> {
    const rng = this.rng;
    const g = this.guest;
    const d = g.drivers[q];
    const before = g.interrupts.length;
    const { wanted } = g.notify(q, rng);
    if (chains)
      assert.ok(wanted, `${this.where()}: the idle device asked not to be kicked (lost wake-up; ${d.kickBasis})`);
    const used: UsedElement[] = [];
    const planned = !failure && rng.chance(0.1);
    if (planned) {
      this.stats.plannedResets++;
      for (let i = rng.below(3); i > 0; i--) await tick();
      used.push(...d.takeUsed());
      await g.stopAndCheck(this.where());
    } else {
      await until(
        () => {
          used.push(...d.takeUsed());
          return used.length >= served && (!failure || g.resets.length > 0);
        },
        () => `${served} ${what} to be used (${used.length} so far)`,
      );
      await tick(); // a continuation scheduled by the last turn finds the ring empty: the device is idle after it
    }
    assert.ok(used.length <= served, `${this.where()}: more chains used than served`);
    if (used.length) assert.ok(g.interrupts.slice(before).includes(q), `${this.where()}: no interrupt`);
    return { used, planned };
  }

  /** A malformed chain (`failure`: the reason it must give) made the device need a reset, once; else nothing did. */
  protected checkNeedsReset(failure: RegExp | undefined, culprit = 'a malformed chain'): void {
    const g = this.guest;
    if (failure) {
      this.stats.needsReset++;
      assert.equal(g.resets.length, 1, `${this.where()}: ${culprit} must make the device need a reset`);
      assert.match(g.resets[0], failure, `${this.where()}: needsReset reason`);
      checkReason(g.resets[0], this.where());
    } else {
      assert.deepEqual(g.resets, [], `${this.where()}: needsReset for valid chains`);
    }
  }

  /** Resets the device and checks that nothing moves after the drain, and that any needsReset was the driver's. */
  protected async stopChecked(): Promise<void> {
    await this.guest.stopAndCheck(this.where());
    for (const reason of this.guest.resets) checkReason(reason, this.where());
  }

  /** The end of a chaos batch: whatever the device did, it stops cleanly and blames only the driver. */
  protected async endChaos(drivers: readonly QueueDriver[]): Promise<void> {
    await quiet(this.guest);
    for (const d of drivers) drainChaos(d);
    await this.stopChecked();
  }
}

/** Summary lines, as test diagnostics. */
function report(t: TestContext, what: string, lines: string[]): void {
  for (const line of lines) t.diagnostic(`${what}: ${line}`);
}

/**
 * One device's test: prints the seed, makes guest RAM and a scratch directory, runs fresh devices until the
 * fuzzer has made its requests, releases everything even after a failure, then prints `summary` of the stats.
 */
async function fuzzDevice<F extends DeviceFuzz<VirtioBackend, CommonStats>>(
  t: TestContext,
  what: string,
  seedOffset: number,
  make: (fuzz: Fuzz, memory: GuestMemory, dir: string) => F | Promise<F>,
  summary: (s: F['stats'], seconds: string) => string[],
): Promise<F['stats']> {
  const fuzz = fuzzSetup(t, what, seedOffset);
  const memory = GuestMemory.allocateRanges(RAM);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `partita-${what}-fuzz-`));
  let f: F | undefined;
  let started = 0;
  try {
    f = await make(fuzz, memory, dir);
    started = performance.now();
    while (f.requestsMade < fuzz.requests) await f.run();
  } finally {
    await f?.shutdown();
    memory.release();
    fs.rmSync(dir, { recursive: true, force: true });
  }
  report(t, what, summary(f.stats, ((performance.now() - started) / 1000).toFixed(1)));
  return f.stats;
}

// ---- virtio-blk ------------------------------------------------------------------------------------------------

interface WriteRange {
  readonly offset: number;
  readonly length: number;
  /** The bytes; undefined for zeros (discard, write-zeroes). */
  readonly data: Uint8Array | undefined;
}

interface BlockRequest {
  readonly queue: number;
  readonly head: number;
  readonly bufs: readonly Buf[];
  readonly readable: number;
  readonly writable: number;
  readonly kind: string;
  /** The needsReset reason this chain must cause: it is not a request (§5.2.6) or not a valid chain. */
  readonly structural: RegExp | undefined;
  readonly statusGpa: number;
  /** Statuses the spec allows for it (filled in when the batch is complete: its bytes may overlap rings). */
  expect: readonly number[];
  read: { offset: number; length: number } | undefined;
  write: WriteRange[] | undefined;
  /** GET_ID: serial bytes expected in the data part; -1 for other types. */
  idBytes: number;
  used: UsedElement | undefined;
}

/**
 * The image as the spec says it must be: bytes written by requests that completed OK. A byte several requests
 * of one batch wrote (in flight together, so in any order), or that a request abandoned by a reset may or may not
 * have written, becomes unknown until a later write settles it.
 */
class Shadow {
  readonly bytes: Uint8Array;
  readonly known: Uint8Array;
  private readonly stamp: Int32Array;
  private readonly first: Uint8Array;
  private readonly multi: Uint8Array;
  private readonly sure: Uint8Array;
  private batch = 0;
  private touched: number[] = [];
  private writers: { ranges: readonly WriteRange[]; definite: boolean }[] = [];

  constructor(initial: Uint8Array) {
    const n = initial.length;
    this.bytes = new Uint8Array(initial);
    this.known = new Uint8Array(n).fill(1);
    this.stamp = new Int32Array(n);
    this.first = new Uint8Array(n);
    this.multi = new Uint8Array(n);
    this.sure = new Uint8Array(n);
  }

  /** The batch's writers: `definite` ones completed OK; the others were abandoned by a reset. */
  begin(writers: { ranges: readonly WriteRange[]; definite: boolean }[]): void {
    this.batch++;
    this.touched = [];
    this.writers = writers;
    for (const w of writers) {
      for (const r of w.ranges) {
        for (let i = 0; i < r.length; i++) {
          const b = r.offset + i;
          const v = r.data ? r.data[i] : 0;
          if (this.stamp[b] !== this.batch) {
            this.stamp[b] = this.batch;
            this.first[b] = v;
            this.multi[b] = 0;
            this.sure[b] = w.definite ? 1 : 0;
            this.touched.push(b);
          } else {
            if (this.first[b] !== v) this.multi[b] = 1;
            if (w.definite) this.sure[b] = 1;
          }
        }
      }
    }
  }

  /** Whether a read in this batch may return `v` at byte `b` (before or after any of the batch's writes). */
  allowed(b: number, v: number): boolean {
    if (!this.known[b] || this.bytes[b] === v) return true;
    if (this.stamp[b] !== this.batch) return false;
    if (!this.multi[b]) return this.first[b] === v;
    return this.writers.some((w) =>
      w.ranges.some((r) => b >= r.offset && b < r.offset + r.length && (r.data ? r.data[b - r.offset] : 0) === v),
    );
  }

  commit(): void {
    for (const b of this.touched) {
      if (this.multi[b]) {
        this.known[b] = 0;
      } else if (this.sure[b]) {
        this.bytes[b] = this.first[b];
        this.known[b] = 1;
      } else if (!(this.known[b] && this.bytes[b] === this.first[b])) {
        this.known[b] = 0;
      }
    }
    this.touched = [];
  }

  resync(file: Uint8Array): void {
    this.bytes.set(file);
    this.known.fill(1);
  }

  get unknown(): number {
    return this.known.reduce((n, k) => n + (k ? 0 : 1), 0);
  }
}

interface BlockStats {
  runs: number;
  batches: number;
  chaosBatches: number;
  requests: number;
  byStatus: Map<string, number>;
  byKind: Map<string, number>;
  needsReset: number;
  plannedResets: number;
  abandoned: number;
  readBytesChecked: number;
  bytesWritten: number;
  unknownAtEnd: number;
  imageBytes: number;
}

const STATUS_NAME: Record<number, string> = {
  [VIRTIO_BLK_S_OK]: 'OK',
  [VIRTIO_BLK_S_IOERR]: 'IOERR',
  [VIRTIO_BLK_S_UNSUPP]: 'UNSUPP',
};

const bump = (m: Map<string, number>, k: string, n = 1): void => void m.set(k, (m.get(k) ?? 0) + n);

function blockHeader(type: number, reserved: number, sector: bigint): Uint8Array {
  const b = new Uint8Array(16);
  const v = new DataView(b.buffer);
  v.setUint32(0, type >>> 0, true);
  v.setUint32(4, reserved >>> 0, true);
  v.setBigUint64(8, BigInt.asUintN(64, sector), true);
  return b;
}

class BlockFuzz extends DeviceFuzz<VirtioBlock, BlockStats> {
  readonly stats: BlockStats = {
    runs: 0,
    batches: 0,
    chaosBatches: 0,
    requests: 0,
    byStatus: new Map(),
    byKind: new Map(),
    needsReset: 0,
    plannedResets: 0,
    abandoned: 0,
    readBytesChecked: 0,
    bytesWritten: 0,
    unknownAtEnd: 0,
    imageBytes: 0,
  };
  // per run
  private image = '';
  private capacity = 0;
  private readOnly = false;
  private serial = new Uint8Array(ID_BYTES);
  private queueCount = 1;
  private sizes: number[] = [];
  private features = 0n;
  private deviceQueueSize = 0;
  private shadow!: Shadow;
  /** Sector ranges valid requests of this batch already target (ordered batches avoid overlapping them). */
  private reserved: [bigint, bigint][] = [];
  private ordered = false;

  override get requestsMade(): number {
    return this.stats.requests;
  }

  protected override start(run: number): number {
    const rng = this.rng;
    this.capacity = rng.chance(0.1) ? rng.pick([1, 8, 9]) : 128; // 64 KiB mostly
    const size = this.capacity * 512;
    const initial = rng.bytes(size);
    this.image = path.join(this.dir, `fuzz-${run}.img`);
    fs.writeFileSync(this.image, initial);
    this.shadow = new Shadow(initial);
    this.readOnly = rng.chance(0.15);
    this.queueCount = rng.chance(0.5) ? 2 : 1;
    const serialText = rng.pick(['', 'S', 'PARTITA-FUZZ', 'x'.repeat(ID_BYTES), 'é'.repeat(10)]);
    this.serial = new Uint8Array(ID_BYTES);
    this.serial.set(Buffer.from(serialText, 'utf8').subarray(0, ID_BYTES));
    this.deviceQueueSize = queueSize(rng, 256, false, 4);
    const handle = openBlock({
      path: this.image,
      readOnly: this.readOnly,
      serial: serialText,
      queues: this.queueCount,
      queueSize: this.deviceQueueSize,
    });
    assert.deepEqual(structuredClone(handle), handle, 'the handle is a plain object');
    this.device = new VirtioBlock(handle);
    this.activate();
    return 1 + rng.below(30);
  }

  /** The image holds what the requests that completed OK wrote, and is still its size. */
  protected override checkRun(): void {
    const size = this.capacity * 512;
    const file = new Uint8Array(fs.readFileSync(this.image));
    assert.equal(file.length, size, `${this.where()}: the image changed size`);
    for (let b = 0; b < size; b++) {
      if (this.shadow.known[b] && file[b] !== this.shadow.bytes[b]) {
        assert.fail(
          `${this.where()}: image byte ${b} (sector ${b >> 9}) is 0x${file[b].toString(16)}, ` +
            `the requests that completed OK left 0x${this.shadow.bytes[b].toString(16)}`,
        );
      }
    }
    this.stats.unknownAtEnd += this.shadow.unknown;
    this.stats.imageBytes += size;
    fs.rmSync(this.image);
  }

  private activate(): void {
    const rng = this.rng;
    const ring = ringFeatures(rng);
    this.sizes = Array.from({ length: this.queueCount }, () => queueSize(rng, this.deviceQueueSize, ring.packed));
    let features = this.device.info.features | ring.bits;
    if (rng.chance(0.25)) features &= ~(1n << VIRTIO_BLK_F_FLUSH); // write-through: every write fdatasync'd
    this.features = features;
    this.attach(this.sizes, ring, features);
  }

  private pickSector(sectors: number): bigint {
    const rng = this.rng;
    const cap = BigInt(this.capacity);
    const n = BigInt(sectors);
    if (n <= cap && rng.chance(0.65)) {
      let s = 0n;
      for (let tries = 0; tries < (this.ordered ? 8 : 1); tries++) {
        s = BigInt(rng.below(Number(cap - n) + 1));
        if (!this.reserved.some(([a, b]) => s < b && s + n > a)) break;
      }
      this.reserved.push([s, s + n]);
      return s;
    }
    return BigInt.asUintN(
      64,
      rng.pick([
        0n,
        cap - 1n,
        cap,
        cap + 1n,
        cap - n,
        cap - n + 1n,
        2n ** 32n - 1n,
        2n ** 32n,
        2n ** 53n - 1n,
        2n ** 53n,
        2n ** 55n,
        2n ** 63n,
        2n ** 64n - 1n,
        2n ** 64n - n,
        rng.u64(),
        BigInt(rng.u32()),
      ]),
    );
  }

  private dataLength(): number {
    const rng = this.rng;
    const cap = this.capacity;
    switch (rng.below(20)) {
      case 0:
        return 0;
      case 1:
      case 2:
        return 1 + rng.below(8191); // mostly not a multiple of 512
      case 3:
        return 512 * rng.below(cap + 3); // maybe past the end
      case 4:
        return cap * 512;
      case 5:
        return rng.chance(0.5) ? 512 * rng.int(8 * 1024, 128 * 1024) : rng.int(MIB, 96 * MIB); // huge
      default:
        return 512 * (1 + rng.below(Math.min(cap, 16)));
    }
  }

  /** One request's shape: what the readable part says and how long the writable part is. */
  private shape(): { kind: string; payload: Uint8Array; readable: number; writable: number } {
    const rng = this.rng;
    const junk = (): Uint8Array => (rng.chance(0.1) ? rng.bytes(1 + rng.below(600)) : new Uint8Array(0));
    const reserved = rng.chance(0.3) ? rng.u32() : 0;
    const roll = rng.below(100);
    if (roll < 27) {
      const n = this.dataLength();
      const body = junk();
      return {
        kind: 'IN',
        payload: concat(blockHeader(VIRTIO_BLK_T_IN, reserved, this.pickSector(Math.ceil(n / 512))), body),
        readable: 16 + body.length,
        writable: n + 1,
      };
    }
    if (roll < 54) {
      const n = this.dataLength();
      const header = blockHeader(VIRTIO_BLK_T_OUT, reserved, this.pickSector(Math.ceil(n / 512)));
      // Data beyond 1 MiB is never read by a correct device (it cannot fit the image): it stays whatever RAM holds.
      return {
        kind: 'OUT',
        payload: concat(header, rng.bytes(Math.min(n, MIB))),
        readable: 16 + n,
        writable: 1 + (rng.chance(0.1) ? rng.below(600) : 0),
      };
    }
    if (roll < 59) {
      const body = junk();
      return {
        kind: 'FLUSH',
        payload: concat(blockHeader(VIRTIO_BLK_T_FLUSH, reserved, rng.chance(0.5) ? 0n : rng.u64()), body),
        readable: 16 + body.length,
        writable: 1 + (rng.chance(0.1) ? rng.below(64) : 0),
      };
    }
    if (roll < 66) {
      const body = junk();
      return {
        kind: 'GET_ID',
        payload: concat(blockHeader(VIRTIO_BLK_T_GET_ID, reserved, rng.u64()), body),
        readable: 16 + body.length,
        writable: 1 + rng.pick([0, 1, 4, 19, 20, 21, 64, rng.below(600)]),
      };
    }
    if (roll < 90) {
      const discard = rng.chance(0.5);
      const type = discard ? VIRTIO_BLK_T_DISCARD : VIRTIO_BLK_T_WRITE_ZEROES;
      const count = rng.pick([1, 1, 2, 3, 4, 0, MAX_DISCARD_SEGMENTS, rng.int(5, 15), rng.int(17, 20)]);
      const segs = new Uint8Array(16 * count);
      const v = new DataView(segs.buffer);
      for (let i = 0; i < count; i++) {
        const sectors = rng.pick([
          1 + rng.below(16),
          1 + rng.below(16),
          0,
          this.capacity,
          MAX_DISCARD_SECTORS + 1,
          rng.u32(),
          1 + rng.below(this.capacity),
        ]);
        const flags = rng.chance(0.8)
          ? !discard && rng.chance(0.5)
            ? 1
            : 0
          : rng.pick([1, 2, 3, rng.u32(), 0x80000000]);
        v.setBigUint64(16 * i, this.pickSector(Math.min(sectors, this.capacity + 1)), true);
        v.setUint32(16 * i + 8, sectors >>> 0, true);
        v.setUint32(16 * i + 12, flags >>> 0, true);
      }
      // A torn segment list: bytes cut off or added.
      let body: Uint8Array = segs;
      if (rng.chance(0.1)) {
        body = rng.chance(0.5)
          ? segs.subarray(0, Math.max(0, segs.length - rng.int(1, 15)))
          : concat(segs, rng.bytes(rng.int(1, 15)));
      }
      return {
        kind: discard ? 'DISCARD' : 'WRITE_ZEROES',
        payload: concat(blockHeader(type, reserved, rng.u64()), body),
        readable: 16 + body.length,
        writable: 1 + (rng.chance(0.1) ? rng.below(64) : 0),
      };
    }
    const type = rng.pick([2, 3, 5, 6, 7, 9, 10, 12, 14, 15, 16, 17, 18, 0x80000000, 0x80000001, rng.u32()]);
    const body = junk();
    return {
      kind: 'other type',
      payload: concat(blockHeader(type, reserved, rng.u64()), body),
      readable: 16 + body.length,
      writable: 1 + rng.below(64),
    };
  }

  /** Builds, places and publishes one request on queue `q`; undefined when the ring or the zones are full. */
  private request(q: number, chaos: boolean): BlockRequest | undefined {
    const rng = this.rng;
    const d = this.guest.drivers[q];
    const s = this.shape();
    if (s.readable > 4 * MIB || s.writable > 4 * MIB) {
      if (this.placer.hugeRoom() < Math.max(s.readable, s.writable) + 4 * MIB) return undefined;
    }
    const many =
      this.guest.indirect && rng.chance(0.01) && s.readable + s.writable > 1100 && s.readable + s.writable < MIB;
    const maxParts = many ? 1100 : rng.chance(0.1) ? 12 : 4;
    // Readable part: the header may be split anywhere, even inside its fields.
    const readLens = pieces(rng, s.readable, s.readable > 4 * MIB ? 2 : maxParts);
    // Writable part: Linux puts the status byte in a buffer of its own; others end the data with it.
    let writeLens: number[];
    const mode = rng.below(10);
    if (mode < 6) writeLens = [...(s.writable > 1 ? pieces(rng, s.writable - 1, maxParts) : []), 1];
    else writeLens = pieces(rng, s.writable, maxParts);
    if (mode === 9) writeLens.push(...Array.from({ length: 1 + rng.below(2) }, () => 0)); // empty buffers after the status
    let indirect = this.guest.indirect && (many || rng.chance(0.4));
    const malformed = !chaos && rng.chance(0.02);
    const malformation = malformed ? rng.below(4) : -1;
    if (malformation === 0) writeLens = rng.chance(0.5) ? [] : [0]; // no status byte
    if (malformation === 1) readLens.splice(0, readLens.length, ...pieces(rng, rng.below(16), 3)); // short header
    const readBufs = layout(this.placer, rng, readLens, false, chaos);
    const writeBufs = layout(this.placer, rng, writeLens, true, chaos);
    if (!readBufs || !writeBufs) return undefined;
    const bufs = [...readBufs, ...writeBufs];
    let structural: RegExp | undefined;
    let fault: QueueFault | undefined;
    if (malformation >= 2) {
      const f = queueFault(rng, bufs, this.guest.indirect);
      fault = f.fault;
      indirect = f.indirect;
      structural = f.reason;
    } else {
      // §5.2.6: a header of 16 device-readable bytes and a device-writable status byte, or it is no request at
      // all (a readable buffer placed over a ring is cut at the ring's end, so this is decided after placement).
      const r = sum(bufs, false);
      const w = sum(bufs, true);
      if (w < 1)
        structural = r < 16 ? /has no device-writable status byte|-byte header/ : /has no device-writable status byte/;
      else if (r < 16) structural = /-byte header; 16 needed/;
    }
    writeReadable(this.memory, bufs, s.payload);
    prefill(this.memory, bufs);
    const statusGpa = fault ? -1 : lastWritableByte(bufs);
    if (statusGpa >= 0 && !chaos) this.memory.writeU8(statusGpa, STATUS_UNSET);
    const head = this.post(d, bufs, indirect);
    if (head === undefined) return undefined;
    return {
      queue: q,
      head,
      bufs,
      readable: sum(bufs, false),
      writable: sum(bufs, true),
      kind: malformed ? `malformed (${fault ?? (malformation === 0 ? 'no status' : 'short header')})` : s.kind,
      structural,
      statusGpa,
      expect: [],
      read: undefined,
      write: undefined,
      idBytes: -1,
      used: undefined,
    };
  }

  /** The spec's answer to a request, from the bytes the device will see (virtio 1.2 §5.2.6, §5.2.6.2). */
  private predict(r: BlockRequest): void {
    const header = partBytes(this.memory, r.bufs, false, 0, 16);
    const v = new DataView(header.buffer, header.byteOffset, 16);
    const type = v.getUint32(0, true);
    const sector = v.getBigUint64(8, true);
    const cap = BigInt(this.capacity);
    const inRange = (s: bigint, n: bigint): boolean => s <= cap && n <= cap - s;
    switch (type) {
      case VIRTIO_BLK_T_IN:
      case VIRTIO_BLK_T_OUT: {
        const out = type === VIRTIO_BLK_T_OUT;
        const length = out ? r.readable - 16 : r.writable - 1;
        if (out && this.readOnly) r.expect = [VIRTIO_BLK_S_IOERR];
        else if (length % 512 !== 0 || !inRange(sector, BigInt(length / 512))) r.expect = [VIRTIO_BLK_S_IOERR];
        else {
          r.expect = [VIRTIO_BLK_S_OK];
          const offset = Number(sector) * 512;
          if (length > 0 && out)
            r.write = [{ offset, length, data: partBytes(this.memory, r.bufs, false, 16, length) }];
          if (length > 0 && !out) r.read = { offset, length };
        }
        return;
      }
      case VIRTIO_BLK_T_FLUSH:
        r.expect = [VIRTIO_BLK_S_OK];
        return;
      case VIRTIO_BLK_T_GET_ID:
        r.expect = [VIRTIO_BLK_S_OK];
        r.idBytes = Math.min(ID_BYTES, r.writable - 1);
        return;
      case VIRTIO_BLK_T_DISCARD:
      case VIRTIO_BLK_T_WRITE_ZEROES: {
        if (this.readOnly) {
          r.expect = [VIRTIO_BLK_S_UNSUPP]; // not offered on a read-only disk
          return;
        }
        const discard = type === VIRTIO_BLK_T_DISCARD;
        const payload = r.readable - 16;
        const count = payload / 16;
        if (payload % 16 !== 0 || count < 1 || count > MAX_DISCARD_SEGMENTS) {
          r.expect = [VIRTIO_BLK_S_IOERR];
          return;
        }
        const segs = partBytes(this.memory, r.bufs, false, 16, payload);
        const sv = new DataView(segs.buffer, segs.byteOffset, segs.byteLength);
        let flagsBad = false;
        let rangeBad = false;
        const ranges: WriteRange[] = [];
        for (let i = 0; i < count; i++) {
          const s = sv.getBigUint64(16 * i, true);
          const n = sv.getUint32(16 * i + 8, true);
          const flags = sv.getUint32(16 * i + 12, true);
          // §5.2.6.2: unknown flags, or UNMAP on a discard, are UNSUPP; past the end or the limits, IOERR.
          if ((flags & ~1) !== 0 || (discard && flags !== 0)) flagsBad = true;
          if (n > MAX_DISCARD_SECTORS || !inRange(s, BigInt(n))) rangeBad = true;
          else if (n > 0) ranges.push({ offset: Number(s) * 512, length: n * 512, data: undefined });
        }
        // Which error wins when a request has both is the device's choice.
        if (flagsBad && rangeBad) r.expect = [VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_S_IOERR];
        else if (flagsBad) r.expect = [VIRTIO_BLK_S_UNSUPP];
        else if (rangeBad) r.expect = [VIRTIO_BLK_S_IOERR];
        else {
          r.expect = [VIRTIO_BLK_S_OK];
          r.write = ranges;
        }
        return;
      }
      default:
        r.expect = [VIRTIO_BLK_S_UNSUPP];
    }
  }

  /** One batch of requests over the queues, checked against the model once they complete (or a reset). */
  protected override async step(): Promise<void> {
    const rng = this.rng;
    const stats = this.stats;
    stats.batches++;
    const guest = this.guest;
    this.pickPlacer();
    for (const d of guest.drivers) d.resetHeap();
    const chaos = rng.chance(0.03);
    if (chaos) stats.chaosBatches++;
    this.ordered = rng.chance(0.5);
    this.reserved = [];
    const want = 1 + rng.below(rng.chance(0.2) ? 48 : 12);
    const requests: BlockRequest[] = [];
    for (let i = 0; i < want; i++) {
      const r = this.request(rng.below(this.queueCount), chaos);
      if (r) requests.push(r);
    }
    stats.requests += requests.length;
    // Predictions only now: a readable buffer over a descriptor table sees the descriptors of later chains.
    if (!chaos) for (const r of requests) if (!r.structural) this.predict(r);
    const interruptsBefore = guest.interrupts.length;

    // Kicks, queue by queue in random order, as the driver decides them.
    const kicked: number[] = [];
    for (const q of rng.shuffle([...Array(this.queueCount).keys()])) {
      const mine = requests.filter((r) => r.queue === q);
      if (!mine.length && !rng.chance(0.1)) continue;
      const { wanted, kicked: k } = guest.notify(q, rng);
      if (mine.length && !chaos) {
        assert.ok(
          wanted,
          `${this.where()}: queue ${q}: the idle device asked not to be kicked (lost wake-up; ${guest.drivers[q].kickBasis})`,
        );
      }
      if (k) kicked.push(q);
    }
    if (rng.chance(0.05)) guest.strayKick(this.queueCount + rng.below(4));

    if (chaos) {
      await this.endChaos(guest.drivers);
      const file = fs.readFileSync(this.image);
      assert.equal(file.length, this.capacity * 512, `${this.where()}: a chaos batch changed the image's size`);
      this.shadow.resync(file);
      this.activate();
      return;
    }

    // Which requests the device serves: every chain of a kicked queue up to the first one that is not a request.
    const served: BlockRequest[] = [];
    let failure: BlockRequest | undefined;
    for (const q of kicked) {
      for (const r of requests.filter((x) => x.queue === q)) {
        if (r.structural) {
          failure = r;
          break;
        }
        served.push(r);
      }
      if (failure) break;
    }
    const lookup = new Map<string, BlockRequest>(requests.map((r) => [`${r.queue}:${r.head}`, r]));
    const take = (): void => {
      guest.drivers.forEach((d, q) => {
        for (const u of d.takeUsed()) {
          const r = lookup.get(`${q}:${u.id}`);
          assert.ok(r, `${this.where()}: queue ${q}: used element for descriptor ${u.id}, which heads no request`);
          assert.ok(!r.used, `${this.where()}: queue ${q}: request ${u.id} used twice`);
          assert.ok(
            served.includes(r),
            `${this.where()}: queue ${q}: request ${u.id} (${r.kind}) used but never served`,
          );
          r.used = u;
        }
      });
    };

    let planned = false;
    this.checkNeedsReset(failure?.structural, failure?.kind);
    if (failure) {
      take();
    } else if (rng.chance(0.07) && served.length) {
      // A driver reset with requests in flight, after a few event-loop turns of I/O.
      planned = true;
      stats.plannedResets++;
      for (let i = rng.below(6); i > 0; i--) await (rng.chance(0.7) ? tick() : sleep(1));
      take();
    } else {
      await until(
        () => {
          take();
          return served.every((r) => r.used);
        },
        () =>
          `${served.filter((r) => !r.used).length} of ${served.length} requests to complete ` +
          `(${served
            .filter((r) => !r.used)
            .map((r) => `${r.kind} on queue ${r.queue}`)
            .join(', ')})`,
      );
      await tick(); // interrupts are sent once per event-loop turn
      for (const q of new Set(served.map((r) => r.queue))) {
        assert.ok(
          guest.interrupts.slice(interruptsBefore).includes(q),
          `${this.where()}: queue ${q}: requests completed without an interrupt`,
        );
      }
    }
    const abandoned = served.filter((r) => !r.used);
    if (failure || planned) {
      // Nothing more may reach the old rings or the status bytes once the reset has drained.
      await guest.stopAndCheck(this.where());
      take();
      stats.abandoned += abandoned.length;
      for (const r of abandoned) {
        assert.ok(!r.used, `${this.where()}: request ${r.head} (${r.kind}) completed after the reset`);
        assert.equal(
          this.memory.readU8(r.statusGpa),
          STATUS_UNSET,
          `${this.where()}: the status byte of request ${r.head} (${r.kind}) was written after the reset`,
        );
      }
    }

    // What the batch may have written: requests that completed OK, and abandoned ones that might have.
    const writers = served
      .filter((r) => r.write && (!r.used || this.memory.readU8(r.statusGpa) === VIRTIO_BLK_S_OK))
      .map((r) => ({ ranges: r.write!, definite: r.used !== undefined }));
    this.shadow.begin(writers);
    for (const r of served) if (r.used) this.check(r);
    this.shadow.commit();
    stats.bytesWritten += writers.reduce((n, w) => n + w.ranges.reduce((m, x) => m + x.length, 0), 0);

    if (failure || planned) this.activate();
  }

  /** One completed request against the model. */
  private check(r: BlockRequest): void {
    const where = `${this.where()}: queue ${r.queue} request ${r.head} (${r.kind})`;
    const u = r.used!;
    assert.ok(u.len <= r.writable, `${where}: used length ${u.len} > writable length ${r.writable}`);
    const status = this.memory.readU8(r.statusGpa);
    bump(this.stats.byStatus, STATUS_NAME[status] ?? `status ${status}`);
    bump(this.stats.byKind, r.kind);
    assert.ok(
      r.expect.includes(status),
      `${where}: status ${status}, the spec says ${r.expect.map((s) => STATUS_NAME[s]).join(' or ')}`,
    );
    let written = 0;
    if (status === VIRTIO_BLK_S_OK && r.read) {
      const got = partBytes(this.memory, r.bufs, true, 0, r.read.length);
      for (let i = 0; i < got.length; i++) {
        if (!this.shadow.allowed(r.read.offset + i, got[i])) {
          const b: number = r.read.offset + i;
          assert.fail(
            `${where}: read byte ${i} (image byte ${b}, sector ${b >> 9}) is 0x${got[i].toString(16)}, ` +
              `the image holds 0x${this.shadow.bytes[b].toString(16)}`,
          );
        }
      }
      this.stats.readBytesChecked += got.length;
      written = r.read.length;
    }
    if (status === VIRTIO_BLK_S_OK && r.idBytes >= 0) {
      assert.deepEqual(
        partBytes(this.memory, r.bufs, true, 0, r.idBytes),
        this.serial.subarray(0, r.idBytes),
        `${where}: GET_ID data`,
      );
      written = r.idBytes;
    }
    // Nothing else of the writable part may have been written (an error writes only its status byte).
    checkFill(this.memory, r.bufs, written, r.writable - 1, where);
  }
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

const mapText = (m: Map<string, number>): string =>
  [...m]
    .sort((a, b) => b[1] - a[1])
    .map(([k, n]) => `${k} ${n}`)
    .join(', ');

test(
  'virtio-blk fuzz: hostile requests get the status the spec says, reads return the image, writes land only where asked',
  { timeout: TIMEOUT_MS },
  async (t) => {
    const s = await fuzzDevice(
      t,
      'virtio-blk',
      0,
      (fuzz, memory, dir) => new BlockFuzz(fuzz, memory, dir),
      (s, seconds) => [
        `${s.runs} runs, ${s.batches} batches (${s.chaosBatches} chaos), ${s.requests} requests in ${seconds} s`,
        `completed: ${mapText(s.byStatus)}; needs-reset ${s.needsReset}; planned resets ${s.plannedResets} ` +
          `(${s.abandoned} requests in flight abandoned); crashes 0`,
        `by kind: ${mapText(s.byKind)}`,
        `${s.readBytesChecked} read bytes checked against the image; ${s.bytesWritten} bytes written; ` +
          `${s.unknownAtEnd} of ${s.imageBytes} image bytes left undetermined by concurrent writes`,
      ],
    );
    assert.ok((s.byStatus.get('OK') ?? 0) > s.requests / 10, 'enough requests succeeded to check data');
    assert.ok((s.byStatus.get('IOERR') ?? 0) > 0 && (s.byStatus.get('UNSUPP') ?? 0) > 0, 'errors were exercised');
  },
);

// ---- virtio-net ------------------------------------------------------------------------------------------------

interface Conn {
  readonly socket: Socket;
  /** Frames received and not yet compared (the test empties it), and how many arrived in all. */
  readonly frames: Uint8Array[];
  received: number;
  readonly errors: string[];
}

/** The test's network: a UNIX stream server speaking QEMU's length-prefixed framing, one connection per device. */
class NetServer {
  readonly conns: Conn[] = [];
  private readonly server: Server;

  constructor(readonly path: string) {
    this.server = createServer((socket) => {
      const c: Conn = { socket, frames: [], received: 0, errors: [] };
      const decoder = new FrameDecoder();
      socket.on('data', (chunk) => {
        const e = decoder.push(chunk, (frame) => {
          c.frames.push(frame);
          c.received++;
        });
        if (e) c.errors.push(e);
      });
      socket.on('error', () => undefined);
      this.conns.push(c);
    });
  }

  listen(): Promise<void> {
    return new Promise((resolve) => this.server.listen(this.path, resolve));
  }

  close(): Promise<void> {
    for (const c of this.conns) c.socket.destroy();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

interface RxChain {
  readonly head: number;
  readonly bufs: readonly Buf[];
  readonly wl: number;
  readonly bad: RegExp | undefined;
}

interface TxChain {
  readonly head: number;
  readonly bufs: readonly Buf[];
  readonly total: number;
  readonly bad: RegExp | undefined;
}

interface NetStatsModel {
  runs: number;
  activations: number;
  ops: number;
  txChains: number;
  txSent: number;
  txDropped: number;
  txBytes: number;
  rxChains: number;
  rxFrames: number;
  rxDelivered: number;
  rxDropped: number;
  rxUsed: number;
  rxTooBig: number;
  rxLost: number;
  needsReset: number;
  plannedResets: number;
  linkKills: number;
  chaosOps: number;
}

const HDR = VIRTIO_NET_HDR_SIZE;
/** Frames the model lets wait in the device (below its pause threshold and byte cap, which would blur the model). */
const RX_PENDING_FRAMES = 200;
const RX_PENDING_BYTES = 3 * MIB;

class NetFuzz extends DeviceFuzz<VirtioNet, NetStatsModel> {
  readonly stats: NetStatsModel = {
    runs: 0,
    activations: 0,
    ops: 0,
    txChains: 0,
    txSent: 0,
    txDropped: 0,
    txBytes: 0,
    rxChains: 0,
    rxFrames: 0,
    rxDelivered: 0,
    rxDropped: 0,
    rxUsed: 0,
    rxTooBig: 0,
    rxLost: 0,
    needsReset: 0,
    plannedResets: 0,
    linkKills: 0,
    chaosOps: 0,
  };
  protected override readonly stepName = 'op';
  /** Transmit buffers below 4 GiB; receive buffers, which stay posted across operations, above. */
  private readonly txPlacer = this.placers[0];
  private readonly rxPlacer = this.placers[1];
  // per run
  private conn!: Conn;
  private logs: string[] = [];
  private mergeable = false;
  /** Per-run device counters the model predicts (compared with net.stats at the end). */
  private model = { txSent: 0, txDropped: 0, txBytes: 0, rxDelivered: 0, rxDropped: 0 };
  /** Receive chains the driver posted and the device has not used, in ring order. */
  private posted: RxChain[] = [];
  /** Frames the device holds for the guest. */
  private pending: Uint8Array[] = [];
  private pendingBytes = 0;
  /** Used receive elements the model predicts and the test has not seen yet. */
  private expectRx: { chain: RxChain; len: number; bytes: Uint8Array }[] = [];
  /** Non-empty frames the server sent this run, and how many of them the device lost to resets uncounted. */
  private sent = 0;
  private lost = 0;
  /** Frames the server must have received on this connection, in order. */
  private expectServer: Uint8Array[] = [];
  private linkDown = false;

  constructor(
    fuzz: Fuzz,
    memory: GuestMemory,
    dir: string,
    private readonly server: NetServer,
  ) {
    super(fuzz, memory, dir);
  }

  override async shutdown(): Promise<void> {
    await super.shutdown();
    await this.server.close();
  }

  /** The net fuzz's "requests": transmit chains and frames from the network. */
  override get requestsMade(): number {
    return this.stats.txChains + this.stats.rxFrames;
  }

  /** The device's side of the receive accounting, for timeout messages. */
  private rxState(): string {
    const s = this.device.stats;
    return (
      `(delivered ${s.rxFrames}, dropped ${s.rxDropped}, waiting ${this.device.rxQueuedFrames}, lost ${this.lost}; ` +
      `model: waiting ${this.pending.length}, ${this.posted.length} chains posted; log: ${this.logs.join(' | ') || 'empty'})`
    );
  }

  /** What the device has seen of the frames sent: delivered, dropped, waiting, or lost to a reset. */
  private seen(): number {
    const s = this.device.stats;
    return s.rxFrames + s.rxDropped + this.device.rxQueuedFrames + this.lost;
  }

  protected override async start(): Promise<number> {
    this.logs = [];
    this.model = { txSent: 0, txDropped: 0, txBytes: 0, rxDelivered: 0, rxDropped: 0 };
    this.posted = [];
    this.pending = [];
    this.pendingBytes = 0;
    this.expectRx = [];
    this.sent = 0;
    this.lost = 0;
    this.expectServer = [];
    this.linkDown = false;
    const conns = this.server.conns.length;
    const handle = openNet({ backend: { kind: 'socket', path: this.server.path } });
    assert.deepEqual(structuredClone(handle), handle, 'the handle is a plain object');
    this.device = new VirtioNet(handle, (m) => void this.logs.push(m));
    this.activate();
    await until(
      () => this.server.conns.length > conns,
      () => 'the device to connect',
    );
    this.conn = this.server.conns[this.server.conns.length - 1];
    // A first frame: once the server has it, the device's side of the connection is up (no early-frame queue).
    await this.tx(1);
    return 5 + this.rng.below(40);
  }

  /** One operation: transmit, post receive buffers, frames from the network, or a driver reset. */
  protected override async step(): Promise<void> {
    this.stats.ops++;
    const roll = this.rng.below(100);
    if (process.env.PARTITA_FUZZ_TRACE) console.log(`${this.context}: roll ${roll} ${this.rxState()}`);
    if (roll < 32) await this.tx();
    else if (roll < 64) await this.rxPost();
    else if (roll < 96) await this.rxSend();
    else if (roll < 98) await this.reset(false);
    else await this.reset(true);
    if (process.env.PARTITA_FUZZ_TRACE)
      console.log(
        `${this.context}: after: dead ${this.guest.dead} resets ${this.guest.resets.join(' | ')} ${this.rxState()}`,
      );
    if (this.guest.dead) await this.reactivate();
  }

  /** Sometimes the network breaks the link first; then the last receive elements are checked. */
  protected override async finish(run: number): Promise<void> {
    if (this.rng.chance(0.25)) {
      this.context = `run ${run} link kill`;
      await this.killLink();
      await this.tx();
      await this.rxPost();
      this.context = `run ${run} end`;
    }
    await this.verifyRx();
  }

  /** The device's counters are the model's, and the stream framing never broke. */
  protected override checkRun(): void {
    this.stats.rxLost += this.lost + this.device.rxQueuedFrames;
    const s = this.device.stats;
    const m = this.model;
    assert.deepEqual(
      {
        txFrames: s.txFrames,
        txDropped: s.txDropped,
        txBytes: s.txBytes,
        rxFrames: s.rxFrames,
        rxDropped: s.rxDropped,
      },
      {
        txFrames: m.txSent,
        txDropped: m.txDropped,
        txBytes: m.txBytes,
        rxFrames: m.rxDelivered,
        rxDropped: m.rxDropped,
      },
      `${this.where()}: device statistics`,
    );
    assert.deepEqual(this.conn.errors, [], `${this.where()}: the device broke the stream framing`);
  }

  private activate(): void {
    const rng = this.rng;
    this.stats.activations++;
    this.mergeable = rng.chance(0.6);
    const ring = ringFeatures(rng);
    let features = ring.bits;
    if (this.mergeable) features |= 1n << VIRTIO_NET_F_MRG_RXBUF;
    this.attach([queueSize(rng, 256, ring.packed), queueSize(rng, 256, ring.packed)], ring, features);
    this.posted = [];
    this.rxPlacer.reset();
  }

  /** After a reset or needsReset: the old rings stay still, the device starts over on new ones. */
  private async reactivate(): Promise<void> {
    await this.verifyRx();
    await this.stopChecked();
    this.activate();
  }

  private async verifyRx(): Promise<void> {
    const g = this.guest;
    const d = g.drivers[NET_RX_QUEUE];
    const used = d.takeUsed();
    for (const u of used) {
      const e = this.expectRx.shift();
      assert.ok(e, `${this.where()}: receive chain ${u.id} used (len ${u.len}) where the model expects none`);
      const where = `${this.where()}: receive chain ${e.chain.head}`;
      assert.equal(u.id, e.chain.head, `${where}: used out of order`);
      assert.ok(u.len <= e.chain.wl, `${where}: used length ${u.len} > writable length ${e.chain.wl}`);
      assert.equal(u.len, e.len, `${where}: used length`);
      const got = partBytes(this.memory, e.chain.bufs, true, 0, u.len);
      if (!Buffer.from(got).equals(Buffer.from(e.bytes))) {
        const at = got.findIndex((v, i) => v !== e.bytes[i]);
        assert.fail(
          `${where}: byte ${at} is 0x${got[at]?.toString(16)}, expected 0x${e.bytes[at]?.toString(16)} ` +
            `(header with num_buffers, then the frame)`,
        );
      }
      checkFill(this.memory, e.chain.bufs, u.len, Math.min(e.chain.wl, u.len + 64), where);
      this.stats.rxUsed++;
    }
    assert.equal(
      this.expectRx.length,
      0,
      `${this.where()}: ${this.expectRx.length} predicted receive elements missing`,
    );
  }

  // ---- receive model (§5.1.6.3, §5.1.6.4) ----

  /** Gathers chains for a packet of `need` bytes as the device must: a count, 'wait', 'too-big', or a failure. */
  private gather(need: number): number | 'wait' | 'too-big' | RegExp {
    const size = this.guest.drivers[NET_RX_QUEUE].size;
    if (!this.mergeable) {
      // One chain per packet: a packet larger than the chain in hand is dropped, the chain kept.
      if (!this.posted.length) return 'wait';
      const c = this.posted[0];
      if (c.bad) return c.bad;
      return c.wl >= need ? 1 : 'too-big';
    }
    let total = 0;
    for (let i = 0; ; i++) {
      if (i > 0 && total >= need) return i;
      if (i >= size) return 'too-big'; // the whole ring would not hold it
      if (i >= this.posted.length) return 'wait';
      const c = this.posted[i];
      if (c.bad) return c.bad;
      total += c.wl;
    }
  }

  /** Delivers waiting frames; returns the needsReset reason when a malformed chain stops the device. */
  private deliver(): RegExp | undefined {
    while (this.pending.length) {
      const frame = this.pending[0];
      const g = this.gather(HDR + frame.length);
      if (g instanceof RegExp) {
        this.lost += this.pending.length; // dropped with the device's queue, uncounted
        this.pending = [];
        this.pendingBytes = 0;
        this.posted = [];
        return g;
      }
      if (g === 'wait') return undefined;
      this.pending.shift();
      this.pendingBytes -= frame.length;
      if (g === 'too-big') {
        this.model.rxDropped++;
        this.stats.rxTooBig++;
        continue;
      }
      const packet = new Uint8Array(HDR + frame.length); // flags 0, GSO_NONE, no checksum: a plain-frame backend
      packet[10] = g & 0xff; // num_buffers (§5.1.6.4)
      packet[11] = g >> 8;
      packet.set(frame, HDR);
      let at = 0;
      for (const chain of this.posted.splice(0, g)) {
        const n = Math.min(chain.wl, packet.length - at);
        this.expectRx.push({ chain, len: n, bytes: packet.subarray(at, at + n) });
        at += n;
      }
      this.model.rxDelivered++;
      this.stats.rxDelivered++;
    }
    return undefined;
  }

  private rxChain(chaos: boolean, fresh: boolean): RxChain | undefined {
    const rng = this.rng;
    const d = this.guest.drivers[NET_RX_QUEUE];
    const roll = rng.below(100);
    let wl: number;
    if (roll < 1) wl = rng.below(HDR);
    else if (roll < 6) wl = rng.int(HDR, HDR + 8);
    else if (roll < 26) wl = rng.int(64, 1526);
    else if (roll < 56) wl = rng.int(1514, 2048) + HDR;
    else if (roll < 78) wl = rng.int(2048, 70_000);
    else if (roll < 92) wl = NET_MAX_FRAME + HDR + rng.int(-2, 2);
    else if (roll < 97) wl = rng.int(100 * KIB, MIB);
    else wl = rng.int(8 * MIB, 64 * MIB);
    if (wl > 4 * MIB && this.rxPlacer.hugeRoom() < wl + MIB) wl = 2048;
    let bufs = layout(this.rxPlacer, rng, pieces(rng, wl, 4), true, chaos);
    if (!bufs) {
      // the receive zones are full of posted buffers: start them over once they are all used
      if (!fresh || this.posted.length || this.expectRx.length) return undefined;
      this.rxPlacer.reset();
      bufs = layout(this.rxPlacer, rng, pieces(rng, wl, 4), true, chaos);
      if (!bufs) return undefined;
    }
    let bad: RegExp | undefined = wl < HDR ? /less than the 12-byte header/ : undefined;
    let indirect = this.guest.indirect && rng.chance(0.4);
    if (!chaos && rng.chance(0.01)) {
      if (rng.chance(0.5)) {
        // §5.1.6.3.1: receive buffers are device-writable only
        bufs.unshift({ gpa: NOWHERE, len: rng.below(32), writable: false, shared: true });
        bad = /device-readable buffer\(s\)/;
      } else {
        ({ indirect, reason: bad } = queueFault(rng, bufs, this.guest.indirect));
      }
    }
    prefill(this.memory, bufs);
    const head = this.post(d, bufs, indirect);
    return head === undefined ? undefined : { head, bufs, wl: sum(bufs, true), bad };
  }

  private async rxPost(): Promise<void> {
    const rng = this.rng;
    const g = this.guest;
    if (g.dead) return;
    this.rxPlacer.rings = g.rings;
    if (!this.posted.length && !this.expectRx.length) g.drivers[NET_RX_QUEUE].resetHeap();
    const chaos = rng.chance(0.02);
    const n = 1 + rng.below(rng.chance(0.2) ? 64 : 24);
    const chains: RxChain[] = [];
    for (let i = 0; i < n; i++) {
      const c = this.rxChain(chaos, chains.length === 0);
      if (!c) break;
      chains.push(c);
    }
    this.stats.rxChains += chains.length;
    if (chaos) return this.chaos(NET_RX_QUEUE);
    this.posted.push(...chains);
    const before = g.interrupts.length;
    const { wanted, kicked } = g.notify(NET_RX_QUEUE, rng, 0.2);
    if (this.pending.length && chains.length) {
      assert.ok(
        wanted,
        `${this.where()}: frames wait for buffers but the device asked not to be kicked (lost wake-up; ` +
          `${g.drivers[NET_RX_QUEUE].kickBasis})`,
      );
    }
    const failure = kicked ? this.deliver() : undefined;
    await this.afterRx(failure, before);
  }

  private async rxSend(): Promise<void> {
    const rng = this.rng;
    if (this.linkDown || this.guest.dead) return;
    const n = 1 + rng.below(rng.chance(0.1) ? 100 : 12);
    const frames: Uint8Array[] = [];
    let failure: RegExp | undefined;
    const before = this.guest.interrupts.length;
    for (let i = 0; i < n && !failure; i++) {
      const roll = rng.below(100);
      const len =
        roll < 4
          ? 0 // skipped by the framing (QEMU ignores empty frames too)
          : roll < 8
            ? rng.int(1, 13)
            : roll < 40
              ? rng.int(14, 100)
              : roll < 70
                ? rng.int(60, 1514)
                : roll < 85
                  ? rng.int(1514, 9000)
                  : roll < 96
                    ? rng.int(9000, NET_MAX_FRAME)
                    : NET_MAX_FRAME;
      if (this.pending.length >= RX_PENDING_FRAMES || this.pendingBytes + len > RX_PENDING_BYTES) break;
      const frame = rng.bytes(len);
      frames.push(frame);
      if (len === 0) continue;
      this.sent++;
      this.stats.rxFrames++;
      this.pending.push(frame);
      this.pendingBytes += len;
      failure = this.deliver(); // a frame that meets a malformed chain is the batch's last
    }
    if (!frames.length) return;
    // One stream, cut into writes at arbitrary points (length words and frames split across reads).
    const wire = Buffer.concat(frames.map((f) => encodeFrame(f)));
    const cuts = [0, ...Array.from({ length: rng.below(4) }, () => rng.below(wire.length)).sort((a, b) => a - b)];
    cuts.forEach((at, i) => this.conn.socket.write(wire.subarray(at, cuts[i + 1] ?? wire.length)));
    await until(
      () => this.seen() === this.sent && (!failure || this.guest.resets.length > 0),
      () =>
        `the device to take the frames: seen ${this.seen()} of ${this.sent} ${this.rxState()}` +
        (failure ? `, and to ask for a reset (${failure.source})` : ''),
    );
    await this.afterRx(failure, before);
  }

  private async afterRx(failure: RegExp | undefined, interruptsBefore: number): Promise<void> {
    const g = this.guest;
    if (failure) {
      this.stats.needsReset++;
      assert.ok(g.resets.length >= 1, `${this.where()}: a malformed receive chain must make the device need a reset`);
      assert.match(g.resets[0], failure, `${this.where()}: needsReset reason`);
    } else {
      assert.deepEqual(g.resets, [], `${this.where()}: needsReset for valid receive chains`);
    }
    const predicted = this.expectRx.length;
    await this.verifyRx();
    if (predicted) {
      assert.ok(
        g.interrupts.slice(interruptsBefore).includes(NET_RX_QUEUE),
        `${this.where()}: receive chains used without an interrupt`,
      );
    }
  }

  private txChain(chaos: boolean, plain: boolean): TxChain | undefined {
    const rng = this.rng;
    const d = this.guest.drivers[NET_TX_QUEUE];
    const roll = plain ? -1 : rng.below(100);
    let total: number;
    if (plain) total = HDR + 64;
    else if (roll < 1)
      total = rng.below(HDR); // shorter than the header
    else if (roll < 8)
      total = HDR; // an empty frame
    else if (roll < 12) total = HDR + 1;
    else if (roll < 42) total = rng.int(HDR + 14, HDR + 100);
    else if (roll < 72) total = rng.int(HDR + 60, HDR + 1514);
    else if (roll < 82) total = rng.int(HDR + 1514, HDR + 9000);
    else if (roll < 90) total = rng.int(HDR + 9000, NET_MAX_TX_CHAIN);
    else if (roll < 94) total = NET_MAX_TX_CHAIN;
    else if (roll < 98) total = NET_MAX_TX_CHAIN + rng.pick([1, 1, rng.int(2, 100)]);
    else total = rng.int(4 * MIB, 64 * MIB);
    if (total > 4 * MIB && this.txPlacer.hugeRoom() < total + MIB) total = HDR + 64;
    const bufs = plain
      ? [{ ...this.txPlacer.place(total, 'heap')!, writable: false }]
      : layout(this.txPlacer, rng, pieces(rng, total, rng.chance(0.1) ? 12 : 5), false, chaos);
    if (!bufs) return undefined;
    writeReadable(this.memory, bufs, rng.bytes(Math.min(total, MIB)));
    // Decided on the placed buffers: one over a ring is cut at the ring's end.
    let bad: RegExp | undefined = sum(bufs, false) < HDR ? /less than the 12-byte header/ : undefined;
    let indirect = this.guest.indirect && rng.chance(0.4);
    if (!plain && !chaos && rng.chance(0.01)) {
      if (rng.chance(0.5)) {
        // §5.1.6.2: a transmit chain is device-readable only (an empty writable buffer writes nothing)
        const len = rng.below(64);
        bufs.push({ gpa: NOWHERE, len, writable: true, shared: true });
        if (len > 0) bad = /has \d+ device-writable bytes/;
      } else {
        ({ indirect, reason: bad } = queueFault(rng, bufs, this.guest.indirect));
      }
    }
    const head = this.post(d, bufs, indirect);
    return head === undefined ? undefined : { head, bufs, total: sum(bufs, false), bad };
  }

  private async tx(count?: number): Promise<void> {
    const rng = this.rng;
    const g = this.guest;
    if (g.dead) return;
    const d = g.drivers[NET_TX_QUEUE];
    this.txPlacer.reset();
    this.txPlacer.rings = g.rings;
    d.resetHeap();
    const chaos = count === undefined && rng.chance(0.02);
    const n = count ?? 1 + rng.below(16);
    const chains: TxChain[] = [];
    for (let i = 0; i < n; i++) {
      const c = this.txChain(chaos && i > 0, count !== undefined);
      if (!c) break;
      chains.push(c);
    }
    if (count !== undefined) assert.equal(chains.length, count);
    this.stats.txChains += chains.length;
    if (chaos) return this.chaos(NET_TX_QUEUE);
    // The model, from the bytes the device will read: sent in ring order up to the first malformed chain.
    let failure: RegExp | undefined;
    const outcome: (Uint8Array | 'dropped')[] = [];
    for (const c of chains) {
      if (c.bad) {
        failure = c.bad;
        break;
      }
      const frame = c.total - HDR;
      if (frame === 0 || c.total > NET_MAX_TX_CHAIN || this.linkDown) outcome.push('dropped');
      else outcome.push(partBytes(this.memory, c.bufs, false, HDR, frame));
    }
    const before = g.interrupts.length;
    // Kicked only when the device asks for kicks: while the socket is congested it does not, and must then come
    // back by itself on 'drain' (a lost wake-up shows as a timeout below).
    g.notify(NET_TX_QUEUE, rng);
    const used: UsedElement[] = [];
    const midReset = !failure && count === undefined && rng.chance(0.04);
    if (midReset) {
      for (let i = rng.below(4); i > 0; i--) await tick();
      used.push(...d.takeUsed());
      this.stopNow(false);
      await this.afterStop();
    } else {
      await until(
        () => {
          used.push(...d.takeUsed());
          return used.length >= outcome.length && (!failure || g.resets.length > 0);
        },
        () => `${outcome.length} transmit chains to be used (${used.length} so far)${failure ? ' and a reset' : ''}`,
      );
    }
    // Every chain the device took is used at once, in ring order, with nothing written (§5.1.6.2).
    assert.ok(used.length <= outcome.length, `${this.where()}: more transmit chains used than served`);
    used.forEach((u, i) => {
      assert.equal(u.id, chains[i].head, `${this.where()}: transmit chain ${i} used out of order`);
      assert.equal(u.len, 0, `${this.where()}: transmit chain ${u.id}: used length`);
    });
    if (used.length) {
      assert.ok(g.interrupts.slice(before).includes(NET_TX_QUEUE), `${this.where()}: no transmit interrupt`);
    }
    for (const o of outcome.slice(0, used.length)) {
      if (o === 'dropped') {
        this.model.txDropped++;
        this.stats.txDropped++;
      } else {
        this.expectServer.push(o);
        this.model.txSent++;
        this.model.txBytes += o.length;
        this.stats.txSent++;
      }
    }
    if (failure) {
      this.stats.needsReset++;
      assert.match(g.resets[0] ?? '', failure, `${this.where()}: needsReset reason`);
      // The device stops serving both queues: frames waiting for receive buffers go with it, uncounted.
      this.lost += this.pending.length;
      this.pending = [];
      this.pendingBytes = 0;
      this.posted = [];
    } else if (!midReset) {
      assert.deepEqual(g.resets, [], `${this.where()}: needsReset for valid transmit chains`);
    }
    if (!this.linkDown) {
      await until(
        () => this.conn.frames.length >= this.expectServer.length || this.conn.errors.length > 0,
        () => `the network to receive ${this.expectServer.length} frames (${this.conn.frames.length} so far)`,
      );
    }
    assert.deepEqual(this.conn.errors, [], `${this.where()}: the network could not decode what the device sent`);
    assert.equal(this.conn.frames.length, this.expectServer.length, `${this.where()}: frames on the network`);
    this.conn.frames.forEach((f, i) => {
      if (!Buffer.from(f).equals(Buffer.from(this.expectServer[i])))
        assert.fail(
          `${this.where()}: frame ${i} on the network (${f.length} bytes) is not what the guest sent (${this.expectServer[i].length})`,
        );
    });
    this.conn.frames.length = 0;
    this.expectServer = [];
  }

  /** A driver reset: with frames in flight from the network (messy) or once everything has settled. */
  private async reset(messy: boolean): Promise<void> {
    if (this.guest.dead) return;
    await this.verifyRx();
    this.stopNow(messy);
    await this.afterStop();
  }

  private rxUsedAtStop = '';

  /**
   * A driver reset, synchronously: the device's waiting frames go with it, uncounted. Messy: frames are on
   * their way from the network as it happens; arriving without a driver, they must be dropped.
   */
  private stopNow(messy: boolean): void {
    const rng = this.rng;
    const g = this.guest;
    this.stats.plannedResets++;
    assert.equal(this.device.rxQueuedFrames, this.pending.length, `${this.where()}: frames waiting in the device`);
    this.lost += this.pending.length;
    this.pending = [];
    this.pendingBytes = 0;
    this.posted = [];
    if (messy && !this.linkDown) {
      const frames = Array.from({ length: 1 + rng.below(8) }, () => rng.bytes(rng.int(1, 2000)));
      this.conn.socket.write(Buffer.concat(frames.map((f) => encodeFrame(f))));
      this.sent += frames.length;
      this.stats.rxFrames += frames.length;
      this.model.rxDropped += frames.length;
    }
    this.rxUsedAtStop = g.drivers[NET_RX_QUEUE].deviceSide();
    g.stop();
  }

  private async afterStop(): Promise<void> {
    await until(
      () => this.seen() === this.sent,
      () => `the frames sent across the reset to be dropped: seen ${this.seen()} of ${this.sent} ${this.rxState()}`,
    );
    const rxUsed = this.guest.drivers[NET_RX_QUEUE].deviceSide();
    assert.equal(rxUsed, this.rxUsedAtStop, `${this.where()}: receive chain used after the reset`);
  }

  /** Chaos: writable buffers anywhere; only robustness is checked, then the device is reset. */
  private async chaos(q: number): Promise<void> {
    const g = this.guest;
    this.stats.chaosOps++;
    g.notify(q, this.rng, 1);
    await sleep(2);
    // Frames the device took are unknowable now; count what it says.
    await quiet(g);
    for (const d of g.drivers) drainChaos(d);
    this.expectRx = [];
    if (!this.linkDown) {
      await until(
        () => this.conn.received === this.device.stats.txFrames,
        () => `the network to receive the ${this.device.stats.txFrames} frames the device sent (${this.conn.received})`,
      );
    }
    this.conn.frames.length = 0;
    this.expectServer = [];
    this.pending = [];
    this.pendingBytes = 0;
    this.posted = [];
    await this.stopChecked();
    const s = this.device.stats;
    // Nothing was in flight from the network: every frame sent is now delivered, dropped, or lost with a reset.
    this.lost = this.sent - s.rxFrames - s.rxDropped;
    this.model = {
      txSent: s.txFrames,
      txDropped: s.txDropped,
      txBytes: s.txBytes,
      rxDelivered: s.rxFrames,
      rxDropped: s.rxDropped,
    };
    this.activate();
  }

  /** The network breaks the link (a frame length beyond any Ethernet frame, or a hang-up): logged, never fatal. */
  private async killLink(): Promise<void> {
    this.stats.linkKills++;
    await this.verifyRx();
    const protocol = this.rng.chance(0.5);
    if (protocol) {
      const word = Buffer.alloc(4);
      word.writeUInt32BE(NET_MAX_FRAME + 1 + this.rng.below(1000));
      this.conn.socket.write(word);
    } else {
      this.conn.socket.destroy();
    }
    await until(
      () => this.logs.some((l) => (protocol ? /protocol error/ : /closed the connection/).test(l)),
      () => `the link failure to be logged (${this.logs.join(' | ')})`,
    );
    this.linkDown = true;
    // Frames still waiting go nowhere; nothing more will arrive.
    await until(
      () => this.seen() === this.sent,
      () => `the device to settle after the link failure: seen ${this.seen()} of ${this.sent} ${this.rxState()}`,
    );
  }
}

test(
  'virtio-net fuzz: random transmit chains reach the network exactly, random frames land in random receive buffers',
  { timeout: TIMEOUT_MS },
  async (t) => {
    const s = await fuzzDevice(
      t,
      'virtio-net',
      1,
      async (fuzz, memory, dir) => {
        const server = new NetServer(path.join(dir, 'net.sock'));
        await server.listen();
        return new NetFuzz(fuzz, memory, dir, server);
      },
      (s, seconds) => [
        `${s.runs} runs (${s.activations} activations), ${s.ops} operations in ${seconds} s`,
        `transmit: ${s.txChains} chains: ${s.txSent} frames sent, ${s.txDropped} dropped (empty/oversized/link down)`,
        `receive: ${s.rxFrames} frames from the network: ${s.rxDelivered} delivered (${s.rxUsed} used elements checked), ` +
          `${s.rxTooBig} dropped as larger than the buffers, ${s.rxLost} lost with resets or left at the end; ${s.rxChains} chains posted`,
        `needs-reset ${s.needsReset}, planned resets ${s.plannedResets}, link kills ${s.linkKills}, chaos ${s.chaosOps}; crashes 0`,
      ],
    );
    assert.ok(s.txSent > 100 && s.rxUsed > 100, 'enough traffic both ways');
  },
);

// ---- virtio-console ------------------------------------------------------------------------------------------

/** What the console and rng fuzzers count: batches of chains on one queue. */
interface ChainStats extends CommonStats {
  batches: number;
  chains: number;
  bytes: number;
  /** Chains over the device's per-chain cap. */
  capped: number;
  chaos: number;
}

const chainStats = (): ChainStats => ({
  runs: 0,
  batches: 0,
  chains: 0,
  bytes: 0,
  capped: 0,
  needsReset: 0,
  plannedResets: 0,
  chaos: 0,
});

class ConsoleFuzz extends DeviceFuzz<VirtioConsole, ChainStats> {
  readonly stats = chainStats();
  /** Receive buffers, apart from the transient ones: they stay posted for the whole activation. */
  private readonly rxPlacer = new Placer(this.rng, RX_ZONES);
  private file = '';
  private expected: Buffer[] = [];
  private expectedLength = 0;
  private rxChains: { head: number; bufs: Buf[] }[] = [];

  override get requestsMade(): number {
    return this.stats.chains;
  }

  protected override start(run: number): number {
    this.file = path.join(this.dir, `console-${run}.out`);
    this.expected = [];
    this.expectedLength = 0;
    const handle = openConsole({ path: this.file });
    assert.deepEqual(structuredClone(handle), handle, 'the handle is a plain object');
    this.device = new VirtioConsole(handle);
    this.activate();
    return 1 + this.rng.below(20);
  }

  /** The console file holds exactly the output of the run. */
  protected override checkRun(): void {
    const got = fs.readFileSync(this.file);
    assert.equal(got.length, this.expectedLength, `${this.where()}: console file length`);
    assert.ok(got.equals(Buffer.concat(this.expected)), `${this.where()}: console file content`);
    fs.rmSync(this.file);
  }

  private activate(): void {
    const rng = this.rng;
    const ring = ringFeatures(rng);
    this.attach([queueSize(rng, 256, ring.packed), queueSize(rng, 256, ring.packed)], ring, ring.bits);
    this.rxChains = [];
    this.rxPlacer.reset();
  }

  /** The end of an activation: receive buffers were never touched (a file gives no input). */
  protected override async finish(): Promise<void> {
    await this.guest.stopAndCheck(this.where());
    assert.deepEqual(
      this.guest.drivers[CONSOLE_RECEIVEQ].takeUsed(),
      [],
      `${this.where()}: receive chain used with no input`,
    );
    for (const c of this.rxChains)
      checkFill(this.memory, c.bufs, 0, sum(c.bufs, true), `${this.where()}: receive chain`);
  }

  /** One batch of transmit chains (and sometimes receive buffers), the output checked once they are used. */
  protected override async step(): Promise<void> {
    const rng = this.rng;
    const g = this.guest;
    this.stats.batches++;
    const d = g.drivers[CONSOLE_TRANSMITQ];
    this.pickPlacer();
    d.resetHeap();
    if (rng.chance(0.15)) {
      // receive buffers a file-backed port must leave alone
      this.rxPlacer.rings = g.rings;
      for (let i = 1 + rng.below(3); i > 0; i--) {
        const bufs = layout(this.rxPlacer, rng, pieces(rng, rng.int(1, 4096), 3), true, false);
        if (!bufs) break;
        prefill(this.memory, bufs);
        const head = this.post(g.drivers[CONSOLE_RECEIVEQ], bufs, false);
        if (head === undefined) break;
        this.rxChains.push({ head, bufs });
      }
      g.notify(CONSOLE_RECEIVEQ, rng);
    }
    const chaos = rng.chance(0.04);
    const n = 1 + rng.below(rng.chance(0.2) ? 150 : 24);
    const chains: { head: number; bufs: Buf[]; bad: RegExp | undefined }[] = [];
    let huge = 0;
    for (let i = 0; i < n; i++) {
      const roll = rng.below(100);
      let readable =
        roll < 30
          ? rng.below(17)
          : roll < 70
            ? rng.int(17, 512)
            : roll < 90
              ? rng.int(512, 8192)
              : roll < 98
                ? rng.int(8192, 128 * KIB)
                : CONSOLE_TX_CHAIN_MAX + rng.pick([-1, 0, 1, rng.int(2, 512 * KIB)]);
      if (readable > 128 * KIB && huge++ >= 2) readable = 100;
      const bufs = layout(this.placer, rng, pieces(rng, readable, rng.chance(0.1) ? 12 : 5), false, chaos);
      if (!bufs) break;
      writeReadable(this.memory, bufs, rng.bytes(Math.min(sum(bufs, false), CONSOLE_TX_CHAIN_MAX + 16)));
      if (rng.chance(0.15)) {
        // a writable part (against §5.3.6.1): ignored, never written
        const w = layout(this.placer, rng, pieces(rng, rng.below(64), 2), true, chaos);
        if (w) bufs.push(...w);
      }
      const posted = this.postChain(d, bufs, chaos);
      if (!posted) break;
      chains.push({ ...posted, bufs });
    }
    this.stats.chains += chains.length;
    if (chaos) {
      this.stats.chaos++;
      g.notify(CONSOLE_TRANSMITQ, rng, 1);
      await this.endChaos([d]);
      // What the chaos wrote is unknowable; carry on from what the file holds.
      const now = fs.readFileSync(this.file);
      this.expected = [now];
      this.expectedLength = now.length;
      this.rxChains = [];
      this.activate();
      return;
    }
    // The model: each chain's readable bytes up to the per-chain cap, in ring order, until a malformed chain.
    const payloads: Buffer[] = [];
    let failure: RegExp | undefined;
    for (const c of chains) {
      if (c.bad) {
        failure = c.bad;
        break;
      }
      const r = sum(c.bufs, false);
      if (r > CONSOLE_TX_CHAIN_MAX) this.stats.capped++;
      payloads.push(Buffer.from(partBytes(this.memory, c.bufs, false, 0, Math.min(r, CONSOLE_TX_CHAIN_MAX))));
    }
    const { used, planned } = await this.kickAndCollect(
      CONSOLE_TRANSMITQ,
      chains.length,
      payloads.length,
      failure,
      'transmit chains',
    );
    used.forEach((u, i) => {
      assert.equal(u.id, chains[i].head, `${this.where()}: transmit chain ${i} used out of order`);
      assert.equal(u.len, 0, `${this.where()}: transmit chain ${u.id}: used length`);
    });
    for (const c of chains) {
      if (!c.bad) checkFill(this.memory, c.bufs, 0, sum(c.bufs, true), `${this.where()}: transmit chain ${c.head}`);
    }
    this.checkNeedsReset(failure);
    // Output is written synchronously, chain by chain, before the chain is used: the file has exactly these bytes.
    const appended = payloads.slice(0, used.length);
    const length = appended.reduce((n, p) => n + p.length, 0);
    const size = fs.statSync(this.file).size;
    assert.equal(
      size,
      this.expectedLength + length,
      `${this.where()}: console file grew by ${size - this.expectedLength}, not ${length}`,
    );
    if (length) {
      const fd = fs.openSync(this.file, 'r');
      const got = Buffer.alloc(length);
      fs.readSync(fd, got, 0, length, this.expectedLength);
      fs.closeSync(fd);
      assert.ok(
        got.equals(Buffer.concat(appended)),
        `${this.where()}: console output is not the chains' bytes in ring order`,
      );
    }
    this.expected.push(...appended);
    this.expectedLength += length;
    this.stats.bytes += length;
    if (failure || planned) {
      await this.finish();
      this.activate();
    }
  }
}

test(
  'virtio-console fuzz: the output file is exactly the transmit chains’ readable bytes, capped per chain, in ring order',
  { timeout: TIMEOUT_MS },
  async (t) => {
    const s = await fuzzDevice(
      t,
      'virtio-console',
      2,
      (fuzz, memory, dir) => new ConsoleFuzz(fuzz, memory, dir),
      (s, seconds) => [
        `${s.runs} runs, ${s.batches} batches, ${s.chains} transmit chains in ${seconds} s`,
        `${s.bytes} bytes of output checked (${s.capped} chains over the ${CONSOLE_TX_CHAIN_MAX}-byte cap)`,
        `needs-reset ${s.needsReset}, planned resets ${s.plannedResets}, chaos batches ${s.chaos}; crashes 0`,
      ],
    );
    assert.ok(s.bytes > 0);
  },
);

// ---- virtio-rng ------------------------------------------------------------------------------------------------

class EntropyFuzz extends DeviceFuzz<VirtioEntropy, ChainStats> {
  readonly stats = chainStats();

  override get requestsMade(): number {
    return this.stats.chains;
  }

  protected override start(): number {
    const handle = openEntropy();
    assert.deepEqual(structuredClone(handle), handle);
    this.device = new VirtioEntropy(handle);
    this.activate();
    return 1 + this.rng.below(20);
  }

  private activate(): void {
    const ring = ringFeatures(this.rng);
    this.attach([queueSize(this.rng, 256, ring.packed, 1)], ring, ring.bits);
  }

  /** One batch of requests, each checked for how much it got and that nothing else was written. */
  protected override async step(): Promise<void> {
    const rng = this.rng;
    const g = this.guest;
    this.stats.batches++;
    const d = g.drivers[ENTROPY_REQUESTQ];
    this.pickPlacer();
    d.resetHeap();
    const chaos = rng.chance(0.04);
    const n = 1 + rng.below(rng.chance(0.2) ? 200 : 24);
    const chains: { head: number; bufs: Buf[]; readData: Uint8Array; bad: RegExp | undefined }[] = [];
    for (let i = 0; i < n; i++) {
      const roll = rng.below(100);
      let wl =
        roll < 15
          ? 0
          : roll < 45
            ? rng.int(1, 64)
            : roll < 75
              ? rng.int(64, 4096)
              : roll < 88
                ? rng.int(4096, 70_000)
                : roll < 95
                  ? ENTROPY_MAX_REQUEST + rng.int(-1, 1)
                  : rng.int(MIB, 64 * MIB);
      if (wl > 4 * MIB && this.placer.hugeRoom() < wl + MIB) wl = 100;
      // §5.4.6.1: the driver must not post readable buffers; the device ignores them.
      const rl = rng.chance(0.2) ? rng.int(0, 64) : 0;
      const readBufs = layout(this.placer, rng, rl ? pieces(rng, rl, 2) : [], false, chaos);
      const writeBufs = layout(this.placer, rng, pieces(rng, wl, rng.chance(0.1) ? 12 : 4), true, chaos);
      if (!readBufs || !writeBufs) break;
      const bufs = [...readBufs, ...writeBufs];
      const readData = rng.bytes(rl);
      writeReadable(this.memory, bufs, readData);
      const posted = this.postChain(d, bufs, chaos);
      if (!posted) break;
      chains.push({
        ...posted,
        bufs,
        readData: bufs.some((b) => !b.writable && b.shared) ? new Uint8Array(0) : readData,
      });
    }
    this.stats.chains += chains.length;
    if (chaos) {
      this.stats.chaos++;
      g.notify(ENTROPY_REQUESTQ, rng, 1);
      await this.endChaos([d]);
      this.activate();
      return;
    }
    let served = chains.findIndex((c) => c.bad);
    const failure = served >= 0 ? chains[served].bad : undefined;
    if (served < 0) served = chains.length;
    const { used, planned } = await this.kickAndCollect(ENTROPY_REQUESTQ, chains.length, served, failure, 'chains');
    chains.forEach((c, i) => {
      if (c.bad) return;
      const where = `${this.where()}: chain ${c.head}`;
      const wl = sum(c.bufs, true);
      const u = used[i];
      assert.deepEqual(
        partBytes(this.memory, c.bufs, false, 0, c.readData.length),
        c.readData,
        `${where}: readable part written`,
      );
      if (!u) {
        checkFill(this.memory, c.bufs, 0, wl, `${where} (not used)`);
        return;
      }
      assert.equal(u.id, c.head, `${where}: used out of order`);
      // §5.4.6.2: the device may fill less than the buffer; the used length says how much, at most 64 KiB here.
      assert.ok(u.len <= wl && u.len <= ENTROPY_MAX_REQUEST, `${where}: used length ${u.len} (writable ${wl})`);
      assert.equal(u.len, Math.min(wl, ENTROPY_MAX_REQUEST), `${where}: used length`);
      if (wl > ENTROPY_MAX_REQUEST) this.stats.capped++;
      if (u.len >= 16) {
        const head = partBytes(this.memory, c.bufs, true, 0, Math.min(u.len, 64));
        assert.ok(
          head.some((v) => v !== FILL),
          `${where}: ${u.len} bytes used but none written`,
        );
      }
      checkFill(this.memory, c.bufs, u.len, wl, where);
      this.stats.bytes += u.len;
    });
    this.checkNeedsReset(failure);
    if (failure || planned) {
      await g.stopAndCheck(this.where());
      this.activate();
    }
  }
}

test(
  'virtio-rng fuzz: random chains get at most 64 KiB of random bytes each, the rest of every buffer untouched',
  { timeout: TIMEOUT_MS },
  async (t) => {
    const s = await fuzzDevice(
      t,
      'virtio-rng',
      3,
      (fuzz, memory, dir) => new EntropyFuzz(fuzz, memory, dir),
      (s, seconds) => [
        `${s.runs} runs, ${s.batches} batches, ${s.chains} chains in ${seconds} s`,
        `${s.bytes} random bytes delivered (${s.capped} chains over the ${ENTROPY_MAX_REQUEST}-byte cap)`,
        `needs-reset ${s.needsReset}, planned resets ${s.plannedResets}, chaos batches ${s.chaos}; crashes 0`,
      ],
    );
    assert.ok(s.bytes > 0);
  },
);
