// What the std VGA shows: a text screen set up as the VGA BIOS does (mode 3, font in plane 2) rendered cell by
// cell against the font bits and the attribute/DAC colours, the cursor, the ninth dot; VBE linear modes through
// DISPI with bytes written through BAR0 rendered exactly; mode 13h; changes() after writes, cursor moves and
// mode changes; hostile registers never throwing; the screenshot PNG decoding to the rendered frame.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DISPI, VRAM_SIZE } from '../../src/devices/display/std-vga.js';
import { screenshotPng, stdVgaDisplay, VgaRenderer } from '../../src/devices/display/vga-renderer.js';
import { decodePng } from '../../src/display/png.js';
import type { DisplayFrame, Rect } from '../../src/display/source.js';
import {
  egaPalette,
  loadTestFont,
  MODE3,
  setVgaMode,
  testGlyphRow,
  vgaMachine,
  type VgaMachine,
} from '../support/vga-machine.js';
import { Rng } from '../support/rng.js';

/** Uniform in [0, 1) from the shared seeded generator. */
const seededRandom = (seed: number): (() => number) => {
  const rng = new Rng(seed);
  return () => rng.u32() / 2 ** 32;
};

const LFB = 0xc000_0000;
const VRAM_PAGES = VRAM_SIZE / 4096;

function pixel(f: DisplayFrame, x: number, y: number): [number, number, number, number] {
  const at = (y * f.width + x) * 4;
  return [f.rgba[at], f.rgba[at + 1], f.rgba[at + 2], f.rgba[at + 3]];
}

/** The EGA palette's 6-bit entry as the 8-bit colour on screen (QEMU's scaling: 0x2A → 0xA8, 0x3F → 0xFF). */
function ega(i: number): [number, number, number, number] {
  const [r, g, b] = egaPalette(i).map((v) => (v << 2) | ((v & 1) * 3));
  return [r, g, b, 255];
}

function textScreen(): { m: VgaMachine; r: VgaRenderer } {
  const m = vgaMachine();
  setVgaMode(m, MODE3);
  loadTestFont(m);
  return { m, r: stdVgaDisplay(m.device)! };
}

/** Asserts cell (row, col) shows glyph `ch` in attribute colours fg/bg (EGA indices through mode 3's AR). */
function assertCell(f: DisplayFrame, row: number, col: number, ch: number, fg: number, bg: number): void {
  for (let y = 0; y < 16; y++) {
    const bits = testGlyphRow(ch, y);
    for (let x = 0; x < 9; x++) {
      const on = x < 8 ? (bits >> (7 - x)) & 1 : 0;
      assert.deepEqual(pixel(f, col * 9 + x, row * 16 + y), ega(on ? fg : bg), `cell ${row},${col} dot ${x},${y}`);
    }
  }
}

test('vga-renderer: text mode 3 renders 720x400, each cell from the font in plane 2 through the attribute palette and DAC', () => {
  const { m, r } = textScreen();
  m.outw(0x3d4, 0x200a); // cursor off for now
  m.writeMem(0xb8000, [0x48, 0x1f, 0x69, 0x1f]); // white on blue
  m.writeMem(0xb8000 + 160 * 24 + 158, [0x41, 0x4e]); // yellow on red, bottom-right
  assert.deepEqual(r.size(), { width: 720, height: 400 });
  const f = r.render();
  assert.equal(f.rgba.length, 720 * 400 * 4);
  // Mode 3's attribute registers map colour 0xF to DAC 0x3F (white), 1 to 1 (blue), 0xE to 0x3E, 4 to 4.
  assertCell(f, 0, 0, 0x48, 0x3f, 0x01);
  assertCell(f, 0, 1, 0x69, 0x3f, 0x01);
  assertCell(f, 24, 79, 0x41, 0x3e, 0x04);
  assertCell(f, 10, 10, 0x00, 0x00, 0x00);
});

