// The std VGA as a guest drives it: PCI identity and BARs, the VGA BIOS's text-mode set and font load through
// the sequencer/graphics registers into plane 2, text written and read back through 0xB8000, the planar write
// and read modes, chain-4, the Bochs VBE DISPI registers (ports and BAR2), BAR0 placement as VRAM device memory,
// hostile register values, and save/restore.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import {
  DISPI,
  STD_VGA_ROM_DEFAULT,
  STD_VGA_ROM_NAME,
  stdVgaModel,
  VRAM_SIZE,
  isAttachedStdVga,
} from '../../src/devices/display/std-vga.js';
import { stdVgaDisplay } from '../../src/devices/display/vga-renderer.js';
import { attachDevices, createDevices, describeDevices } from '../../src/vmm/device-set.js';
import { validateMachineSpec } from '../../src/spec/validate.js';
import { GuestMemory } from '../../src/base/guest-memory.js';
import { PCI_MMIO32_BASE, PCI_MMIO32_END } from '../../src/arch/x86_64/layout.js';
import { DeviceOpenError, DeviceStateError } from '../../src/devices/model.js';
import { deviceMemoryAddress } from '../../src/base/device-memory.js';
import {
  fontAccess,
  loadTestFont,
  MODE3,
  setVgaMode,
  testGlyphRow,
  testDeviceMemory,
  textAccess,
  vgaMachine,
  type VgaMachine,
} from '../support/vga-machine.js';

const BAR0 = 0x10;
const BAR2 = 0x18;
const LFB = 0xc000_0000;
const MMIO = 0xc100_0000;

/** Places both BARs and turns memory decoding on, as firmware does. */
function placeBars(m: VgaMachine, lfb = LFB): void {
  m.configWrite(BAR0, 4, lfb);
  m.configWrite(BAR2, 4, MMIO);
  m.configWrite(0x04, 2, 0x0002);
}

test('std-vga: PCI identity 1234:1111 class 0x030000, BAR0 16 MiB prefetchable, BAR2 4 KiB, no interrupt', () => {
  const m = vgaMachine();
  assert.equal(m.configRead(0x00, 4), 0x1111_1234);
  assert.equal(m.configRead(0x08, 4) >>> 8, 0x030000);
  assert.equal(m.configRead(0x2c, 4), 0x1100_1af4, 'subsystem as QEMU reports it');
  assert.equal(m.configRead(0x3d, 1), 0, 'no INTx pin');
  m.configWrite(BAR0, 4, 0xffff_ffff);
  assert.equal(m.configRead(BAR0, 4) >>> 0, (~(VRAM_SIZE - 1) | 0x8) >>> 0, 'BAR0 sizes as 16 MiB, prefetchable');
  m.configWrite(BAR2, 4, 0xffff_ffff);
  assert.equal(m.configRead(BAR2, 4) >>> 0, 0xffff_f000, 'BAR2 sizes as 4 KiB');
});

test('std-vga: hands SeaBIOS its VGA BIOS through fw_cfg as pci1234,1111.rom; says which package when it is missing', () => {
  const m = vgaMachine();
  const d = stdVgaModel.describe!(m.state, { pciInterrupts: [] });
  assert.equal(d.firmwareFiles?.length, 1);
  assert.equal(d.firmwareFiles![0].name, STD_VGA_ROM_NAME);
  assert.deepEqual(Buffer.from(d.firmwareFiles![0].data), readFileSync(STD_VGA_ROM_DEFAULT));
  assert.equal(d.firmwareFiles![0].data[0], 0x55, 'an option ROM (55 AA)');
  assert.equal(d.legacy?.vga, true);
  assert.throws(
    () => vgaMachine({ rom: '/nonexistent/vgabios.bin' }),
    (e: unknown) => {
      assert.ok(e instanceof DeviceOpenError);
      assert.match(e.message, /apt-get install seabios/);
      assert.match(e.message, /\/nonexistent\/vgabios\.bin/);
      return true;
    },
  );
});

