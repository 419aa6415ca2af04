// PVH boot: segments copied to p_paddr, bss zeroed, struct hvm_start_info (version 1) with the memory map, command
// line, modules (page-aligned, above the kernel, skipping Partita's areas and holes) and RSDP.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  ramRanges,
  BOOT_CMDLINE_ADDRESS,
  BOOT_INFO_ADDRESS,
  BOOT_MEMMAP_ADDRESS,
  BOOT_MODLIST_ADDRESS,
  FOUR_GIB,
  guestMemoryMap,
  PCI_ECAM_BASE,
  PCI_ECAM_SIZE,
} from '../../src/arch/x86_64/layout.js';
import { GuestMemory } from '../../src/base/guest-memory.js';
import { loadKernel } from '../../src/boot/index.js';
import { GIB, MIB } from '../../src/base/units.js';
import { bootHarness, buildElf, RAM_PATTERN } from '../support/elf-builder.js';

const SIZE = 64 * MIB;
const h = bootHarness(SIZE);
after(() => h.release());
const { memory, map } = h;
const code = new Uint8Array(256).map((_, i) => (i * 7 + 1) & 0xff);
const data = new Uint8Array(100).map((_, i) => 0x80 | i);

function u64(at: number): number {
  return Number(memory.readU64(at));
}

test('PVH: segments loaded, bss zeroed, hvm_start_info with every field, memmap, cmdline, modules, RSDP', () => {
  const image = buildElf({
    entry: 0x200000, // e_entry is not the PVH entry: the note is
    pvhEntry: 0x200010,
    segments: [
      { paddr: 0x200000, data: code, memsz: 0x1000 },
      { paddr: 0x204000, data, memsz: 0x2345 },
    ],
  });
  const initrd = new Uint8Array(5000).map((_, i) => i & 0xff);
  const second = new Uint8Array(3).fill(0x42);
  const entry = h.load(image, {
    cmdline: 'console=ttyS0 quiet',
    rsdpAddress: 0xe0000,
    modules: [
      { name: 'initrd.img', data: initrd, cmdline: 'initrd arg=1' },
      { name: 'second.bin', data: second, cmdline: '' },
    ],
  });
  assert.deepEqual(entry, {
    protocol: 'pvh',
    entryPoint: 0x200010,
    eax: 0,
    ebx: BOOT_INFO_ADDRESS,
    kernelRange: { start: 0x200000, end: 0x206345 },
  });

  assert.deepEqual(memory.read(0x200000, 256), code);
  assert.ok(
    memory.read(0x200100, 0x1000 - 0x100).every((b) => b === 0),
    'bss of segment 0 zeroed',
  );
  assert.deepEqual(memory.read(0x204000, 100), data);
  assert.ok(
    memory.read(0x204064, 0x2345 - 100).every((b) => b === 0),
    'bss of segment 1 zeroed',
  );
  assert.ok(
    memory.read(0x201000, 0x3000).every((b) => b === RAM_PATTERN),
    'the gap between segments is not touched',
  );
  assert.equal(memory.readU8(0x206345), RAM_PATTERN, 'nothing written past the last bss byte');

  const si = BOOT_INFO_ADDRESS;
  assert.equal(memory.readU32(si), 0x336ec578, 'magic');
  assert.equal(memory.readU32(si + 4), 1, 'version');
  assert.equal(memory.readU32(si + 8), 0, 'flags');
  assert.equal(memory.readU32(si + 12), 2, 'nr_modules');
  assert.equal(u64(si + 16), BOOT_MODLIST_ADDRESS, 'modlist_paddr');
  assert.equal(u64(si + 24), BOOT_CMDLINE_ADDRESS, 'cmdline_paddr');
  assert.equal(memory.readCString(u64(si + 24)), 'console=ttyS0 quiet');
  assert.equal(u64(si + 32), 0xe0000, 'rsdp_paddr');
  assert.equal(u64(si + 40), BOOT_MEMMAP_ADDRESS, 'memmap_paddr');
  assert.equal(memory.readU32(si + 48), map.length, 'memmap_entries');
  assert.equal(memory.readU32(si + 52), 0, 'reserved');

  map.forEach((e, i) => {
    const at = BOOT_MEMMAP_ADDRESS + 24 * i;
    assert.equal(u64(at), e.base);
    assert.equal(u64(at + 8), e.size);
    assert.equal(memory.readU32(at + 16), e.type);
    assert.equal(memory.readU32(at + 20), 0);
  });

  const ml = BOOT_MODLIST_ADDRESS;
  const [a1, a2] = [u64(ml), u64(ml + 32)];
  assert.equal(a1, 0x207000, 'first module: the first page after the kernel');
  assert.equal(u64(ml + 8), 5000);
  assert.equal(memory.readCString(u64(ml + 16)), 'initrd arg=1');
  assert.equal(u64(ml + 24), 0);
  assert.deepEqual(memory.read(a1, 5000), initrd);
  assert.equal(a2, 0x209000, 'second module: page-aligned after the first');
  assert.equal(u64(ml + 40), 3);
  assert.equal(u64(ml + 48), 0, 'no command line: 0 (not present)');
  assert.deepEqual(memory.read(a2, 3), second);
});

