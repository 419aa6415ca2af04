// An AHCI SATA controller as Intel's ICH9 shows it (PCI 8086:2922, class 010601h, ABAR in BAR 5): Serial ATA
// AHCI 1.3.1 — generic host control (§3.1: CAP, GHC with HR/IE/AE, IS, PI, VS, CAP2, BOHC), port registers
// (§3.3: PxCLB/FB, PxIS/IE, PxCMD with ST/SUD/POD/CLO/FRE/FR/CR, PxTFD, PxSIG, PxSSTS/SCTL/SERR, PxSACT, PxCI),
// the command list, command table and PRDT (§4.2), the received-FIS area (§4.2.1: D2H Register, PIO Setup and
// Set Device Bits FISes), COMRESET through PxSCTL.DET and staggered spin-up (§10.4), non-queued error handling
// (§6.2.2: a task-file error leaves the slot in PxCI and stops the port until software clears PxCMD.ST), and
// interrupts through one MSI vector or INTA#. Six ports, as ICH9; port n holds drive n of the spec.
//
// What guests rely on (SeaBIOS src/hw/ahci.c, Linux drivers/ata/libahci.c): IDENTIFY PACKET DEVICE probes every
// port first and a disk aborts it; a command's end is seen as PxIS.PSS (status in the PIO Setup FIS) or PxIS.DHRS
// (status in the D2H Register FIS); PxSSTS.DET = 3 with a drive present and spun up; PxSIG tells disks
// (00000101h) from ATAPI (EB140101h); a D2H FIS with the signature arrives after every COMRESET (posted when
// PxCMD.FRE is set, or later when it gets set).
//
// Commands run synchronously when the guest writes PxCI (or sets PxCMD.ST with slots pending), on the thread that
// took that MMIO exit, disk I/O included (pread/pwrite on the image). That keeps the device simple and the guest's
// view consistent — a command is complete when its PxCI write returns — at the cost of a vCPU waiting for the
// host disk; moving I/O to the I/O thread (as virtio-blk does) is the next step when AHCI throughput matters.
//
// Everything the guest points at is hostile: the command header, command table and every PRDT region data moves
// through must lie in guest RAM (GuestMemory.contains) before it is read or written; a bad pointer is a host bus fatal error
// (PxIS.HBFS, with TFES and an error D2H FIS so a polling BIOS sees the command fail), never an exception. PRDT
// entries are at most 65535 (the header's 16-bit PRDTL) and a command moves at most AHCI_MAX_COMMAND_BYTES.
//
// Threads: all controller and drive state is in SharedArrayBuffers under one SharedLock; every exit-handling
// thread attaches its own AhciController over them. Media changes (insertMedia/ejectMedia) take the same lock.
import * as fs from 'node:fs';
import { Type } from '@sinclair/typebox';
import { EFD_NONBLOCK, check, native } from '../../native/index.js';
import { SharedLock } from '../../base/shared-lock.js';
import { GuestMemory } from '../../base/guest-memory.js';
import type { GsiRouter } from '../../base/gsi-routing.js';
import type { IrqLine } from '../../base/irq-line.js';
import {
  bytesToJson,
  DeviceOpenError,
  DeviceStateError,
  expectSnapshot,
  jsonToBytes,
  type AttachedDevice,
  type DeviceModel,
  type DeviceOptions,
  type DeviceSnapshot,
  type JsonValue,
} from '../model.js';
import { devfn, type PciFunction } from '../pci/bus.js';
import {
  PCI_CAP_ID_MSI,
  PCI_COMMAND,
  PCI_COMMAND_INTX_DISABLE,
  PCI_COMMAND_MASTER,
  PCI_COMMAND_MEMORY,
  PCI_INTERRUPT_LINE,
  PCI_STATUS,
  PCI_STATUS_INTERRUPT,
  PciConfigSpace,
  QEMU_SUBSYSTEM_IDS,
} from '../pci/config-space.js';
import { openBlock } from '../virtio/block.js';
import { AtaDisk, DISK_STATE_INTS, initialDiskState, type AtaDiskConfig } from './ata-disk.js';
import {
  AtapiCdrom,
  CD_PATH_BYTES,
  CD_STATE_INTS,
  initialCdState,
  openCdImage,
  type AtapiConfig,
  type CdImage,
} from './atapi-cdrom.js';
import {
  ATA_ERROR_ABRT,
  ATA_STATUS_BSY,
  ATA_STATUS_DRQ,
  ATA_STATUS_ERR,
  ATA_STATUS_READY,
  defaultSerial,
  type AtaOutcome,
  type AtaTaskFile,
  type DataBuffer,
  type SataDrive,
} from './sata-drive.js';

export const AHCI_PORTS = 6;
export const AHCI_BAR = 5;
export const AHCI_BAR_SIZE = 0x1000;
export const AHCI_VENDOR_ID = 0x8086;
export const AHCI_DEVICE_ID = 0x2922;
export const AHCI_CLASS = 0x010601;
/** Bytes one command may move (beyond any real driver's request; a PRDT describing more is cut here). */
export const AHCI_MAX_COMMAND_BYTES = 64 * 1024 * 1024;
const COMMAND_SLOTS = 32;

// Generic host control registers (§3.1).
export const HBA_CAP = 0x00;
export const HBA_GHC = 0x04;
export const HBA_IS = 0x08;
export const HBA_PI = 0x0c;
export const HBA_VS = 0x10;
export const HBA_CAP2 = 0x24;
export const HBA_BOHC = 0x28;
export const GHC_HR = 1 << 0;
export const GHC_IE = 1 << 1;
export const GHC_AE = 1 << 31;
const CAP_S64A = 1 << 31;
const CAP_SSS = 1 << 27;
const CAP_SAL = 1 << 25;
const CAP_SCLO = 1 << 24;
const CAP_ISS_GEN1 = 1 << 20;
const CAP_SAM = 1 << 18;
export const AHCI_CAP =
  (CAP_S64A | CAP_SSS | CAP_SAL | CAP_SCLO | CAP_ISS_GEN1 | CAP_SAM | ((COMMAND_SLOTS - 1) << 8) | (AHCI_PORTS - 1)) >>>
  0;
export const AHCI_VERSION = 0x00010301;

// Port registers (§3.3), offsets inside a port's 80h bytes at 100h + 80h × port.
export const PORT_BASE = 0x100;
export const PORT_STRIDE = 0x80;
export const PX_CLB = 0x00;
export const PX_CLBU = 0x04;
export const PX_FB = 0x08;
export const PX_FBU = 0x0c;
export const PX_IS = 0x10;
export const PX_IE = 0x14;
export const PX_CMD = 0x18;
export const PX_TFD = 0x20;
export const PX_SIG = 0x24;
export const PX_SSTS = 0x28;
export const PX_SCTL = 0x2c;
export const PX_SERR = 0x30;
export const PX_SACT = 0x34;
export const PX_CI = 0x38;
export const PX_SNTF = 0x3c;

