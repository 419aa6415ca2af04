import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Duplex } from 'node:stream';
import { createWebSocketStream, WebSocket, WebSocketServer } from 'ws';
import { RfbServer, startRfbServer, type RfbServerOptions } from '../../src/display/rfb/server.js';
import type { RfbLimits } from '../../src/display/rfb/connection.js';
import { FakeInput, FakeScreen, RfbTestClient } from '../support/rfb-client.js';

async function until(cond: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 1000 && !cond(); i++) await new Promise((r) => setTimeout(r, 10));
  assert.ok(cond(), `timed out waiting for ${what}`);
}

async function withServer(
  fn: (ctx: { screen: FakeScreen; logs: string[]; connect: () => Promise<RfbTestClient> }) => Promise<void>,
  limits?: Partial<RfbLimits>,
): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rfb-'));
  const socketPath = path.join(dir, 'vnc.sock');
  const screen = new FakeScreen(160, 120);
  const logs: string[] = [];
  const handle = await startRfbServer({
    source: screen,
    input: new FakeInput(),
    name: 'hostile',
    listen: { unix: socketPath },
    log: (line) => logs.push(line),
    pollHz: 200,
    limits,
  });
  const clients: RfbTestClient[] = [];
  try {
    await fn({
      screen,
      logs,
      connect: async () => {
        const c = await RfbTestClient.connect(socketPath);
        clients.push(c);
        return c;
      },
    });
  } finally {
    for (const c of clients) c.close();
    await handle.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** A well-behaved viewer that must keep working while another one misbehaves. */
async function checkBystander(good: RfbTestClient, screen: FakeScreen, seed: number): Promise<void> {
  screen.pattern(0, 0, 160, 120, seed);
  good.request(true);
  await good.readUpdate();
  assert.equal(good.mismatch(screen), undefined);
}

const pixelFormat = (patch: (b: Buffer) => void): Buffer => {
  const b = Buffer.from([0, 0, 0, 0, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]);
  patch(b);
  return b;
};

const hostile: [string, 'none' | '3.8', Buffer, RegExp][] = [
  ['a bad version string', 'none', Buffer.from('HELLO VNC!!\n'), /bad protocol version/],
  ['protocol version 4.0', 'none', Buffer.from('RFB 004.000\n'), /unsupported protocol version 4/],
  ['an unknown message type', '3.8', Buffer.from([77, 1, 2, 3]), /unknown client message type 77/],
  ['a 4 GiB ClientCutText', '3.8', Buffer.from([6, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]), /cut text of 4294967295 bytes/],
  ['a 24-bpp pixel format', '3.8', pixelFormat((b) => (b[4] = 24)), /unsupported bits-per-pixel 24/],
  ['a colour-map pixel format', '3.8', pixelFormat((b) => (b[7] = 0)), /colour-map/],
  ['a red maximum of 300', '3.8', pixelFormat((b) => b.writeUInt16BE(300, 8)), /not 2\^n-1/],
  ['a channel shifted past the pixel', '3.8', pixelFormat((b) => (b[14] = 30)), /exceeds 32 bpp/],
  ['a QEMU audio message', '3.8', Buffer.from([255, 1, 0, 0]), /QEMU client message subtype 1/],
];

for (const [what, stage, bytes, reason] of hostile) {
  test(`a viewer sending ${what} is disconnected with a logged reason; another viewer is unaffected`, async () => {
    await withServer(async ({ screen, logs, connect }) => {
      const good = await connect();
      await good.handshake();
      good.request(false);
      await good.readUpdate();
      const bad = await connect();
      if (stage === '3.8') await bad.handshake();
      else await bad.read(12);
      bad.write(bytes);
      await bad.closed;
      await until(() => logs.some((l) => reason.test(l)), `log line ${reason}`);
      const line = logs.find((l) => reason.test(l))!;
      assert.ok(!line.includes('\n'), 'one line');
      await checkBystander(good, screen, 5);
    });
  });
}

test('choosing a security type that was not offered fails the handshake (3.8 SecurityResult with a reason)', async () => {
  await withServer(async ({ logs, connect }) => {
    const c = await connect();
    await c.read(12);
    c.write(Buffer.from('RFB 003.008\n'));
    await c.read(2);
    c.write([2]); // VNC authentication
    const result = await c.read(8);
    assert.equal(result.readUInt32BE(0), 1);
    const reason = (await c.read(result.readUInt32BE(4))).toString();
    assert.match(reason, /security type 2/);
    await c.closed;
    assert.ok(logs.some((l) => /security type 2/.test(l)));
  });
});

test('half messages, a disconnect mid-update and absurd rectangles do not disturb the server', async () => {
  await withServer(async ({ screen, logs, connect }) => {
    const good = await connect();
    await good.handshake();
    good.setEncodings([16]);
    good.request(false);
    await good.readUpdate();

    // Half a FramebufferUpdateRequest, then gone.
    const half = await connect();
    await half.handshake();
    half.write([3, 0, 0]);
    half.close();
    // A ZRLE update requested and the viewer gone before it is written.
    const quitter = await connect();
    await quitter.handshake();
    quitter.setEncodings([16]);
    screen.pattern(0, 0, 160, 120, 3);
    quitter.request(false);
    quitter.close();
    await until(() => logs.filter((l) => /viewer disconnected/.test(l)).length >= 2, 'both disconnects logged');

    // Rectangles far outside the screen are clipped to nothing, and the connection stays usable.
    const odd = await connect();
    await odd.handshake();
    odd.request(false, 60000, 60000, 65535, 65535);
    odd.request(false, 150, 110, 65535, 65535);
    const rects = await odd.readUpdate();
    assert.deepEqual(
      rects.map((r) => [r.x, r.y, r.width, r.height]),
      [[150, 110, 10, 10]],
    );
    await checkBystander(good, screen, 9);
  });
});

test('unparsed input past the limit and a viewer that never finishes the handshake are disconnected', async () => {
  await withServer(
    async ({ logs, connect }) => {
      const flood = await connect();
      await flood.handshake();
      const setEncodings = Buffer.alloc(2004);
      setEncodings[0] = 2;
      setEncodings.writeUInt16BE(1000, 2); // promises 4000 bytes of encodings, sends 2000
      flood.write(setEncodings);
      await flood.closed;
      assert.ok(logs.some((l) => /bytes of unparsed input/.test(l)));
      const silent = await connect();
      await silent.closed;
      assert.ok(logs.some((l) => /handshake not finished/.test(l)));
    },
    { maxPendingInput: 1000, handshakeTimeoutMs: 100 },
  );
});

/** A socket whose peer stops reading: writes are accepted into the stream's buffer but never complete. */
class StuckSocket extends Duplex {
  stuck = false;
  written = 0;
  private pending: (() => void)[] = [];
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: () => void): void {
    this.written += chunk.length;
    if (this.stuck) this.pending.push(cb);
    else cb();
  }
  override _read(): void {}
  unstick(): void {
    this.stuck = false;
    for (const cb of this.pending.splice(0)) cb();
  }
}

