// Virtio over PCI, modern interface: virtio 1.2 §4.1 (capabilities §4.1.4, common configuration §4.1.4.3,
// notifications §4.1.4.4, ISR §4.1.4.5, device configuration §4.1.4.6, PCI configuration access §4.1.4.9).
//
// Register state is in shared memory so the vCPU thread that takes a config access and the I/O thread that
// runs the device backend see one device. Queue notifications are ioeventfds (a guest kick never exits to
// userspace) wherever the notify area decodes; where KVM refuses one, kicks arrive as MMIO exits instead and are
// handled the same (barWrite). Interrupts are MSI-X vectors on irqfds, or INTx through the ISR when MSI-X is off.
// The backend learns about status and queue changes through a "control" eventfd the vCPU thread writes.
import { writeSync } from 'node:fs';
import { check, EFD_NONBLOCK, native } from '../../native/index.js';
import { ioctls, kvm_ioeventfd } from '../../kvm/abi.js';
import { SharedLock } from '../../base/shared-lock.js';
import type { IrqLine } from '../../base/irq-line.js';
import { bytesToJson, DeviceStateError, jsonToBytes, type JsonValue } from '../model.js';
import type { BarLocator, PciFunction } from '../pci/bus.js';
import { CONFIG_SPACE_SIZE, PciConfigSpace, PCI_CAP_ID_VNDR } from '../pci/config-space.js';
import { MsixVectors, type MsixShared } from '../pci/msix.js';
import type { GsiRouter } from '../../base/gsi-routing.js';

export const VIRTIO_PCI_VENDOR_ID = 0x1af4;
export const VIRTIO_F_VERSION_1 = 32n;
export const VIRTIO_F_RING_INDIRECT_DESC = 28n;
export const VIRTIO_F_RING_EVENT_IDX = 29n;
export const VIRTIO_F_RING_PACKED = 34n;

export const STATUS_ACKNOWLEDGE = 1;
export const STATUS_DRIVER = 2;
export const STATUS_DRIVER_OK = 4;
export const STATUS_FEATURES_OK = 8;
export const STATUS_NEEDS_RESET = 64;
export const STATUS_FAILED = 128;
export const NO_VECTOR = 0xffff;

const CAP_COMMON = 1;
const CAP_NOTIFY = 2;
const CAP_ISR = 3;
const CAP_DEVICE = 4;
const CAP_PCI_CFG = 5;

/** Layout of the virtio BAR (64-bit memory BAR 4) and the MSI-X BAR (BAR 1), as QEMU lays them out. */
export const VIRTIO_BAR = 4;
export const MSIX_BAR = 1;
export const COMMON_OFFSET = 0x0000;
export const ISR_OFFSET = 0x1000;
export const DEVICE_OFFSET = 0x2000;
export const NOTIFY_OFFSET = 0x3000;
export const NOTIFY_MULTIPLIER = 4;
export const VIRTIO_BAR_SIZE = 0x4000;
export const MSIX_BAR_SIZE = 0x1000;
export const MSIX_PBA_OFFSET = 0x800;

export interface VirtioDeviceInfo {
  readonly deviceType: number; // virtio 1.2 §5: 1 net, 2 block, 3 console, 4 entropy
  readonly classCode: number;
  readonly features: bigint; // device-specific feature bits offered (transport bits are added)
  readonly queueSizes: readonly number[]; // maximum size of each queue
  readonly configSize: number; // bytes of device-specific configuration
  /** Offer VIRTIO_F_RING_PACKED (§2.8). Off unless asked for, as in QEMU (packed=on): split rings are the ones
   * every driver and firmware knows. */
  readonly packedRing?: boolean;
}

// Shared register file (Int32 words).
// Word 0 is the SharedLock.
const W_DEVICE_FEATURE_SELECT = 1;
const W_DRIVER_FEATURE_SELECT = 2;
const W_DRIVER_FEATURES_LO = 3;
const W_DRIVER_FEATURES_HI = 4;
const W_CONFIG_MSIX = 5;
const W_STATUS = 6;
const W_CONFIG_GENERATION = 7;
const W_QUEUE_SELECT = 8;
const W_ISR = 9;
const W_NOTIFY_GENERATION = 10; // bumped when the BAR moved and ioeventfds were re-registered
const W_INTX_LEVEL = 11; // the INTx line as last driven (changes only on transitions)
const W_NOTIFY_EXITS = 12; // queue notifications that reached userspace instead of the ioeventfd
const W_KICKS = 13; // ioeventfd wake-ups the backend's runner received (coalesced kicks)
const W_RESET_PENDING = 14; // the driver wrote 0 to device_status; the backend is still draining
const W_DEFERRED_RESET = 15; // a runner completes resets (set by VirtioRunner); otherwise they are immediate
const W_IOEVENTFD_REFUSED = 16; // notify ioeventfds KVM refused (those queues are notified through MMIO exits)
const W_QUEUES = 17;
// Per queue: size, msix vector, enable, desc lo/hi, driver lo/hi, device lo/hi, ioeventfd address lo/hi and
// whether one is registered there
const Q_SIZE = 0;
const Q_VECTOR = 1;
const Q_ENABLE = 2;
const Q_DESC = 3;
const Q_DRIVER = 5;
const Q_DEVICE = 7;
const Q_NOTIFY_ADDR = 9;
const Q_NOTIFY_REGISTERED = 11;
const Q_WORDS = 12;

