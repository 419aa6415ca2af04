// Screenshot benchmark (issue 10): what `--screenshot` and the control channel's `screenshot` cost on a
// 1024x768x32 VBE screen: the std VGA's framebuffer (BGRX in VRAM) rendered to RGBA by vga-renderer.ts and
// encoded to PNG by display/png.ts, through screenshotPng(), the function the VMM calls. No VM: the std VGA sits
// on the tests' fake buses (test/support/vga-machine.ts), its VRAM real device memory. The screen is a
// desktop-like picture (gradients, flat windows, text-like glyph noise), since a uniform screen compresses
// unrealistically well; random noise is the worst case. Target: the median ≤ 20 ms. Absolute times drift on a
// shared machine: the bare zlib deflate of the same frame, timed alongside, is the reference for a ratio.
//
// node bench/screenshot.mjs [--runs N] [--json FILE]   (after npm run build)
import { writeFileSync } from 'node:fs';
import { deflateSync } from 'node:zlib';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { DISPI } from '../dist/src/devices/display/std-vga.js';
import { screenshotPng, stdVgaDisplay } from '../dist/src/devices/display/vga-renderer.js';
import { decodePng, encodePng } from '../dist/src/display/png.js';
import { vgaMachine } from '../dist/test/support/vga-machine.js';

const { values: args } = parseArgs({
  options: { runs: { type: 'string', default: '20' }, json: { type: 'string' } },
});
const RUNS = Number(args.runs);
const W = 1024;
const H = 768;
const TARGET_MS = 20;
const LFB = 0xc000_0000;

/** A std VGA in the 1024x768x32 Bochs VBE mode with its framebuffer at LFB, as SeaBIOS's VGA BIOS sets it. */
function vbeMachine() {
  const m = vgaMachine();
  m.configWrite(0x10, 4, LFB);
  m.configWrite(0x04, 2, 2);
  m.inb(0x3da);
  m.outb(0x3c0, 0x20); // palette source: the screen is on
  m.dispi(DISPI.ENABLE, 0);
  m.dispi(DISPI.XRES, W);
  m.dispi(DISPI.YRES, H);
  m.dispi(DISPI.BPP, 32);
  m.dispi(DISPI.ENABLE, 0x41); // enabled, linear framebuffer
  return m;
}

// Deterministic pseudo-random numbers so every run paints the same screen.
function rng(seed) {
  let s = seed >>> 0 || 1;
  return () => (s = (s * 1664525 + 1013904223) >>> 0) / 2 ** 32;
}

/** Paints a desktop into VRAM (BGRX words): a gradient wallpaper, windows with title bars and lines of "text". */
function paintDesktop(vram32) {
  const rand = rng(10);
  const bgrx = (r, g, b) => ((b & 255) | ((g & 255) << 8) | ((r & 255) << 16)) >>> 0;
  for (let y = 0; y < H; y++)
    for (let x = 0; x < W; x++) vram32[y * W + x] = bgrx((x * 255) / W, (y * 255) / H, 160 - ((x + y) >> 4));
  const windows = [
    [40, 40, 560, 420],
    [420, 200, 560, 500],
    [120, 520, 380, 220],
  ];
  for (const [wx, wy, ww, wh] of windows) {
    for (let y = wy; y < wy + wh && y < H; y++) {
      for (let x = wx; x < wx + ww && x < W; x++) {
        const title = y < wy + 24;
        const border = x === wx || x === wx + ww - 1 || y === wy + wh - 1;
        vram32[y * W + x] = border
          ? bgrx(40, 40, 40)
          : title
            ? bgrx(50, 90, 170 + ((x - wx) >> 3))
            : bgrx(245, 245, 240);
      }
    }
    // Lines of text: 8x16 cells, 60% of them glyphs of random dots (anti-aliased grey levels, as fonts are).
    for (let cy = wy + 32; cy + 16 < wy + wh && cy + 16 < H; cy += 18) {
      const lineEnd = wx + 8 + Math.floor(rand() * (ww - 24));
      for (let cx = wx + 8; cx + 8 < lineEnd && cx + 8 < W; cx += 8) {
        if (rand() < 0.15) continue;
        for (let y = 3; y < 14; y++)
          for (let x = 1; x < 7; x++) {
            if (rand() < 0.45) {
              const v = rand() < 0.7 ? 20 : 20 + Math.floor(rand() * 180);
              vram32[(cy + y) * W + cx + x] = bgrx(v, v, v);
            }
          }
      }
    }
  }
}

