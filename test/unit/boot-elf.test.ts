// The ELF reader: headers, program headers, PT_LOAD segments, notes in PT_NOTE segments and SHT_NOTE sections,
// and a BootImageError naming the file and the exact problem for every malformed or truncated image.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { elfNotes, elfSectionNotes, loadSegments, parseElf, PT_LOAD, PT_NOTE } from '../../src/boot/elf.js';
import { BootImageError } from '../../src/boot/errors.js';
import { probePvh } from '../../src/boot/pvh.js';
import { buildElf, phdrOffset } from '../support/elf-builder.js';

const code = new Uint8Array(256).map((_, i) => (i * 7 + 1) & 0xff);
const elf32 = buildElf({
  entry: 0x100010,
  pvhEntry: 0x100020,
  segments: [{ paddr: 0x100000, data: code, memsz: 0x1000 }],
});

function fails(
  image: Uint8Array,
  message: RegExp,
  parse: (img: Uint8Array) => unknown = (img) => parseElf(img, 'kernel.elf'),
): void {
  assert.throws(
    () => parse(image),
    (e: unknown) => e instanceof BootImageError && e.message.startsWith('kernel.elf: ') && message.test(e.message),
  );
}

function patched(image: Uint8Array, edit: (v: DataView) => void): Uint8Array {
  const copy = Uint8Array.from(image);
  edit(new DataView(copy.buffer));
  return copy;
}

test('ELF32: header, PT_LOAD and PT_NOTE segments, the Xen note', () => {
  const elf = parseElf(elf32, 'kernel.elf');
  assert.equal(elf.class, 32);
  assert.equal(elf.machine, 3);
  assert.equal(elf.type, 2);
  assert.equal(elf.entry, 0x100010n);
  assert.equal(elf.segments.length, 2);
  const [load, note] = elf.segments;
  assert.deepEqual(load, {
    index: 0,
    type: PT_LOAD,
    offset: 52 + 2 * 32,
    vaddr: 0x100000n,
    paddr: 0x100000,
    filesz: 256,
    memsz: 0x1000,
    align: 0x1000,
  });
  assert.equal(note.type, PT_NOTE);
  assert.deepEqual(loadSegments(elf), [load]);
  assert.deepEqual(elf32.subarray(load.offset, load.offset + load.filesz), code);
  const notes = elfNotes(elf32, elf);
  assert.equal(notes.length, 1);
  assert.equal(notes[0].name, 'Xen');
  assert.equal(notes[0].type, 18);
  assert.equal(notes[0].where, 'segment 1');
  assert.deepEqual([...notes[0].desc], [0x20, 0x00, 0x10, 0x00]);
  assert.deepEqual(elfSectionNotes(elf32, elf), [], 'no section header table');
});

test('ELF64: a Linux-like vmlinux with high virtual addresses parses exactly', () => {
  const image = buildElf({
    class: 64,
    entry: 0x1000000,
    pvhEntry: 0x1000123,
    pvhDescSize: 8,
    segments: [{ paddr: 0x1000000, vaddr: 0xffffffff81000000n, data: code, memsz: 0x2000 }],
  });
  const elf = parseElf(image, 'vmlinux');
  assert.equal(elf.class, 64);
  assert.equal(elf.machine, 62);
  assert.equal(elf.segments[0].vaddr, 0xffffffff81000000n);
  assert.equal(elf.segments[0].paddr, 0x1000000);
  assert.equal(elf.segments[0].memsz, 0x2000);
  const probe = probePvh(image, elf);
  assert.equal(probe.kind === 'entry' && probe.entry, 0x1000123);
});

