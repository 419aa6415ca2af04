// A PCI function's configuration space: PCI Local Bus Specification 3.0 §6 (type 0 header), PCI Express Base
// Specification §7.2 (4 KiB extended space). The bytes live in a SharedArrayBuffer so every exit-handling
// thread sees one device; per-byte masks say which bits the guest may write (RW) and which it clears by
// writing 1 (RW1C). BARs are sized the standard way: writing all ones reads back the size mask.
export const CONFIG_SPACE_SIZE = 4096;

export const PCI_VENDOR_ID = 0x00;
export const PCI_DEVICE_ID = 0x02;
export const PCI_COMMAND = 0x04;
export const PCI_STATUS = 0x06;
export const PCI_REVISION_ID = 0x08;
export const PCI_CLASS_PROG = 0x09;
export const PCI_CLASS_DEVICE = 0x0a;
export const PCI_HEADER_TYPE = 0x0e;
export const PCI_BAR0 = 0x10;
export const PCI_SUBSYSTEM_VENDOR_ID = 0x2c;
export const PCI_SUBSYSTEM_ID = 0x2e;
export const PCI_CAPABILITY_LIST = 0x34;
export const PCI_INTERRUPT_LINE = 0x3c;
export const PCI_INTERRUPT_PIN = 0x3d;

export const PCI_COMMAND_IO = 0x1;
export const PCI_COMMAND_MEMORY = 0x2;
export const PCI_COMMAND_MASTER = 0x4;
export const PCI_COMMAND_INTX_DISABLE = 0x400;
export const PCI_STATUS_INTERRUPT = 0x8;
export const PCI_STATUS_CAP_LIST = 0x10;

export const PCI_CAP_ID_MSI = 0x05;
export const PCI_CAP_ID_VNDR = 0x09;
export const PCI_CAP_ID_EXP = 0x10;
export const PCI_CAP_ID_MSIX = 0x11;

/**
 * The subsystem IDs QEMU gives its emulated PCI functions (Red Hat/Qumranet 1af4:1100). Firmware's QEMU support keys
 * on them: SeaBIOS identifies QEMU by the host bridge's and only then reads fw_cfg.
 */
export const QEMU_SUBSYSTEM_IDS = { subsystemVendorId: 0x1af4, subsystemId: 0x1100 } as const;

export type BarKind = 'io' | 'mem32' | 'mem64';

export interface BarDefinition {
  readonly index: number; // 0..5 (a mem64 BAR also takes index + 1)
  readonly kind: BarKind;
  readonly size: number; // power of two; ≥ 16 for memory, ≥ 4 for I/O
  readonly prefetchable?: boolean;
}

export interface PciIdentity {
  readonly vendorId: number;
  readonly deviceId: number;
  readonly classCode: number; // 24 bits: class << 16 | subclass << 8 | prog-if
  readonly revision?: number;
  readonly subsystemVendorId?: number;
  readonly subsystemId?: number;
  readonly headerType?: number;
  readonly interruptPin?: number; // 1 = INTA#, 0 = none
}

/** Layout of the shared buffer: config bytes, then the BAR sizes programmed at creation (read by other threads). */
const BAR_SIZES_OFFSET = CONFIG_SPACE_SIZE;
const SHARED_BYTES = CONFIG_SPACE_SIZE + 6 * 8;

export class PciConfigSpace {
  readonly bytes: Uint8Array;
  private readonly view: DataView;
  private readonly writable = new Uint8Array(CONFIG_SPACE_SIZE);
  private readonly clearOnWrite = new Uint8Array(CONFIG_SPACE_SIZE);
  private readonly barSizes: Float64Array;
  private readonly bars: (BarDefinition | undefined)[] = new Array(6);
  private nextCapability = 0x40;
  private lastCapability = 0;

  constructor(readonly shared: SharedArrayBuffer = new SharedArrayBuffer(SHARED_BYTES)) {
    this.bytes = new Uint8Array(shared, 0, CONFIG_SPACE_SIZE);
    this.view = new DataView(shared, 0, CONFIG_SPACE_SIZE);
    this.barSizes = new Float64Array(shared, BAR_SIZES_OFFSET, 6);
  }

  /** Writes the identity registers and the standard writable bits (done once, by the thread creating the device). */
  initialize(id: PciIdentity): void {
    this.view.setUint16(PCI_VENDOR_ID, id.vendorId, true);
    this.view.setUint16(PCI_DEVICE_ID, id.deviceId, true);
    this.bytes[PCI_REVISION_ID] = id.revision ?? 0;
    this.bytes[PCI_CLASS_PROG] = id.classCode & 0xff;
    this.view.setUint16(PCI_CLASS_DEVICE, (id.classCode >> 8) & 0xffff, true);
    this.bytes[PCI_HEADER_TYPE] = id.headerType ?? 0;
    this.view.setUint16(PCI_SUBSYSTEM_VENDOR_ID, id.subsystemVendorId ?? 0, true);
    this.view.setUint16(PCI_SUBSYSTEM_ID, id.subsystemId ?? 0, true);
    this.bytes[PCI_INTERRUPT_PIN] = id.interruptPin ?? 0;
    this.defineMasks(id);
  }