/** Host-side words a device reset keeps: ioeventfd placement, interrupt line state, counters, runner mode. */
const PRESERVED_ON_RESET = new Set([
  W_NOTIFY_GENERATION,
  W_CONFIG_GENERATION,
  W_INTX_LEVEL,
  W_NOTIFY_EXITS,
  W_KICKS,
  W_DEFERRED_RESET,
  W_IOEVENTFD_REFUSED,
]);

export interface VirtioPciShared {
  readonly registers: SharedArrayBuffer;
  readonly deviceConfig: SharedArrayBuffer;
  readonly pciConfig: SharedArrayBuffer;
  readonly msix: MsixShared;
  /** eventfd per queue (ioeventfd) and the control eventfd (status/queue changes for the backend). */
  readonly queueEventFds: readonly number[];
  readonly controlEventFd: number;
}

export interface QueueConfig {
  readonly index: number;
  readonly size: number;
  readonly vector: number;
  readonly desc: number;
  readonly driver: number;
  readonly device: number;
  readonly enabled: boolean;
}

/** A saved transport state, checked (VirtioPciDevice.restoreState). */
interface ParsedTransportState {
  readonly deviceFeatureSelect: number;
  readonly driverFeatureSelect: number;
  readonly driverFeatures: bigint;
  readonly configMsixVector: number;
  readonly status: number;
  readonly configGeneration: number;
  readonly queueSelect: number;
  readonly isr: number;
  readonly queues: readonly {
    readonly size: number;
    readonly msixVector: number;
    readonly enabled: boolean;
    readonly desc: bigint;
    readonly driver: bigint;
    readonly device: bigint;
  }[];
  readonly deviceConfig: Uint8Array;
  readonly pciConfig: Uint8Array;
  readonly msixTable: Uint8Array;
  readonly msixPba: Uint8Array;
}

export class VirtioPciDevice implements PciFunction {
  readonly config: PciConfigSpace;
  readonly msix: MsixVectors;
  private readonly regs: Int32Array;
  private readonly lock: SharedLock;
  readonly deviceConfig: Uint8Array;
  private readonly one = new BigUint64Array([1n]);
  private readonly offered: bigint;
  private pciCfgCap = 0;
  /** A status write set DEVICE_NEEDS_RESET under the lock: the configuration interrupt follows outside it. */
  private configInterruptDue = false;

  private constructor(
    readonly name: string,
    readonly info: VirtioDeviceInfo,
    readonly shared: VirtioPciShared,
    private readonly vmFd: number,
    router: GsiRouter,
    private readonly intx: IrqLine | undefined,
    initialize: boolean,
  ) {
    this.regs = new Int32Array(shared.registers);
    this.lock = new SharedLock(shared.registers, 0); // word 0
    this.deviceConfig = new Uint8Array(shared.deviceConfig);
    this.offered =
      info.features |
      (1n << VIRTIO_F_VERSION_1) |
      (1n << VIRTIO_F_RING_INDIRECT_DESC) |
      (1n << VIRTIO_F_RING_EVENT_IDX) |
      (info.packedRing ? 1n << VIRTIO_F_RING_PACKED : 0n);
    const vectors = info.queueSizes.length + 1;
    this.msix = initialize ? MsixVectors.create(vectors, router) : MsixVectors.attach(vectors, shared.msix, router);
    this.config = new PciConfigSpace(shared.pciConfig);
    this.layoutConfigSpace(initialize);
    if (initialize) this.resetLocked();
  }

  /** Creates the device (once, on the builder's thread). */
  static create(
    name: string,
    info: VirtioDeviceInfo,
    vmFd: number,
    router: GsiRouter,
    intx?: IrqLine,
  ): VirtioPciDevice {
    const queueWords = W_QUEUES + info.queueSizes.length * Q_WORDS;
    const queueEventFds = info.queueSizes.map(() => check(native.eventfd(0, EFD_NONBLOCK), 'eventfd'));
    const shared = {
      registers: new SharedArrayBuffer(queueWords * 4),
      deviceConfig: new SharedArrayBuffer(Math.max(4, info.configSize)),
      pciConfig: new SharedArrayBuffer(4096 + 48),
      msix: undefined as unknown as MsixShared,
      queueEventFds,
      controlEventFd: check(native.eventfd(0, EFD_NONBLOCK), 'eventfd'),
    };
    const dev = new VirtioPciDevice(name, info, shared, vmFd, router, intx, true);
    (shared as { msix: MsixShared }).msix = dev.msix.sharedState;
    return dev;
  }

  /** Another thread's view of a device made by create(). */
  static attach(
    name: string,
    info: VirtioDeviceInfo,
    shared: VirtioPciShared,
    vmFd: number,
    router: GsiRouter,
    intx?: IrqLine,
  ): VirtioPciDevice {
    return new VirtioPciDevice(name, info, shared, vmFd, router, intx, false);
  }

