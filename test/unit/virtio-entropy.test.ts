// virtio-rng (virtio 1.2 §5.4) driven by a fake guest driver: random bytes in the writable part, the used length,
// the per-chain and per-turn bounds, readable buffers (a driver error the device survives), reset mid-stream.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GuestMemory } from '../../src/base/guest-memory.js';
import { MIB } from '../../src/base/units.js';
import { SplitQueue } from '../../src/devices/virtio/queue.js';
import type { VirtioQueueContext } from '../../src/devices/virtio/device.js';
import {
  ENTROPY_MAX_REQUEST,
  ENTROPY_TURN_BYTES,
  ENTROPY_TURN_CHAINS,
  openEntropy,
  VirtioEntropy,
} from '../../src/devices/virtio/entropy.js';
import { FakeDriver } from '../support/virtq-driver.js';

const memory = GuestMemory.allocateRanges([{ gpa: 0, size: 16 * MIB }]);
const SENTINEL = 0xa5;

interface Harness {
  readonly driver: FakeDriver;
  readonly device: VirtioEntropy;
  readonly interrupts: number[];
  readonly resets: string[];
}

/** A device activated on one queue at `base`, with a context that behaves like the runner's. */
function harness(base: number, size = 256, heap = 1 * MIB, indirect = false): Harness {
  const driver = FakeDriver.at(memory, size, base, heap);
  const device = new VirtioEntropy(openEntropy());
  const interrupts: number[] = [];
  const resets: string[] = [];
  activate(device, driver, interrupts, resets, indirect);
  return { driver, device, interrupts, resets };
}

function activate(
  device: VirtioEntropy,
  driver: FakeDriver,
  interrupts: number[],
  resets: string[],
  indirect = false,
): void {
  const q = SplitQueue.create(memory, driver.config({ indirect }));
  if (!(q instanceof SplitQueue)) throw q;
  const ctx: VirtioQueueContext = {
    memory,
    queues: [q],
    features: 0n,
    interrupt: (queue) => void interrupts.push(queue),
    needsReset: (reason) => {
      // As VirtioRunner.needsReset does: the backend is reset before the transport is told.
      resets.push(reason);
      device.reset();
    },
  };
  device.activate(ctx);
}

/** A device-writable buffer pre-filled with SENTINEL, so untouched bytes are recognisable. */
function writable(driver: FakeDriver, len: number): { gpa: number; len: number; writable: true } {
  const gpa = driver.alloc(Math.max(len, 1));
  memory.fill(gpa, Math.max(len, 1), SENTINEL);
  return { gpa, len, writable: true };
}

const turn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

async function turns(n: number): Promise<void> {
  for (let i = 0; i < n; i++) await turn();
}

function distinctValues(bytes: Uint8Array): number {
  return new Set(bytes).size;
}

test('device identity: type 4, no features, no configuration; the handle is a plain object', () => {
  const handle = openEntropy();
  assert.deepEqual(handle, { kind: 'entropy' });
  assert.deepEqual(structuredClone(handle), handle, 'the handle crosses to the I/O worker by postMessage');
  const device = new VirtioEntropy(handle);
  assert.equal(device.info.deviceType, 4);
  assert.equal(device.info.classCode, 0x00ff00);
  assert.equal(device.info.features, 0n);
  assert.deepEqual(device.info.queueSizes, [256]);
  assert.equal(device.info.configSize, 0);
  assert.equal(device.configBytes().length, 0);
});

