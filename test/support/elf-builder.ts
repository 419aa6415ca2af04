// Builds small ELF kernels for loader tests: ELF32 or ELF64, PT_LOAD segments, an optional Xen PVH note and an
// optional multiboot header at the start of the first segment.
export interface SegmentSpec {
  readonly paddr: number;
  readonly data: Uint8Array;
  readonly memsz?: number;
}

export interface ElfSpec {
  readonly class?: 32 | 64;
  readonly machine?: number;
  readonly entry: number;
  readonly segments: readonly SegmentSpec[];
  readonly pvhEntry?: number;
  readonly pvhDescSize?: 4 | 8 | 6;
}

export function buildElf(spec: ElfSpec): Uint8Array {
  const is64 = (spec.class ?? 32) === 64;
  const ehsize = is64 ? 64 : 52;
  const phentsize = is64 ? 56 : 32;
  const note = spec.pvhEntry !== undefined ? pvhNote(spec.pvhEntry, spec.pvhDescSize ?? 4) : undefined;
  const phnum = spec.segments.length + (note ? 1 : 0);
  let offset = ehsize + phnum * phentsize;
  const placed = spec.segments.map((s) => {
    const at = offset;
    offset += s.data.length;
    return at;
  });
  const noteAt = offset;
  if (note) offset += note.length;
  const out = new Uint8Array(offset);
  const v = new DataView(out.buffer);
  out.set([0x7f, 0x45, 0x4c, 0x46, is64 ? 2 : 1, 1, 1]);
  v.setUint16(16, 2, true); // ET_EXEC
  v.setUint16(18, spec.machine ?? (is64 ? 62 : 3), true);
  v.setUint32(20, 1, true);
  if (is64) {
    v.setBigUint64(24, BigInt(spec.entry), true);
    v.setBigUint64(32, BigInt(ehsize), true);
    v.setUint16(52, ehsize, true);
    v.setUint16(54, phentsize, true);
    v.setUint16(56, phnum, true);
  } else {
    v.setUint32(24, spec.entry, true);
    v.setUint32(28, ehsize, true);
    v.setUint16(40, ehsize, true);
    v.setUint16(42, phentsize, true);
    v.setUint16(44, phnum, true);
  }
  const phdr = (i: number, type: number, off: number, paddr: number, filesz: number, memsz: number): void => {
    const at = ehsize + i * phentsize;
    v.setUint32(at, type, true);
    if (is64) {
      v.setBigUint64(at + 8, BigInt(off), true);
      v.setBigUint64(at + 16, BigInt(paddr), true);
      v.setBigUint64(at + 24, BigInt(paddr), true);
      v.setBigUint64(at + 32, BigInt(filesz), true);
      v.setBigUint64(at + 40, BigInt(memsz), true);
    } else {
      v.setUint32(at + 4, off, true);
      v.setUint32(at + 8, paddr, true);
      v.setUint32(at + 12, paddr, true);
      v.setUint32(at + 16, filesz, true);
      v.setUint32(at + 20, memsz, true);
    }
  };
  spec.segments.forEach((s, i) => {
    out.set(s.data, placed[i]);
    phdr(i, 1, placed[i], s.paddr, s.data.length, s.memsz ?? s.data.length);
  });
  if (note) {
    out.set(note, noteAt);
    phdr(spec.segments.length, 4, noteAt, 0, note.length, note.length);
  }
  return out;
}

function pvhNote(entry: number, descSize: number): Uint8Array {
  const desc = Math.ceil(descSize / 4) * 4;
  const n = new Uint8Array(12 + 4 + desc);
  const v = new DataView(n.buffer);
  v.setUint32(0, 4, true);
  v.setUint32(4, descSize, true);
  v.setUint32(8, 18, true);
  n.set([0x58, 0x65, 0x6e, 0], 12);
  if (descSize === 8) v.setBigUint64(16, BigInt(entry), true);
  else v.setUint32(16, entry, true);
  return n;
}

/** A multiboot v1 header (flags: page-align + memory info unless given), to put at the start of a segment. */
export function multibootHeader(flags = 0x3, aout?: { headerAddr: number; loadAddr: number; loadEndAddr: number; bssEndAddr: number; entryAddr: number }): Uint8Array {
  const h = new Uint8Array(aout ? 32 : 12);
  const v = new DataView(h.buffer);
  v.setUint32(0, 0x1badb002, true);
  v.setUint32(4, flags, true);
  v.setUint32(8, (-(0x1badb002 + flags)) >>> 0, true);
  if (aout) {
    v.setUint32(12, aout.headerAddr, true);
    v.setUint32(16, aout.loadAddr, true);
    v.setUint32(20, aout.loadEndAddr, true);
    v.setUint32(24, aout.bssEndAddr, true);
    v.setUint32(28, aout.entryAddr, true);
  }
  return h;
}
