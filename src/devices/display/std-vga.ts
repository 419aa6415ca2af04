// The "std VGA" (QEMU's -device VGA, PCI 1234:1111 class 0x030000): IBM VGA registers (FreeVGA's reference:
// sequencer, graphics controller, attribute controller, CRTC, DAC; ports 0x3B4-0x3DA), the legacy memory window
// 0xA0000-0xBFFFF with its planar, odd/even and chain-4 access paths, the Bochs VBE DISPI interface (ports
// 0x1CE/0x1CF: linear framebuffer modes), and QEMU's PCI layout of it: BAR0 the VRAM / linear framebuffer, BAR2
// a 4 KiB MMIO block (EDID at 0x000, VGA ports 0x3C0-0x3DF at 0x400, DISPI registers at 0x500, QEMU's extension
// registers at 0x600). Its option ROM is SeaBIOS's vgabios-stdvga.bin, handed to firmware through fw_cfg.
//
// VRAM is device memory (base/device-memory.ts): KVM maps it at BAR0 wherever the guest programs it, so linear
// framebuffer writes cost no exit; while it is not mapped (BAR off, KVM refused the address) BAR0 accesses exit
// here and are served from the same bytes. The four VGA planes live in VRAM the way QEMU keeps them: byte `p` of
// each 32-bit word is plane `p`, so plane offset `a` is VRAM byte 4a + p, and a chain-4 byte address is its own
// VRAM address (mode 13h and the VBE banked window see VRAM linearly).
//
// Threads: the register file is one SharedArrayBuffer guarded by a SharedLock (index/data pairs, the attribute
// flip-flop and the DAC's three-step sequence change several bytes together); VRAM is shared memory by nature.
// Writes through exits (legacy window, unmapped BAR0) set bits in a shared software dirty log, which the
// renderer merges with KVM's (vga-renderer.ts).
import { readFileSync } from 'node:fs';
import { deflateRawSync, inflateRawSync } from 'node:zlib';
import { Type } from '@sinclair/typebox';
import type { MmioDevice, PortIoDevice } from '../bus.js';
import { SharedLock } from '../../base/shared-lock.js';
import {
  deviceMemoryAddress,
  deviceMemoryBytes,
  placeDeviceMemory,
  type DeviceMemoryRegion,
} from '../../base/device-memory.js';
import { devfn, type BarLocator, type PciBus, type PciFunction } from '../pci/bus.js';
import { PCI_COMMAND, PCI_COMMAND_MEMORY, PciConfigSpace, QEMU_SUBSYSTEM_IDS } from '../pci/config-space.js';
import {
  bytesToJson,
  DeviceOpenError,
  DeviceStateError,
  expectSnapshot,
  jsonToBytes,
  type AttachedDevice,
  type DeviceModel,
  type DeviceSnapshot,
} from '../model.js';
import { buildEdid } from './edid.js';
import { VGA_WINDOW_BASE, VGA_WINDOW_END } from '../../arch/x86_64/layout.js';

export const STD_VGA_ROM_DEFAULT = '/usr/share/seabios/vgabios-stdvga.bin';
/** SeaBIOS looks an option ROM up in fw_cfg under this name before it tries the function's ROM BAR. */
export const STD_VGA_ROM_NAME = 'pci1234,1111.rom';
export const VRAM_SIZE = 16 << 20;
const MMIO_SIZE = 0x1000;
const VRAM_BAR = 0;
const MMIO_BAR = 2;
const PAGE = 4096;

// BAR2 layout (QEMU's pci-vga MMIO).
const MMIO_EDID = 0x000;
const MMIO_VGA_PORTS = 0x400; // ports 0x3C0-0x3DF
const MMIO_DISPI = 0x500; // DISPI register n at 0x500 + 2n
const MMIO_QEXT = 0x600;
const QEXT_SIZE = 8;
const QEXT_LITTLE_ENDIAN = 0x1e1e1e1e;
const QEXT_BIG_ENDIAN = 0xbebebebe;

// Bochs VBE DISPI registers (index on port 0x1CE, data on 0x1CF).
export const DISPI = {
  ID: 0,
  XRES: 1,
  YRES: 2,
  BPP: 3,
  ENABLE: 4,
  BANK: 5,
  VIRT_WIDTH: 6,
  VIRT_HEIGHT: 7,
  X_OFFSET: 8,
  Y_OFFSET: 9,
  VIDEO_MEMORY_64K: 10,
} as const;
const DISPI_COUNT = 11;
export const DISPI_ENABLED = 0x01;
export const DISPI_GETCAPS = 0x02;
export const DISPI_8BIT_DAC = 0x20;
export const DISPI_LFB_ENABLED = 0x40;
export const DISPI_NOCLEARMEM = 0x80;
const DISPI_ID0 = 0xb0c0;
const DISPI_ID5 = 0xb0c5;
export const DISPI_MAX_XRES = 16000;
export const DISPI_MAX_YRES = 12000;
const DISPI_MAX_BPP = 32;
const DISPI_DEPTHS = [4, 8, 15, 16, 24, 32];

