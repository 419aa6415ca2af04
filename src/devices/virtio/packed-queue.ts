// Packed virtqueues, virtio 1.2 §2.8: one descriptor ring with wrap counters and two event-suppression areas, walked defensively.
//
// The same rules as the split queue (queue.ts) hold: everything the driver writes is untrusted, areas are
// validated when the queue is built, each list is validated each time it is walked, and errors come back as
// VirtqueueErrors instead of exceptions. A list is read at consecutive ring positions (there is no `next`
// field, so no loops, only lists longer than the ring); an indirect table is read entry after entry.
//
// Layout (§2.8.10.1, §2.8.13 and "Event Suppression Structure Format"):
//   descriptor ring            16 × size bytes, 16-aligned: { addr u64, len u32, id u16, flags u16 }
//   driver event suppression   4 bytes, 4-aligned (read by the device):    { off_wrap u16, flags u16 }
//   device event suppression   4 bytes, 4-aligned (written by the device): { off_wrap u16, flags u16 }
//
// Ring positions are kept as free-running counts of descriptors (avail and used), so the position is
// count % size and the wrap counter is 1 on even laps and 0 on odd ones (both start at 1, §2.8.1).
import { GuestMemoryError, type GuestMemory } from '../../base/guest-memory.js';
import {
  ChainBuilder,
  checkRingAreas,
  DescriptorChain,
  DESCRIPTOR_SIZE,
  fence,
  GuestRange,
  hex,
  MAX_INDIRECT_ENTRIES,
  MAX_QUEUE_SIZE,
  VirtqueueError,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  type VirtqBuffer,
  type Virtqueue,
} from './queue.js';

export const VIRTQ_DESC_F_AVAIL = 1 << 7;
export const VIRTQ_DESC_F_USED = 1 << 15;
export const RING_EVENT_FLAGS_ENABLE = 0;
export const RING_EVENT_FLAGS_DISABLE = 1;
export const RING_EVENT_FLAGS_DESC = 2;
export const EVENT_SUPPRESSION_SIZE = 4;

export interface PackedQueueConfig {
  /** Queue size (queue_size): 1..32768, a power of two not required (§2.8.10.1). */
  readonly size: number;
  /** Guest-physical addresses the driver wrote (queue_desc, queue_driver, queue_device). */
  readonly descRing: number;
  readonly driverArea: number;
  readonly deviceArea: number;
  /** VIRTIO_F_EVENT_IDX negotiated: the driver may ask for an interrupt at one ring position. */
  readonly eventIdx?: boolean;
  /** VIRTIO_F_INDIRECT_DESC negotiated. */
  readonly indirect?: boolean;
}

/** A validated packed-ring list. `head` is its Buffer ID (what goes back in the used descriptor). */
export class PackedChain extends DescriptorChain {
  constructor(
    memory: GuestMemory,
    bufferId: number,
    /** Ring descriptors the list occupies (an indirect table counts as one): how far the used position skips. */
    readonly descriptorCount: number,
    buffers: readonly VirtqBuffer[],
    readableCount: number,
    readableLength: number,
    writableLength: number,
  ) {
    super(memory, bufferId, buffers, readableCount, readableLength, writableLength);
  }
}

/** A packed queue's device-side position (saveState/restore): ring positions, wrap counters, notification state. */
export interface PackedQueueState {
  /** Ring position of the next descriptor the device reads, and the wrap counter it expects there. */
  readonly nextAvail: number;
  readonly availWrap: boolean;
  /** Ring position of the next used descriptor, and the device's wrap counter. */
  readonly nextUsed: number;
  readonly usedWrap: boolean;
  /** Descriptors used since the last notification decision; null before the first. */
  readonly usedSinceSignal: number | null;
}

/** The wrap counter of the lap a free-running descriptor count is in. */
const lapWrap = (count: number, size: number): boolean => Math.floor(count / size) % 2 === 0;

/** Available in the lap with wrap counter `wrap`: AVAIL matches it and USED does not (§2.8.1). */
function isAvailable(flags: number, wrap: boolean): boolean {
  return ((flags & VIRTQ_DESC_F_AVAIL) !== 0) === wrap && ((flags & VIRTQ_DESC_F_USED) !== 0) !== wrap;
}

export class PackedQueue implements Virtqueue {
  readonly size: number;
  readonly descRing: number;
  readonly driverArea: number;
  readonly deviceArea: number;
  readonly eventIdx: boolean;
  readonly indirect: boolean;

  private readonly ring: GuestRange;
  private readonly driverEvent: GuestRange;
  private readonly deviceEvent: GuestRange;
  /** Descriptors consumed from the ring / written back as used, free-running. */
  private availCount = 0;
  private usedCount = 0;
  private signalled: number | undefined;
  private lastPop: number | undefined;
  private walked = 0;