export const CMD_ST = 1 << 0;
export const CMD_SUD = 1 << 1;
export const CMD_POD = 1 << 2;
export const CMD_CLO = 1 << 3;
export const CMD_FRE = 1 << 4;
export const CMD_FR = 1 << 14;
export const CMD_CR = 1 << 15;
const CMD_STORED = CMD_ST | CMD_SUD | CMD_FRE | (1 << 24) /* ATAPI */ | (1 << 25); /* DLAE */

export const IS_DHRS = 1 << 0;
export const IS_PSS = 1 << 1;
export const IS_DSS = 1 << 2;
export const IS_SDBS = 1 << 3;
export const IS_DPS = 1 << 5;
export const IS_OFS = 1 << 24;
export const IS_IFS = 1 << 27;
export const IS_HBDS = 1 << 28;
export const IS_HBFS = 1 << 29;
export const IS_TFES = 1 << 30;
const IS_VALID = 0xfdc000ff;

/** PxSSTS with a drive linked: DET 3 (present, Phy up), SPD 1 (Gen1), IPM 1 (active). */
export const SSTS_LINKED = 0x113;

// Received-FIS area offsets (§4.2.1).
export const RFIS_PIO_SETUP = 0x20;
export const RFIS_D2H = 0x40;
export const RFIS_SDB = 0x58;
const FIS_TYPE_H2D = 0x27;
const FIS_TYPE_D2H = 0x34;
const FIS_TYPE_PIO_SETUP = 0x5f;

// Shared state layout (Int32 words).
const W_LOCK = 0;
const W_GHC = 1;
const W_BOHC = 2;
const W_INTX = 3;
const PORT_WORDS = 16;
const PORT_WORD0 = 8;
const P_CLB = 0;
const P_CLBU = 1;
const P_FB = 2;
const P_FBU = 3;
const P_IS = 4;
const P_IE = 5;
const P_CMD = 6;
const P_TFD = 7;
const P_SIG = 8;
const P_SCTL = 9;
const P_SERR = 10;
const P_SACT = 11;
const P_CI = 12;
const P_FLAGS = 13;
const F_SIGNATURE_PENDING = 1; // the signature D2H FIS waits for PxCMD.FRE
const F_HALTED = 2; // stopped on an error until PxCMD.ST is cleared
const F_LINK_UP = 4;
const DRIVE_WORDS = 16;
const DRIVE_WORD0 = PORT_WORD0 + AHCI_PORTS * PORT_WORDS;
const STATE_WORDS = DRIVE_WORD0 + AHCI_PORTS * DRIVE_WORDS;
if (DISK_STATE_INTS > DRIVE_WORDS || CD_STATE_INTS > DRIVE_WORDS) throw new Error('drive state does not fit');

/** MSI capability (PCI 3.0 §6.8.1): 64-bit address, one message, no per-vector masking (as ICH9's). */
const MSI_CONTROL_64BIT = 1 << 7;
const MSI_CONTROL_ENABLE = 1;

/** One drive of the spec, as created: plain values. */
export type AhciDriveState =
  { readonly type: 'disk'; readonly disk: AtaDiskConfig } | { readonly type: 'cdrom'; readonly cd: AtapiConfig };

export interface AhciState {
  readonly name: string;
  readonly slot: number;
  readonly gsi: number;
  readonly drives: readonly (AhciDriveState | null)[];
  readonly regs: SharedArrayBuffer;
  readonly paths: SharedArrayBuffer;
  readonly config: SharedArrayBuffer;
  readonly msiGsi: number;
  readonly msiEventFd: number;
}

/** Drive options of the spec (see the model's schema). */
export interface AhciDriveOptions {
  readonly type: 'disk' | 'cdrom';
  readonly path?: string;
  readonly readonly?: boolean;
  readonly serial?: string;
}

/**
 * The PRDT of one command. A region is checked against guest RAM when data first moves through it, as the
 * hardware only touches PRDT memory it transfers to or from: SeaBIOS describes no-data packet commands with one
 * 4 MiB entry (byte count 0 - 1) at whatever buffer it has. A region outside RAM stops the transfer and marks the
 * buffer faulted (a host bus error for the controller), without touching anything.
 */
class PrdtBuffer implements DataBuffer {
  faulted = false;

  constructor(
    private readonly memory: GuestMemory,
    private readonly regions: readonly { readonly gpa: number; readonly length: number }[],
    readonly length: number,
  ) {}

  /** Calls fn(gpa, n, doneSoFar) for the guest ranges covering [offset, offset + length) of the buffer. */
  private walk(offset: number, length: number, fn: (gpa: number, n: number, done: number) => void): number {
    let skip = offset;
    let done = 0;
    for (const r of this.regions) {
      if (done >= length) break;
      if (skip >= r.length) {
        skip -= r.length;
        continue;
      }
      const n = Math.min(r.length - skip, length - done);
      if (!this.memory.contains(r.gpa + skip, n)) {
        this.faulted = true;
        break;
      }
      fn(r.gpa + skip, n, done);
      done += n;
      skip = 0;
    }
    return done;
  }

  fromDevice(data: Uint8Array, offset = 0): number {
    return this.walk(offset, data.length, (gpa, n, done) => this.memory.write(gpa, data.subarray(done, done + n)));
  }

  toDevice(length: number): Uint8Array {
    const out = new Uint8Array(Math.min(length, this.length));
    this.walk(0, out.length, (gpa, n, done) => out.set(this.memory.read(gpa, n), done));
    return out;
  }

  readFile(fd: number, position: number, length: number): number {
    return this.walk(0, length, (gpa, n, done) =>
      this.memory.forEachSpan(gpa, n, (view, at) => {
        let got = 0;
        while (got < view.length) {
          const r = fs.readSync(fd, view, got, view.length - got, position + done + at + got);
          if (r === 0) break;
          got += r;
        }
        if (got < view.length) view.fill(0, got); // past the end of a file: zeros, as a sparse tail reads
      }),
    );
  }

  writeFile(fd: number, position: number, length: number): number {
    return this.walk(0, length, (gpa, n, done) =>
      this.memory.forEachSpan(gpa, n, (view, at) => {
        let put = 0;
        while (put < view.length) put += fs.writeSync(fd, view, put, view.length - put, position + done + at + put);
      }),
    );
  }
}

