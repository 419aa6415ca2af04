// A reader for the parts of ELF a boot loader needs (System V gABI, "ELF Header", "Program Header", "Note
// Section"): ELF32 and ELF64, little-endian x86. Every read is bounds-checked against the file.
import { BootImageError } from './errors.js';

export const PT_LOAD = 1;
export const PT_NOTE = 4;
export const EM_386 = 3;
export const EM_X86_64 = 62;

export interface ElfSegment {
  readonly index: number;
  readonly type: number;
  readonly offset: number;
  readonly vaddr: number;
  readonly paddr: number;
  readonly filesz: number;
  readonly memsz: number;
}

export interface ElfNote {
  readonly name: string;
  readonly type: number;
  readonly desc: Uint8Array;
}

export interface ElfImage {
  readonly class: 32 | 64;
  readonly machine: number;
  readonly entry: number;
  readonly segments: readonly ElfSegment[];
}

export function isElf(image: Uint8Array): boolean {
  return image.length >= 4 && image[0] === 0x7f && image[1] === 0x45 && image[2] === 0x4c && image[3] === 0x46;
}

function u64(view: DataView, at: number, file: string, what: string): number {
  const v = view.getBigUint64(at, true);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new BootImageError(file, `${what} 0x${v.toString(16)} is out of range`);
  return Number(v);
}

export function parseElf(image: Uint8Array, file: string): ElfImage {
  if (image.length < 16) throw new BootImageError(file, `truncated: ${image.length} bytes is too short for an ELF header`);
  if (!isElf(image)) throw new BootImageError(file, 'not an ELF file (bad magic)');
  const cls = image[4];
  if (cls !== 1 && cls !== 2) throw new BootImageError(file, `unsupported ELF class ${cls} (expected 1 = 32-bit or 2 = 64-bit)`);
  if (image[5] !== 1) throw new BootImageError(file, `unsupported ELF data encoding ${image[5]} (x86 kernels are little-endian)`);
  const is64 = cls === 2;
  const headerSize = is64 ? 64 : 52;
  if (image.length < headerSize) throw new BootImageError(file, `truncated: the ELF header needs ${headerSize} bytes but the file has ${image.length}`);
  const v = new DataView(image.buffer, image.byteOffset, image.byteLength);
  const machine = v.getUint16(18, true);
  if (machine !== EM_386 && machine !== EM_X86_64) throw new BootImageError(file, `ELF machine ${machine} is not x86 (3) or x86-64 (62)`);
  const entry = is64 ? u64(v, 24, file, 'entry point') : v.getUint32(24, true);
  const phoff = is64 ? u64(v, 32, file, 'program header offset') : v.getUint32(28, true);
  const phentsize = v.getUint16(is64 ? 54 : 42, true);
  const phnum = v.getUint16(is64 ? 56 : 44, true);
  const expectedEntSize = is64 ? 56 : 32;
  if (phnum === 0) throw new BootImageError(file, 'the ELF file has no program headers');
  if (phentsize !== expectedEntSize) throw new BootImageError(file, `program header size ${phentsize} is wrong for ELF${is64 ? 64 : 32} (expected ${expectedEntSize})`);
  const segments: ElfSegment[] = [];
  for (let i = 0; i < phnum; i++) {
    const at = phoff + i * phentsize;
    if (at + phentsize > image.length) {
      throw new BootImageError(file, `truncated: program header ${i} ends at byte ${at + phentsize} but the file has ${image.length} bytes`);
    }
    const seg: ElfSegment = is64
      ? { index: i, type: v.getUint32(at, true), offset: u64(v, at + 8, file, 'segment offset'), vaddr: u64(v, at + 16, file, 'segment address'), paddr: u64(v, at + 24, file, 'segment address'), filesz: u64(v, at + 32, file, 'segment size'), memsz: u64(v, at + 40, file, 'segment size') }
      : { index: i, type: v.getUint32(at, true), offset: v.getUint32(at + 4, true), vaddr: v.getUint32(at + 8, true), paddr: v.getUint32(at + 12, true), filesz: v.getUint32(at + 16, true), memsz: v.getUint32(at + 20, true) };
    if (seg.type === PT_LOAD || seg.type === PT_NOTE) {
      if (seg.offset + seg.filesz > image.length) {
        throw new BootImageError(file, `truncated: segment ${i} needs file bytes ${seg.offset}..${seg.offset + seg.filesz} but the file has ${image.length} bytes`);
      }
    }
    if (seg.type === PT_LOAD && seg.filesz > seg.memsz) {
      throw new BootImageError(file, `segment ${i} has more file bytes (${seg.filesz}) than memory bytes (${seg.memsz})`);
    }
    segments.push(seg);
  }
  return { class: is64 ? 64 : 32, machine, entry, segments };
}

/** The notes of every PT_NOTE segment (ELF note format: namesz, descsz, type, name, desc; 4-byte aligned). */
export function elfNotes(image: Uint8Array, elf: ElfImage, file: string): ElfNote[] {
  const v = new DataView(image.buffer, image.byteOffset, image.byteLength);
  const notes: ElfNote[] = [];
  const align4 = (n: number): number => (n + 3) & ~3;
  for (const seg of elf.segments) {
    if (seg.type !== PT_NOTE) continue;
    let at = seg.offset;
    const end = seg.offset + seg.filesz;
    while (at + 12 <= end) {
      const namesz = v.getUint32(at, true);
      const descsz = v.getUint32(at + 4, true);
      const type = v.getUint32(at + 8, true);
      const nameAt = at + 12;
      const descAt = nameAt + align4(namesz);
      const next = descAt + align4(descsz);
      if (next > end || next < at) throw new BootImageError(file, `malformed note in segment ${seg.index}: it runs past the segment`);
      const name = Buffer.from(image.subarray(nameAt, nameAt + namesz)).toString('latin1').replace(/\0+$/, '');
      notes.push({ name, type, desc: image.subarray(descAt, descAt + descsz) });
      at = next;
    }
  }
  return notes;
}
