// Multiboot v1: header search, ELF32 and a.out-kludge loading, and every multiboot_info field Partita fills.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  PCI_ECAM_BASE,
  PCI_ECAM_SIZE,
  ramRanges,
  BOOT_CMDLINE_ADDRESS,
  BOOT_INFO_ADDRESS,
  BOOT_MEMMAP_ADDRESS,
  BOOT_MODLIST_ADDRESS,
  guestMemoryMap,
} from '../../src/arch/x86_64/layout.js';
import { GuestMemory } from '../../src/base/guest-memory.js';
import { loadKernel } from '../../src/boot/index.js';
import { findMultibootHeader } from '../../src/boot/multiboot.js';
import { GIB, KIB, MIB } from '../../src/base/units.js';
import { bootHarness, buildElf, concat, multibootHeader, RAM_PATTERN } from '../support/elf-builder.js';

const SIZE = 64 * MIB;
const h = bootHarness(SIZE);
after(() => h.release());
const { memory, map } = h;

/** A segment of `size` bytes with a multiboot header at `at`, the rest a recognisable pattern. */
function segmentWithHeader(size: number, header = multibootHeader(), at = 0): Uint8Array {
  const seg = new Uint8Array(size).map((_, i) => (i * 13 + 5) & 0xff);
  seg.set(header, at);
  return seg;
}

function mbElf(header = multibootHeader(), opts: { memsz?: number; entry?: number } = {}): Uint8Array {
  return buildElf({
    entry: opts.entry ?? 0x100020,
    segments: [{ paddr: 0x100000, data: segmentWithHeader(512, header), memsz: opts.memsz ?? 0x3000 }],
  });
}

test('multiboot: ELF32 kernel, eax magic, every multiboot_info field, modules and mmap', () => {
  const image = mbElf();
  const m1 = new Uint8Array(10).fill(1);
  const m2 = new Uint8Array(5000).fill(2);
  const entry = h.load(image, {
    name: 'boot/kernel.elf',
    cmdline: 'a=1 b',
    modules: [
      { name: 'm1', data: m1, cmdline: 'first --verbose' },
      { name: 'm2.bin', data: m2, cmdline: '' },
    ],
  });
  assert.deepEqual(entry, {
    protocol: 'multiboot',
    entryPoint: 0x100020,
    eax: 0x2badb002,
    ebx: BOOT_INFO_ADDRESS,
    kernelRange: { start: 0x100000, end: 0x103000 },
  });
  assert.deepEqual(memory.read(0x100000, 512), segmentWithHeader(512));
  assert.ok(
    memory.read(0x100200, 0x3000 - 0x200).every((b) => b === 0),
    'bss zeroed',
  );

  const mbi = entry.ebx;
  assert.equal(memory.readU32(mbi), 0x24d, 'flags: mem (0), cmdline (2), mods (3), mmap (6), boot_loader_name (9)');
  assert.equal(memory.readU32(mbi + 4), 639, 'mem_lower: KiB below the EBDA');
  assert.equal(memory.readU32(mbi + 8), (SIZE - MIB) / KIB, 'mem_upper: KiB from 1 MiB');
  assert.equal(memory.readU32(mbi + 12), 0, 'boot_device (flag 1 clear)');
  assert.equal(memory.readU32(mbi + 16), BOOT_CMDLINE_ADDRESS);
  assert.equal(
    memory.readCString(memory.readU32(mbi + 16)),
    'boot/kernel.elf a=1 b',
    'the file name, a space, the arguments',
  );
  assert.equal(memory.readU32(mbi + 20), 2, 'mods_count');
  assert.equal(memory.readU32(mbi + 24), BOOT_MODLIST_ADDRESS, 'mods_addr');
  for (let off = 28; off < 44; off += 4) assert.equal(memory.readU32(mbi + off), 0, `syms word at ${off}`);
  assert.equal(memory.readU32(mbi + 44), map.length * 24, 'mmap_length');
  assert.equal(memory.readU32(mbi + 48), BOOT_MEMMAP_ADDRESS, 'mmap_addr');
  for (let off = 52; off < 64; off += 4) assert.equal(memory.readU32(mbi + off), 0, `field at ${off}`);
  assert.equal(memory.readCString(memory.readU32(mbi + 64)), 'Partita');
  for (let off = 68; off < 88; off += 4) assert.equal(memory.readU32(mbi + off), 0, `APM/VBE field at ${off}`);

  const mods = BOOT_MODLIST_ADDRESS;
  const mod = (i: number) => ({
    start: memory.readU32(mods + 16 * i),
    end: memory.readU32(mods + 16 * i + 4),
    string: memory.readCString(memory.readU32(mods + 16 * i + 8)),
    reserved: memory.readU32(mods + 16 * i + 12),
  });
  assert.deepEqual(mod(0), { start: 0x103000, end: 0x10300a, string: 'first --verbose', reserved: 0 });
  assert.deepEqual(
    mod(1),
    { start: 0x104000, end: 0x104000 + 5000, string: 'm2.bin', reserved: 0 },
    'a module without arguments gets its name',
  );
  assert.deepEqual(memory.read(0x103000, 10), m1);
  assert.deepEqual(memory.read(0x104000, 5000), m2);

  map.forEach((e, i) => {
    const at = BOOT_MEMMAP_ADDRESS + 24 * i;
    assert.equal(memory.readU32(at), 20, 'size (not counting itself)');
    assert.equal(Number(memory.readU64(at + 4)), e.base, 'base_addr');
    assert.equal(Number(memory.readU64(at + 12)), e.size, 'length');
    assert.equal(memory.readU32(at + 20), e.type, 'type');
  });
});

