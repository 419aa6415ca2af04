// Split virtqueues, virtio 1.2 §2.7: descriptor table, available and used rings, walked defensively against a hostile driver.
//
// Everything a driver writes is untrusted. Ring addresses are validated once, when the queue is built (the
// driver enabled it); every descriptor is validated each time it is walked, so a driver rewriting the table
// behind the device's back gains nothing. A malformed chain is returned as a VirtqueueError (the device then
// sets DEVICE_NEEDS_RESET, §2.1.2); nothing the guest writes can make this code touch memory outside guest RAM,
// throw, or loop without bound (a walk visits at most queue size + 65536 descriptors).
//
// Nor can a driver make the device hold more than `size` chains at once. A chain is in flight from the pop that
// returned it until its used element is published, and its head descriptor belongs to the device meanwhile
// (§2.7.13: the driver may reuse a buffer only once the device has used it). A head made available again while
// it is still in flight is a driver error ('head-in-flight' → DEVICE_NEEDS_RESET), as is more than `size` chains
// in flight, QEMU's "Virtqueue size exceeded". Without this check a driver re-posting the same head as soon as
// the device popped it kept hundreds of thousands of requests outstanding on a 64-entry queue. QEMU counts only
// (inuse ≥ size); tracking the heads is stricter, catches the re-post at once, and no correct driver reuses a
// descriptor before it is used. Distinct heads below `size` bound the in-flight chains by `size` on their own.
//
// Ring layout (§2.7, table "Virtqueue Part Alignment and Size"):
//   descriptor table  16 × size bytes, 16-aligned: { addr u64, len u32, flags u16, next u16 }
//   available ring    6 + 2 × size, 2-aligned:      { flags u16, idx u16, ring[size] u16, used_event u16 }
//   used ring         6 + 8 × size, 4-aligned:      { flags u16, idx u16, ring[size] { id u32, len u32 }, avail_event u16 }
// All fields are little-endian (virtio 1.x); the host is x86-64, so typed arrays over guest RAM are too.
import { GuestMemoryError, type GuestMemory } from '../../base/guest-memory.js';

export const VIRTQ_DESC_F_NEXT = 1;
export const VIRTQ_DESC_F_WRITE = 2;
export const VIRTQ_DESC_F_INDIRECT = 4;
export const VIRTQ_AVAIL_F_NO_INTERRUPT = 1;
export const VIRTQ_USED_F_NO_NOTIFY = 1;

/** §2.7: "Queue Size value is always a power of 2. The maximum Queue Size value is 32768." */
export const MAX_QUEUE_SIZE = 32768;
/** `next` is 16 bits, so an indirect table can address no more than 2^16 descriptors (§2.7.5.3). */
export const MAX_INDIRECT_ENTRIES = 65536;
export const DESCRIPTOR_SIZE = 16;
const MAX_CHAIN_BYTES = 0xffff_ffff; // the used element's len is 32 bits

export const descTableSize = (size: number): number => DESCRIPTOR_SIZE * size;
export const availRingSize = (size: number): number => 6 + 2 * size;
export const usedRingSize = (size: number): number => 6 + 8 * size;

export type VirtqueueErrorKind =
  /** Queue size not a power of two in 1..32768. */
  | 'queue-size'
  /** A ring is misaligned or not wholly inside guest RAM. */
  | 'ring-address'
  /** avail->idx moved more than the queue size ahead of the entries the device consumed. */
  | 'avail-index'
  /** An available-ring entry names a descriptor ≥ queue size. */
  | 'head-index'
  /** Split rings: an available-ring entry names a head the device popped and has not returned yet (§2.7.13). */
  | 'head-in-flight'
  /** A NEXT field points outside the descriptor table (or outside the indirect table). */
  | 'next-index'
  /** A chain longer than the queue size (or the indirect table): a loop, or simply too long (§2.7.5.3.1). */
  | 'descriptor-loop'
  /** A buffer [addr, addr + len) is not inside guest RAM (outside it, straddling its end, in the MMIO hole). */
  | 'buffer-address'
  /** addr + len wraps past 2^64. */
  | 'address-overflow'
  /** The chain's lengths add up to more than 2^32 − 1 bytes. */
  | 'length-overflow'
  /** A device-readable buffer follows a device-writable one (§2.7.4.2). */
  | 'readable-after-writable'
  /** VIRTQ_DESC_F_INDIRECT without VIRTIO_F_INDIRECT_DESC negotiated. */
  | 'indirect-not-negotiated'
  /** A descriptor with both INDIRECT and NEXT (§2.7.5.3.1); packed rings: INDIRECT inside a NEXT-linked list (§2.8, Indirect Descriptors). */
  | 'indirect-with-next'
  /** INDIRECT inside an indirect table (§2.7.5.3.1). */
  | 'indirect-nested'
  /** An indirect table whose length is zero, not a multiple of 16, over 2^16 entries, or outside RAM. */
  | 'indirect-table'
  /** Packed rings: a NEXT-linked descriptor that is not marked available in the current lap (§2.8.6). */
  | 'descriptor-not-available'
  /** Defence in depth: a guest-memory access failed where validation should have made that impossible. */
  | 'guest-memory';

