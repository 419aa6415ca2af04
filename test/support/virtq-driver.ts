// Fake virtio drivers for tests: they lay out split (virtio 1.2 §2.7) or packed (§2.8) virtqueues in a
// GuestMemory, make chains available the way a guest driver does, directly or through indirect tables, and read
// back what the device used. They also write raw descriptors, so tests can build hostile chains.
import type { GuestMemory } from '../../src/base/guest-memory.js';
import {
  availRingSize,
  descTableSize,
  usedRingSize,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  type SplitQueueConfig,
} from '../../src/devices/virtio/queue.js';
import {
  EVENT_SUPPRESSION_SIZE,
  VIRTQ_DESC_F_AVAIL,
  VIRTQ_DESC_F_USED,
  type PackedQueueConfig,
} from '../../src/devices/virtio/packed-queue.js';

export interface DriverBuffer {
  readonly len: number;
  readonly writable?: boolean;
  /** Where the buffer is; allocated from the driver's heap when absent. */
  readonly gpa?: number | bigint;
  /** Contents written into a readable buffer. */
  readonly data?: Uint8Array;
}

export interface ChainOptions {
  /** Put the buffers in an indirect table (one ring descriptor with VIRTQ_DESC_F_INDIRECT). */
  readonly indirect?: boolean;
  /** With `indirect`: that many plain descriptors first, the rest in the table (§2.7.5.3.2 allows it). */
  readonly directFirst?: number;
  /** Publish in the available ring (default true). */
  readonly publish?: boolean;
}

export interface UsedElement {
  readonly id: number;
  readonly len: number;
}

export interface DriverLayout {
  readonly size: number;
  readonly desc: number;
  readonly avail: number;
  readonly used: number;
  /** Free RAM for buffers and indirect tables: [heap, heapEnd). */
  readonly heap: number;
  readonly heapEnd: number;
}

const align = (v: number, a: number): number => Math.ceil(v / a) * a;

export class FakeDriver {
  readonly size: number;
  readonly desc: number;
  readonly avail: number;
  readonly used: number;
  private heap: number;
  private readonly heapStart: number;
  private readonly heapEnd: number;
  private free: number[];
  private readonly chains = new Map<number, number[]>();
  /** Indirect tables addChain wrote since the last resetHeap (for tests that corrupt them). */
  readonly indirectTables: { gpa: number; entries: number }[] = [];
  private availIdxValue = 0;
  private lastUsed = 0;

  constructor(
    readonly memory: GuestMemory,
    layout: DriverLayout,
  ) {
    this.size = layout.size;
    this.desc = layout.desc;
    this.avail = layout.avail;
    this.used = layout.used;
    this.heap = this.heapStart = layout.heap;
    this.heapEnd = layout.heapEnd;
    this.free = Array.from({ length: this.size }, (_, i) => i);
    memory.fill(this.desc, descTableSize(this.size));
    memory.fill(this.avail, availRingSize(this.size));
    memory.fill(this.used, usedRingSize(this.size));
  }

  /** Rings packed from `base` (16-aligned), a heap of `heapSize` bytes after them. */
  static at(memory: GuestMemory, size: number, base: number, heapSize = 64 * 1024): FakeDriver {
    const desc = align(base, 16);
    const avail = desc + descTableSize(size);
    const used = align(avail + availRingSize(size), 4);
    const heap = align(used + usedRingSize(size), 16);
    return new FakeDriver(memory, { size, desc, avail, used, heap, heapEnd: heap + heapSize });
  }

  /** What the transport would hand SplitQueue.create. */
  config(extra: Partial<SplitQueueConfig> = {}): SplitQueueConfig {
    return { size: this.size, descTable: this.desc, availRing: this.avail, usedRing: this.used, ...extra };
  }

  /** This driver with its state, over `memory`: the same guest in a VM restored from a copy of this one's RAM. */
  clone(memory: GuestMemory): FakeDriver {
    const twin = Object.create(FakeDriver.prototype) as FakeDriver;
    return Object.assign(twin, this, {
      memory,
      free: [...this.free],
      chains: new Map([...this.chains].map(([head, ids]) => [head, [...ids]])),
      indirectTables: [...this.indirectTables],
    });
  }