  private layoutConfigSpace(initialize: boolean): void {
    const c = this.config;
    const id = {
      vendorId: VIRTIO_PCI_VENDOR_ID,
      deviceId: 0x1040 + this.info.deviceType,
      classCode: this.info.classCode,
      revision: 1,
      subsystemVendorId: VIRTIO_PCI_VENDOR_ID,
      subsystemId: 0x40,
      interruptPin: this.intx ? 1 : 0,
    };
    if (initialize) c.initialize(id);
    else c.defineMasks(id);
    c.defineBar({ index: MSIX_BAR, kind: 'mem32', size: MSIX_BAR_SIZE }, initialize);
    c.defineBar({ index: VIRTIO_BAR, kind: 'mem64', size: VIRTIO_BAR_SIZE, prefetchable: true }, initialize);
    const cap = (type: number, offset: number, length: number, extra?: number): Uint8Array => {
      // struct virtio_pci_cap after cap_vndr/cap_next: cap_len, cfg_type, bar, id, padding[2], offset, length
      const body = new Uint8Array(extra === undefined ? 14 : 18);
      const v = new DataView(body.buffer);
      body[0] = body.length + 2;
      body[1] = type;
      body[2] = VIRTIO_BAR;
      v.setUint32(6, offset, true);
      v.setUint32(10, length, true);
      if (extra !== undefined) v.setUint32(14, extra, true);
      return body;
    };
    c.addCapability(PCI_CAP_ID_VNDR, cap(CAP_COMMON, COMMON_OFFSET, 0x38), undefined, initialize);
    c.addCapability(PCI_CAP_ID_VNDR, cap(CAP_ISR, ISR_OFFSET, 1), undefined, initialize);
    c.addCapability(
      PCI_CAP_ID_VNDR,
      cap(CAP_DEVICE, DEVICE_OFFSET, Math.max(4, this.info.configSize)),
      undefined,
      initialize,
    );
    c.addCapability(
      PCI_CAP_ID_VNDR,
      cap(CAP_NOTIFY, NOTIFY_OFFSET, this.info.queueSizes.length * NOTIFY_MULTIPLIER, NOTIFY_MULTIPLIER),
      undefined,
      initialize,
    );
    // VIRTIO_PCI_CAP_PCI_CFG: a window into the BARs through config space (bar, offset, length writable, data).
    const cfgBody = cap(CAP_PCI_CFG, 0, 0);
    const cfg = new Uint8Array(cfgBody.length + 4);
    cfg.set(cfgBody);
    cfg[2] = 0;
    const mask = new Uint8Array(cfg.length);
    mask.fill(0xff, 2, 3); // bar
    mask.fill(0xff, 6, 14); // offset, length
    mask.fill(0xff, 14, 18); // pci_cfg_data
    this.pciCfgCap = c.addCapability(PCI_CAP_ID_VNDR, cfg, mask, initialize);
    this.msix.addCapability(c, MSIX_BAR, 0, MSIX_PBA_OFFSET, initialize);
  }

  // ---- register file ----------------------------------------------------------------------------------

  private q(index: number, word: number): number {
    return W_QUEUES + index * Q_WORDS + word;
  }

  get status(): number {
    return Atomics.load(this.regs, W_STATUS);
  }

  get driverFeatures(): bigint {
    return (BigInt(this.regs[W_DRIVER_FEATURES_HI] >>> 0) << 32n) | BigInt(this.regs[W_DRIVER_FEATURES_LO] >>> 0);
  }

  negotiated(bit: bigint): boolean {
    return ((this.driverFeatures >> bit) & 1n) === 1n;
  }

  queueConfig(index: number): QueueConfig {
    const r = this.regs;
    const u64 = (w: number): number => (r[this.q(index, w)] >>> 0) + (r[this.q(index, w + 1)] >>> 0) * 2 ** 32;
    return {
      index,
      size: r[this.q(index, Q_SIZE)],
      vector: r[this.q(index, Q_VECTOR)],
      enabled: r[this.q(index, Q_ENABLE)] === 1,
      desc: u64(Q_DESC),
      driver: u64(Q_DRIVER),
      device: u64(Q_DEVICE),
    };
  }

  private resetLocked(): void {
    const r = this.regs;
    // Device state goes back to its reset values; where the queues' ioeventfds are registered is host state
    // (it follows the BAR, not the driver) and must survive, or a later BAR move would register twice.
    for (let w = 1; w < W_QUEUES; w++) if (!PRESERVED_ON_RESET.has(w)) r[w] = 0;
    r[W_CONFIG_MSIX] = NO_VECTOR;
    this.info.queueSizes.forEach((size, i) => {
      for (let w = 0; w < Q_NOTIFY_ADDR; w++) r[this.q(i, w)] = 0;
      r[this.q(i, Q_SIZE)] = size;
      r[this.q(i, Q_VECTOR)] = NO_VECTOR;
    });
    this.updateIntxLocked();
  }

  private notifyBackend(): void {
    writeSync(this.shared.controlEventFd, this.one);
  }

  private commonRead(offset: number, size: number): number {
    const r = this.regs;
    const sel = r[W_QUEUE_SELECT];
    const inQueue = sel < this.info.queueSizes.length;
    const qw = (w: number): number => (inQueue ? r[this.q(sel, w)] : 0);
    switch (offset) {
      case 0x00:
        return r[W_DEVICE_FEATURE_SELECT];
      case 0x04: {
        const s = r[W_DEVICE_FEATURE_SELECT];
        return s === 0 ? Number(this.offered & 0xffffffffn) : s === 1 ? Number(this.offered >> 32n) : 0;
      }
      case 0x08:
        return r[W_DRIVER_FEATURE_SELECT];
      case 0x0c: {
        const s = r[W_DRIVER_FEATURE_SELECT];
        return s === 0 ? r[W_DRIVER_FEATURES_LO] >>> 0 : s === 1 ? r[W_DRIVER_FEATURES_HI] >>> 0 : 0;
      }
      case 0x10:
        return r[W_CONFIG_MSIX];
      case 0x12:
        return this.info.queueSizes.length;
      case 0x14:
        return size === 1 ? r[W_STATUS] : r[W_STATUS] | (r[W_CONFIG_GENERATION] << 8);
      case 0x15:
        return r[W_CONFIG_GENERATION] & 0xff;
      case 0x16:
        return sel;
      case 0x18:
        return qw(Q_SIZE);
      case 0x1a:
        return inQueue ? qw(Q_VECTOR) : NO_VECTOR;
      case 0x1c:
        return qw(Q_ENABLE);
      case 0x1e:
        return inQueue ? sel : 0; // queue_notify_off: queue i notifies at i * multiplier
      case 0x20:
        return qw(Q_DESC) >>> 0;
      case 0x24:
        return qw(Q_DESC + 1) >>> 0;
      case 0x28:
        return qw(Q_DRIVER) >>> 0;
      case 0x2c:
        return qw(Q_DRIVER + 1) >>> 0;
      case 0x30:
        return qw(Q_DEVICE) >>> 0;
      case 0x34:
        return qw(Q_DEVICE + 1) >>> 0;
      default:
        return 0;
    }
  }