// The register file: byte offsets in the shared buffer (word 0 is the lock).
const R_MISC = 4; // miscellaneous output (0x3C2 write, 0x3CC read)
const R_SR_INDEX = 5;
const R_GR_INDEX = 6;
const R_AR_INDEX = 7; // bits 0-4 index, bit 5 palette address source (0: screen blanked)
const R_AR_FLIP = 8; // 0: next 0x3C0 write is an index, 1: data
const R_CR_INDEX = 9;
const R_DAC_READ = 10;
const R_DAC_WRITE = 11;
const R_DAC_SUB = 12; // which of R, G, B comes next
const R_DAC_STATE = 13; // 0x3C7 read: 3 after a read index was set, 0 after a write index
const R_DAC_MASK = 14;
const R_FCR = 15;
const R_ST01 = 16;
const R_DAC_CACHE = 17; // 3 bytes: a colour being written
const R_BIG_ENDIAN = 20;
const R_SR = 32; // 8 sequencer registers
const R_GR = 48; // 16 graphics controller registers
const R_AR = 64; // 21 attribute controller registers (32 reserved)
const R_CR = 96; // 256 CRTC registers (0x00-0x18 defined; the rest read back what was written)
const R_DAC = 352; // 256 × R, G, B (6-bit values, 8-bit with DISPI_8BIT_DAC)
const R_LATCH = 1120; // u32: the four plane latches
const R_DISPI_INDEX = 1124; // u16
const R_DISPI = 1128; // 16 × u16
const REGISTER_BYTES = 1160;

const AR_COUNT = 21;
// Writable bits of each sequencer / graphics register (FreeVGA; reserved bits read 0).
const SR_MASK = [0x03, 0x3d, 0x0f, 0x3f, 0x0e, 0x00, 0x00, 0xff];
const GR_MASK = [0x0f, 0x0f, 0x0f, 0x1f, 0x03, 0x7b, 0x0f, 0x0f, 0xff, 0, 0, 0, 0, 0, 0, 0];

// Register bits this file and the renderer use.
export const MISC_COLOR = 0x01; // CRTC at 0x3D4 (colour), else 0x3B4
export const SR01_8DOTS = 0x01;
export const SR01_DOUBLE_CLOCK = 0x08; // dot clock / 2 (40-column, 320-pixel modes)
export const SR01_SCREEN_OFF = 0x20;
const SR04_ODD_EVEN_OFF = 0x04;
const SR04_CHAIN4 = 0x08;
export const GR05_256_COLOUR = 0x40;
const GR05_ODD_EVEN = 0x10;
export const GR06_GRAPHICS = 0x01;
export const AR_PALETTE_SOURCE = 0x20;
const CR11_LOCK = 0x80;

/** Expands 4 bits to 4 bytes of all-ones or zero (plane p ↔ byte p). */
const EXPAND4 = new Uint32Array(16).map(
  (_, i) => (i & 1 ? 0xff : 0) | (i & 2 ? 0xff00 : 0) | (i & 4 ? 0xff0000 : 0) | (i & 8 ? 0xff000000 : 0),
);

/** What create() makes: structured-clone safe, shared by every thread's view. */
export interface StdVgaState {
  readonly name: string;
  readonly slot: number;
  readonly registers: SharedArrayBuffer;
  /** One bit per 4 KiB VRAM page written through exits (legacy window, unmapped BAR0): Int32 words. */
  readonly softDirty: SharedArrayBuffer;
  readonly pciConfig: SharedArrayBuffer;
  readonly vram: DeviceMemoryRegion;
  readonly rom: Uint8Array;
  readonly edid: Uint8Array;
}

/**
 * A typed view of the register file and VRAM, for the device and the renderer. Reads without the lock are fine
 * for rendering (a frame may mix two register states, as on real hardware while the guest reprograms it).
 */
export class VgaRegisters {
  readonly bytes: Uint8Array;
  readonly dispiWords: Uint16Array;
  readonly latch: Uint32Array;
  readonly vram: Uint8Array;
  readonly vram32: Uint32Array;
  readonly softDirty: Int32Array;

  constructor(readonly state: StdVgaState) {
    this.bytes = new Uint8Array(state.registers, 0, REGISTER_BYTES);
    this.dispiWords = new Uint16Array(state.registers, R_DISPI, 16);
    this.latch = new Uint32Array(state.registers, R_LATCH, 1);
    this.vram = deviceMemoryBytes(state.vram);
    this.vram32 = new Uint32Array(this.vram.buffer, this.vram.byteOffset, this.vram.byteLength >>> 2);
    this.softDirty = new Int32Array(state.softDirty);
  }

  sr(i: number): number {
    return this.bytes[R_SR + i];
  }
  gr(i: number): number {
    return this.bytes[R_GR + i];
  }
  ar(i: number): number {
    return this.bytes[R_AR + i];
  }
  cr(i: number): number {
    return this.bytes[R_CR + i];
  }
  get misc(): number {
    return this.bytes[R_MISC];
  }
  get arIndex(): number {
    return this.bytes[R_AR_INDEX];
  }
  get dacMask(): number {
    return this.bytes[R_DAC_MASK];
  }
  get bigEndian(): boolean {
    return this.bytes[R_BIG_ENDIAN] !== 0;
  }
  /** DAC entry `i` as 8-bit R, G, B (6-bit entries scaled, unless the DISPI 8-bit DAC is on). */
  dacRgb(i: number): [number, number, number] {
    const at = R_DAC + 3 * (i & 0xff);
    const b = this.bytes;
    if (this.dispi(DISPI.ENABLE) & DISPI_8BIT_DAC) return [b[at], b[at + 1], b[at + 2]];
    // 6 to 8 bits as QEMU scales them (the low bit fills the two new ones), so screenshots match its screendump.
    const c = (v: number): number => ((v & 0x3f) << 2) | ((v & 1) * 3);
    return [c(b[at]), c(b[at + 1]), c(b[at + 2])];
  }
  /** The raw palette bytes (for change detection). */
  dacBytes(): Uint8Array {
    return this.bytes.subarray(R_DAC, R_DAC + 768);
  }
  dispi(i: number): number {
    return this.dispiWords[i];
  }
  get vbeEnabled(): boolean {
    return (this.dispi(DISPI.ENABLE) & DISPI_ENABLED) !== 0;
  }
  markDirty(vramOffset: number, length: number): void {
    const first = Math.floor(vramOffset / PAGE);
    const last = Math.floor((vramOffset + length - 1) / PAGE);
    for (let p = first; p <= last; p++) Atomics.or(this.softDirty, p >>> 5, 1 << (p & 31));
  }
  /** Takes the software dirty log (clears it): one bit per page, as readDirtyLog returns. */
  takeSoftDirty(): Uint8Array {
    const out = new Int32Array(this.softDirty.length);
    for (let i = 0; i < out.length; i++) out[i] = Atomics.exchange(this.softDirty, i, 0);
    return new Uint8Array(out.buffer);
  }
}