/** A bad guest pointer met while reading a command (a host bus fatal error). */
class HostBusError extends Error {}

/** One thread's view of the controller: the PCI function, its ABAR registers and the drives. */
export class AhciController implements PciFunction, AttachedDevice {
  readonly name: string;
  readonly config: PciConfigSpace;
  private readonly regs: Int32Array;
  private readonly lock: SharedLock;
  private readonly drives: (SataDrive | undefined)[];
  private readonly msiCap: number;
  private readonly one = new BigUint64Array([1n]);

  constructor(
    private readonly state: AhciState,
    private readonly memory: GuestMemory,
    private readonly router: GsiRouter,
    private readonly irq: IrqLine,
    initialize = false,
  ) {
    this.name = state.name;
    this.regs = new Int32Array(state.regs);
    this.lock = new SharedLock(state.regs, W_LOCK * 4);
    this.config = new PciConfigSpace(state.config);
    if (initialize) {
      this.config.initialize({
        vendorId: AHCI_VENDOR_ID,
        deviceId: AHCI_DEVICE_ID,
        classCode: AHCI_CLASS,
        revision: 0x02,
        ...QEMU_SUBSYSTEM_IDS,
        interruptPin: 1,
      });
    } else this.config.defineMasks({});
    this.config.defineBar({ index: AHCI_BAR, kind: 'mem32', size: AHCI_BAR_SIZE }, initialize);
    const body = new Uint8Array(12);
    body[0] = MSI_CONTROL_64BIT;
    const mask = new Uint8Array(12);
    mask[0] = MSI_CONTROL_ENABLE;
    mask.fill(0xff, 2, 12);
    mask[2] = 0xfc; // address bits 1:0 are zero
    this.msiCap = this.config.addCapability(PCI_CAP_ID_MSI, body, mask, initialize);
    const paths = new Uint8Array(state.paths);
    this.drives = state.drives.map((d, port) => {
      const words = new Int32Array(state.regs, (DRIVE_WORD0 + port * DRIVE_WORDS) * 4, DRIVE_WORDS);
      if (!d) return undefined;
      if (d.type === 'disk') return new AtaDisk(d.disk, words);
      return new AtapiCdrom(d.cd, words, paths.subarray(port * CD_PATH_BYTES, (port + 1) * CD_PATH_BYTES));
    });
    while (this.drives.length < AHCI_PORTS) this.drives.push(undefined);
    if (initialize) this.lock.with(() => this.resetHbaLocked(true));
  }

  // ---- PCI function ------------------------------------------------------------------------------------------

  barRead(bar: number, offset: number, data: Uint8Array): void {
    if (bar !== AHCI_BAR) return void data.fill(0xff);
    this.lock.with(() => {
      let dwordAt = -1;
      let dword = 0;
      for (let i = 0; i < data.length; i++) {
        const at = offset + i;
        if ((at & ~3) !== dwordAt) {
          dwordAt = at & ~3;
          dword = this.readRegister(dwordAt);
        }
        data[i] = (dword >>> (8 * (at & 3))) & 0xff;
      }
    });
  }

  barWrite(bar: number, offset: number, data: Uint8Array): void {
    if (bar !== AHCI_BAR) return;
    this.lock.with(() => {
      // Registers are dwords (§3); narrower writes touch only their bytes, wider ones are split.
      for (let first = offset & ~3; first < offset + data.length; first += 4) {
        let value = 0;
        let mask = 0;
        for (let b = 0; b < 4; b++) {
          const i = first + b - offset;
          if (i < 0 || i >= data.length) continue;
          value |= data[i] << (8 * b);
          mask |= 0xff << (8 * b);
        }
        this.writeRegister(first, value >>> 0, mask >>> 0);
      }
    });
  }

  configWritten(offset: number, size: number): void {
    // MSI enable or INTx disable changed: the line may have to drop or rise.
    const touches = (at: number, n: number): boolean => offset < at + n && offset + size > at;
    if (touches(PCI_COMMAND, 2) || touches(this.msiCap, 4)) this.lock.with(() => this.updateInterrupt(false));
  }

  // ---- register file -----------------------------------------------------------------------------------------

  private readRegister(offset: number): number {
    const r = this.regs;
    if (offset < PORT_BASE) {
      switch (offset) {
        case HBA_CAP:
          return AHCI_CAP;
        case HBA_GHC:
          return (r[W_GHC] | GHC_AE) >>> 0;
        case HBA_IS:
          return this.pendingPorts();
        case HBA_PI:
          return (1 << AHCI_PORTS) - 1;
        case HBA_VS:
          return AHCI_VERSION;
        case HBA_BOHC:
          return r[W_BOHC] >>> 0;
        default:
          return 0; // CAP2 0 (no BIOS/OS handoff, no device sleep), CCC and enclosure management absent
      }
    }
    const port = (offset - PORT_BASE) >> 7;
    if (port >= AHCI_PORTS) return 0;
    const p = PORT_WORD0 + port * PORT_WORDS;
    switch ((offset - PORT_BASE) & 0x7f) {
      case PX_CLB:
        return r[p + P_CLB] >>> 0;
      case PX_CLBU:
        return r[p + P_CLBU] >>> 0;
      case PX_FB:
        return r[p + P_FB] >>> 0;
      case PX_FBU:
        return r[p + P_FBU] >>> 0;
      case PX_IS:
        return r[p + P_IS] >>> 0;
      case PX_IE:
        return r[p + P_IE] >>> 0;
      case PX_CMD: {
        const cmd = r[p + P_CMD];
        let v = cmd | CMD_POD;
        if (cmd & CMD_FRE) v |= CMD_FR;
        if (cmd & CMD_ST) v |= CMD_CR;
        return v >>> 0;
      }
      case PX_TFD:
        return r[p + P_TFD] >>> 0;
      case PX_SIG:
        return r[p + P_SIG] >>> 0;
      case PX_SSTS:
        return r[p + P_FLAGS] & F_LINK_UP ? SSTS_LINKED : 0;
      case PX_SCTL:
        return r[p + P_SCTL] >>> 0;
      case PX_SERR:
        return r[p + P_SERR] >>> 0;
      case PX_SACT:
        return r[p + P_SACT] >>> 0;
      case PX_CI:
        return r[p + P_CI] >>> 0;
      default:
        return 0;
    }
  }

