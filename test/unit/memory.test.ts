import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  guestMemoryMap,
  ramRanges,
  MMIO_HOLE_START,
  FOUR_GIB,
  E820_RAM,
  E820_RESERVED,
  MAX_MEMORY,
  PCI_ECAM_BASE,
  PCI_ECAM_SIZE,
} from '../../src/arch/x86_64/layout.js';
import { GuestMemory, GuestMemoryError } from '../../src/base/guest-memory.js';
import { GIB, MIB, TIB, parseSize, formatSize } from '../../src/base/units.js';

test('RAM below the 32-bit hole, the rest above 4 GiB', () => {
  assert.deepEqual(ramRanges(512 * MIB), [{ gpa: 0, size: 512 * MIB }]);
  assert.deepEqual(ramRanges(3 * GIB), [{ gpa: 0, size: 3 * GIB }]);
  assert.deepEqual(ramRanges(8 * GIB), [
    { gpa: 0, size: MMIO_HOLE_START },
    { gpa: FOUR_GIB, size: 8 * GIB - MMIO_HOLE_START },
  ]);
  assert.throws(() => ramRanges(MAX_MEMORY + 4096), RangeError);
  assert.throws(() => ramRanges(1024), RangeError);
});

test('guest memory map: low RAM, reserved BIOS area, device reservations, high RAM; sorted and disjoint', () => {
  const ecam = { base: PCI_ECAM_BASE, size: PCI_ECAM_SIZE };
  for (const size of [16 * MIB, 512 * MIB, 3 * GIB, 4 * GIB, 128 * GIB]) {
    const map = guestMemoryMap(size, [ecam]);
    let ramTotal = 0;
    for (let i = 0; i < map.length; i++) {
      if (i) assert.ok(map[i].base >= map[i - 1].base + map[i - 1].size, `entry ${i} overlaps for ${size}`);
      if (map[i].type === E820_RAM) ramTotal += map[i].size;
    }
    assert.equal(map[1].type, E820_RESERVED);
    assert.equal(ramTotal, size - (0x100000 - 0x9fc00), `RAM total for ${formatSize(size)}`);
    const ram = map.filter((e) => e.type === E820_RAM);
    assert.ok(
      ram.every((e) => e.base + e.size <= MMIO_HOLE_START || e.base >= FOUR_GIB),
      'no RAM in the hole',
    );
    assert.ok(
      map.some((e) => e.type === E820_RESERVED && e.base === PCI_ECAM_BASE && e.size === PCI_ECAM_SIZE),
      'the PCIe ECAM window is reserved',
    );
  }
  assert.throws(() => guestMemoryMap(512 * MIB, [{ base: 0x100000, size: 4096 }]), /overlaps RAM/);
  const big = guestMemoryMap(128 * GIB);
  assert.equal(big.at(-1)!.base, FOUR_GIB);
  assert.equal(big.at(-1)!.base + big.at(-1)!.size, 128 * GIB + GIB);
});

test('sizes: suffixes, garbage and limits', () => {
  assert.equal(parseSize('4096'), 4096);
  assert.equal(parseSize('512M'), 512 * MIB);
  assert.equal(parseSize('128G'), 128 * GIB);
  assert.equal(parseSize('1T'), TIB);
  assert.equal(parseSize('2GiB'), 2 * GIB);
  assert.equal(parseSize('1.5G'), 1.5 * GIB);
  for (const bad of ['', 'lots', '12Q', '-1G', '1e9', 'G']) assert.throws(() => parseSize(bad), RangeError, bad);
  assert.equal(formatSize(128 * GIB), '128G');
});

test('guest memory: bounds-checked access never leaves RAM', () => {
  const mem = GuestMemory.allocateRanges(ramRanges(16 * MIB));
  try {
    mem.writeU32(0x1000, 0xdeadbeef);
    assert.equal(mem.readU32(0x1000), 0xdeadbeef);
    mem.writeU64(16 * MIB - 8, 0x1122334455667788n);
    assert.equal(mem.readU64(16 * MIB - 8), 0x1122334455667788n);
    assert.throws(() => mem.readU64(16 * MIB - 7), GuestMemoryError);
    assert.throws(() => mem.write(16 * MIB - 2, new Uint8Array(4)), GuestMemoryError);
    assert.throws(() => mem.read(-1, 1), GuestMemoryError);
    assert.throws(() => mem.read(0, Number.MAX_SAFE_INTEGER), GuestMemoryError);
    assert.throws(() => mem.slice(2 ** 53, 1), GuestMemoryError);
    assert.throws(() => mem.readU8(0.5), GuestMemoryError);
    assert.equal(mem.contains(0, 16 * MIB), true);
    assert.equal(mem.contains(0, 16 * MIB + 1), false);
    mem.write(0x2000, new TextEncoder().encode('partita\0'));
    assert.equal(mem.readCString(0x2000), 'partita');
  } finally {
    mem.release();
  }
});

test('guest memory: 128 GiB is reserved lazily and usable on both sides of the hole', () => {
  const before = process.memoryUsage().rss;
  const mem = GuestMemory.allocateRanges(ramRanges(128 * GIB));
  try {
    assert.equal(mem.size, 128 * GIB);
    assert.equal(mem.regions.length, 2);
    const top = FOUR_GIB + 125 * GIB - 8;
    mem.writeU64(top, 0xa5a5a5a55a5a5a5an);
    mem.writeU64(MMIO_HOLE_START - 8, 7n);
    assert.equal(mem.readU64(top), 0xa5a5a5a55a5a5a5an);
    assert.equal(mem.readU64(MMIO_HOLE_START - 8), 7n);
    assert.throws(() => mem.readU8(MMIO_HOLE_START), GuestMemoryError, 'the MMIO hole is not RAM');
    assert.throws(() => mem.readU8(top + 8), GuestMemoryError);
    // Writes spanning a 1 GiB view window are split correctly.
    const edge = FOUR_GIB + GIB - 3;
    mem.write(edge, new Uint8Array([1, 2, 3, 4, 5, 6]));
    assert.deepEqual([...mem.read(edge, 6)], [1, 2, 3, 4, 5, 6]);
    const grown = process.memoryUsage().rss - before;
    assert.ok(grown < 64 * MIB, `RSS grew by ${grown} bytes for a 128 GiB guest`);
  } finally {
    mem.release();
  }
});
