// RFB benchmark: what one full-screen change at 1024x768 (32 bpp viewer) costs per encoding, in bytes on the
// wire and in time from the viewer's request to the decoded update, for three kinds of screen (a text console, a
// flat-colour desktop-like pattern, random noise); and what an idle screen costs in one second.
//
// The server (src/display/rfb/server.ts) runs over a UNIX socket against a synthetic DisplaySource; the viewer is
// the tests' scripted client (test/support/rfb-client.ts), which decodes every update (its decode time is in the
// measured time too, as it is for a real viewer).
//
// node bench/rfb.mjs [--rounds N]   (after npm run build)
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { startRfbServer } from '../dist/src/display/rfb/server.js';
import { DeflateStream, encodeRaw, encodeZlib, encodeZrle } from '../dist/src/display/rfb/encodings.js';
import { pixelConverter, rectPixelValues, SERVER_PIXEL_FORMAT } from '../dist/src/display/rfb/pixel-format.js';
import { FakeInput, FakeScreen, RfbTestClient } from '../dist/test/support/rfb-client.js';

const { values: args } = parseArgs({ options: { rounds: { type: 'string', default: '5' } } });
const rounds = Number(args.rounds);
const W = 1024;
const H = 768;

// Deterministic pseudo-random numbers so every run paints the same screens.
function rng(seed) {
  let s = seed >>> 0 || 1;
  return () => (s = (s * 1664525 + 1013904223) >>> 0) / 2 ** 32;
}

const painters = {
  'text console': (screen, seed) => {
    const rand = rng(seed);
    screen.fill(0, 0, W, H, 0, 0, 0);
    for (let cy = 0; cy < H; cy += 16) {
      for (let cx = 0; cx < W; cx += 8) {
        if (rand() < 0.4) continue;
        for (let y = 2; y < 14; y++)
          for (let x = 1; x < 7; x++) if (rand() < 0.35) screen.set(cx + x, cy + y, 170, 170, 170);
      }
    }
  },
  desktop: (screen, seed) => screen.pattern(0, 0, W, H, seed),
  noise: (screen, seed) => {
    const rand = rng(seed);
    for (let i = 0; i < screen.rgba.length; i += 4) {
      const v = (rand() * 2 ** 32) >>> 0;
      screen.rgba[i] = v & 255;
      screen.rgba[i + 1] = (v >>> 8) & 255;
      screen.rgba[i + 2] = (v >>> 16) & 255;
    }
    screen.pending.push({ x: 0, y: 0, width: W, height: H });
  },
};

const encodings = [
  ['Raw', 0],
  ['Zlib', 6],
  ['ZRLE', 16],
];

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rfb-bench-'));
const socketPath = path.join(dir, 'vnc.sock');
const screen = new FakeScreen(W, H);
const handle = await startRfbServer({
  source: screen,
  input: new FakeInput(),
  name: 'bench',
  listen: { unix: socketPath },
  log: () => {},
  pollHz: 60,
});
const server = handle.server;

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const rows = [];
for (const [contentName, paint] of Object.entries(painters)) {
  for (const [encName, enc] of encodings) {
    const client = await RfbTestClient.connect(socketPath);
    await client.handshake();
    client.setEncodings([enc]);
    client.request(false);
    await client.readUpdate(); // first frame: starts the zlib stream
    const bytes = [];
    const times = [];
    for (let r = 0; r < rounds; r++) {
      paint(screen, r + 1);
      const before = server.bytesSent;
      const t0 = performance.now();
      client.request(true);
      await client.readUpdate();
      times.push(performance.now() - t0);
      bytes.push(server.bytesSent - before);
      if (client.mismatch(screen)) throw new Error(`${encName}/${contentName}: ${client.mismatch(screen)}`);
    }
    client.close();
    await client.closed;
    // The server's own cost: pixel conversion plus encoding (compression included), without the socket and viewer.
    const cv = pixelConverter(SERVER_PIXEL_FORMAT);
    const stream = new DeflateStream();
    const encodeTimes = [];
    for (let r = 0; r <= rounds; r++) {
      paint(screen, r + 1);
      const t0 = performance.now();
      const values = rectPixelValues(cv, screen.rgba, W, 0, 0, W, H);
      if (enc === 0) encodeRaw(cv.format, values);
      else if (enc === 6) await encodeZlib(cv.format, values, stream);
      else await encodeZrle(cv.format, values, W, H, stream);
      if (r > 0) encodeTimes.push(performance.now() - t0); // round 0 starts the stream
    }
    stream.close();
    screen.changes();
    rows.push({
      content: contentName,
      encoding: encName,
      bytes: median(bytes),
      ms: median(times),
      encodeMs: median(encodeTimes),
    });
  }
}

// Idle: a viewer with a request outstanding on a screen that does not change, for one second.
const idle = await RfbTestClient.connect(socketPath);
await idle.handshake();
idle.setEncodings([16]);
idle.request(false);
await idle.readUpdate();
let idleBytes = 0;
idle.socket.on('data', (d) => (idleBytes += d.length));
const pollsBefore = server.polls;
const rendersBefore = server.renders;
idle.request(true);
await sleep(1000);
const idlePolls = server.polls - pollsBefore;
const idleRenders = server.renders - rendersBefore;
idle.close();
await handle.close();
fs.rmSync(dir, { recursive: true, force: true });

const pad = (s, n) => String(s).padEnd(n);
const padl = (s, n) => String(s).padStart(n);
console.log(`RFB full-screen update, ${W}x${H}, 32-bpp viewer, median of ${rounds} (raw pixels: ${W * H * 4} bytes)`);
console.log(
  `${pad('screen', 14)}${pad('encoding', 10)}${padl('bytes on wire', 15)}${padl('ratio', 8)}${padl('encode ms', 11)}${padl('request→update ms', 20)}`,
);
for (const r of rows) {
  console.log(
    `${pad(r.content, 14)}${pad(r.encoding, 10)}${padl(r.bytes, 15)}${padl(((r.bytes / (W * H * 4)) * 100).toFixed(1) + '%', 8)}${padl(r.encodeMs.toFixed(1), 11)}${padl(r.ms.toFixed(1), 20)}`,
  );
}
console.log(
  `idle screen, 1 s with a request outstanding: ${idleBytes} bytes sent, ${idlePolls} polls, ${idleRenders} renders`,
);