  private commonWrite(offset: number, value: number): void {
    const r = this.regs;
    const sel = r[W_QUEUE_SELECT];
    const inQueue = sel < this.info.queueSizes.length;
    // Queue fields may only change while the queue is disabled and the driver is not yet running it.
    const queueWritable = inQueue && r[this.q(sel, Q_ENABLE)] === 0;
    switch (offset) {
      case 0x00:
        r[W_DEVICE_FEATURE_SELECT] = value;
        return;
      case 0x08:
        r[W_DRIVER_FEATURE_SELECT] = value;
        return;
      case 0x0c: {
        if (r[W_STATUS] & STATUS_FEATURES_OK) return; // features are fixed after FEATURES_OK
        const s = r[W_DRIVER_FEATURE_SELECT];
        if (s === 0) r[W_DRIVER_FEATURES_LO] = value;
        else if (s === 1) r[W_DRIVER_FEATURES_HI] = value;
        return;
      }
      case 0x10:
        r[W_CONFIG_MSIX] = value < this.msix.count ? value : NO_VECTOR;
        return;
      case 0x14:
        this.statusWrite(value & 0xff);
        return;
      case 0x16:
        r[W_QUEUE_SELECT] = value & 0xffff;
        return;
      case 0x18:
        if (queueWritable) {
          const max = this.info.queueSizes[sel];
          // Split queues need a power of two (§2.7); packed ones any size (§2.8.10.1); at most the maximum.
          const packed = this.negotiated(VIRTIO_F_RING_PACKED);
          r[this.q(sel, Q_SIZE)] =
            value && value <= max && (packed || (value & (value - 1)) === 0) ? value : r[this.q(sel, Q_SIZE)];
        }
        return;
      case 0x1a:
        if (inQueue) r[this.q(sel, Q_VECTOR)] = value < this.msix.count ? value : NO_VECTOR;
        return;
      case 0x1c:
        if (inQueue && value === 1 && r[this.q(sel, Q_ENABLE)] === 0) {
          r[this.q(sel, Q_ENABLE)] = 1;
          this.notifyBackend();
        }
        return;
      case 0x20:
        if (queueWritable) r[this.q(sel, Q_DESC)] = value;
        return;
      case 0x24:
        if (queueWritable) r[this.q(sel, Q_DESC + 1)] = value;
        return;
      case 0x28:
        if (queueWritable) r[this.q(sel, Q_DRIVER)] = value;
        return;
      case 0x2c:
        if (queueWritable) r[this.q(sel, Q_DRIVER + 1)] = value;
        return;
      case 0x30:
        if (queueWritable) r[this.q(sel, Q_DEVICE)] = value;
        return;
      case 0x34:
        if (queueWritable) r[this.q(sel, Q_DEVICE + 1)] = value;
        return;
      default:
        return;
    }
  }

  private statusWrite(value: number): void {
    const r = this.regs;
    if (value === 0) {
      // §2.4.1: device_status reads 0 only once the device has stopped touching the queues. With a runner, the
      // old status stays visible (the driver polls for 0, §4.1.4.3.2) until the backend has drained.
      const old = r[W_STATUS];
      this.resetLocked();
      if (old !== 0 && r[W_DEFERRED_RESET]) {
        r[W_STATUS] = old;
        r[W_RESET_PENDING] = 1;
      }
      this.notifyBackend();
      return;
    }
    if (r[W_RESET_PENDING]) return; // the driver must wait for 0 before initializing again: ignore it
    let next = value;
    if (value & STATUS_FEATURES_OK && !(r[W_STATUS] & STATUS_FEATURES_OK)) {
      // §3.1.1: accept only a subset of what was offered, and (modern transport) VERSION_1 must be there.
      const wanted = this.driverFeatures;
      if ((wanted & ~this.offered) !== 0n || ((wanted >> VIRTIO_F_VERSION_1) & 1n) === 0n) next &= ~STATUS_FEATURES_OK;
    }
    // §3.1.1: the device runs only features it accepted with FEATURES_OK. DRIVER_OK without it (never set, or
    // refused just now) would start the device with features nobody validated (a RING_PACKED it never offered):
    // the device stays inactive and asks for a reset instead (the runner never activates a NEEDS_RESET device).
    const refused = (next & STATUS_DRIVER_OK) !== 0 && (next & STATUS_FEATURES_OK) === 0;
    r[W_STATUS] = next | (r[W_STATUS] & STATUS_NEEDS_RESET) | (refused ? STATUS_NEEDS_RESET : 0);
    if (refused) {
      Atomics.add(r, W_CONFIG_GENERATION, 1);
      this.configInterruptDue = true; // sent by commonWrite's caller once the lock is released
    }
    this.notifyBackend();
  }

