// PCI bus 0 behind a host bridge: configuration mechanism #1 (ports 0xCF8/0xCFC, PCI Local Bus 3.0 §3.2.2.3.2),
// PCIe ECAM (MMCONFIG, PCI Express Base §7.2.2), and the windows through which BAR accesses reach devices.
// BAR placement is read from each function's shared config space on every access, so a BAR the guest moves on
// one thread is seen by all.
//
// A guest may program BARs anywhere, as on real hardware: on top of each other (Linux passes through such states
// while it reassigns resources), over RAM, over other devices, beyond the windows. The bus therefore decodes the
// way a PCI bus does, totally: only accesses inside its windows reach it; of the BARs covering an access, the one
// of the lowest device/function wins (then the lowest BAR index); a BAR outside every window decodes nothing.
// What the host registers at BAR addresses (virtio notify ioeventfds) follows the same rule, through barsChanged().
import type { MmioDevice, PortIoDevice } from '../bus.js';
import { SharedLock } from '../../base/shared-lock.js';
import { PciConfigSpace } from './config-space.js';

/**
 * Where an access of `length` bytes at `offset` into BAR `bar` of one function reaches that function: the address
 * (memory or port), or undefined when no access can reach it there (decoding off, outside the bus's windows, past
 * the BAR's end, or covered by a BAR that wins the decode).
 */
export type BarLocator = (bar: number, offset: number, length: number) => number | undefined;

/** A function on the bus: its config space, and handlers for accesses to its BARs. */
export interface PciFunction {
  readonly name: string;
  readonly config: PciConfigSpace;
  barRead(bar: number, offset: number, data: Uint8Array): void;
  barWrite(bar: number, offset: number, data: Uint8Array): void;
  /** Called before a config read, for registers whose value is computed on demand (virtio's PCI_CFG window). */
  beforeConfigRead?(offset: number, size: number): void;
  /** Config writes beyond the generic handling (e.g. MSI-X enable); called after the bytes were stored. */
  configWritten?(offset: number, size: number): void;
  /**
   * A BAR moved or decoding was switched somewhere on the bus (this function's own BARs, or another's that now
   * covers or uncovers them): move what the host registered at BAR addresses (ioeventfds). The bus calls every
   * function with 'release' (drop registrations that are no longer where `locate` says) before any with 'place'
   * (make the missing ones), so an address one function leaves is free before another takes it.
   */
  barsChanged?(locate: BarLocator, phase: 'release' | 'place'): void;
}

export const PCI_CONFIG_ADDRESS_PORT = 0xcf8;
export const PCI_CONFIG_DATA_PORT = 0xcfc;

/** Bus 0 has 32 device slots with up to 8 functions each. */
export type Devfn = number;
export const devfn = (device: number, fn = 0): Devfn => (device << 3) | fn;

interface Window {
  readonly base: number;
  readonly end: number;
}

export class PciBus {
  /** Bytes of the state every thread's view of the bus shares (see the constructor). */
  static readonly SHARED_BYTES = 8;
  private readonly functions = new Map<Devfn, PciFunction>();
  /** The functions by ascending devfn: the order in which overlapping BARs win the decode. */
  private ordered: PciFunction[] = [];
  /** CONFIG_ADDRESS is per-machine state; shared so every exit-handling thread sees the same latch. */
  private readonly address: Int32Array;
  /** Serializes BAR re-placement (ioeventfds) across threads, so each pass sees one set of BAR addresses. */
  private readonly placementLock: SharedLock;
  private readonly windows: Record<'io' | 'mem', Window[]> = { io: [], mem: [] };

  /** `shared`: word 0 CONFIG_ADDRESS, word 1 the placement lock (SHARED_BYTES bytes). */
  constructor(shared: SharedArrayBuffer = new SharedArrayBuffer(PciBus.SHARED_BYTES)) {
    if (shared.byteLength < PciBus.SHARED_BYTES)
      throw new RangeError(`PCI bus state needs ${PciBus.SHARED_BYTES} bytes, not ${shared.byteLength}`);
    this.address = new Int32Array(shared, 0, 1);
    this.placementLock = new SharedLock(shared, 4);
  }

  /** The CONFIG_ADDRESS latch (port 0xCF8), for save/restore. */
  get configAddress(): number {
    return Atomics.load(this.address, 0) >>> 0;
  }

  set configAddress(value: number) {
    Atomics.store(this.address, 0, value | 0);
  }