  /** Sets the write masks for what initialize() laid out; every thread viewing the device calls this. */
  defineMasks(id: Partial<PciIdentity>): void {
    // Command: I/O, memory, bus master, SERR#, INTx disable are writable (PCI 3.0 §6.2.2).
    this.setMask(
      PCI_COMMAND,
      2,
      PCI_COMMAND_IO | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER | 0x100 | PCI_COMMAND_INTX_DISABLE,
    );
    // Status: the error bits are RW1C.
    this.setClearMask(PCI_STATUS, 2, 0xf900);
    this.writable[PCI_INTERRUPT_LINE] = 0xff;
    void id;
  }

  /** Lets the guest write `mask`'s bits of the `size` bytes at `offset` (a device's own registers, 0x40-0xFF). */
  setWritableMask(offset: number, size: number, mask: number): void {
    this.setMask(offset, size, mask);
  }

  private setMask(offset: number, size: number, mask: number): void {
    for (let i = 0; i < size; i++) this.writable[offset + i] = (mask >>> (8 * i)) & 0xff;
  }
  private setClearMask(offset: number, size: number, mask: number): void {
    for (let i = 0; i < size; i++) this.clearOnWrite[offset + i] = (mask >>> (8 * i)) & 0xff;
  }

  /** Declares a BAR; its address bits become writable, the low bits say its type (PCI 3.0 §6.2.5.1). */
  defineBar(bar: BarDefinition, initialize = true): void {
    const { index, kind, size } = bar;
    if (index < 0 || index > 5 || (kind === 'mem64' && index > 4))
      throw new RangeError(`BAR ${index} does not exist for ${kind}`);
    if (size & (size - 1) || size < (kind === 'io' ? 4 : 16))
      throw new RangeError(`BAR ${index} size ${size} is not a power of two ≥ ${kind === 'io' ? 4 : 16}`);
    this.bars[index] = bar;
    const at = PCI_BAR0 + 4 * index;
    const typeBits = kind === 'io' ? 0x1 : (kind === 'mem64' ? 0x4 : 0) | (bar.prefetchable ? 0x8 : 0);
    if (initialize) {
      this.view.setUint32(at, typeBits, true);
      if (kind === 'mem64') this.view.setUint32(at + 4, 0, true);
      this.barSizes[index] = size;
    }
    // Writable address bits: everything at or above the size (low 32 bits), all of the high dword for mem64.
    const lowMask = size >= 2 ** 32 ? 0 : (~(size - 1) >>> 0) & (kind === 'io' ? 0xfffffffc : 0xfffffff0);
    this.setMask(at, 4, lowMask);
    if (kind === 'mem64') {
      const highMask = size > 2 ** 32 ? ~(size / 2 ** 32 - 1) >>> 0 : 0xffffffff;
      this.setMask(at + 4, 4, highMask);
    }
  }

  bar(index: number): BarDefinition | undefined {
    return this.bars[index];
  }

  /**
   * The BAR's guest-programmed address, exact: a 64-bit BAR may be anywhere below 2^64, beyond what a number holds
   * (2^53). Undefined when the BAR is not defined or its decoding is off in the command register.
   */
  barAddress(index: number): bigint | undefined {
    const bar = this.decodingBar(index);
    if (!bar) return undefined;
    const high = bar.kind === 'mem64' ? this.view.getUint32(PCI_BAR0 + 4 * index + 4, true) : 0;
    return (BigInt(high) << 32n) | BigInt(this.barLow(index, bar));
  }

  /**
   * barAddress() as a number, for decoding on the exit path (no allocation): undefined also when the BAR lies at
   * or above 2^53, where no guest-physical address is (x86-64 physical addresses have at most 52 bits), so it
   * decodes nothing.
   */
  barBase(index: number): number | undefined {
    const bar = this.decodingBar(index);
    if (!bar) return undefined;
    const low = this.barLow(index, bar);
    if (bar.kind !== 'mem64') return low;
    const high = this.view.getUint32(PCI_BAR0 + 4 * index + 4, true);
    return high < 2 ** 21 ? high * 2 ** 32 + low : undefined;
  }

  /** The BAR's definition when it is defined and the command register enables decoding of its space. */
  private decodingBar(index: number): BarDefinition | undefined {
    const bar = this.bars[index];
    if (!bar) return undefined;
    const command = this.view.getUint16(PCI_COMMAND, true);
    return command & (bar.kind === 'io' ? PCI_COMMAND_IO : PCI_COMMAND_MEMORY) ? bar : undefined;
  }

