// What the std VGA shows (std-vga.ts), as RGBA frames for screenshots and the RFB server (display/source.ts):
// text modes through the font in plane 2 and the attribute/DAC palettes (FreeVGA: attribute controller, CRTC
// cursor and character map select), VGA graphics modes (16-colour planar, 256-colour chain-4 such as mode 13h),
// and the Bochs VBE linear modes (8 bpp through the DAC, 15/16/24/32 bpp direct colour). Geometry comes from the
// registers exactly as QEMU's hw/display/vga.c reads them, so a screen looks the same as under QEMU: mode 13h is
// 640×400 (each pixel doubled both ways), text mode 3 is 720×400.
//
// Blinking is drawn steady (blinking characters always shown, the cursor always on). CGA/Hercules address
// interleaving (CRTC mode bits 0/1), split screens (line compare) and horizontal panning are not rendered.
//
// changes() reads KVM's dirty log of the framebuffer slot (which clears it: exactly one consumer per device
// should call changes(); fan the rectangles out from there) merged with the device's own log of writes that came
// through exits; text mode compares the character cells, cursor, fonts and palette with the previous call.
import { deviceMemoryAddress, readDirtyLog, type DeviceMemoryRegion } from '../../base/device-memory.js';
import type { DisplayFrame, DisplaySource, Rect } from '../../display/source.js';
import { encodePng } from '../../display/png.js';
import type { AttachedDevice } from '../model.js';
import {
  AR_PALETTE_SOURCE,
  currentVbeMode,
  GR05_256_COLOUR,
  GR06_GRAPHICS,
  isAttachedStdVga,
  SR01_8DOTS,
  SR01_DOUBLE_CLOCK,
  SR01_SCREEN_OFF,
  VgaRegisters,
  type StdVgaState,
  type VbeMode,
} from './std-vga.js';

const PAGE = 4096;
/** Code page 437 (the VGA BIOS font) as Unicode: control-code glyphs, ASCII, then the upper half. */
const CP437 = [
  ...'\u0000☺☻♥♦♣♠•◘○◙♂♀♪♫☼►◄↕‼¶§▬↨↑↓→←∟↔▲▼',
  ...Array.from({ length: 95 }, (_, i) => String.fromCharCode(32 + i)),
  ...'⌂ÇüéâäàåçêëèïîìÄÅÉæÆôöòûùÿÖÜ¢£¥₧ƒáíóúñÑªº¿⌐¬½¼¡«»░▒▓│┤╡╢╖╕╣║╗╝╜╛┐└┴┬├─┼╞╟╚╔╩╦╠═╬╧╨╤╥╙╘╒╓╫╪┘┌█▄▌▐▀',
  ...'αßΓπΣσµτΦΘΩδ∞φε∩≡±≥≤⌠⌡÷≈°∙·√ⁿ²■\u00a0',
].map((c) => (c === '\u0000' || c === '\u00a0' ? ' ' : c));
/** The largest text screen rendered (CRTC values allow 256 × 2048 cells; no real mode comes near). */
const MAX_TEXT_CELLS = 256 * 256;

interface TextLayout {
  readonly kind: 'text';
  readonly width: number;
  readonly height: number;
  readonly cols: number;
  readonly rows: number;
  readonly cellWidth: number; // 8 or 9 dots
  readonly cellHeight: number;
  readonly wide: boolean; // dot clock halved: every dot drawn twice
  readonly start: number; // character address of the top-left cell
  readonly stride: number; // characters from one row to the next
}

interface VgaGraphicsLayout {
  readonly kind: 'planar' | 'chain4';
  readonly width: number;
  readonly height: number;
  readonly start: number; // VRAM byte of the first line
  readonly stride: number; // VRAM bytes from one source line to the next
  readonly scan: number; // displayed lines per source line
  readonly wide: boolean; // planar: every dot drawn twice
}

interface VbeLayout {
  readonly kind: 'vbe';
  readonly width: number;
  readonly height: number;
  readonly mode: VbeMode;
}