  get addressBuffer(): SharedArrayBuffer {
    return this.address.buffer as SharedArrayBuffer;
  }

  add(slot: Devfn, fn: PciFunction): void {
    if (this.functions.has(slot))
      throw new Error(`PCI slot ${slot >> 3}.${slot & 7} is taken by ${this.functions.get(slot)!.name}`);
    this.functions.set(slot, fn);
    this.ordered = [...this.functions.entries()].sort(([a], [b]) => a - b).map(([, f]) => f);
  }

  get all(): ReadonlyMap<Devfn, PciFunction> {
    return this.functions;
  }

  configRead(bus: number, slot: Devfn, offset: number, size: number): number {
    const fn = bus === 0 ? this.functions.get(slot) : undefined;
    if (!fn) return size === 4 ? 0xffffffff : (1 << (8 * size)) - 1; // no device: master abort reads all ones
    fn.beforeConfigRead?.(offset, size);
    return fn.config.read(offset, size);
  }

  configWrite(bus: number, slot: Devfn, offset: number, size: number, value: number): void {
    const fn = bus === 0 ? this.functions.get(slot) : undefined;
    if (!fn) return;
    const barsMoved = fn.config.write(offset, size, value);
    fn.configWritten?.(offset, size);
    if (barsMoved) this.barsMoved();
  }

  /**
   * Re-places every function's BAR-bound host registrations after a BAR moved or decoding changed. All
   * functions, not only the one written: its BARs may have covered or uncovered another's.
   */
  barsMoved(): void {
    this.placementLock.with(() => {
      for (const phase of ['release', 'place'] as const)
        for (const fn of this.ordered) fn.barsChanged?.(this.locator(fn), phase);
    });
  }

  /** The BarLocator of one function on this bus. */
  locator(fn: PciFunction): BarLocator {
    return (bar, offset, length) => {
      const def = fn.config.bar(bar);
      const base = fn.config.barBase(bar);
      if (!def || base === undefined || offset < 0 || offset + length > def.size) return undefined;
      const space = def.kind === 'io' ? 'io' : 'mem';
      const address = base + offset;
      if (!this.routes(space, address, length)) return undefined;
      const hit = this.resolve(space, address, length);
      return hit && hit.fn === fn && hit.bar === bar ? address : undefined;
    };
  }

  /** True when an access lies wholly inside one of the bus's windows (only those reach the bus at all). */
  routes(space: 'io' | 'mem', address: number, length: number): boolean {
    return this.windows[space].some((w) => address >= w.base && address + length <= w.end);
  }

  /**
   * Finds the function and BAR decoding `address` in the given space. Overlapping BARs are legal (a guest
   * reassigning resources passes through such states): the lowest devfn wins, then the lowest BAR index.
   */
  resolve(
    space: 'io' | 'mem',
    address: number,
    length: number,
  ): { fn: PciFunction; bar: number; offset: number } | undefined {
    for (const fn of this.ordered) {
      for (let bar = 0; bar < 6; bar++) {
        const def = fn.config.bar(bar);
        if (!def || (def.kind === 'io') !== (space === 'io')) continue;
        const base = fn.config.barBase(bar);
        if (base === undefined || base === 0) continue;
        if (address >= base && address + length <= base + def.size) return { fn, bar, offset: address - base };
      }
    }
    return undefined;
  }

  /** Ports 0xCF8-0xCFF: configuration mechanism #1. */
  configPorts(): PortIoDevice {
    return {
      name: 'pci-config-io',
      pioRead: (offset, size) => {
        if (offset === 0 && size === 4) return Atomics.load(this.address, 0) >>> 0;
        if (offset < 4) return size === 4 ? 0xffffffff : (1 << (8 * size)) - 1;
        const a = Atomics.load(this.address, 0) >>> 0;
        if (!(a & 0x80000000)) return size === 4 ? 0xffffffff : (1 << (8 * size)) - 1;
        return this.configRead((a >>> 16) & 0xff, (a >>> 8) & 0xff, (a & 0xfc) + (offset - 4), size);
      },
      pioWrite: (offset, size, value) => {
        if (offset === 0 && size === 4) {
          Atomics.store(this.address, 0, value | 0);
          return;
        }
        if (offset < 4) return; // byte writes to 0xCF8..0xCFB are not config address writes (0xCF9 is reset)
        const a = Atomics.load(this.address, 0) >>> 0;
        if (!(a & 0x80000000)) return;
        this.configWrite((a >>> 16) & 0xff, (a >>> 8) & 0xff, (a & 0xfc) + (offset - 4), size, value);
      },
    };
  }

