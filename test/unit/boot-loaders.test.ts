// loadKernel: format detection (multiboot header first, then an ELF with a PVH note, otherwise a clear refusal) and
// every malformed image through the full path: each a BootImageError naming the file and the problem, with every
// byte of guest RAM left as it was (validation happens before anything is written).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { MIB } from '../../src/base/units.js';
import { bootHarness, buildElf, phdrOffset } from '../support/elf-builder.js';

const SIZE = 64 * MIB;
const h = bootHarness(SIZE);
after(() => h.release());
const code = new Uint8Array(256).map((_, i) => (i * 7 + 1) & 0xff);
const pvhOk = { entry: 0x200000, pvhEntry: 0x200000, segments: [{ paddr: 0x200000, data: code }] };
const good = buildElf(pvhOk);

function patched(image: Uint8Array, edit: (v: DataView) => void): Uint8Array {
  const copy = Uint8Array.from(image);
  edit(new DataView(copy.buffer));
  return copy;
}

test('detection: a good PVH image loads (the baseline for the refusals below)', () => {
  assert.equal(h.load(good).protocol, 'pvh');
});

test('detection: what is not a multiboot or PVH ELF kernel says what it is', () => {
  h.rejects(new Uint8Array(0), /^k\.elf: the file is empty$/);
  const bz = new Uint8Array(0x400);
  bz.set(new TextEncoder().encode('HdrS'), 0x202);
  h.rejects(bz, /^k\.elf: Linux boot protocol 0\.00 too old: the 64-bit entry needs protocol 2\.10 or later/);
  h.rejects(
    new TextEncoder().encode('#!/bin/sh\necho not a kernel\n'),
    /not a multiboot or PVH ELF kernel: it is not an ELF file; there is no multiboot header in its first 8 KiB/,
  );
  h.rejects(new Uint8Array([0x7f]), /not a multiboot or PVH ELF kernel: it is not an ELF file/);
  h.rejects(
    buildElf({ entry: 0x200000, segments: [{ paddr: 0x200000, data: code }] }),
    /not a multiboot or PVH ELF kernel: it is an ELF32 file without a PVH entry note/,
  );
  h.rejects(
    buildElf({
      class: 64,
      entry: 0x200000,
      segments: [{ paddr: 0x200000, data: code }],
      notes: [{ name: 'Xen', type: 1, desc: new Uint8Array(8) }],
    }),
    /it is an ELF64 file with Xen notes but no PVH entry note \(XEN_ELFNOTE_PHYS32_ENTRY\): a Xen PV-only kernel\?/,
  );
  h.rejects(
    buildElf({ ...pvhOk, notes: [{ name: 'Xenon', type: 18, desc: new Uint8Array(4) }], pvhEntry: undefined }),
    /without a PVH entry note/,
  );
  h.rejects(good, /^other\/vmlinux: /, { name: 'other/vmlinux', cmdline: 'x'.repeat(70000) });
});

test('malformed ELF: truncation, identification, machine, header sizes', () => {
  h.rejects(good.subarray(0, 40), /truncated: the ELF32 header needs 52 bytes but the file has 40/);
  h.rejects(good.subarray(0, 60), /truncated: program header 0 ends at byte 84 but the file has 60 bytes/);
  h.rejects(
    good.subarray(0, good.length - 30),
    /truncated: segment 0 \(PT_LOAD\) needs file bytes 116\.\.372 but the file has 362 bytes/,
  );
  h.rejects(
    good.subarray(0, good.length - 10),
    /truncated: segment 1 \(PT_NOTE\) needs file bytes 372\.\.392 but the file has 382 bytes/,
  );
  h.rejects(
    patched(good, (v) => v.setUint32(372 + 4, 40, true)),
    /truncated: note 0 in segment 1 \(name 4 bytes, descriptor 40 bytes\) ends at byte 428 but the segment ends at byte 392/,
  );
  h.rejects(
    patched(good, (v) => v.setUint8(4, 7)),
    /unsupported ELF class 7/,
  );
  h.rejects(
    patched(good, (v) => v.setUint8(5, 2)),
    /unsupported ELF data encoding 2/,
  );
  h.rejects(buildElf({ ...pvhOk, machine: 40 }), /ELF machine 40 is not x86/);
  h.rejects(
    patched(good, (v) => v.setUint16(42, 56, true)),
    /program header size \(e_phentsize\) 56 is wrong for ELF32 \(expected 32\)/,
  );
  h.rejects(
    patched(good, (v) => v.setUint16(44, 0, true)),
    /no program headers/,
  );
});