test('notes: several per segment, 8-byte aligned note segments, and SHT_NOTE sections as a fallback', () => {
  const gnu = { name: 'GNU', type: 5, desc: new Uint8Array(16).fill(0x11) };
  const xenOther = { name: 'Xen', type: 6, desc: new TextEncoder().encode('linux\0\0\0') };
  // With 8-byte alignment the 4-byte name "GNU\0" is padded to 8: read with 4-byte padding, the notes would be garbage.
  const image = buildElf({
    class: 64,
    entry: 0x100000,
    segments: [{ paddr: 0x100000, data: code }],
    notes: [gnu, xenOther],
    pvhEntry: 0x100004,
    noteAlign: 8,
  });
  const notes = elfNotes(image, parseElf(image, 'k'));
  assert.deepEqual(
    notes.map((n) => [n.name, n.type, n.desc.length]),
    [
      ['GNU', 5, 16],
      ['Xen', 6, 8],
      ['Xen', 18, 4],
    ],
  );
  assert.deepEqual(notes[0].desc, gnu.desc);

  const sectionOnly = buildElf({
    entry: 0x100000,
    segments: [{ paddr: 0x100000, data: code }],
    pvhEntry: 0x100008,
    notesIn: 'section',
  });
  const elf = parseElf(sectionOnly, 'k');
  assert.equal(elf.segments.length, 1, 'no PT_NOTE');
  assert.deepEqual(elfNotes(sectionOnly, elf), []);
  const fromSections = elfSectionNotes(sectionOnly, elf);
  assert.equal(fromSections.length, 1);
  assert.equal(fromSections[0].where, 'section 1');
  const probe = probePvh(sectionOnly, elf);
  assert.equal(probe.kind === 'entry' && probe.entry, 0x100008);
});

