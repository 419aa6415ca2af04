import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { startRfbServer, type RfbServerHandle } from '../../src/display/rfb/server.js';
import { FakeInput, FakeScreen, RfbTestClient, RGB565_BE, XRGB32, type Format } from '../support/rfb-client.js';

const RAW = 0;
const ZLIB = 6;
const ZRLE = 16;

interface Rig {
  screen: FakeScreen;
  input: FakeInput;
  handle: RfbServerHandle;
  logs: string[];
  socketPath: string;
  connect(): Promise<RfbTestClient>;
  done(): Promise<void>;
}

async function rig(width = 200, height = 150): Promise<Rig> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rfb-'));
  const socketPath = path.join(dir, 'vnc.sock');
  const screen = new FakeScreen(width, height);
  const input = new FakeInput();
  const logs: string[] = [];
  const handle = await startRfbServer({
    source: screen,
    input,
    name: 'test-vm',
    listen: { unix: socketPath },
    log: (line) => logs.push(line),
    pollHz: 200,
  });
  const clients: RfbTestClient[] = [];
  return {
    screen,
    input,
    handle,
    logs,
    socketPath,
    async connect() {
      const c = await RfbTestClient.connect(socketPath);
      clients.push(c);
      return c;
    },
    async done() {
      for (const c of clients) c.close();
      await handle.close();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Polls until cond holds; the bound is generous and only catches hangs (results never depend on speed). */
async function until(cond: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 1000 && !cond(); i++) await new Promise((r) => setTimeout(r, 10));
  assert.ok(cond(), `timed out waiting for ${what}`);
}

for (const version of ['3.3', '3.7', '3.8'] as const) {
  test(`RFB ${version} handshake: security None, ServerInit with size, 32-bpp xRGB format and name`, async () => {
    const r = await rig(320, 200);
    try {
      const c = await r.connect();
      await c.handshake(version);
      assert.equal(c.fbWidth, 320);
      assert.equal(c.fbHeight, 200);
      assert.equal(c.name, 'test-vm');
      assert.deepEqual(c.format, XRGB32);
      c.request(false);
      await c.readUpdate();
      assert.equal(c.mismatch(r.screen), undefined);
    } finally {
      await r.done();
    }
  });
}

const formats: [string, Format][] = [
  ['32-bpp xRGB', XRGB32],
  ['16-bpp RGB565 big-endian', RGB565_BE],
  ['32-bpp BGRx big-endian', { ...XRGB32, bigEndian: true, redShift: 8, greenShift: 16, blueShift: 24, depth: 24 }],
  [
    '8-bpp BGR233',
    {
      bpp: 8,
      depth: 8,
      bigEndian: false,
      redMax: 7,
      greenMax: 7,
      blueMax: 3,
      redShift: 0,
      greenShift: 3,
      blueShift: 6,
    },
  ],
];
const encodings: [string, number][] = [
  ['Raw', RAW],
  ['Zlib', ZLIB],
  ['ZRLE', ZRLE],
];

for (const [fname, format] of formats) {
  for (const [ename, encoding] of encodings) {
    test(`${ename} in ${fname}: full then incremental updates are pixel-exact and carry only changed rectangles`, async () => {
      const r = await rig(200, 150);
      try {
        const c = await r.connect();
        await c.handshake();
        c.setPixelFormat(format);
        c.setEncodings([encoding]);
        c.request(false);
        const first = await c.readUpdate();
        assert.ok(first.every((x) => x.encoding === encoding));
        assert.equal(c.mismatch(r.screen), undefined);

        // Two changes between requests (the stream dictionaries must carry over between updates).
        for (let round = 1; round <= 2; round++) {
          r.screen.pattern(10 * round, 20, 90, 70, round * 11);
          r.screen.fill(150, 100 + round, 30, 10, 255, 255 - round, 3);
          r.screen.runs(0, 96, 128, 54);
          c.request(true);
          const rects = await c.readUpdate();
          assert.deepEqual(
            rects.map((x) => [x.x, x.y, x.width, x.height]),
            [
              [10 * round, 20, 90, 70],
              [150, 100 + round, 30, 10],
              [0, 96, 128, 54],
            ],
          );
          assert.equal(c.mismatch(r.screen), undefined);
        }
        // Fewer colour bits merge colours, so only the 24-bit format is sure to meet every tile kind.
        if (encoding === ZRLE && format === XRGB32)
          assert.deepEqual(
            [...c.zrleKinds].sort((x, y) => x - y),
            [0, 1, 2, 128, 130],
          );
      } finally {
        await r.done();
      }
    });
  }
}

test('an idle screen answers no incremental request: the next update is the one a later change causes', async () => {
  const r = await rig();
  try {
    const c = await r.connect();
    await c.handshake();
    c.setEncodings([RAW]);
    c.request(false);
    await c.readUpdate();
    const pollsBefore = r.handle.server.polls;
    c.request(true);
    // Let the server see the request and poll the idle screen a few times.
    await until(() => r.handle.server.polls >= pollsBefore + 3, 'polls of the idle screen');
    assert.equal(c.buffered, 0, 'nothing was sent for the idle screen');
    // A small non-incremental request is the first thing answered: exactly its rectangle comes back.
    c.request(false, 5, 6, 7, 8);
    const rects = await c.readUpdate();
    assert.deepEqual(
      rects.map((x) => [x.x, x.y, x.width, x.height]),
      [[5, 6, 7, 8]],
    );
    const [conn] = r.handle.server.connections;
    assert.equal(conn.updatesSent, 2, 'two requests answered in all');
    assert.equal(r.screen.renderCalls, 2, 'the idle polls rendered nothing');
  } finally {
    await r.done();
  }
});

test('a mode change sends DesktopSize (or ExtendedDesktopSize) and then the whole new screen', async () => {
  const r = await rig(200, 150);
  try {
    const plain = await r.connect();
    await plain.handshake();
    plain.setEncodings([ZRLE, -223]);
    const ext = await r.connect();
    await ext.handshake();
    ext.setEncodings([RAW, -223, -308]);
    plain.request(false);
    await plain.readUpdate();
    ext.request(false);
    const initial = await ext.readUpdate();
    // ExtendedDesktopSize is announced with the current layout (reason 0) before the first pixels.
    assert.deepEqual(
      initial.filter((x) => x.encoding === -308).map((x) => [x.x, x.y, x.width, x.height]),
      [[0, 0, 200, 150]],
    );

    r.screen.resize(320, 240);
    plain.request(true);
    ext.request(true);
    const a = await plain.readUpdate();
    assert.deepEqual(
      a.map((x) => [x.encoding, x.width, x.height]),
      [
        [-223, 320, 240],
        [ZRLE, 320, 240],
      ],
    );
    assert.equal(plain.mismatch(r.screen), undefined);
    const b = await ext.readUpdate();
    assert.deepEqual(
      b.map((x) => [x.encoding, x.width, x.height]),
      [
        [-308, 320, 240],
        [RAW, 320, 240],
      ],
    );
    assert.equal(b[0].data?.[0], 1, 'one screen');
    assert.equal(ext.mismatch(r.screen), undefined);
  } finally {
    await r.done();
  }
});

test('KeyEvent keysyms become US-layout XT scancodes, modifiers and extended keys included', async () => {
  const r = await rig();
  try {
    const c = await r.connect();
    await c.handshake();
    const presses: [number, number][] = [
      [0xffe1, 0x2a], // Shift_L
      [0x41, 0x1e], // 'A' (the 'a' key)
      [0x21, 0x02], // '!' (the '1' key)
      [0xffe4, 0xe01d], // Control_R
      [0xff52, 0xe048], // Up
      [0xffff, 0xe053], // Delete
      [0xff0d, 0x1c], // Return
      [0xff8d, 0xe01c], // KP_Enter
      [0xffc9, 0x58], // F12
      [0x2f, 0x35], // '/'
    ];
    for (const [keysym] of presses) {
      c.key(keysym, true);
      c.key(keysym, false);
    }
    c.key(0x1234567, true); // no such key: ignored
    await until(() => r.input.keys.length >= presses.length * 2, 'key events');
    assert.deepEqual(
      r.input.keys,
      presses.flatMap(([, code]) => [
        [code, true],
        [code, false],
      ]),
    );
  } finally {
    await r.done();
  }
});

test('QEMU Extended Key Event: announced with -258, carries scancodes end to end (a French "a" is the Q key)', async () => {
  const r = await rig();
  try {
    const c = await r.connect();
    await c.handshake();
    c.setEncodings([RAW, -258]);
    c.request(false);
    const rects = await c.readUpdate();
    assert.ok(
      rects.some((x) => x.encoding === -258),
      'the server acknowledges the extension',
    );
    c.qemuKey(0x61, 0x10, true); // keysym 'a' typed on AZERTY: the key at US 'q'
    c.qemuKey(0x61, 0x10, false);
    c.qemuKey(0xff52, 0xc8, true); // Up: 0xE0 0x48 sent as 0xC8
    c.qemuKey(0xff52, 0xc8, false);
    c.qemuKey(0x62, 0, true); // no keycode: falls back to the keysym ('b' → 0x30)
    await until(() => r.input.keys.length >= 5, 'key events');
    assert.deepEqual(r.input.keys, [
      [0x10, true],
      [0x10, false],
      [0xe048, true],
      [0xe048, false],
      [0x30, true],
    ]);
    // A viewer that goes away with a key held releases it.
    c.close();
    await until(() => r.input.keys.length >= 6, 'release on disconnect');
    assert.deepEqual(r.input.keys[5], [0x30, false]);
  } finally {
    await r.done();
  }
});

test('PointerEvent becomes relative motion from the previous position with the buttons mapped', async () => {
  const r = await rig();
  try {
    const c = await r.connect();
    await c.handshake();
    c.pointer(0, 100, 100);
    c.pointer(1, 110, 95);
    c.pointer(0b100, 110, 95);
    c.pointer(0b1111111, 100, 100); // horizontal wheel bits 5 and 6 dropped
    await until(() => r.input.moves.length >= 4, 'pointer events');
    assert.deepEqual(r.input.moves, [
      [0, 0, 0],
      [10, -5, 1],
      [0, 0, 4],
      [-10, 5, 0x1f],
    ]);
  } finally {
    await r.done();
  }
});

test('LED state (-261) and the Cursor (-239) are sent once, and LEDs again when the guest changes them', async () => {
  const r = await rig();
  try {
    const c = await r.connect();
    await c.handshake();
    r.input.ledState = 0b010; // Num Lock
    c.setEncodings([RAW, -239, -261]);
    c.request(false);
    const first = await c.readUpdate();
    const cursor = first.find((x) => x.encoding === -239);
    assert.ok(cursor && cursor.width > 0 && cursor.height > 0, 'a cursor shape');
    assert.deepEqual([...(first.find((x) => x.encoding === -261)?.data ?? [])], [0b010]);
    r.input.ledState = 0b110; // + Caps Lock
    c.request(true);
    const second = await c.readUpdate();
    assert.deepEqual(
      second.map((x) => [x.encoding, [...(x.data ?? [])]]),
      [[-261, [0b110]]],
    );
  } finally {
    await r.done();
  }
});

test('two viewers at once, each with its own format and encoding, both pixel-exact', async () => {
  const r = await rig(256, 192);
  try {
    const a = await r.connect();
    const b = await r.connect();
    await a.handshake('3.8');
    await b.handshake('3.3');
    b.setPixelFormat(RGB565_BE);
    a.setEncodings([ZRLE, RAW]);
    b.setEncodings([ZLIB]);
    a.request(false);
    b.request(false);
    await a.readUpdate();
    await b.readUpdate();
    r.screen.pattern(30, 40, 100, 100, 99);
    a.request(true);
    b.request(true);
    const [ra, rb] = await Promise.all([a.readUpdate(), b.readUpdate()]);
    assert.deepEqual(
      ra.map((x) => x.encoding),
      [ZRLE],
    );
    assert.deepEqual(
      rb.map((x) => x.encoding),
      [ZLIB],
    );
    assert.equal(a.mismatch(r.screen), undefined);
    assert.equal(b.mismatch(r.screen), undefined);
    // One render served both viewers in each poll.
    assert.ok(r.screen.renderCalls <= 4);
  } finally {
    await r.done();
  }
});

test('SetDesktopSize is refused with ExtendedDesktopSize status "prohibited"', async () => {
  const r = await rig(200, 150);
  try {
    const c = await r.connect();
    await c.handshake();
    c.setEncodings([RAW, -308]);
    c.request(false);
    await c.readUpdate();
    const m = Buffer.alloc(8 + 16);
    m[0] = 251;
    m.writeUInt16BE(800, 2);
    m.writeUInt16BE(600, 4);
    m[6] = 1;
    m.writeUInt16BE(800, 8 + 8);
    m.writeUInt16BE(600, 8 + 10);
    c.write(m);
    c.request(true);
    const rects = await c.readUpdate();
    assert.deepEqual(
      rects.map((x) => [x.encoding, x.x, x.y, x.width, x.height]),
      [[-308, 1, 1, 200, 150]],
    );
  } finally {
    await r.done();
  }
});
