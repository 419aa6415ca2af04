// A reader for the parts of ELF a boot loader needs (System V gABI: "ELF Header", "Program Header", "Sections",
// "Note Section"): ELF32 and ELF64, little-endian x86 only. Every read is bounds-checked against the file, and
// every problem is a BootImageError that names the file and the offending header.
import { BootImageError } from './errors.js';

export const ELFCLASS32 = 1;
export const ELFCLASS64 = 2;
export const ELFDATA2LSB = 1;
export const PT_LOAD = 1;
export const PT_NOTE = 4;
export const SHT_NOTE = 7;
/** e_phnum value meaning "the real count is in section header 0" (extended numbering). */
export const PN_XNUM = 0xffff;
export const EM_386 = 3;
export const EM_X86_64 = 62;

const ELF32_EHDR_SIZE = 52;
const ELF64_EHDR_SIZE = 64;
const ELF32_PHDR_SIZE = 32;
const ELF64_PHDR_SIZE = 56;
const ELF32_SHDR_SIZE = 40;
const ELF64_SHDR_SIZE = 64;
const NOTE_HEADER_SIZE = 12;

export interface ElfSegment {
  /** Index in the program header table. */
  readonly index: number;
  readonly type: number;
  readonly offset: number;
  /** Virtual address: kept as a bigint, since 64-bit kernels link at addresses like 0xffffffff81000000. */
  readonly vaddr: bigint;
  readonly paddr: number;
  readonly filesz: number;
  readonly memsz: number;
  readonly align: number;
}

export interface ElfNote {
  /** The owner name without its terminating NUL ("Xen", "GNU", …). */
  readonly name: string;
  readonly type: number;
  /** A view of the descriptor bytes inside the file (no copy). */
  readonly desc: Uint8Array;
  /** Where the note was found, for messages: "segment 2" or "section 5". */
  readonly where: string;
}

export interface ElfImage {
  readonly file: string;
  readonly class: 32 | 64;
  readonly machine: number;
  /** e_type: 2 = ET_EXEC, 3 = ET_DYN, … (not checked: boot loaders go by the program headers). */
  readonly type: number;
  /** e_entry as written; a bigint because ELF64 entries may be high virtual addresses. */
  readonly entry: bigint;
  readonly segments: readonly ElfSegment[];
  /** The section header table as the ELF header describes it (count 0 when there is none); read on demand. */
  readonly sectionTable: { readonly offset: number; readonly entrySize: number; readonly count: number };
}

const hex = (n: number | bigint): string => `0x${n.toString(16)}`;

export function isElf(image: Uint8Array): boolean {
  return image.length >= 4 && image[0] === 0x7f && image[1] === 0x45 && image[2] === 0x4c && image[3] === 0x46;
}

function viewOf(image: Uint8Array): DataView {
  return new DataView(image.buffer, image.byteOffset, image.byteLength);
}

/** A u64 field as a number, or a BootImageError when it cannot be an offset/address/size in this file or RAM. */
function toNumber(v: bigint, file: string, what: string): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new BootImageError(file, `${what} ${hex(v)} is out of range`);
  return Number(v);
}