/** The effective VBE mode after the checks a guest cannot get around (used by the device and the renderer). */
export interface VbeMode {
  readonly width: number;
  readonly height: number;
  readonly bpp: number;
  /** Bytes per line (virtual width × bytes per pixel). */
  readonly stride: number;
  /** VRAM byte where the visible screen starts. */
  readonly start: number;
}

/** Bytes per pixel rounding of a DISPI depth (4 bpp packs two pixels a byte: 0.5). */
function bytesPerPixel(bpp: number): number {
  return bpp === 4 ? 0.5 : (bpp + 7) >> 3;
}

/**
 * Applies Bochs VBE's register checks to `r` (the DISPI registers, changed in place): a valid depth, a width
 * that is a multiple of 8 and at most the maximum, a virtual width at least the width, a height that fits VRAM,
 * and offsets that keep the visible screen inside VRAM. Returns the resulting mode.
 */
export function fixupDispi(r: Uint16Array, vramSize: number): VbeMode {
  if (!DISPI_DEPTHS.includes(r[DISPI.BPP])) r[DISPI.BPP] = 8;
  const bpp = r[DISPI.BPP];
  const bytes = bytesPerPixel(bpp);
  r[DISPI.XRES] = Math.min(DISPI_MAX_XRES, r[DISPI.XRES] & ~7) || 8;
  r[DISPI.VIRT_WIDTH] = Math.max(r[DISPI.XRES], Math.min(DISPI_MAX_XRES, r[DISPI.VIRT_WIDTH] & ~7));
  const stride = r[DISPI.VIRT_WIDTH] * bytes;
  const maxY = Math.min(0xffff, Math.floor(vramSize / stride));
  r[DISPI.YRES] = Math.min(r[DISPI.YRES] || 1, DISPI_MAX_YRES, maxY);
  r[DISPI.X_OFFSET] = Math.min(r[DISPI.X_OFFSET], DISPI_MAX_XRES);
  r[DISPI.Y_OFFSET] = Math.min(r[DISPI.Y_OFFSET], DISPI_MAX_YRES);
  let start = Math.floor(r[DISPI.X_OFFSET] * bytes) + r[DISPI.Y_OFFSET] * stride;
  if (start + r[DISPI.YRES] * stride > vramSize) {
    r[DISPI.X_OFFSET] = 0;
    start = r[DISPI.Y_OFFSET] * stride;
    if (start + r[DISPI.YRES] * stride > vramSize) {
      r[DISPI.Y_OFFSET] = 0;
      start = 0;
    }
  }
  r[DISPI.VIRT_HEIGHT] = maxY;
  return { width: r[DISPI.XRES], height: r[DISPI.YRES], bpp, stride, start };
}

/**
 * The VBE mode the registers describe now, checked again on a copy (the registers may have been restored from a
 * snapshot or changed between the guest's writes): never reaches outside VRAM.
 */
export function currentVbeMode(regs: VgaRegisters): VbeMode {
  return fixupDispi(regs.dispiWords.slice(), regs.vram.length);
}

/** The device on one thread: ports, the legacy window, and the PCI function with BAR0 (VRAM) and BAR2 (MMIO). */
export class StdVga implements PciFunction {
  readonly name: string;
  readonly config: PciConfigSpace;
  readonly regs: VgaRegisters;
  private readonly lock: SharedLock;
  private readonly b: Uint8Array;

  /** `place`: placeDeviceMemory, or a test's recording fake. */
  constructor(
    readonly state: StdVgaState,
    private readonly vmFd: number,
    private readonly place: typeof placeDeviceMemory = placeDeviceMemory,
  ) {
    this.name = state.name;
    this.config = new PciConfigSpace(state.pciConfig);
    this.defineFunction(false);
    this.regs = new VgaRegisters(state);
    this.lock = new SharedLock(state.registers, 0);
    this.b = this.regs.bytes;
  }

  /** BARs and write masks; `initialize` (the creating thread) also writes the identity and initial registers. */
  defineFunction(initialize: boolean): void {
    const id = {
      vendorId: 0x1234,
      deviceId: 0x1111,
      classCode: 0x030000,
      revision: 2,
      ...QEMU_SUBSYSTEM_IDS,
      interruptPin: 0,
    };
    if (initialize) this.config.initialize(id);
    else this.config.defineMasks(id);
    this.config.defineBar({ index: VRAM_BAR, kind: 'mem32', size: VRAM_SIZE, prefetchable: true }, initialize);
    this.config.defineBar({ index: MMIO_BAR, kind: 'mem32', size: MMIO_SIZE }, initialize);
  }

  /** Power-on register values: everything zero but what firmware expects to find. */
  resetRegisters(): void {
    this.lock.with(() => {
      this.b.fill(0, 4);
      this.b[R_DAC_MASK] = 0xff;
      this.b[R_AR_INDEX] = AR_PALETTE_SOURCE;
      this.regs.dispiWords[DISPI.ID] = DISPI_ID5;
      this.regs.dispiWords[DISPI.VIDEO_MEMORY_64K] = this.regs.vram.length >>> 16;
    });
  }

