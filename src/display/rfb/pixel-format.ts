// RFC 6143 §7.4 (PIXEL_FORMAT) and §7.5.1 (SetPixelFormat): the viewer's pixel layout, and the conversion of the
// display's RGBA frame into it. Only true-colour formats are accepted (colour maps are an 8-bit relic no viewer
// we serve needs).

export interface PixelFormat {
  readonly bitsPerPixel: 8 | 16 | 32;
  readonly depth: number;
  readonly bigEndian: boolean;
  readonly redMax: number;
  readonly greenMax: number;
  readonly blueMax: number;
  readonly redShift: number;
  readonly greenShift: number;
  readonly blueShift: number;
}

/** What the server announces in ServerInit: 32 bpp, depth 24, little-endian, xRGB (what noVNC and TigerVNC use). */
export const SERVER_PIXEL_FORMAT: PixelFormat = {
  bitsPerPixel: 32,
  depth: 24,
  bigEndian: false,
  redMax: 255,
  greenMax: 255,
  blueMax: 255,
  redShift: 16,
  greenShift: 8,
  blueShift: 0,
};

export function encodePixelFormat(pf: PixelFormat): Buffer {
  const b = Buffer.alloc(16);
  b[0] = pf.bitsPerPixel;
  b[1] = pf.depth;
  b[2] = pf.bigEndian ? 1 : 0;
  b[3] = 1; // true colour
  b.writeUInt16BE(pf.redMax, 4);
  b.writeUInt16BE(pf.greenMax, 6);
  b.writeUInt16BE(pf.blueMax, 8);
  b[10] = pf.redShift;
  b[11] = pf.greenShift;
  b[12] = pf.blueShift;
  return b;
}

function isMaskOfOnes(max: number): boolean {
  return max > 0 && (max & (max + 1)) === 0;
}

/** Parses the 16 bytes of a PIXEL_FORMAT; returns a one-line reason instead when no true-colour layout fits. */
export function parsePixelFormat(b: Buffer): PixelFormat | string {
  const bpp = b[0];
  if (bpp !== 8 && bpp !== 16 && bpp !== 32) return `unsupported bits-per-pixel ${bpp}`;
  if (b[3] === 0) return 'colour-map pixel formats are not supported';
  const pf: PixelFormat = {
    bitsPerPixel: bpp,
    depth: b[1],
    bigEndian: b[2] !== 0,
    redMax: b.readUInt16BE(4),
    greenMax: b.readUInt16BE(6),
    blueMax: b.readUInt16BE(8),
    redShift: b[10],
    greenShift: b[11],
    blueShift: b[12],
  };
  const channels: [number, number][] = [
    [pf.redMax, pf.redShift],
    [pf.greenMax, pf.greenShift],
    [pf.blueMax, pf.blueShift],
  ];
  for (const [max, shift] of channels) {
    if (!isMaskOfOnes(max)) return `colour maximum ${max} is not 2^n-1`;
    if (shift + Math.log2(max + 1) > bpp) return `colour channel (max ${max}, shift ${shift}) exceeds ${bpp} bpp`;
  }
  return pf;
}

/** Per-channel lookup tables: 8-bit intensity → that channel's bits already shifted into place. */
export interface PixelConverter {
  readonly format: PixelFormat;
  readonly bytesPerPixel: number;
  readonly red: Uint32Array;
  readonly green: Uint32Array;
  readonly blue: Uint32Array;
}

function channelTable(max: number, shift: number): Uint32Array {
  const t = new Uint32Array(256);
  for (let v = 0; v < 256; v++) t[v] = (Math.round((v * max) / 255) * 2 ** shift) >>> 0;
  return t;
}

export function pixelConverter(format: PixelFormat): PixelConverter {
  return {
    format,
    bytesPerPixel: format.bitsPerPixel / 8,
    red: channelTable(format.redMax, format.redShift),
    green: channelTable(format.greenMax, format.greenShift),
    blue: channelTable(format.blueMax, format.blueShift),
  };
}

/** The pixel value of one RGB colour in the viewer's format. */
export function pixelValue(cv: PixelConverter, r: number, g: number, b: number): number {
  return (cv.red[r] | cv.green[g] | cv.blue[b]) >>> 0;
}

/** Pixel values (not yet bytes) of a rectangle of an RGBA frame, row by row. */
export function rectPixelValues(
  cv: PixelConverter,
  rgba: Uint8Array,
  frameWidth: number,
  x: number,
  y: number,
  w: number,
  h: number,
): Uint32Array {
  const out = new Uint32Array(w * h);
  const { red, green, blue } = cv;
  let o = 0;
  for (let row = 0; row < h; row++) {
    let i = ((y + row) * frameWidth + x) * 4;
    for (let col = 0; col < w; col++, i += 4) out[o++] = red[rgba[i]] | green[rgba[i + 1]] | blue[rgba[i + 2]];
  }
  return out;
}

/** Serialises pixel values in the viewer's byte order and size (RFC 6143 §7.4: bpp/8 bytes per PIXEL). */
export function pixelBytes(format: PixelFormat, values: Uint32Array): Buffer {
  const bpp = format.bitsPerPixel / 8;
  const out = Buffer.allocUnsafe(values.length * bpp);
  if (bpp === 4) {
    const view = new DataView(out.buffer, out.byteOffset, out.length);
    const le = !format.bigEndian;
    for (let i = 0; i < values.length; i++) view.setUint32(i * 4, values[i], le);
  } else if (bpp === 2) {
    const view = new DataView(out.buffer, out.byteOffset, out.length);
    const le = !format.bigEndian;
    for (let i = 0; i < values.length; i++) view.setUint16(i * 2, values[i], le);
  } else {
    for (let i = 0; i < values.length; i++) out[i] = values[i];
  }
  return out;
}
