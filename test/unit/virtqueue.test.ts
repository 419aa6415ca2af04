// Split virtqueues (virtio 1.2 §2.7): chains as a driver makes them, notification suppression, and hostile
// drivers — every malformed ring or chain must come back as a VirtqueueError, never as a guest-memory fault.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GuestMemory } from '../../src/base/guest-memory.js';
import { ramRanges, FOUR_GIB, MMIO_HOLE_START } from '../../src/arch/x86_64/layout.js';
import { GIB, MIB } from '../../src/base/units.js';
import {
  DescriptorChain,
  SplitQueue,
  VirtqueueError,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  type SplitQueueConfig,
  type VirtqueueErrorKind,
} from '../../src/devices/virtio/queue.js';
import { FakeDriver } from '../support/virtq-driver.js';

const RAM = 16 * MIB;
const memory = GuestMemory.allocateRanges([{ gpa: 0, size: RAM }]);

function queue(driver: FakeDriver, extra: Partial<SplitQueueConfig> = {}): SplitQueue {
  const q = SplitQueue.create(driver.memory, driver.config(extra));
  if (!(q instanceof SplitQueue)) throw q;
  return q;
}

function chain(result: DescriptorChain | VirtqueueError | undefined): DescriptorChain {
  if (result instanceof VirtqueueError) throw result;
  assert.ok(result instanceof DescriptorChain, 'a chain was available');
  return result;
}

function fails(result: unknown, kind: VirtqueueErrorKind, message?: RegExp): VirtqueueError {
  assert.ok(result instanceof VirtqueueError, `expected a VirtqueueError (${kind}), got ${String(result)}`);
  assert.equal(result.kind, kind, result.message);
  if (message) assert.match(result.message, message);
  return result;
}

const bytes = (...v: number[]): Uint8Array => Uint8Array.from(v);

test('a single readable buffer: pop, read, used element, used idx', () => {
  const d = FakeDriver.at(memory, 8, 0x10000);
  const q = queue(d);
  assert.equal(q.popAvailable(), undefined);
  const head = d.addChain([{ len: 4, data: bytes(1, 2, 3, 4) }]);
  const c = chain(q.popAvailable());
  assert.equal(c.head, head);
  assert.equal(c.buffers.length, 1);
  assert.equal(c.readableLength, 4);
  assert.equal(c.writableLength, 0);
  assert.deepEqual(c.readBytes(), bytes(1, 2, 3, 4));
  assert.deepEqual(c.readBytes(2), bytes(1, 2));
  assert.deepEqual(c.readBytes(10, 3), bytes(4));
  assert.equal(c.writeBytes(bytes(9)), 0, 'nothing is writable');
  assert.equal(q.popAvailable(), undefined);
  q.pushUsed(c, 0);
  assert.equal(d.usedIdx, 1);
  assert.deepEqual(d.takeUsed(), [{ id: head, len: 0 }]);
});

test('readable buffers first, then writable ones; reads and writes span buffers', () => {
  const d = FakeDriver.at(memory, 16, 0x20000);
  const q = queue(d);
  const out1 = d.alloc(3);
  const out2 = d.alloc(5);
  d.addChain([
    { len: 2, data: bytes(0xa, 0xb) },
    { len: 3, data: bytes(0xc, 0xd, 0xe) },
    { len: 0 }, // zero-length buffers are allowed
    { len: 3, writable: true, gpa: out1 },
    { len: 5, writable: true, gpa: out2 },
  ]);
  const c = chain(q.popAvailable());
  assert.equal(c.readableCount, 3);
  assert.deepEqual(
    c.buffers.map((b) => [b.len, b.writable]),
    [
      [2, false],
      [3, false],
      [0, false],
      [3, true],
      [5, true],
    ],
  );
  assert.equal(c.readableLength, 5);
  assert.equal(c.writableLength, 8);
  assert.deepEqual(c.readBytes(), bytes(0xa, 0xb, 0xc, 0xd, 0xe));
  assert.deepEqual(c.readBytes(2, 1), bytes(0xb, 0xc));
  assert.equal(c.writeBytes(bytes(1, 2, 3, 4, 5, 6, 7, 8, 9, 10)), 8, 'capped at the writable length');
  assert.deepEqual(memory.read(out1, 3), bytes(1, 2, 3));
  assert.deepEqual(memory.read(out2, 5), bytes(4, 5, 6, 7, 8));
  assert.equal(c.writeBytes(bytes(0xee, 0xff), 7), 1, 'capped at the end');
  assert.equal(memory.readU8(out2 + 4), 0xee);
  assert.equal(c.writeBytes(bytes(0x55, 0x66, 0x77), 2, 2), 2, 'capped at max');
  assert.deepEqual(memory.read(out1 + 2, 1), bytes(0x55));
  assert.deepEqual(memory.read(out2, 1), bytes(0x66));
  const spans: [number, number, number][] = [];
  const covered = c.forEachSpan('writable', (view, at) => spans.push([view.byteOffset, view.length, at]), 1, 4);
  assert.equal(covered, 4);
  assert.deepEqual(
    spans.map(([, len, at]) => [len, at]),
    [
      [2, 0],
      [2, 2],
    ],
    'zero-copy views: the last 2 bytes of the first writable buffer, the first 2 of the second',
  );
  q.pushUsed(c, 100);
  assert.deepEqual(d.takeUsed(), [{ id: c.head, len: 8 }], 'used length capped at the writable length');
});

