// PVH direct boot (the Xen x86/HVM direct boot ABI: docs/misc/pvh.pandoc and
// xen/include/public/arch-x86/hvm/start_info.h). The kernel's XEN_ELFNOTE_PHYS32_ENTRY note names a 32-bit
// entry point that runs in flat protected mode with paging off and %ebx = the physical address of
// struct hvm_start_info; Partita writes version 1 of it (with the memory map). Layouts (all little-endian):
//
//   hvm_start_info (56 bytes)          hvm_modlist_entry (32 bytes)     hvm_memmap_table_entry (24 bytes)
//     0 u32 magic 0x336ec578             0 u64 paddr                      0 u64 addr
//     4 u32 version (1)                  8 u64 size                       8 u64 size
//     8 u32 flags (SIF_*, none)         16 u64 cmdline_paddr (0 = none)  16 u32 type (E820 numbering)
//    12 u32 nr_modules                  24 u64 reserved                  20 u32 reserved
//    16 u64 modlist_paddr
//    24 u64 cmdline_paddr
//    32 u64 rsdp_paddr (0 = find it the legacy way)
//    40 u64 memmap_paddr
//    48 u32 memmap_entries
//    52 u32 reserved
//
// The ABI treats 0 in any address field as "not present" (nothing is ever loaded at physical address 0).
import { BOOT_INFO_ADDRESS, BOOT_MEMMAP_ADDRESS, BOOT_MODLIST_ADDRESS } from '../arch/x86_64/layout.js';
import { elfNotes, elfSectionNotes, loadSegments, parseElf, type ElfImage, type ElfNote } from './elf.js';
import { BootImageError } from './errors.js';
import {
  checkStrings,
  copyPieces,
  entryInside,
  kernelExtent,
  PAGE_SIZE,
  placeModules,
  validatePieces,
  writeStrings,
  type LoadPiece,
} from './placement.js';
import type { BootEntry, BootRequest } from './types.js';

export const XEN_ELFNOTE_PHYS32_ENTRY = 18;
export const HVM_START_MAGIC = 0x336ec578;
export const HVM_START_INFO_VERSION = 1;
export const HVM_START_INFO_SIZE = 56;
export const HVM_MEMMAP_ENTRY_SIZE = 24;
export const HVM_MODLIST_ENTRY_SIZE = 32;

/** What the image says about PVH: its entry, or why it has none. */
export type PvhProbe =
  | { readonly kind: 'entry'; readonly entry: number; readonly note: ElfNote }
  | { readonly kind: 'none'; readonly xenNotes: number };

function isPvhNote(n: ElfNote): boolean {
  return n.name === 'Xen' && n.type === XEN_ELFNOTE_PHYS32_ENTRY;
}

/**
 * Looks for the Xen PHYS32_ENTRY note: in PT_NOTE segments first (where linkers put it), then, if no segment
 * has one, in SHT_NOTE sections. A note with a bad descriptor is an error, not "no note".
 */
export function probePvh(image: Uint8Array, elf: ElfImage): PvhProbe {
  const file = elf.file;
  let notes = elfNotes(image, elf);
  if (!notes.some(isPvhNote)) {
    const sectionNotes = elfSectionNotes(image, elf);
    if (sectionNotes.some(isPvhNote)) notes = sectionNotes;
  }
  const note = notes.find(isPvhNote);
  if (!note) return { kind: 'none', xenNotes: notes.filter((n) => n.name === 'Xen').length };
  const d = new DataView(note.desc.buffer, note.desc.byteOffset, note.desc.byteLength);
  let entry: bigint;
  if (note.desc.length === 4) entry = BigInt(d.getUint32(0, true));
  else if (note.desc.length === 8) entry = d.getBigUint64(0, true);
  else {
    throw new BootImageError(
      file,
      `the PVH entry note (Xen, type ${XEN_ELFNOTE_PHYS32_ENTRY}) in ${note.where} has a ${note.desc.length}-byte descriptor (expected a 4- or 8-byte address)`,
    );
  }
  if (entry > 0xffffffffn) {
    throw new BootImageError(
      file,
      `the PVH entry point 0x${entry.toString(16)} is above 4 GiB: PVH starts the kernel in 32-bit mode, so it must be a 32-bit address`,
    );
  }
  return { kind: 'entry', entry: Number(entry), note };
}

