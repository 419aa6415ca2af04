// virtio-console (virtio 1.2 §5.3), one port, driven by a fake guest driver: guest output into a file and into a
// UNIX socket (in order, with back-pressure), host input from the socket into receive buffers (bounded, the
// socket paused while the guest takes nothing), hostile chains, resets, and the open-time errors.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { chmodSync, fstatSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GuestMemory } from '../../src/base/guest-memory.js';
import { MIB } from '../../src/base/units.js';
import { SplitQueue } from '../../src/devices/virtio/queue.js';
import type { VirtioQueueContext } from '../../src/devices/virtio/device.js';
import { DeviceOpenError } from '../../src/devices/model.js';
import {
  CONSOLE_CONFIG_SIZE,
  CONSOLE_RX_BUFFER_LIMIT,
  CONSOLE_TURN_CHAINS,
  CONSOLE_TX_CHAIN_MAX,
  openConsole,
  VirtioConsole,
  type ConsoleHandle,
} from '../../src/devices/virtio/console.js';
import { FakeDriver } from '../support/virtq-driver.js';

const memory = GuestMemory.allocateRanges([{ gpa: 0, size: 32 * MIB }]);
const dir = mkdtempSync(join(tmpdir(), 'partita-console-'));
chmodSync(dir, 0o755); // the permission test looks inside it as another user
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

let nextBase = 0x10000;
/** Rings and a heap of `heap` bytes in a part of guest RAM no other test uses. */
function driverAt(size: number, heap: number): FakeDriver {
  const d = FakeDriver.at(memory, size, nextBase, heap);
  nextBase += heap + 64 * 1024;
  assert.ok(nextBase < 32 * MIB, 'test RAM exhausted');
  return d;
}

interface Harness {
  readonly device: VirtioConsole;
  rx: FakeDriver;
  tx: FakeDriver;
  readonly interrupts: number[];
  readonly resets: string[];
  readonly logs: string[];
}

/** A console activated on fresh rings; closed when the test ends, even if it fails. */
function harness(t: TestContext, handle: ConsoleHandle, txHeap = 256 * 1024, rxHeap = 256 * 1024): Harness {
  const logs: string[] = [];
  const h: Harness = {
    device: new VirtioConsole(handle, (m) => void logs.push(m)),
    rx: driverAt(256, rxHeap),
    tx: driverAt(256, txHeap),
    interrupts: [],
    resets: [],
    logs,
  };
  activate(h);
  t.after(() => h.device.close());
  return h;
}

function activate(h: Harness): void {
  const make = (d: FakeDriver): SplitQueue => {
    const q = SplitQueue.create(memory, d.config({ indirect: true }));
    if (!(q instanceof SplitQueue)) throw q;
    return q;
  };
  const ctx: VirtioQueueContext = {
    memory,
    queues: [make(h.rx), make(h.tx)],
    features: 0n,
    interrupt: (queue) => void h.interrupts.push(queue),
    needsReset: (reason) => {
      // As VirtioRunner.needsReset does: the backend is reset before the transport is told.
      h.resets.push(reason);
      h.device.reset();
    },
  };
  h.device.activate(ctx);
}

/** Publishes `data` as one transmit chain split into `pieces` readable buffers (in an indirect table if asked). */
function transmit(d: FakeDriver, data: Uint8Array, pieces = 1, indirect = false): number {
  const cuts = Array.from({ length: pieces + 1 }, (_, i) => Math.round((i * data.length) / pieces));
  const buffers = cuts.slice(1).map((end, i) => ({ len: end - cuts[i], data: data.subarray(cuts[i], end) }));
  return d.addChain(buffers, { indirect });
}

/** Publishes `count` receive buffers of `len` bytes; returns their addresses by head. */
function postReceive(d: FakeDriver, count: number, len: number): Map<number, number> {
  const out = new Map<number, number>();
  for (let i = 0; i < count; i++) {
    const gpa = d.alloc(len);
    out.set(d.addChain([{ len, gpa, writable: true }]), gpa);
  }
  return out;
}

