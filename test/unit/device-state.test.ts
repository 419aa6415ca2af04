// Device save/restore (devices/model.ts AttachedDevice.saveState/restoreState), one device at a time: a device is
// driven to some point by a fake guest driver, quiesced and saved; the snapshot goes through JSON; a fresh device
// (new shared buffers, new transport, new runner, a copy of the guest's RAM and disk) loads it. Then (a) every
// guest-visible register reads the same on both, and (b) the same next requests get the same used elements,
// data and interrupts from both. Bad snapshots are refused with DeviceStateError and change nothing.
//
// No KVM is needed: the GSI router records MSI routes instead of committing them (so an MSI-X vector's eventfd
// is not an irqfd and its count is the interrupts delivered), and the transport's KVM_IOEVENTFD call is replaced
// by a log of registrations (VirtioPciDevice's one host call that needs a VM).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GuestMemory } from '../../src/base/guest-memory.js';
import { GsiRouter } from '../../src/base/gsi-routing.js';
import { MIB } from '../../src/base/units.js';
import { MmioBus, PortIoBus } from '../../src/devices/bus.js';
import {
  DeviceStateError,
  type AttachedDevice,
  type DeviceAttachContext,
  type DeviceSnapshot,
  type JsonValue,
} from '../../src/devices/model.js';
import { PciBus, PCI_CONFIG_ADDRESS_PORT } from '../../src/devices/pci/bus.js';
import { PCI_COMMAND, PCI_COMMAND_MEMORY, PCI_INTERRUPT_LINE } from '../../src/devices/pci/config-space.js';
import { pciRootModel } from '../../src/devices/pci/root.js';
import { COM1, serialPortModel } from '../../src/devices/legacy/uart-16550a.js';
import type { VirtioBackend } from '../../src/devices/virtio/device.js';
import { AttachedVirtioFunction } from '../../src/devices/virtio/pci-model.js';
import {
  COMMON_OFFSET,
  DEVICE_OFFSET,
  ISR_OFFSET,
  MSIX_BAR,
  MSIX_PBA_OFFSET,
  NOTIFY_MULTIPLIER,
  NOTIFY_OFFSET,
  STATUS_ACKNOWLEDGE,
  STATUS_DRIVER,
  STATUS_DRIVER_OK,
  STATUS_FEATURES_OK,
  VIRTIO_BAR,
  VIRTIO_F_RING_EVENT_IDX,
  VIRTIO_F_RING_INDIRECT_DESC,
  VIRTIO_F_RING_PACKED,
  VIRTIO_F_VERSION_1,
  VirtioPciDevice,
} from '../../src/devices/virtio/pci-transport.js';
import { EventFdDispatcher, VirtioRunner } from '../../src/devices/virtio/runner.js';
import {
  openBlock,
  VirtioBlock,
  VIRTIO_BLK_F_FLUSH,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
} from '../../src/devices/virtio/block.js';
import { openEntropy, VirtioEntropy } from '../../src/devices/virtio/entropy.js';
import { openConsole, VirtioConsole } from '../../src/devices/virtio/console.js';
import {
  openNet,
  VirtioNet,
  VIRTIO_NET_F_MAC,
  VIRTIO_NET_F_MRG_RXBUF,
  VIRTIO_NET_F_STATUS,
} from '../../src/devices/virtio/net.js';
import { encodeFrame, FrameDecoder } from '../../src/devices/net/stream-socket.js';
import { SplitQueue } from '../../src/devices/virtio/queue.js';
import { FakeDriver, FakePackedDriver, type DriverBuffer, type UsedElement } from '../support/virtq-driver.js';
import { drainEventfd } from '../support/eventfd.js';

const RAM = 16 * MIB;
const BAR4 = 0xd0000000; // where the builder places the virtio BAR
const BAR1 = 0xd0010000; // and the MSI-X BAR
const MOVED_BAR4 = 0xd0100000; // where the guest moves it before the snapshot

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Waits (bounded: a hang guard only) until `ok()`; the test goes on as soon as it holds. */
async function until(what: string, ok: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await sleep(2);
  }
}

/** Records MSI routes instead of committing them to a VM, and binds no irqfd: vector eventfds stay readable. */
class RecordingRouter extends GsiRouter {
  readonly routes = new Map<number, { lo: number; hi: number; data: number }>();
  constructor() {
    super(-1);
  }
  override setMsi(gsi: number, lo: number, hi: number, data: number): void {
    this.routes.set(gsi, { lo: lo >>> 0, hi: hi >>> 0, data: data >>> 0 });
  }
  override attachIrqfd(): void {}
}

interface Machine {
  readonly memory: GuestMemory;
  readonly router: RecordingRouter;
}

const machine = (): Machine => ({
  memory: GuestMemory.allocateRanges([{ gpa: 0, size: RAM }]),
  router: new RecordingRouter(),
});

/** A machine restored from `m`: a copy of its RAM (a snapshot saves RAM too), nothing else. */
function restoredMachine(m: Machine): Machine {
  const next = machine();
  next.memory.slice(0, RAM).set(m.memory.slice(0, RAM));
  return next;
}

/** One virtio function as the builder and the I/O thread set it up (pci-model.ts), on a machine. */
interface Fn {
  readonly dev: VirtioPciDevice;
  readonly attached: AttachedVirtioFunction;
  readonly runner: VirtioRunner;
  readonly m: Machine;
  /** INTx levels driven, in order. */
  readonly intx: boolean[];
  /** KVM_IOEVENTFD calls: "+0x…" assign, "-0x…" deassign. */
  readonly ioeventfds: string[];
  readonly logs: string[];
}

