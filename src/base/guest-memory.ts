// Guest RAM: anonymous mmap'd regions (MAP_NORESERVE, so a 128 GiB guest costs nothing until it touches its
// pages), each registered with KVM as one memory slot, and bounds-checked typed access to them by
// guest-physical address. Every access a device makes on behalf of the guest goes through here: an address
// or length outside RAM throws GuestMemoryError instead of touching host memory.
import {
  check,
  checkBig,
  MADV_DONTDUMP,
  MAP_ANONYMOUS,
  MAP_NORESERVE,
  MAP_PRIVATE,
  native,
  PROT_READ,
  PROT_WRITE,
} from '../native/index.js';
import { GIB } from './units.js';

/** A span of guest-physical address space. */
export interface RamRange {
  readonly gpa: number;
  readonly size: number;
}

/**
 * Anonymous memory for the guest (RAM, ROM, device memory): MAP_NORESERVE, so untouched pages cost nothing, and
 * left out of core dumps, which should not contain guest data. The caller registers it with KVM and unmaps it.
 */
export function mapGuestMemory(size: number, what: string): bigint {
  const addr = checkBig(
    native.mmap(size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0),
    'mmap',
    `${size} bytes of ${what}`,
  );
  native.madvise(addr, size, MADV_DONTDUMP);
  return addr;
}

export class GuestMemoryError extends Error {
  constructor(
    readonly gpa: number,
    readonly length: number,
    what = 'access',
  ) {
    super(`guest memory ${what} at 0x${gpa.toString(16)} (+${length}) is outside guest RAM`);
    this.name = 'GuestMemoryError';
  }
}

/** A region as shared between threads: plain numbers, so it can be posted to a worker. */
export interface MemoryRegionDescriptor {
  readonly gpa: number;
  readonly size: number;
  /** Host virtual address of the region's first byte, as a decimal string (postMessage-safe). */
  readonly hostAddress: string;
}

/** V8 in Node 20 caps typed arrays at 4 GiB; regions are viewed through 1 GiB windows created on demand. */
const CHUNK_SIZE = 1 * GIB;

class Region {
  private readonly chunks: (Uint8Array | undefined)[];
  constructor(
    readonly gpa: number,
    readonly size: number,
    readonly hostAddress: bigint,
  ) {
    this.chunks = new Array(Math.ceil(size / CHUNK_SIZE));
  }
  chunk(index: number): Uint8Array {
    let c = this.chunks[index];
    if (!c) {
      const offset = index * CHUNK_SIZE;
      const len = Math.min(CHUNK_SIZE, this.size - offset);
      c = new Uint8Array(native.view(this.hostAddress + BigInt(offset), len));
      this.chunks[index] = c;
    }
    return c;
  }
}

export class GuestMemory {
  private readonly regionList: Region[];
  private readonly owned: boolean;

  private constructor(regions: Region[], owned: boolean) {
    this.regionList = regions.sort((a, b) => a.gpa - b.gpa);
    this.owned = owned;
  }

  /** Maps each range as anonymous memory (the caller registers them with KVM). */
  static allocateRanges(ranges: readonly RamRange[]): GuestMemory {
    const regions: Region[] = [];
    try {
      for (const r of ranges) {
        const addr = mapGuestMemory(r.size, 'guest RAM');
        regions.push(new Region(r.gpa, r.size, addr));
      }
    } catch (e) {
      for (const r of regions) native.munmap(r.hostAddress, r.size);
      throw e;
    }
    return new GuestMemory(regions, true);
  }

  /** Views RAM mapped by another thread of this process (from `describe()`). */
  static attach(descriptors: readonly MemoryRegionDescriptor[]): GuestMemory {
    return new GuestMemory(
      descriptors.map((d) => new Region(d.gpa, d.size, BigInt(d.hostAddress))),
      false,
    );
  }

  describe(): MemoryRegionDescriptor[] {
    return this.regionList.map((r) => ({ gpa: r.gpa, size: r.size, hostAddress: r.hostAddress.toString() }));
  }

  get regions(): readonly { readonly gpa: number; readonly size: number; readonly hostAddress: bigint }[] {
    return this.regionList;
  }

  get size(): number {
    return this.regionList.reduce((n, r) => n + r.size, 0);
  }