/** A driver error found in a virtqueue. Returned, never thrown: the device turns it into DEVICE_NEEDS_RESET. */
export class VirtqueueError extends Error {
  constructor(
    readonly kind: VirtqueueErrorKind,
    message: string,
    /** The chain's head descriptor, when the error is inside a chain. */
    readonly head?: number,
    /** The offending descriptor (an index into the indirect table when `indirect` is set). */
    readonly descriptor?: number,
    readonly indirect = false,
  ) {
    super(message);
    this.name = 'VirtqueueError';
  }
}

/** One guest buffer of a chain, validated to lie inside guest RAM. */
export interface VirtqBuffer {
  readonly gpa: number;
  readonly len: number;
  /** Device-writable (VIRTQ_DESC_F_WRITE); device-readable otherwise. */
  readonly writable: boolean;
}

/** A ring area the driver placed: name, guest-physical address, required alignment, length in bytes. */
export type RingArea = readonly [name: string, gpa: number, align: number, length: number];

/** @internal The first ring area that is not wholly inside guest RAM or not aligned, as an error (split and packed). */
export function checkRingAreas(
  memory: GuestMemory,
  areas: readonly RingArea[],
  sizeNote = '',
): VirtqueueError | undefined {
  for (const [name, gpa, align, length] of areas) {
    const at = Number.isFinite(gpa) && gpa >= 0 ? `0x${gpa.toString(16)}` : String(gpa);
    if (!Number.isSafeInteger(gpa) || gpa < 0 || !memory.contains(gpa, length))
      return new VirtqueueError(
        'ring-address',
        `${name} at ${at} (${length} bytes${sizeNote}) is not inside guest RAM`,
      );
    if (gpa % align !== 0) return new VirtqueueError('ring-address', `${name} at ${at} is not ${align}-byte aligned`);
  }
  return undefined;
}

/** A validated chain: readable buffers first, then writable ones (§2.7.4.2). */
export class DescriptorChain {
  constructor(
    private readonly memory: GuestMemory,
    /** Head descriptor index: what `pushUsed` gives back to the driver. */
    readonly head: number,
    readonly buffers: readonly VirtqBuffer[],
    /** How many of `buffers` are readable (they come first). */
    readonly readableCount: number,
    readonly readableLength: number,
    readonly writableLength: number,
  ) {}

  get readable(): readonly VirtqBuffer[] {
    return this.buffers.slice(0, this.readableCount);
  }

  get writable(): readonly VirtqBuffer[] {
    return this.buffers.slice(this.readableCount);
  }

  /**
   * Copies the device-readable part, from byte `offset` of it, into a new array of at most `max` bytes (fewer
   * when the readable part is shorter). The guest chooses the length (up to 4 GiB): pass `max` unless the
   * device has already bounded `readableLength`, or stream with forEachSpan.
   */
  readBytes(max = Number.MAX_SAFE_INTEGER, offset = 0): Uint8Array {
    const start = clampOffset(offset, this.readableLength);
    const out = new Uint8Array(Math.min(this.readableLength - start, clampCount(max)));
    this.forEachSpan('readable', (view, at) => out.set(view, at), start, out.length);
    return out;
  }