  /** The address bits of the BAR's (low) dword. */
  private barLow(index: number, bar: BarDefinition): number {
    const dword = this.view.getUint32(PCI_BAR0 + 4 * index, true);
    return bar.kind === 'io' ? dword & 0xfffc : (dword & 0xfffffff0) >>> 0;
  }

  /** Places a BAR (the VMM's allocator does this before the guest runs, as firmware would). */
  setBarAddress(index: number, address: number | bigint): void {
    const bar = this.bars[index];
    if (!bar) throw new RangeError(`BAR ${index} is not defined`);
    const at = BigInt(address);
    const limit = bar.kind === 'mem64' ? 1n << 64n : 1n << 32n;
    if (at < 0n || at + BigInt(bar.size) > limit)
      throw new RangeError(`BAR ${index} address 0x${at.toString(16)} does not fit a ${bar.kind} BAR`);
    if (at % BigInt(bar.size) !== 0n)
      throw new RangeError(`BAR ${index} address 0x${at.toString(16)} is not aligned to its size`);
    const offset = PCI_BAR0 + 4 * index;
    const low = this.view.getUint32(offset, true) & (bar.kind === 'io' ? 0x3 : 0xf);
    this.view.setUint32(offset, Number(at & 0xffffffffn) | low, true);
    if (bar.kind === 'mem64') this.view.setUint32(offset + 4, Number(at >> 32n), true);
  }

  /**
   * Adds a capability (ID, then `body` bytes after the 2-byte header) to the list and returns its offset.
   * `writableMask` covers the body (same length), letting the guest write those bits.
   */
  addCapability(id: number, body: Uint8Array, writableMask?: Uint8Array, initialize = true): number {
    const offset = this.nextCapability;
    const length = 2 + body.length;
    if (offset + length > 256) throw new RangeError('PCI capabilities do not fit in the 256-byte config header');
    if (initialize) {
      this.bytes[offset] = id;
      this.bytes[offset + 1] = 0;
      this.bytes.set(body, offset + 2);
      if (this.lastCapability) this.bytes[this.lastCapability + 1] = offset;
      else this.bytes[PCI_CAPABILITY_LIST] = offset;
      this.view.setUint16(PCI_STATUS, this.view.getUint16(PCI_STATUS, true) | PCI_STATUS_CAP_LIST, true);
    }
    if (writableMask) this.writable.set(writableMask, offset + 2);
    this.lastCapability = offset;
    this.nextCapability = (offset + length + 3) & ~3;
    return offset;
  }

  /** A guest read of `size` bytes (1, 2 or 4) at `offset`; out-of-range reads give all ones. */
  read(offset: number, size: number): number {
    if (offset < 0 || offset + size > CONFIG_SPACE_SIZE) return size === 4 ? 0xffffffff : (1 << (8 * size)) - 1;
    let v = 0;
    for (let i = size - 1; i >= 0; i--) v = v * 256 + Atomics.load(this.bytes, offset + i);
    return v >>> 0;
  }

  /** A guest write: only writable bits change; RW1C bits written as 1 clear. Returns true if a BAR changed. */
  write(offset: number, size: number, value: number): boolean {
    if (offset < 0 || offset + size > CONFIG_SPACE_SIZE) return false;
    let barTouched = false;
    for (let i = 0; i < size; i++) {
      const at = offset + i;
      const byte = (value >>> (8 * i)) & 0xff;
      const old = this.bytes[at];
      const next = ((old & ~this.writable[at]) | (byte & this.writable[at])) & ~(byte & this.clearOnWrite[at]);
      if (next !== old) Atomics.store(this.bytes, at, next);
      if (at >= PCI_BAR0 && at < PCI_BAR0 + 24) barTouched = true;
    }
    if (offset <= PCI_COMMAND + 1 && offset + size > PCI_COMMAND) barTouched = true; // decode enables changed
    return barTouched;
  }

  /**
   * The first offset where `saved` (a whole config space) differs from this one in bits the guest can neither
   * write nor clear — identity, BAR types and sizes, the capability list — or -1: a saved config space from
   * another kind of function must not be loaded into this one.
   */
  fixedBitsDiffer(saved: Uint8Array): number {
    if (saved.length !== CONFIG_SPACE_SIZE) return 0;
    for (let at = 0; at < CONFIG_SPACE_SIZE; at++) {
      const fixed = ~(this.writable[at] | this.clearOnWrite[at]) & 0xff;
      if ((saved[at] & fixed) !== (this.bytes[at] & fixed)) return at;
    }
    return -1;
  }

  u16(offset: number): number {
    return this.view.getUint16(offset, true);
  }
  setU16(offset: number, v: number): void {
    this.view.setUint16(offset, v, true);
  }
  u32(offset: number): number {
    return this.view.getUint32(offset, true);
  }
}