test('multiboot: no arguments, no modules', () => {
  const entry = h.load(mbElf());
  const mbi = entry.ebx;
  assert.equal(memory.readCString(memory.readU32(mbi + 16)), 'k.elf', 'just the file name');
  assert.equal(memory.readU32(mbi) & 0x8, 0x8, 'mods flag set, with');
  assert.equal(memory.readU32(mbi + 20), 0, 'mods_count 0');
});

test('multiboot: a higher-half ELF kernel: e_entry is translated from p_vaddr to p_paddr', () => {
  const seg = segmentWithHeader(256);
  const image = buildElf({
    entry: 0xc010000c,
    segments: [{ paddr: 0x100000, vaddr: 0xc0100000, data: seg, memsz: 0x2000 }],
  });
  const entry = h.load(image);
  assert.equal(entry.entryPoint, 0x10000c);
  assert.deepEqual(memory.read(0x100000, 256), seg);
});

test('multiboot: the a.out kludge loads a flat binary at load_addr, with bss up to bss_end_addr', () => {
  // The header sits 0x40 bytes into the file, so header_addr = load_addr + 0x40.
  const flat = new Uint8Array(0x400).map((_, i) => i & 0xff);
  flat.set(
    multibootHeader(0x10003, {
      headerAddr: 0x400040,
      loadAddr: 0x400000,
      loadEndAddr: 0x400300,
      bssEndAddr: 0x402000,
      entryAddr: 0x400080,
    }),
    0x40,
  );
  memory.fill(0x400000, 0x3000, RAM_PATTERN);
  const entry = h.load(flat);
  assert.equal(entry.protocol, 'multiboot');
  assert.equal(entry.entryPoint, 0x400080);
  assert.deepEqual(entry.kernelRange, { start: 0x400000, end: 0x402000 });
  assert.deepEqual(memory.read(0x400000, 0x300), flat.subarray(0, 0x300), 'load_end_addr limits what is copied');
  assert.ok(
    memory.read(0x400300, 0x1d00).every((b) => b === 0),
    'bss zeroed',
  );
  assert.equal(memory.readU8(0x402000), RAM_PATTERN);
});

test('multiboot: a.out kludge with load_end_addr = 0 (the whole file) and bss_end_addr = 0 (no bss)', () => {
  const flat = new Uint8Array(0x1234).map((_, i) => (i * 3) & 0xff);
  flat.set(
    multibootHeader(0x10000, {
      headerAddr: 0x500000,
      loadAddr: 0x500000,
      loadEndAddr: 0,
      bssEndAddr: 0,
      entryAddr: 0x500020,
    }),
    0,
  );
  const entry = h.load(flat);
  assert.deepEqual(entry.kernelRange, { start: 0x500000, end: 0x501234 });
  assert.deepEqual(memory.read(0x500000, 0x1234), flat);
});

test('multiboot: the a.out kludge wins over the ELF headers, so an ELF64 file with it loads', () => {
  const seg = new Uint8Array(0x200);
  const image64 = buildElf({ class: 64, entry: 0x600000, segments: [{ paddr: 0x600000, data: seg }] });
  // Put the header in the segment's bytes; the kludge fields describe the whole file loaded at 0x700000.
  const segOffset = 64 + 56;
  const image = Uint8Array.from(image64);
  image.set(
    multibootHeader(0x10002, {
      headerAddr: 0x700000 + segOffset,
      loadAddr: 0x700000,
      loadEndAddr: 0,
      bssEndAddr: 0x710000,
      entryAddr: 0x700000 + segOffset + 32,
    }),
    segOffset,
  );
  const entry = h.load(image);
  assert.equal(entry.protocol, 'multiboot');
  assert.equal(entry.entryPoint, 0x700000 + segOffset + 32);
  assert.deepEqual(memory.read(0x700000, image.length), image);
});

