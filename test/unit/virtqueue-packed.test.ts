// Packed virtqueues (virtio 1.2 §2.8): wrap counters, Buffer IDs, out-of-order use, indirect tables, event
// suppression, and hostile drivers — every malformed list comes back as a VirtqueueError.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GuestMemory } from '../../src/base/guest-memory.js';
import { MIB } from '../../src/base/units.js';
import {
  DescriptorChain,
  VirtqueueError,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  type VirtqueueErrorKind,
} from '../../src/devices/virtio/queue.js';
import {
  PackedChain,
  PackedQueue,
  RING_EVENT_FLAGS_DESC,
  RING_EVENT_FLAGS_DISABLE,
  RING_EVENT_FLAGS_ENABLE,
  VIRTQ_DESC_F_AVAIL,
  VIRTQ_DESC_F_USED,
  type PackedQueueConfig,
} from '../../src/devices/virtio/packed-queue.js';
import { FakePackedDriver } from '../support/virtq-driver.js';

const RAM = 16 * MIB;
const memory = GuestMemory.allocateRanges([{ gpa: 0, size: RAM }]);

function queue(d: FakePackedDriver, extra: Partial<PackedQueueConfig> = {}): PackedQueue {
  const q = PackedQueue.create(d.memory, d.config(extra));
  if (!(q instanceof PackedQueue)) throw q;
  return q;
}

function chain(result: PackedChain | VirtqueueError | undefined): PackedChain {
  if (result instanceof VirtqueueError) throw result;
  assert.ok(result instanceof PackedChain, 'a list was available');
  return result;
}

function fails(result: unknown, kind: VirtqueueErrorKind, message?: RegExp): VirtqueueError {
  assert.ok(result instanceof VirtqueueError, `expected a VirtqueueError (${kind}), got ${String(result)}`);
  assert.equal(result.kind, kind, result.message);
  if (message) assert.match(result.message, message);
  return result;
}

const bytes = (...v: number[]): Uint8Array => Uint8Array.from(v);
const avail = FakePackedDriver.availFlags;

test('packed: a list, its Buffer ID, and the used descriptor', () => {
  const d = FakePackedDriver.at(memory, 4, 0x10000);
  const q = queue(d);
  assert.equal(q.popAvailable(), undefined, 'a zeroed ring has nothing available');
  const out = d.alloc(8);
  const id = d.addChain([
    { len: 3, data: bytes(1, 2, 3) },
    { len: 8, writable: true, gpa: out },
  ]);
  const c = chain(q.popAvailable());
  assert.equal(c.head, id);
  assert.equal(c.descriptorCount, 2);
  assert.deepEqual(c.readBytes(), bytes(1, 2, 3));
  assert.equal(c.writeBytes(bytes(9, 8, 7)), 3);
  assert.deepEqual(memory.read(out, 3), bytes(9, 8, 7));
  assert.equal(q.popAvailable(), undefined);
  q.pushUsed(c, 3);
  const flags = memory.readU16(d.desc + 14);
  assert.equal(flags, VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED | VIRTQ_DESC_F_WRITE, 'used in lap 1, data written');
  assert.deepEqual(d.takeUsed(), [{ id, len: 3 }]);
  assert.deepEqual(q.nextUsedPosition, { index: 2, wrap: true }, 'the used position skipped the whole list');
});