test('std-vga: a font loaded into plane 2 and text written at 0xB8000 land where the renderer reads them', () => {
  const m = vgaMachine();
  setVgaMode(m, MODE3);
  loadTestFont(m);
  const vram = m.device.vga.regs.vram;
  for (const ch of [0x00, 0x41, 0xc4, 0xff])
    for (let r = 0; r < 16; r++)
      assert.equal(vram[(ch * 32 + r) * 4 + 2], testGlyphRow(ch, r), `glyph ${ch} row ${r} in plane 2`);
  assert.equal(vram[0x41 * 32 * 4], 0, 'plane 0 untouched by the font load');
  // "Hi" white on blue at row 0, word writes as a BIOS does (char, attribute).
  m.writeMem(0xb8000, [0x48, 0x1f, 0x69, 0x1f]);
  m.writeMem(0xb8000 + 160 * 2 + 10, [0x5a, 0x4e]);
  assert.deepEqual(
    [vram[0], vram[1], vram[4], vram[5]],
    [0x48, 0x1f, 0x69, 0x1f],
    'char in plane 0, attribute in plane 1',
  );
  assert.deepEqual([...m.readMem(0xb8000, 4)], [0x48, 0x1f, 0x69, 0x1f], 'read back through odd/even');
  assert.deepEqual([...m.readMem(0xb8000 + 330, 2)], [0x5a, 0x4e]);
  // The font reads back through the planes (read mode 0, read map 2), as a BIOS saving the font does.
  fontAccess(m);
  assert.deepEqual(
    [...m.readMem(0xa0000 + 0x41 * 32, 16)],
    Array.from({ length: 16 }, (_, r) => testGlyphRow(0x41, r)),
  );
  m.outw(0x3ce, 0x0004); // read map 0: the characters (plane 0 offsets 0, 1, ...)
  assert.deepEqual([...m.readMem(0xa0000, 2)], [0x48, 0x69]);
  textAccess(m);
  // Memory map select: in text mode (0xB8000, 32 KiB) 0xA0000 and 0xB0000 decode nothing.
  assert.deepEqual([...m.readMem(0xa0000, 2)], [0xff, 0xff]);
  m.writeMem(0xb0000, [0x77]);
  assert.equal(vram[0x0], 0x48);
});