  private writeRegister(offset: number, value: number, mask: number): void {
    const r = this.regs;
    const merge = (old: number): number => ((old & ~mask) | (value & mask)) >>> 0;
    if (offset < PORT_BASE) {
      if (offset === HBA_GHC) {
        if (value & mask & GHC_HR) return this.resetHbaLocked(false);
        r[W_GHC] = merge(r[W_GHC]) & GHC_IE;
        this.updateInterrupt(true);
      } else if (offset === HBA_IS) {
        // IS.IPS follows the ports (a port's bit is set while PxIS & PxIE is not zero): writing it only rechecks.
        this.updateInterrupt(true);
      }
      return;
    }
    const port = (offset - PORT_BASE) >> 7;
    if (port >= AHCI_PORTS) return;
    const p = PORT_WORD0 + port * PORT_WORDS;
    switch ((offset - PORT_BASE) & 0x7f) {
      case PX_CLB:
        r[p + P_CLB] = merge(r[p + P_CLB]) & ~0x3ff; // 1 KiB aligned
        break;
      case PX_CLBU:
        r[p + P_CLBU] = merge(r[p + P_CLBU]);
        break;
      case PX_FB:
        r[p + P_FB] = merge(r[p + P_FB]) & ~0xff; // 256-byte aligned
        break;
      case PX_FBU:
        r[p + P_FBU] = merge(r[p + P_FBU]);
        break;
      case PX_IS:
        r[p + P_IS] &= ~(value & mask);
        this.updateInterrupt(true);
        break;
      case PX_IE:
        r[p + P_IE] = merge(r[p + P_IE]) & IS_VALID;
        this.updateInterrupt(true);
        break;
      case PX_CMD:
        this.writeCommand(port, merge(this.readRegister(offset)));
        break;
      case PX_SCTL:
        this.writeSControl(port, merge(r[p + P_SCTL]) & 0xfff);
        break;
      case PX_SERR:
        r[p + P_SERR] &= ~(value & mask);
        break;
      case PX_SACT:
        if (r[p + P_CMD] & CMD_ST) r[p + P_SACT] |= value & mask;
        break;
      case PX_CI:
        if (r[p + P_CMD] & CMD_ST) {
          r[p + P_CI] |= value & mask;
          this.runCommands(port);
        }
        break;
      default:
        break; // read-only (TFD, SIG, SSTS) or absent (SNTF, FBS, vendor)
    }
  }

  /** PxCMD (§3.3.7): ST/CR, FRE/FR, SUD, CLO. */
  private writeCommand(port: number, value: number): void {
    const r = this.regs;
    const p = PORT_WORD0 + port * PORT_WORDS;
    const old = r[p + P_CMD];
    const next = value & CMD_STORED;
    r[p + P_CMD] = next;
    if (value & CMD_CLO) r[p + P_TFD] &= ~(ATA_STATUS_BSY | ATA_STATUS_DRQ); // command list override
    if (next & CMD_FRE && !(old & CMD_FRE) && r[p + P_FLAGS] & F_SIGNATURE_PENDING) this.postSignature(port);
    if (next & CMD_SUD && !(old & CMD_SUD)) this.linkUp(port);
    else if (!(next & CMD_SUD) && old & CMD_SUD) r[p + P_FLAGS] &= ~F_LINK_UP; // listen mode
    if (!(next & CMD_ST) && old & CMD_ST) {
      // Stopping the list engine clears PxCI and PxSACT and leaves any error halt (§3.3.7, §6.2.2.1).
      r[p + P_CI] = 0;
      r[p + P_SACT] = 0;
      r[p + P_FLAGS] &= ~F_HALTED;
    }
    if (next & CMD_ST && !(old & CMD_ST)) this.runCommands(port);
    this.updateInterrupt(false);
  }

  /** PxSCTL.DET (§3.3.11): 1 holds COMRESET, 0 releases it (the link comes up), 4 takes the Phy offline. */
  private writeSControl(port: number, value: number): void {
    const r = this.regs;
    const p = PORT_WORD0 + port * PORT_WORDS;
    const oldDet = r[p + P_SCTL] & 0xf;
    r[p + P_SCTL] = value;
    const det = value & 0xf;
    if (det === 1 || det === 4) {
      r[p + P_FLAGS] &= ~F_LINK_UP;
      if (this.drives[port]) r[p + P_TFD] = ATA_STATUS_BSY | 0x7f00;
    } else if (det === 0 && oldDet !== 0) this.linkUp(port);
  }

  /** The link comes up (COMRESET released, or spun up): the drive resets and sends its signature (§10.4.2). */
  private linkUp(port: number): void {
    const r = this.regs;
    const p = PORT_WORD0 + port * PORT_WORDS;
    const drive = this.drives[port];
    if (!drive || !(r[p + P_CMD] & CMD_SUD) || (r[p + P_SCTL] & 0xf) !== 0) return;
    r[p + P_FLAGS] |= F_LINK_UP;
    drive.reset();
    r[p + P_TFD] = (1 << 8) | drive.resetStatus;
    r[p + P_SIG] = drive.signature | 0;
    r[p + P_FLAGS] |= F_SIGNATURE_PENDING;
    if (r[p + P_CMD] & CMD_FRE) this.postSignature(port);
  }

  /** The first D2H Register FIS after a reset: ending status, error 01h, the signature in count and LBA. */
  private postSignature(port: number): void {
    const p = PORT_WORD0 + port * PORT_WORDS;
    const drive = this.drives[port];
    this.regs[p + P_FLAGS] &= ~F_SIGNATURE_PENDING;
    if (!drive) return;
    const sig = drive.signature >>> 0;
    this.postD2h(port, false, drive.resetStatus, 0x01, sig & 0xff, sig >>> 8, 0);
  }

  /** HBA reset (GHC.HR, §10.4.3), and the state at power-on. */
  private resetHbaLocked(powerOn: boolean): void {
    const r = this.regs;
    r[W_GHC] = 0;
    r[W_BOHC] = 0;
    for (let port = 0; port < AHCI_PORTS; port++) {
      const p = PORT_WORD0 + port * PORT_WORDS;
      if (powerOn) {
        for (const w of [P_CLB, P_CLBU, P_FB, P_FBU]) r[p + w] = 0;
        const drive = this.drives[port];
        const words = new Int32Array(this.state.regs, (DRIVE_WORD0 + port * DRIVE_WORDS) * 4, DRIVE_WORDS);
        if (drive?.type === 'disk') initialDiskState(words);
        else if (drive?.type === 'cdrom') initialCdState(words);
      }
      // With staggered spin-up the HBA does not COMRESET the ports: software spins each one up (PxCMD.SUD).
      for (const w of [P_IS, P_IE, P_CMD, P_SCTL, P_SERR, P_SACT, P_CI, P_FLAGS]) r[p + w] = 0;
      r[p + P_TFD] = this.drives[port] ? ATA_STATUS_BSY | 0x7f00 : 0x7f;
      r[p + P_SIG] = -1;
    }
    this.updateInterrupt(false);
  }

