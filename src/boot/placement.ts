// Where a kernel's pieces and modules may go in guest RAM, shared by the PVH and multiboot loaders. Pieces must lie
// in RAM the memory map hands to the guest as usable, below 4 GiB (the entry runs with paging off), and must not
// overlap each other or Partita's boot structures. Loaders validate everything first and copy afterwards, so a bad
// image leaves guest memory untouched.
import {
  BOOT_CMDLINE_ADDRESS,
  BOOT_CMDLINE_AREA_SIZE,
  BOOT_GDT_ADDRESS,
  BOOT_MODLIST_ADDRESS,
  E820_RAM,
  FOUR_GIB,
  type MemoryMapEntry,
} from '../arch/x86_64/layout.js';
import type { GuestMemory } from '../base/guest-memory.js';
import { BootImageError } from './errors.js';

export const PAGE_SIZE = 4096;

export interface LoadPiece {
  /** For messages: "segment 2", "the a.out-kludge image", … */
  readonly what: string;
  readonly address: number;
  /** Copied to `address`. */
  readonly data: Uint8Array;
  /** ≥ data.length; the bytes after the data are zeroed (bss). */
  readonly memsz: number;
}

export interface Range {
  readonly start: number;
  readonly end: number;
}

/** Low-memory areas Partita itself writes: a kernel or module placed there would be overwritten (or overwrite them). */
export const PROTECTED_AREAS: readonly (Range & { readonly what: string })[] = [
  {
    start: BOOT_GDT_ADDRESS,
    end: BOOT_MODLIST_ADDRESS + PAGE_SIZE,
    what: `Partita's boot structures (${hex(BOOT_GDT_ADDRESS)}-${hex(BOOT_MODLIST_ADDRESS + PAGE_SIZE)}: GDT, boot information, memory map, module list)`,
  },
  {
    start: BOOT_CMDLINE_ADDRESS,
    end: BOOT_CMDLINE_ADDRESS + BOOT_CMDLINE_AREA_SIZE,
    what: `the command-line area (${hex(BOOT_CMDLINE_ADDRESS)}-${hex(BOOT_CMDLINE_ADDRESS + BOOT_CMDLINE_AREA_SIZE)})`,
  },
];

export function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

const pageUp = (n: number): number => Math.ceil(n / PAGE_SIZE) * PAGE_SIZE;

/** Usable RAM of the memory map below 4 GiB, adjacent entries merged, sorted. */
export function usableRamBelow4G(map: readonly MemoryMapEntry[]): Range[] {
  const ram = map
    .filter((e) => e.type === E820_RAM && e.size > 0 && e.base < FOUR_GIB)
    .map((e) => ({ start: e.base, end: Math.min(e.base + e.size, FOUR_GIB) }))
    .sort((a, b) => a.start - b.start);
  const merged: { start: number; end: number }[] = [];
  for (const r of ram) {
    const last = merged[merged.length - 1];
    if (last && r.start <= last.end) last.end = Math.max(last.end, r.end);
    else merged.push({ ...r });
  }
  return merged;
}

function describeRam(memory: GuestMemory): string {
  return memory.regions.map((r) => `${hex(r.gpa)}-${hex(r.gpa + r.size)}`).join(', ');
}

/** Checks every piece (placement only; contents were bounds-checked by the parser). Throws naming the first problem. */
export function validatePieces(
  file: string,
  pieces: readonly LoadPiece[],
  memory: GuestMemory,
  map: readonly MemoryMapEntry[],
): void {
  if (pieces.length === 0) throw new BootImageError(file, 'nothing to load: the image has no PT_LOAD segments');
  const sized = pieces.filter((p) => p.memsz > 0);
  if (sized.length === 0) throw new BootImageError(file, 'nothing to load: every PT_LOAD segment is empty (p_memsz 0)');
  const usable = usableRamBelow4G(map);
  for (const p of sized) {
    const end = p.address + p.memsz;
    const span = `${p.what} at ${hex(p.address)}-${hex(end)}`;
    if (end > FOUR_GIB) {
      throw new BootImageError(file, `${span} is not below 4 GiB (the kernel starts with paging off)`);
    }
    if (!memory.contains(p.address, p.memsz)) {
      throw new BootImageError(
        file,
        `${span} is not inside guest RAM (${describeRam(memory)}); give the VM more memory or relink the kernel`,
      );
    }
    if (!usable.some((r) => p.address >= r.start && end <= r.end)) {
      const reserved = map.find((e) => e.type !== E820_RAM && p.address < e.base + e.size && e.base < end);
      const why = reserved
        ? `it overlaps ${hex(reserved.base)}-${hex(reserved.base + reserved.size)}, which the memory map reserves (type ${reserved.type})`
        : 'the memory map does not describe it as RAM';
      throw new BootImageError(file, `${span} is not inside usable guest RAM: ${why}`);
    }
    for (const area of PROTECTED_AREAS) {
      if (p.address < area.end && area.start < end) throw new BootImageError(file, `${span} overlaps ${area.what}`);
    }
  }
  // Sorted by start, any overlap shows up between neighbours.
  const sorted = [...sized].sort((a, b) => a.address - b.address);
  for (let i = 1; i < sorted.length; i++) {
    const a = sorted[i - 1];
    const b = sorted[i];
    if (b.address < a.address + a.memsz) {
      throw new BootImageError(
        file,
        `${a.what} (${hex(a.address)}-${hex(a.address + a.memsz)}) and ${b.what} (${hex(b.address)}-${hex(b.address + b.memsz)}) overlap in physical memory`,
      );
    }
  }
}