test('malformed segments: none to load, sizes, overlaps', () => {
  h.rejects(buildElf({ ...pvhOk, segments: [] }), /nothing to load: the image has no PT_LOAD segments/);
  h.rejects(
    buildElf({ ...pvhOk, segments: [{ paddr: 0x200000, data: new Uint8Array(0) }] }),
    /nothing to load: every PT_LOAD segment is empty/,
  );
  h.rejects(
    patched(good, (v) => v.setUint32(phdrOffset(32, 0) + 20, 16, true)),
    /segment 0 \(PT_LOAD\) has more file bytes \(p_filesz 256\) than memory bytes \(p_memsz 16\)/,
  );
  h.rejects(
    patched(good, (v) => v.setUint32(phdrOffset(32, 0) + 16, 0x100000, true)),
    /segment 0 \(PT_LOAD\) has more file bytes|truncated: segment 0/,
  );
  h.rejects(
    patched(good, (v) => v.setUint32(phdrOffset(32, 0) + 4, 1000, true)),
    /truncated: segment 0 \(PT_LOAD\) needs file bytes 1000\.\.1256 but the file has 392 bytes/,
  );
  h.rejects(
    buildElf({
      ...pvhOk,
      segments: [
        { paddr: 0x200000, data: code, memsz: 0x1000 },
        { paddr: 0x200800, data: code },
      ],
    }),
    /segment 0 \(0x200000-0x201000\) and segment 1 \(0x200800-0x200900\) overlap in physical memory/,
  );
  // Overlap by physical address even though the virtual addresses differ; and a later segment fully inside an earlier one.
  h.rejects(
    buildElf({
      ...pvhOk,
      segments: [
        { paddr: 0x200000, data: code, memsz: 0x10000 },
        { paddr: 0x300000, data: code },
        { paddr: 0x208000, vaddr: 0x900000, data: code },
      ],
    }),
    /segment 0 \(0x200000-0x210000\) and segment 2 \(0x208000-0x208100\) overlap/,
  );
});

test("malformed placement: outside RAM, reserved, above 4 GiB, over Partita's boot areas", () => {
  h.rejects(
    buildElf({ ...pvhOk, segments: [{ paddr: 0x3fff000, data: code, memsz: 0x2000 }] }),
    /segment 0 at 0x3fff000-0x4001000 is not inside guest RAM \(0x0-0x4000000\)/,
  );
  h.rejects(
    buildElf({ ...pvhOk, segments: [{ paddr: 0xfec00000, data: code }] }),
    /segment 0 at 0xfec00000-0xfec00100 is not inside guest RAM/,
  );
  h.rejects(
    buildElf({ ...pvhOk, class: 64, segments: [{ paddr: 0x1_0000_0000, data: code }] }),
    /segment 0 at 0x100000000-0x100000100 is not below 4 GiB/,
  );
  h.rejects(
    buildElf({ ...pvhOk, entry: 0xa0000, pvhEntry: 0xa0000, segments: [{ paddr: 0xa0000, data: code }] }),
    /segment 0 at 0xa0000-0xa0100 is not inside usable guest RAM: it overlaps 0x9fc00-0x100000, which the memory map reserves \(type 2\)/,
  );
  h.rejects(
    buildElf({
      ...pvhOk,
      entry: 0x9f000,
      pvhEntry: 0x9f000,
      segments: [{ paddr: 0x9f000, data: code, memsz: 0x2000 }],
    }),
    /segment 0 at 0x9f000-0xa1000 is not inside usable guest RAM: it overlaps 0x9fc00-0x100000/,
  );
  h.rejects(
    buildElf({ ...pvhOk, entry: 0x6000, pvhEntry: 0x6000, segments: [{ paddr: 0x6000, data: code }] }),
    /segment 0 at 0x6000-0x6100 overlaps Partita's boot structures \(0x500-0x9000/,
  );
  h.rejects(
    buildElf({
      ...pvhOk,
      entry: 0x1f000,
      pvhEntry: 0x1f000,
      segments: [{ paddr: 0x1f000, data: code, memsz: 0x2000 }],
    }),
    /segment 0 at 0x1f000-0x21000 overlaps the command-line area \(0x20000-0x30000\)/,
  );
});