test('std-vga: planar write modes 0-3, set/reset, logical operations, bit mask, read modes 0 and 1', () => {
  const m = vgaMachine();
  m.outb(0x3c2, 0x63);
  m.outw(0x3c4, 0x0604); // planar: odd/even off, no chain-4
  m.outw(0x3ce, 0x0506); // graphics, 0xA0000 64 KiB
  m.outw(0x3c4, 0x0f02); // all planes
  m.outw(0x3ce, 0x0005); // write mode 0, read mode 0
  m.outw(0x3ce, 0xff08);
  const v32 = m.device.vga.regs.vram32;
  // Mode 0, no set/reset: the byte goes to every enabled plane.
  m.writeMem(0xa0000, [0xa5]);
  assert.equal(v32[0], 0xa5a5a5a5);
  // Map mask: only planes 1 and 3.
  m.outw(0x3c4, 0x0a02);
  m.writeMem(0xa0001, [0x3c]);
  assert.equal(v32[1], 0x3c003c00);
  m.outw(0x3c4, 0x0f02);
  // Set/reset: planes 0 and 2 from the set/reset colour (5), planes 1/3 from the data; bit mask 0xF0 keeps the
  // low nibble from the latches (loaded by a read of the same address).
  m.readMem(0xa0000, 1);
  m.outw(0x3ce, 0x0500); // set/reset colour 0101
  m.outw(0x3ce, 0x0f01); // enable set/reset on all planes
  m.outw(0x3ce, 0xf008); // bit mask
  m.writeMem(0xa0000, [0x00]);
  assert.equal(v32[0], 0x05f505f5, 'planes 0/2 set, 1/3 cleared in the high nibble; the low nibble from the latches');
  m.outw(0x3ce, 0x0001);
  m.outw(0x3ce, 0xff08);
  // Read mode 0 returns the read-map plane; read mode 1 compares colours.
  m.writeMem(0xa0010, [0x00]);
  m.outw(0x3ce, 0x0200);
  m.outw(0x3ce, 0x0f01); // set/reset colour 2 into all bits of address 0x11
  m.writeMem(0xa0011, [0xff]);
  m.outw(0x3ce, 0x0001);
  m.outw(0x3ce, 0x0104); // read map 1
  assert.equal(m.readMem(0xa0011, 1)[0], 0xff, 'plane 1 of colour 2');
  m.outw(0x3ce, 0x0204);
  assert.equal(m.readMem(0xa0011, 1)[0], 0x00, 'plane 2 of colour 2');
  m.outw(0x3ce, 0x0805); // read mode 1
  m.outw(0x3ce, 0x0202); // colour compare 2
  m.outw(0x3ce, 0x0f07); // all planes matter
  assert.equal(m.readMem(0xa0011, 1)[0], 0xff, 'every pixel is colour 2');
  assert.equal(m.readMem(0xa0010, 1)[0], 0x00, 'no pixel is colour 2');
  m.outw(0x3ce, 0x0007); // colour don't care: everything matches
  assert.equal(m.readMem(0xa0010, 1)[0], 0xff);
  // Write mode 1 copies the latches: read 0x11, write 0x20.
  m.outw(0x3ce, 0x0005);
  m.readMem(0xa0011, 1);
  m.outw(0x3ce, 0x0105);
  m.writeMem(0xa0020, [0x12]);
  assert.equal(v32[0x20], v32[0x11]);
  // Write mode 2: the data's low nibble is a colour for the bit-masked pixels.
  m.outw(0x3ce, 0x0205);
  m.outw(0x3ce, 0x0f08);
  m.readMem(0xa0030, 1); // latches = 0
  m.writeMem(0xa0030, [0x09]);
  assert.equal(v32[0x30], 0x0f00000f, 'colour 9 = planes 0 and 3 in the low nibble');
  // Write mode 3: rotated data ANDed with the bit mask selects pixels, colour from set/reset.
  m.outw(0x3ce, 0x0305);
  m.outw(0x3ce, 0xff08);
  m.outw(0x3ce, 0x0600); // colour 6 (planes 1, 2)
  m.outw(0x3ce, 0x0403); // rotate right by 4
  m.readMem(0xa0040, 1);
  m.writeMem(0xa0040, [0x0f]); // rotated: 0xF0
  assert.equal(v32[0x40], 0x00f0f000);
  // Logical operation XOR with the latches (mode 0).
  m.outw(0x3ce, 0x0005);
  m.outw(0x3ce, 0x1803); // XOR, no rotation
  m.readMem(0xa0040, 1);
  m.writeMem(0xa0040, [0xff]);
  assert.equal(v32[0x40], (0xffffffff ^ 0x00f0f000) >>> 0);
});

test('std-vga: chain-4 (mode 13h) makes the window linear VRAM; the VBE bank moves the 64 KiB window', () => {
  const m = vgaMachine();
  m.outw(0x3c4, 0x0e04);
  m.outw(0x3c4, 0x0f02);
  m.outw(0x3ce, 0x4005);
  m.outw(0x3ce, 0x0506);
  m.writeMem(0xa0000 + 321, [7, 8, 9]);
  const vram = m.device.vga.regs.vram;
  assert.deepEqual([...vram.subarray(321, 324)], [7, 8, 9]);
  assert.deepEqual([...m.readMem(0xa0000 + 321, 3)], [7, 8, 9]);
  // A banked VBE mode: 640x480x8 without the LFB, bank 3.
  m.dispi(DISPI.XRES, 640);
  m.dispi(DISPI.YRES, 480);
  m.dispi(DISPI.BPP, 8);
  m.dispi(DISPI.ENABLE, 0x01);
  m.dispi(DISPI.BANK, 3);
  m.writeMem(0xa0010, [0xab]);
  assert.equal(vram[3 * 0x10000 + 0x10], 0xab);
  assert.equal(m.readMem(0xa0010, 1)[0], 0xab);
  assert.equal(m.readMem(0xb0000, 1)[0], 0xff, 'the 64 KiB window ends at 0xAFFFF');
});