interface BlankLayout {
  readonly kind: 'blank';
  readonly width: number;
  readonly height: number;
}

type Layout = TextLayout | VgaGraphicsLayout | VbeLayout | BlankLayout;

/** A DisplaySource over one std VGA; usable on any thread of the VMM process. */
export class VgaRenderer implements DisplaySource {
  readonly regs: VgaRegisters;
  private lastKey = '';
  private lastCells: Uint16Array = new Uint16Array(0);
  private lastCursor = '';
  private lastFonts = new Uint8Array(0);
  private lastPalette = '';

  /** `readLog`: readDirtyLog, or a test's fake. */
  constructor(
    state: StdVgaState,
    private readonly vmFd: number,
    private readonly readLog: (vmFd: number, region: DeviceMemoryRegion) => Uint8Array = readDirtyLog,
  ) {
    this.regs = new VgaRegisters(state);
  }

  size(): { width: number; height: number } {
    const l = this.layout();
    return { width: l.width, height: l.height };
  }

  /** What the registers say is on the screen now. */
  layout(): Layout {
    const r = this.regs;
    const underlying = this.modeLayout();
    if (!(r.arIndex & AR_PALETTE_SOURCE) || r.sr(1) & SR01_SCREEN_OFF)
      return { kind: 'blank', width: underlying.width, height: underlying.height };
    return underlying;
  }

  private modeLayout(): Layout {
    const r = this.regs;
    if (r.vbeEnabled) {
      const mode = currentVbeMode(r);
      // 4 bpp VBE modes are planar; they are not rendered (no guest driver we target uses them).
      if (mode.bpp === 4) return { kind: 'blank', width: mode.width, height: mode.height };
      return { kind: 'vbe', width: mode.width, height: mode.height, mode };
    }
    const lines = (r.cr(0x12) | ((r.cr(0x07) & 0x02) << 7) | ((r.cr(0x07) & 0x40) << 3)) + 1; // vertical display end + 1
    const charClocks = r.cr(0x01) + 1;
    const start = (r.cr(0x0c) << 8) | r.cr(0x0d);
    const stride = r.cr(0x13) * 8; // VRAM bytes per line (4 per character / per plane byte)
    if (!(r.gr(6) & GR06_GRAPHICS)) {
      const cellHeight = (r.cr(0x09) & 0x1f) + 1;
      const cellWidth = r.sr(1) & SR01_8DOTS ? 8 : 9;
      const wide = (r.sr(1) & SR01_DOUBLE_CLOCK) !== 0;
      const cols = charClocks;
      const rows = Math.max(1, Math.min(Math.floor(lines / cellHeight), Math.floor(MAX_TEXT_CELLS / cols)));
      return {
        kind: 'text',
        width: cols * cellWidth * (wide ? 2 : 1),
        height: rows * cellHeight,
        cols,
        rows,
        cellWidth,
        cellHeight,
        wide,
        start,
        stride: stride / 4 || cols,
      };
    }
    const doubleScan = r.cr(0x09) >> 7;
    const scan = ((r.cr(0x09) & 0x1f) + 1) << doubleScan;
    const chain4 = (r.gr(5) & GR05_256_COLOUR) !== 0;
    const wide = !chain4 && (r.sr(1) & SR01_DOUBLE_CLOCK) !== 0;
    return {
      kind: chain4 ? 'chain4' : 'planar',
      width: charClocks * 8 * (wide ? 2 : 1),
      height: lines,
      start: start * 4,
      stride,
      scan,
      wide,
    };
  }

  /**
   * A text-mode screen as text, one line per row (trailing blanks dropped), characters through code page 437;
   * undefined in graphics modes. What scripts and tests read instead of pixels.
   */
  screenText(): string | undefined {
    const l = this.layout();
    if (l.kind !== 'text') return undefined;
    const lines: string[] = [];
    for (let row = 0; row < l.rows; row++) {
      let line = '';
      for (let col = 0; col < l.cols; col++) line += CP437[this.cell(l, row, col) & 0xff];
      lines.push(line.trimEnd());
    }
    return lines.join('\n') + '\n';
  }

