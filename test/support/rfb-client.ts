// A scripted RFB viewer for the RFB server's tests: the handshake, client messages, and decoders for the
// encodings the server sends (Raw, Zlib, ZRLE, pseudo-encodings), written from RFC 6143 independently of
// src/display/rfb so that the two check each other.
import * as net from 'node:net';
import * as zlib from 'node:zlib';
import type { Duplex } from 'node:stream';
import type { DisplayFrame, DisplaySource, InputSink, Rect } from '../../src/display/source.js';

export interface Format {
  bpp: 8 | 16 | 32;
  depth: number;
  bigEndian: boolean;
  redMax: number;
  greenMax: number;
  blueMax: number;
  redShift: number;
  greenShift: number;
  blueShift: number;
}

export const XRGB32: Format = {
  bpp: 32,
  depth: 24,
  bigEndian: false,
  redMax: 255,
  greenMax: 255,
  blueMax: 255,
  redShift: 16,
  greenShift: 8,
  blueShift: 0,
};

export const RGB565_BE: Format = {
  bpp: 16,
  depth: 16,
  bigEndian: true,
  redMax: 31,
  greenMax: 63,
  blueMax: 31,
  redShift: 11,
  greenShift: 5,
  blueShift: 0,
};

/** The pixel value the viewer expects for an RGB colour (rounded scaling, as the RFB server is meant to do). */
export function expectedPixel(f: Format, r: number, g: number, b: number): number {
  const ch = (v: number, max: number, shift: number): number => Math.round((v * max) / 255) * 2 ** shift;
  return ch(r, f.redMax, f.redShift) + ch(g, f.greenMax, f.greenShift) + ch(b, f.blueMax, f.blueShift);
}

/** A screen the test paints; changes() reports exactly the rectangles painted since the previous call. */
export class FakeScreen implements DisplaySource {
  rgba: Uint8Array;
  pending: Rect[] = [];
  changeCalls = 0;
  renderCalls = 0;
  constructor(
    public width: number,
    public height: number,
  ) {
    this.rgba = new Uint8Array(width * height * 4);
    this.pattern(0, 0, width, height, 0);
    this.pending = [];
  }
  size(): { width: number; height: number } {
    return { width: this.width, height: this.height };
  }
  render(): DisplayFrame {
    this.renderCalls++;
    return { width: this.width, height: this.height, rgba: this.rgba.slice() };
  }
  changes(): readonly Rect[] {
    this.changeCalls++;
    const p = this.pending;
    this.pending = [];
    return p;
  }
  set(x: number, y: number, r: number, g: number, b: number): void {
    const i = (y * this.width + x) * 4;
    this.rgba[i] = r;
    this.rgba[i + 1] = g;
    this.rgba[i + 2] = b;
    this.rgba[i + 3] = 255;
  }
  /** Paints a mix of solid areas, few-colour stripes and gradients (so every ZRLE tile kind appears). */
  pattern(x0: number, y0: number, w: number, h: number, seed: number): void {
    for (let y = y0; y < y0 + h; y++) {
      for (let x = x0; x < x0 + w; x++) {
        const band = Math.floor(x / 48) % 4;
        if (band === 0) this.set(x, y, 20 + seed, 40, 200);
        else if (band === 1) this.set(x, y, (y >> 2) & 1 ? 255 : 0, seed & 255, 0);
        else if (band === 2) this.set(x, y, ((x + y) % 10) * 25, (seed * 3) & 255, 128);
        else this.set(x, y, (x * 7 + seed) & 255, (y * 3) & 255, (x ^ y) & 255);
      }
    }
    this.pending.push({ x: x0, y: y0, width: w, height: h });
  }
  /** Paints runs of 8 pixels, each a different colour (many colours, long runs: ZRLE's plain RLE). */
  runs(x0: number, y0: number, w: number, h: number): void {
    for (let y = y0; y < y0 + h; y++) for (let x = x0; x < x0 + w; x++) this.set(x, y, y & 255, (x >> 3) * 16, 77);
    this.pending.push({ x: x0, y: y0, width: w, height: h });
  }
  fill(x0: number, y0: number, w: number, h: number, r: number, g: number, b: number): void {
    for (let y = y0; y < y0 + h; y++) for (let x = x0; x < x0 + w; x++) this.set(x, y, r, g, b);
    this.pending.push({ x: x0, y: y0, width: w, height: h });
  }
  resize(width: number, height: number): void {
    this.width = width;
    this.height = height;
    this.rgba = new Uint8Array(width * height * 4);
    this.pattern(0, 0, width, height, 7);
    this.pending = [{ x: 0, y: 0, width, height }];
  }
}

