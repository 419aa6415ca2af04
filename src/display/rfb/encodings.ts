// RFC 6143 §7.7 (encodings) and rfbproto's Zlib encoding: the rectangle payloads the server sends. Raw (§7.7.1),
// Zlib (rfbproto "Zlib Encoding": raw pixels through one deflate stream per viewer) and ZRLE (§7.7.6).
//
// ZRLE rather than Tight: ZRLE is lossless, fully specified in RFC 6143 itself, and decoded by every viewer we
// serve (noVNC, TigerVNC, Remmina). Tight's wins come from JPEG, which needs a JPEG encoder we do not have and
// blurs text consoles; its lossless mode (four zlib streams, "basic" filters) compresses no better than ZRLE's
// palette and run-length tiles on the flat colours of a text console or a desktop.
import * as zlib from 'node:zlib';
import { pixelBytes, type PixelFormat } from './pixel-format.js';

export const ENCODING_RAW = 0;
export const ENCODING_COPY_RECT = 1;
export const ENCODING_ZLIB = 6;
export const ENCODING_TIGHT = 7;
export const ENCODING_ZRLE = 16;
export const PSEUDO_DESKTOP_SIZE = -223;
export const PSEUDO_CURSOR = -239;
export const PSEUDO_QEMU_EXTENDED_KEY = -258;
export const PSEUDO_QEMU_LED_STATE = -261;
export const PSEUDO_EXTENDED_DESKTOP_SIZE = -308;

/** The pixel encodings this server can produce, in no particular order (the viewer's list gives the order). */
export const PIXEL_ENCODINGS: readonly number[] = [ENCODING_RAW, ENCODING_ZLIB, ENCODING_ZRLE];

/**
 * One persistent deflate stream (rfbproto: each Zlib/ZRLE viewer keeps one zlib stream for the connection's
 * life, so the dictionary carries over between updates). Compression runs on libuv's thread pool, off the
 * thread that runs vCPUs; each chunk ends with a sync flush so the viewer can inflate it completely.
 */
export class DeflateStream {
  private readonly deflate: zlib.Deflate;
  private pending: Buffer[] = [];
  private queue: Promise<unknown> = Promise.resolve();

  constructor(level = 6) {
    this.deflate = zlib.createDeflate({ level });
    this.deflate.on('data', (chunk: Buffer) => this.pending.push(chunk));
    this.deflate.on('error', () => {}); // surfaced through compress()'s callback
  }

  compress(input: Buffer): Promise<Buffer> {
    const run = (): Promise<Buffer> =>
      new Promise((resolve, reject) => {
        this.deflate.write(input);
        this.deflate.flush(zlib.constants.Z_SYNC_FLUSH, () => {
          // The flush's output is pushed before its callback runs; a tick later catches any deferred 'data'.
          setImmediate(() => {
            const out = Buffer.concat(this.pending);
            this.pending = [];
            if (this.deflate.destroyed) reject(new Error('deflate stream closed'));
            else resolve(out);
          });
        });
      });
    const result = this.queue.then(run, run);
    this.queue = result.catch(() => undefined);
    return result;
  }

  close(): void {
    this.deflate.destroy();
  }
}

export function encodeRaw(format: PixelFormat, values: Uint32Array): Buffer {
  return pixelBytes(format, values);
}

export async function encodeZlib(format: PixelFormat, values: Uint32Array, stream: DeflateStream): Promise<Buffer> {
  const compressed = await stream.compress(pixelBytes(format, values));
  const header = Buffer.alloc(4);
  header.writeUInt32BE(compressed.length, 0);
  return Buffer.concat([header, compressed]);
}

type CpixelWriter = (out: Buffer, offset: number, value: number) => void;

/**
 * RFC 6143 §7.7.6 CPIXEL: a PIXEL, except 3 bytes for 32-bpp true colour of depth ≤ 24 whose channels all sit
 * in the low or the high three bytes (the byte left out is the unused one, in wire order).
 */
export function cpixelLayout(pf: PixelFormat): { size: number; write: CpixelWriter } {
  const bits = pf.redMax * 2 ** pf.redShift + pf.greenMax * 2 ** pf.greenShift + pf.blueMax * 2 ** pf.blueShift;
  if (pf.bitsPerPixel === 32 && pf.depth <= 24) {
    const fitsLow = bits <= 0xffffff;
    const fitsHigh = bits % 256 === 0;
    if (fitsLow || fitsHigh) {
      // Shift so the three used bytes are the low 24 bits, then write them in the pixel's byte order.
      const shift = fitsLow ? 0 : 8;
      const write: CpixelWriter = pf.bigEndian
        ? (out, o, v) => {
            const c = v >>> shift;
            out[o] = (c >>> 16) & 0xff;
            out[o + 1] = (c >>> 8) & 0xff;
            out[o + 2] = c & 0xff;
          }
        : (out, o, v) => {
            const c = v >>> shift;
            out[o] = c & 0xff;
            out[o + 1] = (c >>> 8) & 0xff;
            out[o + 2] = (c >>> 16) & 0xff;
          };
      return { size: 3, write };
    }
  }
  const size = pf.bitsPerPixel / 8;
  const le = !pf.bigEndian;
  if (size === 4) return { size, write: (out, o, v) => void (le ? out.writeUInt32LE(v, o) : out.writeUInt32BE(v, o)) };
  if (size === 2) return { size, write: (out, o, v) => void (le ? out.writeUInt16LE(v, o) : out.writeUInt16BE(v, o)) };
  return { size, write: (out, o, v) => void (out[o] = v) };
}