test('indirect tables: alone, after direct descriptors, WRITE on the table descriptor ignored', () => {
  const d = FakeDriver.at(memory, 8, 0x30000);
  const q = queue(d, { indirect: true });
  d.addChain(
    [
      { len: 4, data: bytes(1, 2, 3, 4) },
      { len: 6, writable: true },
    ],
    { indirect: true },
  );
  let c = chain(q.popAvailable());
  assert.deepEqual(
    c.buffers.map((b) => [b.len, b.writable]),
    [
      [4, false],
      [6, true],
    ],
  );
  assert.deepEqual(c.readBytes(), bytes(1, 2, 3, 4));
  q.pushUsed(c, 6);

  d.addChain(
    [
      { len: 1, data: bytes(7) },
      { len: 2, data: bytes(8, 9) },
      { len: 3, writable: true },
    ],
    { indirect: true, directFirst: 2 },
  );
  c = chain(q.popAvailable());
  assert.deepEqual(
    c.buffers.map((b) => [b.len, b.writable]),
    [
      [1, false],
      [2, false],
      [3, true],
    ],
  );
  assert.deepEqual(c.readBytes(), bytes(7, 8, 9));

  const table = d.alloc(32);
  const buf = d.alloc(8);
  d.writeDesc(0, buf, 8, VIRTQ_DESC_F_NEXT, 1, table);
  d.writeDesc(1, buf, 8, VIRTQ_DESC_F_WRITE, 0, table);
  d.writeDesc(5, table, 32, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_WRITE);
  d.publish(5);
  c = chain(q.popAvailable());
  assert.deepEqual(
    c.buffers.map((b) => [b.len, b.writable]),
    [
      [8, false],
      [8, true],
    ],
  );

  const d2 = FakeDriver.at(memory, 8, 0x38000);
  const plain = queue(d2);
  d2.addChain([{ len: 4 }], { indirect: true });
  fails(plain.popAvailable(), 'indirect-not-negotiated', /descriptor 0 is INDIRECT/);
});

test('16-bit avail and used indices wrap around', () => {
  const d = FakeDriver.at(memory, 4, 0x40000, 4096);
  const q = queue(d);
  for (let i = 0; i < 70_000; i++) {
    d.resetHeap();
    const head = d.addChain([
      { len: 1, data: bytes(i & 0xff) },
      { len: 2, writable: true },
    ]);
    const c = chain(q.popAvailable());
    assert.equal(c.head, head);
    assert.equal(c.readBytes()[0], i & 0xff);
    q.pushUsed(c, 2);
    const used = d.takeUsed();
    assert.equal(used.length, 1);
    assert.equal(used[0].id, head);
  }
  assert.equal(q.nextAvailIndex, 70_000 & 0xffff);
  assert.equal(d.usedIdx, 70_000 & 0xffff);
  // A full ring in flight across the wrap: avail->idx 0xfffe → 0x0002 with the device at 0xfffe.
  const d2 = FakeDriver.at(memory, 4, 0x48000, 4096);
  const q2 = queue(d2);
  for (let i = 0; i < 0xfffe; i++) {
    d2.publish(0);
    q2.pushUsed(chain(q2.popAvailable()), 0); // used before it is posted again (§2.7.13)
  }
  for (let i = 0; i < 4; i++) {
    d2.writeDesc(i, 0x1000, 1, 0);
    d2.publish(i);
  }
  assert.equal(d2.availIdx, 2);
  assert.equal(q2.pending(), 4);
  for (let i = 0; i < 4; i++) chain(q2.popAvailable());
  assert.equal(q2.popAvailable(), undefined);
  assert.equal(q2.nextAvailIndex, 2);
});

