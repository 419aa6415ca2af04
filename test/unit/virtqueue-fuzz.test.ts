// Fuzzing the virtqueue walkers (split, virtio 1.2 §2.7; packed, §2.8) with a hostile driver: random and
// almost-valid descriptor tables, rings and indirect tables. Whatever the guest writes, the queue code must only
// return chains wholly inside guest RAM or VirtqueueErrors — no other exception, no guest-memory fault it
// did not foresee, no unbounded walk.
//
// PARTITA_FUZZ_SEED=<n> replays a run (the seed is printed); PARTITA_FUZZ_ITERATIONS=<n> changes its length.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomInt } from 'node:crypto';
import { GuestMemory } from '../../src/base/guest-memory.js';
import { FOUR_GIB } from '../../src/arch/x86_64/layout.js';
import { GIB, KIB, MIB } from '../../src/base/units.js';
import {
  availRingSize,
  DescriptorChain,
  descTableSize,
  MAX_INDIRECT_ENTRIES,
  SplitQueue,
  usedRingSize,
  VirtqueueError,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  type SplitQueueConfig,
} from '../../src/devices/virtio/queue.js';
import {
  PackedChain,
  PackedQueue,
  VIRTQ_DESC_F_AVAIL,
  VIRTQ_DESC_F_USED,
  type PackedQueueConfig,
} from '../../src/devices/virtio/packed-queue.js';
import { FakeDriver, FakePackedDriver, type DriverBuffer } from '../support/virtq-driver.js';
import { Rng } from '../support/rng.js';

/** A guest memory and where in it the fuzzer puts rings, tables and buffers. */
interface Arena {
  readonly name: string;
  readonly memory: GuestMemory;
  readonly regions: readonly { gpa: number; size: number }[];
  /** Places rings and a heap for a queue of `size`; undefined when they do not fit. */
  layout(
    rng: Rng,
    size: number,
  ): { desc: number; avail: number; used: number; heap: number; heapEnd: number } | undefined;
}

const align = (v: number, a: number): number => Math.ceil(v / a) * a;

/** Rings packed from `base`, then the heap. */
function packed(
  base: number,
  size: number,
  heapSize: number,
): { desc: number; avail: number; used: number; heap: number; heapEnd: number } {
  const desc = align(base, 16);
  const avail = desc + descTableSize(size);
  const used = align(avail + availRingSize(size), 4);
  const heap = align(used + usedRingSize(size), 16);
  return { desc, avail, used, heap, heapEnd: heap + heapSize };
}

function mainArena(memory: GuestMemory): Arena {
  const regions = memory.regions.map((r) => ({ gpa: r.gpa, size: r.size }));
  return {
    name: 'main',
    memory,
    regions,
    layout(rng, size) {
      const heap = 256 * KIB;
      const span = descTableSize(size) + availRingSize(size) + usedRingSize(size) + heap + 64;
      const bases = [
        MIB + rng.below(MIB), // low RAM
        GIB - Math.floor(descTableSize(size) / 2), // the descriptor table crosses a 1 GiB view window
        GIB - span / 2, // or the other rings do
        FOUR_GIB + rng.below(MIB), // above the MMIO hole
        regions[1].gpa + regions[1].size - span, // the end of the high region
      ];
      const base = align(rng.pick(bases), 16);
      const l = packed(base, size, heap);
      return memory.contains(l.desc, l.heapEnd - l.desc) ? l : undefined;
    },
  };
}

/** RAM that ends right after the rings: the available ring's last byte is RAM's last byte. */
function edgeArena(memory: GuestMemory): Arena {
  const end = memory.regions[0].size;
  return {
    name: 'edge',
    memory,
    regions: [{ gpa: 0, size: end }],
    layout(_rng, size) {
      const avail = end - availRingSize(size);
      const used = Math.floor((avail - usedRingSize(size)) / 4) * 4;
      const desc = Math.floor((used - descTableSize(size)) / 16) * 16;
      if (desc < 16 * KIB) return undefined;
      return { desc, avail, used, heap: 0, heapEnd: 16 * KIB };
    },
  };
}

/** Addresses and lengths a hostile driver would try. */
class Values {
  constructor(
    private readonly rng: Rng,
    private readonly arena: Arena,
    private readonly heap: number,
    private readonly heapEnd: number,
  ) {}