  // ---- VGA ports -------------------------------------------------------------------------------------------

  /** The ports this device answers: 0x3B4/0x3B5/0x3BA, 0x3C0-0x3CF, 0x3D4/0x3D5/0x3DA, 0x1CE (index), 0x1CF/0x1D0 (data). */
  portDevices(): { base: number; length: number; device: PortIoDevice }[] {
    const vga = (base: number): PortIoDevice => ({
      name: `${this.name}-ports`,
      pioRead: (offset, size) => {
        let v = 0;
        for (let i = 0; i < size; i++) v |= this.readPort(base + offset + i) << (8 * i);
        return v >>> 0;
      },
      pioWrite: (offset, size, value) => {
        for (let i = 0; i < size; i++) this.writePort(base + offset + i, (value >>> (8 * i)) & 0xff);
      },
    });
    const dispi: PortIoDevice = {
      name: `${this.name}-dispi`,
      pioRead: (offset) => (offset === 0 ? this.dispiIndex() : this.dispiRead(this.dispiIndex())),
      pioWrite: (offset, _size, value) =>
        offset === 0 ? this.setDispiIndex(value & 0xffff) : this.dispiWrite(this.dispiIndex(), value & 0xffff),
    };
    return [
      { base: 0x3b4, length: 2, device: vga(0x3b4) },
      { base: 0x3ba, length: 1, device: vga(0x3ba) },
      { base: 0x3c0, length: 16, device: vga(0x3c0) },
      { base: 0x3d4, length: 2, device: vga(0x3d4) },
      { base: 0x3da, length: 1, device: vga(0x3da) },
      { base: 0x1ce, length: 3, device: dispi },
    ];
  }

  /** The CRTC and input status ports of the emulation (mono 0x3Bx, colour 0x3Dx) not selected are not decoded. */
  private portIgnored(port: number): boolean {
    const color = (this.b[R_MISC] & MISC_COLOR) !== 0;
    return (port >= 0x3b0 && port <= 0x3bf && color) || (port >= 0x3d0 && port <= 0x3df && !color);
  }

  /** A byte read of a VGA port (0x3B0-0x3DF). */
  readPort(port: number): number {
    return this.lock.with(() => this.readPortLocked(port));
  }

  private readPortLocked(port: number): number {
    const b = this.b;
    if (this.portIgnored(port)) return 0xff;
    switch (port) {
      case 0x3c0:
        return b[R_AR_FLIP] === 0 ? b[R_AR_INDEX] : 0;
      case 0x3c1: {
        const i = b[R_AR_INDEX] & 0x1f;
        return i < AR_COUNT ? b[R_AR + i] : 0;
      }
      case 0x3c2:
        return 0; // input status 0: no switch sense, no CRT interrupt
      case 0x3c4:
        return b[R_SR_INDEX];
      case 0x3c5:
        return b[R_SR + b[R_SR_INDEX]];
      case 0x3c6:
        return b[R_DAC_MASK];
      case 0x3c7:
        return b[R_DAC_STATE];
      case 0x3c8:
        return b[R_DAC_WRITE];
      case 0x3c9: {
        const v = b[R_DAC + b[R_DAC_READ] * 3 + b[R_DAC_SUB]];
        if (++b[R_DAC_SUB] === 3) {
          b[R_DAC_SUB] = 0;
          b[R_DAC_READ] = (b[R_DAC_READ] + 1) & 0xff;
        }
        return v;
      }
      case 0x3ca:
        return b[R_FCR];
      case 0x3cc:
        return b[R_MISC];
      case 0x3ce:
        return b[R_GR_INDEX];
      case 0x3cf:
        return b[R_GR + b[R_GR_INDEX]];
      case 0x3b4:
      case 0x3d4:
        return b[R_CR_INDEX];
      case 0x3b5:
      case 0x3d5:
        return b[R_CR + b[R_CR_INDEX]];
      case 0x3ba:
      case 0x3da:
        // Input status 1: reading resets the attribute flip-flop; display-enable and vertical retrace toggle so
        // guests that wait for a retrace edge see one.
        b[R_AR_FLIP] = 0;
        b[R_ST01] ^= 0x09;
        return b[R_ST01];
      default:
        return 0xff;
    }
  }

  /** A byte write to a VGA port (0x3B0-0x3DF). */
  writePort(port: number, value: number): void {
    this.lock.with(() => this.writePortLocked(port, value & 0xff));
  }