  /** Validates size, alignment and that every area lies wholly inside guest RAM; a VirtqueueError otherwise. */
  static create(memory: GuestMemory, config: PackedQueueConfig): PackedQueue | VirtqueueError {
    const { size } = config;
    if (!Number.isInteger(size) || size < 1 || size > MAX_QUEUE_SIZE) {
      return new VirtqueueError('queue-size', `packed queue size ${size} is outside 1..${MAX_QUEUE_SIZE}`);
    }
    const problem = checkRingAreas(memory, [
      ['descriptor ring', config.descRing, 16, DESCRIPTOR_SIZE * size],
      ['driver event suppression area', config.driverArea, 4, EVENT_SUPPRESSION_SIZE],
      ['device event suppression area', config.deviceArea, 4, EVENT_SUPPRESSION_SIZE],
    ]);
    if (problem) return problem;
    return new PackedQueue(memory, config);
  }

  private constructor(
    private readonly memory: GuestMemory,
    config: PackedQueueConfig,
  ) {
    this.size = config.size;
    this.descRing = config.descRing;
    this.driverArea = config.driverArea;
    this.deviceArea = config.deviceArea;
    this.eventIdx = config.eventIdx ?? false;
    this.indirect = config.indirect ?? false;
    this.ring = new GuestRange(memory, this.descRing, DESCRIPTOR_SIZE * this.size);
    this.driverEvent = new GuestRange(memory, this.driverArea, EVENT_SUPPRESSION_SIZE);
    this.deviceEvent = new GuestRange(memory, this.deviceArea, EVENT_SUPPRESSION_SIZE);
  }

  /** Ring position of the next descriptor the device reads, and the wrap counter it expects there. */
  get nextAvailPosition(): { index: number; wrap: boolean } {
    return { index: this.availCount % this.size, wrap: lapWrap(this.availCount, this.size) };
  }

  /** Ring position of the next used descriptor, and the device's wrap counter. */
  get nextUsedPosition(): { index: number; wrap: boolean } {
    return { index: this.usedCount % this.size, wrap: lapWrap(this.usedCount, this.size) };
  }

  /** Descriptors visited by the last popAvailable (at most size + 65536). */
  get lastWalkLength(): number {
    return this.walked;
  }

  /** The device-side position, for a snapshot (the ring and event areas are in guest RAM, saved with it). */
  saveState(): PackedQueueState {
    const avail = this.nextAvailPosition;
    const used = this.nextUsedPosition;
    return {
      nextAvail: avail.index,
      availWrap: avail.wrap,
      nextUsed: used.index,
      usedWrap: used.wrap,
      // Beyond two laps every position has been passed: needsNotification() answers the same for any larger value.
      usedSinceSignal: this.signalled === undefined ? null : Math.min(this.usedCount - this.signalled, 2 * this.size),
    };
  }

  /**
   * Builds a queue as create() does and puts it at a saved position (counts rebuilt in laps 0-3, which keeps
   * every wrap counter). Positions outside the ring or more descriptors in flight than it holds: a VirtqueueError.
   */
  static restore(
    memory: GuestMemory,
    config: PackedQueueConfig,
    state: PackedQueueState,
  ): PackedQueue | VirtqueueError {
    const q = PackedQueue.create(memory, config);
    if (q instanceof VirtqueueError) return q;
    const size = q.size;
    const { nextAvail, availWrap, nextUsed, usedWrap, usedSinceSignal } = state;
    const position = (v: unknown): boolean => Number.isInteger(v) && (v as number) >= 0 && (v as number) < size;
    if (
      !position(nextAvail) ||
      !position(nextUsed) ||
      typeof availWrap !== 'boolean' ||
      typeof usedWrap !== 'boolean' ||
      (usedSinceSignal !== null && !(Number.isInteger(usedSinceSignal) && usedSinceSignal >= 0))
    )
      return new VirtqueueError('avail-index', `saved position ${JSON.stringify(state)} is not inside the ring`);
    const used = nextUsed + (usedWrap ? 0 : size);
    let avail = nextAvail + (availWrap ? 0 : size);
    if (avail < used) avail += 2 * size;
    if (avail - used > size)
      return new VirtqueueError(
        'avail-index',
        `saved position has ${avail - used} descriptors in flight, more than the ring's ${size}`,
      );
    // Counts start at 2 laps so that the last signal (up to 2 laps back) stays a non-negative count.
    q.availCount = avail + 2 * size;
    q.usedCount = used + 2 * size;
    q.signalled = usedSinceSignal === null ? undefined : q.usedCount - usedSinceSignal;
    return q;
  }