test('vga-renderer: the ninth dot repeats the eighth for line-drawing characters; 8-dot mode is 640 wide', () => {
  const { m, r } = textScreen();
  m.outw(0x3d4, 0x200a);
  m.writeMem(0xb8000, [0xc4, 0x07, 0x41, 0x07, 0xb1, 0x07, 0xaf, 0x07]);
  const f = r.render();
  let repeated = 0;
  for (let y = 0; y < 16; y++) {
    for (const [col, ch] of [
      [0, 0xc4],
      [2, 0xb1], // QEMU's range starts at B0h
    ]) {
      const want = testGlyphRow(ch, y) & 1 ? ega(0x07) : ega(0);
      if (testGlyphRow(ch, y) & 1) repeated++;
      assert.deepEqual(pixel(f, col * 9 + 8, y), want, `line graphics ${ch.toString(16)}: ninth dot, row ${y}`);
    }
    assert.deepEqual(pixel(f, 17, y), ega(0), 'ordinary characters have a background ninth dot');
    assert.deepEqual(pixel(f, 35, y), ega(0), 'AFh is no line-graphics character');
  }
  assert.ok(repeated > 4, 'the test font has eighth dots to repeat');
  m.inb(0x3da);
  m.outb(0x3c0, 0x30); // mode control, palette source kept on
  m.outb(0x3c0, 0x08); // line graphics off
  for (let y = 0; y < 16; y++) assert.deepEqual(pixel(r.render(), 8, y), ega(0), 'line graphics disabled');
  m.outw(0x3c4, 0x0101); // 8-dot characters
  assert.deepEqual(r.size(), { width: 640, height: 400 });
  assertCellWidth8(r.render(), 1, 0x41);
});

function assertCellWidth8(f: DisplayFrame, col: number, ch: number): void {
  for (let y = 0; y < 16; y++)
    for (let x = 0; x < 8; x++)
      assert.deepEqual(pixel(f, col * 8 + x, y), (testGlyphRow(ch, y) >> (7 - x)) & 1 ? ega(7) : ega(0));
}

test('vga-renderer: the cursor covers its start..end scan lines of the cell at the CRTC location', () => {
  const { m, r } = textScreen();
  m.writeMem(0xb8000 + 2 * 83, [0x20, 0x0a]); // row 1, col 3: a space, light green on black
  m.outw(0x3d4, 0x0d0a); // cursor start 13
  m.outw(0x3d4, 0x0e0b); // cursor end 14
  m.outw(0x3d4, 0x000e);
  m.outw(0x3d4, 0x530f); // location 83
  const f = r.render();
  const space = (y: number, x: number): boolean => ((testGlyphRow(0x20, y) >> (7 - x)) & 1) === 1;
  for (let y = 0; y < 16; y++)
    for (let x = 0; x < 9; x++) {
      const cursor = y === 13 || y === 14;
      const want = cursor || (x < 8 && space(y, x)) ? ega(0x3a) : ega(0);
      assert.deepEqual(pixel(f, 3 * 9 + x, 16 + y), want, `cursor cell dot ${x},${y}`);
    }
  m.outw(0x3d4, 0x2d0a); // disabled
  const off = r.render();
  for (let x = 0; x < 9; x++)
    assert.deepEqual(pixel(off, 27 + x, 16 + 13), x < 8 && space(13, x) ? ega(0x3a) : ega(0), 'no cursor');
});