  private writePortLocked(port: number, v: number): void {
    const b = this.b;
    if (this.portIgnored(port)) return;
    switch (port) {
      case 0x3c0:
        if (b[R_AR_FLIP] === 0) b[R_AR_INDEX] = v & 0x3f;
        else {
          const i = b[R_AR_INDEX] & 0x1f;
          if (i < 0x10) b[R_AR + i] = v & 0x3f;
          else if (i === 0x10) b[R_AR + i] = v & ~0x10;
          else if (i === 0x11) b[R_AR + i] = v;
          else if (i === 0x12) b[R_AR + i] = v & 0x3f;
          else if (i === 0x13 || i === 0x14) b[R_AR + i] = v & 0x0f;
        }
        b[R_AR_FLIP] ^= 1;
        return;
      case 0x3c2:
        b[R_MISC] = v & ~0x10;
        return;
      case 0x3c4:
        b[R_SR_INDEX] = v & 7;
        return;
      case 0x3c5:
        b[R_SR + b[R_SR_INDEX]] = v & SR_MASK[b[R_SR_INDEX]];
        return;
      case 0x3c6:
        b[R_DAC_MASK] = v;
        return;
      case 0x3c7:
        b[R_DAC_READ] = v;
        b[R_DAC_SUB] = 0;
        b[R_DAC_STATE] = 3;
        return;
      case 0x3c8:
        b[R_DAC_WRITE] = v;
        b[R_DAC_SUB] = 0;
        b[R_DAC_STATE] = 0;
        return;
      case 0x3c9:
        b[R_DAC_CACHE + b[R_DAC_SUB]] = v;
        if (++b[R_DAC_SUB] === 3) {
          b.copyWithin(R_DAC + b[R_DAC_WRITE] * 3, R_DAC_CACHE, R_DAC_CACHE + 3);
          b[R_DAC_SUB] = 0;
          b[R_DAC_WRITE] = (b[R_DAC_WRITE] + 1) & 0xff;
        }
        return;
      case 0x3ce:
        b[R_GR_INDEX] = v & 0x0f;
        return;
      case 0x3cf:
        b[R_GR + b[R_GR_INDEX]] = v & GR_MASK[b[R_GR_INDEX]];
        return;
      case 0x3b4:
      case 0x3d4:
        b[R_CR_INDEX] = v;
        return;
      case 0x3b5:
      case 0x3d5: {
        const i = b[R_CR_INDEX];
        // CR11 bit 7 write-protects CR0-CR7, except CR7's line-compare bit 8 (FreeVGA, CRTC register 11h).
        if (b[R_CR + 0x11] & CR11_LOCK && i <= 7) {
          if (i === 7) b[R_CR + 7] = (b[R_CR + 7] & ~0x10) | (v & 0x10);
          return;
        }
        b[R_CR + i] = v;
        return;
      }
      case 0x3ba:
      case 0x3da:
        b[R_FCR] = v & 0x10;
        return;
      default:
        return;
    }
  }

  // ---- Bochs VBE DISPI --------------------------------------------------------------------------------------

  private dispiIndex(): number {
    return Atomics.load(new Uint16Array(this.state.registers, R_DISPI_INDEX, 1), 0);
  }

  private setDispiIndex(i: number): void {
    Atomics.store(new Uint16Array(this.state.registers, R_DISPI_INDEX, 1), 0, i);
  }

  /** A DISPI register read (GETCAPS makes XRES/YRES/BPP report the maxima). */
  dispiRead(index: number): number {
    return this.lock.with(() => {
      const r = this.regs.dispiWords;
      if (index >= DISPI_COUNT) return 0;
      if (r[DISPI.ENABLE] & DISPI_GETCAPS) {
        if (index === DISPI.XRES) return DISPI_MAX_XRES;
        if (index === DISPI.YRES) return DISPI_MAX_YRES;
        if (index === DISPI.BPP) return DISPI_MAX_BPP;
      }
      return r[index];
    });
  }

  /** A DISPI register write. */
  dispiWrite(index: number, v: number): void {
    this.lock.with(() => {
      const r = this.regs.dispiWords;
      switch (index) {
        case DISPI.ID:
          if (v >= DISPI_ID0 && v <= DISPI_ID5) r[DISPI.ID] = v;
          return;
        case DISPI.XRES:
        case DISPI.YRES:
        case DISPI.BPP:
        case DISPI.VIRT_WIDTH:
        case DISPI.VIRT_HEIGHT:
        case DISPI.X_OFFSET:
        case DISPI.Y_OFFSET:
          r[index] = v;
          if (r[DISPI.ENABLE] & DISPI_ENABLED) {
            fixupDispi(r, this.regs.vram.length);
            this.vbeToVgaRegisters();
          }
          return;
        case DISPI.BANK:
          r[DISPI.BANK] = v & ((this.regs.vram.length >>> 16) - 1);
          return;
        case DISPI.ENABLE: {
          const was = r[DISPI.ENABLE] & DISPI_ENABLED;
          if (v & DISPI_ENABLED && !was) {
            r[DISPI.VIRT_WIDTH] = 0;
            r[DISPI.X_OFFSET] = 0;
            r[DISPI.Y_OFFSET] = 0;
            r[DISPI.ENABLE] = v;
            const mode = fixupDispi(r, this.regs.vram.length);
            this.vbeToVgaRegisters();
            if (!(v & DISPI_NOCLEARMEM)) {
              const bytes = Math.min(this.regs.vram.length, mode.height * mode.stride);
              this.regs.vram.fill(0, 0, bytes);
              this.regs.markDirty(0, Math.max(1, bytes));
            }
          } else if (!(v & DISPI_ENABLED)) r[DISPI.BANK] = 0;
          r[DISPI.ENABLE] = v;
          return;
        }
        default:
          return; // VIDEO_MEMORY_64K is read-only; unknown indexes are ignored
      }
    });
  }

  /**
   * With VBE on, the VGA registers are set so the legacy window shows VRAM linearly through the 64 KiB bank at
   * 0xA0000 (graphics mode, chain-4) and the CRTC says the mode's geometry, as Bochs VBE does for the BIOS.
   */
  private vbeToVgaRegisters(): void {
    const b = this.b;
    const r = this.regs.dispiWords;
    b[R_GR + 6] = (b[R_GR + 6] & ~0x0c) | 0x05;
    b[R_CR + 0x17] |= 0x03;
    b[R_CR + 0x13] = (r[DISPI.VIRT_WIDTH] * bytesPerPixel(r[DISPI.BPP])) >>> 3;
    b[R_CR + 0x01] = ((r[DISPI.XRES] >>> 3) - 1) & 0xff;
    const lines = r[DISPI.YRES] - 1;
    b[R_CR + 0x12] = lines & 0xff;
    b[R_CR + 0x07] = (b[R_CR + 0x07] & ~0x42) | ((lines >> 7) & 0x02) | ((lines >> 3) & 0x40);
    b[R_CR + 0x18] = 0xff;
    b[R_CR + 0x09] &= 0x60; // one scan line per row, no double scan
    if (r[DISPI.BPP] === 4) b[R_SR + 4] &= ~SR04_CHAIN4;
    else {
      b[R_SR + 4] |= SR04_CHAIN4;
      b[R_GR + 5] = (b[R_GR + 5] & ~0x60) | GR05_256_COLOUR;
    }
    b[R_SR + 2] |= 0x0f;
  }