test('std-vga: ports: input status toggles retrace and resets the attribute flip-flop; mono/colour decode; CRTC lock; DAC', () => {
  const m = vgaMachine();
  m.outb(0x3c2, 0x67); // colour
  const a = m.inb(0x3da);
  const b = m.inb(0x3da);
  assert.equal((a ^ b) & 0x09, 0x09, 'display enable and vertical retrace toggle');
  m.outb(0x3c0, 0x01); // index 1
  m.outb(0x3c0, 0x2a); // data
  m.inb(0x3da);
  m.outb(0x3c0, 0x01);
  assert.equal(m.inb(0x3c1), 0x2a, 'attribute register reads back at 0x3C1');
  m.outb(0x3c0, 0x3f); // a data write (the flip-flop was at data)
  m.inb(0x3da);
  assert.equal(m.inb(0x3c0), 0x01, 'after 0x3DA the index is read at 0x3C0');
  // CRTC at 0x3D4 in colour emulation; 0x3B4 decodes nothing.
  m.outw(0x3d4, 0x550e);
  assert.equal(m.inb(0x3b5), 0xff);
  m.outb(0x3d4, 0x0e);
  assert.equal(m.inb(0x3d5), 0x55);
  m.outb(0x3c2, 0x66); // mono
  m.outb(0x3b4, 0x0e);
  assert.equal(m.inb(0x3b5), 0x55, 'the same CRTC at 0x3B4 in mono emulation');
  assert.equal(m.inb(0x3da), 0xff);
  m.outb(0x3c2, 0x67);
  // CR11 bit 7 protects CR0-CR7 (but CR7 bit 4).
  m.outw(0x3d4, 0x8011);
  m.outw(0x3d4, 0x1201);
  m.outw(0x3d4, 0xff07);
  m.outb(0x3d4, 0x01);
  assert.equal(m.inb(0x3d5), 0x00);
  m.outb(0x3d4, 0x07);
  assert.equal(m.inb(0x3d5), 0x10);
  // DAC: three writes per entry, auto-increment; reads from the read index.
  m.outb(0x3c8, 10);
  for (const v of [1, 2, 3, 4, 5, 6]) m.outb(0x3c9, v);
  m.outb(0x3c7, 11);
  assert.equal(m.inb(0x3c7), 3);
  assert.deepEqual([m.inb(0x3c9), m.inb(0x3c9), m.inb(0x3c9)], [4, 5, 6]);
  m.outb(0x3c7, 10);
  assert.deepEqual([m.inb(0x3c9), m.inb(0x3c9), m.inb(0x3c9), m.inb(0x3c9)], [1, 2, 3, 4]);
  // Sequencer/graphics reserved bits read as zero.
  m.outw(0x3c4, 0xff04);
  assert.equal(m.inb(0x3c5), 0x0e);
});