  render(): DisplayFrame {
    const l = this.layout();
    const rgba = new Uint8Array(l.width * l.height * 4);
    const frame = { width: l.width, height: l.height, rgba };
    const out32 = new Uint32Array(rgba.buffer);
    if (l.kind === 'blank') out32.fill(0xff000000);
    else if (l.kind === 'text') this.renderText(l, out32);
    else if (l.kind === 'vbe') this.renderVbe(l.mode, out32);
    else this.renderVgaGraphics(l, out32);
    return frame;
  }

  // ---- palettes ----------------------------------------------------------------------------------------------

  /** DAC entry as an RGBA word (little-endian: R in the low byte), through the pixel mask. */
  private dacWord(index: number): number {
    const [red, green, blue] = this.regs.dacRgb(index & this.regs.dacMask);
    return (red | (green << 8) | (blue << 16) | 0xff000000) >>> 0;
  }

  /** The 16 attribute-controller colours (text and planar modes) as RGBA words (FreeVGA: attribute registers). */
  private palette16(): Uint32Array {
    const r = this.regs;
    const mode = r.ar(0x10);
    const select = r.ar(0x14);
    const out = new Uint32Array(16);
    for (let i = 0; i < 16; i++) {
      let v = r.ar(i) & 0x3f;
      if (mode & 0x80) v = (v & 0x0f) | ((select & 0x03) << 4); // P5/P4 from the colour select register
      v |= (select & 0x0c) << 4; // P7/P6 always from it
      out[i] = this.dacWord(v);
    }
    return out;
  }

  private palette256(): Uint32Array {
    const out = new Uint32Array(256);
    for (let i = 0; i < 256; i++) out[i] = this.dacWord(i);
    return out;
  }

  // ---- text --------------------------------------------------------------------------------------------------

  /** Plane-2 offsets of the two fonts: [attribute bit 3 clear (map B), set (map A)] (FreeVGA: SR03). */
  private fontBases(): [number, number] {
    const v = this.regs.sr(3);
    const mapB = ((v >> 4) & 1) | ((v << 1) & 6);
    const mapA = ((v >> 5) & 1) | ((v >> 1) & 6);
    return [mapB * 8192, mapA * 8192];
  }

  /** Character and attribute of cell `i` (row-major in the visible screen). */
  private cell(l: TextLayout, row: number, col: number): number {
    const at = ((l.start + row * l.stride + col) & 0xffff) * 4;
    return this.regs.vram[at] | (this.regs.vram[at + 1] << 8);
  }

  private cursor(l: TextLayout): { row: number; col: number; first: number; last: number } | undefined {
    const r = this.regs;
    if (r.cr(0x0a) & 0x20) return undefined;
    const first = r.cr(0x0a) & 0x1f;
    const last = Math.min(r.cr(0x0b) & 0x1f, l.cellHeight - 1);
    if (first > last) return undefined;
    const offset = ((r.cr(0x0e) << 8) | r.cr(0x0f)) - l.start;
    if (offset < 0) return undefined;
    const row = Math.floor(offset / l.stride);
    const col = offset % l.stride;
    if (row >= l.rows || col >= l.cols) return undefined;
    return { row, col, first, last };
  }