  /**
   * Copies `data` into the device-writable part, from byte `offset` of it; writes at most `max` bytes and never
   * past the last writable buffer. Returns how many bytes were written.
   */
  writeBytes(data: Uint8Array, offset = 0, max = Number.MAX_SAFE_INTEGER): number {
    return this.forEachSpan(
      'writable',
      (view, at) => view.set(data.subarray(at, at + view.length)),
      offset,
      Math.min(data.length, clampCount(max)),
    );
  }

  /**
   * Zero-copy access: calls `fn` with live views of guest RAM covering the readable or writable part from byte
   * `offset` of it, at most `max` bytes in all (`at` counts the bytes before each view). Returns the bytes
   * covered. Views of the readable part are for reading only, and no view may be kept after pushUsed.
   */
  forEachSpan(
    part: 'readable' | 'writable',
    fn: (view: Uint8Array, at: number) => void,
    offset = 0,
    max = Number.MAX_SAFE_INTEGER,
  ): number {
    const readable = part === 'readable';
    const total = readable ? this.readableLength : this.writableLength;
    let skip = clampOffset(offset, total);
    const length = Math.min(total - skip, clampCount(max));
    let done = 0;
    const end = readable ? this.readableCount : this.buffers.length;
    for (let i = readable ? 0 : this.readableCount; i < end && done < length; i++) {
      const b = this.buffers[i];
      if (skip >= b.len) {
        skip -= b.len;
        continue;
      }
      const n = Math.min(b.len - skip, length - done);
      const base = done;
      this.memory.forEachSpan(b.gpa + skip, n, (view, at) => fn(view, base + at));
      done += n;
      skip = 0;
    }
    return done;
  }
}

function clampCount(max: number): number {
  return Math.max(0, Math.floor(max) || 0);
}

function clampOffset(offset: number, length: number): number {
  if (!(offset > 0)) return 0;
  return Math.min(Math.floor(offset), length);
}

export interface SplitQueueConfig {
  /** Queue size the driver chose (queue_size): a power of two, 1..32768. */
  readonly size: number;
  /** Guest-physical addresses the driver wrote (queue_desc, queue_driver, queue_device). */
  readonly descTable: number;
  readonly availRing: number;
  readonly usedRing: number;
  /** VIRTIO_F_EVENT_IDX negotiated (§2.7.7, §2.7.10). */
  readonly eventIdx?: boolean;
  /** VIRTIO_F_INDIRECT_DESC negotiated (§2.7.5.3). */
  readonly indirect?: boolean;
}

/** What a virtio device needs from a queue, split (SplitQueue) or packed (PackedQueue in packed-queue.ts). */
export interface Virtqueue {
  readonly size: number;
  readonly eventIdx: boolean;
  readonly indirect: boolean;
  /** The next chain the driver made available; undefined when there is none; a VirtqueueError for a malformed one. */
  popAvailable(): DescriptorChain | VirtqueueError | undefined;
  /** Puts the last popped chain back. */
  undoPop(): void;
  /** Returns a popped chain to the driver with `written` bytes written into it. */
  pushUsed(chain: DescriptorChain, written: number): void;
  /** Whether the driver wants an interrupt for what was used since the last call. */
  needsNotification(): boolean;
  /** Asks the driver to kick again; true when chains became available meanwhile (pop again). */
  enableNotifications(): boolean;
  /** Asks the driver not to kick. */
  disableNotifications(): void;
  /**
   * Puts back `chains`: the ones popped last, in pop order, none of them used. The next pops return them again
   * (a device coming to rest with buffers it holds for later, e.g. network receive, before a snapshot).
   */
  rewind(chains: readonly DescriptorChain[]): void;
}

/** A split queue's device-side position (saveState/restore): what the next pop, push and notification depend on. */
export interface SplitQueueState {
  /** The device's next avail-ring entry (free-running 16-bit). */
  readonly nextAvail: number;
  /** The next used idx (free-running 16-bit). */
  readonly nextUsed: number;
  /** The used idx at the last EVENT_IDX notification decision; null before the first. */
  readonly signalledUsed: number | null;
  /** The backend had turned kicks off (disableNotifications) and not yet back on. */
  readonly kicksOff: boolean;
}

const isU16 = (v: unknown): v is number => Number.isInteger(v) && (v as number) >= 0 && (v as number) <= 0xffff;