  // ---- interrupts --------------------------------------------------------------------------------------------

  /** IS: one bit per port with an enabled interrupt pending (§3.1.2). */
  private pendingPorts(): number {
    let is = 0;
    for (let port = 0; port < AHCI_PORTS; port++) {
      const p = PORT_WORD0 + port * PORT_WORDS;
      if (this.regs[p + P_IS] & this.regs[p + P_IE]) is |= 1 << port;
    }
    return is >>> 0;
  }

  private msiEnabled(): boolean {
    return (this.config.u16(this.msiCap + 2) & MSI_CONTROL_ENABLE) !== 0;
  }

  /**
   * Drives INTA# to its level (GHC.IE and a port pending, MSI off, INTx not disabled) and, with MSI on, sends
   * a message when `event` (something happened) and an interrupt is pending — as QEMU does, so an event that
   * arrives while the driver is clearing another is not lost.
   */
  private updateInterrupt(event: boolean): void {
    const pending = (this.regs[W_GHC] & GHC_IE) !== 0 && this.pendingPorts() !== 0;
    const msi = this.msiEnabled();
    const command = this.config.u16(PCI_COMMAND);
    const level = pending && !msi && !(command & PCI_COMMAND_INTX_DISABLE);
    const status = this.config.u16(PCI_STATUS);
    const wanted = pending && !msi ? status | PCI_STATUS_INTERRUPT : status & ~PCI_STATUS_INTERRUPT;
    if (wanted !== status) this.config.setU16(PCI_STATUS, wanted);
    if ((this.regs[W_INTX] !== 0) !== level) {
      this.regs[W_INTX] = level ? 1 : 0;
      this.irq.set(level);
    }
    if (pending && msi && event && command & PCI_COMMAND_MASTER) this.fireMsi();
  }

  private fireMsi(): void {
    const c = this.msiCap;
    this.router.setMsi(this.state.msiGsi, this.config.u32(c + 4), this.config.u32(c + 8), this.config.u16(c + 12));
    try {
      fs.writeSync(this.state.msiEventFd, this.one);
    } catch {
      // the counter is saturated only if nobody ever reads it: the interrupt is pending anyway
    }
  }

  // ---- command processing ------------------------------------------------------------------------------------

  /** Runs the issued slots of a started, not halted port, lowest first, until none is left or one fails. */
  private runCommands(port: number): void {
    const r = this.regs;
    const p = PORT_WORD0 + port * PORT_WORDS;
    let ran = false;
    while (r[p + P_CMD] & CMD_ST && !(r[p + P_FLAGS] & F_HALTED) && r[p + P_CI] !== 0) {
      const ci = r[p + P_CI] >>> 0;
      const slot = 31 - Math.clz32(ci & -ci);
      ran = true;
      if (this.executeSlot(port, slot)) {
        r[p + P_CI] &= ~(1 << slot);
        r[p + P_SACT] &= ~(1 << slot);
      } else {
        r[p + P_FLAGS] |= F_HALTED; // the slot stays in PxCI until software restarts the port (§6.2.2.1)
      }
    }
    if (ran) this.updateInterrupt(true);
  }

  /** One command slot (§5.5): false when it ended in an error that halts the port. */
  private executeSlot(port: number, slot: number): boolean {
    const r = this.regs;
    const p = PORT_WORD0 + port * PORT_WORDS;
    const header = (r[p + P_CLB] >>> 0) + (r[p + P_CLBU] >>> 0) * 2 ** 32 + slot * 32;
    let fis: Uint8Array;
    let packet: Uint8Array;
    let buffer: PrdtBuffer;
    let interruptOnData = false;
    let dw0: number;
    try {
      const h = this.guestRead(header, 32);
      const hv = new DataView(h.buffer);
      dw0 = hv.getUint32(0, true);
      const table = ((hv.getUint32(8, true) & ~0x7f) >>> 0) + hv.getUint32(12, true) * 2 ** 32;
      fis = this.guestRead(table, 64);
      packet = this.guestRead(table + 0x40, 16);
      const entries = dw0 >>> 16;
      const regions: { gpa: number; length: number }[] = [];
      let total = 0;
      if (entries > 0) {
        const prdt = this.guestRead(table + 0x80, entries * 16);
        const pv = new DataView(prdt.buffer);
        for (let i = 0; i < entries && total < AHCI_MAX_COMMAND_BYTES; i++) {
          const gpa = ((pv.getUint32(16 * i, true) & ~1) >>> 0) + pv.getUint32(16 * i + 4, true) * 2 ** 32;
          const dw3 = pv.getUint32(16 * i + 12, true);
          const length = Math.min((dw3 & 0x3fffff) + 1, AHCI_MAX_COMMAND_BYTES - total);
          if (dw3 & 0x80000000) interruptOnData = true;
          // An address no number can hold is no RAM either: -1 fails the check when data reaches it.
          regions.push({ gpa: Number.isSafeInteger(gpa + length) ? gpa : -1, length });
          total += length;
        }
      }
      buffer = new PrdtBuffer(this.memory, regions, total);
    } catch (e) {
      if (!(e instanceof HostBusError)) throw e;
      return this.hostBusError(port);
    }
    const writeByteCount = (n: number): void => {
      if (this.memory.contains(header + 4, 4)) this.memory.writeU32(header + 4, n);
    };
    if (fis[0] !== FIS_TYPE_H2D || (dw0 & 0x1f) < 5) return this.failCommand(port, IS_IFS);
    if (!(fis[1] & 0x80)) {
      writeByteCount(0);
      return this.deviceControl(port, fis[15]);
    }
    const drive = this.drives[port];
    if (!drive || !(r[p + P_FLAGS] & F_LINK_UP)) return this.failCommand(port, 0);
    const tf: AtaTaskFile = {
      command: fis[2],
      features: fis[3] | (fis[11] << 8),
      lbaLow24: fis[4] | (fis[5] << 8) | (fis[6] << 16),
      device: fis[7],
      lbaHigh24: fis[8] | (fis[9] << 8) | (fis[10] << 16),
      count: fis[12] | (fis[13] << 8),
    };
    let outcome: AtaOutcome;
    try {
      outcome = drive.execute(tf, packet, buffer);
    } catch {
      // A drive never throws for guest input; a host failure it did not map is still only this command's error.
      outcome = { status: ATA_STATUS_READY | ATA_STATUS_ERR, error: ATA_ERROR_ABRT, protocol: 'non-data', bytes: 0 };
    }
    writeByteCount(outcome.bytes);
    if (buffer.faulted) return this.hostBusError(port);
    return this.complete(port, drive, tf, outcome, interruptOnData);
  }

