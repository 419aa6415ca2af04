// Builds small ELF kernels for loader tests: ELF32 or ELF64, PT_LOAD segments (physical and virtual addresses),
// notes (the Xen PVH entry note and any others) in a PT_NOTE segment and/or an SHT_NOTE section, and multiboot v1
// headers to put inside a segment or a flat a.out-kludge image.
//
// File layout: ELF header, program headers (segments in order, then the PT_NOTE one), segment data in order, the
// note bytes, then (when notes go in a section) a two-entry section header table: null and SHT_NOTE.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { guestMemoryMap, ramRanges, type MemoryMapEntry } from '../../src/arch/x86_64/layout.js';
import { loadKernel, type BootEntry, type BootModule } from '../../src/boot/index.js';
import { BootImageError } from '../../src/boot/errors.js';
import { GuestMemory } from '../../src/base/guest-memory.js';

export const PT_LOAD = 1;
export const PT_NOTE = 4;

export interface SegmentSpec {
  readonly paddr: number;
  /** Defaults to paddr. */
  readonly vaddr?: number | bigint;
  readonly data: Uint8Array;
  /** Defaults to data.length. */
  readonly memsz?: number;
  /** Defaults to PT_LOAD. */
  readonly type?: number;
}

export interface NoteSpec {
  readonly name: string;
  readonly type: number;
  readonly desc: Uint8Array;
}

export interface ElfSpec {
  readonly class?: 32 | 64;
  readonly machine?: number;
  readonly entry: number | bigint;
  readonly segments: readonly SegmentSpec[];
  /** Adds the Xen PHYS32_ENTRY note (after `notes`) with this value, as a `pvhDescSize`-byte descriptor (default 4). */
  readonly pvhEntry?: number | bigint;
  readonly pvhDescSize?: number;
  /** Further notes, before the PVH one. */
  readonly notes?: readonly NoteSpec[];
  /** Note padding and the PT_NOTE p_align / sh_addralign (default 4). */
  readonly noteAlign?: 4 | 8;
  /** Where the notes are described: a PT_NOTE segment (default), an SHT_NOTE section, or both. */
  readonly notesIn?: 'segment' | 'section' | 'both';
}

export const ehdrSize = (cls: 32 | 64): number => (cls === 64 ? 64 : 52);
export const phdrSize = (cls: 32 | 64): number => (cls === 64 ? 56 : 32);
/** File offset of program header `i`. */
export const phdrOffset = (cls: 32 | 64, i: number): number => ehdrSize(cls) + i * phdrSize(cls);

export function note(spec: NoteSpec, align: 4 | 8 = 4): Uint8Array {
  const pad = (n: number): number => Math.ceil(n / align) * align;
  const name = new TextEncoder().encode(spec.name + '\0');
  const out = new Uint8Array(12 + pad(name.length) + pad(spec.desc.length));
  const v = new DataView(out.buffer);
  v.setUint32(0, name.length, true);
  v.setUint32(4, spec.desc.length, true);
  v.setUint32(8, spec.type, true);
  out.set(name, 12);
  out.set(spec.desc, 12 + pad(name.length));
  return out;
}

/** The Xen PHYS32_ENTRY (type 18) note's descriptor: the entry as a little-endian integer of `size` bytes. */
export function pvhDesc(entry: number | bigint, size = 4): Uint8Array {
  const desc = new Uint8Array(size);
  let v = BigInt(entry);
  for (let i = 0; i < size; i++, v >>= 8n) desc[i] = Number(v & 0xffn);
  return desc;
}