export class FakeInput implements InputSink {
  keys: [number, boolean][] = [];
  moves: [number, number, number][] = [];
  ledState = 0;
  key(scancode: number, down: boolean): void {
    this.keys.push([scancode, down]);
  }
  pointer(dx: number, dy: number, buttons: number): void {
    this.moves.push([dx, dy, buttons]);
  }
  leds(): number {
    return this.ledState;
  }
}

export interface DecodedRect {
  x: number;
  y: number;
  width: number;
  height: number;
  encoding: number;
  data?: Buffer;
}

/** Reads exactly n bytes from a stream, waiting as needed; `closed` resolves when the server hangs up. */
export class RfbTestClient {
  private buf = Buffer.alloc(0);
  private waiter: (() => void) | undefined;
  ended = false;
  format: Format = XRGB32;
  fbWidth = 0;
  fbHeight = 0;
  name = '';
  /** The viewer's framebuffer: pixel values in its format. */
  fb = new Uint32Array(0);
  private zlibIn: Buffer[] = [];
  private zlibOutUsed = 0;
  private zrleIn: Buffer[] = [];
  private zrleOutUsed = 0;
  readonly closed: Promise<void>;
  /** ZRLE tile kinds decoded so far: 0 raw, 1 solid, 2 packed palette, 128 plain RLE, 130 palette RLE. */
  readonly zrleKinds = new Set<number>();