test('vga-renderer: a font in another character map is used when the map select points there', () => {
  const { m, r } = textScreen();
  m.outw(0x3d4, 0x200a);
  // Map 1 lives at plane-2 offset 16 KiB; write a solid glyph for 'A' there.
  for (const w of [0x0402, 0x0704]) m.outw(0x3c4, w);
  for (const w of [0x0204, 0x0005, 0x0406]) m.outw(0x3ce, w);
  for (let y = 0; y < 16; y++) m.writeMem(0xa0000 + 0x4000 + 0x41 * 32 + y, [0xff]);
  for (const w of [0x0302, 0x0304]) m.outw(0x3c4, w);
  for (const w of [0x0004, 0x1005, 0x0e06]) m.outw(0x3ce, w);
  m.writeMem(0xb8000, [0x41, 0x07]);
  assert.deepEqual(pixel(r.render(), 0, 0), (testGlyphRow(0x41, 0) >> 7) & 1 ? ega(7) : ega(0));
  m.outw(0x3c4, 0x0503); // maps A and B = 1
  const f = r.render();
  for (let x = 0; x < 8; x++) assert.deepEqual(pixel(f, x, 5), ega(7), 'solid glyph from map 1');
});

test('vga-renderer: changes() reports the whole screen first, then changed cells, cursor moves, palette changes', () => {
  const { m, r } = textScreen();
  m.outw(0x3d4, 0x0e0a);
  m.outw(0x3d4, 0x0f0b);
  m.outw(0x3d4, 0x000f);
  assert.deepEqual(r.changes(), [{ x: 0, y: 0, width: 720, height: 400 }]);
  assert.deepEqual(r.changes(), [], 'nothing changed');
  m.writeMem(0xb8000 + 160 * 2 + 10, [0x5a, 0x07]);
  assert.deepEqual(r.changes(), [{ x: 45, y: 32, width: 9, height: 16 }]);
  m.outw(0x3d4, 0x020f); // cursor from cell 0 to cell 2
  assert.deepEqual(
    sortRects(r.changes()),
    sortRects([
      { x: 0, y: 0, width: 9, height: 16 },
      { x: 18, y: 0, width: 9, height: 16 },
    ]),
  );
  m.outb(0x3c8, 0x07);
  for (const v of [0x3f, 0, 0]) m.outb(0x3c9, v);
  assert.deepEqual(r.changes(), [{ x: 0, y: 0, width: 720, height: 400 }], 'a palette change redraws everything');
  m.outw(0x3c4, 0x0101);
  assert.deepEqual(r.changes(), [{ x: 0, y: 0, width: 640, height: 400 }], 'a mode change: the new whole screen');
});

function sortRects(rects: readonly Rect[]): Rect[] {
  return [...rects].sort((a, b) => a.y - b.y || a.x - b.x);
}

/** 1024x768x32 with the LFB, BAR0 placed (KVM refuses it here: accesses arrive as MMIO). */
function vbeScreen(bpp = 32, width = 1024, height = 768): { m: VgaMachine; r: VgaRenderer } {
  const m = vgaMachine();
  m.configWrite(0x10, 4, LFB);
  m.configWrite(0x04, 2, 2);
  m.inb(0x3da);
  m.outb(0x3c0, 0x20);
  m.dispi(DISPI.ENABLE, 0);
  m.dispi(DISPI.XRES, width);
  m.dispi(DISPI.YRES, height);
  m.dispi(DISPI.BPP, bpp);
  m.dispi(DISPI.ENABLE, 0x41);
  return { m, r: new VgaRenderer(m.state, -1) };
}