test('fills each chain with random bytes, used length = bytes written, one interrupt per batch', () => {
  const h = harness(0x10000, 16, 1 * MIB, true);
  const a = writable(h.driver, 4096);
  const b1 = writable(h.driver, 1000);
  const b2 = writable(h.driver, 3096);
  const headA = h.driver.addChain([a]);
  const headB = h.driver.addChain([b1, b2], { indirect: true }); // 4096 bytes over two buffers, in a table
  h.device.queueNotified(0);
  assert.deepEqual(h.driver.takeUsed(), [
    { id: headA, len: 4096 },
    { id: headB, len: 4096 },
  ]);
  assert.deepEqual(h.interrupts, [0], 'one interrupt for the batch');
  assert.deepEqual(h.resets, []);
  const first = memory.read(a.gpa, 4096);
  const second = Uint8Array.from([...memory.read(b1.gpa, 1000), ...memory.read(b2.gpa, 3096)]);
  assert.notDeepEqual(first, second, 'two reads differ');
  for (const bytes of [first, second]) {
    assert.ok(
      bytes.some((v) => v !== 0),
      'not all zero',
    );
    assert.ok(
      bytes.some((v) => v !== SENTINEL),
      'overwritten',
    );
    // 4096 uniform bytes cover (almost surely) every one of the 256 values; a constant or short pattern would not.
    assert.ok(distinctValues(bytes) > 240, `looks random (${distinctValues(bytes)} distinct values)`);
  }
});

test('at most ENTROPY_MAX_REQUEST bytes go into one chain; the used length says how many', () => {
  const h = harness(0x200000, 8, 2 * MIB);
  const big = writable(h.driver, ENTROPY_MAX_REQUEST * 3);
  const head = h.driver.addChain([big]);
  h.device.queueNotified(0);
  assert.deepEqual(h.driver.takeUsed(), [{ id: head, len: ENTROPY_MAX_REQUEST }]);
  const filled = memory.read(big.gpa, ENTROPY_MAX_REQUEST);
  assert.ok(distinctValues(filled) === 256, 'the first 64 KiB are random');
  const rest = memory.read(big.gpa + ENTROPY_MAX_REQUEST, ENTROPY_MAX_REQUEST * 2);
  assert.ok(
    rest.every((v) => v === SENTINEL),
    'nothing past the bound is written',
  );
});

test('readable buffers (against §5.4.6.1) are never read or written; a readable-only chain gets used length 0', () => {
  const h = harness(0x500000, 8);
  const data = Uint8Array.from({ length: 64 }, (_, i) => i);
  const readOnly = h.driver.addChain([{ len: 64, data }]);
  const out = writable(h.driver, 32);
  const mixedReadable = h.driver.alloc(16);
  memory.write(mixedReadable, data.subarray(0, 16));
  const mixed = h.driver.addChain([{ len: 16, gpa: mixedReadable }, out]);
  const empty = h.driver.addChain([writable(h.driver, 0)]);
  h.device.queueNotified(0);
  assert.deepEqual(h.driver.takeUsed(), [
    { id: readOnly, len: 0 },
    { id: mixed, len: 32 },
    { id: empty, len: 0 },
  ]);
  assert.deepEqual(h.resets, [], 'not worth a device reset');
  assert.deepEqual(memory.read(mixedReadable, 16), data.subarray(0, 16), 'the readable part is left alone');
  assert.ok(
    memory.read(out.gpa, 32).some((v) => v !== SENTINEL),
    'the writable part is filled',
  );
});

test('one turn serves at most ENTROPY_TURN_CHAINS chains, then continues on setImmediate', async () => {
  const h = harness(0x600000, 256);
  const total = 200;
  for (let i = 0; i < total; i++) h.driver.addChain([writable(h.driver, 16)]);
  h.device.queueNotified(0);
  assert.equal(h.driver.usedIdx, ENTROPY_TURN_CHAINS, 'the first turn stops at the budget');
  h.device.queueNotified(0); // a kick while a continuation is pending does not break the budget
  assert.equal(h.driver.usedIdx, ENTROPY_TURN_CHAINS);
  await turn();
  assert.equal(h.driver.usedIdx, 2 * ENTROPY_TURN_CHAINS, 'one more batch per turn');
  await turns(5);
  assert.equal(h.driver.usedIdx, total);
  const used = h.driver.takeUsed();
  assert.ok(used.every((u) => u.len === 16));
  assert.equal(h.interrupts.length, Math.ceil(total / ENTROPY_TURN_CHAINS), 'one interrupt per batch');
});