const ZRLE_TILE = 64;

function runLengthBytes(length: number): number {
  return Math.floor((length - 1) / 255) + 1;
}

function writeRunLength(out: Buffer, o: number, length: number): number {
  let rest = length - 1;
  while (rest >= 255) {
    out[o++] = 255;
    rest -= 255;
  }
  out[o++] = rest;
  return o;
}

/** One tile's ZRLE bytes (subencoding byte onwards), choosing the smallest of raw, solid, palette and RLE forms. */
function encodeZrleTile(
  tile: Uint32Array,
  w: number,
  h: number,
  cp: { size: number; write: CpixelWriter },
  out: Buffer,
  o: number,
): number {
  const palette = new Map<number, number>();
  let plainRleSize = 0;
  let paletteRleSize = 0;
  for (let i = 0; i < tile.length;) {
    const v = tile[i];
    let j = i + 1;
    while (j < tile.length && tile[j] === v) j++;
    const length = j - i;
    plainRleSize += cp.size + runLengthBytes(length);
    paletteRleSize += length === 1 ? 1 : 1 + runLengthBytes(length);
    if (palette.size <= 127 && !palette.has(v)) palette.set(v, palette.size);
    i = j;
  }
  const n = palette.size;
  if (n === 1) {
    out[o++] = 1;
    cp.write(out, o, tile[0]);
    return o + cp.size;
  }
  const candidates: [string, number][] = [
    ['raw', tile.length * cp.size],
    ['plainRle', plainRleSize],
  ];
  const bitsPerIndex = n <= 2 ? 1 : n <= 4 ? 2 : 4;
  if (n <= 16) candidates.push(['packed', n * cp.size + h * Math.ceil((w * bitsPerIndex) / 8)]);
  if (n <= 127) candidates.push(['paletteRle', n * cp.size + paletteRleSize]);
  let best = candidates[0];
  for (const c of candidates) if (c[1] < best[1]) best = c;

  switch (best[0]) {
    case 'raw':
      out[o++] = 0;
      for (let i = 0; i < tile.length; i++, o += cp.size) cp.write(out, o, tile[i]);
      return o;
    case 'plainRle':
      out[o++] = 128;
      for (let i = 0; i < tile.length;) {
        const v = tile[i];
        let j = i + 1;
        while (j < tile.length && tile[j] === v) j++;
        cp.write(out, o, v);
        o = writeRunLength(out, o + cp.size, j - i);
        i = j;
      }
      return o;
    case 'packed': {
      out[o++] = n;
      for (const colour of palette.keys()) {
        cp.write(out, o, colour);
        o += cp.size;
      }
      for (let row = 0; row < h; row++) {
        let byte = 0;
        let used = 0;
        for (let col = 0; col < w; col++) {
          byte = (byte << bitsPerIndex) | palette.get(tile[row * w + col])!;
          used += bitsPerIndex;
          if (used === 8) {
            out[o++] = byte;
            byte = 0;
            used = 0;
          }
        }
        if (used > 0) out[o++] = (byte << (8 - used)) & 0xff;
      }
      return o;
    }
    default: {
      out[o++] = 128 + n;
      for (const colour of palette.keys()) {
        cp.write(out, o, colour);
        o += cp.size;
      }
      for (let i = 0; i < tile.length;) {
        const v = tile[i];
        let j = i + 1;
        while (j < tile.length && tile[j] === v) j++;
        const index = palette.get(v)!;
        if (j - i === 1) out[o++] = index;
        else {
          out[o++] = index | 0x80;
          o = writeRunLength(out, o, j - i);
        }
        i = j;
      }
      return o;
    }
  }
}

/** The uncompressed ZRLE stream of a w × h rectangle: 64 × 64 tiles, left to right, top to bottom. */
export function zrleTiles(format: PixelFormat, values: Uint32Array, w: number, h: number): Buffer {
  const cp = cpixelLayout(format);
  const tilesAcross = Math.ceil(w / ZRLE_TILE);
  const tilesDown = Math.ceil(h / ZRLE_TILE);
  // Worst case is every tile raw: one subencoding byte per tile plus every pixel.
  const out = Buffer.allocUnsafe(tilesAcross * tilesDown + w * h * cp.size);
  const tile = new Uint32Array(ZRLE_TILE * ZRLE_TILE);
  let o = 0;
  for (let ty = 0; ty < h; ty += ZRLE_TILE) {
    const th = Math.min(ZRLE_TILE, h - ty);
    for (let tx = 0; tx < w; tx += ZRLE_TILE) {
      const tw = Math.min(ZRLE_TILE, w - tx);
      const view = tile.subarray(0, tw * th);
      for (let row = 0; row < th; row++)
        view.set(values.subarray((ty + row) * w + tx, (ty + row) * w + tx + tw), row * tw);
      o = encodeZrleTile(view, tw, th, cp, out, o);
    }
  }
  return out.subarray(0, o);
}

export async function encodeZrle(
  format: PixelFormat,
  values: Uint32Array,
  w: number,
  h: number,
  stream: DeflateStream,
): Promise<Buffer> {
  const compressed = await stream.compress(zrleTiles(format, values, w, h));
  const header = Buffer.alloc(4);
  header.writeUInt32BE(compressed.length, 0);
  return Buffer.concat([header, compressed]);
}