  addr(): bigint {
    const { rng } = this;
    const r = rng.pick(this.arena.regions);
    const end = r.gpa + r.size;
    switch (rng.below(11)) {
      case 0:
      case 1:
      case 2:
        return BigInt(this.heap + rng.below(Math.max(1, this.heapEnd - this.heap)));
      case 3:
        return BigInt(end - rng.below(64)); // the end of a region
      case 4:
        return BigInt(r.gpa + rng.below(4096));
      case 5:
        return BigInt(end + rng.below(MIB)); // just past RAM / in the hole
      case 6:
        return BigInt(rng.below(4)) * BigInt(GIB) + BigInt(rng.below(128)) - 64n; // window boundaries (and -64 → 2^64 - 64)
      case 7:
        return BigInt(rng.u32());
      case 8:
        return rng.u64();
      case 9:
        return 2n ** 64n - BigInt(rng.below(8192) + 1);
      default:
        return 0n;
    }
  }

  len(): number {
    const { rng } = this;
    switch (rng.below(10)) {
      case 0:
        return 0;
      case 1:
      case 2:
      case 3:
        return rng.below(64);
      case 4:
        return rng.below(4096);
      case 5:
        return 16 * (1 + rng.below(8));
      case 6:
        return rng.u32();
      case 7:
        return 0xffff_ffff - rng.below(16);
      case 8:
        return rng.pick(this.arena.regions).size - rng.below(64);
      default:
        return 2 ** 31;
    }
  }
}

/** A descriptor table of `entries` structured-random descriptors, as bytes. */
function randomTable(
  rng: Rng,
  values: Values,
  entries: number,
  tables: readonly { gpa: number; entries: number }[],
): Uint8Array {
  if (rng.chance(0.05)) return rng.bytes(16 * entries);
  const bytes = new Uint8Array(16 * entries);
  const dv = new DataView(bytes.buffer);
  {
    for (let i = 0; i < entries; i++) {
      let addr = values.addr();
      let len = values.len();
      const flags = rng.chance(0.9) ? rng.below(8) : rng.u16();
      const next = rng.chance(0.9) ? rng.below(entries) : rng.chance(0.5) ? entries + rng.below(4) : rng.u16();
      if (flags & VIRTQ_DESC_F_INDIRECT && tables.length && rng.chance(0.8)) {
        const t = rng.pick(tables);
        addr = BigInt(t.gpa);
        len = 16 * t.entries + (rng.chance(0.8) ? 0 : rng.pick([-16, -8, 8, 16, -16 * t.entries]));
        len = Math.max(0, len);
      }
      dv.setBigUint64(16 * i, addr, true);
      dv.setUint32(16 * i + 8, len >>> 0, true);
      dv.setUint16(16 * i + 12, flags, true);
      dv.setUint16(16 * i + 14, next, true);
    }
  }
  return bytes;
}

interface Stats {
  iterations: number;
  queues: number;
  chains: number;
  buffers: number;
  bytesRead: number;
  bytesWritten: number;
  maxWalk: number;
  errors: Map<string, number>;
  crashes: string[];
}

function count(stats: Stats, key: string): void {
  stats.errors.set(key, (stats.errors.get(key) ?? 0) + 1);
}

/** A queue size: mostly small, sometimes the extremes. */
function queueSize(rng: Rng): number {
  if (rng.chance(0.01)) return rng.pick([4096, 32768]);
  return 2 ** rng.below(9); // 1..256
}

/** Half the time a fully random ring; half the time valid chains with a few corruptions. */
function fillRandom(rng: Rng, arena: Arena, l: NonNullable<ReturnType<Arena['layout']>>, size: number): void {
  const mem = arena.memory;
  const values = new Values(rng, arena, l.heap, l.heapEnd);
  const tables: { gpa: number; entries: number }[] = [];
  let heap = l.heap;
  const nTables = rng.below(4);
  for (let t = 0; t < nTables; t++) {
    const entries = rng.chance(0.005) ? MAX_INDIRECT_ENTRIES : 1 + rng.below(rng.chance(0.5) ? 4 : 64);
    const gpa = align(heap, 16);
    if (gpa + 16 * entries > l.heapEnd) break;
    heap = gpa + 16 * entries;
    tables.push({ gpa, entries });
  }
  for (const t of tables) mem.write(t.gpa, randomTable(rng, values, t.entries, tables));
  mem.write(l.desc, randomTable(rng, values, size, tables));
  const avail = new Uint8Array(availRingSize(size));
  const dv = new DataView(avail.buffer);
  dv.setUint16(0, rng.below(2), true);
  dv.setUint16(2, rng.chance(0.9) ? rng.below(size + 1) : rng.u16(), true);
  for (let i = 0; i < size; i++) dv.setUint16(4 + 2 * i, rng.chance(0.9) ? rng.below(size) : rng.u16(), true);
  dv.setUint16(4 + 2 * size, rng.u16(), true);
  mem.write(l.avail, avail);
  mem.fill(l.used, usedRingSize(size));
}

