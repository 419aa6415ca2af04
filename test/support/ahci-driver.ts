// A small AHCI driver for tests: it finds the controller through PCI configuration space, maps its ABAR (BAR 5)
// and drives ports the way SeaBIOS's src/hw/ahci.c does (port reset, CLB/FB, FIS receive on, spin-up, wait for
// the link, ST on, one command in slot 0 polled through PxIS.PSS / PxIS.DHRS). It also writes raw command
// headers and PRDTs, so tests can hand the device hostile ones. No KVM: guest RAM is a GuestMemory, the INTA#
// line a recording fake, MSI routes recorded by a GsiRouter that commits nothing.
import { GuestMemory } from '../../src/base/guest-memory.js';
import { GsiRouter } from '../../src/base/gsi-routing.js';
import { MmioBus, PortIoBus } from '../../src/devices/bus.js';
import type { DeviceAttachContext, DeviceCreateContext } from '../../src/devices/model.js';
import { PciBus, devfn } from '../../src/devices/pci/bus.js';
import {
  ahciModel,
  AhciController,
  AHCI_BAR,
  CMD_FRE,
  CMD_ST,
  CMD_SUD,
  IS_DHRS,
  IS_PSS,
  PORT_BASE,
  PORT_STRIDE,
  PX_CI,
  PX_CLB,
  PX_CLBU,
  PX_CMD,
  PX_FB,
  PX_FBU,
  PX_IE,
  PX_IS,
  PX_SCTL,
  PX_SERR,
  PX_SSTS,
  PX_TFD,
  RFIS_D2H,
  RFIS_PIO_SETUP,
  type AhciState,
} from '../../src/devices/storage/ahci.js';
import type { DeviceOptions } from '../../src/devices/model.js';

export const RAM = 4 << 20;
/** A second RAM range above 2 GiB (addresses with bit 31 set, as a guest with more memory uses). */
export const HIGH_RAM = 0x8000_0000;
export const HIGH_RAM_SIZE = 1 << 20;
export const SLOT = 3;
export const GSI = 18;
export const ABAR = 0xc000_1000;
const WINDOW = 0xc000_0000;
/** Where this driver keeps each port's command list, received FISes and command table. */
export const clbOf = (port: number): number => 0x10000 + port * 0x1000;
export const fbOf = (port: number): number => clbOf(port) + 0x400;
export const tableOf = (port: number): number => clbOf(port) + 0x800;
/** A data buffer for commands. */
export const DATA = 0x100000;

/** Records MSI routes instead of committing them to a VM; binds no irqfd (the eventfd then counts messages). */
export class RecordingRouter extends GsiRouter {
  readonly routes = new Map<number, { lo: number; hi: number; data: number }>();
  constructor() {
    super(-1);
  }
  override setMsi(gsi: number, lo: number, hi: number, data: number): void {
    this.routes.set(gsi, { lo: lo >>> 0, hi: hi >>> 0, data: data >>> 0 });
  }
  override attachIrqfd(): void {}
}

export interface CommandOptions {
  /** H2D FIS fields. */
  readonly command: number;
  readonly features?: number;
  readonly lba?: number;
  readonly count?: number;
  readonly device?: number;
  /** 12-byte SCSI CDB for PACKET. */
  readonly cdb?: readonly number[];
  readonly write?: boolean;
  /** PRDT entries (default: one of `bytes` at DATA). */
  readonly prdt?: readonly { readonly address: number; readonly bytes: number; readonly interrupt?: boolean }[];
  readonly bytes?: number;
}

export interface CommandResult {
  /** PxIS when the command ended (before the driver cleared it). */
  readonly is: number;
  readonly tfd: number;
  readonly ci: number;
  /** Status and error as SeaBIOS reads them: from the PIO Setup FIS when PSS, else the D2H FIS. */
  readonly status: number;
  readonly error: number;
  /** The command header's PRDBC. */
  readonly transferred: number;
}

export class AhciTestDriver {
  readonly memory: GuestMemory;
  readonly router = new RecordingRouter();
  readonly pci = new PciBus();
  readonly intx: boolean[] = [];
  readonly state: AhciState;
  readonly controller: AhciController;
  private readonly window;