test('malformed ELF headers are refused with a message naming the problem', () => {
  fails(new Uint8Array(0), /the file is empty/);
  fails(new TextEncoder().encode('MZ\x90\0 not elf'), /not an ELF file \(bad magic/);
  fails(elf32.subarray(0, 10), /truncated: the ELF identification needs 16 bytes but the file has 10/);
  fails(elf32.subarray(0, 40), /truncated: the ELF32 header needs 52 bytes but the file has 40/);
  const elf64 = buildElf({ class: 64, entry: 0x100000, segments: [{ paddr: 0x100000, data: code }] });
  fails(elf64.subarray(0, 60), /truncated: the ELF64 header needs 64 bytes but the file has 60/);
  fails(
    patched(elf32, (v) => v.setUint8(4, 3)),
    /unsupported ELF class 3 \(expected 1 = 32-bit or 2 = 64-bit\)/,
  );
  fails(
    patched(elf32, (v) => v.setUint8(4, 0)),
    /unsupported ELF class 0/,
  );
  fails(
    patched(elf32, (v) => v.setUint8(5, 2)),
    /unsupported ELF data encoding 2 \(x86 kernels are little-endian/,
  );
  fails(
    buildElf({ entry: 0, machine: 40, segments: [{ paddr: 0x100000, data: code }] }),
    /ELF machine 40 is not x86 \(EM_386 = 3\) or x86-64 \(EM_X86_64 = 62\)/,
  );
  fails(
    buildElf({ class: 64, entry: 0, machine: 183, segments: [{ paddr: 0x100000, data: code }] }),
    /ELF machine 183 is not x86/,
  );
  fails(
    patched(elf32, (v) => v.setUint16(42, 40, true)),
    /program header size \(e_phentsize\) 40 is wrong for ELF32 \(expected 32\)/,
  );
  fails(
    patched(elf64, (v) => v.setUint16(54, 32, true)),
    /program header size \(e_phentsize\) 32 is wrong for ELF64 \(expected 56\)/,
  );
  fails(
    patched(elf32, (v) => v.setUint16(44, 0, true)),
    /has no program headers/,
  );
  fails(
    patched(elf32, (v) => v.setUint32(28, 0, true)),
    /has no program headers/,
  );
  fails(
    patched(elf32, (v) => v.setUint16(44, 0xffff, true)),
    /extended program header numbering \(e_phnum = 0xffff\)/,
  );
  fails(
    patched(elf64, (v) => v.setBigUint64(32, 0xffff_ffff_ffff_0000n, true)),
    /program header table offset \(e_phoff\) 0xffffffffffff0000 is out of range/,
  );
});

test('truncated and inconsistent program headers and segments name the header and the byte counts', () => {
  // Program header 1 (the PT_NOTE) spans bytes 84..116.
  fails(
    elf32.subarray(0, 100),
    /^kernel\.elf: truncated: program header 1 ends at byte 116 but the file has 100 bytes$/,
  );
  fails(elf32.subarray(0, 60), /^kernel\.elf: truncated: program header 0 ends at byte 84 but the file has 60 bytes$/);
  fails(
    patched(elf32, (v) => v.setUint32(28, 8000, true)),
    /truncated: program header 0 ends at byte 8032 but the file has 392 bytes/,
  );
  // Segment 0's data is bytes 116..372, the note 372..392.
  fails(
    elf32.subarray(0, 300),
    /^kernel\.elf: truncated: segment 0 \(PT_LOAD\) needs file bytes 116\.\.372 but the file has 300 bytes$/,
  );
  fails(
    elf32.subarray(0, 380),
    /^kernel\.elf: truncated: segment 1 \(PT_NOTE\) needs file bytes 372\.\.392 but the file has 380 bytes$/,
  );
  const at0 = phdrOffset(32, 0);
  fails(
    patched(elf32, (v) => v.setUint32(at0 + 4, 0xfffffff0, true)),
    /truncated: segment 0 \(PT_LOAD\) needs file bytes 4294967280\.\./,
  );
  fails(
    patched(elf32, (v) => v.setUint32(at0 + 20, 100, true)),
    /segment 0 \(PT_LOAD\) has more file bytes \(p_filesz 256\) than memory bytes \(p_memsz 100\)/,
  );
  const elf64 = buildElf({ class: 64, entry: 0x100000, segments: [{ paddr: 0x100000, data: code }] });
  fails(
    patched(elf64, (v) => v.setBigUint64(phdrOffset(64, 0) + 24, 1n << 60n, true)),
    /program header 0: p_paddr 0x1000000000000000 is out of range/,
  );
  // Fields of segment types a loader ignores are not checked.
  const gnuStack = patched(elf64, (v) => {
    v.setUint32(phdrOffset(64, 0), 0x6474e551, true); // PT_GNU_STACK
    v.setBigUint64(phdrOffset(64, 0) + 8, 1n << 62n, true);
  });
  assert.equal(parseElf(gnuStack, 'k').segments[0].type, 0x6474e551);
});

test('truncated notes and section headers are refused', () => {
  const elf = parseElf(elf32, 'kernel.elf');
  const noteAt = elf.segments[1].offset;
  // The Xen note claims a 64-byte descriptor in a 20-byte note segment: it would end at byte 372 + 16 + 64.
  const longDesc = patched(elf32, (v) => v.setUint32(noteAt + 4, 64, true));
  fails(
    longDesc,
    /^kernel\.elf: truncated: note 0 in segment 1 \(name 4 bytes, descriptor 64 bytes\) ends at byte 452 but the segment ends at byte 392$/,
    (img) => elfNotes(img, parseElf(img, 'kernel.elf')),
  );
  const longName = patched(elf32, (v) => v.setUint32(noteAt, 0xfffffff0, true));
  fails(longName, /truncated: note 0 in segment 1 \(name 4294967280 bytes/, (img) =>
    elfNotes(img, parseElf(img, 'kernel.elf')),
  );

  const sectionOnly = buildElf({
    entry: 0x100000,
    segments: [{ paddr: 0x100000, data: code }],
    pvhEntry: 0x100008,
    notesIn: 'section',
  });
  const shoff = new DataView(sectionOnly.buffer).getUint32(32, true);
  const sections = (img: Uint8Array): unknown => elfSectionNotes(img, parseElf(img, 'kernel.elf'));
  fails(
    sectionOnly.subarray(0, shoff + 60),
    /truncated: section header 1 ends at byte \d+ but the file has \d+ bytes/,
    sections,
  );
  fails(
    patched(sectionOnly, (v) => v.setUint16(46, 32, true)),
    /section header size \(e_shentsize\) 32 is wrong for ELF32 \(expected 40\)/,
    sections,
  );
  fails(
    patched(sectionOnly, (v) => v.setUint32(shoff + 40 + 20, 5000, true)),
    /truncated: section 1 \(SHT_NOTE\) needs file bytes \d+\.\.\d+ but the file has \d+ bytes/,
    sections,
  );
});