  // ---- The legacy memory window 0xA0000-0xBFFFF ---------------------------------------------------------------

  /**
   * Where an access at `offset` into the 128 KiB window lands in the memory map the graphics controller selects
   * (GR6 bits 2-3), as an offset into that mapping; -1 when it decodes nothing.
   */
  private windowOffset(offset: number): number {
    switch ((this.b[R_GR + 6] >> 2) & 3) {
      case 0:
        return offset; // 0xA0000, 128 KiB
      case 1:
        return offset < 0x10000 ? offset + (this.regs.dispiWords[DISPI.BANK] << 16) : -1; // 0xA0000, 64 KiB
      case 2:
        return offset >= 0x10000 && offset < 0x18000 ? offset - 0x10000 : -1; // 0xB0000, 32 KiB
      default:
        return offset >= 0x18000 ? offset - 0x18000 : -1; // 0xB8000, 32 KiB
    }
  }

  /** A byte read through the window (offset from 0xA0000). */
  windowRead(offset: number): number {
    return this.lock.with(() => this.windowReadLocked(offset));
  }

  private windowReadLocked(offset: number): number {
    const b = this.b;
    const vram = this.regs.vram;
    const addr = this.windowOffset(offset);
    if (addr < 0) return 0xff;
    if (b[R_SR + 4] & SR04_CHAIN4) return addr < vram.length ? vram[addr] : 0xff;
    if (b[R_GR + 5] & GR05_ODD_EVEN) {
      // Odd/even: address bit 0 picks plane 0/1 (or 2/3 with the read map's bit 1).
      const plane = (b[R_GR + 4] & 2) | (addr & 1);
      const at = ((addr & ~1) << 1) | plane;
      return at < vram.length ? vram[at] : 0xff;
    }
    if (addr >= this.regs.vram32.length) return 0xff;
    const latch = this.regs.vram32[addr];
    this.regs.latch[0] = latch;
    if (!(b[R_GR + 5] & 0x08)) return (latch >>> (8 * (b[R_GR + 4] & 3))) & 0xff; // read mode 0: one plane
    // Read mode 1: colour compare. A bit is 1 where every plane selected by Color Don't Care matches Color Compare.
    const cmp = ((latch ^ EXPAND4[b[R_GR + 2] & 0xf]) & EXPAND4[b[R_GR + 7] & 0xf]) >>> 0;
    const folded = (cmp | (cmp >>> 8) | (cmp >>> 16) | (cmp >>> 24)) & 0xff;
    return ~folded & 0xff;
  }

  /** A byte write through the window (offset from 0xA0000). */
  windowWrite(offset: number, value: number): void {
    this.lock.with(() => this.windowWriteLocked(offset, value & 0xff));
  }

  private windowWriteLocked(offset: number, v: number): void {
    const b = this.b;
    const vram = this.regs.vram;
    const addr = this.windowOffset(offset);
    if (addr < 0) return;
    const mapMask = b[R_SR + 2] & 0xf;
    if (b[R_SR + 4] & SR04_CHAIN4) {
      if (addr < vram.length && mapMask & (1 << (addr & 3))) {
        vram[addr] = v;
        this.regs.markDirty(addr, 1);
      }
      return;
    }
    if (!(b[R_SR + 4] & SR04_ODD_EVEN_OFF)) {
      const plane = (b[R_GR + 4] & 2) | (addr & 1);
      const at = ((addr & ~1) << 1) | plane;
      if (at < vram.length && mapMask & (1 << plane)) {
        vram[at] = v;
        this.regs.markDirty(at, 1);
      }
      return;
    }
    if (addr >= this.regs.vram32.length) return;
    const latch = this.regs.latch[0];
    const writeMode = b[R_GR + 5] & 3;
    let bitMask = b[R_GR + 8];
    let value: number;
    if (writeMode === 1) value = latch;
    else {
      if (writeMode === 2) value = EXPAND4[v & 0xf];
      else {
        const rot = b[R_GR + 3] & 7;
        const rotated = ((v >> rot) | (v << (8 - rot))) & 0xff;
        if (writeMode === 3) {
          bitMask &= rotated;
          value = EXPAND4[b[R_GR + 0] & 0xf];
        } else {
          // Write mode 0: the rotated byte in every plane, Set/Reset's colour where Enable Set/Reset says so.
          value = rotated * 0x01010101;
          const enable = EXPAND4[b[R_GR + 1] & 0xf];
          value = ((value & ~enable) | (EXPAND4[b[R_GR + 0] & 0xf] & enable)) >>> 0;
        }
      }
      // The logical operation with the latches (GR3 bits 3-4), then the bit mask keeps latched bits.
      switch ((b[R_GR + 3] >> 3) & 3) {
        case 1:
          value &= latch;
          break;
        case 2:
          value |= latch;
          break;
        case 3:
          value ^= latch;
          break;
      }
      const bits = bitMask * 0x01010101;
      value = ((value & bits) | (latch & ~bits)) >>> 0;
    }
    const planes = EXPAND4[mapMask];
    const vram32 = this.regs.vram32;
    vram32[addr] = ((vram32[addr] & ~planes) | (value & planes)) >>> 0;
    this.regs.markDirty(addr * 4, 4);
  }

