// A std VGA on its buses without a VM, for device and renderer tests: the port bus, the MMIO bus with the legacy
// window and the PCI 32-bit window, PCI config through 0xCF8/0xCFC, VRAM as real device memory (mapped host
// memory, never placed in a VM: vmFd -1), and a recording placeDeviceMemory. The guest's side is driven the way
// SeaBIOS's VGA BIOS does it: outb/outw to the VGA ports, byte and word accesses to 0xA0000-0xBFFFF.
import { MmioBus, PortIoBus } from '../../src/devices/bus.js';
import { devfn, PciBus } from '../../src/devices/pci/bus.js';
import { mapGuestMemory } from '../../src/base/guest-memory.js';
import { newDeviceMemoryRegion, placeDeviceMemory, type DeviceMemoryRegion } from '../../src/base/device-memory.js';
import type { DeviceCreateContext } from '../../src/devices/model.js';
import { attachStdVga, stdVgaModel, type AttachedStdVga, type StdVgaState } from '../../src/devices/display/std-vga.js';
import { PCI_MMIO32_BASE, PCI_MMIO32_END } from '../../src/arch/x86_64/layout.js';

export const VGA_SLOT = 2;

export interface Placement {
  readonly gpa: number | undefined;
  readonly ok: boolean;
}

export interface VgaMachine {
  readonly pio: PortIoBus;
  readonly mmio: MmioBus;
  readonly pci: PciBus;
  readonly state: StdVgaState;
  readonly device: AttachedStdVga;
  /** Every placeDeviceMemory call the device made. */
  readonly placements: Placement[];
  outb(port: number, value: number): void;
  outw(port: number, value: number): void;
  inb(port: number): number;
  inw(port: number): number;
  writeMem(gpa: number, bytes: ArrayLike<number>): void;
  readMem(gpa: number, length: number): Uint8Array;
  configRead(reg: number, size: 1 | 2 | 4): number;
  configWrite(reg: number, size: 1 | 2 | 4, value: number): void;
  dispi(index: number, value?: number): number;
}

/** Device memory as the VM would reserve it, but host memory only (slot numbers never reach KVM: vmFd -1). */
export function testDeviceMemory(
  size: number,
  name: string,
  opts?: { readonly dirtyLog?: boolean },
): DeviceMemoryRegion {
  return newDeviceMemoryRegion({
    name,
    slot: 30,
    size,
    hostAddress: mapGuestMemory(size, name),
    dirtyLog: opts?.dirtyLog === true,
  });
}

/**
 * `accept`: whether the fake placement succeeds (as KVM would for a free, aligned address); false: the real
 * placeDeviceMemory on vmFd -1, whose ioctl fails as KVM's refusal does.
 */
export function vgaMachine(opts: { accept?: boolean; rom?: string } = {}): VgaMachine {
  const ctx = {
    vmFd: -1,
    pci: { slot: VGA_SLOT, gsi: 16 },
    name: (prefix: string) => `${prefix}0`,
    machine: { cpus: 1, memory: 64 << 20, boot: 'firmware' },
    diskImages: [],
    deviceMemory: testDeviceMemory,
  } as unknown as DeviceCreateContext;
  const state = stdVgaModel.create({ kind: 'std-vga', ...(opts.rom ? { rom: opts.rom } : {}) }, ctx);
  const pio = new PortIoBus();
  const mmio = new MmioBus();
  const pci = new PciBus();
  pio.register(0xcf8, 8, pci.configPorts());
  mmio.register(
    PCI_MMIO32_BASE,
    PCI_MMIO32_END - PCI_MMIO32_BASE,
    pci.memoryWindow(PCI_MMIO32_BASE, PCI_MMIO32_END - PCI_MMIO32_BASE),
  );
  const placements: Placement[] = [];
  const place = (vmFd: number, region: DeviceMemoryRegion, gpa: number | undefined): boolean => {
    let ok: boolean;
    if (opts.accept) {
      new Float64Array(region.placement)[0] = gpa ?? -1;
      ok = true;
    } else ok = placeDeviceMemory(vmFd, region, gpa);
    placements.push({ gpa, ok });
    return ok;
  };
  const device = attachStdVga(state, { pio, mmio, pci }, -1, place);
  const address = (reg: number): number => 0x8000_0000 | (devfn(VGA_SLOT) << 8) | (reg & 0xfc);
  const m: VgaMachine = {
    pio,
    mmio,
    pci,
    state,
    device,
    placements,
    outb: (port, value) => pio.write(port, 1, value),
    outw: (port, value) => pio.write(port, 2, value),
    inb: (port) => pio.read(port, 1),
    inw: (port) => pio.read(port, 2),
    writeMem: (gpa, bytes) => mmio.write(gpa, Uint8Array.from(bytes)),
    readMem: (gpa, length) => {
      const data = new Uint8Array(length);
      mmio.read(gpa, data);
      return data;
    },
    configRead: (reg, size) => {
      pio.write(0xcf8, 4, address(reg));
      return pio.read(0xcfc + (reg & 3), size);
    },
    configWrite: (reg, size, value) => {
      pio.write(0xcf8, 4, address(reg));
      pio.write(0xcfc + (reg & 3), size, value);
    },
    dispi: (index, value) => {
      pio.write(0x1ce, 2, index);
      if (value !== undefined) pio.write(0x1cf, 2, value);
      return pio.read(0x1cf, 2);
    },
  };
  return m;
}