test('EVENT_IDX: used_event decides interrupts (vring_need_event)', () => {
  const d = FakeDriver.at(memory, 8, 0x50000);
  const q = queue(d, { eventIdx: true });
  d.setAvailFlags(1); // NO_INTERRUPT must be ignored with EVENT_IDX
  const use = (): void => {
    d.resetHeap();
    d.addChain([{ len: 1 }]);
    q.pushUsed(chain(q.popAvailable()), 0);
    d.takeUsed();
  };
  use();
  assert.equal(q.needsNotification(), true, 'the first decision always notifies');
  d.setUsedEvent(3); // interrupt when the element at used index 3 is written (idx 3 → 4)
  use(); // idx 2
  assert.equal(q.needsNotification(), false);
  use(); // idx 3
  assert.equal(q.needsNotification(), false);
  use(); // idx 4
  assert.equal(q.needsNotification(), true);
  assert.equal(q.needsNotification(), false, 'nothing used since');
  d.setUsedEvent(3); // already passed: a batch writing elements 4 and 5 does not notify
  use();
  use();
  assert.equal(q.needsNotification(), false);
  d.setUsedEvent(7);
  use(); // idx 7
  use(); // idx 8: the batch crossed used_event
  assert.equal(q.needsNotification(), true);
  // used_event across the 16-bit wrap
  for (let i = 8; i < 0xffff; i++) {
    q.pushUsed(0, 0);
  }
  d.takeUsed();
  assert.equal(q.nextUsedIndex, 0xffff);
  q.needsNotification();
  d.setUsedEvent(0xffff);
  q.pushUsed(0, 0); // idx wraps to 0: the element at 0xffff was written
  assert.equal(q.needsNotification(), true);
});

test('EVENT_IDX: avail_event tells the driver when to kick', () => {
  const d = FakeDriver.at(memory, 8, 0x60000);
  const q = queue(d, { eventIdx: true });
  assert.equal(q.enableNotifications(), false, 'nothing pending');
  assert.equal(d.availEvent, 0);
  assert.equal(d.usedFlags, 0, 'flags stay 0 with EVENT_IDX');
  let old = d.availIdx;
  d.addChain([{ len: 1 }]);
  assert.equal(d.mustKick(old, true), true);
  q.disableNotifications(); // a no-op with EVENT_IDX: avail_event is simply left behind
  assert.equal(d.usedFlags, 0);
  chain(q.popAvailable());
  old = d.availIdx;
  d.addChain([{ len: 1 }]);
  assert.equal(d.mustKick(old, true), false, 'avail_event left at 0: no kick for the second chain');
  assert.equal(q.enableNotifications(), true, 'a chain arrived while notifications were off');
  assert.equal(d.availEvent, 1);
  chain(q.popAvailable());
  assert.equal(q.enableNotifications(), false);
  assert.equal(d.availEvent, 2);
  old = d.availIdx;
  d.addChain([{ len: 1 }]);
  assert.equal(d.mustKick(old, true), true);
});

test('without EVENT_IDX: VIRTQ_AVAIL_F_NO_INTERRUPT and VIRTQ_USED_F_NO_NOTIFY', () => {
  const d = FakeDriver.at(memory, 8, 0x70000);
  const q = queue(d);
  d.setUsedEvent(100); // ignored without EVENT_IDX
  d.addChain([{ len: 1 }]);
  q.pushUsed(chain(q.popAvailable()), 0);
  assert.equal(q.needsNotification(), true);
  d.setAvailFlags(1);
  assert.equal(q.needsNotification(), false);
  d.setAvailFlags(0);
  assert.equal(q.needsNotification(), true);

  q.disableNotifications();
  assert.equal(d.usedFlags, 1);
  const old = d.availIdx;
  d.addChain([{ len: 1 }]);
  assert.equal(d.mustKick(old, false), false);
  assert.equal(q.enableNotifications(), true, 'pending work is reported');
  assert.equal(d.usedFlags, 0);
  chain(q.popAvailable());
  assert.equal(q.enableNotifications(), false);
});