  /** Reads guest RAM the command points at; outside RAM is a host bus error. */
  private guestRead(gpa: number, length: number): Uint8Array {
    if (!this.memory.contains(gpa, length)) throw new HostBusError();
    return this.memory.read(gpa, length);
  }

  /** Posts the FISes that end a command and sets PxTFD and PxIS. */
  private complete(port: number, drive: SataDrive, tf: AtaTaskFile, o: AtaOutcome, dataIrq: boolean): boolean {
    const r = this.regs;
    const p = PORT_WORD0 + port * PORT_WORDS;
    const failed = (o.status & ATA_STATUS_ERR) !== 0;
    const count = o.count ?? 0;
    const lba = o.lbaLow24 ?? 0;
    const device = o.device ?? tf.device;
    if (!failed && (o.protocol === 'pio-in' || o.protocol === 'pio-out')) {
      // PIO: a PIO Setup FIS opens the data phase; data-in ends with its E_Status (§5.3.8), data-out with a D2H FIS.
      const dataIn = o.protocol === 'pio-in';
      const lastFis = dataIn && !(drive.type === 'cdrom' && tf.command === 0xa0);
      // Data-in PIO Setup FISes carry the I bit (the device interrupts for each DRQ data block, ATA8-ACS §4.3).
      this.postPioSetup(port, dataIn, dataIn, o, count, lba, device);
      if (!lastFis) this.postD2h(port, true, o.status, o.error, count, lba, device);
    } else {
      this.postD2h(port, true, o.status, o.error, count, lba, device);
    }
    r[p + P_TFD] = (o.error << 8) | o.status;
    if (dataIrq && o.bytes > 0) r[p + P_IS] |= IS_DPS;
    if (failed) {
      r[p + P_IS] |= IS_TFES;
      return false;
    }
    return true;
  }

  /** A Register D2H FIS into the receive area (when FIS reception is on); PxIS.DHRS when `interrupt`. */
  private postD2h(
    port: number,
    interrupt: boolean,
    status: number,
    error: number,
    count: number,
    lba: number,
    device: number,
  ): void {
    const f = new Uint8Array(20);
    f[0] = FIS_TYPE_D2H;
    f[1] = interrupt ? 0x40 : 0;
    f[2] = status;
    f[3] = error;
    f[4] = lba & 0xff;
    f[5] = (lba >>> 8) & 0xff;
    f[6] = (lba >>> 16) & 0xff;
    f[7] = device;
    f[12] = count & 0xff;
    f[13] = (count >>> 8) & 0xff;
    this.postFis(port, RFIS_D2H, f);
    const p = PORT_WORD0 + port * PORT_WORDS;
    this.regs[p + P_TFD] = (error << 8) | status;
    if (interrupt) this.regs[p + P_IS] |= IS_DHRS;
  }

  private postPioSetup(
    port: number,
    interrupt: boolean,
    dataIn: boolean,
    o: AtaOutcome,
    count: number,
    lba: number,
    device: number,
  ): void {
    const f = new Uint8Array(20);
    f[0] = FIS_TYPE_PIO_SETUP;
    f[1] = (dataIn ? 0x20 : 0) | (interrupt ? 0x40 : 0);
    f[2] = o.status | ATA_STATUS_DRQ; // the status at the start of the data phase
    f[3] = o.error;
    f[4] = lba & 0xff;
    f[5] = (lba >>> 8) & 0xff;
    f[6] = (lba >>> 16) & 0xff;
    f[7] = device;
    f[12] = count & 0xff;
    f[13] = (count >>> 8) & 0xff;
    f[15] = o.status; // E_Status: the status after the transfer
    f[16] = Math.min(o.bytes, 0xffff) & 0xff;
    f[17] = (Math.min(o.bytes, 0xffff) >>> 8) & 0xff;
    this.postFis(port, RFIS_PIO_SETUP, f);
    const p = PORT_WORD0 + port * PORT_WORDS;
    this.regs[p + P_TFD] = (o.error << 8) | o.status;
    if (interrupt) this.regs[p + P_IS] |= IS_PSS;
  }

  /** Copies a FIS into the received-FIS area, if FIS reception is on and the area lies in RAM. */
  private postFis(port: number, offset: number, fis: Uint8Array): void {
    const p = PORT_WORD0 + port * PORT_WORDS;
    if (!(this.regs[p + P_CMD] & CMD_FRE)) return;
    const base = (this.regs[p + P_FB] >>> 0) + (this.regs[p + P_FBU] >>> 0) * 2 ** 32;
    if (this.memory.contains(base + offset, fis.length)) this.memory.write(base + offset, fis);
    else this.regs[p + P_IS] |= IS_HBFS; // the receive area itself is a bad pointer
  }

  /**
   * A command the HBA could not even fetch or carry out: ABRT in an error D2H FIS (so a polling BIOS sees it
   * end), TFES and whatever error class `extra` names; the port halts as after any error.
   */
  private failCommand(port: number, extra: number): boolean {
    const p = PORT_WORD0 + port * PORT_WORDS;
    this.postD2h(port, true, ATA_STATUS_READY | ATA_STATUS_ERR, ATA_ERROR_ABRT, 0, 0, 0);
    this.regs[p + P_IS] |= IS_TFES | extra;
    this.regs[p + P_SERR] |= extra === IS_HBFS ? 1 << 11 /* ERR.E internal error */ : 0;
    return false;
  }

  private hostBusError(port: number): boolean {
    return this.failCommand(port, IS_HBFS);
  }

  /** A Register H2D FIS with C = 0 (§10.4.1 software reset): SRST set holds the drive, cleared resets it. */
  private deviceControl(port: number, control: number): boolean {
    const p = PORT_WORD0 + port * PORT_WORDS;
    const drive = this.drives[port];
    if (!drive) return true;
    if (control & 0x04) {
      this.regs[p + P_TFD] = ATA_STATUS_BSY;
      return true;
    }
    drive.reset();
    this.regs[p + P_SIG] = drive.signature | 0;
    const sig = drive.signature >>> 0;
    this.postD2h(port, true, drive.resetStatus, 0x01, sig & 0xff, sig >>> 8, 0);
    return true;
  }

  // ---- media and host control --------------------------------------------------------------------------------

  /** The CD drive of `port`, or a DeviceOpenError naming why there is none. */
  private cdrom(port: number): AtapiCdrom {
    const d = this.drives[port];
    if (!(d instanceof AtapiCdrom)) throw new DeviceOpenError(`${this.name}: port ${port} has no CD-ROM drive`);
    return d;
  }