/** The standard VGA mode 3 (80×25 text, 9×16 cells) register values, as IBM's BIOS tables list them. */
export const MODE3 = {
  misc: 0x67,
  sequencer: [0x03, 0x00, 0x03, 0x00, 0x02],
  crtc: [
    0x5f, 0x4f, 0x50, 0x82, 0x55, 0x81, 0xbf, 0x1f, 0x00, 0x4f, 0x0d, 0x0e, 0x00, 0x00, 0x00, 0x00, 0x9c, 0x8e, 0x8f,
    0x28, 0x1f, 0x96, 0xb9, 0xa3, 0xff,
  ],
  attribute: [
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x14, 0x07, 0x38, 0x39, 0x3a, 0x3b, 0x3c, 0x3d, 0x3e, 0x3f, 0x0c, 0x00, 0x0f,
    0x08, 0x00,
  ],
  graphics: [0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x0e, 0x0f, 0xff],
};

/** The EGA 64-colour DAC palette (6-bit R, G, B) a VGA BIOS loads for text modes. */
export function egaPalette(i: number): [number, number, number] {
  const c = (hi: number, lo: number): number => ((i >> hi) & 1) * 0x2a + ((i >> lo) & 1) * 0x15;
  return [c(2, 5), c(1, 4), c(0, 3)];
}

/** Programs the registers of `mode` the way a VGA BIOS's mode set does, then turns the display on. */
export function setVgaMode(m: VgaMachine, mode: typeof MODE3): void {
  m.outb(0x3c2, mode.misc);
  mode.sequencer.forEach((v, i) => m.outw(0x3c4, (v << 8) | i));
  m.outw(0x3d4, 0x0011); // unlock CR0-CR7
  mode.crtc.forEach((v, i) => m.outw(0x3d4, (v << 8) | i));
  m.inb(0x3da); // attribute flip-flop to "index"
  mode.attribute.forEach((v, i) => {
    m.outb(0x3c0, i);
    m.outb(0x3c0, v);
  });
  mode.graphics.forEach((v, i) => m.outw(0x3ce, (v << 8) | i));
  m.outb(0x3c8, 0);
  for (let i = 0; i < 64; i++) for (const c of egaPalette(i)) m.outb(0x3c9, c);
  m.inb(0x3da);
  m.outb(0x3c0, 0x20); // palette address source: the display shows the screen again
}

/** SeaBIOS's font access: plane 2 alone at 0xA0000, planar, read map 2 (stdvga get_font_access). */
export function fontAccess(m: VgaMachine): void {
  for (const w of [0x0100, 0x0402, 0x0704, 0x0300]) m.outw(0x3c4, w);
  for (const w of [0x0204, 0x0005, 0x0406]) m.outw(0x3ce, w);
}

/** And back to text access (stdvga release_font_access, colour). */
export function textAccess(m: VgaMachine): void {
  for (const w of [0x0100, 0x0302, 0x0304, 0x0300]) m.outw(0x3c4, w);
  for (const w of [0x0004, 0x1005, 0x0e06]) m.outw(0x3ce, w);
}

/** A test font: each glyph row a different, non-symmetric pattern (never all zero or all one). */
export function testGlyphRow(ch: number, row: number): number {
  return ((ch * 37 + row * 11 + 0x5a) ^ (row << 3)) & 0xff || 0x81;
}

/** Loads the test font (256 glyphs × 16 rows, 32-byte slots) into plane 2, map 0, through the window. */
export function loadTestFont(m: VgaMachine, rows = 16): void {
  fontAccess(m);
  for (let ch = 0; ch < 256; ch++)
    for (let r = 0; r < rows; r++) m.writeMem(0xa0000 + ch * 32 + r, [testGlyphRow(ch, r)]);
  textAccess(m);
}