test('packed: out-of-order completion, wrap counters over a ring of 3', () => {
  const d = FakePackedDriver.at(memory, 3, 0x20000, 4096);
  const q = queue(d);
  const a = d.addChain([{ len: 1, data: bytes(0xa) }]);
  const b = d.addChain([
    { len: 1, data: bytes(0xb) },
    { len: 2, writable: true },
  ]);
  const ca = chain(q.popAvailable());
  const cb = chain(q.popAvailable());
  assert.equal(q.popAvailable(), undefined, 'all three descriptors are in flight');
  q.pushUsed(cb, 2); // b completes first: its used descriptor goes at position 0
  q.pushUsed(ca, 0);
  assert.deepEqual(d.takeUsed(), [
    { id: b, len: 2 },
    { id: a, len: 0 },
  ]);
  assert.deepEqual(q.nextUsedPosition, { index: 0, wrap: false }, 'three descriptors used: the wrap counter flipped');
  // Lists of one or two descriptors, over many laps: a two-descriptor list regularly straddles the ring's end.
  for (let i = 0; i < 3000; i++) {
    d.resetHeap();
    const n = 1 + (i % 2);
    const id = d.addChain(Array.from({ length: n }, (_, k) => ({ len: 1, data: bytes(i & 0xff), writable: k === 1 })));
    const c = chain(q.popAvailable());
    assert.equal(c.head, id);
    assert.equal(c.buffers.length, n);
    assert.equal(c.readBytes()[0], i & 0xff);
    q.pushUsed(c, c.writableLength);
    const used = d.takeUsed();
    assert.deepEqual(used, [{ id, len: n - 1 }]);
  }
  assert.deepEqual(q.nextAvailPosition, q.nextUsedPosition);
  assert.deepEqual(q.nextAvailPosition, d.availPosition);
});

test('packed: indirect tables; reserved flags in the table and WRITE on the table descriptor are ignored', () => {
  const d = FakePackedDriver.at(memory, 4, 0x30000);
  const q = queue(d, { indirect: true });
  const id = d.addChain(
    [
      { len: 2, data: bytes(5, 6) },
      { len: 4, writable: true },
    ],
    { indirect: true },
  );
  let c = chain(q.popAvailable());
  assert.equal(c.head, id);
  assert.equal(c.descriptorCount, 1);
  assert.deepEqual(
    c.buffers.map((x) => [x.len, x.writable]),
    [
      [2, false],
      [4, true],
    ],
  );
  q.pushUsed(c, 4);
  assert.deepEqual(d.takeUsed(), [{ id, len: 4 }]);

  const table = d.alloc(32);
  d.writeDesc(0, 0x1000, 8, 0xffff, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_INDIRECT, table); // reserved: ignored
  d.writeDesc(1, 0x2000, 8, 0, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, table);
  const { index, wrap } = d.availPosition;
  d.writeDesc(index, table, 32, 7, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_WRITE | avail(wrap));
  d.advance(1);
  c = chain(q.popAvailable());
  assert.equal(c.head, 7);
  assert.deepEqual(
    c.buffers.map((x) => [x.gpa, x.len, x.writable]),
    [
      [0x1000, 8, false],
      [0x2000, 8, true],
    ],
  );

  const d2 = FakePackedDriver.at(memory, 4, 0x38000);
  const plain = queue(d2);
  d2.addChain([{ len: 4 }], { indirect: true });
  fails(plain.popAvailable(), 'indirect-not-negotiated', /descriptor 0 is INDIRECT/);
});

test('packed hostile: INDIRECT in a NEXT-linked list, bad tables', () => {
  const d = FakePackedDriver.at(memory, 8, 0x40000);
  const table = d.alloc(64);
  const fresh = (): PackedQueue => queue(d, { indirect: true });
  d.writeDesc(1, table, 16, 0, VIRTQ_DESC_F_INDIRECT | avail(true));
  d.writeDesc(0, 0x1000, 4, 0, VIRTQ_DESC_F_NEXT | avail(true));
  fails(fresh().popAvailable(), 'indirect-with-next', /descriptor 1 is INDIRECT inside a NEXT-linked list/);
  d.writeDesc(0, table, 16, 0, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT | avail(true));
  fails(fresh().popAvailable(), 'indirect-with-next', /descriptor 0/);
  for (const [len, message] of [
    [24, /length 24/],
    [0, /length 0/],
    [16 * 65537, /65537 entries/],
  ] as const) {
    d.writeDesc(0, table, len, 0, VIRTQ_DESC_F_INDIRECT | avail(true));
    fails(fresh().popAvailable(), 'indirect-table', message);
  }
  d.writeDesc(0, RAM - 16, 32, 0, VIRTQ_DESC_F_INDIRECT | avail(true));
  fails(fresh().popAvailable(), 'indirect-table', /not inside guest RAM/);
  d.writeDesc(0, 0xffff_ffff_ffff_fff0n, 32, 0, VIRTQ_DESC_F_INDIRECT | avail(true));
  fails(fresh().popAvailable(), 'indirect-table');
  // Buffers in the table are validated like any other.
  d.writeDesc(0, 0x1000, 4, 0, 0, table);
  d.writeDesc(1, RAM - 2, 4, 0, 0, table);
  d.writeDesc(0, table, 32, 0, VIRTQ_DESC_F_INDIRECT | avail(true));
  fails(fresh().popAvailable(), 'buffer-address', /indirect descriptor 1/);
  d.writeDesc(0, 0x1000, 4, 0, VIRTQ_DESC_F_WRITE, table);
  d.writeDesc(1, 0x1000, 4, 0, 0, table);
  fails(fresh().popAvailable(), 'readable-after-writable', /indirect descriptor 1/);
});