  private renderText(l: TextLayout, out: Uint32Array): void {
    const palette = this.palette16();
    const vram = this.regs.vram;
    const fonts = this.fontBases();
    const mode = this.regs.ar(0x10);
    const blinkEnabled = (mode & 0x08) !== 0;
    const lineGraphics = (mode & 0x04) !== 0;
    const dot = l.wide ? 2 : 1;
    const cursor = this.cursor(l);
    for (let row = 0; row < l.rows; row++) {
      for (let col = 0; col < l.cols; col++) {
        const cell = this.cell(l, row, col);
        const ch = cell & 0xff;
        const attr = cell >> 8;
        const fg = palette[attr & 0x0f];
        const bg = palette[blinkEnabled ? (attr >> 4) & 0x07 : attr >> 4];
        const glyph = fonts[(attr >> 3) & 1] + ch * 32;
        // Line graphics: FreeVGA says characters C0h-DFh; QEMU repeats the eighth dot from B0h (the shades
        // differ), and screenshots follow QEMU so they compare equal to its screendump.
        const ninth = l.cellWidth === 9 && lineGraphics && ch >= 0xb0 && ch <= 0xdf;
        const x0 = col * l.cellWidth * dot;
        for (let y = 0; y < l.cellHeight; y++) {
          let bits = vram[((glyph + y) << 2) | 2];
          const cursorLine =
            cursor !== undefined && cursor.row === row && cursor.col === col && y >= cursor.first && y <= cursor.last;
          if (cursorLine) bits = 0xff;
          // The ninth dot repeats the eighth for line-drawing characters (and the cursor), else it is background.
          const ninthDot = cursorLine || ninth ? bits & 1 : 0;
          let at = (row * l.cellHeight + y) * l.width + x0;
          for (let x = 0; x < l.cellWidth; x++) {
            const on = x < 8 ? (bits >> (7 - x)) & 1 : ninthDot;
            const c = on ? fg : bg;
            out[at++] = c;
            if (dot === 2) out[at++] = c;
          }
        }
      }
    }
  }

  // ---- VGA graphics modes ------------------------------------------------------------------------------------

  private renderVgaGraphics(l: VgaGraphicsLayout, out: Uint32Array): void {
    const vram = this.regs.vram;
    const palette = l.kind === 'chain4' ? this.palette256() : this.palette16();
    const sourceBytes = l.kind === 'chain4' ? l.width / 2 : (l.width / (l.wide ? 2 : 1) / 8) * 4;
    for (let y = 0; y < l.height; y++) {
      const line = Math.floor(y / l.scan);
      const addr = l.start + line * l.stride;
      let at = y * l.width;
      if (addr + sourceBytes > vram.length) {
        out.fill(0xff000000, at, at + l.width);
        continue;
      }
      if (l.kind === 'chain4') {
        // Each 8-bit pixel spans two dots (QEMU shows mode 13h as 640 wide).
        for (let x = 0; x < l.width / 2; x++) {
          const c = palette[vram[addr + x]];
          out[at++] = c;
          out[at++] = c;
        }
        continue;
      }
      const pixels = l.width / (l.wide ? 2 : 1);
      for (let x = 0; x < pixels; x++) {
        const byte = addr + (x >> 3) * 4;
        const bit = 7 - (x & 7);
        const colour =
          ((vram[byte] >> bit) & 1) |
          (((vram[byte + 1] >> bit) & 1) << 1) |
          (((vram[byte + 2] >> bit) & 1) << 2) |
          (((vram[byte + 3] >> bit) & 1) << 3);
        const c = palette[colour & this.regs.ar(0x12)];
        out[at++] = c;
        if (l.wide) out[at++] = c;
      }
    }
  }

  // ---- VBE linear modes --------------------------------------------------------------------------------------

