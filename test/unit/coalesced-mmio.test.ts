// KVM's coalesced MMIO ring as src/vmm/coalesced-mmio.ts reads it: a page laid out as kvm.h's
// kvm_coalesced_mmio_ring (first, last, then 24-byte entries), filled here the way KVM fills it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { COALESCED_MMIO_MAX, CoalescedMmioRing } from '../../src/vmm/coalesced-mmio.js';
import { kvm_coalesced_mmio, kvm_coalesced_mmio_ring } from '../../src/kvm/abi.js';
import type { MmioBus, PortIoBus } from '../../src/devices/bus.js';

const ENTRY = kvm_coalesced_mmio.size;
const HEAD = kvm_coalesced_mmio_ring.size;

/** A ring page and KVM's side of it: push() appends an entry and moves `last`. */
function fakeKvmRing() {
  const page = new DataView(new ArrayBuffer(4096));
  let last = 0;
  return {
    page,
    push(address: number, bytes: number[], pio = false): void {
      const at = HEAD + last * ENTRY;
      page.setBigUint64(at, BigInt(address), true);
      page.setUint32(at + 8, bytes.length, true);
      page.setUint32(at + 12, pio ? 1 : 0, true);
      bytes.forEach((b, i) => page.setUint8(at + 16 + i, b));
      last = (last + 1) % COALESCED_MMIO_MAX;
      page.setUint32(4, last, true);
    },
    first: (): number => page.getUint32(0, true),
  };
}

function recordingBuses() {
  const seen: string[] = [];
  const mmio = {
    write: (address: number, data: Uint8Array) =>
      seen.push(`mmio 0x${address.toString(16)} ${Buffer.from(data).toString('hex')}`),
  } as unknown as MmioBus;
  const pio = {
    write: (port: number, size: number, value: number) =>
      seen.push(`pio 0x${port.toString(16)}/${size} 0x${value.toString(16)}`),
  } as unknown as PortIoBus;
  return { seen, mmio, pio };
}

test('the ring holds as many entries as kvm.h says ((4096 - 8) / 24)', () => {
  assert.equal(COALESCED_MMIO_MAX, 170);
});

test('queued writes are replayed in order, MMIO and port I/O, and every slot is handed back', () => {
  const kvm = fakeKvmRing();
  const ring = new CoalescedMmioRing(kvm.page, CoalescedMmioRing.createLock());
  const { seen, mmio, pio } = recordingBuses();
  assert.equal(ring.drain(mmio, pio), 0, 'an empty ring replays nothing');
  kvm.push(0xb8000, [0x41, 0x07]);
  kvm.push(0xb8002, [0x42]);
  kvm.push(0x3d4, [0x0e], true);
  kvm.push(0xa0000, [1, 2, 3, 4, 5, 6, 7, 8]);
  assert.equal(ring.drain(mmio, pio), 4);
  assert.deepEqual(seen, ['mmio 0xb8000 4107', 'mmio 0xb8002 42', 'pio 0x3d4/1 0xe', 'mmio 0xa0000 0102030405060708']);
  assert.equal(kvm.first(), 4, '`first` caught up with `last`');
  assert.equal(ring.drain(mmio, pio), 0);
  assert.equal(ring.count, 4);
});

test('the ring wraps around at its end', () => {
  const kvm = fakeKvmRing();
  const ring = new CoalescedMmioRing(kvm.page, CoalescedMmioRing.createLock());
  const { seen, mmio, pio } = recordingBuses();
  for (let round = 0; round < 3; round++) {
    for (let i = 0; i < 100; i++) kvm.push(0xb8000 + 2 * i, [i & 0xff]);
    assert.equal(ring.drain(mmio, pio), 100);
  }
  assert.equal(seen.length, 300);
  assert.equal(seen[299], `mmio 0xb80c6 63`);
  assert.equal(kvm.first(), 300 % COALESCED_MMIO_MAX);
});

test('indexes outside the ring are not followed (no reads beyond the page)', () => {
  const kvm = fakeKvmRing();
  const ring = new CoalescedMmioRing(kvm.page, CoalescedMmioRing.createLock());
  const { seen, mmio, pio } = recordingBuses();
  kvm.page.setUint32(4, 5000, true);
  assert.equal(ring.drain(mmio, pio), 0);
  assert.deepEqual(seen, []);
});

test('an entry longer than 8 bytes is cut to the 8 the entry holds', () => {
  const kvm = fakeKvmRing();
  const ring = new CoalescedMmioRing(kvm.page, CoalescedMmioRing.createLock());
  const { seen, mmio, pio } = recordingBuses();
  kvm.push(0xa0000, [9, 9, 9, 9, 9, 9, 9, 9]);
  kvm.page.setUint32(HEAD + 8, 4096, true);
  ring.drain(mmio, pio);
  assert.deepEqual(seen, ['mmio 0xa0000 0909090909090909']);
});