  /** A runner will call completeReset() after each reset the driver asks for (see statusWrite). */
  deferResets(): void {
    Atomics.store(this.regs, W_DEFERRED_RESET, 1);
  }

  /** The driver asked for a reset that the backend has not finished yet. */
  get resetPending(): boolean {
    return Atomics.load(this.regs, W_RESET_PENDING) === 1;
  }

  /** The backend has drained: device_status reads 0 from now on. */
  completeReset(): void {
    this.lock.with(() => {
      if (!this.regs[W_RESET_PENDING]) return;
      this.regs[W_RESET_PENDING] = 0;
      this.regs[W_STATUS] = 0;
    });
  }

  /** The device changed its configuration (I/O thread): new bytes, a new generation, a config interrupt. */
  updateDeviceConfig(offset: number, bytes: Uint8Array): void {
    if (offset < 0 || offset + bytes.length > this.deviceConfig.length)
      throw new RangeError(`${this.name}: device config update at ${offset}+${bytes.length} is out of range`);
    this.lock.with(() => {
      this.deviceConfig.set(bytes, offset);
      Atomics.add(this.regs, W_CONFIG_GENERATION, 1);
    });
    this.interruptConfig();
  }

  /** The device found the driver misbehaving: set DEVICE_NEEDS_RESET and tell it (§2.1.2). */
  needsReset(): void {
    this.lock.with(() => {
      this.regs[W_STATUS] |= STATUS_NEEDS_RESET;
      Atomics.add(this.regs, W_CONFIG_GENERATION, 1);
    });
    this.interruptConfig();
  }

  // ---- interrupts -------------------------------------------------------------------------------------

  private updateIntxLocked(): void {
    if (!this.intx) return;
    const level = this.regs[W_ISR] !== 0 && !this.msix.enabled ? 1 : 0;
    if (level === this.regs[W_INTX_LEVEL]) return;
    this.regs[W_INTX_LEVEL] = level;
    this.intx.set(level === 1);
  }

  /** Signals "used buffers" on queue `index` (MSI-X vector of the queue, or INTx + ISR bit 0). */
  interruptQueue(index: number): void {
    if (this.msix.enabled) {
      const v = this.regs[this.q(index, Q_VECTOR)];
      if (v !== NO_VECTOR) this.msix.fire(v);
      return;
    }
    this.lock.with(() => {
      this.regs[W_ISR] |= 1;
      this.updateIntxLocked();
    });
  }

  /** Signals a configuration change (§4.1.4.5: ISR bit 1, or the config MSI-X vector). */
  interruptConfig(): void {
    if (this.msix.enabled) {
      const v = this.regs[W_CONFIG_MSIX];
      if (v !== NO_VECTOR) this.msix.fire(v);
      return;
    }
    this.lock.with(() => {
      this.regs[W_ISR] |= 3;
      this.updateIntxLocked();
    });
  }

  // ---- BAR and config-space access (vCPU threads) --------------------------------------------------------

  barRead(bar: number, offset: number, data: Uint8Array): void {
    if (bar === MSIX_BAR) {
      if (offset < MSIX_PBA_OFFSET) this.msix.tableRead(offset, data);
      else this.msix.pbaRead(offset - MSIX_PBA_OFFSET, data);
      return;
    }
    if (bar !== VIRTIO_BAR) return void data.fill(0xff);
    let value = 0;
    if (offset >= COMMON_OFFSET && offset < COMMON_OFFSET + 0x38) {
      value = this.lock.with(() => this.commonRead(offset - COMMON_OFFSET, data.length));
    } else if (offset === ISR_OFFSET) {
      value = this.lock.with(() => {
        const isr = this.regs[W_ISR];
        this.regs[W_ISR] = 0; // reading the ISR acknowledges it and de-asserts INTx
        this.updateIntxLocked();
        return isr;
      });
    } else if (offset >= DEVICE_OFFSET && offset < DEVICE_OFFSET + this.deviceConfig.length) {
      const at = offset - DEVICE_OFFSET;
      for (let i = data.length - 1; i >= 0; i--)
        value = value * 256 + (at + i < this.deviceConfig.length ? this.deviceConfig[at + i] : 0);
      for (let i = 0; i < data.length; i++) data[i] = at + i < this.deviceConfig.length ? this.deviceConfig[at + i] : 0;
      return;
    }
    for (let i = 0; i < data.length; i++) data[i] = (value / 2 ** (8 * i)) & 0xff;
  }

  barWrite(bar: number, offset: number, data: Uint8Array): void {
    if (bar === MSIX_BAR) {
      if (offset < MSIX_PBA_OFFSET) this.msix.tableWrite(offset, data);
      return;
    }
    if (bar !== VIRTIO_BAR) return;
    let value = 0;
    for (let i = Math.min(data.length, 4) - 1; i >= 0; i--) value = value * 256 + data[i];
    if (offset >= COMMON_OFFSET && offset < COMMON_OFFSET + 0x38) {
      this.lock.with(() => this.commonWrite(offset - COMMON_OFFSET, value >>> 0));
      if (this.configInterruptDue) {
        this.configInterruptDue = false;
        this.interruptConfig(); // takes the lock itself
      }
    } else if (offset >= NOTIFY_OFFSET && offset < NOTIFY_OFFSET + this.info.queueSizes.length * NOTIFY_MULTIPLIER) {
      // A notification that was not caught by the ioeventfd (e.g. while the BAR was being moved).
      const queue = Math.floor((offset - NOTIFY_OFFSET) / NOTIFY_MULTIPLIER);
      Atomics.add(this.regs, W_NOTIFY_EXITS, 1);
      writeSync(this.shared.queueEventFds[queue], this.one);
    } else if (offset >= DEVICE_OFFSET && offset < DEVICE_OFFSET + this.deviceConfig.length) {
      this.deviceConfigWritten?.(offset - DEVICE_OFFSET, data);
    }
  }

