// PVH and multiboot loading, including malformed images: every bad image gets a BootImageError naming the
// problem, and guest memory is left untouched.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { guestMemoryMap, BOOT_INFO_ADDRESS } from '../../src/arch/x86_64/layout.js';
import { GuestMemory } from '../../src/vmm/memory.js';
import { loadKernel, type BootModule } from '../../src/boot/index.js';
import { BootImageError } from '../../src/boot/errors.js';
import { MIB } from '../../src/vmm/units.js';
import { buildElf, multibootHeader } from '../support/elf-builder.js';

const SIZE = 64 * MIB;
const memory = GuestMemory.allocate(SIZE);
after(() => memory.release());
const map = guestMemoryMap(SIZE);
const code = new Uint8Array(256).map((_, i) => (i * 7 + 1) & 0xff);

function load(image: Uint8Array, opts: { cmdline?: string; modules?: BootModule[]; name?: string } = {}) {
  return loadKernel({ imageName: opts.name ?? 'k.elf', image, cmdline: opts.cmdline ?? '', modules: opts.modules ?? [], memory, memoryMap: map, rsdpAddress: 0xe0000 });
}

function lowMemoryDigest(): string {
  return createHash('sha256').update(memory.read(0, 16 * MIB)).digest('hex');
}

function rejects(image: Uint8Array, message: RegExp, opts: Parameters<typeof load>[1] = {}): void {
  memory.fill(0, 16 * MIB, 0);
  const before = lowMemoryDigest();
  assert.throws(() => load(image, opts), (e: unknown) => {
    assert.ok(e instanceof BootImageError, `expected BootImageError, got ${String(e)}`);
    assert.match((e as Error).message, message);
    assert.match((e as Error).message, /^k\.elf: /, 'names the file');
    return true;
  });
  assert.equal(lowMemoryDigest(), before, 'guest memory untouched');
}

test('PVH: segments loaded, bss zeroed, hvm_start_info with memmap, cmdline, modules and RSDP', () => {
  memory.fill(0x200000, 0x2000, 0xee);
  const image = buildElf({ entry: 0x200010, pvhEntry: 0x200010, segments: [{ paddr: 0x200000, data: code, memsz: 0x1000 }] });
  const mod = new Uint8Array(5000).fill(0x42);
  const entry = load(image, { cmdline: 'console=ttyS0 quiet', modules: [{ name: 'initrd', data: mod, cmdline: 'initrd.img' }] });
  assert.deepEqual(entry, { protocol: 'pvh', entryPoint: 0x200010, eax: 0, ebx: BOOT_INFO_ADDRESS, kernelRange: { start: 0x200000, end: 0x201000 } });
  assert.deepEqual(memory.read(0x200000, 256), code);
  assert.ok(memory.read(0x200100, 0xf00).every((b) => b === 0), 'bss zeroed');
  const si = BOOT_INFO_ADDRESS;
  assert.equal(memory.readU32(si), 0x336ec578);
  assert.equal(memory.readU32(si + 4), 1);
  assert.equal(memory.readU32(si + 12), 1);
  assert.equal(memory.readCString(Number(memory.readU64(si + 24))), 'console=ttyS0 quiet');
  assert.equal(memory.readU64(si + 32), 0xe0000n);
  const mm = Number(memory.readU64(si + 40));
  assert.equal(memory.readU32(si + 48), map.length);
  map.forEach((e, i) => {
    assert.equal(Number(memory.readU64(mm + 24 * i)), e.base);
    assert.equal(Number(memory.readU64(mm + 24 * i + 8)), e.size);
    assert.equal(memory.readU32(mm + 24 * i + 16), e.type);
  });
  const ml = Number(memory.readU64(si + 16));
  const modAt = Number(memory.readU64(ml));
  assert.equal(modAt % 4096, 0, 'module page-aligned');
  assert.ok(modAt >= 0x201000, 'module after the kernel');
  assert.equal(Number(memory.readU64(ml + 8)), 5000);
  assert.deepEqual(memory.read(modAt, 5000), mod);
  assert.equal(memory.readCString(Number(memory.readU64(ml + 16))), 'initrd.img');
});