/** x86 orders stores with stores and loads with loads, but not a store with a later load: this is the mb(). */
const FENCE_CELL = new Int32Array(new SharedArrayBuffer(4));
/** @internal A full memory barrier (also used by packed-queue.ts). */
export function fence(): void {
  Atomics.add(FENCE_CELL, 0, 0); // a locked read-modify-write: a full barrier on x86-64
}

/**
 * A live little-endian window onto one validated range of guest RAM. Normally a DataView over the memory's
 * own view; a range crossing one of GuestMemory's 1 GiB windows falls back to bounds-checked per-access reads.
 */
export class GuestRange {
  private readonly dv: DataView | undefined;
  private readonly halves: Uint16Array | undefined;

  constructor(
    private readonly memory: GuestMemory,
    readonly gpa: number,
    readonly length: number,
  ) {
    let dv: DataView | undefined;
    let halves: Uint16Array | undefined;
    try {
      const s = memory.slice(gpa, length);
      dv = new DataView(s.buffer, s.byteOffset, s.byteLength);
      if (s.byteOffset % 2 === 0) halves = new Uint16Array(s.buffer, s.byteOffset, s.byteLength >> 1);
    } catch (e) {
      if (!(e instanceof GuestMemoryError)) throw e;
    }
    this.dv = dv;
    this.halves = halves;
  }

  u16(off: number): number {
    if (this.dv) return this.dv.getUint16(off, true);
    const b = this.memory.read(this.gpa + off, 2);
    return b[0] | (b[1] << 8);
  }

  u32(off: number): number {
    if (this.dv) return this.dv.getUint32(off, true);
    const b = this.memory.read(this.gpa + off, 4);
    return (b[0] | (b[1] << 8) | (b[2] << 16) | (b[3] << 24)) >>> 0;
  }

  setU16(off: number, v: number): void {
    if (this.dv) this.dv.setUint16(off, v, true);
    else this.memory.write(this.gpa + off, new Uint8Array([v & 0xff, (v >>> 8) & 0xff]));
  }

  setU32(off: number, v: number): void {
    if (this.dv) this.dv.setUint32(off, v >>> 0, true);
    else this.memory.write(this.gpa + off, new Uint8Array([v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, v >>> 24]));
  }

  /** A 16-bit load the compiler may not move across other Atomics (`off` even). */
  loadU16(off: number): number {
    if (this.halves) return Atomics.load(this.halves, off >> 1);
    fence();
    return this.u16(off);
  }

  /** A 16-bit store ordered after every earlier store (`off` even). */
  storeU16(off: number, v: number): void {
    if (this.halves) {
      Atomics.store(this.halves, off >> 1, v);
      return;
    }
    fence();
    this.setU16(off, v);
    fence();
  }
}

/** @internal A 64-bit guest address given as two 32-bit halves, in hex. */
export function hex(hi: number, lo: number): string {
  return hi === 0 ? `0x${lo.toString(16)}` : `0x${hi.toString(16)}${lo.toString(16).padStart(8, '0')}`;
}

/** @internal Buffers of a chain being walked, with the running checks: order and total length (shared with packed-queue.ts). */
export class ChainBuilder {
  readonly buffers: VirtqBuffer[] = [];
  readableCount = 0;
  readableLength = 0;
  writableLength = 0;

  constructor(
    private readonly memory: GuestMemory,
    readonly head: number,
  ) {}

  /** Validates and appends one buffer; `where` names the descriptor for the error message. */
  add(
    lo: number,
    hi: number,
    len: number,
    writable: boolean,
    descriptor: number,
    indirect: boolean,
    where: () => string,
  ): VirtqueueError | undefined {
    const fail = (kind: VirtqueueErrorKind, what: string): VirtqueueError =>
      new VirtqueueError(kind, `${where()}: ${what}`, this.head, descriptor, indirect);
    if (hi === 0xffff_ffff && lo + len > 2 ** 32) {
      return fail('address-overflow', `buffer ${hex(hi, lo)} + 0x${len.toString(16)} wraps past 2^64`);
    }
    const gpa = hi * 2 ** 32 + lo; // exact while hi < 2^21; anything larger fails `contains` either way
    if (hi >= 2 ** 21 || !this.memory.contains(gpa, len)) {
      return fail('buffer-address', `buffer ${hex(hi, lo)} (+0x${len.toString(16)}) is not inside guest RAM`);
    }
    if (this.readableLength + this.writableLength + len > MAX_CHAIN_BYTES) {
      return fail('length-overflow', `the chain's buffers add up to more than 2^32 - 1 bytes`);
    }
    if (writable) {
      this.writableLength += len;
    } else {
      if (this.buffers.length > this.readableCount) {
        return fail('readable-after-writable', 'a device-readable buffer follows a device-writable one');
      }
      this.readableCount++;
      this.readableLength += len;
    }
    this.buffers.push({ gpa, len, writable });
    return undefined;
  }