  /** The window on the MMIO bus (0xA0000-0xBFFFF). */
  windowDevice(): MmioDevice {
    return {
      name: `${this.name}-window`,
      mmioRead: (offset, data) => {
        for (let i = 0; i < data.length; i++) data[i] = this.windowRead(offset + i);
      },
      mmioWrite: (offset, data) => {
        for (let i = 0; i < data.length; i++) this.windowWrite(offset + i, data[i]);
      },
    };
  }

  // ---- PCI BARs --------------------------------------------------------------------------------------------

  barRead(bar: number, offset: number, data: Uint8Array): void {
    if (bar === VRAM_BAR) {
      if (offset < 0 || offset + data.length > this.regs.vram.length) return void data.fill(0xff);
      data.set(this.regs.vram.subarray(offset, offset + data.length));
      return;
    }
    if (bar !== MMIO_BAR) return void data.fill(0xff);
    for (let i = 0; i < data.length; i++) data[i] = this.mmioByte(offset + i);
  }

  barWrite(bar: number, offset: number, data: Uint8Array): void {
    if (bar === VRAM_BAR) {
      if (offset < 0 || offset + data.length > this.regs.vram.length) return;
      this.regs.vram.set(data, offset);
      this.regs.markDirty(offset, data.length);
      return;
    }
    if (bar !== MMIO_BAR) return;
    if (offset >= MMIO_DISPI && offset < MMIO_DISPI + 2 * DISPI_COUNT) {
      // 16-bit registers: a byte write changes its half; wider writes cover consecutive registers.
      for (let i = 0; i < data.length;) {
        const at = offset + i;
        const index = (at - MMIO_DISPI) >> 1;
        if (index >= DISPI_COUNT) break;
        let word = this.dispiRead(index);
        if (at & 1) word = (word & 0xff) | (data[i] << 8);
        else if (i + 1 < data.length) word = data[i] | (data[i + 1] << 8);
        else word = (word & 0xff00) | data[i];
        this.dispiWrite(index, word);
        i += at & 1 || i + 1 >= data.length ? 1 : 2;
      }
      return;
    }
    if (offset >= MMIO_VGA_PORTS && offset < MMIO_VGA_PORTS + 0x20) {
      for (let i = 0; i < data.length && offset + i < MMIO_VGA_PORTS + 0x20; i++)
        this.writePort(0x3c0 + offset + i - MMIO_VGA_PORTS, data[i]);
      return;
    }
    if (offset === MMIO_QEXT + 4 && data.length === 4) {
      const v = (data[0] | (data[1] << 8) | (data[2] << 16) | (data[3] << 24)) >>> 0;
      if (v === QEXT_BIG_ENDIAN) this.b[R_BIG_ENDIAN] = 1;
      if (v === QEXT_LITTLE_ENDIAN) this.b[R_BIG_ENDIAN] = 0;
    }
  }

  /** One byte of BAR2 as a read sees it. */
  private mmioByte(at: number): number {
    if (at >= MMIO_EDID && at < MMIO_EDID + 0x400) return at < this.state.edid.length ? this.state.edid[at] : 0;
    if (at >= MMIO_VGA_PORTS && at < MMIO_VGA_PORTS + 0x20) return this.readPort(0x3c0 + at - MMIO_VGA_PORTS);
    if (at >= MMIO_DISPI && at < MMIO_DISPI + 2 * DISPI_COUNT) {
      const word = this.dispiRead((at - MMIO_DISPI) >> 1);
      return at & 1 ? word >> 8 : word & 0xff;
    }
    if (at >= MMIO_QEXT && at < MMIO_QEXT + 8) {
      const v = at < MMIO_QEXT + 4 ? QEXT_SIZE : this.b[R_BIG_ENDIAN] ? QEXT_BIG_ENDIAN : QEXT_LITTLE_ENDIAN;
      return (v >>> (8 * (at & 3))) & 0xff;
    }
    return 0;
  }

  /**
   * BARs moved on the bus: map VRAM where BAR0 decodes now (KVM slot), or unmap it. When KVM refuses the address
   * the region stays unmapped and BAR0 accesses arrive here as MMIO (barRead/barWrite).
   */
  barsChanged(locate: BarLocator, phase: 'release' | 'place'): void {
    const region = this.state.vram;
    const target = locate(VRAM_BAR, 0, region.size);
    const current = deviceMemoryAddress(region);
    if (phase === 'release') {
      if (current !== undefined && current !== target) this.place(this.vmFd, region, undefined);
      return;
    }
    if (target !== undefined && current === undefined) this.place(this.vmFd, region, target);
  }

  // ---- save / restore --------------------------------------------------------------------------------------

  /** The registers, and VRAM raw-deflated (mostly zeros: a few KiB to a few hundred KiB). */
  save(): DeviceSnapshot {
    return this.lock.with(() => ({
      kind: 'std-vga',
      version: 1,
      data: {
        registers: bytesToJson(this.b.slice(4, REGISTER_BYTES)),
        pciConfig: bytesToJson(this.config.bytes.slice()),
        vramDeflated: deflateRawSync(this.regs.vram, { level: 1 }).toString('base64'),
      },
    }));
  }

