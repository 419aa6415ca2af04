// PVH direct boot (Xen's x86/HVM direct boot ABI, xen/include/public/arch-x86/hvm/start_info.h, as Linux and
// QEMU implement it): the kernel's XEN_ELFNOTE_PHYS32_ENTRY note names a 32-bit protected-mode entry; ebx
// points to struct hvm_start_info (version 1: with the memory map), modules and command lines in RAM.
import { BOOT_INFO_ADDRESS, BOOT_MEMMAP_ADDRESS, BOOT_MODLIST_ADDRESS } from '../arch/x86_64/layout.js';
import { elfNotes, parseElf, PT_LOAD, type ElfImage } from './elf.js';
import { BootImageError } from './errors.js';
import { checkStrings, copyPieces, entryInside, placeModules, placeStrings, validatePieces, type LoadPiece } from './placement.js';
import type { BootEntry, BootRequest } from './index.js';

export const XEN_ELFNOTE_PHYS32_ENTRY = 18;
export const HVM_START_MAGIC = 0x336ec578;
const START_INFO_SIZE = 56;
const MEMMAP_ENTRY_SIZE = 24;
const MODLIST_ENTRY_SIZE = 32;

/** The PVH entry address from the image's Xen note, or undefined when there is none. */
export function pvhEntry(image: Uint8Array, elf: ElfImage, file: string): number | undefined {
  for (const note of elfNotes(image, elf, file)) {
    if (note.name !== 'Xen' || note.type !== XEN_ELFNOTE_PHYS32_ENTRY) continue;
    const d = new DataView(note.desc.buffer, note.desc.byteOffset, note.desc.byteLength);
    if (note.desc.length === 4) return d.getUint32(0, true);
    if (note.desc.length === 8) {
      const v = d.getBigUint64(0, true);
      if (v > 0xffffffffn) throw new BootImageError(file, `PVH entry 0x${v.toString(16)} is above 4 GiB: it must be a 32-bit address`);
      return Number(v);
    }
    throw new BootImageError(file, `the PVH entry note has a ${note.desc.length}-byte address (expected 4 or 8)`);
  }
  return undefined;
}

export function loadPvh(request: BootRequest, elf: ElfImage = parseElf(request.image, request.imageName)): BootEntry {
  const file = request.imageName;
  const entry = pvhEntry(request.image, elf, file);
  if (entry === undefined) throw new BootImageError(file, 'no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY) in this ELF kernel');
  const pieces: LoadPiece[] = elf.segments
    .filter((s) => s.type === PT_LOAD)
    .map((s) => ({ what: `segment ${s.index}`, address: s.paddr, data: request.image.subarray(s.offset, s.offset + s.filesz), memsz: s.memsz }));
  const { memory, memoryMap } = request;
  validatePieces(file, pieces, memory, memoryMap);
  entryInside(file, entry, pieces);
  const kernelEnd = Math.max(...pieces.map((p) => p.address + p.memsz));
  const modules = placeModules(file, request.modules, kernelEnd, memoryMap);
  if (memoryMap.length * MEMMAP_ENTRY_SIZE > 4096) throw new BootImageError(file, 'the memory map does not fit in its page');
  if (request.modules.length * MODLIST_ENTRY_SIZE > 4096) throw new BootImageError(file, `too many modules (${request.modules.length})`);
  const strings = [request.cmdline, ...request.modules.map((m) => m.cmdline)];
  checkStrings(file, strings);
  // Validation done: from here on, write.
  const kernelRange = copyPieces(pieces, memory);
  const [cmdlineAddress, ...moduleCmdlines] = placeStrings(file, strings, memory);
  request.modules.forEach((m, i) => {
    memory.write(modules[i].address, m.data);
    const at = BOOT_MODLIST_ADDRESS + i * MODLIST_ENTRY_SIZE;
    memory.writeU64(at, modules[i].address);
    memory.writeU64(at + 8, modules[i].size);
    memory.writeU64(at + 16, moduleCmdlines[i]);
    memory.writeU64(at + 24, 0);
  });
  memoryMap.forEach((e, i) => {
    const at = BOOT_MEMMAP_ADDRESS + i * MEMMAP_ENTRY_SIZE;
    memory.writeU64(at, e.base);
    memory.writeU64(at + 8, e.size);
    memory.writeU32(at + 16, e.type);
    memory.writeU32(at + 20, 0);
  });
  const si = BOOT_INFO_ADDRESS;
  memory.fill(si, START_INFO_SIZE, 0);
  memory.writeU32(si, HVM_START_MAGIC);
  memory.writeU32(si + 4, 1); // version 1: memmap fields valid
  memory.writeU32(si + 8, 0); // flags
  memory.writeU32(si + 12, request.modules.length);
  memory.writeU64(si + 16, request.modules.length ? BOOT_MODLIST_ADDRESS : 0);
  memory.writeU64(si + 24, cmdlineAddress);
  memory.writeU64(si + 32, request.rsdpAddress ?? 0);
  memory.writeU64(si + 40, BOOT_MEMMAP_ADDRESS);
  memory.writeU32(si + 48, memoryMap.length);
  return { protocol: 'pvh', entryPoint: entry, eax: 0, ebx: si, kernelRange };
}