  /** Bump allocation from the heap; `reset()` frees everything. */
  alloc(len: number, alignment = 16): number {
    const at = align(this.heap, alignment);
    if (at + len > this.heapEnd) throw new Error(`fake driver heap exhausted (${len} bytes)`);
    this.heap = at + len;
    return at;
  }

  resetHeap(): void {
    this.heap = this.heapStart;
    this.indirectTables.length = 0;
  }

  /** Writes raw descriptor `index` of a table (the ring's table by default). */
  writeDesc(index: number, addr: number | bigint, len: number, flags: number, next = 0, table = this.desc): void {
    const off = table + 16 * index;
    this.memory.writeU64(off, BigInt.asUintN(64, BigInt(addr)));
    this.memory.writeU32(off + 8, len);
    this.memory.writeU16(off + 12, flags);
    this.memory.writeU16(off + 14, next);
  }

  /** Makes a chain of `buffers` (readable ones first, as given) and, by default, publishes it. Returns its head. */
  addChain(buffers: readonly DriverBuffer[], options: ChainOptions = {}): number {
    const placed = buffers.map((b) => {
      const gpa = b.gpa ?? this.alloc(Math.max(b.len, 1));
      if (b.data && !b.writable) this.memory.write(Number(gpa), b.data);
      return { gpa, len: b.len, flags: b.writable ? VIRTQ_DESC_F_WRITE : 0 };
    });
    let ring = placed;
    let table: typeof placed = [];
    if (options.indirect) {
      const direct = options.directFirst ?? 0;
      ring = placed.slice(0, direct);
      table = placed.slice(direct);
    }
    const count = ring.length + (options.indirect ? 1 : 0);
    if (count > this.free.length) throw new Error(`fake driver: ${count} descriptors wanted, ${this.free.length} free`);
    const ids = this.free.splice(0, count);
    ring.forEach((b, i) => {
      const last = i === ring.length - 1 && !options.indirect;
      this.writeDesc(ids[i], b.gpa, b.len, b.flags | (last ? 0 : VIRTQ_DESC_F_NEXT), last ? 0 : ids[i + 1]);
    });
    if (options.indirect) {
      const at = this.alloc(16 * Math.max(table.length, 1));
      table.forEach((b, i) => {
        const last = i === table.length - 1;
        this.writeDesc(i, b.gpa, b.len, b.flags | (last ? 0 : VIRTQ_DESC_F_NEXT), last ? 0 : i + 1, at);
      });
      this.writeDesc(ids[count - 1], at, 16 * table.length, VIRTQ_DESC_F_INDIRECT);
      this.indirectTables.push({ gpa: at, entries: table.length });
    }
    this.chains.set(ids[0], ids);
    if (options.publish ?? true) this.publish(ids[0]);
    return ids[0];
  }

  /** Puts `head` in the next available-ring slot and bumps avail->idx. */
  publish(head: number): void {
    this.memory.writeU16(this.avail + 4 + 2 * (this.availIdxValue & (this.size - 1)), head);
    this.setAvailIdx(this.availIdxValue + 1);
  }

  get availIdx(): number {
    return this.availIdxValue;
  }

  setAvailIdx(value: number): void {
    this.availIdxValue = value & 0xffff;
    this.memory.writeU16(this.avail + 2, this.availIdxValue);
  }

  setAvailFlags(flags: number): void {
    this.memory.writeU16(this.avail, flags);
  }

  /** used_event: the used idx the driver wants an interrupt at (EVENT_IDX). */
  setUsedEvent(value: number): void {
    this.memory.writeU16(this.avail + 4 + 2 * this.size, value & 0xffff);
  }

  get usedIdx(): number {
    return this.memory.readU16(this.used + 2);
  }

  get usedFlags(): number {
    return this.memory.readU16(this.used);
  }

  /** avail_event: the avail idx after which the device wants a kick (EVENT_IDX). */
  get availEvent(): number {
    return this.memory.readU16(this.used + 4 + 8 * this.size);
  }

  /** Whether the driver must kick after moving avail->idx from `old` to the current value. */
  mustKick(old: number, eventIdx: boolean): boolean {
    if (!eventIdx) return (this.usedFlags & 1) === 0;
    const now = this.availIdxValue;
    return ((now - this.availEvent - 1) & 0xffff) < ((now - old) & 0xffff);
  }