test('multiboot: flag bit 2 (video mode) is accepted without video information', () => {
  const entry = h.load(mbElf(multibootHeader(0x7)));
  const flags = memory.readU32(entry.ebx);
  assert.equal(flags & ((1 << 11) | (1 << 12)), 0, 'no VBE or framebuffer information');
});

test('multiboot: the header search (first 8 KiB, 32-bit aligned, entirely inside, valid checksum)', () => {
  const at = (offset: number, header = multibootHeader()): Uint8Array => {
    const image = new Uint8Array(10000);
    image.set(header, offset);
    return image;
  };
  assert.equal(findMultibootHeader(at(0)).header?.offset, 0);
  assert.equal(findMultibootHeader(at(8180)).header?.offset, 8180, 'the last place it fits entirely');
  assert.equal(findMultibootHeader(at(8184)).header, undefined, 'crosses the 8 KiB limit');
  assert.equal(findMultibootHeader(at(8192)).header, undefined, 'beyond 8 KiB');
  assert.equal(findMultibootHeader(at(102)).header, undefined, 'not 32-bit aligned');
  assert.equal(findMultibootHeader(at(8180).subarray(0, 8190)).header, undefined, 'cut off by the end of the file');
  const bad = findMultibootHeader(at(64, multibootHeader(3, undefined, 0x1234)));
  assert.equal(bad.header, undefined);
  assert.equal(bad.badChecksum?.offset, 64);
  // A bad header does not hide a good one after it.
  const both = new Uint8Array(256);
  both.set(multibootHeader(3, undefined, 0), 0);
  both.set(multibootHeader(3), 128);
  assert.equal(findMultibootHeader(both).header?.offset, 128);
  const withFields = findMultibootHeader(
    at(4, multibootHeader(0x10000, { headerAddr: 1, loadAddr: 2, loadEndAddr: 3, bssEndAddr: 4, entryAddr: 5 })),
  );
  assert.deepEqual(withFields.header, {
    offset: 4,
    flags: 0x10000,
    aout: { headerAddr: 1, loadAddr: 2, loadEndAddr: 3, bssEndAddr: 4, entryAddr: 5 },
  });
});

test('multiboot: with RAM above 4 GiB, mem_upper stops at the PCI hole and mmap lists the high RAM', () => {
  const size = 5 * GIB;
  const big = GuestMemory.allocateRanges(ramRanges(size));
  try {
    const bigMap = guestMemoryMap(size, [{ base: PCI_ECAM_BASE, size: PCI_ECAM_SIZE }]);
    const mod = new Uint8Array(100).fill(7);
    const entry = loadKernel({
      imageName: 'k',
      image: mbElf(),
      cmdline: '',
      modules: [{ name: 'm', data: mod, cmdline: '' }],
      memory: big,
      memoryMap: bigMap,
    });
    assert.equal(entry.protocol, 'multiboot');
    const mbi = (entry as { ebx: number }).ebx;
    assert.equal(big.readU32(mbi + 4), 639);
    assert.equal(big.readU32(mbi + 8), (3 * GIB - MIB) / KIB);
    // low RAM, BIOS area, RAM from 1 MiB, the reserved PCIe ECAM window, RAM above 4 GiB
    assert.equal(big.readU32(mbi + 44), 5 * 24);
    assert.equal(big.readU64(BOOT_MEMMAP_ADDRESS + 3 * 24 + 4), 0xe000_0000n);
    assert.equal(big.readU32(BOOT_MEMMAP_ADDRESS + 3 * 24 + 20), 2, 'ECAM window reserved');
    assert.equal(big.readU64(BOOT_MEMMAP_ADDRESS + 4 * 24 + 4), 4n * BigInt(GIB));
    assert.equal(big.readU64(BOOT_MEMMAP_ADDRESS + 4 * 24 + 12), 2n * BigInt(GIB));
    assert.deepEqual(big.read(big.readU32(BOOT_MODLIST_ADDRESS), 100), mod);
  } finally {
    big.release();
  }
});

test('multiboot: a multiboot header wins over a PVH note (as in QEMU)', () => {
  const image = buildElf({
    entry: 0x100020,
    pvhEntry: 0x100040,
    segments: [{ paddr: 0x100000, data: segmentWithHeader(256) }],
  });
  const entry = h.load(image);
  assert.equal(entry.protocol, 'multiboot');
  assert.equal(entry.entryPoint, 0x100020);
});