test('malformed entry points and PVH notes', () => {
  h.rejects(
    buildElf({ ...pvhOk, pvhEntry: 0x900000 }),
    /entry point 0x900000 is outside every loaded segment \(0x200000-0x200100\)/,
  );
  h.rejects(buildElf({ ...pvhOk, pvhEntry: 0x200100 }), /entry point 0x200100 is outside every loaded segment/);
  h.rejects(buildElf({ ...pvhOk, pvhEntry: 0x8000000 }), /entry point 0x8000000 is outside every loaded segment/);
  h.rejects(
    buildElf({ ...pvhOk, pvhDescSize: 6 }),
    /the PVH entry note \(Xen, type 18\) in segment 1 has a 6-byte descriptor \(expected a 4- or 8-byte address\)/,
  );
  h.rejects(buildElf({ ...pvhOk, pvhDescSize: 2 }), /has a 2-byte descriptor/);
  h.rejects(
    buildElf({ ...pvhOk, class: 64, pvhEntry: 0x1_0020_0000n, pvhDescSize: 8 }),
    /the PVH entry point 0x100200000 is above 4 GiB/,
  );
});

test('malformed requests: command lines and modules that do not fit', () => {
  h.rejects(
    good,
    /the command lines take 70001 bytes \(the kernel command line: 70001\) but at most 65536 fit in the command-line area/,
    { cmdline: 'x'.repeat(70000) },
  );
  h.rejects(good, /\(the command line of module m2: 40001\)/, {
    cmdline: 'x'.repeat(30000),
    modules: [
      { name: 'm1', data: new Uint8Array(1), cmdline: 'a' },
      { name: 'm2', data: new Uint8Array(1), cmdline: 'y'.repeat(40000) },
    ],
  });
  h.rejects(
    good,
    /module big \(73400320 bytes\) does not fit in guest RAM above 0x201000 \(after the kernel\) and below 0x4000000, the end of RAM under 4 GiB/,
    {
      modules: [{ name: 'big', data: new Uint8Array(70 * MIB), cmdline: '' }],
    },
  );
  h.rejects(
    good,
    /module second \(\d+ bytes\) does not fit in guest RAM above 0x2201000 \(after the kernel and earlier modules\)/,
    {
      modules: [
        { name: 'first', data: new Uint8Array(32 * MIB), cmdline: '' },
        { name: 'second', data: new Uint8Array(32 * MIB), cmdline: '' },
      ],
    },
  );
  h.rejects(good, /too many modules \(129\); at most 128 fit/, {
    modules: Array.from({ length: 129 }, (_, i) => ({ name: `m${i}`, data: new Uint8Array(1), cmdline: '' })),
  });
});

test("a rejected image after a good one leaves the good one's memory as it was", () => {
  h.load(good, { cmdline: 'first' });
  const before = h.digest();
  h.rejects(good.subarray(0, 200), /truncated/);
  assert.equal(h.digest(), before);
});
