// virtio-net (virtio 1.2 §5.1) driven by a fake guest driver over real host backends: a UNIX stream socket this
// test serves as "the network" (QEMU stream framing), passt when installed, and a real TAP when running as root
// with iproute2. Checks the header handling both ways, mergeable buffers, framing, back-pressure, hostile chains
// and resets.
import { test as nodeTest, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GuestMemory } from '../../src/base/guest-memory.js';
import { MIB } from '../../src/base/units.js';
import { SplitQueue } from '../../src/devices/virtio/queue.js';
import type { VirtioQueueContext } from '../../src/devices/virtio/device.js';
import { DeviceOpenError } from '../../src/devices/model.js';
import { VIRTIO_F_VERSION_1 } from '../../src/devices/virtio/pci-transport.js';
import {
  NET_CONFIG_SIZE,
  VIRTIO_NET_F_GUEST_CSUM,
  openNet,
  parseMac,
  VIRTIO_NET_F_CSUM,
  VIRTIO_NET_F_MAC,
  VIRTIO_NET_F_MRG_RXBUF,
  VIRTIO_NET_F_MTU,
  VIRTIO_NET_F_STATUS,
  VirtioNet,
  type NetHandle,
} from '../../src/devices/virtio/net.js';
import { encodeFrame, FrameDecoder } from '../../src/devices/net/stream-socket.js';
import { NET_MAX_FRAME } from '../../src/devices/net/link.js';
import { FakeDriver } from '../support/virtq-driver.js';

const memory = GuestMemory.allocateRanges([{ gpa: 0, size: 48 * MIB }]);
const HDR = 12;
const MRG = (1n << VIRTIO_F_VERSION_1) | (1n << VIRTIO_NET_F_MRG_RXBUF);
const PLAIN = 1n << VIRTIO_F_VERSION_1;

/** Every test here gets a deadline: a device that stops answering fails the test instead of hanging the run. */
function test(name: string, fn: (t: TestContext) => void | Promise<void>): void {
  nodeTest(name, { timeout: 300_000 }, fn);
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function until(what: string, check: () => boolean, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(2);
  }
}

/** A frame whose bytes are a recognisable pattern: byte i = (seed + i) & 0xff. */
function pattern(length: number, seed = 0): Uint8Array {
  return Uint8Array.from({ length }, (_, i) => (seed + i) & 0xff);
}

/** A UNIX stream server speaking the length-prefixed framing: the test's "network". */
class Network {
  readonly dir = mkdtempSync(join(tmpdir(), 'partita-net-test-'));
  readonly path = join(this.dir, 'net.sock');
  readonly frames: Uint8Array[] = [];
  peer: Socket | undefined;
  private readonly server: Server;
  private readonly decoder = new FrameDecoder();

  private constructor() {
    this.server = createServer((socket) => {
      this.peer = socket;
      socket.on('data', (chunk) => this.decoder.push(chunk, (f) => this.frames.push(f)));
      socket.on('error', () => undefined);
    });
  }

  static async start(): Promise<Network> {
    const n = new Network();
    await new Promise<void>((resolve) => n.server.listen(n.path, resolve));
    return n;
  }

  async connected(): Promise<Socket> {
    await until('the device to connect', () => this.peer !== undefined);
    return this.peer!;
  }

  send(...frames: Uint8Array[]): void {
    this.peer!.write(Buffer.concat(frames.map((f) => encodeFrame(f))));
  }

  async close(): Promise<void> {
    this.peer?.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    rmSync(this.dir, { recursive: true, force: true });
  }
}

interface Guest {
  readonly rx: FakeDriver;
  readonly tx: FakeDriver;
  readonly interrupts: number[];
  readonly resets: string[];
  readonly ctx: VirtioQueueContext;
}

let nextBase = 0;
/** Lays out fresh receive and transmit queues (each with an 8 MiB heap) and activates the device on them. */
function activate(net: VirtioNet, features: bigint): Guest {
  const base = (nextBase++ % 2) * 20 * MIB;
  const rx = FakeDriver.at(memory, 256, base, 8 * MIB);
  const tx = FakeDriver.at(memory, 256, base + 10 * MIB, 8 * MIB);
  const queue = (d: FakeDriver): SplitQueue => {
    const q = SplitQueue.create(memory, d.config());
    if (!(q instanceof SplitQueue)) throw q;
    return q;
  };
  const interrupts: number[] = [];
  const resets: string[] = [];
  const ctx: VirtioQueueContext = {
    memory,
    queues: [queue(rx), queue(tx)],
    features,
    interrupt: (q) => void interrupts.push(q),
    needsReset: (reason) => void resets.push(reason),
  };
  net.activate(ctx);
  return { rx, tx, interrupts, resets, ctx };
}

/** Posts a transmit chain: header (given or zero) + frame, split across descriptors at `cuts`. */
function postTx(g: Guest, frame: Uint8Array, cuts: number[] = [HDR], header = new Uint8Array(HDR)): number {
  const packet = new Uint8Array(HDR + frame.length);
  packet.set(header);
  packet.set(frame, HDR);
  const bounds = [0, ...cuts.filter((c) => c > 0 && c < packet.length), packet.length];
  const buffers = bounds.slice(1).map((end, i) => ({ len: end - bounds[i], data: packet.subarray(bounds[i], end) }));
  return g.tx.addChain(buffers);
}