test('std-vga: Bochs VBE DISPI: IDs, memory size, a 1024x768x32 LFB mode, GETCAPS, clearing, hostile values clamped', () => {
  const m = vgaMachine();
  assert.equal(m.dispi(DISPI.ID), 0xb0c5);
  assert.equal(m.dispi(DISPI.ID, 0xb0c0), 0xb0c0);
  assert.equal(m.dispi(DISPI.ID, 0x1234), 0xb0c0, 'an unknown ID is not taken');
  assert.equal(m.dispi(DISPI.VIDEO_MEMORY_64K), VRAM_SIZE >> 16);
  assert.equal(m.dispi(DISPI.VIDEO_MEMORY_64K, 1), VRAM_SIZE >> 16, 'read-only');
  // GETCAPS: XRES/YRES/BPP read the maxima.
  m.dispi(DISPI.ENABLE, 0x02);
  assert.deepEqual([m.dispi(DISPI.XRES), m.dispi(DISPI.YRES), m.dispi(DISPI.BPP)], [16000, 12000, 32]);
  m.dispi(DISPI.ENABLE, 0);
  const vram = m.device.vga.regs.vram;
  vram.fill(0x77, 0, 64);
  m.dispi(DISPI.XRES, 1024);
  m.dispi(DISPI.YRES, 768);
  m.dispi(DISPI.BPP, 32);
  m.dispi(DISPI.ENABLE, 0x41);
  assert.equal(m.dispi(DISPI.VIRT_WIDTH), 1024);
  assert.equal(m.dispi(DISPI.VIRT_HEIGHT), VRAM_SIZE / 4096);
  assert.equal(vram[0], 0, 'enabling clears the screen');
  m.dispi(DISPI.ENABLE, 0);
  vram.fill(0x77, 0, 64);
  m.dispi(DISPI.ENABLE, 0x41 | 0x80);
  assert.equal(vram[0], 0x77, 'NOCLEARMEM keeps it');
  // Panning: Y_OFFSET within VRAM is kept, one past it is refused.
  m.dispi(DISPI.Y_OFFSET, 100);
  assert.equal(m.dispi(DISPI.Y_OFFSET), 100);
  m.dispi(DISPI.Y_OFFSET, 0xffff);
  assert.equal(m.dispi(DISPI.Y_OFFSET), 0, 'an offset past VRAM falls back to 0');
  // Hostile geometry: every value the guest can write ends in a mode that fits VRAM.
  for (const [x, y, bpp, vw] of [
    [0xffff, 0xffff, 0xffff, 0xffff],
    [0, 0, 0, 0],
    [16000, 12000, 32, 0],
    [7, 1, 24, 0xfff8],
  ]) {
    m.dispi(DISPI.BPP, bpp);
    m.dispi(DISPI.XRES, x);
    m.dispi(DISPI.YRES, y);
    m.dispi(DISPI.VIRT_WIDTH, vw);
    m.dispi(DISPI.X_OFFSET, 0xffff);
    const w = m.dispi(DISPI.XRES);
    const h = m.dispi(DISPI.YRES);
    const depth = m.dispi(DISPI.BPP);
    const stride = (m.dispi(DISPI.VIRT_WIDTH) * (depth === 4 ? 4 : ((depth + 7) >> 3) * 8)) / 8;
    assert.ok([4, 8, 15, 16, 24, 32].includes(depth), `depth ${depth}`);
    assert.ok(w >= 8 && w <= 16000 && w % 8 === 0, `width ${w}`);
    assert.ok(h >= 1 && h * stride <= VRAM_SIZE, `${w}x${h} stride ${stride} fits VRAM`);
    const start = m.dispi(DISPI.X_OFFSET) * (stride / m.dispi(DISPI.VIRT_WIDTH)) + m.dispi(DISPI.Y_OFFSET) * stride;
    assert.ok(start + h * stride <= VRAM_SIZE, 'the visible screen with its offsets fits VRAM');
  }
});