  rewind(chains: readonly DescriptorChain[]): void {
    let descriptors = 0;
    for (const chain of chains) {
      if (!(chain instanceof PackedChain))
        throw new RangeError('a packed queue takes back only the PackedChains it popped');
      descriptors += chain.descriptorCount;
    }
    if (this.availCount - descriptors < this.usedCount)
      throw new RangeError(
        `cannot put back ${descriptors} descriptors: ${this.availCount - this.usedCount} are in flight`,
      );
    this.availCount -= descriptors;
    this.lastPop = undefined;
  }

  /**
   * Takes the next available list and validates it: undefined when the next descriptor is not available, a
   * VirtqueueError for a malformed list. Errors are not consumed: the same error comes back until a reset.
   */
  popAvailable(): PackedChain | VirtqueueError | undefined {
    this.walked = 0;
    const start = this.availCount;
    const first = (start % this.size) * DESCRIPTOR_SIZE;
    // An acquire load: the rest of the list is read after the first descriptor's flags (§2.8.6).
    const flags = this.ring.loadU16(first + 14);
    if (!isAvailable(flags, lapWrap(start, this.size))) return undefined;
    try {
      return this.walk(start, flags);
    } catch (e) {
      if (e instanceof GuestMemoryError) {
        return new VirtqueueError('guest-memory', `list at ${start % this.size}: ${e.message}`, start % this.size);
      }
      throw e;
    }
  }

  /** Puts the last popped list back (once; a no-op otherwise). */
  undoPop(): void {
    if (this.lastPop !== undefined && this.lastPop >= this.usedCount) this.availCount = this.lastPop;
    this.lastPop = undefined;
  }

  private walk(start: number, firstFlags: number): PackedChain | VirtqueueError {
    const size = this.size;
    const position = start % size;
    const chain = new ChainBuilder(this.memory, position);
    const inFlight = start - this.usedCount; // descriptors popped but not yet used
    let count = start;
    let flags = firstFlags;
    for (let n = 1; ; n++) {
      const index = count % size;
      if (n + inFlight > size) {
        return new VirtqueueError(
          'descriptor-loop',
          `list at ${position}: longer than the ${size - inFlight} descriptors the ring can hold now (queue size ${size}), continuing at ${index}`,
          position,
          index,
        );
      }
      const off = index * DESCRIPTOR_SIZE;
      if (n > 1) {
        flags = this.ring.u16(off + 14);
        if (!isAvailable(flags, lapWrap(count, size))) {
          return new VirtqueueError(
            'descriptor-not-available',
            `list at ${position}: descriptor ${index} continues the list but is not marked available (flags 0x${flags.toString(16)})`,
            position,
            index,
          );
        }
      }
      this.walked++;
      const lo = this.ring.u32(off);
      const hi = this.ring.u32(off + 4);
      const len = this.ring.u32(off + 8);
      const id = this.ring.u16(off + 12);
      count++;
      if (flags & VIRTQ_DESC_F_INDIRECT) {
        if (!this.indirect) {
          return new VirtqueueError(
            'indirect-not-negotiated',
            `list at ${position}: descriptor ${index} is INDIRECT but VIRTIO_F_INDIRECT_DESC was not negotiated`,
            position,
            index,
          );
        }
        if (n > 1 || flags & VIRTQ_DESC_F_NEXT) {
          return new VirtqueueError(
            'indirect-with-next',
            `list at ${position}: descriptor ${index} is INDIRECT inside a NEXT-linked list`,
            position,
            index,
          );
        }
        // WRITE on the descriptor naming the table is reserved and ignored (§2.8.7).
        const error = this.walkIndirect(chain, index, lo, hi, len);
        if (error) return error;
      } else {
        const error = chain.add(
          lo,
          hi,
          len,
          (flags & VIRTQ_DESC_F_WRITE) !== 0,
          index,
          false,
          () => `list at ${position}: descriptor ${index}`,
        );
        if (error) return error;
        if (flags & VIRTQ_DESC_F_NEXT) continue;
      }
      this.lastPop = start;
      this.availCount = count;
      return new PackedChain(
        this.memory,
        id,
        n,
        chain.buffers,
        chain.readableCount,
        chain.readableLength,
        chain.writableLength,
      );
    }
  }