test('multiboot: refusals name the problem and leave memory untouched', () => {
  h.rejects(
    buildElf({ class: 64, entry: 0x100000, segments: [{ paddr: 0x100000, data: segmentWithHeader(64) }] }),
    /multiboot kernel in ELF64 format.*convert it with `objcopy -O elf32-i386`/,
  );
  h.rejects(
    buildElf({ entry: 0x100000, machine: 62, segments: [{ paddr: 0x100000, data: segmentWithHeader(64) }] }),
    /must be for EM_386 \(3\), not machine 62/,
  );
  h.rejects(
    mbElf(multibootHeader(0x13)),
    /requires features Partita does not provide: flags bit 4 \(header flags 0x13/,
  );
  h.rejects(mbElf(multibootHeader(0x8003)), /requires features Partita does not provide: flags bit 15/);
  h.rejects(
    mbElf(multibootHeader(0x3), { entry: 0x200000 }),
    /entry point 0x200000 is outside every loaded segment \(0x100000-0x103000\)/,
  );
  h.rejects(
    concat([multibootHeader(0x3), new Uint8Array(100)]),
    /not an ELF file and its header does not set flag bit 16/,
  );
  // A bad checksum: the header does not count, and the message says why nothing booted.
  h.rejects(
    mbElf(multibootHeader(0x3, undefined, 0xdeadbeef)),
    /not a multiboot or PVH ELF kernel: .*the multiboot magic at offset 84 has a bad checksum/,
  );
  // A header beyond the first 8 KiB is not found.
  const far = new Uint8Array(9000);
  far.set(multibootHeader(), 8500);
  h.rejects(
    buildElf({ entry: 0x100000, segments: [{ paddr: 0x100000, data: far }] }),
    /without a PVH entry note.*no multiboot header in its first 8 KiB/,
  );

  const aout = (fields: Parameters<typeof multibootHeader>[1], size = 0x100, at = 0): Uint8Array => {
    const flat = new Uint8Array(size);
    flat.set(multibootHeader(0x10003, fields), at);
    return flat;
  };
  const ok = { headerAddr: 0x400000, loadAddr: 0x400000, loadEndAddr: 0x400100, bssEndAddr: 0, entryAddr: 0x400020 };
  h.rejects(
    concat([multibootHeader(0x10003).subarray(0, 12), new Uint8Array(8)]),
    /truncated: the multiboot header at offset 0 sets flag bit 16 \(a\.out kludge\), so it needs 32 bytes up to byte 32, but the file has 20/,
  );
  h.rejects(
    aout({ ...ok, loadAddr: 0x400010 }),
    /multiboot load_addr is above header_addr \(header_addr 0x400000, load_addr 0x400010\)/,
  );
  h.rejects(
    aout({ ...ok, loadAddr: 0x3ff000 }, 0x100, 0x40),
    /header_addr - load_addr is 4096 bytes but the header is at file offset 64: load_addr would lie before the start of the file/,
  );
  h.rejects(aout({ ...ok, loadEndAddr: 0x3fff00 }), /multiboot load_end_addr 0x3fff00 is below load_addr 0x400000/);
  h.rejects(
    aout({ ...ok, headerAddr: 0x400100, loadEndAddr: 0x400080 }, 0x200, 0x100),
    /multiboot header_addr 0x400100 is outside the loaded text 0x400000-0x400080/,
  );
  h.rejects(
    aout({ ...ok, loadEndAddr: 0x500000 }),
    /truncated: multiboot load_addr\.\.load_end_addr \(0x400000-0x500000\) needs file bytes 0\.\.1048576 but the file has 256 bytes/,
  );
  h.rejects(aout({ ...ok, bssEndAddr: 0x400080 }), /multiboot bss_end_addr 0x400080 is below load_end_addr 0x400100/);
  h.rejects(aout({ ...ok, entryAddr: 0x400100 }), /entry point 0x400100 is outside every loaded segment/);
  h.rejects(
    aout({ ...ok, headerAddr: 0x6000, loadAddr: 0x6000, loadEndAddr: 0x6100, entryAddr: 0x6000 }),
    /the a\.out-kludge image at 0x6000-0x6100 overlaps Partita's boot structures/,
  );
  h.rejects(
    aout({ ...ok, bssEndAddr: 0x8000000 }),
    /the a\.out-kludge image at 0x400000-0x8000000 is not inside guest RAM/,
  );
  h.rejects(
    mbElf(),
    /module huge \(\d+ bytes\) does not fit in guest RAM above 0x103000 \(after the kernel\) and below 0x4000000/,
    {
      modules: [{ name: 'huge', data: new Uint8Array(63 * MIB), cmdline: '' }],
    },
  );
  h.rejects(mbElf(), /the command lines take 65545 bytes \(the kernel command line: 65537\) but at most 65536 fit/, {
    cmdline: 'x'.repeat(65530),
  });
  h.rejects(mbElf(), /the command lines take \d+ bytes \(the command line of module m: 70001\)/, {
    modules: [{ name: 'm', data: new Uint8Array(1), cmdline: 'y'.repeat(70000) }],
  });
});