/** Worst case: random noise, which deflate cannot shrink. */
function paintNoise(vram32) {
  const rand = rng(11);
  for (let i = 0; i < W * H; i++) vram32[i] = (rand() * 2 ** 32) >>> 0;
}

const m = vbeMachine();
const display = stdVgaDisplay(m.device);
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/** Medians of RUNS screenshots of what `paint` put on the screen: render alone, encode alone, screenshotPng(). */
function measure(paint) {
  paint(display.regs.vram32);
  const frame = display.render();
  const check = decodePng(screenshotPng(m.device));
  if (check.width !== W || check.height !== H) throw new Error(`screenshot is ${check.width}x${check.height}`);
  for (let i = 0; i < frame.rgba.length; i++)
    if (check.rgba[i] !== frame.rgba[i]) throw new Error(`screenshot differs from the rendered frame at byte ${i}`);
  for (let i = 0; i < 3; i++) screenshotPng(m.device); // warm-up: JIT
  const samples = { render: [], encode: [], total: [], zlib: [] };
  let bytes = 0;
  for (let r = 0; r < RUNS; r++) {
    let t0 = performance.now();
    const f = display.render();
    samples.render.push(performance.now() - t0);
    t0 = performance.now();
    encodePng(f);
    samples.encode.push(performance.now() - t0);
    t0 = performance.now();
    bytes = screenshotPng(m.device).length;
    samples.total.push(performance.now() - t0);
    t0 = performance.now();
    deflateSync(f.rgba, { level: 1 });
    samples.zlib.push(performance.now() - t0);
  }
  return {
    pngBytes: bytes,
    renderMs: median(samples.render),
    encodeMs: median(samples.encode),
    totalMs: median(samples.total),
    zlibMs: median(samples.zlib),
    totalMinMs: Math.min(...samples.total),
    totalMaxMs: Math.max(...samples.total),
  };
}

const results = { desktop: measure(paintDesktop), 'noise (worst case)': measure(paintNoise) };
const pad = (s, n) => String(s).padStart(n);
console.log(`Screenshot of a ${W}x${H}x32 VBE screen through screenshotPng(), median of ${RUNS} runs`);
console.log(
  `${'screen'.padEnd(20)}${pad('render ms', 10)}${pad('encode ms', 11)}${pad('total ms', 10)}${pad('min–max ms', 14)}` +
    `${pad('PNG bytes', 11)}${pad('of RGBA', 9)}${pad('zlib L1 ms', 12)}${pad('total/zlib', 12)}`,
);
for (const [name, r] of Object.entries(results)) {
  console.log(
    `${name.padEnd(20)}${pad(r.renderMs.toFixed(2), 10)}${pad(r.encodeMs.toFixed(2), 11)}${pad(r.totalMs.toFixed(2), 10)}` +
      `${pad(`${r.totalMinMs.toFixed(1)}–${r.totalMaxMs.toFixed(1)}`, 14)}${pad(r.pngBytes, 11)}` +
      `${pad(((r.pngBytes / (W * H * 4)) * 100).toFixed(1) + '%', 9)}${pad(r.zlibMs.toFixed(2), 12)}${pad((r.totalMs / r.zlibMs).toFixed(2) + 'x', 12)}`,
  );
}
console.log(
  '(zlib L1: deflateSync of the bare RGBA frame at level 1, the same run: the floor of any PNG encoder using zlib;' +
    '\n total/zlib is the machine-independent number)',
);
const d = results.desktop;
console.log('\nTarget (issue 10):');
console.log(
  `  [${d.totalMs <= TARGET_MS ? 'met ' : 'MISS'}] desktop screen, time to PNG ≤ ${TARGET_MS} ms: ${d.totalMs.toFixed(2)} ms (${(d.totalMs / TARGET_MS).toFixed(2)}x the target)`,
);
if (args.json) writeFileSync(args.json, JSON.stringify({ width: W, height: H, runs: RUNS, results }, null, 2));