/** Parses and validates the ELF header and the program header table (not the segments' contents). */
export function parseElf(image: Uint8Array, file: string): ElfImage {
  if (image.length === 0) throw new BootImageError(file, 'the file is empty');
  if (!isElf(image)) {
    throw new BootImageError(file, 'not an ELF file (bad magic: the file does not start with 0x7f "ELF")');
  }
  if (image.length < 16) {
    throw new BootImageError(file, `truncated: the ELF identification needs 16 bytes but the file has ${image.length}`);
  }
  const cls = image[4];
  if (cls !== ELFCLASS32 && cls !== ELFCLASS64) {
    throw new BootImageError(file, `unsupported ELF class ${cls} (expected 1 = 32-bit or 2 = 64-bit)`);
  }
  if (image[5] !== ELFDATA2LSB) {
    throw new BootImageError(file, `unsupported ELF data encoding ${image[5]} (x86 kernels are little-endian: 1)`);
  }
  const is64 = cls === ELFCLASS64;
  const bits = is64 ? 64 : 32;
  const ehsize = is64 ? ELF64_EHDR_SIZE : ELF32_EHDR_SIZE;
  if (image.length < ehsize) {
    throw new BootImageError(
      file,
      `truncated: the ELF${bits} header needs ${ehsize} bytes but the file has ${image.length}`,
    );
  }
  const v = viewOf(image);
  const type = v.getUint16(16, true);
  const machine = v.getUint16(18, true);
  if (machine !== EM_386 && machine !== EM_X86_64) {
    throw new BootImageError(file, `ELF machine ${machine} is not x86 (EM_386 = 3) or x86-64 (EM_X86_64 = 62)`);
  }
  const entry = is64 ? v.getBigUint64(24, true) : BigInt(v.getUint32(24, true));
  const phoff = is64
    ? toNumber(v.getBigUint64(32, true), file, 'program header table offset (e_phoff)')
    : v.getUint32(28, true);
  const shoff = is64
    ? toNumber(v.getBigUint64(40, true), file, 'section header table offset (e_shoff)')
    : v.getUint32(32, true);
  const phentsize = v.getUint16(is64 ? 54 : 42, true);
  const phnum = v.getUint16(is64 ? 56 : 44, true);
  const shentsize = v.getUint16(is64 ? 58 : 46, true);
  const shnum = v.getUint16(is64 ? 60 : 48, true);

  if (phnum === 0 || phoff === 0) {
    throw new BootImageError(
      file,
      'the ELF file has no program headers (is it an object file rather than a linked kernel?)',
    );
  }
  if (phnum === PN_XNUM) {
    throw new BootImageError(
      file,
      'the ELF file uses extended program header numbering (e_phnum = 0xffff), which is not supported',
    );
  }
  const expected = is64 ? ELF64_PHDR_SIZE : ELF32_PHDR_SIZE;
  if (phentsize !== expected) {
    throw new BootImageError(
      file,
      `program header size (e_phentsize) ${phentsize} is wrong for ELF${bits} (expected ${expected})`,
    );
  }
  if (phoff + phnum * phentsize > image.length) {
    // Name the first header the file cuts off.
    const cut = phoff >= image.length ? 0 : Math.floor((image.length - phoff) / phentsize);
    const end = phoff + (cut + 1) * phentsize;
    throw new BootImageError(
      file,
      `truncated: program header ${cut} ends at byte ${end} but the file has ${image.length} bytes`,
    );
  }
  const segments: ElfSegment[] = [];
  for (let i = 0; i < phnum; i++) {
    const at = phoff + i * phentsize;
    const ptype = v.getUint32(at, true);
    const checked = ptype === PT_LOAD || ptype === PT_NOTE;
    // Fields of segments we use must be exact numbers; others (PT_GNU_STACK, …) are kept approximately.
    const num = (x: bigint, field: string): number =>
      checked ? toNumber(x, file, `program header ${i}: ${field}`) : Number(x);
    const seg: ElfSegment = is64
      ? {
          index: i,
          type: ptype,
          offset: num(v.getBigUint64(at + 8, true), 'p_offset'),
          vaddr: v.getBigUint64(at + 16, true),
          paddr: num(v.getBigUint64(at + 24, true), 'p_paddr'),
          filesz: num(v.getBigUint64(at + 32, true), 'p_filesz'),
          memsz: num(v.getBigUint64(at + 40, true), 'p_memsz'),
          align: Number(v.getBigUint64(at + 48, true)),
        }
      : {
          index: i,
          type: ptype,
          offset: v.getUint32(at + 4, true),
          vaddr: BigInt(v.getUint32(at + 8, true)),
          paddr: v.getUint32(at + 12, true),
          filesz: v.getUint32(at + 16, true),
          memsz: v.getUint32(at + 20, true),
          align: v.getUint32(at + 28, true),
        };
    if (checked) {
      const what = `segment ${i} (${ptype === PT_LOAD ? 'PT_LOAD' : 'PT_NOTE'})`;
      if (ptype === PT_LOAD && seg.filesz > seg.memsz) {
        throw new BootImageError(
          file,
          `${what} has more file bytes (p_filesz ${seg.filesz}) than memory bytes (p_memsz ${seg.memsz})`,
        );
      }
      if (seg.offset + seg.filesz > image.length) {
        throw new BootImageError(
          file,
          `truncated: ${what} needs file bytes ${seg.offset}..${seg.offset + seg.filesz} but the file has ${image.length} bytes`,
        );
      }
    }
    segments.push(seg);
  }
  return {
    file,
    class: is64 ? 64 : 32,
    machine,
    type,
    entry,
    segments,
    sectionTable: { offset: shoff, entrySize: shentsize, count: shoff === 0 ? 0 : shnum },
  };
}

export function loadSegments(elf: ElfImage): ElfSegment[] {
  return elf.segments.filter((s) => s.type === PT_LOAD);
}