  private walkIndirect(
    chain: ChainBuilder,
    at: number,
    lo: number,
    hi: number,
    len: number,
  ): VirtqueueError | undefined {
    const position = chain.head;
    const table = hex(hi, lo);
    const fail = (what: string): VirtqueueError =>
      new VirtqueueError(
        'indirect-table',
        `list at ${position}: descriptor ${at}: indirect table at ${table} ${what}`,
        position,
        at,
      );
    if (len === 0 || len % DESCRIPTOR_SIZE !== 0) return fail(`has length ${len}, not a non-zero multiple of 16`);
    const entries = len / DESCRIPTOR_SIZE;
    if (entries > MAX_INDIRECT_ENTRIES) return fail(`has ${entries} entries, more than ${MAX_INDIRECT_ENTRIES}`);
    const gpa = hi * 2 ** 32 + lo;
    if (hi >= 2 ** 21 || !this.memory.contains(gpa, len))
      return fail(`(+0x${len.toString(16)}) is not inside guest RAM`);
    const view = new GuestRange(this.memory, gpa, len);
    for (let i = 0; i < entries; i++) {
      this.walked++;
      const off = i * DESCRIPTOR_SIZE;
      // Only WRITE is valid in a table; the other flags and the Buffer ID are reserved and ignored (§2.8.7).
      const writable = (view.u16(off + 14) & VIRTQ_DESC_F_WRITE) !== 0;
      const error = chain.add(
        view.u32(off),
        view.u32(off + 4),
        view.u32(off + 8),
        writable,
        i,
        true,
        () => `list at ${position}: indirect descriptor ${i} of the table at ${table} (descriptor ${at})`,
      );
      if (error) return error;
    }
    return undefined;
  }

  /**
   * Writes the used descriptor for `chain` at the next used position — id and len first, then (ordered after
   * them) flags with AVAIL and USED equal to the device's wrap counter — and skips the list's descriptors.
   * `written` is capped at the writable length. Device bugs (not a PackedChain, more used than popped) throw.
   */
  pushUsed(chain: DescriptorChain, written: number): void {
    if (!(chain instanceof PackedChain))
      throw new RangeError('a packed queue takes back only the PackedChains it popped');
    const len = Math.min(written, chain.writableLength);
    if (!Number.isInteger(len) || len < 0) throw new RangeError(`used length ${written} is not a 32-bit count`);
    if (this.usedCount + chain.descriptorCount > this.availCount) {
      throw new RangeError(`used descriptors would overtake the ${this.availCount - this.usedCount} in flight`);
    }
    const off = (this.usedCount % this.size) * DESCRIPTOR_SIZE;
    const wrap = lapWrap(this.usedCount, this.size);
    this.ring.setU32(off + 8, len);
    this.ring.setU16(off + 12, chain.head);
    this.ring.storeU16(
      off + 14,
      (wrap ? VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED : 0) | (len > 0 ? VIRTQ_DESC_F_WRITE : 0),
    );
    this.usedCount += chain.descriptorCount;
  }

  /**
   * Whether the driver wants an interrupt for the descriptors used since the last call (§2.8.10): not when it
   * disabled them, and with RING_EVENT_FLAGS_DESC (EVENT_IDX) only when a used descriptor was written at or
   * skipped past the ring position and wrap counter it named.
   */
  needsNotification(): boolean {
    fence(); // the used flags must be visible before the driver's suppression structure is read
    const now = this.usedCount;
    const old = this.signalled;
    this.signalled = now;
    const flags = this.driverEvent.loadU16(2) & 3;
    if (flags === RING_EVENT_FLAGS_DISABLE) return false;
    if (flags !== RING_EVENT_FLAGS_DESC || !this.eventIdx || old === undefined) return true; // ENABLE (or reserved)
    if (now === old) return false;
    if (now - old >= 2 * this.size) return true;
    const offWrap = this.driverEvent.loadU16(0);
    const offset = offWrap & 0x7fff;
    const wrap = offWrap >> 15 === 1;
    if (offset >= this.size) return true; // a position outside the ring: err on the side of an interrupt
    // Is there a position with that offset, in a lap with that wrap counter, among the ones used in [old, now)?
    for (let lap = Math.floor(old / this.size); lap * this.size < now; lap++) {
      const p = lap * this.size + offset;
      if (lapWrap(p, this.size) === wrap && p >= old && p < now) return true;
    }
    return false;
  }

  /** RING_EVENT_FLAGS_DISABLE in the device event suppression structure. */
  disableNotifications(): void {
    this.deviceEvent.storeU16(2, RING_EVENT_FLAGS_DISABLE);
  }

  /** RING_EVENT_FLAGS_ENABLE; true when a descriptor became available meanwhile (pop again before sleeping). */
  enableNotifications(): boolean {
    this.deviceEvent.storeU16(2, RING_EVENT_FLAGS_ENABLE);
    fence();
    const flags = this.ring.loadU16((this.availCount % this.size) * DESCRIPTOR_SIZE + 14);
    return isAvailable(flags, lapWrap(this.availCount, this.size));
  }
}