  private renderVbe(m: VbeMode, out: Uint32Array): void {
    const vram = this.regs.vram;
    const bytes = (m.bpp + 7) >> 3;
    const palette = m.bpp === 8 ? this.palette256() : undefined;
    const vram32 = this.regs.vram32;
    for (let y = 0; y < m.height; y++) {
      const row = m.start + y * m.stride;
      let at = y * m.width;
      if (row + m.width * bytes > vram.length) {
        out.fill(0xff000000, at, at + m.width);
        continue;
      }
      switch (m.bpp) {
        case 32:
          if ((row & 3) === 0) {
            let w = row >>> 2;
            for (let x = 0; x < m.width; x++) {
              const p = vram32[w++];
              out[at++] = (((p >>> 16) & 0xff) | (p & 0xff00) | ((p & 0xff) << 16) | 0xff000000) >>> 0;
            }
          } else {
            for (let x = 0, s = row; x < m.width; x++, s += 4)
              out[at++] = (vram[s + 2] | (vram[s + 1] << 8) | (vram[s] << 16) | 0xff000000) >>> 0;
          }
          break;
        case 24:
          for (let x = 0, s = row; x < m.width; x++, s += 3)
            out[at++] = (vram[s + 2] | (vram[s + 1] << 8) | (vram[s] << 16) | 0xff000000) >>> 0;
          break;
        case 16:
          for (let x = 0, s = row; x < m.width; x++, s += 2) {
            const p = vram[s] | (vram[s + 1] << 8);
            out[at++] = rgbWord(expand5(p >> 11), expand6((p >> 5) & 0x3f), expand5(p & 0x1f));
          }
          break;
        case 15:
          for (let x = 0, s = row; x < m.width; x++, s += 2) {
            const p = vram[s] | (vram[s + 1] << 8);
            out[at++] = rgbWord(expand5((p >> 10) & 0x1f), expand5((p >> 5) & 0x1f), expand5(p & 0x1f));
          }
          break;
        default:
          for (let x = 0; x < m.width; x++) out[at++] = palette![vram[row + x]];
      }
    }
  }

  // ---- changes -----------------------------------------------------------------------------------------------

  changes(): readonly Rect[] {
    const l = this.layout();
    const dirty = this.dirtyPages();
    const key = JSON.stringify(l);
    const full: Rect[] = [{ x: 0, y: 0, width: l.width, height: l.height }];
    const palette = this.paletteKey(l);
    const modeChanged = key !== this.lastKey || palette !== this.lastPalette;
    this.lastKey = key;
    this.lastPalette = palette;
    if (l.kind === 'text') {
      const textChanges = this.textChanges(l, modeChanged);
      return modeChanged ? full : textChanges;
    }
    this.lastCells = new Uint16Array(0);
    if (modeChanged) return full;
    if (l.kind === 'blank') return [];
    const [start, stride, lines, scan] =
      l.kind === 'vbe'
        ? [l.mode.start, l.mode.stride, l.height, 1]
        : [l.start, l.stride, Math.ceil(l.height / l.scan), l.scan];
    return this.rowsFromPages(dirty, start, stride, lines, scan, l.width, l.height);
  }

  /** Palette state that changes how the current mode's pixels look. */
  private paletteKey(l: Layout): string {
    if (l.kind === 'blank' || (l.kind === 'vbe' && l.mode.bpp !== 8)) return '';
    const words = l.kind === 'text' || l.kind === 'planar' ? this.palette16() : this.palette256();
    return Buffer.from(words.buffer).toString('base64') + (l.kind === 'text' ? this.regs.ar(0x10) : '');
  }

  /** KVM's log (when VRAM is mapped: while it is not, every guest write reaches the device's own log) and ours. */
  private dirtyPages(): Uint8Array {
    const soft = this.regs.takeSoftDirty();
    const region = this.regs.state.vram;
    if (deviceMemoryAddress(region) === undefined) return soft;
    const kvm = this.readLog(this.vmFd, region);
    for (let i = 0; i < soft.length && i < kvm.length; i++) soft[i] |= kvm[i];
    return soft;
  }