  finish(): DescriptorChain {
    return new DescriptorChain(
      this.memory,
      this.head,
      this.buffers,
      this.readableCount,
      this.readableLength,
      this.writableLength,
    );
  }
}

export class SplitQueue implements Virtqueue {
  readonly size: number;
  readonly descTable: number;
  readonly availRing: number;
  readonly usedRing: number;
  readonly eventIdx: boolean;
  readonly indirect: boolean;

  private readonly desc: GuestRange;
  private readonly avail: GuestRange;
  private readonly used: GuestRange;
  private nextAvail = 0;
  private nextUsed = 0;
  /** The used idx at the last EVENT_IDX notification decision; undefined until the first one. */
  private signalledUsed: number | undefined;
  private walked = 0;
  /** The backend asked not to be kicked (disableNotifications) and has not asked again yet. */
  private kicksOff = false;
  /** Per head descriptor: 1 while its chain is in flight (popped, its used element not yet published). */
  private readonly headInFlight: Uint8Array;
  private inFlightCount = 0;
  /** The head the last popAvailable took (for undoPop), or -1. */
  private lastPopHead = -1;

  /**
   * Builds a queue from what the driver configured, validating size, alignment and that every ring lies wholly
   * inside guest RAM. Returns a VirtqueueError (for DEVICE_NEEDS_RESET) instead of throwing.
   */
  static create(memory: GuestMemory, config: SplitQueueConfig): SplitQueue | VirtqueueError {
    const { size, descTable, availRing, usedRing } = config;
    if (!Number.isInteger(size) || size < 1 || size > MAX_QUEUE_SIZE || (size & (size - 1)) !== 0) {
      return new VirtqueueError('queue-size', `queue size ${size} is not a power of two in 1..${MAX_QUEUE_SIZE}`);
    }
    const problem = checkRingAreas(
      memory,
      [
        ['descriptor table', descTable, 16, descTableSize(size)],
        ['available ring', availRing, 2, availRingSize(size)],
        ['used ring', usedRing, 4, usedRingSize(size)],
      ],
      ` for queue size ${size}`,
    );
    if (problem) return problem;
    return new SplitQueue(memory, config);
  }

  private constructor(
    private readonly memory: GuestMemory,
    config: SplitQueueConfig,
  ) {
    this.size = config.size;
    this.descTable = config.descTable;
    this.availRing = config.availRing;
    this.usedRing = config.usedRing;
    this.eventIdx = config.eventIdx ?? false;
    this.indirect = config.indirect ?? false;
    this.desc = new GuestRange(memory, this.descTable, descTableSize(this.size));
    this.avail = new GuestRange(memory, this.availRing, availRingSize(this.size));
    this.used = new GuestRange(memory, this.usedRing, usedRingSize(this.size));
    this.headInFlight = new Uint8Array(this.size);
  }

  /** The device's position in the available ring (free-running 16-bit, like avail->idx). */
  get nextAvailIndex(): number {
    return this.nextAvail;
  }

  /** The device's next used idx (free-running 16-bit). */
  get nextUsedIndex(): number {
    return this.nextUsed;
  }

  /** Descriptors visited by the last popAvailable (bounded by size + 65536): for tests and fuzzing. */
  get lastWalkLength(): number {
    return this.walked;
  }

  /** Chains popped and not yet returned with pushUsed (at most `size`). */
  get inFlight(): number {
    return this.inFlightCount;
  }

  /** The device-side position, for a snapshot (rings and buffers are in guest RAM, saved with it). */
  saveState(): SplitQueueState {
    return {
      nextAvail: this.nextAvail,
      nextUsed: this.nextUsed,
      signalledUsed: this.signalledUsed ?? null,
      kicksOff: this.kicksOff,
    };
  }