test('vga-renderer: a DISPI 1024x768x32 mode renders the framebuffer bytes exactly (BGRX → RGBA)', () => {
  const { m, r } = vbeScreen();
  assert.deepEqual(r.size(), { width: 1024, height: 768 });
  const rand = seededRandom(7);
  const points: [number, number, number, number, number][] = [];
  for (let i = 0; i < 200; i++) {
    const x = Math.floor(rand() * 1024);
    const y = Math.floor(rand() * 768);
    const [cr, cg, cb] = [rand() * 256, rand() * 256, rand() * 256].map(Math.floor);
    m.writeMem(LFB + (y * 1024 + x) * 4, [cb, cg, cr, 0]);
    points.push([x, y, cr, cg, cb]);
  }
  const f = r.render();
  const last = new Map(points.map(([x, y, ...c]) => [`${x},${y}`, c]));
  for (const [key, [cr, cg, cb]] of last) {
    const [x, y] = key.split(',').map(Number);
    assert.deepEqual(pixel(f, x, y), [cr, cg, cb, 255], `pixel ${key}`);
  }
  let lit = 0;
  for (let i = 0; i < f.rgba.length; i += 4) if (f.rgba[i] | f.rgba[i + 1] | f.rgba[i + 2]) lit++;
  assert.ok(lit <= last.size, 'nothing but the written pixels is lit');
  // Panning: Y_OFFSET 10 shows line 10 at the top.
  m.writeMem(LFB + 10 * 4096 + 4 * 5, [1, 2, 3, 0]);
  m.dispi(DISPI.Y_OFFSET, 10);
  assert.deepEqual(pixel(r.render(), 5, 0), [3, 2, 1, 255]);
});

test('vga-renderer: 8 bpp through the DAC (6- and 8-bit), 15, 16 and 24 bpp', () => {
  {
    const { m, r } = vbeScreen(8, 64, 4);
    m.outb(0x3c8, 9);
    for (const v of [0x3f, 0x20, 0x01]) m.outb(0x3c9, v);
    m.writeMem(LFB + 64 + 3, [9]);
    assert.deepEqual(pixel(r.render(), 3, 1), [0xff, 0x80, 0x07, 255]);
    m.dispi(DISPI.ENABLE, 0x41 | 0x80 | 0x20); // 8-bit DAC (already enabled: no clear)
    m.outb(0x3c8, 9);
    for (const v of [0xf0, 0x80, 0x10]) m.outb(0x3c9, v);
    assert.deepEqual(pixel(r.render(), 3, 1), [0xf0, 0x80, 0x10, 255]);
  }
  {
    const { m, r } = vbeScreen(16, 64, 4);
    m.writeMem(LFB + 2 * 5, [0x1f & 0xff, 0xf8]); // 0xF81F: red 31, green 0, blue 31
    assert.deepEqual(pixel(r.render(), 5, 0), [0xff, 0, 0xff, 255]);
  }
  {
    const { m, r } = vbeScreen(15, 64, 4);
    m.writeMem(LFB + 128 + 2, [0xe0, 0x03]); // 0x03E0: green 31
    assert.deepEqual(pixel(r.render(), 1, 1), [0, 0xff, 0, 255]);
  }
  {
    const { m, r } = vbeScreen(24, 64, 4);
    m.writeMem(LFB + 3 * 7, [0x10, 0x20, 0x30]);
    assert.deepEqual(pixel(r.render(), 7, 0), [0x30, 0x20, 0x10, 255]);
  }
});

test('vga-renderer: graphics changes() follow the written pages', () => {
  const { m, r } = vbeScreen();
  assert.deepEqual(r.changes(), [{ x: 0, y: 0, width: 1024, height: 768 }]);
  assert.deepEqual(r.changes(), []);
  m.writeMem(LFB + 100 * 4096 + 8, [1, 1, 1, 1]); // one line is one 4 KiB page at 1024x32bpp
  m.writeMem(LFB + 300 * 4096, [1]);
  m.writeMem(LFB + 301 * 4096, [1]);
  assert.deepEqual(r.changes(), [
    { x: 0, y: 100, width: 1024, height: 1 },
    { x: 0, y: 300, width: 1024, height: 2 },
  ]);
  m.dispi(DISPI.ENABLE, 0);
  m.dispi(DISPI.XRES, 800);
  m.dispi(DISPI.YRES, 600);
  m.dispi(DISPI.ENABLE, 0x41);
  assert.deepEqual(r.changes(), [{ x: 0, y: 0, width: 800, height: 600 }]);
});