  /** The ECAM window: bus << 20 | devfn << 12 | register. */
  ecam(): MmioDevice {
    const decode = (offset: number): [number, Devfn, number] => [offset >>> 20, (offset >>> 12) & 0xff, offset & 0xfff];
    return {
      name: 'pci-ecam',
      mmioRead: (offset, data) => {
        const [bus, slot, reg] = decode(offset);
        const size = data.length;
        if (size > 4 || reg % size !== 0) return void data.fill(0xff);
        const v = this.configRead(bus, slot, reg, size);
        for (let i = 0; i < size; i++) data[i] = (v >>> (8 * i)) & 0xff;
      },
      mmioWrite: (offset, data) => {
        const [bus, slot, reg] = decode(offset);
        const size = data.length;
        if (size > 4 || reg % size !== 0) return;
        let v = 0;
        for (let i = size - 1; i >= 0; i--) v = v * 256 + data[i];
        this.configWrite(bus, slot, reg, size, v >>> 0);
      },
    };
  }

  /** A window of the memory space where BARs live (to register on the MMIO bus at [base, base + size)). */
  memoryWindow(base: number, size: number): MmioDevice {
    this.windows.mem.push({ base, end: base + size });
    return {
      name: 'pci-mmio-window',
      mmioRead: (offset, data) => {
        const hit = this.resolve('mem', base + offset, data.length);
        if (!hit) return void data.fill(0xff);
        hit.fn.barRead(hit.bar, hit.offset, data);
      },
      mmioWrite: (offset, data) => {
        const hit = this.resolve('mem', base + offset, data.length);
        if (hit) hit.fn.barWrite(hit.bar, hit.offset, data);
      },
    };
  }

  /** The I/O port window for I/O BARs (to register on the port bus at [base, base + size)). */
  ioWindow(base: number, size: number): PortIoDevice {
    this.windows.io.push({ base, end: base + size });
    const scratch = [new Uint8Array(1), new Uint8Array(2), new Uint8Array(3), new Uint8Array(4)];
    return {
      name: 'pci-io-window',
      pioRead: (offset, size) => {
        const hit = this.resolve('io', base + offset, size);
        if (!hit) return size === 4 ? 0xffffffff : (1 << (8 * size)) - 1;
        const data = scratch[size - 1];
        hit.fn.barRead(hit.bar, hit.offset, data);
        let v = 0;
        for (let i = size - 1; i >= 0; i--) v = v * 256 + data[i];
        return v >>> 0;
      },
      pioWrite: (offset, size, value) => {
        const hit = this.resolve('io', base + offset, size);
        if (!hit) return;
        const data = scratch[size - 1];
        for (let i = 0; i < size; i++) data[i] = (value >>> (8 * i)) & 0xff;
        hit.fn.barWrite(hit.bar, hit.offset, data);
      },
    };
  }
}

/** Hands out BAR addresses from the PCI windows, naturally aligned, the way firmware would. */
export class BarAllocator {
  private nextMem32: number;
  private nextMem64: number;
  private nextIo: number;
  constructor(
    private readonly mem32: { base: number; end: number },
    private readonly mem64: { base: number; end: number },
    private readonly io: { base: number; end: number },
  ) {
    this.nextMem32 = mem32.base;
    this.nextMem64 = mem64.base;
    this.nextIo = io.base;
  }

  allocate(kind: 'io' | 'mem32' | 'mem64', size: number): number {
    const align = (v: number): number => Math.ceil(v / size) * size;
    if (kind === 'io') {
      const at = align(this.nextIo);
      if (at + size > this.io.end) throw new RangeError(`PCI I/O window exhausted (${size} bytes)`);
      this.nextIo = at + size;
      return at;
    }
    if (kind === 'mem32') {
      const at = align(this.nextMem32);
      if (at + size > this.mem32.end) throw new RangeError(`PCI 32-bit memory window exhausted (${size} bytes)`);
      this.nextMem32 = at + size;
      return at;
    }
    const at = align(this.nextMem64);
    if (at + size > this.mem64.end) throw new RangeError(`PCI 64-bit memory window exhausted (${size} bytes)`);
    this.nextMem64 = at + size;
    return at;
  }
}
