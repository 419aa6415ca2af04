// PNG screenshots: an RGBA frame survives encode → decode; an independent reader (python3's zlib and struct)
// finds the same pixels and valid CRCs; the decoder undoes every filter type; damaged files are refused. The
// encoding time of a 1024x768 frame is printed for the report, never asserted.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { deflateSync, crc32 } from 'node:zlib';
import { decodePng, encodePng, PngError } from '../../src/display/png.js';
import type { DisplayFrame } from '../../src/display/source.js';
import { Rng } from '../support/rng.js';

function randomFrame(width: number, height: number, seed: number): DisplayFrame {
  const rng = new Rng(seed);
  return { width, height, rgba: rng.bytes(width * height * 4) };
}

test('png: encode → decode gives back the frame, for odd sizes too', () => {
  for (const [w, h] of [
    [1, 1],
    [3, 7],
    [720, 400],
  ]) {
    const frame = randomFrame(w, h, w * 31 + h);
    const decoded = decodePng(encodePng(frame));
    assert.equal(decoded.width, w);
    assert.equal(decoded.height, h);
    assert.ok(Buffer.from(decoded.rgba).equals(Buffer.from(frame.rgba)), `${w}x${h}`);
  }
  assert.throws(() => encodePng({ width: 2, height: 2, rgba: new Uint8Array(15) }), RangeError);
  assert.throws(() => encodePng({ width: 0, height: 2, rgba: new Uint8Array(0) }), RangeError);
});

test('png: python3 (zlib, struct) reads the same header, CRCs and pixels', (t) => {
  const frame = randomFrame(37, 11, 5);
  const dir = mkdtempSync(join(tmpdir(), 'partita-png-'));
  try {
    const file = join(dir, 'shot.png');
    writeFileSync(file, encodePng(frame));
    const script = [
      'import struct, sys, zlib, hashlib',
      'data = open(sys.argv[1], "rb").read()',
      'assert data[:8] == b"\\x89PNG\\r\\n\\x1a\\n"',
      'at = 8; idat = b""',
      'while True:',
      '    n, = struct.unpack(">I", data[at:at+4]); kind = data[at+4:at+8]; body = data[at+8:at+8+n]',
      '    crc, = struct.unpack(">I", data[at+8+n:at+12+n])',
      '    assert zlib.crc32(kind + body) & 0xffffffff == crc, kind',
      '    if kind == b"IHDR": w, h, depth, colour = struct.unpack(">IIBB", body[:10])',
      '    if kind == b"IDAT": idat += body',
      '    at += 12 + n',
      '    if kind == b"IEND": break',
      'raw = zlib.decompress(idat)',
      'rows = [raw[y*(w*4+1):(y+1)*(w*4+1)] for y in range(h)]',
      'assert all(r[0] == 0 for r in rows)',
      'print(w, h, depth, colour, hashlib.sha256(b"".join(r[1:] for r in rows)).hexdigest())',
    ].join('\n');
    const py = spawnSync('python3', ['-c', script, file], { encoding: 'utf8' });
    if (py.error) return t.skip('python3 is not installed');
    assert.equal(py.status, 0, py.stderr);
    assert.equal(py.stdout.trim(), `37 11 8 6 ${createHash('sha256').update(frame.rgba).digest('hex')}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

/** A PNG built by hand with each row under a different filter (Sub, Up, Average, Paeth, None), RGB. */
function filteredPng(width: number, height: number, rgb: Uint8Array): Buffer {
  const stride = width * 3;
  const raw = Buffer.alloc((stride + 1) * height);
  for (let y = 0; y < height; y++) {
    const filter = [1, 2, 3, 4, 0][y % 5];
    raw[y * (stride + 1)] = filter;
    for (let x = 0; x < stride; x++) {
      const cur = rgb[y * stride + x];
      const a = x >= 3 ? rgb[y * stride + x - 3] : 0;
      const b = y > 0 ? rgb[(y - 1) * stride + x] : 0;
      const c = x >= 3 && y > 0 ? rgb[(y - 1) * stride + x - 3] : 0;
      let pred = 0;
      if (filter === 1) pred = a;
      else if (filter === 2) pred = b;
      else if (filter === 3) pred = (a + b) >> 1;
      else if (filter === 4) {
        const p = a + b - c;
        const [pa, pb, pc] = [Math.abs(p - a), Math.abs(p - b), Math.abs(p - c)];
        pred = pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      }
      raw[y * (stride + 1) + 1 + x] = (cur - pred) & 0xff;
    }
  }
  const chunk = (type: string, data: Buffer): Buffer => {
    const head = Buffer.alloc(8);
    head.writeUInt32BE(data.length, 0);
    head.write(type, 4, 'latin1');
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(Buffer.concat([head.subarray(4), data])) >>> 0, 0);
    return Buffer.concat([head, data, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8;
  ihdr[9] = 2;
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', deflateSync(raw)),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

test('png: the decoder undoes Sub, Up, Average and Paeth filters (RGB images)', () => {
  const rng = new Rng(99);
  const [w, h] = [13, 10];
  const rgb = rng.bytes(w * h * 3);
  const decoded = decodePng(filteredPng(w, h, rgb));
  for (let i = 0; i < w * h; i++) {
    assert.deepEqual(
      [...decoded.rgba.subarray(i * 4, i * 4 + 4)],
      [rgb[i * 3], rgb[i * 3 + 1], rgb[i * 3 + 2], 255],
      `pixel ${i}`,
    );
  }
});

test('png: damaged files are refused with a PngError', () => {
  const good = encodePng(randomFrame(4, 4, 1));
  const flipped = Buffer.from(good);
  flipped[40] ^= 0x01; // inside IDAT
  assert.throws(() => decodePng(flipped), PngError);
  assert.throws(() => decodePng(good.subarray(0, 30)), PngError);
  assert.throws(() => decodePng(Buffer.from('GIF89a')), PngError);
});

test('png: encoding a 1024x768 screen (timing printed, not asserted)', () => {
  // A typical screen: a gradient wallpaper, flat windows, and text-like detail (not noise: no screen is).
  const frame: DisplayFrame = { width: 1024, height: 768, rgba: new Uint8Array(1024 * 768 * 4) };
  const words = new Uint32Array(frame.rgba.buffer);
  for (let y = 0; y < 768; y++)
    for (let x = 0; x < 1024; x++) {
      const inWindow = x > 100 && x < 900 && y > 80 && y < 700;
      const glyph = inWindow && y % 16 < 12 && ((x * 7 + y * 13) % 11 < 4 || (x >> 3) % 5 === 0);
      words[y * 1024 + x] = glyph
        ? 0xff202020
        : inWindow
          ? 0xfff0f0f0
          : (0xff000000 | ((x >> 2) << 16) | ((y >> 2) << 8) | 0x40) >>> 0;
    }
  for (let i = 0; i < 3; i++) encodePng(frame); // warm up
  const times: number[] = [];
  const cpu: number[] = [];
  let size = 0;
  for (let i = 0; i < 5; i++) {
    const t0 = process.hrtime.bigint();
    const c0 = process.cpuUsage();
    size = encodePng(frame).length;
    const c1 = process.cpuUsage(c0);
    times.push(Number(process.hrtime.bigint() - t0) / 1e6);
    cpu.push((c1.user + c1.system) / 1000);
  }
  console.log(
    `# png: 1024x768 RGBA encodes in ${Math.min(...times).toFixed(1)} ms wall, ${Math.min(...cpu).toFixed(1)} ms CPU ` +
      `(best of 5), ${size} bytes`,
  );
  assert.ok(size > 0);
});