test('vga-renderer: mode 13h (320x200 chain-4) shows 640x400 with every pixel doubled', () => {
  const m = vgaMachine();
  const mode13 = {
    misc: 0x63,
    sequencer: [0x03, 0x01, 0x0f, 0x00, 0x0e],
    crtc: [
      0x5f, 0x4f, 0x50, 0x82, 0x54, 0x80, 0xbf, 0x1f, 0x00, 0x41, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x9c, 0x8e, 0x8f,
      0x28, 0x40, 0x96, 0xb9, 0xa3, 0xff,
    ],
    attribute: [...Array.from({ length: 16 }, (_, i) => i), 0x41, 0x00, 0x0f, 0x00, 0x00],
    graphics: [0x00, 0x00, 0x00, 0x00, 0x00, 0x40, 0x05, 0x0f, 0xff],
  };
  setVgaMode(m, mode13);
  const r = stdVgaDisplay(m.device)!;
  assert.deepEqual(r.size(), { width: 640, height: 400 });
  m.writeMem(0xa0000 + 320 * 3 + 7, [0x2c]); // DAC 0x2C of the EGA palette
  const f = r.render();
  for (const [x, y] of [
    [14, 6],
    [15, 6],
    [14, 7],
    [15, 7],
  ])
    assert.deepEqual(pixel(f, x, y), ega(0x2c));
  assert.deepEqual(pixel(f, 16, 6), ega(0));
});

test('vga-renderer: blanked while the attribute palette is being written; hostile registers never throw', () => {
  const { m, r } = textScreen();
  m.writeMem(0xb8000, [0xdb, 0x0f]);
  m.inb(0x3da);
  m.outb(0x3c0, 0x00); // palette address source cleared: the screen blanks
  const f = r.render();
  assert.ok(
    f.rgba.every((v, i) => (i % 4 === 3 ? v === 255 : v === 0)),
    'all black',
  );
  const rand = seededRandom(1234);
  const ports = [0x3c0, 0x3c2, 0x3c4, 0x3c5, 0x3c7, 0x3c8, 0x3c9, 0x3ce, 0x3cf, 0x3d4, 0x3d5, 0x3da];
  for (let round = 0; round < 60; round++) {
    for (let i = 0; i < 40; i++) {
      const port = ports[Math.floor(rand() * ports.length)];
      const v = Math.floor(rand() * 256);
      if (port === 0x3da) m.inb(port);
      else m.outb(port, v);
    }
    if (round % 3 === 0) {
      m.dispi(Math.floor(rand() * 12), Math.floor(rand() * 0x10000));
      m.dispi(DISPI.ENABLE, rand() < 0.5 ? 0x41 : 0);
    }
    m.writeMem(0xa0000 + Math.floor(rand() * 0x20000), [Math.floor(rand() * 256)]);
    m.inb(0x3da);
    m.outb(0x3c0, 0x20);
    const size = r.size();
    const frame = r.render();
    assert.equal(frame.rgba.length, size.width * size.height * 4, `round ${round}`);
    assert.ok(size.width > 0 && size.height > 0 && size.width <= 16000 && size.height <= 12000);
    for (const rect of r.changes()) {
      assert.ok(rect.x >= 0 && rect.y >= 0 && rect.x + rect.width <= size.width && rect.y + rect.height <= size.height);
    }
  }
});

test('vga-renderer: screenshotPng of the attached device decodes to the rendered frame', () => {
  const { m } = textScreen();
  m.writeMem(0xb8000, [0x50, 0x1e, 0x61, 0x2f]);
  const png = screenshotPng(m.device);
  const decoded = decodePng(png);
  const frame = stdVgaDisplay(m.device)!.render();
  assert.equal(decoded.width, 720);
  assert.equal(decoded.height, 400);
  assert.ok(Buffer.from(decoded.rgba).equals(Buffer.from(frame.rgba)));
  assert.throws(() => screenshotPng(undefined), /no std-vga/);
});