  /** How guest kicks arrived: through the ioeventfd (`kicks`, as the runner woke up) or as MMIO exits. */
  notificationCounts(): { kicks: number; notifyExits: number } {
    return { kicks: Atomics.load(this.regs, W_KICKS), notifyExits: Atomics.load(this.regs, W_NOTIFY_EXITS) };
  }

  countKick(): void {
    Atomics.add(this.regs, W_KICKS, 1);
  }

  /** Set by devices whose config space has writable fields (e.g. virtio-console emergency write). */
  deviceConfigWritten?: (offset: number, data: Uint8Array) => void;

  configWritten(offset: number, size: number): void {
    const cap = this.pciCfgCap;
    if (offset < cap || offset >= cap + 20) {
      this.msix.controlWritten();
      return;
    }
    // VIRTIO_PCI_CAP_PCI_CFG data window: forward to the BAR access it describes (§4.1.4.9).
    if (offset + size > cap + 16) {
      const bar = this.config.read(cap + 4, 1);
      const off = this.config.u32(cap + 8);
      const len = this.config.u32(cap + 12);
      if (len === 1 || len === 2 || len === 4) {
        const data = this.config.bytes.slice(cap + 16, cap + 16 + len);
        this.barWrite(bar, off, data);
      }
    }
  }

  beforeConfigRead(offset: number, size: number): void {
    const data = this.pciCfgCap + 16;
    if (this.pciCfgCap && offset < data + 4 && offset + size > data) this.refreshPciCfgWindow();
  }

  /** Loads pci_cfg_data before a config read of it (called by the owner of the bus before reads). */
  refreshPciCfgWindow(): void {
    const cap = this.pciCfgCap;
    const bar = this.config.read(cap + 4, 1);
    const off = this.config.u32(cap + 8);
    const len = this.config.u32(cap + 12);
    if (len !== 1 && len !== 2 && len !== 4) return;
    const data = new Uint8Array(len);
    this.barRead(bar, off, data);
    this.config.bytes.set(data, cap + 16);
  }

  // ---- save/restore ------------------------------------------------------------------------------------

  /**
   * Guest-visible transport state (its layout is VIRTIO_SNAPSHOT_VERSION's, pci-model.ts): the common-config
   * registers by name (64-bit values as hex strings), and as base64 the device config, the 4 KiB PCI config
   * space and the MSI-X table and PBA. Host facts stay out: the lock, where ioeventfds are registered, the INTx
   * level last driven (it follows from ISR and MSI-X), kick counters, the runner's deferred-reset mode. A reset
   * the backend is still draining is saved as done (status 0): the restored device has nothing in flight.
   */
  saveState(): JsonValue {
    const hex64 = (lo: number, hi: number): string =>
      `0x${(hi >>> 0).toString(16).padStart(8, '0')}${(lo >>> 0).toString(16).padStart(8, '0')}`;
    const registers = this.lock.with(() => {
      const r = this.regs;
      const queues: JsonValue[] = this.info.queueSizes.map((_, i) => ({
        size: r[this.q(i, Q_SIZE)],
        msixVector: r[this.q(i, Q_VECTOR)],
        enabled: r[this.q(i, Q_ENABLE)] === 1,
        desc: hex64(r[this.q(i, Q_DESC)], r[this.q(i, Q_DESC + 1)]),
        driver: hex64(r[this.q(i, Q_DRIVER)], r[this.q(i, Q_DRIVER + 1)]),
        device: hex64(r[this.q(i, Q_DEVICE)], r[this.q(i, Q_DEVICE + 1)]),
      }));
      return {
        deviceFeatureSelect: r[W_DEVICE_FEATURE_SELECT] >>> 0,
        driverFeatureSelect: r[W_DRIVER_FEATURE_SELECT] >>> 0,
        driverFeatures: hex64(r[W_DRIVER_FEATURES_LO], r[W_DRIVER_FEATURES_HI]),
        configMsixVector: r[W_CONFIG_MSIX],
        status: r[W_RESET_PENDING] ? 0 : r[W_STATUS],
        configGeneration: r[W_CONFIG_GENERATION] >>> 0,
        queueSelect: r[W_QUEUE_SELECT],
        isr: r[W_ISR],
        queues,
        deviceConfig: bytesToJson(this.deviceConfig.slice()),
      };
    });
    const vectors = this.msix.saveVectors();
    return {
      ...registers,
      pciConfig: bytesToJson(this.config.bytes.slice()),
      msixTable: bytesToJson(vectors.table),
      msixPba: bytesToJson(vectors.pba),
    };
  }