test('packed hostile: lists longer than the ring, unavailable continuations, bad buffers; errors stay', () => {
  const d = FakePackedDriver.at(memory, 4, 0x50000);
  for (let i = 0; i < 4; i++) d.writeDesc(i, 0x1000, 4, 0, VIRTQ_DESC_F_NEXT | avail(true));
  let q = queue(d);
  fails(q.popAvailable(), 'descriptor-loop', /list at 0: longer than the 4 descriptors/);
  // The list continues into a descriptor of the previous lap (zeroed, or marked for the other wrap counter).
  d.writeDesc(2, 0x1000, 4, 0, avail(false));
  d.writeDesc(1, 0x1000, 4, 0, VIRTQ_DESC_F_NEXT | avail(true));
  d.writeDesc(0, 0x1000, 4, 0, VIRTQ_DESC_F_NEXT | avail(true));
  q = queue(d);
  fails(q.popAvailable(), 'descriptor-not-available', /descriptor 2 continues the list but is not marked available/);
  fails(q.popAvailable(), 'descriptor-not-available', undefined); // not consumed: the device resets
  d.writeDesc(0, 0x1000, 4, 0, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED); // not available at all
  q = queue(d);
  assert.equal(q.popAvailable(), undefined);

  const cases: [bigint | number, number, VirtqueueErrorKind][] = [
    [RAM, 1, 'buffer-address'],
    [RAM - 4, 8, 'buffer-address'],
    [0xffff_ffff_ffff_f000n, 0x2000, 'address-overflow'],
    [2n ** 60n, 16, 'buffer-address'],
  ];
  for (const [addr, len, kind] of cases) {
    d.writeDesc(0, addr, len, 0, avail(true));
    fails(queue(d).popAvailable(), kind, /list at 0: descriptor 0/);
  }
  d.writeDesc(0, 0x1000, 4, 0, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT | avail(true));
  d.writeDesc(1, 0x1000, 4, 0, avail(true));
  fails(queue(d).popAvailable(), 'readable-after-writable', /descriptor 1/);
  // A list needing more descriptors than are free while others are in flight.
  const d2 = FakePackedDriver.at(memory, 4, 0x58000);
  const q2 = queue(d2);
  d2.addChain([{ len: 1 }, { len: 1 }, { len: 1 }]);
  chain(q2.popAvailable());
  const { index, wrap } = d2.availPosition; // position 3: one descriptor left before the in-flight ones
  d2.writeDesc(index, 0x1000, 4, 0, VIRTQ_DESC_F_NEXT | avail(wrap));
  d2.writeDesc(0, 0x1000, 4, 0, avail(!wrap)); // would overwrite an in-flight descriptor
  fails(q2.popAvailable(), 'descriptor-loop', /longer than the 1 descriptors the ring can hold now/);
});