/** Loads an ELF kernel with a PVH note (parsed already, or parsed here) and writes hvm_start_info. */
export function loadPvh(request: BootRequest, parsed?: ElfImage): BootEntry {
  const { image, imageName: file, memory, memoryMap, modules } = request;
  const elf = parsed ?? parseElf(image, file);
  const probe = probePvh(image, elf);
  if (probe.kind !== 'entry') {
    throw new BootImageError(file, 'the ELF file has no PVH entry note (Xen XEN_ELFNOTE_PHYS32_ENTRY)');
  }
  const entry = probe.entry;

  // Validate everything before writing anything.
  const pieces: LoadPiece[] = loadSegments(elf).map((s) => ({
    what: `segment ${s.index}`,
    address: s.paddr,
    data: image.subarray(s.offset, s.offset + s.filesz),
    memsz: s.memsz,
  }));
  validatePieces(file, pieces, memory, memoryMap);
  entryInside(file, entry, pieces);
  const kernelRange = kernelExtent(pieces);
  if (memoryMap.length * HVM_MEMMAP_ENTRY_SIZE > PAGE_SIZE) {
    throw new BootImageError(
      file,
      `the memory map has ${memoryMap.length} entries; at most ${PAGE_SIZE / HVM_MEMMAP_ENTRY_SIZE} fit in its page`,
    );
  }
  if (modules.length * HVM_MODLIST_ENTRY_SIZE > PAGE_SIZE) {
    throw new BootImageError(
      file,
      `too many modules (${modules.length}); at most ${PAGE_SIZE / HVM_MODLIST_ENTRY_SIZE} fit in the module list`,
    );
  }
  const placed = placeModules(file, modules, kernelRange.end, memoryMap);
  // The kernel command line always gets a string (possibly empty); a module's only when it has one.
  const withCmdline = modules.map((m, i) => ({ m, i })).filter(({ m }) => m.cmdline !== '');
  const encoded = checkStrings(file, [
    { what: 'the kernel command line', text: request.cmdline },
    ...withCmdline.map(({ m }) => ({ what: `the command line of module ${m.name}`, text: m.cmdline })),
  ]);
  if (request.rsdpAddress !== undefined && !(Number.isSafeInteger(request.rsdpAddress) && request.rsdpAddress >= 0)) {
    throw new RangeError(`rsdpAddress ${request.rsdpAddress} is not a physical address`);
  }

  // From here on, write.
  copyPieces(pieces, memory);
  const [cmdlineAddress, ...moduleCmdlineAddresses] = writeStrings(encoded, memory);
  const moduleCmdline = new Map(withCmdline.map(({ i }, k) => [i, moduleCmdlineAddresses[k]]));
  modules.forEach((m, i) => {
    memory.write(placed[i].address, m.data);
    const at = BOOT_MODLIST_ADDRESS + i * HVM_MODLIST_ENTRY_SIZE;
    memory.writeU64(at, placed[i].address);
    memory.writeU64(at + 8, placed[i].size);
    memory.writeU64(at + 16, moduleCmdline.get(i) ?? 0);
    memory.writeU64(at + 24, 0);
  });
  memoryMap.forEach((e, i) => {
    const at = BOOT_MEMMAP_ADDRESS + i * HVM_MEMMAP_ENTRY_SIZE;
    memory.writeU64(at, e.base);
    memory.writeU64(at + 8, e.size);
    memory.writeU32(at + 16, e.type);
    memory.writeU32(at + 20, 0);
  });
  const si = BOOT_INFO_ADDRESS;
  memory.fill(si, HVM_START_INFO_SIZE, 0);
  memory.writeU32(si, HVM_START_MAGIC);
  memory.writeU32(si + 4, HVM_START_INFO_VERSION);
  memory.writeU32(si + 8, 0);
  memory.writeU32(si + 12, modules.length);
  memory.writeU64(si + 16, modules.length ? BOOT_MODLIST_ADDRESS : 0);
  memory.writeU64(si + 24, cmdlineAddress);
  memory.writeU64(si + 32, request.rsdpAddress ?? 0);
  memory.writeU64(si + 40, memoryMap.length ? BOOT_MEMMAP_ADDRESS : 0);
  memory.writeU32(si + 48, memoryMap.length);
  return { protocol: 'pvh', entryPoint: entry, eax: 0, ebx: si, kernelRange };
}