test('PVH: ELF64 kernels and 8-byte entry notes load too', () => {
  const image = buildElf({ class: 64, entry: 0x300000, pvhEntry: 0x300000, pvhDescSize: 8, segments: [{ paddr: 0x300000, data: code }] });
  assert.equal(load(image).entryPoint, 0x300000);
});

test('multiboot: ELF32 kernel, eax magic, MBI with memory, cmdline (file name first), modules and mmap', () => {
  const seg = new Uint8Array(512);
  seg.set(multibootHeader(), 0);
  const image = buildElf({ entry: 0x100020, segments: [{ paddr: 0x100000, data: seg, memsz: 0x3000 }] });
  const entry = load(image, { cmdline: 'a=1', modules: [{ name: 'm1', data: new Uint8Array(10).fill(1), cmdline: 'first' }, { name: 'm2', data: new Uint8Array(3).fill(2), cmdline: '' }] });
  assert.equal(entry.protocol, 'multiboot');
  assert.equal(entry.eax, 0x2badb002);
  const mbi = entry.ebx;
  const flags = memory.readU32(mbi);
  assert.equal(flags & 0x24d, 0x24d, 'mem, cmdline, mods, mmap, loader name');
  assert.equal(memory.readU32(mbi + 4), 639);
  assert.equal(memory.readU32(mbi + 8), (SIZE - MIB) / 1024);
  assert.equal(memory.readCString(memory.readU32(mbi + 16)), 'k.elf a=1');
  assert.equal(memory.readU32(mbi + 20), 2);
  const mods = memory.readU32(mbi + 24);
  const [s1, e1, s2, e2] = [memory.readU32(mods), memory.readU32(mods + 4), memory.readU32(mods + 16), memory.readU32(mods + 20)];
  assert.equal(s1 % 4096, 0);
  assert.equal(e1 - s1, 10);
  assert.equal(s2 % 4096, 0);
  assert.equal(e2 - s2, 3);
  assert.ok(s1 >= 0x103000);
  assert.equal(memory.readCString(memory.readU32(mods + 8)), 'first');
  assert.equal(memory.readCString(memory.readU32(mods + 24)), 'm2', 'module without cmdline gets its name');
  const mmapLen = memory.readU32(mbi + 44);
  const mmap = memory.readU32(mbi + 48);
  assert.equal(mmapLen, map.length * 24);
  assert.equal(memory.readU32(mmap), 20);
  assert.equal(Number(memory.readU64(mmap + 4 + 24 * 2)), map[2].base);
  assert.equal(memory.readCString(memory.readU32(mbi + 64)), 'Partita');
});

test('multiboot: the a.out kludge loads a flat binary at load_addr', () => {
  const flat = new Uint8Array(0x400);
  flat.set(multibootHeader(0x10003, { headerAddr: 0x400000, loadAddr: 0x400000, loadEndAddr: 0x400400, bssEndAddr: 0x402000, entryAddr: 0x400040 }), 0);
  flat[0x40] = 0xf4;
  const entry = load(flat);
  assert.equal(entry.entryPoint, 0x400040);
  assert.equal(memory.readU8(0x400040), 0xf4);
  assert.deepEqual(entry.kernelRange, { start: 0x400000, end: 0x402000 });
});

const pvhOk = { entry: 0x200000, pvhEntry: 0x200000, segments: [{ paddr: 0x200000, data: code }] };