test('undoPop puts the chain back', () => {
  const d = FakeDriver.at(memory, 8, 0x78000);
  const q = queue(d);
  const head = d.addChain([{ len: 1, writable: true }]);
  assert.equal(chain(q.popAvailable()).head, head);
  q.undoPop();
  assert.equal(q.pending(), 1);
  assert.equal(chain(q.popAvailable()).head, head);
});

// ---- hostile drivers ----------------------------------------------------------------------------------------

test('queue size must be a power of two in 1..32768', () => {
  const d = FakeDriver.at(memory, 8, 0x80000);
  for (const size of [0, 3, 6, 100, 32769, 65536, 1.5, -8, NaN]) {
    fails(SplitQueue.create(memory, d.config({ size })), 'queue-size', /power of two/);
  }
  for (const size of [1, 2, 256, 32768]) {
    const q = SplitQueue.create(memory, { size, descTable: 0x100000, availRing: 0x200000, usedRing: 0x300000 });
    assert.ok(q instanceof SplitQueue, `size ${size}`);
  }
});

test('ring addresses: misaligned or not wholly inside RAM', () => {
  const d = FakeDriver.at(memory, 8, 0x88000);
  fails(
    SplitQueue.create(memory, d.config({ descTable: d.desc + 8 })),
    'ring-address',
    /descriptor table .* 16-byte aligned/,
  );
  fails(
    SplitQueue.create(memory, d.config({ availRing: d.avail + 1 })),
    'ring-address',
    /available ring .* 2-byte aligned/,
  );
  fails(SplitQueue.create(memory, d.config({ usedRing: d.used + 2 })), 'ring-address', /used ring .* 4-byte aligned/);
  fails(SplitQueue.create(memory, d.config({ descTable: RAM })), 'ring-address', /not inside guest RAM/);
  fails(SplitQueue.create(memory, d.config({ descTable: RAM - 64 })), 'ring-address', /descriptor table/); // 128 bytes needed
  fails(SplitQueue.create(memory, d.config({ availRing: RAM - 20 })), 'ring-address', /available ring/); // 22 needed
  fails(SplitQueue.create(memory, d.config({ usedRing: RAM - 68 })), 'ring-address', /used ring/); // 70 needed
  fails(SplitQueue.create(memory, d.config({ usedRing: 2 ** 64 - 64 })), 'ring-address');
  fails(SplitQueue.create(memory, d.config({ usedRing: -4 })), 'ring-address');
  // Exactly at the end of RAM is fine (the avail ring is 2-aligned and 22 bytes long for size 8).
  assert.ok(SplitQueue.create(memory, d.config({ availRing: RAM - 22 })) instanceof SplitQueue);
});

test('buffers outside RAM, straddling its end, wrapping past 2^64', () => {
  const d = FakeDriver.at(memory, 8, 0x90000);
  const q = queue(d);
  d.writeDesc(0, RAM, 1, 0);
  d.publish(0);
  fails(
    q.popAvailable(),
    'buffer-address',
    /chain 0: descriptor 0: buffer 0x1000000 \(\+0x1\) is not inside guest RAM/,
  );
  d.writeDesc(1, RAM - 4, 8, 0);
  d.publish(1);
  fails(q.popAvailable(), 'buffer-address', /descriptor 1/);
  d.writeDesc(2, 0xffff_ffff_ffff_f000n, 0x2000, VIRTQ_DESC_F_WRITE);
  d.publish(2);
  fails(q.popAvailable(), 'address-overflow', /wraps past 2\^64/);
  d.writeDesc(3, 2n ** 60n, 16, 0);
  d.publish(3);
  fails(q.popAvailable(), 'buffer-address', /0x1000000000000000/);
  // Zero-length buffers must still point into RAM (its very end is allowed).
  d.writeDesc(4, RAM, 0, 0);
  d.publish(4);
  assert.equal(chain(q.popAvailable()).buffers[0].gpa, RAM);
  d.writeDesc(5, RAM + 4096, 0, 0);
  d.publish(5);
  fails(q.popAvailable(), 'buffer-address');
  // A bad buffer later in the chain names its own descriptor.
  d.writeDesc(6, 0x1000, 8, VIRTQ_DESC_F_NEXT, 7);
  d.writeDesc(7, RAM - 1, 2, VIRTQ_DESC_F_WRITE);
  d.publish(6);
  const e = fails(q.popAvailable(), 'buffer-address', /chain 6: descriptor 7/);
  assert.equal(e.head, 6);
  assert.equal(e.descriptor, 7);
  // The queue keeps going after a bad chain (the device decides to reset).
  d.writeDesc(0, 0x1000, 8, 0);
  d.publish(0);
  assert.equal(chain(q.popAvailable()).head, 0);
});