  /** Loads an ISO image into the CD drive of `port` (the guest sees a new disc: UNIT ATTENTION, media event). */
  insertMedia(port: number, path: string): void {
    const drive = this.cdrom(port);
    const image = openCdImage(path);
    this.swapMedia(drive, image);
  }

  /** Takes the disc out of the CD drive of `port` (the tray is left open). */
  ejectMedia(port: number): void {
    this.swapMedia(this.cdrom(port), undefined);
  }

  private swapMedia(drive: AtapiCdrom, image: CdImage | undefined): void {
    let old: number;
    try {
      old = this.lock.with(() => drive.changeMedia(image));
    } catch (e) {
      if (image) fs.closeSync(image.fd);
      throw e;
    }
    // Every thread issues commands under the lock, so none can still be reading the old fd.
    if (old >= 0) fs.closeSync(old);
  }

  /** A disc already in the drive when the machine starts: no medium change to report. */
  loadAtPowerOn(port: number, image: CdImage): void {
    const drive = this.cdrom(port);
    this.lock.with(() => drive.changeMedia(image, false));
  }

  /** The image loaded in the CD drive of `port` ('' when none). */
  mediaPath(port: number): string {
    return this.lock.with(() => this.cdrom(port).mediaPath);
  }

  /**
   * A platform reset (AttachedDevice.reset, RESET#): the function as at power-on — PCI command, BAR 5 and MSI
   * cleared for the firmware to program again, HBA and ports reset, disks back to their default settings — except
   * that CD drives keep their discs (a disc does not leave the drive when the machine resets).
   */
  reset(): void {
    this.lock.with(() => {
      const c = this.config;
      c.write(PCI_COMMAND, 2, 0);
      c.write(PCI_STATUS, 2, 0xffff); // clears the RW1C error bits
      c.setBarAddress(AHCI_BAR, 0);
      for (const [at, size] of [
        [2, 2],
        [4, 4],
        [8, 4],
        [12, 2],
      ] as const)
        c.write(this.msiCap + at, size, 0);
      for (let port = 0; port < AHCI_PORTS; port++) {
        const p = PORT_WORD0 + port * PORT_WORDS;
        this.regs[p + P_CLB] = this.regs[p + P_CLBU] = this.regs[p + P_FB] = this.regs[p + P_FBU] = 0;
        const drive = this.drives[port];
        const words = new Int32Array(this.state.regs, (DRIVE_WORD0 + port * DRIVE_WORDS) * 4, DRIVE_WORDS);
        if (drive?.type === 'disk') initialDiskState(words);
        else drive?.reset();
      }
      this.resetHbaLocked(false);
    });
  }

  // ---- save / restore ----------------------------------------------------------------------------------------

  saveState(): DeviceSnapshot {
    return this.lock.with(() => {
      const words = new Int32Array(this.regs);
      words[W_LOCK] = 0;
      const media: JsonValue[] = this.drives.map((d) => (d instanceof AtapiCdrom ? d.mediaPath : null));
      const drives: JsonValue[] = this.drives.map((d) => d?.type ?? null);
      return {
        kind: AHCI_KIND,
        version: AHCI_SNAPSHOT_VERSION,
        data: {
          registers: bytesToJson(new Uint8Array(words.buffer)),
          config: bytesToJson(this.config.bytes),
          drives,
          media,
        },
      };
    });
  }

  restoreState(snapshot: DeviceSnapshot): void {
    expectSnapshot(this.name, snapshot, AHCI_KIND, AHCI_SNAPSHOT_VERSION);
    const words = new Int32Array(STATE_WORDS);
    jsonToBytes(this.name, 'registers', snapshot.data.registers, new Uint8Array(words.buffer));
    const config = new Uint8Array(this.config.bytes.length);
    jsonToBytes(this.name, 'config', snapshot.data.config, config);
    // The interrupt status bit follows the device's state, which the registers restored below recompute.
    config[PCI_STATUS] =
      (config[PCI_STATUS] & ~PCI_STATUS_INTERRUPT) | (this.config.bytes[PCI_STATUS] & PCI_STATUS_INTERRUPT);
    const at = this.config.fixedBitsDiffer(config);
    if (at >= 0) throw new DeviceStateError(this.name, `config space differs at 0x${at.toString(16)}`);
    const drives = snapshot.data.drives;
    const types = this.drives.map((d) => d?.type ?? null);
    if (!Array.isArray(drives) || drives.length !== AHCI_PORTS || drives.some((t, i) => t !== types[i]))
      throw new DeviceStateError(
        this.name,
        `has drives ${JSON.stringify(drives)}, the controller ${JSON.stringify(types)}`,
      );
    const media = snapshot.data.media;
    if (!Array.isArray(media) || media.length !== AHCI_PORTS) throw new DeviceStateError(this.name, "lacks 'media'");
    // The discs first (host files: this may fail, and then nothing has changed yet).
    for (let port = 0; port < AHCI_PORTS; port++) {
      const drive = this.drives[port];
      const want = media[port];
      if (!(drive instanceof AtapiCdrom)) continue;
      if (typeof want !== 'string') throw new DeviceStateError(this.name, `media of port ${port} is not a path`);
      if (want === this.mediaPath(port)) continue;
      try {
        if (want === '') this.ejectMedia(port);
        else this.insertMedia(port, want);
      } catch (e) {
        throw new DeviceStateError(this.name, `disc of port ${port}: ${(e as Error).message}`);
      }
    }
    this.lock.with(() => {
      const r = this.regs;
      // Host facts of this process stay: a CD drive's fd, size and path words are what was just loaded.
      const keep = new Int32Array(r);
      for (let i = 1; i < STATE_WORDS; i++) r[i] = words[i];
      for (let port = 0; port < AHCI_PORTS; port++) {
        if (!(this.drives[port] instanceof AtapiCdrom)) continue;
        const base = DRIVE_WORD0 + port * DRIVE_WORDS;
        for (const w of [0, 1, 9]) r[base + w] = keep[base + w]; // S_FD, S_SECTORS, S_PATH_LENGTH
      }
      for (let i = 0; i < config.length; i++) Atomics.store(this.config.bytes, i, config[i]);
      r[W_INTX] = 0;
      this.irq.set(false);
      this.updateInterrupt(false);
    });
  }
}

export const AHCI_KIND = 'ahci';
export const AHCI_SNAPSHOT_VERSION = 1;