  constructor(options: DeviceOptions, memory?: GuestMemory, state?: AhciState) {
    this.memory =
      memory ??
      GuestMemory.allocateRanges([
        { gpa: 0, size: RAM },
        { gpa: HIGH_RAM, size: HIGH_RAM_SIZE },
      ]);
    const create: DeviceCreateContext = {
      vmFd: -1,
      router: this.router,
      irqLine: () => ({ set: () => undefined }),
      diskImages: [],
      name: (prefix) => `${prefix}0`,
      pci: { slot: SLOT, gsi: GSI },
      machine: { cpus: 1, memory: RAM, boot: 'firmware' },
      deviceMemory: () => {
        throw new Error('no device memory here');
      },
    };
    this.state = state ?? ahciModel.create(options, create);
    const attach: DeviceAttachContext = {
      vmFd: -1,
      router: this.router,
      pio: new PortIoBus(),
      mmio: new MmioBus(),
      pci: this.pci,
      memory: this.memory,
      irqLine: () => ({ set: (level) => void this.intx.push(level) }),
      host: { serialOutputFd: 1, stop: () => undefined, reset: () => undefined },
    };
    this.controller = ahciModel.attach(this.state, attach) as AhciController;
    this.window = this.pci.memoryWindow(WINDOW, 0x1000_0000);
  }

  close(): void {
    ahciModel.close!(this.state);
  }

  configRead(offset: number, size = 4): number {
    return this.pci.configRead(0, devfn(SLOT), offset, size);
  }
  configWrite(offset: number, size: number, value: number): void {
    this.pci.configWrite(0, devfn(SLOT), offset, size, value);
  }

  /** What SeaBIOS's PCI setup and ahci_controller_setup do: BAR 5, memory + bus master, GHC.AE. */
  enable(): void {
    this.configWrite(0x10 + 4 * AHCI_BAR, 4, ABAR);
    this.configWrite(0x04, 2, 0x0006);
    this.writel(0x04, this.readl(0x04) | 0x8000_0000);
  }