  /** Reads the used elements the device added since the last call and frees their descriptors. */
  takeUsed(): UsedElement[] {
    const out: UsedElement[] = [];
    const idx = this.usedIdx;
    while (this.lastUsed !== idx) {
      const off = this.used + 4 + 8 * (this.lastUsed & (this.size - 1));
      const element = { id: this.memory.readU32(off), len: this.memory.readU32(off + 4) };
      out.push(element);
      const ids = this.chains.get(element.id);
      if (ids) {
        this.free.push(...ids);
        this.chains.delete(element.id);
      }
      this.lastUsed = (this.lastUsed + 1) & 0xffff;
    }
    return out;
  }
}

export interface PackedLayout {
  readonly size: number;
  readonly desc: number;
  readonly driverArea: number;
  readonly deviceArea: number;
  readonly heap: number;
  readonly heapEnd: number;
}

/** A packed-ring driver (§2.8): wrap counters, Buffer IDs, the first descriptor of a list published last. */
export class FakePackedDriver {
  readonly size: number;
  readonly desc: number;
  readonly driverArea: number;
  readonly deviceArea: number;
  readonly indirectTables: { gpa: number; entries: number }[] = [];
  private heap: number;
  private readonly heapStart: number;
  private readonly heapEnd: number;
  private nextAvail = 0;
  private availWrap = true;
  private nextUsed = 0;
  private usedWrap = true;
  private readonly freeIds: number[];
  private readonly lengths = new Map<number, number>();
  private freeDescriptors: number;

  constructor(
    readonly memory: GuestMemory,
    layout: PackedLayout,
  ) {
    this.size = layout.size;
    this.desc = layout.desc;
    this.driverArea = layout.driverArea;
    this.deviceArea = layout.deviceArea;
    this.heap = this.heapStart = layout.heap;
    this.heapEnd = layout.heapEnd;
    this.freeIds = Array.from({ length: this.size }, (_, i) => i);
    this.freeDescriptors = this.size;
    memory.fill(this.desc, 16 * this.size);
    memory.fill(this.driverArea, EVENT_SUPPRESSION_SIZE);
    memory.fill(this.deviceArea, EVENT_SUPPRESSION_SIZE);
  }

  static at(memory: GuestMemory, size: number, base: number, heapSize = 64 * 1024): FakePackedDriver {
    const desc = align(base, 16);
    const driverArea = desc + 16 * size;
    const deviceArea = driverArea + EVENT_SUPPRESSION_SIZE;
    const heap = align(deviceArea + EVENT_SUPPRESSION_SIZE, 16);
    return new FakePackedDriver(memory, { size, desc, driverArea, deviceArea, heap, heapEnd: heap + heapSize });
  }

  config(extra: Partial<PackedQueueConfig> = {}): PackedQueueConfig {
    return { size: this.size, descRing: this.desc, driverArea: this.driverArea, deviceArea: this.deviceArea, ...extra };
  }

  alloc(len: number, alignment = 16): number {
    const at = align(this.heap, alignment);
    if (at + len > this.heapEnd) throw new Error(`fake driver heap exhausted (${len} bytes)`);
    this.heap = at + len;
    return at;
  }

  resetHeap(): void {
    this.heap = this.heapStart;
    this.indirectTables.length = 0;
  }

  /** This driver with its state, over `memory`: the same guest in a VM restored from a copy of this one's RAM. */
  clone(memory: GuestMemory): FakePackedDriver {
    const twin = Object.create(FakePackedDriver.prototype) as FakePackedDriver;
    return Object.assign(twin, this, {
      memory,
      freeIds: [...this.freeIds],
      lengths: new Map(this.lengths),
      indirectTables: [...this.indirectTables],
    });
  }

  /** AVAIL/USED bits marking a descriptor available in a lap with wrap counter `wrap`. */
  static availFlags(wrap: boolean): number {
    return wrap ? VIRTQ_DESC_F_AVAIL : VIRTQ_DESC_F_USED;
  }

  /** Writes a raw descriptor at ring position `index` (or in `table`). */
  writeDesc(index: number, addr: number | bigint, len: number, id: number, flags: number, table = this.desc): void {
    const off = table + 16 * index;
    this.memory.writeU64(off, BigInt.asUintN(64, BigInt(addr)));
    this.memory.writeU32(off + 8, len);
    this.memory.writeU16(off + 12, id);
    this.memory.writeU16(off + 14, flags);
  }