test('std-vga: BAR2: EDID at 0x000, VGA ports at 0x400, DISPI at 0x500, QEMU extension at 0x600', () => {
  const m = vgaMachine();
  placeBars(m);
  const edid = m.readMem(MMIO, 128);
  assert.deepEqual([...edid.subarray(0, 8)], [0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0]);
  assert.equal(edid.reduce((s, v) => s + v, 0) & 0xff, 0, 'EDID checksum');
  const preferredWidth = edid[56] | ((edid[58] >> 4) << 8);
  const preferredHeight = edid[59] | ((edid[61] >> 4) << 8);
  assert.deepEqual([preferredWidth, preferredHeight], [1024, 768]);
  // DISPI registers as 16-bit words at 0x500 + 2 * index (bochs-drm's MMIO path).
  const word = (v: number): number[] => [v & 0xff, v >> 8];
  m.writeMem(MMIO + 0x500 + 2 * DISPI.XRES, word(800));
  m.writeMem(MMIO + 0x500 + 2 * DISPI.YRES, word(600));
  m.writeMem(MMIO + 0x500 + 2 * DISPI.BPP, word(16));
  m.writeMem(MMIO + 0x500 + 2 * DISPI.ENABLE, word(0x41));
  assert.equal(m.dispi(DISPI.XRES), 800, 'the same registers as ports 0x1CE/0x1CF');
  const id = m.readMem(MMIO + 0x500, 2);
  assert.equal(id[0] | (id[1] << 8), 0xb0c5);
  // VGA ports at 0x400 + (port - 0x3C0): the DAC.
  m.writeMem(MMIO + 0x408, [5]);
  m.writeMem(MMIO + 0x409, [0x11]);
  m.writeMem(MMIO + 0x409, [0x22]);
  m.writeMem(MMIO + 0x409, [0x33]);
  m.outb(0x3c7, 5);
  assert.deepEqual([m.inb(0x3c9), m.inb(0x3c9), m.inb(0x3c9)], [0x11, 0x22, 0x33]);
  // QEMU extension: size 8, little-endian framebuffer.
  const qext = m.readMem(MMIO + 0x600, 8);
  assert.deepEqual([...qext], [8, 0, 0, 0, 0x1e, 0x1e, 0x1e, 0x1e]);
  m.writeMem(MMIO + 0x604, [0xbe, 0xbe, 0xbe, 0xbe]);
  assert.equal(m.readMem(MMIO + 0x604, 1)[0], 0xbe);
});

test('std-vga: BAR0 maps VRAM where the guest programs it; refused by KVM, VRAM is served through MMIO', () => {
  const m = vgaMachine(); // real placeDeviceMemory on vmFd -1: KVM "refuses"
  const vram = m.device.vga.regs.vram;
  placeBars(m);
  assert.ok(
    m.placements.some((p) => p.gpa === LFB && !p.ok),
    'placement at the BAR was tried and refused',
  );
  assert.equal(deviceMemoryAddress(m.state.vram), undefined);
  m.writeMem(LFB + 0x1000, [1, 2, 3, 4, 5, 6, 7, 8]);
  assert.deepEqual([...vram.subarray(0x1000, 0x1008)], [1, 2, 3, 4, 5, 6, 7, 8], 'write through the BAR reaches VRAM');
  vram[VRAM_SIZE - 1] = 0x99;
  assert.equal(m.readMem(LFB + VRAM_SIZE - 1, 1)[0], 0x99, 'the last byte reads back');

  const a = vgaMachine({ accept: true });
  const powerOn = a.device.saveState();
  placeBars(a);
  assert.equal(deviceMemoryAddress(a.state.vram), LFB, 'mapped at BAR0');
  const placed = a.device.saveState();
  a.device.restoreState(powerOn);
  assert.equal(deviceMemoryAddress(a.state.vram), undefined, 'reset to power-on: unmapped');
  a.device.restoreState(placed);
  assert.equal(deviceMemoryAddress(a.state.vram), LFB, 'a restored BAR0 maps VRAM again');
  const moved = LFB + 0x0200_0000;
  a.configWrite(BAR0, 4, moved);
  assert.equal(deviceMemoryAddress(a.state.vram), moved, 'follows the BAR');
  assert.deepEqual(
    a.placements.slice(-2).map((p) => p.gpa),
    [undefined, moved],
    'unmapped from the old address before mapped at the new one',
  );
  a.configWrite(0x04, 2, 0); // memory decoding off
  assert.equal(deviceMemoryAddress(a.state.vram), undefined, 'decoding off unmaps it');
  a.configWrite(BAR0, 4, 0xf000_0000); // outside the PCI window: decodes nothing
  a.configWrite(0x04, 2, 2);
  assert.equal(deviceMemoryAddress(a.state.vram), undefined, 'a BAR outside the window is not mapped');
});

