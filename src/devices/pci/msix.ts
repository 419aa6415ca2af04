// MSI-X (PCI Local Bus 3.0 §6.8.2): the capability, the vector table and pending-bit array in a BAR, and
// delivery through KVM irqfds on MSI routes. Masking is honoured: a vector that fires while masked (per vector
// or function-wide, or with MSI-X disabled) sets its pending bit and is delivered when unmasked.
// All state is in shared memory; any thread may fire a vector or handle a table access.
import { writeSync } from 'node:fs';
import { EFD_NONBLOCK, native, check } from '../../native/index.js';
import { SharedLock } from '../../base/shared-lock.js';
import type { GsiRouter } from '../../base/gsi-routing.js';
import { PCI_CAP_ID_MSIX, type PciConfigSpace } from './config-space.js';

const ENTRY_BYTES = 16;
const CTRL_ENABLE = 0x8000;
const CTRL_FUNCTION_MASK = 0x4000;
const VECTOR_MASKED = 1;

export interface MsixShared {
  /** lock (4 bytes) + table + PBA */
  readonly state: SharedArrayBuffer;
  readonly gsis: readonly number[];
  readonly eventFds: readonly number[];
}

export class MsixVectors {
  readonly tableBytes: number;
  readonly pbaBytes: number;
  private readonly lock: SharedLock;
  private readonly table: DataView;
  private readonly pba: Uint8Array;
  private capOffset = 0;
  private readonly one = new BigUint64Array([1n]);

  private constructor(
    readonly count: number,
    private readonly shared: MsixShared,
    private readonly router: GsiRouter,
  ) {
    this.tableBytes = count * ENTRY_BYTES;
    this.pbaBytes = Math.ceil(count / 64) * 8;
    this.lock = new SharedLock(shared.state, 0);
    this.table = new DataView(shared.state, 8, this.tableBytes);
    this.pba = new Uint8Array(shared.state, 8 + this.tableBytes, this.pbaBytes);
  }

  /** Creates `count` vectors: GSIs, eventfds bound as irqfds, all masked as after reset. */
  static create(count: number, router: GsiRouter): MsixVectors {
    if (count < 1 || count > 2048) throw new RangeError(`MSI-X supports 1..2048 vectors, not ${count}`);
    const tableBytes = count * ENTRY_BYTES;
    const state = new SharedArrayBuffer(8 + tableBytes + Math.ceil(count / 64) * 8);
    const gsis: number[] = [];
    const eventFds: number[] = [];
    for (let i = 0; i < count; i++) {
      const gsi = router.allocateMsi();
      const fd = check(native.eventfd(0, EFD_NONBLOCK), 'eventfd');
      router.attachIrqfd(gsi, fd);
      gsis.push(gsi);
      eventFds.push(fd);
    }
    const v = new MsixVectors(count, { state, gsis, eventFds }, router);
    for (let i = 0; i < count; i++) v.table.setUint32(i * ENTRY_BYTES + 12, VECTOR_MASKED, true);
    return v;
  }

  static attach(count: number, shared: MsixShared, router: GsiRouter): MsixVectors {
    return new MsixVectors(count, shared, router);
  }

  get sharedState(): MsixShared {
    return this.shared;
  }

  /** Adds the MSI-X capability: table at `tableOffset` and PBA at `pbaOffset`, both in BAR `bir`. */
  addCapability(
    config: PciConfigSpace,
    bir: number,
    tableOffset: number,
    pbaOffset: number,
    initialize = true,
  ): number {
    const body = new Uint8Array(10);
    const v = new DataView(body.buffer);
    v.setUint16(0, this.count - 1, true);
    v.setUint32(2, (tableOffset | bir) >>> 0, true);
    v.setUint32(6, (pbaOffset | bir) >>> 0, true);
    const mask = new Uint8Array(10);
    mask[1] = (CTRL_ENABLE | CTRL_FUNCTION_MASK) >> 8;
    this.capOffset = config.addCapability(PCI_CAP_ID_MSIX, body, mask, initialize);
    this.config = config;
    return this.capOffset;
  }

  private config?: PciConfigSpace;

  private control(): number {
    return this.config ? this.config.u16(this.capOffset + 2) : 0;
  }

  get enabled(): boolean {
    return (this.control() & CTRL_ENABLE) !== 0;
  }