test('buffers in the MMIO hole or straddling into it; lengths adding past 2^32', () => {
  const big = GuestMemory.allocateRanges(ramRanges(4 * GIB + 64 * MIB)); // [0, 3 GiB) and [4 GiB, 5 GiB + 64 MiB), never touched
  try {
    const d = FakeDriver.at(big, 8, 0x10000);
    const q = queue(d, { indirect: true });
    d.writeDesc(0, MMIO_HOLE_START, 4, 0);
    d.publish(0);
    fails(q.popAvailable(), 'buffer-address', /0xc0000000/);
    d.writeDesc(1, 0xfec0_0000, 4, VIRTQ_DESC_F_WRITE); // the IOAPIC
    d.publish(1);
    fails(q.popAvailable(), 'buffer-address');
    d.writeDesc(2, MMIO_HOLE_START - 4096, 8192, 0);
    d.publish(2);
    fails(q.popAvailable(), 'buffer-address');
    d.writeDesc(3, FOUR_GIB - 8, 16, 0);
    d.publish(3);
    fails(q.popAvailable(), 'buffer-address');
    d.writeDesc(4, FOUR_GIB + 4096, 16, 0);
    d.publish(4);
    assert.equal(chain(q.popAvailable()).buffers[0].gpa, FOUR_GIB + 4096, 'RAM above 4 GiB is fine');
    // 3 GiB + 1 GiB = 2^32 bytes: one more than a used length can say.
    d.writeDesc(5, 0, 3 * GIB, VIRTQ_DESC_F_NEXT, 6);
    d.writeDesc(6, FOUR_GIB, 1 * GIB, VIRTQ_DESC_F_WRITE);
    d.publish(5);
    fails(q.popAvailable(), 'length-overflow', /descriptor 6/);
    d.writeDesc(6, FOUR_GIB, 1 * GIB - 1, VIRTQ_DESC_F_WRITE);
    d.publish(5);
    assert.equal(chain(q.popAvailable()).writableLength, GIB - 1, 'exactly 2^32 - 1 bytes is fine');
    // An indirect table in the hole.
    d.writeDesc(7, MMIO_HOLE_START + 0x1000, 32, VIRTQ_DESC_F_INDIRECT);
    d.publish(7);
    fails(q.popAvailable(), 'indirect-table', /not inside guest RAM/);
  } finally {
    big.release();
  }
});

test('NEXT outside the table, self-loops and longer loops', () => {
  const d = FakeDriver.at(memory, 8, 0xa0000);
  const q = queue(d);
  d.writeDesc(0, 0x1000, 4, VIRTQ_DESC_F_NEXT, 8);
  d.publish(0);
  fails(q.popAvailable(), 'next-index', /descriptor 0 continues to descriptor 8, outside the queue of size 8/);
  d.writeDesc(1, 0x1000, 4, VIRTQ_DESC_F_NEXT, 0xffff);
  d.publish(1);
  fails(q.popAvailable(), 'next-index');
  d.writeDesc(2, 0x1000, 4, VIRTQ_DESC_F_NEXT, 2);
  d.publish(2);
  fails(q.popAvailable(), 'descriptor-loop', /chain 2: more than 8 descriptors/);
  assert.equal(q.lastWalkLength, 8);
  d.writeDesc(3, 0x1000, 4, VIRTQ_DESC_F_NEXT, 4);
  d.writeDesc(4, 0x1000, 4, VIRTQ_DESC_F_NEXT, 5);
  d.writeDesc(5, 0x1000, 4, VIRTQ_DESC_F_NEXT, 3);
  d.publish(4);
  fails(q.popAvailable(), 'descriptor-loop');
  // A chain using every descriptor exactly once is not a loop.
  for (let i = 0; i < 8; i++) d.writeDesc(i, 0x1000, 4, i < 7 ? VIRTQ_DESC_F_NEXT : 0, i + 1);
  d.publish(0);
  assert.equal(chain(q.popAvailable()).buffers.length, 8);
});