/** The physical range the pieces span (start of the lowest to end of the highest). */
export function kernelExtent(pieces: readonly LoadPiece[]): Range {
  const sized = pieces.filter((p) => p.memsz > 0);
  return { start: Math.min(...sized.map((p) => p.address)), end: Math.max(...sized.map((p) => p.address + p.memsz)) };
}

export function entryInside(file: string, entry: number, pieces: readonly LoadPiece[]): void {
  if (!pieces.some((p) => entry >= p.address && entry < p.address + p.memsz)) {
    const loaded = pieces.filter((p) => p.memsz > 0).map((p) => `${hex(p.address)}-${hex(p.address + p.memsz)}`);
    throw new BootImageError(file, `entry point ${hex(entry)} is outside every loaded segment (${loaded.join(', ')})`);
  }
}

/** Copies the pieces and zeroes their bss. Call only after validatePieces. */
export function copyPieces(pieces: readonly LoadPiece[], memory: GuestMemory): void {
  for (const p of pieces) {
    if (p.memsz === 0) continue;
    memory.write(p.address, p.data);
    if (p.memsz > p.data.length) memory.fill(p.address + p.data.length, p.memsz - p.data.length, 0);
  }
}

export interface PlacedModule {
  readonly address: number;
  readonly size: number;
}

/**
 * Places modules one after another, each page-aligned, above `after` (the end of the kernel), in usable RAM below
 * 4 GiB, skipping holes and Partita's low-memory areas (first fit, in the given order). Throws if one does not fit.
 */
export function placeModules(
  file: string,
  modules: readonly { readonly name: string; readonly data: Uint8Array }[],
  after: number,
  map: readonly MemoryMapEntry[],
): PlacedModule[] {
  const usable = usableRamBelow4G(map);
  const placed: PlacedModule[] = [];
  let cursor = after;
  for (const m of modules) {
    const size = m.data.length;
    const address = firstFit(usable, cursor, size);
    if (address === undefined) {
      const top = usable.length ? usable[usable.length - 1].end : 0;
      throw new BootImageError(
        file,
        `module ${m.name} (${size} bytes) does not fit in guest RAM above ${hex(pageUp(cursor))} (after the kernel${placed.length ? ' and earlier modules' : ''}) and below ${hex(top)}, the end of RAM under 4 GiB; give the VM more memory`,
      );
    }
    placed.push({ address, size });
    cursor = address + size;
  }
  return placed;
}

function firstFit(usable: readonly Range[], from: number, size: number): number | undefined {
  for (const r of usable) {
    let a = pageUp(Math.max(from, r.start));
    for (;;) {
      if (a + size > r.end || (size === 0 && a >= r.end)) break;
      const clash = PROTECTED_AREAS.find((p) => a < p.end && p.start < a + Math.max(size, 1));
      if (!clash) return a;
      a = pageUp(clash.end);
    }
  }
  return undefined;
}

/** Encodes the strings NUL-terminated; throws when together they do not fit in the command-line area. */
export function checkStrings(
  file: string,
  strings: readonly { readonly what: string; readonly text: string }[],
): Uint8Array[] {
  const encoded = strings.map((s) => Buffer.from(s.text + '\0', 'utf8'));
  const total = encoded.reduce((n, b) => n + b.length, 0);
  if (total > BOOT_CMDLINE_AREA_SIZE) {
    const biggest = strings.reduce((a, s, i) => (encoded[i].length > encoded[a].length ? i : a), 0);
    throw new BootImageError(
      file,
      `the command lines take ${total} bytes (${strings[biggest].what}: ${encoded[biggest].length}) but at most ${BOOT_CMDLINE_AREA_SIZE} fit in the command-line area`,
    );
  }
  return encoded;
}

/** Writes already-checked strings one after another into the command-line area; returns each one's address. */
export function writeStrings(encoded: readonly Uint8Array[], memory: GuestMemory): number[] {
  const out: number[] = [];
  let at = BOOT_CMDLINE_ADDRESS;
  for (const b of encoded) {
    memory.write(at, b);
    out.push(at);
    at += b.length;
  }
  return out;
}