  /** Where the driver writes next, and its wrap counter. */
  get availPosition(): { index: number; wrap: boolean } {
    return { index: this.nextAvail, wrap: this.availWrap };
  }

  /** Moves the driver's position by `n` descriptors without writing anything (for hand-made lists). */
  advance(n: number): void {
    for (let i = 0; i < n; i++) {
      if (++this.nextAvail === this.size) {
        this.nextAvail = 0;
        this.availWrap = !this.availWrap;
      }
    }
  }

  /** Makes a list available; returns its Buffer ID. With `indirect`, one ring descriptor names a table. */
  addChain(buffers: readonly DriverBuffer[], options: { indirect?: boolean } = {}): number {
    const placed = buffers.map((b) => {
      const gpa = b.gpa ?? this.alloc(Math.max(b.len, 1));
      if (b.data && !b.writable) this.memory.write(Number(gpa), b.data);
      return { gpa, len: b.len, flags: b.writable ? VIRTQ_DESC_F_WRITE : 0 };
    });
    const count = options.indirect ? 1 : placed.length;
    if (count > this.freeDescriptors || !this.freeIds.length) throw new Error('fake packed driver: ring full');
    const id = this.freeIds.shift()!;
    const first = this.nextAvail;
    let firstFlags = 0;
    if (options.indirect) {
      const table = this.alloc(16 * Math.max(placed.length, 1));
      placed.forEach((b, i) => this.writeDesc(i, b.gpa, b.len, 0, b.flags, table));
      this.indirectTables.push({ gpa: table, entries: placed.length });
      firstFlags = VIRTQ_DESC_F_INDIRECT | FakePackedDriver.availFlags(this.availWrap);
      this.writeDesc(first, table, 16 * placed.length, id, 0);
      this.advance(1);
    } else {
      placed.forEach((b, i) => {
        const flags =
          b.flags | (i < placed.length - 1 ? VIRTQ_DESC_F_NEXT : 0) | FakePackedDriver.availFlags(this.availWrap);
        const last = i === placed.length - 1;
        if (i === 0) {
          firstFlags = flags;
          this.writeDesc(this.nextAvail, b.gpa, b.len, last ? id : 0, 0);
        } else {
          this.writeDesc(this.nextAvail, b.gpa, b.len, last ? id : 0, flags);
        }
        this.advance(1);
      });
    }
    this.memory.writeU16(this.desc + 16 * first + 14, firstFlags); // publish: the first descriptor last
    this.lengths.set(id, count);
    this.freeDescriptors -= count;
    return id;
  }

  /** Reads the used descriptors the device wrote since the last call, skipping each list's descriptors. */
  takeUsed(): UsedElement[] {
    const out: UsedElement[] = [];
    for (;;) {
      const off = this.desc + 16 * this.nextUsed;
      const flags = this.memory.readU16(off + 14);
      const used = (flags & VIRTQ_DESC_F_USED) !== 0;
      if (used !== this.usedWrap || ((flags & VIRTQ_DESC_F_AVAIL) !== 0) !== this.usedWrap) break;
      const id = this.memory.readU16(off + 12);
      out.push({ id, len: flags & VIRTQ_DESC_F_WRITE ? this.memory.readU32(off + 8) : 0 });
      const n = this.lengths.get(id);
      if (n === undefined) throw new Error(`fake packed driver: the device used unknown buffer id ${id}`);
      this.lengths.delete(id);
      this.freeIds.push(id);
      this.freeDescriptors += n;
      this.nextUsed += n;
      if (this.nextUsed >= this.size) {
        this.nextUsed -= this.size;
        this.usedWrap = !this.usedWrap;
      }
    }
    return out;
  }

  /** The driver event suppression structure (read by the device). */
  setDriverEvent(flags: number, offset = 0, wrap = true): void {
    this.memory.writeU16(this.driverArea, (offset & 0x7fff) | (wrap ? 0x8000 : 0));
    this.memory.writeU16(this.driverArea + 2, flags);
  }

  /** The device event suppression flags (written by the device). */
  get deviceEventFlags(): number {
    return this.memory.readU16(this.deviceArea + 2);
  }
}