  /**
   * Builds a queue as create() does and puts it at a saved position. A position that no device could have
   * reached (not 16-bit, more chains in flight than the queue holds) is a VirtqueueError like a bad ring.
   */
  static restore(memory: GuestMemory, config: SplitQueueConfig, state: SplitQueueState): SplitQueue | VirtqueueError {
    const q = SplitQueue.create(memory, config);
    if (q instanceof VirtqueueError) return q;
    const { nextAvail, nextUsed, signalledUsed, kicksOff } = state;
    if (
      !isU16(nextAvail) ||
      !isU16(nextUsed) ||
      (signalledUsed !== null && !isU16(signalledUsed)) ||
      typeof kicksOff !== 'boolean'
    )
      return new VirtqueueError('avail-index', `saved position ${JSON.stringify(state)} is not 16-bit indices`);
    if (((nextAvail - nextUsed) & 0xffff) > q.size)
      return new VirtqueueError(
        'avail-index',
        `saved position has ${(nextAvail - nextUsed) & 0xffff} chains in flight, more than the queue size ${q.size}`,
      );
    q.nextAvail = nextAvail;
    q.nextUsed = nextUsed;
    q.signalledUsed = signalledUsed ?? undefined;
    q.kicksOff = kicksOff;
    return q;
  }

  rewind(chains: readonly DescriptorChain[]): void {
    const inFlight = (this.nextAvail - this.nextUsed) & 0xffff;
    if (chains.length > inFlight)
      throw new RangeError(`cannot put back ${chains.length} chains: ${inFlight} are in flight`);
    this.nextAvail = (this.nextAvail - chains.length) & 0xffff;
    for (const chain of chains) this.release(chain.head);
    this.lastPopHead = -1;
  }

  /** How many chains the driver has made available and the device not yet popped, or an avail-index error. */
  pending(): number | VirtqueueError {
    const idx = this.avail.loadU16(2);
    const n = (idx - this.nextAvail) & 0xffff;
    if (n > this.size) {
      return new VirtqueueError(
        'avail-index',
        `avail idx ${idx} is ${n} entries ahead of the device's ${this.nextAvail}, more than the queue size ${this.size}`,
      );
    }
    return n;
  }

  /**
   * Takes the next available chain and validates it. Returns undefined when the ring is empty, or a
   * VirtqueueError for a malformed one. A bad chain is consumed (its ring entry is skipped); an avail idx
   * that jumped too far is reported again on every call, since no entry after it can be trusted.
   */
  popAvailable(): DescriptorChain | VirtqueueError | undefined {
    this.walked = 0;
    this.lastPopHead = -1;
    const n = this.pending();
    if (n === 0) {
      // With EVENT_IDX the driver kicks only when it passes avail_event (§2.7.10): a device that found the ring
      // empty must say where it stands, then look once more for a chain added meanwhile.
      if (this.eventIdx && !this.kicksOff && this.enableNotifications()) return this.popAvailable();
      return undefined;
    }
    if (n instanceof VirtqueueError) return n;
    // The idx load above is ordered before the ring read below (x86 keeps loads in order; Atomics pins the compiler).
    const slot = this.nextAvail & (this.size - 1);
    const head = this.avail.u16(4 + 2 * slot);
    this.nextAvail = (this.nextAvail + 1) & 0xffff;
    // …and, unless the backend turned kicks off while it drains, avail_event follows every pop (as QEMU's
    // virtqueue_split_pop does), so whichever way a backend stops reading, the next chain is kicked.
    if (this.eventIdx && !this.kicksOff) this.used.storeU16(4 + 8 * this.size, this.nextAvail);
    if (head >= this.size) {
      return new VirtqueueError(
        'head-index',
        `available ring entry ${slot} names descriptor ${head}, outside the queue of size ${this.size}`,
        head,
        head,
      );
    }
    // Heads are distinct and below `size`, so refusing one in flight also keeps inFlight ≤ size.
    if (this.headInFlight[head]) {
      return new VirtqueueError(
        'head-in-flight',
        `available ring entry ${slot} names descriptor ${head}, whose chain is still in flight (${this.inFlightCount} of ${this.size} in flight)`,
        head,
        head,
      );
    }
    let result: DescriptorChain | VirtqueueError;
    try {
      result = this.walk(head);
    } catch (e) {
      if (!(e instanceof GuestMemoryError)) throw e;
      result = new VirtqueueError('guest-memory', `chain ${head}: ${e.message}`, head);
    }
    if (result instanceof DescriptorChain) {
      this.headInFlight[head] = 1;
      this.inFlightCount++;
      this.lastPopHead = head;
    }
    return result;
  }