test('malformed images are refused with a message naming the problem, memory untouched', () => {
  const good = buildElf(pvhOk);
  rejects(new Uint8Array(0), /empty/);
  rejects(good.subarray(0, 40), /truncated/);
  rejects(good.subarray(0, 60), /truncated: program header 0 ends at byte/);
  rejects(good.subarray(0, good.length - 20), /truncated: segment 1 needs file bytes 372..392 but the file has 372 bytes/);
  rejects(good.subarray(0, good.length - 40), /truncated: segment 0 needs file bytes/);
  const wrongClass = Uint8Array.from(good);
  wrongClass[4] = 3;
  rejects(wrongClass, /unsupported ELF class 3/);
  const bigEndian = Uint8Array.from(good);
  bigEndian[5] = 2;
  rejects(bigEndian, /data encoding/);
  rejects(buildElf({ ...pvhOk, machine: 40 }), /ELF machine 40 is not x86/);
  rejects(buildElf({ entry: 0x200000, segments: [{ paddr: 0x200000, data: code }] }), /without a PVH entry note.*not a multiboot or PVH ELF kernel/);
  rejects(buildElf({ ...pvhOk, pvhDescSize: 6 }), /PVH entry note has a 6-byte address/);
  rejects(buildElf({ ...pvhOk, segments: [{ paddr: 0x200000, data: code, memsz: 0x1000 }, { paddr: 0x200800, data: code }] }), /segment 0 .* and segment 1 .* overlap/);
  rejects(buildElf({ ...pvhOk, entry: 0x900000, pvhEntry: 0x900000 }), /entry point 0x900000 is outside every loaded segment/);
  rejects(buildElf({ ...pvhOk, segments: [{ paddr: 0x3fff000, data: code, memsz: 0x2000 }] }), /segment 0 at 0x3fff000-0x4001000 is not inside guest RAM/);
  rejects(buildElf({ ...pvhOk, segments: [{ paddr: 0xfec00000, data: code }] }), /not inside guest RAM/);
  rejects(buildElf({ ...pvhOk, segments: [{ paddr: 0x6000, data: code }], entry: 0x6000, pvhEntry: 0x6000 }), /overlaps Partita's boot structures/);
  rejects(buildElf({ ...pvhOk, segments: [{ paddr: 0xa0000, data: code }], entry: 0xa0000, pvhEntry: 0xa0000 }), /not inside guest RAM/);
  rejects(buildElf({ ...pvhOk, pvhEntry: 0x1_0000_0000, pvhDescSize: 8 }), /above 4 GiB/);
  rejects(good, /module big .* does not fit/, { modules: [{ name: 'big', data: new Uint8Array(70 * MIB), cmdline: '' }] });
  rejects(good, /command lines take \d+ bytes; at most 65536 fit/, { cmdline: 'x'.repeat(70000) });
  const filesz = Uint8Array.from(good);
  new DataView(filesz.buffer).setUint32(52 + 16, 0x100000, true); // p_filesz of segment 0
  rejects(filesz, /truncated|more file bytes/);
  const bz = new Uint8Array(0x400);
  bz.set([0x48, 0x64, 0x72, 0x53], 0x202);
  rejects(bz, /a Linux bzImage/);
  rejects(new TextEncoder().encode('#!/bin/sh\necho not a kernel\n'), /not a multiboot or PVH ELF kernel/);
});

test('multiboot: ELF64, unsupported required flags, broken a.out headers are refused', () => {
  const seg = new Uint8Array(64);
  seg.set(multibootHeader(), 0);
  rejects(buildElf({ class: 64, entry: 0x100000, segments: [{ paddr: 0x100000, data: seg }] }), /32-bit ELF kernels only; convert it with `objcopy -O elf32-i386`/);
  const seg2 = new Uint8Array(64);
  seg2.set(multibootHeader(0x3 | 0x10), 0);
  rejects(buildElf({ entry: 0x100000, segments: [{ paddr: 0x100000, data: seg2 }] }), /requires features Partita does not provide \(flags 0x10\)/);
  const flat = new Uint8Array(0x100);
  flat.set(multibootHeader(0x10003, { headerAddr: 0x400000, loadAddr: 0x400010, loadEndAddr: 0x400100, bssEndAddr: 0, entryAddr: 0x400020 }), 0);
  rejects(flat, /load_addr is above header_addr/);
  const flat2 = new Uint8Array(0x100);
  flat2.set(multibootHeader(0x10003, { headerAddr: 0x400000, loadAddr: 0x400000, loadEndAddr: 0x500000, bssEndAddr: 0, entryAddr: 0x400020 }), 0);
  rejects(flat2, /truncated: the multiboot image needs/);
  // A header with a bad checksum is not a header; the image is then judged as plain ELF.
  const bad = multibootHeader();
  bad[8] ^= 1;
  const seg3 = new Uint8Array(64);
  seg3.set(bad, 0);
  rejects(buildElf({ entry: 0x100000, segments: [{ paddr: 0x100000, data: seg3 }] }), /without a PVH entry note/);
  // A header beyond the first 8 KiB is not found either.
  const far = new Uint8Array(9000);
  far.set(multibootHeader(), 8500);
  rejects(buildElf({ entry: 0x100000, segments: [{ paddr: 0x100000, data: far }] }), /without a PVH entry note/);
});