  /** Full-width rectangles covering the source lines that lie on dirty pages. */
  private rowsFromPages(
    dirty: Uint8Array,
    start: number,
    stride: number,
    lines: number,
    scan: number,
    width: number,
    height: number,
  ): Rect[] {
    const rects: Rect[] = [];
    const lineDirty = (line: number): boolean => {
      const first = start + line * stride;
      const last = first + Math.max(1, stride) - 1;
      for (let p = Math.floor(first / PAGE); p <= Math.floor(last / PAGE); p++)
        if (p >>> 3 < dirty.length && dirty[p >>> 3] & (1 << (p & 7))) return true;
      return false;
    };
    let runStart = -1;
    for (let line = 0; line <= lines; line++) {
      const d = line < lines && lineDirty(line);
      if (d && runStart < 0) runStart = line;
      if (!d && runStart >= 0) {
        const y = runStart * scan;
        rects.push({ x: 0, y, width, height: Math.min(height, line * scan) - y });
        runStart = -1;
      }
    }
    return rects;
  }

  /** Text mode: cells whose character or attribute changed, the old and new cursor cells; fonts changed: all. */
  private textChanges(l: TextLayout, modeChanged: boolean): Rect[] {
    const count = l.rows * l.cols;
    const cells = new Uint16Array(count);
    for (let row = 0; row < l.rows; row++)
      for (let col = 0; col < l.cols; col++) cells[row * l.cols + col] = this.cell(l, row, col);
    const [fontB, fontA] = this.fontBases();
    const fonts = new Uint8Array(2 * 8192);
    const vram = this.regs.vram;
    for (let i = 0; i < 8192; i++) {
      fonts[i] = vram[((fontB + i) << 2) | 2];
      fonts[8192 + i] = vram[((fontA + i) << 2) | 2];
    }
    const c = this.cursor(l);
    const cursor = c ? `${c.row},${c.col},${c.first},${c.last}` : '';
    const previous = this.lastCells;
    const previousCursor = this.lastCursor;
    const fontsChanged = !equalBytes(fonts, this.lastFonts);
    this.lastCells = cells;
    this.lastCursor = cursor;
    this.lastFonts = fonts;
    const cellW = l.cellWidth * (l.wide ? 2 : 1);
    if (modeChanged || fontsChanged || previous.length !== count)
      return [{ x: 0, y: 0, width: l.width, height: l.height }];
    const rects: Rect[] = [];
    for (let row = 0; row < l.rows; row++) {
      let lo = -1;
      let hi = -1;
      for (let col = 0; col < l.cols; col++) {
        if (cells[row * l.cols + col] !== previous[row * l.cols + col]) {
          if (lo < 0) lo = col;
          hi = col;
        }
      }
      if (lo >= 0)
        rects.push({ x: lo * cellW, y: row * l.cellHeight, width: (hi - lo + 1) * cellW, height: l.cellHeight });
    }
    if (cursor !== previousCursor) {
      for (const text of [previousCursor, cursor]) {
        if (!text) continue;
        const [row, col] = text.split(',').map(Number);
        rects.push({ x: col * cellW, y: row * l.cellHeight, width: cellW, height: l.cellHeight });
      }
    }
    return rects;
  }
}

const expand5 = (v: number): number => (v << 3) | (v >> 2);
const expand6 = (v: number): number => (v << 2) | (v >> 4);
const rgbWord = (r: number, g: number, b: number): number => (r | (g << 8) | (b << 16) | 0xff000000) >>> 0;

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

const renderers = new WeakMap<AttachedDevice, VgaRenderer>();

/**
 * The DisplaySource of an attached std VGA (from attachDevices' set: `set.find('std-vga')`), one per attached
 * device and thread, so its changes() has one consumer. Undefined for any other device.
 */
export function stdVgaDisplay(device: AttachedDevice | undefined): VgaRenderer | undefined {
  if (!isAttachedStdVga(device)) return undefined;
  let r = renderers.get(device);
  if (!r) {
    r = new VgaRenderer(device.vga.state, device.vmFd);
    renderers.set(device, r);
  }
  return r;
}

/** The screen of an attached std VGA as a PNG file (render() only: the dirty log is left to changes()). */
export function screenshotPng(device: AttachedDevice | undefined): Buffer {
  const display = stdVgaDisplay(device);
  if (!display) throw new TypeError('screenshot: the machine has no std-vga display');
  return encodePng(display.render());
}