function virtioFunction(kind: string, backend: VirtioBackend, m: Machine, packed = false): Fn {
  const intx: boolean[] = [];
  const ioeventfds: string[] = [];
  const logs: string[] = [];
  const info = { ...backend.info, packedRing: packed };
  const dev = VirtioPciDevice.create(kind, info, -1, m.router, { set: (level) => void intx.push(level) });
  // The transport's one call that needs a VM: log it instead.
  (dev as unknown as { ioeventfd: (address: number, fd: number, deassign: boolean) => void }).ioeventfd = (
    address,
    _fd,
    deassign,
  ) => void ioeventfds.push(`${deassign ? '-' : '+'}0x${address.toString(16)}`);
  dev.deviceConfig.set(backend.configBytes().subarray(0, dev.deviceConfig.length));
  dev.config.setBarAddress(MSIX_BAR, BAR1);
  dev.config.setBarAddress(VIRTIO_BAR, BAR4);
  dev.config.write(PCI_COMMAND, 2, PCI_COMMAND_MEMORY);
  dev.config.write(PCI_INTERRUPT_LINE, 1, 11);
  dev.registerIoeventfds();
  const runner = new VirtioRunner(dev, backend, m.memory, new EventFdDispatcher(), (line) => void logs.push(line));
  const attached = new AttachedVirtioFunction(kind, dev);
  attached.runner = runner;
  attached.backend = backend;
  return { dev, attached, runner, m, intx, ioeventfds, logs };
}

// ---- the fake driver's side of the transport -------------------------------------------------------------

const u32 = (v: number): Uint8Array => new Uint8Array(new Uint32Array([v >>> 0]).buffer);
const u16 = (v: number): Uint8Array => new Uint8Array(new Uint16Array([v]).buffer);

function barRead(dev: VirtioPciDevice, bar: number, offset: number, size: number): number {
  const d = new Uint8Array(size);
  dev.barRead(bar, offset, d);
  let v = 0;
  for (let i = size - 1; i >= 0; i--) v = v * 256 + d[i];
  return v;
}
const common = (dev: VirtioPciDevice, offset: number, size: number): number =>
  barRead(dev, VIRTIO_BAR, COMMON_OFFSET + offset, size);
const setCommon = (dev: VirtioPciDevice, offset: number, data: Uint8Array): void =>
  dev.barWrite(VIRTIO_BAR, COMMON_OFFSET + offset, data);
const setStatus = (dev: VirtioPciDevice, s: number): void => setCommon(dev, 0x14, new Uint8Array([s]));
const kick = (dev: VirtioPciDevice, queue: number): void =>
  dev.barWrite(VIRTIO_BAR, NOTIFY_OFFSET + queue * NOTIFY_MULTIPLIER, u16(queue));