  /**
   * Loads saveState()'s result into a freshly created device of the same kind and options. Everything is
   * checked before anything changes: a malformed or foreign state is a DeviceStateError and the device is
   * untouched. Then the host side follows the restored registers: ioeventfds move to the restored BAR 4, every
   * programmed MSI-X vector is routed, the INTx line is driven to the restored level. The backend is not told
   * (no control event): the runner restores its queues itself (VirtioRunner.restoreQueues).
   */
  restoreState(saved: JsonValue | undefined): void {
    const state = this.parseState(saved);
    this.lock.with(() => {
      const r = this.regs;
      r[W_DEVICE_FEATURE_SELECT] = state.deviceFeatureSelect | 0;
      r[W_DRIVER_FEATURE_SELECT] = state.driverFeatureSelect | 0;
      r[W_DRIVER_FEATURES_LO] = Number(state.driverFeatures & 0xffffffffn) | 0;
      r[W_DRIVER_FEATURES_HI] = Number(state.driverFeatures >> 32n) | 0;
      r[W_CONFIG_MSIX] = state.configMsixVector;
      r[W_STATUS] = state.status;
      r[W_CONFIG_GENERATION] = state.configGeneration | 0;
      r[W_QUEUE_SELECT] = state.queueSelect;
      r[W_ISR] = state.isr;
      r[W_RESET_PENDING] = 0;
      state.queues.forEach((q, i) => {
        r[this.q(i, Q_SIZE)] = q.size;
        r[this.q(i, Q_VECTOR)] = q.msixVector;
        r[this.q(i, Q_ENABLE)] = q.enabled ? 1 : 0;
        const set64 = (w: number, v: bigint): void => {
          r[this.q(i, w)] = Number(v & 0xffffffffn) | 0;
          r[this.q(i, w + 1)] = Number(v >> 32n) | 0;
        };
        set64(Q_DESC, q.desc);
        set64(Q_DRIVER, q.driver);
        set64(Q_DEVICE, q.device);
      });
      this.deviceConfig.set(state.deviceConfig);
      for (let at = 0; at < state.pciConfig.length; at++) Atomics.store(this.config.bytes, at, state.pciConfig[at]);
    });
    this.msix.restoreVectors(state.msixTable, state.msixPba);
    this.registerIoeventfds();
    this.lock.with(() => {
      // Whatever the fresh line was left at, drive it to the level the restored ISR and MSI-X state imply.
      const level = this.regs[W_ISR] !== 0 && !this.msix.enabled ? 1 : 0;
      this.regs[W_INTX_LEVEL] = level;
      this.intx?.set(level === 1);
    });
  }

  /** saveState()'s result checked field by field against this device; a DeviceStateError names the first problem. */
  private parseState(saved: JsonValue | undefined): ParsedTransportState {
    const fail = (problem: string): never => {
      throw new DeviceStateError(this.name, problem);
    };
    if (typeof saved !== 'object' || saved === null || Array.isArray(saved)) return fail("lacks 'transport'");
    const s = saved as { readonly [key: string]: JsonValue };
    const int = (v: JsonValue | undefined, field: string, max: number, allowed?: number, min = 0): number => {
      if (typeof v !== 'number' || !Number.isInteger(v) || v < min || (v > max && v !== allowed))
        return fail(`'${field}' is ${JSON.stringify(v)}, not an integer in ${min}..${max}`);
      return v;
    };
    const u64 = (v: JsonValue | undefined, field: string): bigint => {
      if (typeof v !== 'string' || !/^0x[0-9a-f]{1,16}$/i.test(v))
        return fail(`'${field}' is ${JSON.stringify(v)}, not a 64-bit hex value`);
      return BigInt(v);
    };
    const bytes = (v: JsonValue | undefined, field: string, length: number): Uint8Array => {
      const out = new Uint8Array(length);
      jsonToBytes(this.name, field, v, out);
      return out;
    };
    const vectors = this.msix.count - 1;
    const status = int(s.status, 'status', 0xff);
    const driverFeatures = u64(s.driverFeatures, 'driverFeatures');
    if (status & STATUS_FEATURES_OK && (driverFeatures & ~this.offered) !== 0n)
      fail(`accepted features 0x${driverFeatures.toString(16)} that this device does not offer`);
    if (!Array.isArray(s.queues) || s.queues.length !== this.info.queueSizes.length)
      fail(
        `has ${Array.isArray(s.queues) ? s.queues.length : 'no'} queues; this device has ${this.info.queueSizes.length}`,
      );
    const queues = (s.queues as readonly JsonValue[]).map((q, i) => {
      if (typeof q !== 'object' || q === null || Array.isArray(q)) return fail(`queue ${i} is not an object`);
      const f = q as { readonly [key: string]: JsonValue };
      if (typeof f.enabled !== 'boolean') fail(`queue ${i} lacks 'enabled'`);
      return {
        size: int(f.size, `queues[${i}].size`, this.info.queueSizes[i], undefined, 1),
        msixVector: int(f.msixVector, `queues[${i}].msixVector`, vectors, NO_VECTOR),
        enabled: f.enabled === true,
        desc: u64(f.desc, `queues[${i}].desc`),
        driver: u64(f.driver, `queues[${i}].driver`),
        device: u64(f.device, `queues[${i}].device`),
      };
    });
    const pciConfig = bytes(s.pciConfig, 'pciConfig', CONFIG_SPACE_SIZE);
    const differs = this.config.fixedBitsDiffer(pciConfig);
    if (differs >= 0)
      fail(
        `PCI config space differs from this device's at read-only offset 0x${differs.toString(16)}: another kind of device?`,
      );
    return {
      deviceFeatureSelect: int(s.deviceFeatureSelect, 'deviceFeatureSelect', 0xffffffff),
      driverFeatureSelect: int(s.driverFeatureSelect, 'driverFeatureSelect', 0xffffffff),
      driverFeatures,
      configMsixVector: int(s.configMsixVector, 'configMsixVector', vectors, NO_VECTOR),
      status,
      configGeneration: int(s.configGeneration, 'configGeneration', 0xffffffff),
      queueSelect: int(s.queueSelect, 'queueSelect', 0xffff),
      isr: int(s.isr, 'isr', 3),
      queues,
      deviceConfig: bytes(s.deviceConfig, 'deviceConfig', this.deviceConfig.length),
      pciConfig,
      msixTable: bytes(s.msixTable, 'msixTable', this.msix.tableBytes),
      msixPba: bytes(s.msixPba, 'msixPba', this.msix.pbaBytes),
    };
  }