  /** Unmaps the RAM. Only the owner may; views taken earlier must not be used afterwards. */
  release(): void {
    if (!this.owned) return;
    for (const r of this.regionList) check(native.munmap(r.hostAddress, r.size), 'munmap');
    this.regionList.length = 0;
  }

  private find(gpa: number, length: number): Region | undefined {
    if (!Number.isSafeInteger(gpa) || !Number.isSafeInteger(length) || gpa < 0 || length < 0) return undefined;
    for (const r of this.regionList) {
      if (gpa >= r.gpa && gpa - r.gpa <= r.size - length) return r;
    }
    return undefined;
  }

  /** True when [gpa, gpa + length) lies entirely inside one RAM region. */
  contains(gpa: number, length: number): boolean {
    return this.find(gpa, length) !== undefined;
  }

  /**
   * A live view of guest RAM (no copy). The range must be inside RAM and must not cross a 1 GiB window
   * boundary; use read/write for ranges that may.
   */
  slice(gpa: number, length: number): Uint8Array {
    const r = this.find(gpa, length);
    if (!r) throw new GuestMemoryError(gpa, length);
    const off = gpa - r.gpa;
    const index = Math.floor(off / CHUNK_SIZE);
    const inChunk = off - index * CHUNK_SIZE;
    if (inChunk + length > CHUNK_SIZE) throw new GuestMemoryError(gpa, length, 'view crossing a 1 GiB window');
    return r.chunk(index).subarray(inChunk, inChunk + length);
  }

  /** Calls `fn` with consecutive live views covering [gpa, gpa + length), splitting at window boundaries. */
  forEachSpan(gpa: number, length: number, fn: (view: Uint8Array, offset: number) => void): void {
    const r = this.find(gpa, length);
    if (!r) throw new GuestMemoryError(gpa, length);
    let done = 0;
    while (done < length) {
      const off = gpa - r.gpa + done;
      const index = Math.floor(off / CHUNK_SIZE);
      const inChunk = off - index * CHUNK_SIZE;
      const n = Math.min(length - done, CHUNK_SIZE - inChunk);
      fn(r.chunk(index).subarray(inChunk, inChunk + n), done);
      done += n;
    }
  }

  read(gpa: number, length: number): Uint8Array {
    if (!this.find(gpa, length)) throw new GuestMemoryError(gpa, length);
    const out = new Uint8Array(length);
    this.forEachSpan(gpa, length, (view, offset) => out.set(view, offset));
    return out;
  }

  write(gpa: number, data: Uint8Array): void {
    this.forEachSpan(gpa, data.length, (view, offset) => view.set(data.subarray(offset, offset + view.length)));
  }

  fill(gpa: number, length: number, value = 0): void {
    this.forEachSpan(gpa, length, (view) => view.fill(value));
  }

  private dataView(gpa: number, length: number): DataView {
    const s = this.slice(gpa, length);
    return new DataView(s.buffer, s.byteOffset, length);
  }

  readU8(gpa: number): number {
    return this.slice(gpa, 1)[0];
  }
  readU16(gpa: number): number {
    return this.dataView(gpa, 2).getUint16(0, true);
  }
  readU32(gpa: number): number {
    return this.dataView(gpa, 4).getUint32(0, true);
  }
  readU64(gpa: number): bigint {
    return this.dataView(gpa, 8).getBigUint64(0, true);
  }
  writeU8(gpa: number, v: number): void {
    this.slice(gpa, 1)[0] = v;
  }
  writeU16(gpa: number, v: number): void {
    this.dataView(gpa, 2).setUint16(0, v, true);
  }
  writeU32(gpa: number, v: number): void {
    this.dataView(gpa, 4).setUint32(0, v >>> 0, true);
  }
  writeU64(gpa: number, v: bigint | number): void {
    this.dataView(gpa, 8).setBigUint64(0, BigInt(v), true);
  }

  /** Reads a NUL-terminated string of at most `max` bytes. */
  readCString(gpa: number, max = 4096): string {
    const bytes: number[] = [];
    for (let i = 0; i < max; i++) {
      const b = this.readU8(gpa + i);
      if (b === 0) break;
      bytes.push(b);
    }
    return Buffer.from(bytes).toString('latin1');
  }
}