function fillAlmostValid(
  rng: Rng,
  arena: Arena,
  l: NonNullable<ReturnType<Arena['layout']>>,
  size: number,
  indirect: boolean,
): void {
  const mem = arena.memory;
  const d = new FakeDriver(mem, { size, ...l });
  const values = new Values(rng, arena, l.heap, l.heapEnd);
  const chains = 1 + rng.below(Math.min(size, 8));
  try {
    for (let c = 0; c < chains; c++) {
      const n = 1 + rng.below(6);
      const firstWritable = rng.below(n + 1);
      const buffers: DriverBuffer[] = [];
      for (let b = 0; b < n; b++)
        buffers.push({ len: rng.below(rng.chance(0.2) ? 4096 : 64), writable: b >= firstWritable });
      const useIndirect = indirect ? rng.chance(0.5) : rng.chance(0.05);
      d.addChain(buffers, { indirect: useIndirect, directFirst: useIndirect && rng.chance(0.2) ? rng.below(n) : 0 });
    }
  } catch {
    // the heap or the descriptors ran out: fewer chains
  }
  const mutations = 1 + rng.below(3);
  for (let m = 0; m < mutations; m++) {
    const table =
      d.indirectTables.length && rng.chance(0.4) ? rng.pick(d.indirectTables) : { gpa: l.desc, entries: size };
    const at = table.gpa + 16 * rng.below(table.entries);
    switch (rng.below(12)) {
      case 0: {
        const off = at + rng.below(16);
        mem.writeU8(off, mem.readU8(off) ^ (1 << rng.below(8)));
        break;
      }
      case 1:
        mem.writeU16(at + 14, rng.pick([rng.below(table.entries), table.entries, rng.u16(), (at - table.gpa) / 16]));
        break;
      case 2:
        mem.writeU16(
          at + 12,
          mem.readU16(at + 12) | rng.pick([VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_INDIRECT]),
        );
        break;
      case 3:
        mem.writeU16(
          at + 12,
          mem.readU16(at + 12) & ~rng.pick([VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_INDIRECT]),
        );
        break;
      case 4:
        mem.writeU64(at, values.addr());
        break;
      case 5:
        mem.writeU32(at + 8, values.len());
        break;
      case 6: {
        // an indirect descriptor naming a table that is too short, too long, or unaligned in length
        const t = d.indirectTables.length ? rng.pick(d.indirectTables) : { gpa: l.heap, entries: 1 };
        mem.writeU64(at, BigInt(t.gpa));
        mem.writeU32(at + 8, Math.max(0, 16 * t.entries + rng.pick([0, 0, -16, 16, 8, -8, 1])));
        mem.writeU16(at + 12, VIRTQ_DESC_F_INDIRECT | (rng.chance(0.3) ? VIRTQ_DESC_F_NEXT : 0));
        break;
      }
      case 7:
        mem.writeU16(l.avail + 4 + 2 * rng.below(size), rng.chance(0.5) ? size + rng.below(4) : rng.u16());
        break;
      case 8:
        d.setAvailIdx(d.availIdx + rng.pick([size + 1, -1, rng.u16(), 1]));
        break;
      case 9:
        mem.write(at, rng.bytes(16));
        break;
      case 10:
        mem.writeU16(l.avail + 4 + 2 * size, rng.u16()); // used_event
        mem.writeU16(l.avail, rng.below(2)); // flags
        break;
      default:
        // a loop: point this descriptor's NEXT at one earlier in its table
        mem.writeU16(at + 12, mem.readU16(at + 12) | VIRTQ_DESC_F_NEXT);
        mem.writeU16(at + 14, rng.below((at - table.gpa) / 16 + 1));
        break;
    }
  }
}