function negotiate(dev: VirtioPciDevice, features: bigint): void {
  setStatus(dev, STATUS_ACKNOWLEDGE);
  setStatus(dev, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
  setCommon(dev, 0x08, u32(0));
  setCommon(dev, 0x0c, u32(Number(features & 0xffffffffn)));
  setCommon(dev, 0x08, u32(1));
  setCommon(dev, 0x0c, u32(Number(features >> 32n)));
  setStatus(dev, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
  assert.equal(common(dev, 0x14, 1) & STATUS_FEATURES_OK, STATUS_FEATURES_OK, 'features accepted');
}

/** The MSI-X capability's offset in config space. */
function msixCap(dev: VirtioPciDevice): number {
  for (let at = dev.config.read(0x34, 1); at; at = dev.config.read(at + 1, 1))
    if (dev.config.read(at, 1) === 0x11) return at;
  throw new Error('no MSI-X capability');
}

/** Programs every vector (APIC 0, vector 0x40 + n), unmasks them and enables MSI-X, as a driver does. */
function enableMsix(dev: VirtioPciDevice): void {
  for (let v = 0; v < dev.msix.count; v++) {
    dev.barWrite(MSIX_BAR, v * 16, u32(0xfee00000));
    dev.barWrite(MSIX_BAR, v * 16 + 4, u32(0));
    dev.barWrite(MSIX_BAR, v * 16 + 8, u32(0x40 + v));
    dev.barWrite(MSIX_BAR, v * 16 + 12, u32(0)); // unmask
  }
  const cap = msixCap(dev);
  dev.config.write(cap + 2, 2, 0x8000);
  dev.configWritten(cap + 2, 2);
}

function setupQueue(
  dev: VirtioPciDevice,
  index: number,
  q: { size: number; desc: number; driver: number; device: number },
  vector = 0xffff,
): void {
  setCommon(dev, 0x16, u16(index));
  setCommon(dev, 0x18, u16(q.size));
  setCommon(dev, 0x1a, u16(vector));
  setCommon(dev, 0x20, u32(q.desc));
  setCommon(dev, 0x28, u32(q.driver));
  setCommon(dev, 0x30, u32(q.device));
  setCommon(dev, 0x1c, u16(1));
}

const splitQueue = (d: FakeDriver): { size: number; desc: number; driver: number; device: number } => ({
  size: d.size,
  desc: d.desc,
  driver: d.avail,
  device: d.used,
});

/** Interrupts delivered on an MSI-X vector since the last call (its eventfd's count; no irqfd consumes it). */
function msiCount(dev: VirtioPciDevice, vector: number): number {
  return drainEventfd(dev.msix.sharedState.eventFds[vector]);
}

/**
 * Everything a driver can read from the function, read the way a driver reads it: PCI config space 0..4095,
 * common config (every queue, both feature words), device config, the MSI-X table and PBA, then the ISR (which
 * clears it) and the INTx level. The selectors are put back, so both sides end in the same state.
 */
function guestView(f: Fn): Record<string, number[]> {
  const dev = f.dev;
  const pci: number[] = [];
  for (let at = 0; at < 4096; at += 4) pci.push(dev.config.read(at, 4));
  const fields: [number, number][] = [
    [0x00, 4],
    [0x04, 4],
    [0x08, 4],
    [0x0c, 4],
    [0x10, 2],
    [0x12, 2],
    [0x14, 1],
    [0x15, 1],
    [0x16, 2],
  ];
  const commonRegs = fields.map(([o, s]) => common(dev, o, s));
  const deviceSelect = common(dev, 0x00, 4);
  const driverSelect = common(dev, 0x08, 4);
  for (const select of [0, 1]) {
    setCommon(dev, 0x00, u32(select));
    setCommon(dev, 0x08, u32(select));
    commonRegs.push(common(dev, 0x04, 4), common(dev, 0x0c, 4));
  }
  setCommon(dev, 0x00, u32(deviceSelect));
  setCommon(dev, 0x08, u32(driverSelect));
  const queueSelect = common(dev, 0x16, 2);
  for (let q = 0; q < dev.info.queueSizes.length; q++) {
    setCommon(dev, 0x16, u16(q));
    for (const [o, s] of [
      [0x18, 2],
      [0x1a, 2],
      [0x1c, 2],
      [0x1e, 2],
      [0x20, 4],
      [0x24, 4],
      [0x28, 4],
      [0x2c, 4],
      [0x30, 4],
      [0x34, 4],
    ])
      commonRegs.push(common(dev, o, s));
  }
  setCommon(dev, 0x16, u16(queueSelect));
  const deviceConfig: number[] = [];
  for (let i = 0; i < dev.deviceConfig.length; i++) deviceConfig.push(barRead(dev, VIRTIO_BAR, DEVICE_OFFSET + i, 1));
  const msix: number[] = [];
  for (let at = 0; at < dev.msix.tableBytes; at += 4) msix.push(barRead(dev, MSIX_BAR, at, 4));
  for (let at = 0; at < dev.msix.pbaBytes; at += 4) msix.push(barRead(dev, MSIX_BAR, MSIX_PBA_OFFSET + at, 4));
  const intxBefore = f.intx.at(-1) ?? false;
  const isr = barRead(dev, VIRTIO_BAR, ISR_OFFSET, 1);
  const intxAfter = f.intx.at(-1) ?? false;
  return { pci, common: commonRegs, deviceConfig, msix, interrupt: [isr, Number(intxBefore), Number(intxAfter)] };
}

/** Quiesces and saves `f`, and passes the snapshot through JSON, as a snapshot file would. */
async function saveThroughJson(device: AttachedDevice): Promise<DeviceSnapshot> {
  await device.quiesce?.();
  const snapshot = device.saveState();
  const text = JSON.stringify(snapshot);
  const copy = JSON.parse(text) as DeviceSnapshot;
  assert.deepEqual(copy, snapshot, 'the snapshot is plain JSON (no bigint, no typed array, no undefined)');
  return copy;
}

/** Waits until `d` has `n` new used elements and returns them. */
async function usedBy(d: { takeUsed(): UsedElement[] }, n: number, what: string): Promise<UsedElement[]> {
  const out: UsedElement[] = [];
  await until(what, () => {
    out.push(...d.takeUsed());
    return out.length >= n;
  });
  assert.equal(out.length, n, `${what}: no more than ${n}`);
  return out;
}

const tmp = mkdtempSync(join(tmpdir(), 'partita-device-state-'));
process.on('exit', () => rmSync(tmp, { recursive: true, force: true }));

// ---- virtio-blk ---------------------------------------------------------------------------------------------

function blkRequest(d: FakeDriver, mem: GuestMemory, type: number, sector: number, data?: Uint8Array, readLen = 0) {
  const header = new Uint8Array(16);
  new DataView(header.buffer).setUint32(0, type, true);
  new DataView(header.buffer).setBigUint64(8, BigInt(sector), true);
  const buffers: DriverBuffer[] = [{ len: 16, data: header }];
  if (data) buffers.push({ len: data.length, data });
  const inGpa = readLen ? d.alloc(readLen) : 0;
  if (readLen) {
    mem.fill(inGpa, readLen, 0xee);
    buffers.push({ len: readLen, writable: true, gpa: inGpa });
  }
  const status = d.alloc(1);
  mem.writeU8(status, 0xff);
  buffers.push({ len: 1, writable: true, gpa: status });
  return { head: d.addChain(buffers, { indirect: true }), inGpa, status };
}

test('virtio-blk: registers, MSI-X routes, moved BAR 4 and queue position survive; a kick during quiesce waits, then both serve alike', async () => {
  const image = join(tmp, 'disk.img');
  writeFileSync(
    image,
    Uint8Array.from({ length: 64 * 512 }, (_, i) => (i * 7 + (i >> 9)) & 0xff),
  );
  const a = virtioFunction('virtio-blk', new VirtioBlock(openBlock({ path: image, queueSize: 16 })), machine());
  const features =
    (1n << VIRTIO_F_VERSION_1) |
    (1n << VIRTIO_F_RING_EVENT_IDX) |
    (1n << VIRTIO_F_RING_INDIRECT_DESC) |
    (1n << VIRTIO_BLK_F_FLUSH);
  negotiate(a.dev, features);
  enableMsix(a.dev);
  setCommon(a.dev, 0x10, u16(0)); // config changes on vector 0
  const driver = FakeDriver.at(a.m.memory, 16, 0x100000, 256 * 1024);
  setupQueue(a.dev, 0, splitQueue(driver), 1); // requests on vector 1
  setStatus(a.dev, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
  // The guest (firmware) moves BAR 4: the ioeventfds follow it.
  a.dev.config.write(0x10 + 4 * VIRTIO_BAR, 4, MOVED_BAR4);
  a.dev.registerIoeventfds(); // as the bus does after a BAR write (own-BAR decode)

  // Requests before the snapshot: a write, a read, GET_ID, one at a time.
  const written = new Uint8Array(512).fill(0x5a);
  for (const [type, sector, data, readLen] of [
    [VIRTIO_BLK_T_OUT, 3, written, 0],
    [VIRTIO_BLK_T_IN, 5, undefined, 512],
    [VIRTIO_BLK_T_GET_ID, 0, undefined, 20],
  ] as const) {
    driver.setUsedEvent(driver.usedIdx); // EVENT_IDX: interrupt me for this one
    blkRequest(driver, a.m.memory, type, sector, data, readLen);
    kick(a.dev, 0);
    await usedBy(driver, 1, 'a request before the snapshot');
  }
  let interrupts = 0;
  await until('the interrupts', () => (interrupts += msiCount(a.dev, 1)) === 3);

  await a.attached.quiesce();
  // A kick while quiesced is remembered, not served.
  const pending = blkRequest(driver, a.m.memory, VIRTIO_BLK_T_IN, 9, undefined, 512);
  kick(a.dev, 0);
  await sleep(100);
  assert.equal(driver.usedIdx, 3, 'nothing is served while quiesced');
  const snapshot = await saveThroughJson(a.attached);
  assert.equal(snapshot.kind, 'virtio-blk');

  const imageB = join(tmp, 'disk-b.img');
  copyFileSync(image, imageB); // the disk is part of the snapshot, like RAM
  const b = virtioFunction(
    'virtio-blk',
    new VirtioBlock(openBlock({ path: imageB, queueSize: 16 })),
    restoredMachine(a.m),
  );
  assert.deepEqual(b.ioeventfds, [`+0x${(BAR4 + NOTIFY_OFFSET).toString(16)}`], 'the builder placed it');
  b.attached.restoreState(snapshot);
  // Host side after the restore: ioeventfds at the restored BAR 4, every vector routed in the new VM.
  assert.deepEqual(b.ioeventfds.slice(1), [
    `-0x${(BAR4 + NOTIFY_OFFSET).toString(16)}`,
    `+0x${(MOVED_BAR4 + NOTIFY_OFFSET).toString(16)}`,
  ]);
  for (let v = 0; v < 2; v++)
    assert.deepEqual(b.m.router.routes.get(b.dev.msix.sharedState.gsis[v]), { lo: 0xfee00000, hi: 0, data: 0x40 + v });
  assert.deepEqual(guestView(b), guestView(a), 'every register reads the same');

  // The request kicked while quiesced: served by the restored device at once, by the original on resume. The
  // driver's used_event (2) asks for no interrupt for it: both must know they signalled at used idx 3.
  const driverB = driver.clone(b.m.memory);
  a.attached.resume();
  const [usedA] = await usedBy(driver, 1, 'the original serving the kick it held');
  const [usedB] = await usedBy(driverB, 1, 'the restored device serving the pending request');
  assert.deepEqual(usedB, usedA);
  assert.deepEqual(usedA, { id: pending.head, len: 513 });
  assert.deepEqual(b.m.memory.read(pending.inGpa, 513), a.m.memory.read(pending.inGpa, 513));
  await sleep(20);
  assert.deepEqual([msiCount(b.dev, 1), msiCount(a.dev, 1)], [0, 0], 'EVENT_IDX suppression alike');

  // The same next request on both: read back what was written before the snapshot, with an interrupt asked for.
  const results = [];
  for (const side of [
    { f: a, d: driver },
    { f: b, d: driverB },
  ]) {
    side.d.setUsedEvent(side.d.usedIdx);
    const r = blkRequest(side.d, side.f.m.memory, VIRTIO_BLK_T_IN, 3, undefined, 512);
    kick(side.f.dev, 0);
    const used = await usedBy(side.d, 1, 'the next request');
    let msi = 0;
    await until('its interrupt', () => (msi += msiCount(side.f.dev, 1)) > 0);
    await sleep(20);
    msi += msiCount(side.f.dev, 1);
    results.push({ used, data: side.f.m.memory.read(r.inGpa, 512), status: side.f.m.memory.readU8(r.status), msi });
  }
  assert.deepEqual(results[1], results[0]);
  assert.deepEqual(results[0].data, written, 'what was written before the snapshot');
  assert.equal(results[0].status, 0);
  assert.equal(results[0].msi, 1);
});

// ---- virtio-rng: packed ring, INTx ----------------------------------------------------------------------------

/** An INTx-driven function with one queue the driver set up and started: virtio-rng on a packed ring. */
function startRng(m: Machine, size = 5): { f: Fn; driver: FakePackedDriver } {
  const f = virtioFunction('virtio-rng', new VirtioEntropy(openEntropy()), m, true);
  negotiate(f.dev, (1n << VIRTIO_F_VERSION_1) | (1n << VIRTIO_F_RING_PACKED));
  const driver = FakePackedDriver.at(m.memory, size, 0x100000);
  setupQueue(f.dev, 0, { size, desc: driver.desc, driver: driver.driverArea, device: driver.deviceArea });
  setStatus(f.dev, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
  return { f, driver };
}

test('virtio-rng on a packed ring of 5: wrap counters, a raised INTx line and the ISR survive; the next request is alike', async () => {
  const { f: a, driver } = startRng(machine());
  // Seven requests on a ring of five: both wrap counters have flipped.
  for (let i = 0; i < 7; i++) {
    driver.addChain([{ len: 16 + i, writable: true }]);
    kick(a.dev, 0);
    assert.deepEqual((await usedBy(driver, 1, `request ${i}`))[0].len, 16 + i);
  }
  assert.equal(a.intx.at(-1), true, 'INTx raised, the ISR not yet read');
  const snapshot = await saveThroughJson(a.attached);

  const { memory } = restoredMachine(a.m);
  const b = virtioFunction(
    'virtio-rng',
    new VirtioEntropy(openEntropy()),
    { memory, router: new RecordingRouter() },
    true,
  );
  b.attached.restoreState(snapshot);
  assert.deepEqual(b.intx, [true], 'the new line is driven to the restored level');
  assert.deepEqual(guestView(b), guestView(a), 'every register reads the same');
  assert.equal(a.intx.at(-1), false, 'reading the ISR lowered INTx');
  a.attached.resume();

  const driverB = driver.clone(b.m.memory);
  const next = [];
  for (const side of [
    { f: a, d: driver },
    { f: b, d: driverB },
  ]) {
    const gpa = side.d.alloc(32);
    side.d.addChain([{ len: 32, writable: true, gpa }]);
    kick(side.f.dev, 0);
    const used = await usedBy(side.d, 1, 'the next request');
    assert.ok(
      side.f.m.memory.read(gpa, 32).some((x) => x !== 0),
      'random bytes written',
    );
    next.push({ used, isr: barRead(side.f.dev, VIRTIO_BAR, ISR_OFFSET, 1), intx: side.f.intx.slice(-2) });
  }
  assert.deepEqual(next[1], next[0]);
  assert.deepEqual(next[0].isr, 1);
});

// ---- virtio-net: stream socket backend -----------------------------------------------------------------------

/** A UNIX stream server speaking QEMU's length-prefixed framing: the network of one side. */
class Network {
  readonly path: string;
  readonly frames: Uint8Array[] = [];
  peer: Socket | undefined;
  private readonly server: Server;
  private readonly decoder = new FrameDecoder();

  constructor(name: string) {
    this.path = join(tmp, `${name}.sock`);
    this.server = createServer((socket) => {
      this.peer = socket;
      socket.on('data', (chunk) => this.decoder.push(chunk, (frame) => this.frames.push(frame)));
      socket.on('error', () => undefined);
    });
  }

  listen(): Promise<void> {
    return new Promise((resolve) => this.server.listen(this.path, resolve));
  }

  send(frame: Uint8Array): void {
    this.peer!.write(encodeFrame(frame));
  }

  close(): void {
    this.peer?.destroy();
    this.server.close();
  }
}

const framePattern = (length: number, seed: number): Uint8Array =>
  Uint8Array.from({ length }, (_, i) => (seed + i * 3) & 0xff);

test('virtio-net: a receive chain held for a big frame goes back to the ring at quiesce; both then receive and transmit alike', async () => {
  const netA = new Network('net-a');
  const netB = new Network('net-b');
  await Promise.all([netA.listen(), netB.listen()]);
  try {
    const mac = '52:54:00:12:34:56';
    const backendA = new VirtioNet(openNet({ backend: { kind: 'socket', path: netA.path }, mac }), () => undefined);
    const a = virtioFunction('virtio-net', backendA, machine());
    negotiate(
      a.dev,
      (1n << VIRTIO_F_VERSION_1) |
        (1n << VIRTIO_NET_F_MRG_RXBUF) |
        (1n << VIRTIO_NET_F_MAC) |
        (1n << VIRTIO_NET_F_STATUS),
    );
    const rx = FakeDriver.at(a.m.memory, 16, 0x100000, 256 * 1024);
    const tx = FakeDriver.at(a.m.memory, 16, 0x200000, 256 * 1024);
    setupQueue(a.dev, 0, splitQueue(rx));
    setupQueue(a.dev, 1, splitQueue(tx));
    setStatus(a.dev, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    await until('the device to connect', () => netA.peer !== undefined);

    // Before the snapshot: a frame each way, then a 150-byte frame for which one 100-byte buffer is not enough:
    // the device holds that buffer and waits for more.
    const out = framePattern(60, 1);
    tx.addChain([
      { len: 12, data: new Uint8Array(12) },
      { len: 60, data: out },
    ]);
    kick(a.dev, 1);
    await usedBy(tx, 1, 'the transmit');
    await until('the frame on the network', () => netA.frames.length === 1);
    rx.addChain([{ len: 100, writable: true }]);
    kick(a.dev, 0);
    netA.send(framePattern(40, 2));
    await usedBy(rx, 1, 'a small frame');
    const heldGpa = rx.alloc(100);
    const held = rx.addChain([{ len: 100, writable: true, gpa: heldGpa }]);
    kick(a.dev, 0);
    netA.send(framePattern(150, 3));
    await until('the big frame waiting', () => backendA.rxQueuedFrames === 1);
    await sleep(20); // its delivery attempt (a microtask) has taken the buffer and stopped
    const dropped = backendA.stats.rxDropped;
    const snapshot = await saveThroughJson(a.attached);
    assert.equal(backendA.stats.rxDropped, dropped + 1, 'the frame still waiting is dropped, as on a lossy link');

    const m = restoredMachine(a.m);
    const backendB = new VirtioNet(openNet({ backend: { kind: 'socket', path: netB.path }, mac }), () => undefined);
    const b = virtioFunction('virtio-net', backendB, m);
    b.attached.restoreState(snapshot);
    await until('the restored device to connect', () => netB.peer !== undefined);
    assert.deepEqual(guestView(b), guestView(a), 'every register (MAC and link status included) reads the same');
    a.attached.resume();

    // The same next frame from each network lands in the buffer the original held, on both.
    const rxB = rx.clone(m.memory);
    const txB = tx.clone(m.memory);
    const sides = [
      { f: a, net: netA, rx, tx },
      { f: b, net: netB, rx: rxB, tx: txB },
    ];
    const results = [];
    for (const side of sides) {
      side.net.send(framePattern(70, 4));
      const used = await usedBy(side.rx, 1, 'the next frame');
      const isr = barRead(side.f.dev, VIRTIO_BAR, ISR_OFFSET, 1);
      const onWireBefore = side.net.frames.length;
      side.tx.addChain([
        { len: 12, data: new Uint8Array(12) },
        { len: 80, data: framePattern(80, 5) },
      ]);
      kick(side.f.dev, 1);
      const sent = await usedBy(side.tx, 1, 'the next transmit');
      await until('the frame on the network', () => side.net.frames.length > onWireBefore);
      results.push({ used, frame: side.f.m.memory.read(heldGpa, 82), isr, sent, onWire: side.net.frames.at(-1) });
    }
    assert.deepEqual(results[1], results[0]);
    assert.deepEqual(results[0].used, [{ id: held, len: 82 }], 'header + frame in the held buffer');
    assert.deepEqual(results[0].frame.subarray(12), framePattern(70, 4));
    assert.equal(results[0].frame[10], 1, 'num_buffers');
    assert.deepEqual(results[0].onWire, framePattern(80, 5));
    backendA.close();
    backendB.close();
  } finally {
    netA.close();
    netB.close();
  }
});

// ---- virtio-console: file sink ---------------------------------------------------------------------------------

test('virtio-console: receive buffers posted and transmit position survive; the next output goes out alike', async () => {
  const fileA = join(tmp, 'console-a.out');
  const fileB = join(tmp, 'console-b.out');
  const a = virtioFunction('virtio-console', new VirtioConsole(openConsole({ path: fileA })), machine());
  negotiate(a.dev, 1n << VIRTIO_F_VERSION_1);
  const rx = FakeDriver.at(a.m.memory, 8, 0x100000);
  const tx = FakeDriver.at(a.m.memory, 8, 0x200000);
  setupQueue(a.dev, 0, splitQueue(rx));
  setupQueue(a.dev, 1, splitQueue(tx));
  setStatus(a.dev, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
  rx.addChain([{ len: 64, writable: true }]);
  rx.addChain([{ len: 64, writable: true }]);
  kick(a.dev, 0);
  for (const text of ['hello ', 'there ']) {
    tx.addChain([{ len: text.length, data: new TextEncoder().encode(text) }]);
    kick(a.dev, 1);
    await usedBy(tx, 1, 'output before the snapshot');
  }
  assert.equal(readFileSync(fileA, 'utf8'), 'hello there ');
  const snapshot = await saveThroughJson(a.attached);

  const m = restoredMachine(a.m);
  const b = virtioFunction('virtio-console', new VirtioConsole(openConsole({ path: fileB })), m);
  b.attached.restoreState(snapshot);
  assert.deepEqual(guestView(b), guestView(a), 'every register reads the same');
  a.attached.resume();

  const results = [];
  for (const side of [
    { f: a, tx },
    { f: b, tx: tx.clone(m.memory) },
  ]) {
    side.tx.addChain([{ len: 5, data: new TextEncoder().encode('world') }]);
    kick(side.f.dev, 1);
    results.push({
      used: await usedBy(side.tx, 1, 'the next output'),
      isr: barRead(side.f.dev, VIRTIO_BAR, ISR_OFFSET, 1),
    });
  }
  assert.deepEqual(results[1], results[0]);
  assert.equal(readFileSync(fileA, 'utf8'), 'hello there world');
  assert.equal(readFileSync(fileB, 'utf8'), 'world', 'the restored port writes on from where the guest is');
});

// ---- platform devices: COM1 and the PCI root ----------------------------------------------------------------

interface Platform {
  readonly pio: PortIoBus;
  readonly irq: boolean[];
  readonly ctx: DeviceAttachContext;
  readonly output: string;
}

function platform(name: string): Platform {
  const pio = new PortIoBus();
  const irq: boolean[] = [];
  const output = join(tmp, `${name}.out`);
  const fd = openSync(output, 'w');
  const ctx: DeviceAttachContext = {
    vmFd: -1,
    router: new RecordingRouter(),
    pio,
    mmio: new MmioBus(),
    pci: new PciBus(),
    memory: GuestMemory.allocateRanges([{ gpa: 0, size: 1 << 20 }]),
    irqLine: () => ({ set: (level) => void irq.push(level) }),
    host: { serialOutputFd: fd, stop: () => undefined, reset: () => undefined },
  };
  return { pio, irq, ctx, output };
}

type Uart = AttachedDevice & { receive(bytes: Uint8Array): number };
const attachUart = (p: Platform): Uart =>
  serialPortModel.attach(serialPortModel.create({ kind: 'uart-16550a' }, undefined as never), p.ctx) as Uart;

/** Programs COM1 as a driver does and leaves three received bytes (below the FIFO trigger) and output behind. */
function driveUart(p: Platform, uart: Uart): void {
  const out = (reg: number, v: number): void => p.pio.write(COM1.base + reg, 1, v);
  out(3, 0x80); // DLAB
  out(0, 0x01); // 115200 baud
  out(1, 0x00);
  out(3, 0x03); // 8N1
  out(2, 0x41); // FIFO on, trigger 4
  out(4, 0x0b); // DTR, RTS, OUT2
  out(7, 0x77); // scratch
  out(1, 0x01); // received-data interrupt
  out(0, 0x78); // 'x' out
  assert.equal(uart.receive(new TextEncoder().encode('abc')), 3);
}

/** Reads COM1 the way a driver does (RBR and IIR reads have effects: same sequence on both sides). */
function readUart(p: Platform): number[] {
  const rd = (reg: number): number => p.pio.read(COM1.base + reg, 1);
  const values = [rd(3), rd(4), rd(7), rd(1), rd(6), rd(5), rd(2), rd(0), rd(5), rd(2), rd(0), rd(0), rd(5), rd(2)];
  p.pio.write(COM1.base + 3, 1, 0x83);
  values.push(rd(0), rd(1));
  p.pio.write(COM1.base + 3, 1, 0x03);
  return [...values, Number(p.irq.at(-1) ?? false)];
}

test('COM1 (16550A): divisor, FIFO contents, interrupt state and the IRQ level survive; the next byte each way is alike', async () => {
  const pa = platform('com1-a');
  const a = attachUart(pa);
  driveUart(pa, a);
  assert.equal(pa.irq.at(-1), true, 'character timeout interrupt pending');
  const snapshot = await saveThroughJson(a);
  assert.equal(snapshot.kind, 'uart-16550a');

  const pb = platform('com1-b');
  const b = attachUart(pb);
  b.restoreState(snapshot);
  assert.deepEqual(pb.irq, [true], 'the new line is driven to the restored level');
  assert.deepEqual(readUart(pb), readUart(pa), 'every register and the FIFO read the same');
  for (const p of [pa, pb]) {
    const uart = p === pa ? a : b;
    uart.receive(new TextEncoder().encode('z'));
    p.pio.write(COM1.base, 1, 0x79); // 'y'
  }
  assert.deepEqual(readUart(pb), readUart(pa), 'and after the next byte in and out');
  assert.equal(readFileSync(pa.output, 'latin1'), 'xy');
  assert.equal(readFileSync(pb.output, 'latin1'), 'y');
});

function attachRoot(p: Platform): { dev: AttachedDevice; bridge: Uint8Array } {
  const state = pciRootModel.create({ kind: 'pci-root' }, undefined as never);
  return { dev: pciRootModel.attach(state, p.ctx), bridge: new Uint8Array(state.hostBridge) };
}

/** The host bridge's 256-byte header through ports 0xCF8/0xCFC, then the CONFIG_ADDRESS latch as it was. */
function readRoot(p: Platform): number[] {
  const latch = p.pio.read(PCI_CONFIG_ADDRESS_PORT, 4);
  const values = [latch];
  for (let reg = 0; reg < 256; reg += 4) {
    p.pio.write(PCI_CONFIG_ADDRESS_PORT, 4, 0x80000000 | reg);
    values.push(p.pio.read(PCI_CONFIG_ADDRESS_PORT + 4, 4));
  }
  p.pio.write(PCI_CONFIG_ADDRESS_PORT, 4, latch);
  return values;
}

test('PCI root: the host bridge config space and the CONFIG_ADDRESS latch survive', async () => {
  const pa = platform('root-a');
  const a = attachRoot(pa);
  pa.pio.write(PCI_CONFIG_ADDRESS_PORT, 4, 0x80000004);
  pa.pio.write(PCI_CONFIG_ADDRESS_PORT + 4, 2, 0x0006); // command: memory, bus master
  pa.pio.write(PCI_CONFIG_ADDRESS_PORT, 4, 0x80000008); // the latch left pointing at the class code
  const snapshot = await saveThroughJson(a.dev);
  const pb = platform('root-b');
  const b = attachRoot(pb);
  assert.notDeepEqual(readRoot(pb), readRoot(pa), 'a fresh root differs');
  b.dev.restoreState(snapshot);
  assert.deepEqual(readRoot(pb), readRoot(pa));
  assert.deepEqual(b.bridge, a.bridge, 'extended config space too');
  // The next access through the latch as it was saved reads the same register.
  assert.equal(pb.pio.read(PCI_CONFIG_ADDRESS_PORT + 4, 4), pa.pio.read(PCI_CONFIG_ADDRESS_PORT + 4, 4));
});

// ---- bad snapshots ---------------------------------------------------------------------------------------------

/** A deep copy of `snapshot` with `change` applied to it (as plain JSON). */
function altered(snapshot: DeviceSnapshot, change: (s: Record<string, JsonValue>) => void): DeviceSnapshot {
  const copy = JSON.parse(JSON.stringify(snapshot)) as Record<string, JsonValue>;
  change(copy);
  return copy as unknown as DeviceSnapshot;
}

/** The object at `path` inside a JSON value, for changing it. */
function at(value: JsonValue, ...path: (string | number)[]): Record<string | number, JsonValue> {
  let v = value as Record<string | number, JsonValue>;
  for (const key of path) v = v[key] as Record<string | number, JsonValue>;
  return v;
}

const truncated = (text: JsonValue): string => (text as string).slice(0, -8);

/** Each bad snapshot is refused with a DeviceStateError and the device's state stays what it was. */
function assertRefused(device: AttachedDevice, bad: Record<string, DeviceSnapshot>, state: () => unknown): void {
  const before = JSON.stringify(state());
  for (const [what, snapshot] of Object.entries(bad)) {
    assert.throws(() => device.restoreState(snapshot), DeviceStateError, what);
    assert.equal(JSON.stringify(state()), before, `${what}: nothing changed`);
  }
}

test('virtio: bad snapshots (kind, version 99, truncated base64, missing or impossible fields, another device) are refused and change nothing', async () => {
  const { f: a, driver } = startRng(machine());
  driver.addChain([{ len: 8, writable: true }]);
  kick(a.dev, 0);
  await usedBy(driver, 1, 'a request');
  const good = await saveThroughJson(a.attached);

  const b = virtioFunction('virtio-rng', new VirtioEntropy(openEntropy()), restoredMachine(a.m), true);
  const transport = (s: Record<string, JsonValue>): Record<string | number, JsonValue> => at(s, 'data', 'transport');
  const queue0 = (s: Record<string, JsonValue>): Record<string | number, JsonValue> =>
    at(s, 'data', 'queues', 'queues', 0);
  const otherDevice = Buffer.from(
    transport(good as unknown as Record<string, JsonValue>).pciConfig as string,
    'base64',
  );
  otherDevice[2] = 0x41; // device ID 0x1041: virtio-net
  assertRefused(
    b.attached,
    {
      'another kind': altered(good, (s) => (s.kind = 'virtio-blk')),
      'layout version 99': altered(good, (s) => (s.version = 99)),
      'truncated PCI config': altered(good, (s) => (transport(s).pciConfig = truncated(transport(s).pciConfig))),
      'truncated MSI-X table': altered(good, (s) => (transport(s).msixTable = truncated(transport(s).msixTable))),
      'no device config': altered(good, (s) => delete transport(s).deviceConfig),
      'no transport': altered(good, (s) => delete at(s, 'data').transport),
      'status not a number': altered(good, (s) => (transport(s).status = 'ok')),
      'a queue size over the maximum': altered(good, (s) => (at(transport(s), 'queues', 0).size = 512)),
      'features this device does not offer': altered(good, (s) => (transport(s).driverFeatures = '0x100000001')),
      'another device ID in config space': altered(
        good,
        (s) => (transport(s).pciConfig = otherDevice.toString('base64')),
      ),
      // The transport part is fine; the queues are not: the transport is put back.
      'no queues': altered(good, (s) => delete at(s, 'data').queues),
      'a position outside the ring': altered(good, (s) => (queue0(s).nextAvail = 70000)),
      'split positions for a packed ring': altered(good, (s) => (queue0(s).layout = 'split')),
      'a disabled queue with a position': altered(good, (s) => (at(transport(s), 'queues', 0).enabled = false)),
    },
    () => ({ saved: b.attached.saveState(), view: guestView(b) }),
  );
  // The device is still fresh and takes the good snapshot; saving it again gives the same snapshot.
  b.attached.restoreState(good);
  assert.deepEqual(await saveThroughJson(b.attached), good);
});

test('COM1 and PCI root: bad snapshots are refused and change nothing', () => {
  const pu = platform('com1-bad');
  const uart = attachUart(pu);
  driveUart(pu, uart);
  const goodUart = uart.saveState();
  const fresh = attachUart(platform('com1-bad-b'));
  const registers = Buffer.from(goodUart.data.registers as string, 'base64');
  registers[20 - 8] = 200; // receive FIFO count 200 of 16
  assertRefused(
    fresh,
    {
      'another kind': altered(goodUart, (s) => (s.kind = 'pci-root')),
      'layout version 99': altered(goodUart, (s) => (s.version = 99)),
      'truncated registers': altered(goodUart, (s) => (at(s, 'data').registers = truncated(at(s, 'data').registers))),
      'no registers': altered(goodUart, (s) => delete at(s, 'data').registers),
      'a FIFO count beyond the FIFO': altered(
        goodUart,
        (s) => (at(s, 'data').registers = registers.toString('base64')),
      ),
    },
    () => fresh.saveState(),
  );

  const pr = platform('root-bad');
  const root = attachRoot(pr);
  pr.pio.write(PCI_CONFIG_ADDRESS_PORT, 4, 0x80000004);
  pr.pio.write(PCI_CONFIG_ADDRESS_PORT + 4, 2, 0x0006);
  const goodRoot = root.dev.saveState();
  const freshRoot = attachRoot(platform('root-bad-b'));
  assertRefused(
    freshRoot.dev,
    {
      'another kind': altered(goodRoot, (s) => (s.kind = 'uart-16550a')),
      'layout version 99': altered(goodRoot, (s) => (s.version = 99)),
      'truncated host bridge': altered(
        goodRoot,
        (s) => (at(s, 'data').hostBridge = truncated(at(s, 'data').hostBridge)),
      ),
      'CONFIG_ADDRESS not a number': altered(goodRoot, (s) => (at(s, 'data').configAddress = 'cf8')),
    },
    () => freshRoot.dev.saveState(),
  );
});

// ---- quiesce at the backend ------------------------------------------------------------------------------------

/** A backend activated on split queues over fresh RAM, as the runner would; interrupts are recorded. */
function activated(
  backend: VirtioBackend,
  size: number,
): { drivers: FakeDriver[]; interrupts: number[]; memory: GuestMemory } {
  const memory = GuestMemory.allocateRanges([{ gpa: 0, size: RAM }]);
  const drivers = backend.info.queueSizes.map((_, i) => FakeDriver.at(memory, size, 0x100000 + i * 0x200000, MIB));
  const interrupts: number[] = [];
  backend.activate({
    memory,
    queues: drivers.map((d) => {
      const q = SplitQueue.create(memory, d.config({ indirect: true }));
      if (!(q instanceof SplitQueue)) throw q;
      return q;
    }),
    features: 1n << VIRTIO_F_VERSION_1,
    interrupt: (q) => void interrupts.push(q),
    needsReset: (reason) => assert.fail(reason),
  });
  return { drivers, interrupts, memory };
}

test('virtio-blk quiesce settles only when the read in flight has completed and its interrupt is sent', async () => {
  const image = join(tmp, 'quiesce.img');
  writeFileSync(image, new Uint8Array(64 * 512).fill(0x33));
  const block = new VirtioBlock(openBlock({ path: image, queueSize: 16 }));
  const { drivers, interrupts, memory } = activated(block, 16);
  const r = blkRequest(drivers[0], memory, VIRTIO_BLK_T_IN, 1, undefined, 4096);
  block.queueNotified(0); // the read is now in libuv's thread pool: its callback cannot have run yet
  const settled = block.quiesce();
  assert.equal(drivers[0].usedIdx, 0, 'in flight');
  await settled;
  assert.equal(drivers[0].usedIdx, 1, 'completed before quiesce settled');
  assert.deepEqual(interrupts, [0], 'and its interrupt sent');
  assert.ok(memory.read(r.inGpa, 4096).every((x) => x === 0x33));
  // Quiesced: a kick is not served (the runner holds kicks back; the backend refuses too), until resume().
  blkRequest(drivers[0], memory, VIRTIO_BLK_T_IN, 2, undefined, 512);
  block.queueNotified(0);
  await sleep(50);
  assert.equal(drivers[0].usedIdx, 1);
  block.resume();
  block.queueNotified(0);
  await until('served after resume', () => drivers[0].usedIdx === 2);
  block.close();
});

test('virtio-rng and virtio-console quiesce: a turn cut short takes no more chains until resume()', async () => {
  const rng = new VirtioEntropy(openEntropy());
  const r = activated(rng, 128);
  for (let i = 0; i < 100; i++) r.drivers[0].addChain([{ len: 8, writable: true }]);
  rng.queueNotified(0); // one turn: 64 chains, the rest on setImmediate
  assert.equal(r.drivers[0].usedIdx, 64);
  rng.quiesce();
  await sleep(50);
  assert.equal(r.drivers[0].usedIdx, 64, 'the continuation did not run');
  rng.resume();
  await until('the rest served after resume', () => r.drivers[0].usedIdx === 100);

  const path = join(tmp, 'console-quiesce.out');
  const console_ = new VirtioConsole(openConsole({ path }));
  const c = activated(console_, 128);
  for (let i = 0; i < 100; i++) c.drivers[1].addChain([{ len: 1, data: Uint8Array.of(0x61) }]);
  console_.queueNotified(1);
  assert.equal(c.drivers[1].usedIdx, 64);
  console_.quiesce();
  await sleep(50);
  assert.equal(c.drivers[1].usedIdx, 64, 'the continuation did not run');
  console_.resume();
  await until('the rest written after resume', () => c.drivers[1].usedIdx === 100);
  assert.equal(readFileSync(path, 'latin1'), 'a'.repeat(100));
  console_.close();
});

test('virtio: DRIVER_OK written while quiesced waits for resume() on the original and is handled at once by a restored device', async () => {
  const a = virtioFunction('virtio-rng', new VirtioEntropy(openEntropy()), machine());
  negotiate(a.dev, 1n << VIRTIO_F_VERSION_1);
  const driver = FakeDriver.at(a.m.memory, 8, 0x100000);
  setupQueue(a.dev, 0, splitQueue(driver));
  driver.addChain([{ len: 16, writable: true }]); // made available before DRIVER_OK (§3.1.1 allows it)
  await a.attached.quiesce();
  setStatus(a.dev, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
  await sleep(50);
  assert.equal(driver.usedIdx, 0, 'not activated while quiesced');
  const snapshot = await saveThroughJson(a.attached);
  assert.deepEqual(snapshot.data.queues, { active: false, queues: [] });

  const b = virtioFunction('virtio-rng', new VirtioEntropy(openEntropy()), restoredMachine(a.m));
  b.attached.restoreState(snapshot);
  const driverB = driver.clone(b.m.memory);
  a.attached.resume();
  const usedA = await usedBy(driver, 1, 'the original activating on resume');
  const usedB = await usedBy(driverB, 1, 'the restored device activating');
  assert.deepEqual(usedB, usedA);
  assert.deepEqual(usedA, [{ id: 0, len: 16 }]);
});

test('virtio: a reset the driver asked for while quiesced is saved as done; the restored device reads status 0 like the original after resume()', async () => {
  const { f: a, driver } = startRng(machine());
  driver.addChain([{ len: 8, writable: true }]);
  kick(a.dev, 0);
  await usedBy(driver, 1, 'a request');
  await a.attached.quiesce();
  setStatus(a.dev, 0);
  const snapshot = await saveThroughJson(a.attached);
  assert.deepEqual(snapshot.data.queues, { active: false, queues: [] });
  const b = virtioFunction('virtio-rng', new VirtioEntropy(openEntropy()), restoredMachine(a.m), true);
  b.attached.restoreState(snapshot);
  assert.equal(common(b.dev, 0x14, 1), 0, 'the restored device has nothing to drain');
  a.attached.resume();
  await until('the original finishing its reset', () => common(a.dev, 0x14, 1) === 0);
  assert.deepEqual(guestView(b), guestView(a));
});