  restore(snapshot: DeviceSnapshot): void {
    expectSnapshot(this.name, snapshot, 'std-vga', 1);
    const registers = new Uint8Array(REGISTER_BYTES - 4);
    jsonToBytes(this.name, 'registers', snapshot.data.registers, registers);
    const pciConfig = new Uint8Array(this.config.bytes.length);
    jsonToBytes(this.name, 'pciConfig', snapshot.data.pciConfig, pciConfig);
    const differs = this.config.fixedBitsDiffer(pciConfig);
    if (differs >= 0)
      throw new DeviceStateError(this.name, `has a PCI config space of another function (byte ${differs})`);
    const packed = snapshot.data.vramDeflated;
    if (typeof packed !== 'string') throw new DeviceStateError(this.name, "lacks 'vramDeflated'");
    let vram: Buffer;
    try {
      vram = inflateRawSync(Buffer.from(packed, 'base64'), { maxOutputLength: this.regs.vram.length });
    } catch (e) {
      throw new DeviceStateError(this.name, `'vramDeflated' does not inflate: ${(e as Error).message}`);
    }
    if (vram.length !== this.regs.vram.length)
      throw new DeviceStateError(
        this.name,
        `'vramDeflated' holds ${vram.length} bytes, VRAM is ${this.regs.vram.length}`,
      );
    this.lock.with(() => {
      this.b.set(registers, 4);
      for (let at = 0; at < pciConfig.length; at++) Atomics.store(this.config.bytes, at, pciConfig[at]);
      this.regs.vram.set(vram);
      this.regs.markDirty(0, this.regs.vram.length);
    });
    // VRAM follows the restored BAR0 (a reset's power-on state: unmapped until the firmware programs it again).
    const region = this.state.vram;
    const base = this.config.barBase(VRAM_BAR) || undefined;
    if (deviceMemoryAddress(region) !== base) {
      this.place(this.vmFd, region, undefined);
      if (base !== undefined) this.place(this.vmFd, region, base);
    }
  }
}

/** The attached device: its snapshot, and what the lead's screen consumers need. */
export interface AttachedStdVga extends AttachedDevice {
  readonly vga: StdVga;
  readonly vmFd: number;
}

export function isAttachedStdVga(device: AttachedDevice | undefined): device is AttachedStdVga {
  return device !== undefined && (device as Partial<AttachedStdVga>).vga instanceof StdVga;
}

/** Reads the VGA BIOS (SeaBIOS's vgabios-stdvga.bin) or says which package provides it. */
function readRom(path: string): Uint8Array {
  try {
    return new Uint8Array(readFileSync(path));
  } catch (e) {
    const why = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
    throw new DeviceOpenError(
      `std-vga: cannot read the VGA BIOS ${path} (${why}); on Debian/Ubuntu: apt-get install seabios`,
    );
  }
}

/** Puts one thread's view on its buses (shared by the model and tests that drive a device without a VM). */
export function attachStdVga(
  state: StdVgaState,
  buses: {
    pio: { register(base: number, length: number, d: PortIoDevice): void };
    mmio: { register(base: number, length: number, d: MmioDevice): void };
    pci: PciBus;
  },
  vmFd: number,
  place: typeof placeDeviceMemory = placeDeviceMemory,
): AttachedStdVga {
  const vga = new StdVga(state, vmFd, place);
  for (const p of vga.portDevices()) buses.pio.register(p.base, p.length, p.device);
  buses.mmio.register(VGA_WINDOW_BASE, VGA_WINDOW_END - VGA_WINDOW_BASE, vga.windowDevice());
  buses.pci.add(devfn(state.slot), vga);
  // Direct kernel boot placed BAR0 already: map VRAM there now (firmware boot: when the firmware programs it).
  if (vga.config.u16(PCI_COMMAND) & PCI_COMMAND_MEMORY) buses.pci.barsMoved();
  return {
    name: state.name,
    vga,
    vmFd,
    saveState: () => vga.save(),
    restoreState: (snapshot) => vga.restore(snapshot),
  };
}

export const stdVgaModel: DeviceModel<StdVgaState> = {
  kind: 'std-vga',
  summary: 'standard VGA with Bochs VBE (QEMU -device VGA, PCI 1234:1111): text modes, 16 MiB linear framebuffer',
  options: {
    rom: Type.Optional(
      Type.String({ minLength: 1, description: `VGA BIOS option ROM (default ${STD_VGA_ROM_DEFAULT})` }),
    ),
  },
  bus: 'pci',
  create(options, ctx) {
    if (!ctx.pci) throw new Error('std-vga is a PCI device: the builder must give it a slot');
    const rom = readRom(typeof options.rom === 'string' ? options.rom : STD_VGA_ROM_DEFAULT);
    const name = ctx.name('vga');
    const state: StdVgaState = {
      name,
      slot: ctx.pci.slot,
      registers: new SharedArrayBuffer(REGISTER_BYTES),
      softDirty: new SharedArrayBuffer(Math.ceil(VRAM_SIZE / PAGE / 32) * 4),
      pciConfig: new PciConfigSpace().shared,
      vram: ctx.deviceMemory(VRAM_SIZE, `${name} VRAM`, { dirtyLog: true }),
      rom,
      edid: buildEdid(),
    };
    const vga = new StdVga(state, ctx.vmFd);
    vga.defineFunction(true);
    vga.resetRegisters();
    if (ctx.bars) {
      vga.config.setBarAddress(VRAM_BAR, ctx.bars.allocate('mem32', VRAM_SIZE));
      vga.config.setBarAddress(MMIO_BAR, ctx.bars.allocate('mem32', MMIO_SIZE));
      vga.config.write(PCI_COMMAND, 2, PCI_COMMAND_MEMORY);
    }
    return state;
  },
  describe: (state) => ({
    firmwareFiles: [{ name: STD_VGA_ROM_NAME, data: state.rom }],
    legacy: { vga: true },
    // Text-mode firmware writes the window a character cell at a time: batched, as QEMU's VGA does.
    coalescedMmio: [{ base: VGA_WINDOW_BASE, size: VGA_WINDOW_END - VGA_WINDOW_BASE }],
  }),
  attach: (state, ctx) => attachStdVga(state, ctx, ctx.vmFd),
};
