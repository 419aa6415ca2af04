// rfbproto "Cursor Pseudo-encoding" (-239): a local cursor the viewer draws itself, so the pointer stays
// responsive while the guest's own cursor (if it draws one) follows over relative PS/2 motion.
import { pixelBytes, pixelValue, type PixelConverter } from './pixel-format.js';

// 'X' black outline, '.' white fill, ' ' transparent; hotspot at the tip (0, 0).
const ARROW = [
  'X          ',
  'XX         ',
  'X.X        ',
  'X..X       ',
  'X...X      ',
  'X....X     ',
  'X.....X    ',
  'X......X   ',
  'X.......X  ',
  'X........X ',
  'X.....XXXXX',
  'X..X..X    ',
  'X.X X..X   ',
  'XX  X..X   ',
  'X    X..X  ',
  '     XXXX  ',
];

export interface CursorShape {
  readonly hotX: number;
  readonly hotY: number;
  readonly width: number;
  readonly height: number;
  /** width × height pixels in the viewer's format, then the 1-bit mask (rows padded to bytes, MSB first). */
  readonly data: Buffer;
}

export function cursorShape(kind: 'arrow' | 'none', cv: PixelConverter): CursorShape {
  // A 0 × 0 cursor is how rfbproto says "no local cursor" (viewers then hide theirs).
  if (kind === 'none') return { hotX: 0, hotY: 0, width: 0, height: 0, data: Buffer.alloc(0) };
  const width = ARROW[0].length;
  const height = ARROW.length;
  const black = pixelValue(cv, 0, 0, 0);
  const white = pixelValue(cv, 255, 255, 255);
  const values = new Uint32Array(width * height);
  const rowBytes = Math.ceil(width / 8);
  const mask = Buffer.alloc(rowBytes * height);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const c = ARROW[y][x];
      values[y * width + x] = c === '.' ? white : black;
      if (c !== ' ') mask[y * rowBytes + (x >> 3)] |= 0x80 >> (x & 7);
    }
  }
  return { hotX: 0, hotY: 0, width, height, data: Buffer.concat([pixelBytes(cv.format, values), mask]) };
}