test('a viewer that stops reading gets one update in flight; its changes coalesce until the socket drains', async () => {
  const screen = new FakeScreen(320, 240);
  const logs: string[] = [];
  const options: RfbServerOptions = {
    source: screen,
    input: new FakeInput(),
    name: 'slow',
    log: (l) => logs.push(l),
    pollHz: 200,
  };
  const server = new RfbServer(options);
  const sock = new StuckSocket();
  const conn = server.attach(sock, 'slow');
  const encodings = Buffer.alloc(8);
  encodings[0] = 2;
  encodings.writeUInt16BE(1, 2); // Raw only
  const request = (incremental: number): Buffer => Buffer.from([3, incremental, 0, 0, 0, 0, 1, 64, 0, 240]);
  sock.push(Buffer.concat([Buffer.from('RFB 003.008\n'), Buffer.from([1, 1]), encodings]));
  await until(() => conn.waiting === false && sock.written > 0, 'handshake');
  sock.stuck = true;
  sock.push(request(0));
  await until(() => conn.updatesSent === 1, 'first update');
  const frameBytes = 320 * 240 * 4;
  for (let i = 0; i < 30; i++) {
    screen.pattern(0, 0, 320, 240, i);
    sock.push(request(1));
    const polls = server.polls;
    await until(() => server.polls > polls, 'a poll');
  }
  assert.equal(conn.updatesSent, 1, 'no more updates while the first is unflushed');
  assert.ok(sock.writableLength <= frameBytes + 1024, `buffered ${sock.writableLength} bytes`);
  sock.unstick();
  await until(() => conn.updatesSent === 2, 'the coalesced update after drain');
  sock.push(request(1)); // nothing changed since: polls, no update
  const polls = server.polls;
  await until(() => server.polls >= polls + 3, 'more polls');
  assert.equal(conn.updatesSent, 2, 'thirty changes became one update');
  server.close();
});

test('attachWebSocket serves a viewer over WebSocket binary frames (the daemon bridge / noVNC path)', async () => {
  const screen = new FakeScreen(100, 80);
  const server = new RfbServer({ source: screen, input: new FakeInput(), name: 'ws-vm', log: () => {}, pollHz: 200 });
  const wss = new WebSocketServer({ port: 0, host: '127.0.0.1' });
  wss.on('connection', (ws) => server.attachWebSocket(ws));
  await new Promise<void>((r) => wss.once('listening', () => r()));
  const port = (wss.address() as { port: number }).port;
  const ws = new WebSocket(`ws://127.0.0.1:${port}/`);
  // The stream is made before 'open': the server's version string may arrive in the same read as the upgrade.
  const client = new RfbTestClient(createWebSocketStream(ws));
  try {
    await client.handshake();
    assert.equal(client.name, 'ws-vm');
    client.setEncodings([16, 6, 0]);
    client.request(false);
    await client.readUpdate();
    assert.equal(client.mismatch(screen), undefined);
  } finally {
    client.close();
    server.close();
    await new Promise<void>((r) => wss.close(() => r()));
  }
});