export function buildElf(spec: ElfSpec): Uint8Array {
  const cls = spec.class ?? 32;
  const is64 = cls === 64;
  const align = spec.noteAlign ?? 4;
  const notes = [...(spec.notes ?? [])];
  if (spec.pvhEntry !== undefined)
    notes.push({ name: 'Xen', type: 18, desc: pvhDesc(spec.pvhEntry, spec.pvhDescSize ?? 4) });
  const noteBytes = concat(notes.map((n) => note(n, align)));
  const where = spec.notesIn ?? 'segment';
  const notePhdr = notes.length > 0 && where !== 'section';
  const noteSection = notes.length > 0 && where !== 'segment';
  const phnum = spec.segments.length + (notePhdr ? 1 : 0);
  const ehsize = ehdrSize(cls);
  const phentsize = phdrSize(cls);
  const shentsize = is64 ? 64 : 40;

  let offset = ehsize + phnum * phentsize;
  const segmentAt = spec.segments.map((s) => {
    const at = offset;
    offset += s.data.length;
    return at;
  });
  offset = Math.ceil(offset / align) * align;
  const noteAt = offset;
  offset += noteBytes.length;
  if (noteSection) offset = Math.ceil(offset / 8) * 8;
  const shoff = noteSection ? offset : 0;
  if (noteSection) offset += 2 * shentsize;

  const out = new Uint8Array(offset);
  const v = new DataView(out.buffer);
  out.set([0x7f, 0x45, 0x4c, 0x46, is64 ? 2 : 1, 1, 1]);
  v.setUint16(16, 2, true); // ET_EXEC
  v.setUint16(18, spec.machine ?? (is64 ? 62 : 3), true);
  v.setUint32(20, 1, true);
  if (is64) {
    v.setBigUint64(24, BigInt(spec.entry), true);
    v.setBigUint64(32, BigInt(ehsize), true);
    v.setBigUint64(40, BigInt(shoff), true);
    v.setUint16(52, ehsize, true);
    v.setUint16(54, phentsize, true);
    v.setUint16(56, phnum, true);
    v.setUint16(58, shentsize, true);
    v.setUint16(60, noteSection ? 2 : 0, true);
  } else {
    v.setUint32(24, Number(spec.entry), true);
    v.setUint32(28, ehsize, true);
    v.setUint32(32, shoff, true);
    v.setUint16(40, ehsize, true);
    v.setUint16(42, phentsize, true);
    v.setUint16(44, phnum, true);
    v.setUint16(46, shentsize, true);
    v.setUint16(48, noteSection ? 2 : 0, true);
  }
  const phdr = (
    i: number,
    type: number,
    off: number,
    vaddr: bigint,
    paddr: number,
    filesz: number,
    memsz: number,
    palign: number,
  ): void => {
    const at = phdrOffset(cls, i);
    v.setUint32(at, type, true);
    if (is64) {
      v.setUint32(at + 4, 7, true); // RWX
      v.setBigUint64(at + 8, BigInt(off), true);
      v.setBigUint64(at + 16, vaddr, true);
      v.setBigUint64(at + 24, BigInt(paddr), true);
      v.setBigUint64(at + 32, BigInt(filesz), true);
      v.setBigUint64(at + 40, BigInt(memsz), true);
      v.setBigUint64(at + 48, BigInt(palign), true);
    } else {
      v.setUint32(at + 4, off, true);
      v.setUint32(at + 8, Number(vaddr), true);
      v.setUint32(at + 12, paddr, true);
      v.setUint32(at + 16, filesz, true);
      v.setUint32(at + 20, memsz, true);
      v.setUint32(at + 24, 7, true);
      v.setUint32(at + 28, palign, true);
    }
  };
  spec.segments.forEach((s, i) => {
    out.set(s.data, segmentAt[i]);
    phdr(
      i,
      s.type ?? PT_LOAD,
      segmentAt[i],
      BigInt(s.vaddr ?? s.paddr),
      s.paddr,
      s.data.length,
      s.memsz ?? s.data.length,
      0x1000,
    );
  });
  out.set(noteBytes, noteAt);
  if (notePhdr) phdr(spec.segments.length, PT_NOTE, noteAt, 0n, 0, noteBytes.length, noteBytes.length, align);
  if (noteSection) {
    const at = shoff + shentsize; // section 1; section 0 stays all zero
    v.setUint32(at + 4, 7, true); // SHT_NOTE
    if (is64) {
      v.setBigUint64(at + 24, BigInt(noteAt), true);
      v.setBigUint64(at + 32, BigInt(noteBytes.length), true);
      v.setBigUint64(at + 48, BigInt(align), true);
    } else {
      v.setUint32(at + 16, noteAt, true);
      v.setUint32(at + 20, noteBytes.length, true);
      v.setUint32(at + 32, align, true);
    }
  }
  return out;
}