  /** Puts the last popped chain back (a device that popped a buffer it cannot fill yet, e.g. network receive). */
  undoPop(): void {
    this.nextAvail = (this.nextAvail - 1) & 0xffff;
    if (this.lastPopHead >= 0) this.release(this.lastPopHead);
    this.lastPopHead = -1;
  }

  /** The chain with this head is no longer in flight (a head that was not is left alone). */
  private release(head: number): void {
    if (!this.headInFlight[head]) return;
    this.headInFlight[head] = 0;
    this.inFlightCount--;
  }

  private walk(head: number): DescriptorChain | VirtqueueError {
    const chain = new ChainBuilder(this.memory, head);
    const desc = this.desc;
    let index = head;
    for (let count = 1; ; count++) {
      if (count > this.size) {
        return new VirtqueueError(
          'descriptor-loop',
          `chain ${head}: more than ${this.size} descriptors (the queue size) — a NEXT loop through descriptor ${index}?`,
          head,
          index,
        );
      }
      this.walked++;
      const off = index * DESCRIPTOR_SIZE;
      const lo = desc.u32(off);
      const hi = desc.u32(off + 4);
      const len = desc.u32(off + 8);
      const flags = desc.u16(off + 12);
      const next = desc.u16(off + 14);
      const at = index;
      if (flags & VIRTQ_DESC_F_INDIRECT) {
        if (!this.indirect) {
          return new VirtqueueError(
            'indirect-not-negotiated',
            `chain ${head}: descriptor ${at} is INDIRECT but VIRTIO_F_INDIRECT_DESC was not negotiated`,
            head,
            at,
          );
        }
        if (flags & VIRTQ_DESC_F_NEXT) {
          return new VirtqueueError(
            'indirect-with-next',
            `chain ${head}: descriptor ${at} has both INDIRECT and NEXT`,
            head,
            at,
          );
        }
        // The WRITE flag of the descriptor naming the table is ignored (§2.7.5.3.2).
        return this.walkIndirect(chain, at, lo, hi, len);
      }
      const error = chain.add(
        lo,
        hi,
        len,
        (flags & VIRTQ_DESC_F_WRITE) !== 0,
        at,
        false,
        () => `chain ${head}: descriptor ${at}`,
      );
      if (error) return error;
      if (!(flags & VIRTQ_DESC_F_NEXT)) return chain.finish();
      if (next >= this.size) {
        return new VirtqueueError(
          'next-index',
          `chain ${head}: descriptor ${at} continues to descriptor ${next}, outside the queue of size ${this.size}`,
          head,
          at,
        );
      }
      index = next;
    }
  }

  private walkIndirect(
    chain: ChainBuilder,
    at: number,
    lo: number,
    hi: number,
    len: number,
  ): DescriptorChain | VirtqueueError {
    const head = chain.head;
    const table = hex(hi, lo);
    const fail = (what: string): VirtqueueError =>
      new VirtqueueError(
        'indirect-table',
        `chain ${head}: descriptor ${at}: indirect table at ${table} ${what}`,
        head,
        at,
      );
    if (len === 0 || len % DESCRIPTOR_SIZE !== 0) return fail(`has length ${len}, not a non-zero multiple of 16`);
    const entries = len / DESCRIPTOR_SIZE;
    if (entries > MAX_INDIRECT_ENTRIES) return fail(`has ${entries} entries, more than ${MAX_INDIRECT_ENTRIES}`);
    const gpa = hi * 2 ** 32 + lo;
    if (hi >= 2 ** 21 || !this.memory.contains(gpa, len))
      return fail(`(+0x${len.toString(16)}) is not inside guest RAM`);
    const view = new GuestRange(this.memory, gpa, len);
    let index = 0;
    for (let count = 1; ; count++) {
      const i = index;
      const where = (): string => `chain ${head}: indirect descriptor ${i} of the table at ${table} (descriptor ${at})`;
      if (count > entries) {
        return new VirtqueueError(
          'descriptor-loop',
          `${where()}: more than the table's ${entries} descriptors — a NEXT loop?`,
          head,
          i,
          true,
        );
      }
      this.walked++;
      const off = i * DESCRIPTOR_SIZE;
      const flags = view.u16(off + 12);
      if (flags & VIRTQ_DESC_F_INDIRECT) {
        return new VirtqueueError('indirect-nested', `${where()}: INDIRECT inside an indirect table`, head, i, true);
      }
      const error = chain.add(
        view.u32(off),
        view.u32(off + 4),
        view.u32(off + 8),
        (flags & VIRTQ_DESC_F_WRITE) !== 0,
        i,
        true,
        where,
      );
      if (error) return error;
      if (!(flags & VIRTQ_DESC_F_NEXT)) return chain.finish();
      const next = view.u16(off + 14);
      if (next >= entries) {
        return new VirtqueueError(
          'next-index',
          `${where()}: continues to ${next}, outside the table's ${entries} descriptors`,
          head,
          i,
          true,
        );
      }
      index = next;
    }
  }