test('PVH: no modules, no RSDP, empty command line', () => {
  const image = buildElf({ entry: 0x300000, pvhEntry: 0x300000, segments: [{ paddr: 0x300000, data: code }] });
  const entry = h.load(image);
  assert.equal(entry.entryPoint, 0x300000);
  assert.deepEqual(entry.kernelRange, { start: 0x300000, end: 0x300100 });
  const si = BOOT_INFO_ADDRESS;
  assert.equal(memory.readU32(si + 12), 0);
  assert.equal(u64(si + 16), 0, 'modlist_paddr 0 when there are no modules');
  assert.equal(u64(si + 32), 0, 'rsdp_paddr 0 when absent');
  assert.equal(u64(si + 24), BOOT_CMDLINE_ADDRESS);
  assert.equal(memory.readU8(BOOT_CMDLINE_ADDRESS), 0, 'an empty, NUL-terminated command line');
});

test('PVH: an ELF64 vmlinux-like kernel (high p_vaddr, 8-byte note, GNU property note) loads at p_paddr', () => {
  const image = buildElf({
    class: 64,
    entry: 0x1000000,
    notes: [{ name: 'GNU', type: 5, desc: new Uint8Array(16) }],
    noteAlign: 8,
    pvhEntry: 0x1000080,
    pvhDescSize: 8,
    segments: [
      { paddr: 0x1000000, vaddr: 0xffffffff81000000n, data: code, memsz: 0x10000 },
      { paddr: 0x1200000, vaddr: 0xffffffff81200000n, data, memsz: 0x800 },
    ],
  });
  const entry = h.load(image, { cmdline: 'earlyprintk=ttyS0' });
  assert.equal(entry.protocol, 'pvh');
  assert.equal(entry.entryPoint, 0x1000080);
  assert.deepEqual(entry.kernelRange, { start: 0x1000000, end: 0x1200800 });
  assert.deepEqual(memory.read(0x1000000, 256), code);
  assert.deepEqual(memory.read(0x1200000, 100), data);
});

test('PVH: a note found only in an SHT_NOTE section is used', () => {
  const image = buildElf({
    entry: 0x300000,
    pvhEntry: 0x300004,
    notesIn: 'section',
    segments: [{ paddr: 0x300000, data: code }],
  });
  assert.equal(h.load(image).entryPoint, 0x300004);
});

test('PVH: modules skip the command-line area and the hole below 1 MiB', () => {
  // A kernel between the boot structures and the command-line area.
  const image = buildElf({
    entry: 0x10000,
    pvhEntry: 0x10000,
    segments: [{ paddr: 0x10000, data: code, memsz: 0x1000 }],
  });
  const small = new Uint8Array(0x20000).fill(1);
  const big = new Uint8Array(MIB).fill(2);
  h.load(image, {
    modules: [
      { name: 'small', data: small, cmdline: '' },
      { name: 'big', data: big, cmdline: '' },
    ],
  });
  assert.equal(
    u64(BOOT_MODLIST_ADDRESS),
    0x30000,
    'not at 0x11000: that would overlap the command-line area 0x20000-0x30000',
  );
  assert.equal(u64(BOOT_MODLIST_ADDRESS + 32), 0x100000, '1 MiB does not fit below the EBDA: placed at 1 MiB');
  assert.deepEqual(memory.read(0x30000, 0x20000), small);
  assert.deepEqual(memory.read(0x100000, MIB), big);
});

test('PVH: with RAM above 4 GiB the memory map has it, and modules stay below 4 GiB', () => {
  const size = 5 * GIB;
  const big = GuestMemory.allocateRanges(ramRanges(size));
  try {
    const bigMap = guestMemoryMap(size, [{ base: PCI_ECAM_BASE, size: PCI_ECAM_SIZE }]);
    const image = buildElf({ entry: 0x100000, pvhEntry: 0x100000, segments: [{ paddr: 0x100000, data: code }] });
    const mod = new Uint8Array(4096).fill(9);
    loadKernel({
      imageName: 'k',
      image,
      cmdline: '',
      modules: [{ name: 'm', data: mod, cmdline: '' }],
      memory: big,
      memoryMap: bigMap,
    });
    const si = BOOT_INFO_ADDRESS;
    assert.equal(big.readU32(si + 48), 5, 'low RAM, BIOS area, RAM from 1 MiB, ECAM window, high RAM');
    assert.equal(Number(big.readU64(BOOT_MEMMAP_ADDRESS + 3 * 24)), 0xe000_0000);
    assert.equal(big.readU32(BOOT_MEMMAP_ADDRESS + 3 * 24 + 16), 2, 'ECAM window reserved (E820 type 2)');
    const last = BOOT_MEMMAP_ADDRESS + 4 * 24;
    assert.equal(Number(big.readU64(last)), FOUR_GIB);
    assert.equal(Number(big.readU64(last + 8)), 2 * GIB);
    const at = Number(big.readU64(BOOT_MODLIST_ADDRESS));
    assert.ok(at < FOUR_GIB);
    assert.deepEqual(big.read(at, 4096), mod);
  } finally {
    big.release();
  }
});