test('std-vga: save/restore carries registers, the DISPI mode and VRAM; a foreign snapshot is refused', () => {
  const m = vgaMachine();
  setVgaMode(m, MODE3);
  loadTestFont(m);
  m.writeMem(0xb8000, [0x41, 0x1e]);
  m.outb(0x3c8, 7);
  for (const v of [9, 10, 11]) m.outb(0x3c9, v);
  m.dispi(DISPI.XRES, 640);
  const snapshot = m.device.saveState();
  const json = JSON.stringify(snapshot);
  assert.ok(json.length < 200_000, `snapshot is ${json.length} bytes`);
  const n = vgaMachine();
  n.device.restoreState(JSON.parse(json));
  assert.deepEqual([...n.readMem(0xb8000, 2)], [0x41, 0x1e]);
  n.outb(0x3c7, 7);
  assert.deepEqual([n.inb(0x3c9), n.inb(0x3c9), n.inb(0x3c9)], [9, 10, 11]);
  assert.equal(n.dispi(DISPI.XRES), 640);
  assert.equal(n.device.vga.regs.vram[(0x41 * 32 + 3) * 4 + 2], testGlyphRow(0x41, 3));
  assert.throws(() => n.device.restoreState({ ...snapshot, version: 9 }), DeviceStateError);
  assert.throws(
    () => n.device.restoreState({ ...snapshot, data: { ...snapshot.data, vramDeflated: 'AAAA' } }),
    DeviceStateError,
  );
});

test('std-vga: through the registry and device set (direct boot): BARs placed, VRAM placement tried, ports and window on the buses', () => {
  const spec = validateMachineSpec({
    version: 1,
    cpus: 1,
    memory: 64 << 20,
    boot: { kind: 'kernel', kernel: '/k' },
    devices: [{ kind: 'std-vga' }],
  });
  const shared = createDevices(spec.devices, { vmFd: -1, placeBars: true, deviceMemory: testDeviceMemory });
  const host = { vmFd: -1, serialOutputFd: 1, stop: () => undefined, reset: () => undefined };
  const set = attachDevices(shared, host, GuestMemory.allocateRanges([{ gpa: 0, size: 1 << 20 }]));
  const vga = set.find('std-vga');
  assert.ok(isAttachedStdVga(vga));
  const bar0 = vga.vga.config.barBase(0)!;
  assert.ok(
    bar0 >= PCI_MMIO32_BASE && bar0 < PCI_MMIO32_END && bar0 % VRAM_SIZE === 0,
    `BAR0 at 0x${bar0.toString(16)}`,
  );
  assert.equal(deviceMemoryAddress(vga.vga.state.vram), undefined, 'KVM (vmFd -1) refused the slot: served as MMIO');
  set.mmio.write(bar0 + 8, Uint8Array.of(0x42));
  assert.equal(vga.vga.regs.vram[8], 0x42);
  set.pio.write(0x1ce, 2, DISPI.ID);
  assert.equal(set.pio.read(0x1cf, 2), 0xb0c5, 'DISPI on the port bus');
  set.pio.write(0x3c4, 2, 0x0e04); // chain-4
  set.pio.write(0x3c4, 2, 0x0f02);
  set.pio.write(0x3ce, 2, 0x0506);
  set.mmio.write(0xa0010, Uint8Array.of(0x24));
  assert.equal(vga.vga.regs.vram[0x10], 0x24, 'the legacy window on the MMIO bus');
  const d = describeDevices(shared);
  assert.ok(d.firmwareFiles.some((f) => f.name === 'pci1234,1111.rom'));
  assert.equal(d.legacy.vga, true);
  const display = stdVgaDisplay(vga);
  assert.ok(display && stdVgaDisplay(vga) === display, 'one renderer per attached device');
  assert.equal(stdVgaDisplay(set.devices[0].device), undefined, 'other devices have none');
});
