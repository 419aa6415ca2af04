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
import { copyFileSync, mkdtempSync, readFileSync, readSync, rmSync, writeFileSync } from 'node:fs';
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
import { FakeDriver, FakePackedDriver, type DriverBuffer, type UsedElement } from '../support/virtq-driver.js';

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
  const b = new BigUint64Array(1);
  try {
    readSync(dev.msix.sharedState.eventFds[vector], b);
  } catch {
    return 0; // EAGAIN: none
  }
  return Number(b[0]);
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
  a.dev.barsChanged();

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