/** Posts a receive chain of writable buffers; returns the head and the buffers' addresses. */
function postRx(g: Guest, ...sizes: number[]): { head: number; gpas: number[] } {
  const gpas = sizes.map((s) => g.rx.alloc(s));
  const head = g.rx.addChain(sizes.map((len, i) => ({ len, writable: true, gpa: gpas[i] })));
  return { head, gpas };
}

async function socketDevice(
  features = MRG,
  mac?: string,
): Promise<{ net: VirtioNet; g: Guest; network: Network; logs: string[]; peer: Socket }> {
  const network = await Network.start();
  const logs: string[] = [];
  const net = new VirtioNet(openNet({ backend: { kind: 'socket', path: network.path }, mac }), (m) => logs.push(m));
  const g = activate(net, features);
  const peer = await network.connected();
  return { net, g, network, logs, peer };
}

test('device identity, features and config space: MAC, link up, one queue pair, MTU 1500', () => {
  const dir = mkdtempSync(join(tmpdir(), 'partita-net-test-'));
  const path = join(dir, 'net.sock');
  const server = createServer();
  return new Promise<void>((resolve) => server.listen(path, resolve)).then(() => {
    try {
      const handle = openNet({ backend: { kind: 'socket', path }, mac: '52:54:00:AB:cd:01' });
      assert.equal(handle.mac, '52:54:00:ab:cd:01', 'normalised to lower case');
      assert.deepEqual(structuredClone(handle), handle, 'the handle survives postMessage');
      const net = new VirtioNet(handle);
      assert.equal(net.info.deviceType, 1);
      assert.equal(net.info.classCode, 0x020000);
      assert.deepEqual(net.info.queueSizes, [256, 256]);
      assert.equal(net.info.configSize, NET_CONFIG_SIZE);
      const expected =
        (1n << VIRTIO_NET_F_MAC) |
        (1n << VIRTIO_NET_F_STATUS) |
        (1n << VIRTIO_NET_F_MTU) |
        (1n << VIRTIO_NET_F_MRG_RXBUF);
      assert.equal(net.info.features, expected, 'no offloads over a plain-frame backend');
      assert.deepEqual(Array.from(net.configBytes()), [
        0x52,
        0x54,
        0x00,
        0xab,
        0xcd,
        0x01,
        1,
        0,
        1,
        0,
        1500 & 0xff,
        1500 >> 8,
      ]);
      net.close();
    } finally {
      server.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

test('MAC addresses: validated when given, random 52:54:00 unicast by default', () => {
  for (const bad of [
    '',
    '52:54:00:12:34',
    '52:54:00:12:34:56:78',
    '52-54-00-12-34-56',
    'zz:54:00:12:34:56',
    '5:54:00:12:34:56',
  ]) {
    assert.throws(() => parseMac(bad), DeviceOpenError, bad);
  }
  assert.throws(() => parseMac('01:00:5e:00:00:01'), /multicast/);
  assert.throws(() => parseMac('ff:ff:ff:ff:ff:ff'), /multicast/);
  assert.throws(() => parseMac('00:00:00:00:00:00'), /unicast/);
  assert.throws(
    () => openNet({ backend: { kind: 'socket', path: '/nonexistent' }, mac: '03:00:00:00:00:01' }),
    (e: unknown) => e instanceof DeviceOpenError && /multicast/.test(e.message),
    'the MAC is checked before the backend is opened',
  );
  const dir = mkdtempSync(join(tmpdir(), 'partita-net-test-'));
  const path = join(dir, 'net.sock');
  const server = createServer();
  return new Promise<void>((resolve) => server.listen(path, resolve)).then(() => {
    try {
      const seen = new Set<string>();
      for (let i = 0; i < 8; i++) {
        const { mac } = openNet({ backend: { kind: 'socket', path } });
        assert.match(mac, /^52:54:00(:[0-9a-f]{2}){3}$/);
        assert.equal(parseMac(mac)[0] & 1, 0);
        seen.add(mac);
      }
      assert.ok(seen.size > 1, 'random');
    } finally {
      server.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

test('socket backend: a missing path or a non-socket is a DeviceOpenError', () => {
  const dir = mkdtempSync(join(tmpdir(), 'partita-net-test-'));
  try {
    assert.throws(
      () => openNet({ backend: { kind: 'socket', path: join(dir, 'absent.sock') } }),
      (e: unknown) => e instanceof DeviceOpenError && /does not exist/.test(e.message),
    );
    writeFileSync(join(dir, 'file'), 'x');
    assert.throws(
      () => openNet({ backend: { kind: 'socket', path: join(dir, 'file') } }),
      (e: unknown) => e instanceof DeviceOpenError && /not a UNIX socket/.test(e.message),
    );
    assert.throws(
      () => openNet({ backend: { kind: 'socket', path: join(dir, 'x'.repeat(120)) } }),
      (e: unknown) => e instanceof DeviceOpenError && /longer than/.test(e.message),
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('FrameDecoder: byte-at-a-time, coalesced, empty frames skipped, oversized length is a protocol error', () => {
  const frames = [pattern(60, 1), pattern(1, 2), pattern(1514, 3), pattern(NET_MAX_FRAME, 4)];
  const wire = Buffer.concat([
    encodeFrame(frames[0]),
    encodeFrame(new Uint8Array(0)),
    ...frames.slice(1).map(encodeFrame),
  ]);
  for (const step of [1, 3, 7, 4096, wire.length]) {
    const d = new FrameDecoder();
    const out: Uint8Array[] = [];
    for (let at = 0; at < wire.length; at += step) {
      assert.equal(
        d.push(wire.subarray(at, at + step), (f) => out.push(f)),
        undefined,
      );
    }
    assert.deepEqual(out, frames, `chunks of ${step}`);
  }
  const d = new FrameDecoder();
  const out: Uint8Array[] = [];
  const bad = Buffer.concat([encodeFrame(pattern(10)), Buffer.from([0, 1, 0, 0x20]), Buffer.alloc(100)]);
  assert.match(d.push(bad, (f) => out.push(f)) ?? '', /frame length of 65568 bytes/);
  assert.equal(out.length, 1, 'frames before the bad length are delivered');
  assert.match(d.push(encodeFrame(pattern(10)), (f) => out.push(f)) ?? '', /65568/, 'stays failed');
  assert.equal(out.length, 1);
});

test('transmit: the frame reaches the network without the virtio-net header, length-prefixed; used length 0', async () => {
  const { net, g, network } = await socketDevice();
  try {
    const frames = [pattern(60, 10), pattern(1514, 20), pattern(100, 30)];
    const heads = [
      postTx(g, frames[0]), // header and frame in separate descriptors, as Linux does
      postTx(g, frames[1], [5, 12, 700]), // header split, frame split
      postTx(g, frames[2], [], Uint8Array.from([1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])), // one descriptor; NEEDS_CSUM ignored
    ];
    net.queueNotified(1);
    assert.deepEqual(
      g.tx.takeUsed(),
      heads.map((id) => ({ id, len: 0 })),
    );
    assert.ok(g.interrupts.includes(1), 'transmit interrupt');
    await until('three frames at the network', () => network.frames.length === 3);
    assert.deepEqual(network.frames, frames);
    assert.equal(net.stats.txFrames, 3);
    assert.equal(net.stats.txBytes, 60 + 1514 + 100);
    assert.equal(net.stats.txDropped, 0);
    // Oversized (beyond header + the largest frame) and empty frames are dropped and counted, still used.
    const big = g.tx.alloc(NET_MAX_FRAME + 1);
    const oversized = g.tx.addChain([
      { len: HDR, data: new Uint8Array(HDR) },
      { len: NET_MAX_FRAME + 1, gpa: big },
    ]);
    const empty = g.tx.addChain([{ len: HDR, data: new Uint8Array(HDR) }]);
    net.queueNotified(1);
    assert.deepEqual(g.tx.takeUsed(), [
      { id: oversized, len: 0 },
      { id: empty, len: 0 },
    ]);
    assert.equal(net.stats.txDropped, 2);
    await sleep(20);
    assert.equal(network.frames.length, 3);
    assert.deepEqual(g.resets, []);
  } finally {
    net.close();
    await network.close();
  }
});

test('transmit before the connection is up: the frames are kept and sent once connected', async () => {
  const network = await Network.start();
  const net = new VirtioNet(openNet({ backend: { kind: 'socket', path: network.path } }));
  try {
    const g = activate(net, MRG);
    const frames = [pattern(342, 1), pattern(60, 2)]; // e.g. the guest's first DHCPDISCOVER, right at link-up
    const heads = frames.map((f) => postTx(g, f));
    net.queueNotified(1);
    assert.deepEqual(
      g.tx.takeUsed(),
      heads.map((id) => ({ id, len: 0 })),
    );
    await until('both frames at the network', () => network.frames.length === 2);
    assert.deepEqual(network.frames, frames);
    assert.equal(net.stats.txDropped, 0);
  } finally {
    net.close();
    await network.close();
  }
});

test('receive: a frame from the network lands after a 12-byte header (num_buffers 1) with the right used length', async () => {
  for (const features of [MRG, PLAIN]) {
    const { net, g, network } = await socketDevice(features);
    try {
      const a = postRx(g, 2048);
      const b = postRx(g, 1526);
      net.queueNotified(0);
      assert.deepEqual(g.rx.takeUsed(), [], 'nothing to receive yet');
      const frame = pattern(98, 7);
      network.send(frame);
      await until('the frame to be used', () => g.rx.usedIdx === 1);
      assert.deepEqual(g.rx.takeUsed(), [{ id: a.head, len: HDR + 98 }]);
      assert.deepEqual(Array.from(memory.read(a.gpas[0], HDR)), [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
      assert.deepEqual(memory.read(a.gpas[0] + HDR, 98), frame);
      assert.ok(g.interrupts.includes(0), 'receive interrupt');
      const full = pattern(1514, 9); // exactly fills 1526 bytes
      network.send(full);
      await until('the second frame', () => g.rx.usedIdx === 2);
      assert.deepEqual(g.rx.takeUsed(), [{ id: b.head, len: 1526 }]);
      assert.deepEqual(memory.read(b.gpas[0] + HDR, 1514), full);
      assert.equal(net.stats.rxFrames, 2);
      assert.equal(net.stats.rxBytes, 98 + 1514);
    } finally {
      net.close();
      await network.close();
    }
  }
});

test('receive: frames that arrive before any buffer is posted are delivered, in order, after the rx kick', async () => {
  const { net, g, network } = await socketDevice();
  try {
    const frames = [pattern(64, 1), pattern(200, 2), pattern(1000, 3)];
    network.send(frames[0]);
    network.send(frames[1], frames[2]);
    await until('three frames queued', () => net.rxQueuedFrames === 3);
    assert.equal(g.rx.usedIdx, 0);
    const posted = [postRx(g, 1600), postRx(g, 1600), postRx(g, 1600)];
    net.queueNotified(0);
    const used = g.rx.takeUsed();
    assert.deepEqual(
      used,
      posted.map((p, i) => ({ id: p.head, len: HDR + frames[i].length })),
    );
    posted.forEach((p, i) => assert.deepEqual(memory.read(p.gpas[0] + HDR, frames[i].length), frames[i]));
    assert.equal(net.rxQueuedFrames, 0);
  } finally {
    net.close();
    await network.close();
  }
});

test('stream framing from the network: split across writes and coalesced in one write', async () => {
  const { net, g, network, peer } = await socketDevice();
  try {
    for (let i = 0; i < 8; i++) postRx(g, 2048);
    const frames = [pattern(1500, 1), pattern(60, 2), pattern(61, 3), pattern(62, 4), pattern(700, 5)];
    const first = encodeFrame(frames[0]);
    peer.write(first.subarray(0, 2)); // half a length word
    await sleep(20);
    peer.write(first.subarray(2, 600)); // the rest of it and part of the frame
    await sleep(20);
    peer.write(Buffer.concat([first.subarray(600), encodeFrame(frames[1]), encodeFrame(frames[2])])); // coalesced
    await sleep(20);
    const last = Buffer.concat([encodeFrame(frames[3]), encodeFrame(frames[4])]);
    peer.write(last.subarray(0, 70));
    await sleep(20);
    peer.write(last.subarray(70));
    await until('five frames', () => g.rx.usedIdx === 5);
    const used = g.rx.takeUsed();
    assert.deepEqual(
      used.map((u) => u.len),
      frames.map((f) => HDR + f.length),
    );
    assert.equal(net.stats.rxFrames, 5);
  } finally {
    net.close();
    await network.close();
  }
});

test('mergeable receive buffers: a frame spans chains (num_buffers), leftovers wait for the next frame', async () => {
  const { net, g, network } = await socketDevice(MRG);
  try {
    const chains = [postRx(g, 1024), postRx(g, 1024), postRx(g, 1024), postRx(g, 1024)];
    const big = pattern(3000, 5);
    network.send(big);
    await until('the big frame', () => g.rx.usedIdx === 3);
    assert.deepEqual(g.rx.takeUsed(), [
      { id: chains[0].head, len: 1024 },
      { id: chains[1].head, len: 1024 },
      { id: chains[2].head, len: 3012 - 2048 },
    ]);
    const header = memory.read(chains[0].gpas[0], HDR);
    assert.equal(header[10] | (header[11] << 8), 3, 'num_buffers');
    const got = new Uint8Array(3000);
    got.set(memory.read(chains[0].gpas[0] + HDR, 1024 - HDR), 0);
    got.set(memory.read(chains[1].gpas[0], 1024), 1024 - HDR);
    got.set(memory.read(chains[2].gpas[0], 3012 - 2048), 2048 - HDR);
    assert.deepEqual(got, big);
    const small = pattern(100, 6);
    network.send(small);
    await until('the small frame', () => g.rx.usedIdx === 4);
    assert.deepEqual(g.rx.takeUsed(), [{ id: chains[3].head, len: HDR + 100 }]);
    assert.equal(memory.readU16(chains[3].gpas[0] + 10), 1);
    // A frame larger than what is posted waits for more buffers rather than being cut.
    const more = [postRx(g, 1024)];
    network.send(pattern(2500, 8));
    await sleep(30);
    assert.equal(g.rx.usedIdx, 4, 'one 1024-byte buffer is not enough');
    more.push(postRx(g, 1024), postRx(g, 1024));
    net.queueNotified(0);
    assert.deepEqual(
      g.rx.takeUsed().map((u) => u.len),
      [1024, 1024, 2512 - 2048],
    );
  } finally {
    net.close();
    await network.close();
  }
});

test('without MRG_RXBUF a frame larger than the posted chain is dropped and counted; the chain takes the next', async () => {
  const { net, g, network } = await socketDevice(PLAIN);
  try {
    const chain = postRx(g, 512, 512); // one chain of two buffers: 1024 bytes
    network.send(pattern(1100, 1));
    await until('the drop', () => net.stats.rxDropped === 1);
    assert.equal(g.rx.usedIdx, 0);
    const frame = pattern(1012, 2); // header + frame = exactly 1024, across both buffers
    network.send(frame);
    await until('the frame', () => g.rx.usedIdx === 1);
    assert.deepEqual(g.rx.takeUsed(), [{ id: chain.head, len: 1024 }]);
    assert.equal(memory.readU16(chain.gpas[0] + 10), 1, 'num_buffers is 1');
    const got = new Uint8Array(1012);
    got.set(memory.read(chain.gpas[0] + HDR, 500), 0);
    got.set(memory.read(chain.gpas[1], 512), 500);
    assert.deepEqual(got, frame);
  } finally {
    net.close();
    await network.close();
  }
});

test('a protocol error from the network (length too large) closes the link with a log line; the guest is unharmed', async () => {
  const { net, g, network, logs, peer } = await socketDevice();
  try {
    postRx(g, 2048);
    const closed = new Promise<void>((resolve) => peer.on('close', () => resolve()));
    peer.write(Buffer.concat([encodeFrame(pattern(60)), Buffer.from([0x7f, 0xff, 0xff, 0xff]), Buffer.alloc(64)]));
    await closed;
    await until('the log line', () => logs.length > 0);
    assert.match(logs.join('\n'), /protocol error: the peer sent a frame length of 2147483647 bytes/);
    assert.equal(g.rx.usedIdx, 1, 'the frame before the bad length was delivered');
    const head = postTx(g, pattern(60));
    net.queueNotified(1);
    assert.deepEqual(g.tx.takeUsed(), [{ id: head, len: 0 }], 'transmit still completes (the frame is dropped)');
    assert.equal(net.stats.txDropped, 1);
    assert.deepEqual(g.resets, []);
  } finally {
    net.close();
    await network.close();
  }
});

test('hostile chains: writable transmit buffers, readable or tiny receive buffers, a bad avail idx → needs reset', async () => {
  const { net, g, network } = await socketDevice();
  try {
    // Transmit chain with only device-writable buffers.
    g.tx.addChain([{ len: 64, writable: true }]);
    assert.doesNotThrow(() => net.queueNotified(1));
    assert.equal(g.resets.length, 1);
    assert.match(g.resets[0], /transmitq: chain \d+ has 64 device-writable bytes/);
    assert.equal(g.tx.usedIdx, 0);
    // The driver resets; the device is served again on new queues.
    net.reset();
    let h = activate(net, MRG);
    // Transmit chain shorter than the header.
    h.tx.addChain([{ len: 4, data: pattern(4) }]);
    net.queueNotified(1);
    assert.match(h.resets[0], /transmitq: chain \d+ has 4 bytes, less than the 12-byte header/);
    net.reset();
    h = activate(net, MRG);
    // Receive chain with a device-readable buffer (only popped once a frame needs it).
    h.rx.addChain([
      { len: 64, data: pattern(64) },
      { len: 2048, writable: true },
    ]);
    network.send(pattern(60));
    await until('the reset request', () => h.resets.length === 1);
    assert.match(h.resets[0], /receiveq: chain \d+ has 1 device-readable buffer/);
    assert.equal(h.rx.usedIdx, 0);
    net.reset();
    h = activate(net, MRG);
    // Receive chain too small for the header.
    h.rx.addChain([{ len: 8, writable: true }]);
    network.send(pattern(60));
    await until('the reset request', () => h.resets.length === 1);
    assert.match(h.resets[0], /receiveq: chain \d+ has 8 writable bytes/);
    net.reset();
    h = activate(net, MRG);
    // avail idx far ahead of the queue size.
    h.tx.setAvailIdx(1000);
    net.queueNotified(1);
    assert.match(h.resets[0], /transmitq: avail idx 1000/);
    // After all that, a well-behaved driver still gets service.
    net.reset();
    h = activate(net, MRG);
    const rxChain = postRx(h, 2048);
    const frame = pattern(77, 4);
    network.send(frame);
    await until('a frame after the resets', () => h.rx.usedIdx === 1);
    assert.deepEqual(h.rx.takeUsed(), [{ id: rxChain.head, len: HDR + 77 }]);
    const before = network.frames.length;
    postTx(h, pattern(90, 3));
    net.queueNotified(1);
    await until('a frame out after the resets', () => network.frames.length === before + 1);
    assert.deepEqual(h.resets, []);
  } finally {
    net.close();
    await network.close();
  }
});

test('reset drops queued frames and held chains; the old queues are never touched again', async () => {
  const { net, g, network } = await socketDevice();
  try {
    network.send(pattern(100, 1), pattern(100, 2));
    await until('two queued frames', () => net.rxQueuedFrames === 2);
    net.reset();
    assert.equal(net.rxQueuedFrames, 0);
    // Between reset and the next DRIVER_OK, frames from the network are dropped (no driver, no queue).
    const droppedBefore = net.stats.rxDropped;
    postRx(g, 2048); // on the old queue: must stay untouched
    network.send(pattern(100, 3));
    await until('a drop while reset', () => net.stats.rxDropped === droppedBefore + 1);
    net.queueNotified(0);
    net.queueNotified(1);
    assert.equal(g.rx.usedIdx, 0, 'the old receive queue was not used');
    const h = activate(net, MRG);
    const chain = postRx(h, 2048);
    net.queueNotified(0);
    await sleep(20);
    assert.equal(h.rx.usedIdx, 0, 'frames from before the reset are gone');
    const fresh = pattern(100, 4);
    network.send(fresh);
    await until('the fresh frame', () => h.rx.usedIdx === 1);
    assert.deepEqual(h.rx.takeUsed(), [{ id: chain.head, len: HDR + 100 }]);
    assert.deepEqual(memory.read(chain.gpas[0] + HDR, 100), fresh);
    assert.equal(g.rx.usedIdx, 0);
  } finally {
    net.close();
    await network.close();
  }
});

test('receive back-pressure: a guest slower than the network pauses the socket; nothing is lost or reordered', async () => {
  const { net, g, network } = await socketDevice();
  try {
    // 5000 × 64 bytes on the wire: several socket reads, more than the device's hard cap of queued frames, so
    // without pausing the socket frames would be dropped.
    const total = 5000;
    const frames = Array.from({ length: total }, (_, i) => {
      const f = pattern(60, i);
      f[0] = i & 0xff;
      f[1] = i >> 8;
      return f;
    });
    network.send(...frames);
    await until('the socket to be paused', () => net.stats.rxPauses > 0);
    await sleep(50);
    assert.ok(net.rxQueuedFrames < 2500, `${net.rxQueuedFrames} frames queued: reading stopped`);
    const gpaOf = new Map<number, number>();
    const got: number[] = [];
    const buffers = Array.from({ length: 256 }, () => g.rx.alloc(128));
    const free = [...buffers];
    const deadline = Date.now() + 120_000;
    while (got.length < total && Date.now() < deadline) {
      for (const gpa of free.splice(0, 100)) gpaOf.set(g.rx.addChain([{ len: 128, writable: true, gpa }]), gpa);
      net.queueNotified(0);
      await sleep(1);
      for (const u of g.rx.takeUsed()) {
        const gpa = gpaOf.get(u.id)!;
        assert.equal(u.len, HDR + 60);
        got.push(memory.readU16(gpa + HDR));
        free.push(gpa);
      }
    }
    assert.equal(got.length, total);
    assert.deepEqual(
      got,
      frames.map((_, i) => i),
    );
    assert.equal(net.stats.rxDropped, 0);
  } finally {
    net.close();
    await network.close();
  }
});

test('transmit back-pressure: a network that stops reading stalls the transmit queue until it drains', async () => {
  const { net, g, network, peer } = await socketDevice();
  try {
    peer.pause();
    const payload = g.tx.alloc(60_000);
    memory.write(payload, pattern(60_000, 3));
    const count = 100;
    for (let i = 0; i < count; i++) {
      const header = Uint8Array.from({ length: HDR + 2 }, (_, j) => (j === HDR ? i : 0));
      g.tx.addChain([
        { len: HDR + 2, data: header },
        { len: 60_000, gpa: payload },
      ]);
    }
    net.queueNotified(1);
    const firstBatch = g.tx.takeUsed().length;
    assert.ok(firstBatch < count, `the device stopped at ${firstBatch} frames with the network not reading`);
    await sleep(30);
    assert.equal(g.tx.takeUsed().length, 0, 'and stays stopped while the network does not read');
    peer.resume();
    await until('every frame at the network', () => network.frames.length === count);
    assert.deepEqual(
      network.frames.map((f) => f[0]),
      Array.from({ length: count }, (_, i) => i),
    );
    assert.ok(network.frames.every((f) => f.length === 60_002));
    assert.equal(g.tx.usedIdx, count);
    assert.equal(net.stats.txFrames, count);
  } finally {
    net.close();
    await network.close();
  }
});

// ---- Ethernet / IPv4 helpers for the passt and TAP tests ---------------------------------------------------

const GUEST_MAC = '52:54:00:12:34:56';
const macBytes = (m: string): number[] => m.split(':').map((h) => parseInt(h, 16));
const ipBytes = (ip: string): number[] => ip.split('.').map(Number);

function ipv4Checksum(header: Uint8Array): number {
  let sum = 0;
  for (let i = 0; i < header.length; i += 2) sum += (header[i] << 8) | header[i + 1];
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

function udpFrame(
  dstMac: string,
  srcIp: string,
  dstIp: string,
  sport: number,
  dport: number,
  payload: Uint8Array,
): Uint8Array {
  const f = new Uint8Array(14 + 20 + 8 + payload.length);
  const v = new DataView(f.buffer);
  f.set(macBytes(dstMac), 0);
  f.set(macBytes(GUEST_MAC), 6);
  v.setUint16(12, 0x0800);
  f[14] = 0x45;
  v.setUint16(16, 20 + 8 + payload.length);
  f[22] = 64; // TTL
  f[23] = 17; // UDP
  f.set(ipBytes(srcIp), 26);
  f.set(ipBytes(dstIp), 30);
  v.setUint16(24, ipv4Checksum(f.subarray(14, 34)));
  v.setUint16(34, sport);
  v.setUint16(36, dport);
  v.setUint16(38, 8 + payload.length); // checksum 0: none (allowed over IPv4)
  f.set(payload, 42);
  return f;
}

function arpRequest(senderIp: string, targetIp: string): Uint8Array {
  const f = new Uint8Array(42);
  const v = new DataView(f.buffer);
  f.fill(0xff, 0, 6);
  f.set(macBytes(GUEST_MAC), 6);
  v.setUint16(12, 0x0806);
  v.setUint16(14, 1); // Ethernet
  v.setUint16(16, 0x0800); // IPv4
  f[18] = 6;
  f[19] = 4;
  v.setUint16(20, 1); // request
  f.set(macBytes(GUEST_MAC), 22);
  f.set(ipBytes(senderIp), 28);
  f.set(ipBytes(targetIp), 38);
  return f;
}

/** Receive buffers posted up front, and the packets (header, frame) the device put in them. */
function receiverWithHeaders(g: Guest, count = 64): () => { header: Uint8Array; frame: Uint8Array }[] {
  const gpaOf = new Map<number, number>();
  for (let i = 0; i < count; i++) {
    const gpa = g.rx.alloc(2048);
    gpaOf.set(g.rx.addChain([{ len: 2048, writable: true, gpa }]), gpa);
  }
  const packets: { header: Uint8Array; frame: Uint8Array }[] = [];
  return () => {
    for (const u of g.rx.takeUsed()) {
      const gpa = gpaOf.get(u.id)!;
      packets.push({ header: memory.read(gpa, HDR), frame: memory.read(gpa + HDR, u.len - HDR) });
    }
    return packets;
  };
}

function receiver(g: Guest, count = 64): () => Uint8Array[] {
  const packets = receiverWithHeaders(g, count);
  return () => packets().map((p) => p.frame);
}

const ethertype = (f: Uint8Array): number => (f[12] << 8) | f[13];

test('passt (user networking): DHCP and ARP answered through passt; close() ends passt', async (t) => {
  const passt = ['/usr/bin/passt', '/usr/local/bin/passt'].find((p) => existsSync(p));
  if (!passt) return t.skip('passt is not installed (sudo apt-get install passt)');
  const handle: NetHandle = openNet({ backend: { kind: 'user' }, mac: GUEST_MAC });
  assert.equal(handle.backend.kind, 'user');
  if (handle.backend.kind !== 'user') return;
  const { pid, dir } = handle.backend;
  assert.ok(existsSync(`/proc/${pid}`), 'passt runs');
  const logs: string[] = [];
  const net = new VirtioNet(handle, (m) => logs.push(m));
  try {
    const g = activate(net, MRG);
    const frames = receiver(g);
    // DHCPDISCOVER, broadcast: BOOTP op 1, xid, chaddr = our MAC, magic cookie, option 53 = 1, end.
    const bootp = new Uint8Array(240 + 4);
    const bv = new DataView(bootp.buffer);
    bootp[0] = 1;
    bootp[1] = 1;
    bootp[2] = 6;
    bv.setUint32(4, 0x50a47175);
    bv.setUint16(10, 0x8000);
    bootp.set(macBytes(GUEST_MAC), 28);
    bv.setUint32(236, 0x63825363);
    bootp.set([53, 1, 1, 255], 240);
    postTx(g, udpFrame('ff:ff:ff:ff:ff:ff', '0.0.0.0', '255.255.255.255', 68, 67, bootp));
    net.queueNotified(1);
    let offer: Uint8Array | undefined;
    await until(
      'a DHCPOFFER from passt',
      () => {
        offer = frames().find((f) => ethertype(f) === 0x0800 && f[23] === 17 && ((f[36] << 8) | f[37]) === 68);
        return offer !== undefined;
      },
      60_000,
    );
    const reply = offer!.subarray(42);
    const rv = new DataView(reply.buffer, reply.byteOffset, reply.byteLength);
    assert.equal(reply[0], 2, 'BOOTREPLY');
    assert.equal(rv.getUint32(4), 0x50a47175, 'our transaction id');
    const options = new Map<number, Uint8Array>();
    for (let at = 240; at < reply.length && reply[at] !== 255; at += reply[at] === 0 ? 1 : 2 + reply[at + 1]) {
      if (reply[at] !== 0) options.set(reply[at], reply.subarray(at + 2, at + 2 + reply[at + 1]));
    }
    assert.deepEqual(Array.from(options.get(53) ?? []), [2], 'DHCPOFFER');
    const yiaddr = Array.from(reply.subarray(16, 20)).join('.');
    const router = options.get(3);
    if (options.has(26)) assert.equal((options.get(26)![0] << 8) | options.get(26)![1], 1500, 'MTU matches the device');
    assert.ok(router, 'the offer names a router');
    const gateway = Array.from(router.subarray(0, 4)).join('.');
    postTx(g, arpRequest(yiaddr, gateway));
    net.queueNotified(1);
    await until(
      `an ARP reply for ${gateway}`,
      () =>
        frames().some(
          (f) => ethertype(f) === 0x0806 && f[21] === 2 && Array.from(f.subarray(28, 32)).join('.') === gateway,
        ),
      60_000,
    );
    assert.deepEqual(g.resets, []);
    assert.equal(net.stats.txDropped, 0);
    assert.deepEqual(logs, []);
  } finally {
    net.close();
  }
  await until(
    'passt to exit',
    () => {
      try {
        const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
        return stat.slice(stat.lastIndexOf(')') + 2)[0] === 'Z';
      } catch {
        return true;
      }
    },
    60_000,
  );
  assert.ok(!existsSync(dir), 'its directory is removed');
});

function tapSkipReason(): string | undefined {
  if (process.getuid?.() !== 0) return 'TAP tests need root (CAP_NET_ADMIN)';
  if (!existsSync('/dev/net/tun')) return 'no /dev/net/tun';
  try {
    execFileSync('ip', ['-V'], { stdio: 'ignore' });
  } catch {
    return 'iproute2 (ip) is not installed: sudo apt-get install iproute2';
  }
  return undefined;
}

test('TAP: bad names and (as root) an ARP exchange with the host kernel and a UDP datagram to a host socket', async (t) => {
  assert.throws(
    () => openNet({ backend: { kind: 'tap', name: 'a/b' } }),
    (e: unknown) => e instanceof DeviceOpenError && /not a valid network interface name/.test(e.message),
  );
  assert.throws(() => openNet({ backend: { kind: 'tap', name: 'x'.repeat(16) } }), DeviceOpenError);
  assert.throws(() => openNet({ backend: { kind: 'tap', name: '' } }), DeviceOpenError);
  const why = tapSkipReason();
  if (why) return t.skip(why);
  const name = `ptap${process.pid % 100000}`;
  const hostIp = '10.213.77.1';
  const guestIp = '10.213.77.2';
  const handle = openNet({ backend: { kind: 'tap', name }, mac: GUEST_MAC });
  assert.equal(handle.backend.kind, 'tap');
  if (handle.backend.kind !== 'tap') return;
  assert.equal(handle.backend.name, name);
  assert.throws(
    () => openNet({ backend: { kind: 'tap', name } }),
    (e: unknown) => e instanceof DeviceOpenError && /already in use/.test(e.message),
  );
  const net = new VirtioNet(handle);
  if (handle.backend.offloads) assert.ok((net.info.features >> VIRTIO_NET_F_CSUM) & 1n, 'offloads offered on a TAP');
  const udp = createSocket('udp4');
  try {
    const ipv6 = `/proc/sys/net/ipv6/conf/${name}/disable_ipv6`;
    if (existsSync(ipv6)) writeFileSync(ipv6, '1'); // no router solicitations in the way
    execFileSync('ip', ['addr', 'add', `${hostIp}/24`, 'dev', name]);
    execFileSync('ip', ['link', 'set', name, 'up']);
    const tapMac = readFileSync(`/sys/class/net/${name}/address`, 'utf8').trim();
    const g = activate(net, MRG);
    const frames = receiver(g);
    postTx(g, arpRequest(guestIp, hostIp));
    net.queueNotified(1);
    await until('the kernel ARP reply', () =>
      frames().some(
        (f) =>
          ethertype(f) === 0x0806 &&
          f[21] === 2 &&
          Array.from(f.subarray(28, 32)).join('.') === hostIp &&
          Array.from(f.subarray(0, 6)).join() === macBytes(GUEST_MAC).join(),
      ),
    );
    const arp = frames().find((f) => ethertype(f) === 0x0806)!;
    assert.equal(Array.from(arp.subarray(22, 28), (b) => b.toString(16).padStart(2, '0')).join(':'), tapMac);
    await new Promise<void>((resolve) => udp.bind(0, hostIp, resolve));
    const port = udp.address().port;
    const message = new Promise<{ data: string; from: string }>((resolve) =>
      udp.once('message', (data, rinfo) => resolve({ data: data.toString(), from: rinfo.address })),
    );
    postTx(g, udpFrame(tapMac, guestIp, hostIp, 40000, port, new TextEncoder().encode('hello from the guest')));
    net.queueNotified(1);
    assert.deepEqual(await message, { data: 'hello from the guest', from: guestIp });
    assert.ok(net.stats.txFrames >= 2 && net.stats.rxFrames >= 1);
    assert.deepEqual(g.resets, []);
    // Host → guest UDP: the kernel's vnet header reaches the guest. With GUEST_CSUM negotiated (and the TAP
    // told so by TUNSETOFFLOAD) the checksum is left to the guest: NEEDS_CSUM at the UDP header's checksum.
    execFileSync('ip', ['neigh', 'replace', guestIp, 'lladdr', GUEST_MAC, 'dev', name]);
    const udpTo = async (features: bigint, tag: string): Promise<{ header: Uint8Array; frame: Uint8Array }> => {
      net.reset();
      const h = activate(net, features);
      const packets = receiverWithHeaders(h);
      udp.send(tag, 5555, guestIp);
      let found: { header: Uint8Array; frame: Uint8Array } | undefined;
      await until(`the datagram '${tag}' at the guest`, () => {
        found = packets().find(
          (p) =>
            ethertype(p.frame) === 0x0800 &&
            p.frame[23] === 17 &&
            p.frame.length >= 42 + tag.length &&
            Buffer.from(p.frame.subarray(42, 42 + tag.length)).toString() === tag,
        );
        return found !== undefined;
      });
      return found!;
    };
    if (handle.backend.offloads) {
      const offloaded = await udpTo(MRG | (1n << VIRTIO_NET_F_CSUM) | (1n << VIRTIO_NET_F_GUEST_CSUM), 'partial');
      const hv = new DataView(offloaded.header.buffer, offloaded.header.byteOffset, HDR);
      assert.equal(offloaded.header[0] & 1, 1, 'VIRTIO_NET_HDR_F_NEEDS_CSUM');
      assert.equal(hv.getUint16(6, true), 14 + 20, 'csum_start: the UDP header');
      assert.equal(hv.getUint16(8, true), 6, 'csum_offset: the UDP checksum field');
      assert.equal(hv.getUint16(10, true), 1, 'num_buffers');
    }
    const plain = await udpTo(MRG, 'complete');
    assert.equal(plain.header[0], 0, 'no checksum left to a guest that did not negotiate GUEST_CSUM');
    assert.notEqual((plain.frame[40] << 8) | plain.frame[41], 0, 'the kernel filled in the UDP checksum');
  } finally {
    udp.close();
    net.close();
  }
  assert.ok(!existsSync(`/sys/class/net/${name}`), 'the TAP we created went away with its fd');
});