test('vga-renderer: screenText() reads the text screen (code page 437), undefined in graphics modes', () => {
  const { m, r } = textScreen();
  m.writeMem(
    0xb8000 + 160,
    [...Buffer.from('GNU GRUB')].flatMap((c) => [c, 0x07]),
  );
  m.writeMem(0xb8000 + 320, [0xda, 0x07, 0xc4, 0x07, 0xbf, 0x07]);
  const lines = r.screenText()!.split('\n');
  assert.equal(lines.length, 26, '25 rows, each ending in a newline');
  assert.equal(lines[1], 'GNU GRUB');
  assert.equal(lines[2], '┌─┐');
  m.outw(0x3ce, 0x0506);
  assert.equal(r.screenText(), undefined);
});

test('vga-renderer: with VRAM mapped, changes() reads KVM dirty log pages and merges writes that came through exits', () => {
  const m = vgaMachine({ accept: true });
  m.configWrite(0x10, 4, LFB);
  m.configWrite(0x04, 2, 2);
  m.inb(0x3da);
  m.outb(0x3c0, 0x20);
  m.dispi(DISPI.XRES, 1024);
  m.dispi(DISPI.YRES, 768);
  m.dispi(DISPI.BPP, 32);
  m.dispi(DISPI.ENABLE, 0x41);
  const logs: Uint8Array[] = [];
  let reads = 0;
  const r = new VgaRenderer(m.state, 77, (vmFd, region) => {
    assert.equal(vmFd, 77);
    assert.equal(region.slot, m.state.vram.slot);
    reads++;
    return logs.shift() ?? new Uint8Array(VRAM_PAGES / 8);
  });
  r.changes(); // the whole screen once
  const log = new Uint8Array(VRAM_PAGES / 8);
  log[50 >> 3] |= 1 << (50 & 7); // the guest wrote page 50 directly (line 50 at 4 KiB per line)
  logs.push(log);
  m.device.vga.barWrite(0, 600 * 4096, Uint8Array.of(1)); // and line 600 through an exit
  assert.deepEqual(r.changes(), [
    { x: 0, y: 50, width: 1024, height: 1 },
    { x: 0, y: 600, width: 1024, height: 1 },
  ]);
  assert.ok(reads >= 2, 'KVM log read on each call');
  assert.deepEqual(r.changes(), []);
});

test('vga-renderer: mode 12h (640x480, 16 colours, planar) renders pixels written with write mode 2', () => {
  const m = vgaMachine();
  const mode12 = {
    misc: 0xe3,
    sequencer: [0x03, 0x01, 0x0f, 0x00, 0x06],
    crtc: [
      0x5f, 0x4f, 0x50, 0x82, 0x54, 0x80, 0x0b, 0x3e, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xea, 0x8c, 0xdf,
      0x28, 0x00, 0xe7, 0x04, 0xe3, 0xff,
    ],
    attribute: [
      0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x14, 0x07, 0x38, 0x39, 0x3a, 0x3b, 0x3c, 0x3d, 0x3e, 0x3f, 0x01, 0x00, 0x0f,
      0x00, 0x00,
    ],
    graphics: [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, 0x0f, 0xff],
  };
  setVgaMode(m, mode12);
  const r = stdVgaDisplay(m.device)!;
  assert.deepEqual(r.size(), { width: 640, height: 480 });
  // Pixel (13, 100) in colour 12 (light red): write mode 2, bit mask selects pixel 13 % 8 = 5 of byte 1.
  m.outw(0x3ce, 0x0205);
  m.outw(0x3ce, ((0x80 >> 5) << 8) | 0x08);
  const at = 0xa0000 + 100 * 80 + 1;
  m.readMem(at, 1);
  m.writeMem(at, [12]);
  const f = r.render();
  assert.deepEqual(pixel(f, 13, 100), ega(0x3c));
  assert.deepEqual(pixel(f, 12, 100), ega(0));
  assert.deepEqual(pixel(f, 14, 100), ega(0));
});