  readl(offset: number): number {
    const b = new Uint8Array(4);
    this.window.mmioRead(ABAR - WINDOW + offset, b);
    return new DataView(b.buffer).getUint32(0, true);
  }
  writel(offset: number, value: number): void {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, value >>> 0, true);
    this.window.mmioWrite(ABAR - WINDOW + offset, b);
  }
  portRead(port: number, reg: number): number {
    return this.readl(PORT_BASE + port * PORT_STRIDE + reg);
  }
  portWrite(port: number, reg: number, value: number): void {
    this.writel(PORT_BASE + port * PORT_STRIDE + reg, value);
  }

  /** ahci_port_reset + ahci_port_alloc + ahci_port_setup of SeaBIOS, up to ST on. Returns PxSSTS. */
  setupPort(port: number, at?: { clb: number; fb: number }): number {
    let cmd = this.portRead(port, PX_CMD);
    this.portWrite(port, PX_CMD, cmd & ~(CMD_ST | CMD_FRE));
    this.portWrite(port, PX_IE, 0);
    this.portWrite(port, PX_IS, this.portRead(port, PX_IS));
    this.memory.fill(at?.clb ?? clbOf(port), 0x400, 0);
    this.portWrite(port, PX_CLB, at?.clb ?? clbOf(port));
    this.portWrite(port, PX_CLBU, 0);
    this.portWrite(port, PX_FB, at?.fb ?? fbOf(port));
    this.portWrite(port, PX_FBU, 0);
    cmd = this.portRead(port, PX_CMD) | CMD_FRE;
    this.portWrite(port, PX_CMD, cmd);
    cmd |= CMD_SUD;
    this.portWrite(port, PX_CMD, cmd);
    const ssts = this.portRead(port, PX_SSTS);
    this.portWrite(port, PX_SERR, this.portRead(port, PX_SERR));
    this.portWrite(port, PX_CMD, this.portRead(port, PX_CMD) | CMD_ST);
    return ssts;
  }

  /** COMRESET through PxSCTL.DET (1, then 0), as Linux's hardreset and SeaBIOS's error recovery do. */
  comreset(port: number): void {
    const sctl = this.portRead(port, PX_SCTL);
    this.portWrite(port, PX_SCTL, (sctl & ~0xf) | 1);
    this.portWrite(port, PX_SCTL, sctl & ~0xf);
  }

  /** SeaBIOS's non-queued error recovery: ST off (PxCI clears), errors and PxIS cleared, ST on. */
  recover(port: number): void {
    this.portWrite(port, PX_CMD, this.portRead(port, PX_CMD) & ~CMD_ST);
    this.portWrite(port, PX_SERR, this.portRead(port, PX_SERR));
    this.portWrite(port, PX_IS, this.portRead(port, PX_IS));
    this.portWrite(port, PX_CMD, this.portRead(port, PX_CMD) | CMD_ST);
  }

  /** Lays out slot 0's header, command table and PRDT (raw values allowed), then issues it. */
  issue(port: number, o: CommandOptions, header?: { table?: number; entries?: number; cfl?: number }): CommandResult {
    const table = header?.table ?? tableOf(port);
    const prdt = o.prdt ?? (o.bytes ? [{ address: DATA, bytes: o.bytes }] : []);
    const entries = header?.entries ?? prdt.length;
    const flags = (entries << 16) | (o.write ? 1 << 6 : 0) | (o.cdb ? 1 << 5 : 0) | (header?.cfl ?? 5);
    const h = clbOf(port);
    this.memory.writeU32(h, flags);
    this.memory.writeU32(h + 4, 0);
    this.memory.writeU32(h + 8, table % 2 ** 32);
    this.memory.writeU32(h + 12, Math.floor(table / 2 ** 32));
    if (this.memory.contains(table, 0x80 + 16 * prdt.length)) {
      const fis = new Uint8Array(64);
      const lba = o.lba ?? 0;
      fis[0] = 0x27;
      fis[1] = 0x80;
      fis[2] = o.command;
      fis[3] = (o.features ?? 0) & 0xff;
      fis[4] = lba & 0xff;
      fis[5] = Math.floor(lba / 2 ** 8) & 0xff;
      fis[6] = Math.floor(lba / 2 ** 16) & 0xff;
      fis[7] = o.device ?? 0x40;
      fis[8] = Math.floor(lba / 2 ** 24) & 0xff;
      fis[9] = Math.floor(lba / 2 ** 32) & 0xff;
      fis[10] = Math.floor(lba / 2 ** 40) & 0xff;
      fis[11] = ((o.features ?? 0) >> 8) & 0xff;
      fis[12] = (o.count ?? 0) & 0xff;
      fis[13] = ((o.count ?? 0) >> 8) & 0xff;
      this.memory.write(table, fis);
      const acmd = new Uint8Array(16);
      acmd.set(o.cdb ?? []);
      this.memory.write(table + 0x40, acmd);
      prdt.forEach((e, i) => {
        const at = table + 0x80 + 16 * i;
        this.memory.writeU32(at, e.address % 2 ** 32);
        this.memory.writeU32(at + 4, Math.floor(e.address / 2 ** 32));
        this.memory.writeU32(at + 8, 0);
        this.memory.writeU32(at + 12, (((e.bytes - 1) & 0x3fffff) | (e.interrupt ? 0x8000_0000 : 0)) >>> 0);
      });
    }
    this.memory.fill(fbOf(port), 0x100, 0);
    this.portWrite(port, PX_IS, this.portRead(port, PX_IS));
    this.portWrite(port, PX_CI, 1);
    const is = this.portRead(port, PX_IS);
    const fb = fbOf(port);
    const fromPio = (is & IS_PSS) !== 0;
    const fis = fromPio ? fb + RFIS_PIO_SETUP : fb + RFIS_D2H;
    return {
      is,
      tfd: this.portRead(port, PX_TFD),
      ci: this.portRead(port, PX_CI),
      status: fromPio || is & IS_DHRS ? this.memory.readU8(fis + 2) : -1,
      error: fromPio || is & IS_DHRS ? this.memory.readU8(fis + 3) : -1,
      transferred: this.memory.readU32(h + 4),
    };
  }

  /** A PACKET command carrying `cdb`, data in through DMA (as SeaBIOS's ahci_cmd_data). */
  packet(port: number, cdb: readonly number[], bytes = 0, dma = true): CommandResult {
    return this.issue(port, { command: 0xa0, features: dma ? 1 : 0, cdb, bytes });
  }

  data(length: number, at = DATA): Buffer {
    return Buffer.from(this.memory.read(at, length));
  }
}

/** SeaBIOS's success test of a command: no BSY, DF or ERR, and DRDY. */
export const succeeded = (r: CommandResult): boolean => (r.status & 0xa1) === 0 && (r.status & 0x40) !== 0;