/** The notes in [offset, offset + size) of the file: n_namesz, n_descsz, n_type, name, desc, each padded to `align`. */
function notesIn(
  image: Uint8Array,
  file: string,
  where: string,
  offset: number,
  size: number,
  fieldAlign: number,
): ElfNote[] {
  const v = viewOf(image);
  // Notes are 4-byte aligned in practice even in ELF64; an 8-aligned note segment (GNU property notes) pads to 8.
  const align = fieldAlign === 8 ? 8 : 4;
  const pad = (n: number): number => Math.ceil(n / align) * align;
  const end = offset + size;
  const notes: ElfNote[] = [];
  let at = offset;
  for (let n = 0; end - at >= NOTE_HEADER_SIZE; n++) {
    const namesz = v.getUint32(at, true);
    const descsz = v.getUint32(at + 4, true);
    const type = v.getUint32(at + 8, true);
    const nameAt = at + NOTE_HEADER_SIZE;
    const descAt = nameAt + pad(namesz);
    const next = descAt + pad(descsz);
    if (descAt + descsz > end) {
      throw new BootImageError(
        file,
        `truncated: note ${n} in ${where} (name ${namesz} bytes, descriptor ${descsz} bytes) ends at byte ${descAt + descsz} but the ${where.split(' ')[0]} ends at byte ${end}`,
      );
    }
    const nameBytes = image.subarray(nameAt, nameAt + namesz);
    const nul = nameBytes.indexOf(0);
    const name = Buffer.from(nul >= 0 ? nameBytes.subarray(0, nul) : nameBytes).toString('latin1');
    notes.push({ name, type, desc: image.subarray(descAt, descAt + descsz), where });
    at = next;
  }
  return notes;
}

/** The notes of every PT_NOTE segment, in file order. */
export function elfNotes(image: Uint8Array, elf: ElfImage): ElfNote[] {
  const notes: ElfNote[] = [];
  for (const s of elf.segments) {
    if (s.type === PT_NOTE) notes.push(...notesIn(image, elf.file, `segment ${s.index}`, s.offset, s.filesz, s.align));
  }
  return notes;
}

/**
 * The notes of every SHT_NOTE section (for images whose notes no PT_NOTE segment covers). Reads the section
 * header table, bounds-checked; an image without one has no section notes.
 */
export function elfSectionNotes(image: Uint8Array, elf: ElfImage): ElfNote[] {
  const file = elf.file;
  const { offset, entrySize } = elf.sectionTable;
  let { count } = elf.sectionTable;
  if (offset === 0) return [];
  const is64 = elf.class === 64;
  const expected = is64 ? ELF64_SHDR_SIZE : ELF32_SHDR_SIZE;
  if (entrySize !== expected) {
    throw new BootImageError(
      file,
      `section header size (e_shentsize) ${entrySize} is wrong for ELF${elf.class} (expected ${expected})`,
    );
  }
  const v = viewOf(image);
  const header = (i: number): number => {
    const at = offset + i * entrySize;
    if (at + entrySize > image.length) {
      throw new BootImageError(
        file,
        `truncated: section header ${i} ends at byte ${at + entrySize} but the file has ${image.length} bytes`,
      );
    }
    return at;
  };
  if (count === 0) {
    // Extended numbering: the real count is section header 0's sh_size.
    const at = header(0);
    count = is64
      ? toNumber(v.getBigUint64(at + 32, true), file, 'section count (section 0 sh_size)')
      : v.getUint32(at + 20, true);
  }
  const notes: ElfNote[] = [];
  for (let i = 0; i < count; i++) {
    const at = header(i);
    if (v.getUint32(at + 4, true) !== SHT_NOTE) continue;
    const where = `section ${i}`;
    const off = is64
      ? toNumber(v.getBigUint64(at + 24, true), file, `section header ${i}: sh_offset`)
      : v.getUint32(at + 16, true);
    const size = is64
      ? toNumber(v.getBigUint64(at + 32, true), file, `section header ${i}: sh_size`)
      : v.getUint32(at + 20, true);
    const align = is64 ? Number(v.getBigUint64(at + 48, true)) : v.getUint32(at + 32, true);
    if (off + size > image.length) {
      throw new BootImageError(
        file,
        `truncated: ${where} (SHT_NOTE) needs file bytes ${off}..${off + size} but the file has ${image.length} bytes`,
      );
    }
    notes.push(...notesIn(image, file, where, off, size, align));
  }
  return notes;
}