  /**
   * A BAR moved on the bus: move the queues' ioeventfds to where their notify addresses decode now (none where
   * they do not decode: outside the windows, or under a BAR that wins the decode). See PciFunction.barsChanged.
   */
  barsChanged(locate: BarLocator, phase: 'release' | 'place'): void {
    this.lock.with(() =>
      phase === 'release' ? this.releaseIoeventfdsLocked(locate) : this.placeIoeventfdsLocked(locate),
    );
  }

  /**
   * Registers one ioeventfd per queue notify address (KVM_IOEVENTFD), replacing any earlier registration. Without
   * a bus's locator the BAR is taken where it is (the builder's own placement, inside the window, apart).
   */
  registerIoeventfds(locate: BarLocator = this.ownBar): void {
    this.lock.with(() => {
      this.releaseIoeventfdsLocked(locate);
      this.placeIoeventfdsLocked(locate);
    });
  }

  private readonly ownBar: BarLocator = (bar, offset, length) => {
    const def = this.config.bar(bar);
    const base = this.config.barBase(bar);
    return def && base && offset + length <= def.size ? base + offset : undefined;
  };

  /** Where queue `index` has its notify ioeventfd registered (undefined: its kicks arrive as MMIO exits). */
  ioeventfdAddress(index: number): number | undefined {
    return this.lock.with(() => this.registeredLocked(index));
  }

  /** How many notify ioeventfds KVM refused so far (their queues fell back to MMIO-exit notification). */
  get ioeventfdsRefused(): number {
    return Atomics.load(this.regs, W_IOEVENTFD_REFUSED);
  }

  private registeredLocked(index: number): number | undefined {
    const w = this.q(index, Q_NOTIFY_ADDR);
    if (!this.regs[this.q(index, Q_NOTIFY_REGISTERED)]) return undefined;
    return (this.regs[w] >>> 0) + (this.regs[w + 1] >>> 0) * 2 ** 32;
  }

  private notifyAddress(index: number, locate: BarLocator): number | undefined {
    return locate(VIRTIO_BAR, NOTIFY_OFFSET + index * NOTIFY_MULTIPLIER, 2);
  }

  /** Drops each registration that is no longer where the queue's notify address decodes. */
  private releaseIoeventfdsLocked(locate: BarLocator): void {
    this.info.queueSizes.forEach((_, i) => {
      const old = this.registeredLocked(i);
      if (old === undefined || old === this.notifyAddress(i, locate)) return;
      // A failed deassign (ENOENT) means KVM holds nothing there either: in both cases the queue has none now.
      this.ioeventfd(old, this.shared.queueEventFds[i], true);
      this.regs[this.q(i, Q_NOTIFY_REGISTERED)] = 0;
    });
  }

  /**
   * Registers each queue whose notify address decodes and has no ioeventfd yet. A refusal (EEXIST: something
   * else is registered there; ENOSPC) is not an error: that queue's kicks arrive as MMIO exits, which barWrite
   * turns into the same eventfd signal, and the next BAR change tries again.
   */
  private placeIoeventfdsLocked(locate: BarLocator): void {
    this.info.queueSizes.forEach((_, i) => {
      const next = this.notifyAddress(i, locate);
      if (next === undefined || this.registeredLocked(i) !== undefined) return;
      if (this.ioeventfd(next, this.shared.queueEventFds[i], false) < 0) {
        Atomics.add(this.regs, W_IOEVENTFD_REFUSED, 1);
        return;
      }
      const w = this.q(i, Q_NOTIFY_ADDR);
      this.regs[w] = next >>> 0;
      this.regs[w + 1] = Math.floor(next / 2 ** 32);
      this.regs[this.q(i, Q_NOTIFY_REGISTERED)] = 1;
    });
    Atomics.add(this.regs, W_NOTIFY_GENERATION, 1);
  }

  /** KVM_IOEVENTFD for a 2-byte notify write at `address`: 0, or -errno. */
  private ioeventfd(address: number, fd: number, deassign: boolean): number {
    const f = kvm_ioeventfd.fields;
    const buf = new DataView(new ArrayBuffer(kvm_ioeventfd.size));
    buf.setBigUint64(f.addr.offset, BigInt(address), true);
    buf.setUint32(f.len.offset, 2, true);
    buf.setInt32(f.fd.offset, fd, true);
    buf.setUint32(f.flags.offset, deassign ? 4 /* KVM_IOEVENTFD_FLAG_DEASSIGN */ : 0, true);
    return native.ioctl(this.vmFd, ioctls.KVM_IOEVENTFD, buf);
  }
}