test('packed: driver event suppression (used buffer notifications)', () => {
  const d = FakePackedDriver.at(memory, 4, 0x60000);
  const q = queue(d, { eventIdx: true });
  const use = (): void => {
    d.resetHeap();
    d.addChain([{ len: 1 }]);
    q.pushUsed(chain(q.popAvailable()), 0);
    d.takeUsed();
  };
  use();
  assert.equal(q.needsNotification(), true);
  d.setDriverEvent(RING_EVENT_FLAGS_DISABLE);
  use();
  assert.equal(q.needsNotification(), false);
  d.setDriverEvent(RING_EVENT_FLAGS_ENABLE);
  use();
  assert.equal(q.needsNotification(), true);
  // Used so far: positions 0, 1, 2 (lap with wrap 1). Ask for an interrupt when position 1 of the next lap is used.
  d.setDriverEvent(RING_EVENT_FLAGS_DESC, 1, false);
  use(); // position 3
  assert.equal(q.needsNotification(), false);
  use(); // position 0, wrap 0
  assert.equal(q.needsNotification(), false);
  use(); // position 1, wrap 0
  assert.equal(q.needsNotification(), true);
  d.setDriverEvent(RING_EVENT_FLAGS_DESC, 1, true); // the previous lap's position 1: long past
  use();
  use();
  assert.equal(q.needsNotification(), false);
  d.setDriverEvent(RING_EVENT_FLAGS_DESC, 0, true); // the next lap's position 0, crossed by a batch
  use(); // position 0, wrap 1
  use();
  assert.equal(q.needsNotification(), true);
  assert.equal(q.needsNotification(), false, 'nothing used since');

  const d2 = FakePackedDriver.at(memory, 4, 0x68000);
  const plain = queue(d2);
  d2.setDriverEvent(RING_EVENT_FLAGS_DESC, 3, false); // only valid with EVENT_IDX: treated as enabled
  assert.equal(plain.needsNotification(), true);
});

test('packed: device event suppression (available buffer notifications)', () => {
  const d = FakePackedDriver.at(memory, 4, 0x70000);
  const q = queue(d);
  q.disableNotifications();
  assert.equal(d.deviceEventFlags, RING_EVENT_FLAGS_DISABLE);
  assert.equal(q.enableNotifications(), false);
  assert.equal(d.deviceEventFlags, RING_EVENT_FLAGS_ENABLE);
  q.disableNotifications();
  d.addChain([{ len: 1 }]);
  assert.equal(q.enableNotifications(), true, 'a list arrived while notifications were off');
  const c = chain(q.popAvailable());
  q.undoPop();
  assert.equal(chain(q.popAvailable()).head, c.head, 'undoPop puts the list back');
});

test('packed: queue size and area validation; device bugs', () => {
  const d = FakePackedDriver.at(memory, 3, 0x80000);
  assert.ok(PackedQueue.create(memory, d.config()) instanceof PackedQueue, 'size 3: no power of two needed');
  for (const size of [0, 32769, 1.5, -1, NaN]) fails(PackedQueue.create(memory, d.config({ size })), 'queue-size');
  fails(
    PackedQueue.create(memory, d.config({ descRing: d.desc + 8 })),
    'ring-address',
    /descriptor ring .* 16-byte aligned/,
  );
  fails(PackedQueue.create(memory, d.config({ driverArea: d.driverArea + 2 })), 'ring-address', /driver event/);
  fails(PackedQueue.create(memory, d.config({ deviceArea: RAM - 2 })), 'ring-address', /device event .* not inside/);
  fails(PackedQueue.create(memory, d.config({ descRing: RAM - 32 })), 'ring-address', /descriptor ring/);
  assert.ok(PackedQueue.create(memory, d.config({ deviceArea: RAM - 4 })) instanceof PackedQueue);

  const q = queue(d);
  const id = d.addChain([{ len: 1 }]);
  const c = chain(q.popAvailable());
  const foreign = new DescriptorChain(memory, id, [], 0, 0, 0);
  assert.throws(() => q.pushUsed(foreign, 0), RangeError);
  q.pushUsed(c, 0);
  assert.throws(() => q.pushUsed(c, 0), RangeError, 'used twice: more used than popped');
  assert.deepEqual(d.takeUsed(), [{ id, len: 0 }]);
});