  /**
   * Returns chain `head` to the driver with `written` bytes written into its writable part: the used element
   * first, then (ordered after it) the used idx. With a DescriptorChain, `written` is capped at its writable
   * length. A head outside the queue or a length that is not a u32 is a device bug (RangeError).
   */
  pushUsed(head: number | DescriptorChain, written: number): void {
    let id: number;
    let len = written;
    if (typeof head === 'number') {
      id = head;
    } else {
      id = head.head;
      len = Math.min(len, head.writableLength);
    }
    if (!Number.isInteger(id) || id < 0 || id >= this.size)
      throw new RangeError(`used element for descriptor ${id} outside the queue of size ${this.size}`);
    if (!Number.isInteger(len) || len < 0 || len > 0xffff_ffff)
      throw new RangeError(`used length ${len} is not a 32-bit count`);
    const off = 4 + 8 * (this.nextUsed & (this.size - 1));
    this.used.setU32(off, id);
    this.used.setU32(off + 4, len);
    this.nextUsed = (this.nextUsed + 1) & 0xffff;
    // From here the driver may post the head again: it is not in flight any more. (A number that names no chain
    // in flight is accepted as before, for devices and tests that build used entries themselves.)
    this.release(id);
    this.lastPopHead = -1;
    this.used.storeU16(2, this.nextUsed); // Atomics.store: after the element, as the driver must see it
  }

  /**
   * Whether the driver wants an interrupt for the buffers used since the last call (§2.7.7.2): with EVENT_IDX,
   * when the used idx moved past used_event (vring_need_event); otherwise unless VIRTQ_AVAIL_F_NO_INTERRUPT.
   */
  needsNotification(): boolean {
    fence(); // the used idx store must be visible before the driver's suppression fields are read
    if (this.eventIdx) {
      const usedEvent = this.avail.loadU16(4 + 2 * this.size);
      const now = this.nextUsed;
      const old = this.signalledUsed;
      this.signalledUsed = now;
      if (old === undefined) return true;
      return ((now - usedEvent - 1) & 0xffff) < ((now - old) & 0xffff);
    }
    return (this.avail.loadU16(0) & VIRTQ_AVAIL_F_NO_INTERRUPT) === 0;
  }

  /**
   * Asks the driver not to kick (§2.7.10): VIRTQ_USED_F_NO_NOTIFY. With EVENT_IDX the flags must stay 0; leaving
   * avail_event behind has the same effect, so this does nothing.
   */
  disableNotifications(): void {
    this.kicksOff = true; // with EVENT_IDX: avail_event is simply left behind
    if (!this.eventIdx) this.used.storeU16(0, VIRTQ_USED_F_NO_NOTIFY);
  }

  /**
   * Asks the driver to kick again (§2.7.10): clears NO_NOTIFY, or sets avail_event to the next entry the device
   * will read. Returns true when chains became available meanwhile: pop again before sleeping, or a kick the
   * driver decided to skip is lost.
   */
  enableNotifications(): boolean {
    this.kicksOff = false;
    if (this.eventIdx) this.used.storeU16(4 + 8 * this.size, this.nextAvail);
    else this.used.storeU16(0, 0);
    fence(); // the store above must be visible before avail->idx is read again
    return this.avail.loadU16(2) !== this.nextAvail;
  }
}