/** Validates what a pop returned: a chain must be inside RAM, ordered, and within the length limits. */
function checkChain(arena: Arena, c: DescriptorChain, q: SplitQueue | PackedQueue, context: string): void {
  let seenWritable = false;
  let total = 0;
  if (q instanceof SplitQueue) assert.ok(c.head >= 0 && c.head < q.size, `${context}: head ${c.head}`);
  assert.ok(c.buffers.length <= q.size + MAX_INDIRECT_ENTRIES, `${context}: ${c.buffers.length} buffers`);
  for (const b of c.buffers) {
    assert.ok(arena.memory.contains(b.gpa, b.len), `${context}: buffer 0x${b.gpa.toString(16)}+${b.len} outside RAM`);
    assert.ok(!(seenWritable && !b.writable), `${context}: readable after writable`);
    seenWritable ||= b.writable;
    total += b.len;
  }
  assert.ok(total <= 0xffff_ffff, `${context}: total ${total}`);
  assert.equal(total, c.readableLength + c.writableLength, context);
}

function iterate(rng: Rng, arena: Arena, stats: Stats, iteration: number, seed: number): void {
  const context = `seed ${seed} iteration ${iteration} (${arena.name})`;
  const size = queueSize(rng);
  const l = arena.layout(rng, size);
  if (!l) return;
  const random = rng.chance(0.5);
  const eventIdx = rng.chance(0.5);
  const indirect = rng.chance(0.7);
  if (random) fillRandom(rng, arena, l, size);
  else fillAlmostValid(rng, arena, l, size, indirect);

  const config: { -readonly [K in keyof SplitQueueConfig]: SplitQueueConfig[K] } = {
    size,
    descTable: l.desc,
    availRing: l.avail,
    usedRing: l.used,
    eventIdx,
    indirect,
  };
  if (rng.chance(0.04)) {
    // a bad queue configuration
    switch (rng.below(5)) {
      case 0:
        config.size = rng.pick([0, 3, 65536, size + 1, 32769]);
        break;
      case 1:
        config.descTable += rng.pick([1, 2, 4, 8]);
        break;
      case 2:
        config.usedRing += rng.pick([1, 2]);
        break;
      case 3:
        config.availRing = arena.regions[0].gpa + arena.regions[0].size - rng.below(availRingSize(size));
        break;
      default:
        config.usedRing = Number(new Values(rng, arena, l.heap, l.heapEnd).addr());
        break;
    }
  }

  try {
    const q = SplitQueue.create(arena.memory, config);
    stats.queues++;
    if (q instanceof VirtqueueError) {
      count(stats, q.kind);
      return;
    }
    const budget = q.size + 2;
    for (let pop = 0; pop < budget; pop++) {
      if (rng.chance(0.1)) q.disableNotifications();
      const r = q.popAvailable();
      stats.maxWalk = Math.max(stats.maxWalk, q.lastWalkLength);
      assert.ok(
        q.lastWalkLength <= q.size + MAX_INDIRECT_ENTRIES,
        `${context}: walked ${q.lastWalkLength} descriptors`,
      );
      if (r === undefined) {
        if (!q.enableNotifications()) break;
        continue;
      }
      if (r instanceof VirtqueueError) {
        count(stats, r.kind);
        if (r.kind === 'guest-memory') stats.crashes.push(`${context}: unforeseen guest-memory fault: ${r.message}`);
        if (r.kind === 'avail-index') break;
        continue;
      }
      stats.chains++;
      stats.buffers += r.buffers.length;
      checkChain(arena, r, q, context);
      const data = r.readBytes(rng.below(4096), rng.below(64));
      stats.bytesRead += data.length;
      const written = r.writeBytes(rng.bytes(rng.below(64)), rng.below(32), rng.below(64));
      assert.ok(written <= r.writableLength, context);
      stats.bytesWritten += written;
      q.pushUsed(r, written);
      if (rng.chance(0.5)) q.needsNotification();
    }
  } catch (e) {
    stats.crashes.push(`${context}: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
  }
}

// ---- packed rings ------------------------------------------------------------------------------------------

type Layout = NonNullable<ReturnType<Arena['layout']>>;

/** Packed areas inside a split layout: the ring where the table was, the event areas in the old rings. */
function packedLayout(
  l: Layout,
  size: number,
): { desc: number; driverArea: number; deviceArea: number; heap: number; heapEnd: number } {
  const deviceArea = Math.floor((l.avail + availRingSize(size) - 4) / 4) * 4; // at RAM's very end in the edge arena
  return { desc: l.desc, driverArea: l.used, deviceArea, heap: l.heap, heapEnd: l.heapEnd };
}

/** Structured-random packed descriptors: mostly "available in this lap", with random list flags. */
function randomPackedRing(
  rng: Rng,
  values: Values,
  entries: number,
  wrap: boolean,
  tables: readonly { gpa: number; entries: number }[],
): Uint8Array {
  if (rng.chance(0.05)) return rng.bytes(16 * entries);
  const bytes = new Uint8Array(16 * entries);
  const dv = new DataView(bytes.buffer);
  for (let i = 0; i < entries; i++) {
    let addr = values.addr();
    let len = values.len();
    let flags = rng.chance(0.9) ? rng.below(8) : rng.u16() & 0x7f7f;
    flags |= rng.chance(0.85)
      ? FakePackedDriver.availFlags(wrap)
      : rng.pick([0, VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED, FakePackedDriver.availFlags(!wrap)]);
    if (flags & VIRTQ_DESC_F_INDIRECT && tables.length && rng.chance(0.8)) {
      const t = rng.pick(tables);
      addr = BigInt(t.gpa);
      len = Math.max(0, 16 * t.entries + (rng.chance(0.8) ? 0 : rng.pick([-16, -8, 8, 16])));
    }
    dv.setBigUint64(16 * i, addr, true);
    dv.setUint32(16 * i + 8, len >>> 0, true);
    dv.setUint16(16 * i + 12, rng.u16(), true);
    dv.setUint16(16 * i + 14, flags, true);
  }
  return bytes;
}

function fillPacked(
  rng: Rng,
  arena: Arena,
  l: ReturnType<typeof packedLayout>,
  size: number,
  indirect: boolean,
  random: boolean,
  warmup: (d: FakePackedDriver) => void,
): void {
  const mem = arena.memory;
  const values = new Values(rng, arena, l.heap, l.heapEnd);
  if (random) {
    const tables: { gpa: number; entries: number }[] = [];
    let heap = l.heap;
    for (let t = rng.below(4); t > 0; t--) {
      const entries = rng.chance(0.005) ? MAX_INDIRECT_ENTRIES : 1 + rng.below(rng.chance(0.5) ? 4 : 64);
      const gpa = align(heap, 16);
      if (gpa + 16 * entries > l.heapEnd) break;
      heap = gpa + 16 * entries;
      tables.push({ gpa, entries });
    }
    for (const t of tables) mem.write(t.gpa, randomPackedRing(rng, values, t.entries, true, tables));
    mem.write(l.desc, randomPackedRing(rng, values, size, true, tables));
    mem.write(l.driverArea, rng.bytes(4));
    return;
  }
  const d = new FakePackedDriver(mem, { size, ...l });
  warmup(d);
  try {
    for (let c = 1 + rng.below(Math.min(size, 8)); c > 0; c--) {
      const n = 1 + rng.below(Math.min(6, size));
      const firstWritable = rng.below(n + 1);
      const buffers: DriverBuffer[] = [];
      for (let b = 0; b < n; b++)
        buffers.push({ len: rng.below(rng.chance(0.2) ? 4096 : 64), writable: b >= firstWritable });
      d.addChain(buffers, { indirect: indirect ? rng.chance(0.5) : rng.chance(0.05) });
    }
  } catch {
    // the ring or the heap is full: fewer lists
  }
  for (let m = 1 + rng.below(3); m > 0; m--) {
    const table =
      d.indirectTables.length && rng.chance(0.3) ? rng.pick(d.indirectTables) : { gpa: l.desc, entries: size };
    const at = table.gpa + 16 * rng.below(table.entries);
    switch (rng.below(8)) {
      case 0: {
        const off = at + rng.below(16);
        mem.writeU8(off, mem.readU8(off) ^ (1 << rng.below(8)));
        break;
      }
      case 1:
        mem.writeU16(
          at + 14,
          mem.readU16(at + 14) ^
            rng.pick([
              VIRTQ_DESC_F_NEXT,
              VIRTQ_DESC_F_WRITE,
              VIRTQ_DESC_F_INDIRECT,
              VIRTQ_DESC_F_AVAIL,
              VIRTQ_DESC_F_USED,
            ]),
        );
        break;
      case 2:
        mem.writeU64(at, values.addr());
        break;
      case 3:
        mem.writeU32(at + 8, values.len());
        break;
      case 4: {
        const t = d.indirectTables.length ? rng.pick(d.indirectTables) : { gpa: l.heap, entries: 1 };
        mem.writeU64(at, BigInt(t.gpa));
        mem.writeU32(at + 8, Math.max(0, 16 * t.entries + rng.pick([0, 0, -16, 16, 8, 1])));
        mem.writeU16(at + 14, mem.readU16(at + 14) | VIRTQ_DESC_F_INDIRECT);
        break;
      }
      case 5:
        mem.write(at, rng.bytes(16));
        break;
      case 6:
        d.setDriverEvent(rng.below(4), rng.u16(), rng.chance(0.5));
        break;
      default:
        // every descriptor of the ring available and chained: a list longer than the ring
        for (let i = 0; i < size; i++)
          mem.writeU16(l.desc + 16 * i + 14, mem.readU16(l.desc + 16 * i + 14) | VIRTQ_DESC_F_NEXT);
        break;
    }
  }
}

function iteratePacked(rng: Rng, arena: Arena, stats: Stats, iteration: number, seed: number): void {
  const context = `seed ${seed} packed iteration ${iteration} (${arena.name})`;
  const size = rng.chance(0.01) ? rng.pick([4096, 32768]) : 1 + rng.below(rng.chance(0.5) ? 8 : 256);
  const split = arena.layout(rng, size);
  if (!split) return;
  const l = packedLayout(split, size);
  const eventIdx = rng.chance(0.5);
  const indirect = rng.chance(0.7);
  const config: { -readonly [K in keyof PackedQueueConfig]: PackedQueueConfig[K] } = {
    size,
    descRing: l.desc,
    driverArea: l.driverArea,
    deviceArea: l.deviceArea,
    eventIdx,
    indirect,
  };
  if (rng.chance(0.04)) {
    switch (rng.below(4)) {
      case 0:
        config.size = rng.pick([0, 32769, size + 0.5]);
        break;
      case 1:
        config.descRing += rng.pick([4, 8]);
        break;
      case 2:
        config.driverArea += rng.pick([1, 2]);
        break;
      default:
        config.deviceArea = Number(new Values(rng, arena, l.heap, l.heapEnd).addr());
        break;
    }
  }
  try {
    let q: PackedQueue | VirtqueueError | undefined;
    // Almost-valid rings start after a few laps of honest traffic, so both wrap counters are exercised.
    const warmup = (d: FakePackedDriver): void => {
      q = PackedQueue.create(arena.memory, config);
      if (!(q instanceof PackedQueue)) return;
      for (let round = rng.below(2 * size + 1); round > 0; round--) {
        d.resetHeap();
        d.addChain([{ len: 1 + rng.below(16), writable: rng.chance(0.5) }], { indirect: indirect && rng.chance(0.3) });
        const c = q.popAvailable();
        if (!(c instanceof PackedChain)) throw new Error(`${context}: honest list refused: ${String(c)}`);
        q.pushUsed(c, c.writableLength);
        d.takeUsed();
      }
      d.resetHeap();
    };
    fillPacked(rng, arena, l, size, indirect, rng.chance(0.5), warmup);
    q ??= PackedQueue.create(arena.memory, config);
    stats.queues++;
    if (q instanceof VirtqueueError) {
      count(stats, q.kind);
      return;
    }
    const inFlight: PackedChain[] = [];
    for (let pop = 0; pop < size + 2; pop++) {
      if (rng.chance(0.1)) q.disableNotifications();
      const r = q.popAvailable();
      stats.maxWalk = Math.max(stats.maxWalk, q.lastWalkLength);
      assert.ok(
        q.lastWalkLength <= q.size + MAX_INDIRECT_ENTRIES,
        `${context}: walked ${q.lastWalkLength} descriptors`,
      );
      if (r === undefined) {
        if (!q.enableNotifications()) break;
        continue;
      }
      if (r instanceof VirtqueueError) {
        count(stats, r.kind);
        if (r.kind === 'guest-memory') stats.crashes.push(`${context}: unforeseen guest-memory fault: ${r.message}`);
        break; // packed errors are not consumed
      }
      stats.chains++;
      stats.buffers += r.buffers.length;
      checkChain(arena, r, q, context);
      stats.bytesRead += r.readBytes(rng.below(4096), rng.below(64)).length;
      inFlight.push(r);
      if (rng.chance(0.3)) {
        // complete one of the lists in flight, in any order
        const [c] = inFlight.splice(rng.below(inFlight.length), 1);
        const written = c.writeBytes(rng.bytes(rng.below(64)), rng.below(32));
        stats.bytesWritten += written;
        q.pushUsed(c, written);
        if (rng.chance(0.5)) q.needsNotification();
      }
    }
    while (inFlight.length) q.pushUsed(inFlight.splice(rng.below(inFlight.length), 1)[0], 0);
    q.needsNotification();
  } catch (e) {
    stats.crashes.push(`${context}: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
  }
}

// ---- the runs ----------------------------------------------------------------------------------------------

type Iterate = (rng: Rng, arena: Arena, stats: Stats, iteration: number, seed: number) => void;

function fuzz(
  t: { diagnostic(message: string): void },
  what: string,
  iterate: Iterate,
  defaultIterations: number,
  seedOffset: number,
): Stats {
  const seed = (Number(process.env.PARTITA_FUZZ_SEED ?? randomInt(2 ** 32)) + seedOffset) >>> 0;
  const iterations = Number(process.env.PARTITA_FUZZ_ITERATIONS ?? defaultIterations);
  t.diagnostic(
    `${what}: seed ${seed} (replay with PARTITA_FUZZ_SEED=${(seed - seedOffset) >>> 0}), ${iterations} iterations`,
  );
  const rng = new Rng(seed);
  // [0, 1 GiB + 4 MiB) spans a 1 GiB view window; [4 GiB, +4 MiB) is above a "hole". Only touched pages cost.
  const main = GuestMemory.allocateRanges([
    { gpa: 0, size: GIB + 4 * MIB },
    { gpa: FOUR_GIB, size: 4 * MIB },
  ]);
  const edge = GuestMemory.allocateRanges([{ gpa: 0, size: 64 * KIB }]);
  const arenas = [mainArena(main), edgeArena(edge)];
  const stats: Stats = {
    iterations: 0,
    queues: 0,
    chains: 0,
    buffers: 0,
    bytesRead: 0,
    bytesWritten: 0,
    maxWalk: 0,
    errors: new Map(),
    crashes: [],
  };
  const started = performance.now();
  try {
    for (let i = 0; i < iterations; i++) {
      iterate(rng, arenas[rng.chance(0.25) ? 1 : 0], stats, i, seed);
      stats.iterations++;
      if (stats.crashes.length >= 5) break;
    }
  } finally {
    main.release();
    edge.release();
  }
  const seconds = (performance.now() - started) / 1000;
  const errors = [...stats.errors].sort((a, b) => b[1] - a[1]);
  t.diagnostic(
    `${what}: ${stats.iterations} iterations in ${seconds.toFixed(1)} s: ${stats.queues} queues, ${stats.chains} chains accepted ` +
      `(${stats.buffers} buffers, ${stats.bytesRead} bytes read, ${stats.bytesWritten} written), longest walk ${stats.maxWalk}`,
  );
  t.diagnostic(`${what}: errors by kind: ${errors.map(([k, n]) => `${k} ${n}`).join(', ')}`);
  t.diagnostic(`${what}: crashes: ${stats.crashes.length}`);
  assert.deepEqual(stats.crashes, [], `seed ${seed}`);
  assert.ok(stats.chains > iterations / 10, 'enough valid chains to exercise the buffer helpers');
  return stats;
}

test(
  'virtqueue fuzz (split): random and almost-valid rings never escape RAM, throw or loop',
  { timeout: 600_000 },
  (t) => {
    const stats = fuzz(t, 'split', iterate, 20_000, 0);
    if (stats.iterations >= 10_000)
      assert.ok(stats.errors.size >= 12, `too few error kinds were reached: ${[...stats.errors.keys()].join(', ')}`);
  },
);

test(
  'virtqueue fuzz (packed): random and almost-valid rings never escape RAM, throw or loop',
  { timeout: 600_000 },
  (t) => {
    const stats = fuzz(t, 'packed', iteratePacked, 10_000, 1);
    if (stats.iterations >= 5_000)
      assert.ok(stats.errors.size >= 8, `too few error kinds were reached: ${[...stats.errors.keys()].join(', ')}`);
  },
);