test('indirect tables: nested, with NEXT, bad length, outside RAM, loops, NEXT outside the table', () => {
  const d = FakeDriver.at(memory, 8, 0xb0000);
  const q = queue(d, { indirect: true });
  const table = d.alloc(16 * 4);
  const buf = d.alloc(64);
  const tableChain = (len: number, flags = VIRTQ_DESC_F_INDIRECT, addr: number | bigint = table): void => {
    d.writeDesc(0, addr, len, flags, 1);
    d.writeDesc(1, buf, 4, 0);
    d.publish(0);
  };
  d.writeDesc(0, buf, 4, VIRTQ_DESC_F_NEXT, 1, table);
  d.writeDesc(1, table, 32, VIRTQ_DESC_F_INDIRECT, 0, table);
  tableChain(64);
  fails(q.popAvailable(), 'indirect-nested', /indirect descriptor 1 of the table at 0x[0-9a-f]+ \(descriptor 0\)/);

  d.writeDesc(0, buf, 4, 0, 0, table);
  tableChain(16, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT);
  fails(q.popAvailable(), 'indirect-with-next', /descriptor 0 has both INDIRECT and NEXT/);

  tableChain(24);
  fails(q.popAvailable(), 'indirect-table', /length 24, not a non-zero multiple of 16/);
  tableChain(0);
  fails(q.popAvailable(), 'indirect-table', /length 0/);
  tableChain(32, VIRTQ_DESC_F_INDIRECT, RAM - 16);
  fails(q.popAvailable(), 'indirect-table', /not inside guest RAM/);
  tableChain(32, VIRTQ_DESC_F_INDIRECT, 0xffff_ffff_ffff_fff0n);
  fails(q.popAvailable(), 'indirect-table');
  tableChain(16 * 65537, VIRTQ_DESC_F_INDIRECT, 0);
  fails(q.popAvailable(), 'indirect-table', /65537 entries/);

  d.writeDesc(0, buf, 4, VIRTQ_DESC_F_NEXT, 4, table); // the table has 4 entries: 0..3
  tableChain(64);
  fails(q.popAvailable(), 'next-index', /continues to 4, outside the table's 4 descriptors/);
  d.writeDesc(0, buf, 4, VIRTQ_DESC_F_NEXT, 1, table);
  d.writeDesc(1, buf, 4, VIRTQ_DESC_F_NEXT, 0, table);
  tableChain(64);
  fails(q.popAvailable(), 'descriptor-loop', /more than the table's 4 descriptors/);
  d.writeDesc(0, buf, 4, VIRTQ_DESC_F_NEXT, 0, table);
  tableChain(16);
  const e = fails(q.popAvailable(), 'descriptor-loop');
  assert.equal(e.indirect, true);

  // Indirect buffers are validated like direct ones.
  d.writeDesc(0, RAM - 2, 4, 0, 0, table);
  tableChain(16);
  fails(q.popAvailable(), 'buffer-address', /indirect descriptor 0/);
  // The largest table (2^16 entries) is walked, not rejected.
  const huge = 0x400000;
  memory.fill(huge, 16 * 65536);
  for (let i = 0; i < 65536; i++) d.writeDesc(i, buf, 0, i < 65535 ? VIRTQ_DESC_F_NEXT : 0, i + 1, huge);
  tableChain(16 * 65536, VIRTQ_DESC_F_INDIRECT, huge);
  assert.equal(chain(q.popAvailable()).buffers.length, 65536);
});

test('a readable buffer after a writable one is a driver error (§2.7.4.2)', () => {
  const d = FakeDriver.at(memory, 8, 0xc0000);
  const q = queue(d, { indirect: true });
  d.writeDesc(0, 0x1000, 4, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1);
  d.writeDesc(1, 0x2000, 4, 0);
  d.publish(0);
  fails(q.popAvailable(), 'readable-after-writable', /chain 0: descriptor 1/);
  // Across the boundary between direct descriptors and the indirect table.
  d.addChain([{ len: 4, writable: true }, { len: 4 }], { indirect: true, directFirst: 1 });
  fails(q.popAvailable(), 'readable-after-writable', /indirect descriptor 0/);
});

test('avail idx jumping ahead, heads outside the queue', () => {
  const d = FakeDriver.at(memory, 8, 0xd0000);
  const q = queue(d);
  d.setAvailIdx(9);
  fails(q.pending(), 'avail-index', /avail idx 9 is 9 entries ahead of the device's 0, more than the queue size 8/);
  fails(q.popAvailable(), 'avail-index');
  fails(q.popAvailable(), 'avail-index', undefined); // reported again: nothing behind it is trusted
  d.setAvailIdx(0xffff); // "behind" the device is also more than the queue size ahead, modulo 2^16
  fails(q.popAvailable(), 'avail-index');
  d.setAvailIdx(8); // exactly a full ring is fine
  assert.equal(q.pending(), 8);

  const d2 = FakeDriver.at(memory, 8, 0xd8000);
  const q2 = queue(d2);
  d2.writeDesc(0, 0x1000, 4, 0);
  d2.publish(8);
  fails(q2.popAvailable(), 'head-index', /names descriptor 8, outside the queue of size 8/);
  d2.publish(0xffff);
  fails(q2.popAvailable(), 'head-index');
  d2.publish(0);
  assert.equal(chain(q2.popAvailable()).head, 0, 'the bad entries were consumed');
});

test('rings at the very end of RAM and chains pointing just past it', () => {
  const size = 16;
  const end = 64 * 1024;
  const edge = GuestMemory.allocateRanges([{ gpa: 0, size: end }]);
  try {
    const avail = end - (6 + 2 * size); // the avail ring's last byte is RAM's last byte
    const used = 0x8000;
    const desc = 0x9000;
    const d = new FakeDriver(edge, { size, desc, avail, used, heap: 0x1000, heapEnd: 0x8000 });
    const q = queue(d, { eventIdx: true, indirect: true });
    d.setUsedEvent(0);
    d.addChain([{ len: 4 }, { len: 4, writable: true, gpa: end - 4 }]);
    const c = chain(q.popAvailable());
    assert.equal(c.writeBytes(bytes(1, 2, 3, 4, 5)), 4);
    q.pushUsed(c, 4);
    assert.equal(q.needsNotification(), true);
    d.writeDesc(0, end - 3, 4, 0);
    d.publish(0);
    fails(q.popAvailable(), 'buffer-address');
    d.writeDesc(0, end - 16, 32, VIRTQ_DESC_F_INDIRECT);
    d.publish(0);
    fails(q.popAvailable(), 'indirect-table');
  } finally {
    edge.release();
  }
});

test('rings and buffers crossing a 1 GiB view window of GuestMemory', () => {
  const wide = GuestMemory.allocateRanges([{ gpa: 0, size: GIB + MIB }]); // only touched pages cost
  try {
    const d = FakeDriver.at(wide, 8, GIB - 64); // the descriptor table straddles the window boundary
    const q = queue(d, { eventIdx: true });
    const data = Uint8Array.from({ length: 32 }, (_, i) => i);
    d.addChain([
      { len: 32, gpa: GIB - 16, data },
      { len: 32, writable: true, gpa: GIB + 4096 - 16 },
    ]);
    const c = chain(q.popAvailable());
    assert.deepEqual(c.readBytes(), data);
    assert.equal(c.writeBytes(data), 32);
    assert.deepEqual(wide.read(GIB + 4096 - 16, 32), data);
    q.pushUsed(c, 32);
    assert.deepEqual(d.takeUsed(), [{ id: c.head, len: 32 }]);
    assert.equal(q.needsNotification(), true);
    assert.equal(q.enableNotifications(), false);
    assert.equal(d.availEvent, 1);
  } finally {
    wide.release();
  }
});

test('pushUsed rejects device bugs loudly', () => {
  const d = FakeDriver.at(memory, 8, 0xe0000);
  const q = queue(d);
  assert.throws(() => q.pushUsed(8, 0), RangeError);
  assert.throws(() => q.pushUsed(-1, 0), RangeError);
  assert.throws(() => q.pushUsed(0, 2 ** 32), RangeError);
  assert.throws(() => q.pushUsed(0, -1), RangeError);
  assert.equal(d.usedIdx, 0);
});

test('EVENT_IDX: a device that only pops (never turns kicks off) is kicked for every chain', () => {
  const d = FakeDriver.at(memory, 8, 0x68000);
  const q = queue(d, { eventIdx: true });
  for (let i = 0; i < 20; i++) {
    const old = d.availIdx;
    d.addChain([{ len: 1 }]);
    assert.equal(d.mustKick(old, true), true, `chain ${i} is kicked`);
    q.pushUsed(chain(q.popAvailable()), 0);
    d.takeUsed(); // the driver reclaims its descriptors
    assert.equal(q.popAvailable(), undefined, 'the ring is empty');
    assert.equal(d.availEvent, (i + 1) & 0xffff, 'avail_event is where the device stands');
  }
  // Turned off while draining, avail_event is left behind until the device asks again.
  q.disableNotifications();
  let old = d.availIdx;
  d.addChain([{ len: 1 }]);
  assert.equal(d.mustKick(old, true), true);
  chain(q.popAvailable());
  old = d.availIdx;
  d.addChain([{ len: 1 }]);
  assert.equal(d.mustKick(old, true), false, 'no kick while the device drains');
  assert.equal(q.enableNotifications(), true, 'and it sees the chain when it asks again');
});

test('a head made available again while its chain is in flight is a driver error (head-in-flight)', () => {
  const d = FakeDriver.at(memory, 8, 0x100000);
  const q = queue(d, { eventIdx: true });
  const head = d.addChain([{ len: 16 }, { len: 1, writable: true }]);
  const first = chain(q.popAvailable());
  assert.equal(first.head, head);
  d.publish(head); // the device has not used it: the descriptors are still the device's (§2.7.13)
  fails(q.popAvailable(), 'head-in-flight', /descriptor 0, whose chain is still in flight \(1 of 8 in flight\)/);
  // Once used, the same head may come back.
  q.pushUsed(first, 1);
  d.publish(head);
  assert.equal(chain(q.popAvailable()).head, head);
});

test('a driver re-posting one head as fast as the device pops it cannot keep more than size chains in flight', () => {
  // The flood of the hostile guest (test/guests/virtio-flood.c): watch avail_event, post the same head again.
  const d = FakeDriver.at(memory, 8, 0x120000);
  const q = queue(d, { eventIdx: true });
  const head = d.addChain([{ len: 16 }, { len: 1, writable: true }]);
  const held: DescriptorChain[] = [];
  let error: VirtqueueError | undefined;
  for (let i = 0; i < 1000 && !error; i++) {
    if (i > 0) d.publish(head);
    const r = q.popAvailable();
    if (r instanceof VirtqueueError) error = r;
    else held.push(chain(r));
  }
  fails(error, 'head-in-flight');
  assert.equal(held.length, 1, 'the device holds the one chain it popped, not one per re-post');
  assert.equal(q.inFlight, 1);
  q.pushUsed(held[0], 0);
  assert.equal(q.inFlight, 0);
});

test('in flight from pop to used: every head once, at most size; undoPop gives the head back', () => {
  const d = FakeDriver.at(memory, 8, 0x140000);
  const q = queue(d);
  const heads = Array.from({ length: 8 }, () => d.addChain([{ len: 1 }]));
  const chains = heads.map(() => chain(q.popAvailable()));
  assert.equal(q.inFlight, 8);
  // The driver posts a head the device holds: refused, and nothing more is held.
  d.publish(heads[3]);
  fails(q.popAvailable(), 'head-in-flight');
  assert.equal(q.inFlight, 8);
  // Used out of order: each head is free again as soon as its used element is published.
  q.pushUsed(chains[5], 0);
  q.pushUsed(chains[2], 0);
  assert.equal(q.inFlight, 6);
  d.publish(heads[5]);
  const again = chain(q.popAvailable());
  assert.equal(again.head, heads[5]);
  q.undoPop(); // put back: not in flight any more, and popped again as the same chain
  assert.equal(q.inFlight, 6);
  assert.equal(chain(q.popAvailable()).head, heads[5]);
  assert.equal(q.inFlight, 7);
});