export function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

export interface AoutFields {
  readonly headerAddr: number;
  readonly loadAddr: number;
  readonly loadEndAddr: number;
  readonly bssEndAddr: number;
  readonly entryAddr: number;
}

/**
 * A multiboot v1 header (default flags: page-align modules + memory info). With `aout`, the five address fields
 * follow (set flag bit 16 yourself). `checksum` overrides the correct one.
 */
export function multibootHeader(flags = 0x3, aout?: AoutFields, checksum?: number): Uint8Array {
  const h = new Uint8Array(aout ? 32 : 12);
  const v = new DataView(h.buffer);
  v.setUint32(0, 0x1badb002, true);
  v.setUint32(4, flags, true);
  v.setUint32(8, checksum ?? -(0x1badb002 + flags) >>> 0, true);
  if (aout) {
    v.setUint32(12, aout.headerAddr, true);
    v.setUint32(16, aout.loadAddr, true);
    v.setUint32(20, aout.loadEndAddr, true);
    v.setUint32(24, aout.bssEndAddr, true);
    v.setUint32(28, aout.entryAddr, true);
  }
  return h;
}

// ---- A harness for loader tests: guest RAM filled with a pattern, a loader call, and a refusal check that
// proves a bad image left every byte of guest RAM as it was.

export interface LoadOptions {
  readonly cmdline?: string;
  readonly modules?: readonly BootModule[];
  readonly name?: string;
  readonly rsdpAddress?: number;
}

export interface BootHarness {
  readonly memory: GuestMemory;
  readonly map: MemoryMapEntry[];
  load(image: Uint8Array, opts?: LoadOptions): BootEntry;
  /** Asserts `load` throws a BootImageError matching `message` (and naming the file) and that RAM is unchanged. */
  rejects(image: Uint8Array, message: RegExp, opts?: LoadOptions): BootImageError;
  /** SHA-256 of all guest RAM. */
  digest(): string;
  release(): void;
}

export const RAM_PATTERN = 0xa5;

export function bootHarness(size: number): BootHarness {
  const memory = GuestMemory.allocateRanges(ramRanges(size));
  for (const r of memory.regions) memory.fill(r.gpa, r.size, RAM_PATTERN);
  const map = guestMemoryMap(size);
  const load = (image: Uint8Array, opts: LoadOptions = {}): BootEntry => <BootEntry>loadKernel({
      imageName: opts.name ?? 'k.elf',
      image,
      cmdline: opts.cmdline ?? '',
      modules: opts.modules ?? [],
      memory,
      memoryMap: map,
      rsdpAddress: opts.rsdpAddress,
    });
  const digest = (): string => {
    const h = createHash('sha256');
    for (const r of memory.regions) memory.forEachSpan(r.gpa, r.size, (view) => h.update(view));
    return h.digest('hex');
  };
  return {
    memory,
    map,
    load,
    digest,
    rejects(image, message, opts = {}) {
      const before = digest();
      let caught: unknown;
      try {
        load(image, opts);
      } catch (e) {
        caught = e;
      }
      assert.ok(
        caught instanceof BootImageError,
        `expected a BootImageError matching ${message}, got ${caught === undefined ? 'success' : String(caught)}`,
      );
      assert.match(caught.message, message);
      assert.ok(
        caught.message.startsWith(`${opts.name ?? 'k.elf'}: `),
        `the message names the file: ${caught.message}`,
      );
      assert.equal(digest(), before, `guest memory untouched after: ${caught.message}`);
      return caught;
    },
    release: () => memory.release(),
  };
}