function driveOptions(options: DeviceOptions): AhciDriveOptions[] {
  const drives = options.drives;
  return Array.isArray(drives) ? (drives as AhciDriveOptions[]) : [];
}

/** Opens every drive's image (builder thread); on failure what was opened is closed again. */
function openDrives(options: DeviceOptions): AhciDriveState[] {
  const drives = driveOptions(options);
  if (drives.length > AHCI_PORTS)
    throw new DeviceOpenError(`ahci: ${drives.length} drives; a controller has ${AHCI_PORTS} ports`);
  const opened: AhciDriveState[] = [];
  const fds: number[] = [];
  try {
    drives.forEach((d, port) => {
      if (d.type === 'disk') {
        if (!d.path) throw new DeviceOpenError(`ahci: disk on port ${port} has no image path`);
        const h = openBlock({ path: d.path, readOnly: d.readonly ?? false, serial: d.serial });
        fds.push(h.fd);
        opened.push({
          type: 'disk',
          disk: {
            fd: h.fd,
            path: h.path,
            capacity: h.capacity,
            readOnly: h.readOnly,
            serial: d.serial ?? defaultSerial('PD', h.path),
            model: 'PARTITA HARDDISK',
            firmware: '1.0',
          },
        });
      } else {
        if (d.readonly === false)
          throw new DeviceOpenError(`ahci: CD-ROM on port ${port} cannot be writable (a CD-ROM is read-only)`);
        if (d.serial !== undefined && Buffer.byteLength(d.serial) > 20)
          throw new DeviceOpenError(`ahci: CD-ROM on port ${port}: serial '${d.serial}' is longer than 20 bytes`);
        opened.push({
          type: 'cdrom',
          cd: { serial: d.serial ?? `PC${port}`, model: 'PARTITA DVD-ROM', firmware: '1.0' },
        });
      }
    });
  } catch (e) {
    for (const fd of fds) fs.closeSync(fd);
    throw e;
  }
  return opened;
}

const DriveSchema = Type.Union([
  Type.Object(
    {
      type: Type.Literal('disk'),
      path: Type.String({ minLength: 1, description: 'raw image file or block device' }),
      readonly: Type.Optional(Type.Boolean()),
      serial: Type.Optional(Type.String({ maxLength: 20, description: 'IDENTIFY serial number' })),
    },
    { additionalProperties: false },
  ),
  Type.Object(
    {
      type: Type.Literal('cdrom'),
      path: Type.Optional(Type.String({ minLength: 1, description: 'ISO 9660 image (none: an empty drive)' })),
      readonly: Type.Optional(Type.Boolean()),
      serial: Type.Optional(Type.String({ maxLength: 20 })),
    },
    { additionalProperties: false },
  ),
]);

/** The registry entry: `{ kind: 'ahci', drives: [{ type: 'disk', path, readonly?, serial? }, { type: 'cdrom', path? }] }`. */
export const ahciModel: DeviceModel<AhciState> = {
  kind: AHCI_KIND,
  summary: 'AHCI SATA controller (ICH9) with ATA disks and ATAPI CD-ROMs, port n = drive n',
  options: { drives: Type.Array(DriveSchema, { maxItems: AHCI_PORTS }) },
  bus: 'pci',
  diskImages: (o) => driveOptions(o).flatMap((d) => (d.path ? [d.path] : [])),
  create(options, ctx) {
    if (!ctx.pci) throw new Error('ahci is a PCI device: the builder must give it a slot');
    const { slot, gsi } = ctx.pci;
    const drives = openDrives(options);
    const images: CdImage[] = [];
    let eventFd = -1;
    try {
      // CD images are opened after the disks so one failure closes everything (see the catch).
      driveOptions(options).forEach((d, port) => {
        if (d.type === 'cdrom' && d.path) images[port] = openCdImage(d.path);
      });
      const msiGsi = ctx.router.allocateMsi();
      eventFd = check(native.eventfd(0, EFD_NONBLOCK), 'eventfd');
      ctx.router.attachIrqfd(msiGsi, eventFd);
      const state: AhciState = {
        name: ctx.name('ahci'),
        slot,
        gsi,
        drives: [...drives, ...new Array<null>(AHCI_PORTS - drives.length).fill(null)],
        regs: new SharedArrayBuffer(STATE_WORDS * 4),
        paths: new SharedArrayBuffer(AHCI_PORTS * CD_PATH_BYTES),
        config: new PciConfigSpace().shared,
        msiGsi,
        msiEventFd: eventFd,
      };
      // A view on this thread to lay out config space and registers; each exit-handling thread attaches its own.
      const view = new AhciController(state, GuestMemory.attach([]), ctx.router, { set: () => undefined }, true);
      images.forEach((image, port) => {
        if (image) view.loadAtPowerOn(port, image);
      });
      if (ctx.bars) {
        view.config.setBarAddress(AHCI_BAR, ctx.bars.allocate('mem32', AHCI_BAR_SIZE));
        view.config.write(PCI_COMMAND, 2, PCI_COMMAND_MEMORY);
      }
      view.config.write(PCI_INTERRUPT_LINE, 1, gsi);
      return state;
    } catch (e) {
      for (const d of drives) if (d.type === 'disk') fs.closeSync(d.disk.fd);
      for (const image of images) if (image) fs.closeSync(image.fd);
      if (eventFd >= 0) fs.closeSync(eventFd);
      throw e;
    }
  },
  describe: (state) => ({ pciInterrupt: { slot: state.slot, gsi: state.gsi } }),
  attach(state, ctx) {
    const controller = new AhciController(state, ctx.memory, ctx.router, ctx.irqLine(state.gsi));
    ctx.pci.add(devfn(state.slot), controller);
    return controller;
  },
  settle(state) {
    for (const d of state.drives) {
      if (d?.type !== 'disk' || d.disk.readOnly) continue;
      try {
        fs.fdatasyncSync(d.disk.fd); // as virtio-blk and QEMU: what the guest wrote is durable at exit
      } catch {
        // the guest's FLUSH CACHE commands are where write errors are reported
      }
    }
  },
  close(state) {
    for (const d of state.drives) if (d?.type === 'disk') fs.closeSync(d.disk.fd);
    const regs = new Int32Array(state.regs);
    state.drives.forEach((d, port) => {
      const fd = regs[DRIVE_WORD0 + port * DRIVE_WORDS];
      if (d?.type === 'cdrom' && fd >= 0) fs.closeSync(fd);
    });
    fs.closeSync(state.msiEventFd);
  },
};

/** Media control for the control API: finds the AHCI controller among a device set's attached devices. */
export function isAhciController(device: AttachedDevice): device is AhciController {
  return device instanceof AhciController;
}