  private deliverable(vector: number): boolean {
    const c = this.control();
    if (!(c & CTRL_ENABLE) || c & CTRL_FUNCTION_MASK) return false;
    return (this.table.getUint32(vector * ENTRY_BYTES + 12, true) & VECTOR_MASKED) === 0;
  }

  private routeLocked(vector: number): void {
    const at = vector * ENTRY_BYTES;
    this.router.setMsi(
      this.shared.gsis[vector],
      this.table.getUint32(at, true),
      this.table.getUint32(at + 4, true),
      this.table.getUint32(at + 8, true),
    );
  }

  private signal(vector: number): void {
    writeSync(this.shared.eventFds[vector], this.one);
  }

  /** Raises `vector`: delivered now, or left pending while masked. */
  fire(vector: number): void {
    if (vector < 0 || vector >= this.count) return;
    this.lock.with(() => {
      if (this.deliverable(vector)) {
        this.routeLocked(vector);
        this.signal(vector);
      } else {
        this.pba[vector >> 3] |= 1 << (vector & 7);
      }
    });
  }

  /** After the control register or a vector's mask changed: deliver whatever became unmasked and pending. */
  private flushPendingLocked(): void {
    for (let vector = 0; vector < this.count; vector++) {
      if (this.pba[vector >> 3] & (1 << (vector & 7)) && this.deliverable(vector)) {
        this.pba[vector >> 3] &= ~(1 << (vector & 7));
        this.routeLocked(vector);
        this.signal(vector);
      }
    }
  }

  /** Called when the guest wrote the capability (enable / function mask). */
  controlWritten(): void {
    this.lock.with(() => this.flushPendingLocked());
  }

  tableRead(offset: number, data: Uint8Array): void {
    if (offset + data.length > this.tableBytes || data.length > 8) return void data.fill(0xff);
    this.lock.with(() => {
      for (let i = 0; i < data.length; i++) data[i] = this.table.getUint8(offset + i);
    });
  }

  tableWrite(offset: number, data: Uint8Array): void {
    if (offset + data.length > this.tableBytes || data.length > 8) return;
    this.lock.with(() => {
      for (let i = 0; i < data.length; i++) this.table.setUint8(offset + i, data[i]);
      const first = Math.floor(offset / ENTRY_BYTES);
      const last = Math.floor((offset + data.length - 1) / ENTRY_BYTES);
      for (let v = first; v <= last; v++) if (this.deliverable(v)) this.routeLocked(v);
      this.flushPendingLocked();
    });
  }

  pbaRead(offset: number, data: Uint8Array): void {
    if (offset + data.length > this.pbaBytes) return void data.fill(0xff);
    this.lock.with(() => data.set(this.pba.subarray(offset, offset + data.length)));
  }

  /** The vector table and pending bits as the guest sees them (for a snapshot; the control word is in config space). */
  saveVectors(): { table: Uint8Array; pba: Uint8Array } {
    return this.lock.with(() => ({
      table: new Uint8Array(this.table.buffer, this.table.byteOffset, this.tableBytes).slice(),
      pba: this.pba.slice(),
    }));
  }

  /** Loads saveVectors()'s bytes (exactly tableBytes and pbaBytes long) and re-programs the routes. */
  restoreVectors(table: Uint8Array, pba: Uint8Array): void {
    if (table.length !== this.tableBytes || pba.length !== this.pbaBytes)
      throw new RangeError(
        `MSI-X state of ${table.length}+${pba.length} bytes for ${this.tableBytes}+${this.pbaBytes}`,
      );
    this.lock.with(() => {
      new Uint8Array(this.table.buffer, this.table.byteOffset, this.tableBytes).set(table);
      this.pba.set(pba);
    });
    this.restoreRoutes();
  }

  /**
   * Points every programmed vector's GSI at its table entry's address and data (after a restore, the new VM's
   * routing table knows nothing of them). Entries still all zero were never programmed and stay unrouted.
   */
  restoreRoutes(): void {
    this.lock.with(() => {
      for (let vector = 0; vector < this.count; vector++) {
        const at = vector * ENTRY_BYTES;
        const t = this.table;
        if (t.getUint32(at, true) || t.getUint32(at + 4, true) || t.getUint32(at + 8, true)) this.routeLocked(vector);
      }
    });
  }

  isPending(vector: number): boolean {
    return (this.pba[vector >> 3] & (1 << (vector & 7))) !== 0;
  }
}