test('one turn produces at most about ENTROPY_TURN_BYTES bytes', async () => {
  const h = harness(0x800000, 16, 2 * MIB);
  const n = (2 * ENTROPY_TURN_BYTES) / ENTROPY_MAX_REQUEST;
  for (let i = 0; i < n; i++) h.driver.addChain([writable(h.driver, ENTROPY_MAX_REQUEST)]);
  h.device.queueNotified(0);
  assert.equal(h.driver.usedIdx, ENTROPY_TURN_BYTES / ENTROPY_MAX_REQUEST);
  await turns(3);
  assert.equal(h.driver.usedIdx, n);
});

test('reset mid-stream: nothing is used or written after reset() returns; a new activation serves again', async () => {
  const h = harness(0xa00000, 256);
  const buffers = Array.from({ length: 150 }, () => writable(h.driver, 32));
  for (const b of buffers) h.driver.addChain([b]);
  h.device.queueNotified(0);
  assert.equal(h.driver.usedIdx, ENTROPY_TURN_CHAINS, 'a continuation is pending');
  h.device.reset();
  await turns(5);
  h.device.queueNotified(0); // a late kick after reset
  await turns(2);
  assert.equal(h.driver.usedIdx, ENTROPY_TURN_CHAINS, 'no used entry after reset');
  for (const b of buffers.slice(ENTROPY_TURN_CHAINS)) {
    assert.ok(
      memory.read(b.gpa, 32).every((v) => v === SENTINEL),
      'no guest memory written after reset',
    );
  }
  // The driver sets the device up again (fresh rings, as after a real reset).
  const driver = FakeDriver.at(memory, 8, 0xc00000);
  const interrupts: number[] = [];
  activate(h.device, driver, interrupts, h.resets);
  const head = driver.addChain([writable(driver, 8)]);
  h.device.queueNotified(0);
  assert.deepEqual(driver.takeUsed(), [{ id: head, len: 8 }]);
  assert.deepEqual(interrupts, [0]);
});

test('a malformed chain: the good chains before it are used, then needsReset; the device stops', async () => {
  const h = harness(0xd00000, 8);
  const good = h.driver.addChain([writable(h.driver, 8)]);
  h.driver.addChain([{ len: 4096, gpa: 32 * MIB, writable: true }]); // outside guest RAM
  const after = h.driver.addChain([writable(h.driver, 8)]);
  assert.doesNotThrow(() => h.device.queueNotified(0));
  assert.deepEqual(h.driver.takeUsed(), [{ id: good, len: 8 }]);
  assert.deepEqual(h.interrupts, [0], 'the used chain is signalled before the reset');
  assert.equal(h.resets.length, 1);
  assert.match(h.resets[0], /^requestq: .*not inside guest RAM/);
  h.device.queueNotified(0);
  await turns(2);
  assert.deepEqual(h.driver.takeUsed(), [], `chain ${after} stays with the device's old queue`);
});

test('an avail idx that jumps past the queue size is a needsReset, not an exception', () => {
  const h = harness(0xe00000, 8);
  h.driver.setAvailIdx(100);
  assert.doesNotThrow(() => h.device.queueNotified(0));
  assert.equal(h.resets.length, 1);
  assert.match(h.resets[0], /avail idx 100/);
  assert.equal(h.driver.usedIdx, 0);
});

test('kicks before activation, for other queues, and after close do nothing', () => {
  const driver = FakeDriver.at(memory, 8, 0xf00000);
  const device = new VirtioEntropy(openEntropy());
  driver.addChain([writable(driver, 8)]);
  device.queueNotified(0);
  assert.equal(driver.usedIdx, 0, 'not activated');
  const interrupts: number[] = [];
  activate(device, driver, interrupts, []);
  device.queueNotified(1);
  assert.equal(driver.usedIdx, 0, 'no queue 1');
  device.close();
  device.queueNotified(0);
  assert.equal(driver.usedIdx, 0, 'closed');
});