  constructor(readonly socket: Duplex) {
    socket.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.waiter?.();
    });
    this.closed = new Promise((resolve) => {
      const done = (): void => {
        this.ended = true;
        this.waiter?.();
        resolve();
      };
      socket.on('close', done);
      socket.on('end', done);
      socket.on('error', done);
    });
  }

  static connect(target: string | number): Promise<RfbTestClient> {
    return new Promise((resolve, reject) => {
      const s = typeof target === 'string' ? net.connect(target) : net.connect({ port: target, host: '127.0.0.1' });
      s.once('connect', () => resolve(new RfbTestClient(s)));
      s.once('error', reject);
    });
  }

  /** Connects to a VMM's RFB socket, retrying while it does not exist yet (it appears as the VM starts). */
  static async connectRetrying(path: string, guardMs: number): Promise<RfbTestClient> {
    const end = Date.now() + guardMs;
    for (;;) {
      try {
        return await RfbTestClient.connect(path);
      } catch (e) {
        if (Date.now() > end) throw e;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }

  get buffered(): number {
    return this.buf.length;
  }

  async read(n: number): Promise<Buffer> {
    while (this.buf.length < n) {
      if (this.ended) throw new Error(`connection closed while waiting for ${n} bytes (have ${this.buf.length})`);
      await new Promise<void>((resolve) => (this.waiter = resolve));
      this.waiter = undefined;
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }

  write(b: Buffer | number[]): void {
    this.socket.write(Buffer.from(b));
  }

  async handshake(version: '3.3' | '3.7' | '3.8' = '3.8'): Promise<void> {
    const v = await this.read(12);
    if (v.toString('latin1') !== 'RFB 003.008\n') throw new Error(`server version ${JSON.stringify(v.toString())}`);
    this.write(Buffer.from(`RFB 003.00${version.slice(2)}\n`, 'latin1'));
    if (version === '3.3') {
      const type = (await this.read(4)).readUInt32BE(0);
      if (type !== 1) throw new Error(`3.3 security type ${type}`);
    } else {
      const n = (await this.read(1))[0];
      const types = [...(await this.read(n))];
      if (!types.includes(1)) throw new Error(`no None security in ${types}`);
      this.write([1]);
      if (version === '3.8') {
        const result = (await this.read(4)).readUInt32BE(0);
        if (result !== 0) throw new Error(`security result ${result}`);
      }
    }
    this.write([1]); // ClientInit, shared
    const init = await this.read(24);
    this.fbWidth = init.readUInt16BE(0);
    this.fbHeight = init.readUInt16BE(2);
    const nameLength = init.readUInt32BE(20);
    this.name = (await this.read(nameLength)).toString('utf8');
    this.format = {
      bpp: init[4] as 8 | 16 | 32,
      depth: init[5],
      bigEndian: init[6] !== 0,
      redMax: init.readUInt16BE(8),
      greenMax: init.readUInt16BE(10),
      blueMax: init.readUInt16BE(12),
      redShift: init[14],
      greenShift: init[15],
      blueShift: init[16],
    };
    this.fb = new Uint32Array(this.fbWidth * this.fbHeight);
  }

  setPixelFormat(f: Format): void {
    const b = Buffer.alloc(20);
    b[0] = 0;
    b[4] = f.bpp;
    b[5] = f.depth;
    b[6] = f.bigEndian ? 1 : 0;
    b[7] = 1;
    b.writeUInt16BE(f.redMax, 8);
    b.writeUInt16BE(f.greenMax, 10);
    b.writeUInt16BE(f.blueMax, 12);
    b[14] = f.redShift;
    b[15] = f.greenShift;
    b[16] = f.blueShift;
    this.write(b);
    this.format = f;
  }

  setEncodings(list: number[]): void {
    const b = Buffer.alloc(4 + 4 * list.length);
    b[0] = 2;
    b.writeUInt16BE(list.length, 2);
    list.forEach((e, i) => b.writeInt32BE(e, 4 + 4 * i));
    this.write(b);
  }

  request(incremental: boolean, x = 0, y = 0, w = this.fbWidth, h = this.fbHeight): void {
    const b = Buffer.alloc(10);
    b[0] = 3;
    b[1] = incremental ? 1 : 0;
    b.writeUInt16BE(x, 2);
    b.writeUInt16BE(y, 4);
    b.writeUInt16BE(w, 6);
    b.writeUInt16BE(h, 8);
    this.write(b);
  }

  key(keysym: number, down: boolean): void {
    const b = Buffer.alloc(8);
    b[0] = 4;
    b[1] = down ? 1 : 0;
    b.writeUInt32BE(keysym, 4);
    this.write(b);
  }

  qemuKey(keysym: number, keycode: number, down: boolean): void {
    const b = Buffer.alloc(12);
    b[0] = 255;
    b[1] = 0;
    b.writeUInt16BE(down ? 1 : 0, 2);
    b.writeUInt32BE(keysym, 4);
    b.writeUInt32BE(keycode, 8);
    this.write(b);
  }

  pointer(buttons: number, x: number, y: number): void {
    const b = Buffer.alloc(6);
    b[0] = 5;
    b[1] = buttons;
    b.writeUInt16BE(x, 2);
    b.writeUInt16BE(y, 4);
    this.write(b);
  }

  private get bytesPerPixel(): number {
    return this.format.bpp / 8;
  }

  private readPixel(b: Buffer, o: number, size: number): number {
    if (size === 4) return this.format.bigEndian ? b.readUInt32BE(o) : b.readUInt32LE(o);
    if (size === 2) return this.format.bigEndian ? b.readUInt16BE(o) : b.readUInt16LE(o);
    if (size === 1) return b[o];
    // A 3-byte CPIXEL: three bytes of the pixel value in wire order.
    return this.format.bigEndian
      ? (b[o] << 16) | (b[o + 1] << 8) | b[o + 2]
      : b[o] | (b[o + 1] << 8) | (b[o + 2] << 16);
  }

  /** Inflates one more chunk of a persistent zlib stream (the whole stream again, keeping what is new). */
  private inflate(which: 'zlib' | 'zrle', chunk: Buffer): Buffer {
    const chunks = which === 'zlib' ? this.zlibIn : this.zrleIn;
    chunks.push(chunk);
    const all = zlib.inflateSync(Buffer.concat(chunks), { finishFlush: zlib.constants.Z_SYNC_FLUSH });
    const used = which === 'zlib' ? this.zlibOutUsed : this.zrleOutUsed;
    if (which === 'zlib') this.zlibOutUsed = all.length;
    else this.zrleOutUsed = all.length;
    return all.subarray(used);
  }

  private putPixels(r: DecodedRect, values: Uint32Array): void {
    for (let y = 0; y < r.height; y++) {
      for (let x = 0; x < r.width; x++) this.fb[(r.y + y) * this.fbWidth + r.x + x] = values[y * r.width + x];
    }
  }

  private decodeZrle(data: Buffer, w: number, h: number): Uint32Array {
    const f = this.format;
    // RFC 6143 §7.7.6: 3-byte CPIXELs when 32 bpp, depth <= 24 and all colour bits sit in the low or high 3 bytes.
    const bits = f.redMax * 2 ** f.redShift + f.greenMax * 2 ** f.greenShift + f.blueMax * 2 ** f.blueShift;
    const compact = f.bpp === 32 && f.depth <= 24;
    const low = compact && bits <= 0xffffff;
    const high = compact && !low && bits % 256 === 0;
    const cpSize = low || high ? 3 : f.bpp / 8;
    const out = new Uint32Array(w * h);
    let o = 0;
    const cpixel = (): number => {
      const v = this.readPixel(data, o, cpSize);
      o += cpSize;
      return high ? v * 256 : v;
    };
    const runLength = (): number => {
      let n = 1;
      for (;;) {
        const b = data[o++];
        n += b;
        if (b !== 255) return n;
      }
    };
    for (let ty = 0; ty < h; ty += 64) {
      const th = Math.min(64, h - ty);
      for (let tx = 0; tx < w; tx += 64) {
        const tw = Math.min(64, w - tx);
        const tile = new Uint32Array(tw * th);
        const sub = data[o++];
        this.zrleKinds.add(sub >= 130 ? 130 : sub >= 2 && sub <= 16 ? 2 : sub);
        if (sub === 0) for (let i = 0; i < tile.length; i++) tile[i] = cpixel();
        else if (sub === 1) tile.fill(cpixel());
        else if (sub <= 16) {
          const palette = Array.from({ length: sub }, cpixel);
          const bits = sub === 2 ? 1 : sub <= 4 ? 2 : 4;
          for (let y = 0; y < th; y++) {
            let bitPos = 0;
            const rowStart = o;
            for (let x = 0; x < tw; x++) {
              const byte = data[rowStart + (bitPos >> 3)];
              const index = (byte >> (8 - bits - (bitPos & 7))) & ((1 << bits) - 1);
              tile[y * tw + x] = palette[index];
              bitPos += bits;
            }
            o = rowStart + Math.ceil((tw * bits) / 8);
          }
        } else if (sub === 128) {
          for (let i = 0; i < tile.length;) {
            const v = cpixel();
            const n = runLength();
            tile.fill(v, i, i + n);
            i += n;
          }
        } else if (sub >= 130) {
          const palette = Array.from({ length: sub - 128 }, cpixel);
          for (let i = 0; i < tile.length;) {
            const b = data[o++];
            const n = b & 0x80 ? runLength() : 1;
            tile.fill(palette[b & 0x7f], i, i + n);
            i += n;
          }
        } else throw new Error(`bad ZRLE subencoding ${sub}`);
        for (let y = 0; y < th; y++) out.set(tile.subarray(y * tw, (y + 1) * tw), (ty + y) * w + tx);
      }
    }
    if (o !== data.length) throw new Error(`ZRLE: ${data.length - o} bytes left over`);
    return out;
  }

  /** Reads one FramebufferUpdate, applies its pixels to `fb`, and returns its rectangles. */
  async readUpdate(): Promise<DecodedRect[]> {
    const head = await this.read(4);
    if (head[0] !== 0) throw new Error(`expected FramebufferUpdate, got message ${head[0]}`);
    const count = head.readUInt16BE(2);
    const rects: DecodedRect[] = [];
    for (let i = 0; i < count; i++) {
      const h = await this.read(12);
      const r: DecodedRect = {
        x: h.readUInt16BE(0),
        y: h.readUInt16BE(2),
        width: h.readUInt16BE(4),
        height: h.readUInt16BE(6),
        encoding: h.readInt32BE(8),
      };
      const bpp = this.bytesPerPixel;
      switch (r.encoding) {
        case 0: {
          const raw = await this.read(r.width * r.height * bpp);
          const values = new Uint32Array(r.width * r.height);
          for (let p = 0; p < values.length; p++) values[p] = this.readPixel(raw, p * bpp, bpp);
          this.putPixels(r, values);
          break;
        }
        case 6: {
          const len = (await this.read(4)).readUInt32BE(0);
          const raw = this.inflate('zlib', await this.read(len));
          if (raw.length !== r.width * r.height * bpp) throw new Error(`zlib rect: ${raw.length} bytes`);
          const values = new Uint32Array(r.width * r.height);
          for (let p = 0; p < values.length; p++) values[p] = this.readPixel(raw, p * bpp, bpp);
          this.putPixels(r, values);
          break;
        }
        case 16: {
          const len = (await this.read(4)).readUInt32BE(0);
          this.putPixels(r, this.decodeZrle(this.inflate('zrle', await this.read(len)), r.width, r.height));
          break;
        }
        case -223:
          this.resize(r.width, r.height);
          break;
        case -308: {
          const screens = await this.read(4);
          r.data = Buffer.concat([screens, await this.read(16 * screens[0])]);
          if (r.x === 0) this.resize(r.width, r.height);
          break;
        }
        case -239:
          r.data = await this.read(r.width * r.height * bpp + Math.ceil(r.width / 8) * r.height);
          break;
        case -261:
          r.data = await this.read(1);
          break;
        case -258:
          break;
        default:
          throw new Error(`unknown encoding ${r.encoding}`);
      }
      rects.push(r);
    }
    return rects;
  }

  private resize(w: number, h: number): void {
    this.fbWidth = w;
    this.fbHeight = h;
    this.fb = new Uint32Array(w * h);
  }

  /** Asserts-by-throwing that the viewer's framebuffer equals the screen converted to its format. */
  mismatch(screen: FakeScreen): string | undefined {
    if (screen.width !== this.fbWidth || screen.height !== this.fbHeight) return 'size differs';
    for (let y = 0; y < screen.height; y++) {
      for (let x = 0; x < screen.width; x++) {
        const i = (y * screen.width + x) * 4;
        const want = expectedPixel(this.format, screen.rgba[i], screen.rgba[i + 1], screen.rgba[i + 2]);
        const got = this.fb[y * screen.width + x];
        if (want !== got) return `pixel (${x}, ${y}): want 0x${want.toString(16)}, got 0x${got.toString(16)}`;
      }
    }
    return undefined;
  }

  close(): void {
    this.socket.destroy();
  }
}
