// Where a kernel's pieces may go in guest RAM, shared by the PVH and multiboot loaders: segments must be RAM
// (per the memory map handed to the guest), must not overlap each other or Partita's boot structures, and are
// only copied after the whole image validated, so a bad image leaves guest memory untouched.
import type { MemoryMapEntry } from '../arch/x86_64/layout.js';
import { BOOT_CMDLINE_ADDRESS, BOOT_CMDLINE_AREA_SIZE, BOOT_GDT_ADDRESS, BOOT_MODLIST_ADDRESS, E820_RAM, FOUR_GIB } from '../arch/x86_64/layout.js';
import type { GuestMemory } from '../vmm/memory.js';
import { BootImageError } from './errors.js';

export interface LoadPiece {
  readonly what: string; // "segment 2", "a.out image", …
  readonly address: number;
  readonly data: Uint8Array; // copied to `address`
  readonly memsz: number; // ≥ data.length; the rest is zeroed
}

const PROTECTED: readonly { start: number; end: number; what: string }[] = [
  { start: BOOT_GDT_ADDRESS, end: BOOT_MODLIST_ADDRESS + 0x1000, what: "Partita's boot structures (0x500-0x9000)" },
  { start: BOOT_CMDLINE_ADDRESS, end: BOOT_CMDLINE_ADDRESS + BOOT_CMDLINE_AREA_SIZE, what: 'the command-line area (0x20000-0x30000)' },
];

const hex = (n: number): string => `0x${n.toString(16)}`;

function inRam(map: readonly MemoryMapEntry[], start: number, end: number): boolean {
  return map.some((e) => e.type === E820_RAM && start >= e.base && end <= e.base + e.size);
}

/** Checks every piece; throws BootImageError naming the first problem. */
export function validatePieces(file: string, pieces: readonly LoadPiece[], memory: GuestMemory, map: readonly MemoryMapEntry[]): void {
  if (pieces.length === 0) throw new BootImageError(file, 'nothing to load (no PT_LOAD segments)');
  const sorted = [...pieces].filter((p) => p.memsz > 0).sort((a, b) => a.address - b.address);
  for (const p of sorted) {
    const end = p.address + p.memsz;
    if (!Number.isSafeInteger(end) || end > FOUR_GIB) throw new BootImageError(file, `${p.what} at ${hex(p.address)} (+${p.memsz}) is not below 4 GiB`);
    if (!memory.contains(p.address, p.memsz) || !inRam(map, p.address, end)) {
      throw new BootImageError(file, `${p.what} at ${hex(p.address)}-${hex(end)} is not inside guest RAM (the VM has ${Math.floor(memory.size / 1048576)} MiB)`);
    }
    for (const r of PROTECTED) {
      if (p.address < r.end && r.start < end) throw new BootImageError(file, `${p.what} at ${hex(p.address)}-${hex(end)} overlaps ${r.what}`);
    }
  }
  for (let i = 1; i < sorted.length; i++) {
    const a = sorted[i - 1];
    const b = sorted[i];
    if (b.address < a.address + a.memsz) {
      throw new BootImageError(file, `${a.what} (${hex(a.address)}-${hex(a.address + a.memsz)}) and ${b.what} (${hex(b.address)}-${hex(b.address + b.memsz)}) overlap`);
    }
  }
}

export function copyPieces(pieces: readonly LoadPiece[], memory: GuestMemory): { start: number; end: number } {
  let start = Infinity;
  let end = 0;
  for (const p of pieces) {
    if (p.memsz === 0) continue;
    memory.write(p.address, p.data);
    if (p.memsz > p.data.length) memory.fill(p.address + p.data.length, p.memsz - p.data.length, 0);
    start = Math.min(start, p.address);
    end = Math.max(end, p.address + p.memsz);
  }
  return { start, end };
}

export function entryInside(file: string, entry: number, pieces: readonly LoadPiece[]): void {
  if (!pieces.some((p) => entry >= p.address && entry < p.address + p.memsz)) {
    throw new BootImageError(file, `entry point ${hex(entry)} is outside every loaded segment`);
  }
}

export interface PlacedModule {
  readonly address: number;
  readonly size: number;
}

/** Places modules page-aligned after `after`, in RAM below 4 GiB; throws if they do not fit. */
export function placeModules(
  file: string,
  modules: readonly { readonly name: string; readonly data: Uint8Array }[],
  after: number,
  map: readonly MemoryMapEntry[],
): PlacedModule[] {
  const placed: PlacedModule[] = [];
  let next = Math.ceil(after / 4096) * 4096;
  for (const m of modules) {
    const size = m.data.length;
    const end = next + size;
    if (end > FOUR_GIB || !inRam(map, next, Math.max(end, next + 1))) {
      throw new BootImageError(file, `module ${m.name} (${size} bytes) does not fit in RAM after the kernel (at ${hex(next)}); give the VM more memory`);
    }
    placed.push({ address: next, size });
    next = Math.ceil(end / 4096) * 4096;
  }
  return placed;
}

/** Throws when the strings (NUL-terminated) do not fit in the command-line area. */
export function checkStrings(file: string, strings: readonly string[]): Buffer[] {
  const encoded = strings.map((s) => Buffer.from(s + '\0', 'utf8'));
  const total = encoded.reduce((n, b) => n + b.length, 0);
  if (total > BOOT_CMDLINE_AREA_SIZE) {
    throw new BootImageError(file, `the command lines take ${total} bytes; at most ${BOOT_CMDLINE_AREA_SIZE} fit`);
  }
  return encoded;
}

/** Lays strings out NUL-terminated in the command-line area (checked first); returns each one's address. */
export function placeStrings(file: string, strings: readonly string[], memory: GuestMemory): number[] {
  const out: number[] = [];
  let at = BOOT_CMDLINE_ADDRESS;
  for (const b of checkStrings(file, strings)) {
    memory.write(at, b);
    out.push(at);
    at += b.length;
  }
  return out;
}