async function waitFor(cond: () => boolean, what: string, ms = 60_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
const text = (s: string): Uint8Array => new TextEncoder().encode(s);
const concat = (parts: readonly Uint8Array[]): Buffer => Buffer.concat(parts.map((p) => Buffer.from(p)));

/** A UNIX socket server at a fresh path; `connection` resolves with the console's connection. Torn down when the test ends. */
async function server(t: TestContext, name: string, options: { pauseOnConnect?: boolean } = {}) {
  const path = join(dir, name);
  const peers = new Set<Socket>();
  let accept!: (s: Socket) => void;
  const connection = new Promise<Socket>((resolve) => (accept = resolve));
  const srv: Server = createServer({ pauseOnConnect: options.pauseOnConnect ?? false }, (s) => {
    peers.add(s);
    accept(s);
  });
  await new Promise<void>((resolve) => srv.listen(path, resolve));
  t.after(() => {
    for (const p of peers) p.destroy();
    if (srv.listening) srv.close();
  });
  return { path, srv, connection };
}

function closeServer(srv: Server): Promise<void> {
  return new Promise((resolve) => srv.close(() => resolve()));
}

// ---- identity and open errors ------------------------------------------------------------------------------

test('device identity: type 3, two queues, no features; config is struct virtio_console_config', () => {
  const path = join(dir, 'identity.log');
  const handle = openConsole({ path });
  assert.deepEqual(structuredClone(handle), handle, 'the handle crosses to the I/O worker by postMessage');
  assert.equal(handle.sink, 'file');
  const device = new VirtioConsole(handle);
  assert.equal(device.info.deviceType, 3);
  assert.equal(device.info.features, 0n, 'neither F_SIZE, F_MULTIPORT nor F_EMERG_WRITE');
  assert.deepEqual(device.info.queueSizes, [256, 256]);
  assert.equal(device.info.configSize, CONSOLE_CONFIG_SIZE);
  const config = device.configBytes();
  assert.equal(config.length, 12);
  const v = new DataView(config.buffer, config.byteOffset, config.length);
  assert.deepEqual(
    [v.getUint16(0, true), v.getUint16(2, true), v.getUint32(4, true), v.getUint32(8, true)],
    [0, 0, 1, 0],
  );
  device.close();
});

test('openConsole: a file is created, or appended to (never truncated); a UNIX socket is recorded, not connected', async (t) => {
  const path = join(dir, 'append.log');
  writeFileSync(path, 'old contents');
  const handle = openConsole({ path });
  assert.equal(readFileSync(path, 'utf8'), 'old contents', 'not truncated: output is appended');
  assert.equal(handle.sink, 'file');
  if (handle.sink === 'file') assert.ok(fstatSync(handle.fd).isFile());
  new VirtioConsole(handle).close();

  const s = await server(t, 'record.sock');
  let connected = false;
  s.srv.on('connection', () => (connected = true));
  const sock = openConsole({ path: s.path });
  assert.deepEqual(sock, { kind: 'console', sink: 'socket', path: s.path });
  new VirtioConsole(sock); // constructing has no side effects
  await sleep(20);
  assert.equal(connected, false, 'nothing connects before activate()');
  await closeServer(s.srv);
});

test('openConsole: paths the user can fix are a DeviceOpenError with one clear line', () => {
  const fileInTheWay = join(dir, 'plain-file');
  writeFileSync(fileInTheWay, '');
  const fifo = join(dir, 'fifo');
  execFileSync('mkfifo', [fifo]);
  const cases: [string, RegExp][] = [
    ['', /no path given/],
    [dir, /is a directory/],
    [
      join(dir, 'missing', 'console.log'),
      /cannot create .*missing\/console\.log: the directory .*missing does not exist/,
    ],
    [join(fileInTheWay, 'console.log'), /a component of the path is not a directory/],
    [fifo, /is a FIFO, not a regular file or a UNIX socket/],
    ['/dev/null', /is a character device/],
    ['a\0b', /NUL byte/],
  ];
  for (const [path, message] of cases) {
    assert.throws(
      () => openConsole({ path }),
      (e: unknown) => {
        assert.ok(e instanceof DeviceOpenError, `${JSON.stringify(path)}: ${String(e)}`);
        assert.match(e.message, message);
        assert.doesNotMatch(e.message, /\n/, 'one line');
        return true;
      },
    );
  }
});

test('openConsole: permission denied', () => {
  const locked = join(dir, 'locked');
  mkdirSync(locked, { mode: 0o555 });
  chmodSync(locked, 0o555);
  const attempt = (): void => void openConsole({ path: join(locked, 'console.log') });
  const asRoot = process.getuid?.() === 0;
  // Root ignores file modes: drop to nobody's effective uid for the attempt (this file runs in its own process).
  if (asRoot) process.seteuid!(65534);
  try {
    assert.throws(attempt, (e: unknown) => {
      assert.ok(e instanceof DeviceOpenError, String(e));
      assert.match(e.message, /^console: cannot create .*locked\/console\.log: permission denied$/);
      return true;
    });
  } finally {
    if (asRoot) process.seteuid!(0);
  }
});

// ---- transmitq to a file -----------------------------------------------------------------------------------

test('guest output lands in the file in ring order, across many chains, buffers and turns', async (t) => {
  const path = join(dir, 'order.log');
  const h = harness(t, openConsole({ path }), 512 * 1024);
  const expected: Uint8Array[] = [];
  // Rounds of chains: 1–3 readable buffers each, some in indirect tables; the 200-chain round spans turns.
  for (const [round, count] of [
    [0, 10],
    [1, 200],
    [2, 37],
  ]) {
    h.tx.resetHeap();
    for (let i = 0; i < count; i++) {
      const data = text(`round ${round} chain ${i}: ${'x'.repeat((i * 7) % 50)}\n`);
      expected.push(data);
      const pieces = 1 + (i % 3);
      // The big round puts every multi-buffer chain in a table: 200 chains must fit the 256 descriptors.
      transmit(h.tx, data, pieces, count > 100 ? pieces > 1 : i % 5 === 4);
    }
    h.device.queueNotified(1);
    if (count > CONSOLE_TURN_CHAINS) assert.equal(h.tx.usedIdx - expected.length + count, CONSOLE_TURN_CHAINS);
    await waitFor(() => h.tx.usedIdx === expected.length, `round ${round}`);
    const used = h.tx.takeUsed();
    assert.equal(used.length, count);
    assert.ok(
      used.every((u) => u.len === 0),
      'nothing is written into a transmit buffer',
    );
  }
  assert.deepEqual(readFileSync(path), concat(expected));
  assert.ok(
    h.interrupts.every((q) => q === 1),
    'interrupts on the transmitq',
  );
  assert.deepEqual(h.resets, []);
  h.device.close();
});

test('hostile transmit chains: writable-only, huge, readable receive buffers, buffers outside RAM', async (t) => {
  const path = join(dir, 'hostile.log');
  const h = harness(t, openConsole({ path }), 2 * MIB);
  // A transmit chain with only a writable buffer (against §5.3.6.1): nothing to send, used with length 0.
  const writableOnly = h.tx.addChain([{ len: 4096, writable: true }]);
  // 24 descriptors naming the same 1 MiB: 24 MiB readable; only CONSOLE_TX_CHAIN_MAX bytes are taken.
  const mib = h.tx.alloc(MIB);
  const pattern = randomBytes(MIB);
  memory.write(mib, pattern);
  const huge = h.tx.addChain(
    Array.from({ length: 24 }, () => ({ len: MIB, gpa: mib })),
    { indirect: true },
  );
  const after = text('after the huge chain\n');
  transmit(h.tx, after);
  h.device.queueNotified(1);
  await waitFor(() => h.tx.usedIdx === 3, 'three chains used');
  assert.deepEqual(h.tx.takeUsed().slice(0, 2), [
    { id: writableOnly, len: 0 },
    { id: huge, len: 0 },
  ]);
  const file = readFileSync(path);
  assert.equal(file.length, CONSOLE_TX_CHAIN_MAX + after.length, 'a chain is bounded');
  assert.ok(file.subarray(0, CONSOLE_TX_CHAIN_MAX).equals(pattern.subarray(0, CONSOLE_TX_CHAIN_MAX)));
  assert.ok(file.subarray(CONSOLE_TX_CHAIN_MAX).equals(Buffer.from(after)), 'and the next chain follows it');
  assert.deepEqual(h.resets, []);

  // A buffer outside guest RAM: the chains before it are sent and used, then needsReset; nothing throws.
  const before = text('before the bad chain\n');
  transmit(h.tx, before);
  h.tx.addChain([{ len: 16, gpa: 64 * MIB }]);
  transmit(h.tx, text('never sent\n'));
  assert.doesNotThrow(() => h.device.queueNotified(1));
  assert.equal(h.resets.length, 1);
  assert.match(h.resets[0], /^transmitq: .*not inside guest RAM/);
  assert.equal(h.tx.usedIdx, 4, 'the good chain before it was used');
  assert.equal(h.interrupts.at(-1), 1, 'and signalled');
  h.device.queueNotified(1);
  await sleep(10);
  assert.ok(readFileSync(path).subarray(-before.length).equals(Buffer.from(before)), 'nothing after the reset');
  h.device.close();
});

test('reset mid-stream: no transmit chain is used after reset(); a new activation serves again', async (t) => {
  const path = join(dir, 'reset.log');
  const h = harness(t, openConsole({ path }));
  const chunks = Array.from({ length: 150 }, (_, i) => text(`line ${i}\n`));
  for (const c of chunks) transmit(h.tx, c);
  h.device.queueNotified(1);
  assert.equal(h.tx.usedIdx, CONSOLE_TURN_CHAINS, 'a continuation is pending');
  h.device.reset();
  h.device.queueNotified(1); // a late kick
  await sleep(20);
  assert.equal(h.tx.usedIdx, CONSOLE_TURN_CHAINS, 'no used entry after reset');
  assert.deepEqual(readFileSync(path), concat(chunks.slice(0, CONSOLE_TURN_CHAINS)), 'no output after reset');
  // The driver sets the device up again on fresh rings.
  h.rx = driverAt(16, 16 * 1024);
  h.tx = driverAt(16, 16 * 1024);
  activate(h);
  transmit(h.tx, text('after reset\n'));
  h.device.queueNotified(1);
  assert.equal(h.tx.usedIdx, 1);
  assert.ok(
    readFileSync(path)
      .toString()
      .endsWith(`line ${CONSOLE_TURN_CHAINS - 1}\nafter reset\n`),
  );
  h.device.close();
  assert.throws(() => {
    if (h.device.handle.sink === 'file') fstatSync(h.device.handle.fd);
  }, /EBADF/);
});

// ---- a UNIX socket, both ways ------------------------------------------------------------------------------

test('socket: host input reaches the receive buffers in order, guest output reaches the host', async (t) => {
  const s = await server(t, 'both.sock');
  const h = harness(t, openConsole({ path: s.path }));
  const peer = await s.connection;
  const received: Buffer[] = [];
  peer.on('data', (b: Buffer) => received.push(b));

  // Receive buffers: a 5-byte one, a hostile readable-only one (used empty), then two larger ones.
  const small = postReceive(h.rx, 1, 5);
  const readableOnly = h.rx.addChain([{ len: 32, data: new Uint8Array(32) }]);
  const large = postReceive(h.rx, 2, 64);
  h.device.queueNotified(0);
  assert.equal(h.rx.usedIdx, 0, 'nothing to deliver yet: the buffers wait');
  const message = 'hello from the host, in order\n';
  peer.write(message.slice(0, 12));
  await sleep(5);
  peer.write(message.slice(12));
  const addresses = new Map([...small, ...large]);
  const used: { id: number; len: number }[] = [];
  let got = '';
  while (got.length < message.length) {
    const seen = h.rx.usedIdx;
    for (const u of h.rx.takeUsed()) {
      used.push(u);
      if (u.id === readableOnly) assert.equal(u.len, 0, 'a receive chain without a writable part comes back empty');
      else got += Buffer.from(memory.read(addresses.get(u.id)!, u.len)).toString();
    }
    if (got.length < message.length) await waitFor(() => h.rx.usedIdx !== seen, 'input delivered');
  }
  assert.equal(got, message);
  assert.equal(used[0].len, 5, 'the first buffer is filled completely');
  assert.ok(h.interrupts.includes(0));

  const out = ['guest says hi\n', 'and again\n'].map(text);
  out.forEach((o, i) => transmit(h.tx, o, i + 1));
  h.device.queueNotified(1);
  await waitFor(() => Buffer.concat(received).length === 24, 'output at the host');
  assert.equal(Buffer.concat(received).toString(), 'guest says hi\nand again\n');
  assert.deepEqual(h.resets, []);

  const ended = new Promise<void>((resolve) => peer.on('end', resolve));
  h.device.close();
  await ended;
  await closeServer(s.srv);
});

test('socket: input is bounded while the guest takes none (the socket is paused), then arrives intact', async (t) => {
  const s = await server(t, 'backpressure-rx.sock');
  const h = harness(t, openConsole({ path: s.path }), 64 * 1024, 2 * MIB);
  const peer = await s.connection;
  const total = 1 * MIB;
  const input = randomBytes(total);
  let flushed = false;
  peer.write(input, () => (flushed = true));
  await waitFor(() => h.device.inputPaused, 'the socket paused');
  await sleep(50);
  const held = h.device.bufferedInput;
  assert.ok(held >= CONSOLE_RX_BUFFER_LIMIT, `${held} bytes held`);
  assert.ok(held <= CONSOLE_RX_BUFFER_LIMIT + 64 * 1024, `held input is bounded (${held} bytes)`);
  assert.equal(flushed, false, 'the host is held back, not its data dropped');
  await sleep(30);
  assert.equal(h.device.bufferedInput, held, 'nothing more is read while paused');

  // The guest posts 128 buffers of 4 KiB at a time and takes them back as the device fills them.
  const parts: Buffer[] = [];
  let got = 0;
  while (got < total) {
    h.rx.resetHeap(); // every buffer of the previous round came back
    const posted = postReceive(h.rx, 128, 4096);
    h.device.queueNotified(0);
    let taken = 0;
    while (taken < 128 && got < total) {
      const seen = h.rx.usedIdx;
      for (const u of h.rx.takeUsed()) {
        parts.push(Buffer.from(memory.read(posted.get(u.id)!, u.len)));
        got += u.len;
        taken++;
      }
      if (taken < 128 && got < total) await waitFor(() => h.rx.usedIdx !== seen, `input after ${got} bytes`);
    }
  }
  assert.equal(got, total);
  assert.ok(Buffer.concat(parts).equals(input), 'every byte, in order');
  await waitFor(() => flushed, 'the host write completed');
  assert.equal(h.device.inputPaused, false);
  h.device.close();
  await closeServer(s.srv);
});

test('socket: guest output waits while the host does not read, then arrives complete and in order', async (t) => {
  const s = await server(t, 'backpressure-tx.sock', { pauseOnConnect: true });
  const h = harness(t, openConsole({ path: s.path }), 4 * MIB);
  const peer = await s.connection;
  const chains = 48;
  const chunk = 64 * 1024;
  const output = randomBytes(chains * chunk);
  for (let i = 0; i < chains; i++) transmit(h.tx, output.subarray(i * chunk, (i + 1) * chunk), 2);
  h.device.queueNotified(1);
  await sleep(100);
  const stalled = h.tx.usedIdx;
  assert.ok(stalled < chains, `the device stopped taking output (${stalled} of ${chains} chains used)`);
  await sleep(30);
  assert.equal(h.tx.usedIdx, stalled, 'and does not spin');
  const received: Buffer[] = [];
  peer.on('data', (b: Buffer) => received.push(b));
  peer.resume();
  await waitFor(() => h.tx.usedIdx === chains, 'all chains used after the host reads');
  await waitFor(() => Buffer.concat(received).length === output.length, 'all output at the host');
  assert.ok(Buffer.concat(received).equals(output), 'in order');
  h.device.close();
  await closeServer(s.srv);
});

test('socket: a connection that fails is logged and guest output is consumed, so the guest never stalls', async (t) => {
  const s = await server(t, 'gone.sock');
  const handle = openConsole({ path: s.path });
  await closeServer(s.srv); // the socket disappears between open and activate
  const h = harness(t, handle);
  await waitFor(() => h.logs.length > 0, 'a log line');
  assert.match(h.logs[0], /gone\.sock: .*guest output is dropped from now on/);
  for (let i = 0; i < 5; i++) transmit(h.tx, text(`lost ${i}\n`));
  h.device.queueNotified(1);
  await waitFor(() => h.tx.usedIdx === 5, 'chains consumed');
  assert.deepEqual(h.resets, []);
  h.device.close();
});

test('socket: host input that arrives during a driver reset is kept for the next activation', async (t) => {
  const s = await server(t, 'reset.sock');
  const h = harness(t, openConsole({ path: s.path }));
  const peer = await s.connection;
  h.device.reset();
  peer.write('typed while the guest rebooted\n');
  await waitFor(() => h.device.bufferedInput === 31, 'input buffered');
  h.rx = driverAt(16, 16 * 1024);
  h.tx = driverAt(16, 16 * 1024);
  activate(h);
  const posted = postReceive(h.rx, 1, 64);
  h.device.queueNotified(0);
  const [u] = h.rx.takeUsed();
  assert.equal(Buffer.from(memory.read(posted.get(u.id)!, u.len)).toString(), 'typed while the guest rebooted\n');
  h.device.close();
  await closeServer(s.srv);
});

test('socket: input spread over many small receive buffers continues across turns', async (t) => {
  const s = await server(t, 'turns.sock');
  const h = harness(t, openConsole({ path: s.path }));
  const peer = await s.connection;
  const count = 200;
  const posted = postReceive(h.rx, count, 1);
  h.device.queueNotified(0);
  const input = randomBytes(count);
  peer.write(input);
  // One turn fills at most CONSOLE_TURN_CHAINS buffers; the rest must follow without another kick or read.
  await waitFor(() => h.rx.usedIdx === count, 'every buffer filled');
  const used = h.rx.takeUsed();
  assert.ok(used.every((u) => u.len === 1));
  const got = Buffer.from(used.map((u) => memory.readU8(posted.get(u.id)!)));
  assert.ok(got.equals(input), 'in order');
  const batches = h.interrupts.filter((q) => q === 0).length;
  assert.ok(batches >= Math.ceil(count / CONSOLE_TURN_CHAINS), `${batches} batches`);
  assert.equal(h.device.bufferedInput, 0);
});
