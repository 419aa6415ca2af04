// Multiboot version 1 (Multiboot Specification 0.6.96): header search, ELF32 or a.out-kludge loading, and the
// multiboot_info structure with memory sizes, command line, modules, memory map and boot loader name. The kernel
// starts in flat 32-bit protected mode with paging off, %eax = 0x2BADB002 and %ebx = the multiboot_info address.
//
// Header (in the first 8192 bytes of the file, 32-bit aligned):
//    0 magic 0x1BADB002   4 flags   8 checksum (magic + flags + checksum = 0 mod 2^32)
//   12 header_addr  16 load_addr  20 load_end_addr  24 bss_end_addr  28 entry_addr   (valid when flags bit 16)
//   32 mode_type  36 width  40 height  44 depth                                     (valid when flags bit 2)
//
// multiboot_info (at BOOT_INFO_ADDRESS; fields Partita fills):
//    0 flags   4 mem_lower (KiB from 0)   8 mem_upper (KiB from 1 MiB)   16 cmdline   20 mods_count   24 mods_addr
//   44 mmap_length   48 mmap_addr   64 boot_loader_name        (structure size 88 up to the VBE fields)
// Module entry (16 bytes): mod_start, mod_end (exclusive), string, reserved.
// Memory map entry (24 bytes): u32 size (= 20, not counting itself), u64 base_addr, u64 length, u32 type;
// mmap_addr points at the first entry's size field and mmap_length counts all bytes.
import {
  BOOT_INFO_ADDRESS,
  BOOT_MEMMAP_ADDRESS,
  BOOT_MODLIST_ADDRESS,
  HIGH_MEMORY_START,
} from '../arch/x86_64/layout.js';
import { EM_386, isElf, loadSegments, parseElf } from './elf.js';
import { BootImageError } from './errors.js';
import {
  checkStrings,
  copyPieces,
  entryInside,
  hex,
  kernelExtent,
  PAGE_SIZE,
  placeModules,
  usableRamBelow4G,
  validatePieces,
  writeStrings,
  type LoadPiece,
} from './placement.js';
import type { BootEntry, BootRequest } from './types.js';

export const MULTIBOOT_HEADER_MAGIC = 0x1badb002;
export const MULTIBOOT_BOOTLOADER_MAGIC = 0x2badb002;
export const MULTIBOOT_SEARCH_LIMIT = 8192;
export const MULTIBOOT_BOOTLOADER_NAME = 'Partita';
const HEADER_SIZE = 12;
const AOUT_HEADER_SIZE = 32;

export const MB_FLAG_PAGE_ALIGN = 1 << 0;
export const MB_FLAG_MEMORY_INFO = 1 << 1;
export const MB_FLAG_VIDEO_MODE = 1 << 2;
export const MB_FLAG_AOUT_KLUDGE = 1 << 16;
/**
 * The required-feature bits (0-15) Partita satisfies. Bit 0: modules are always page-aligned. Bit 1: memory
 * information is always given. Bit 2 (video mode table): accepted, but no video information is provided (info
 * flags bits 11 and 12 stay clear), as QEMU does: Partita has no display, and the spec calls the header's video
 * fields only a preference. Any other bit in 0-15 is a requirement we do not understand, so the image is refused.
 */
const SUPPORTED_REQUIRED = MB_FLAG_PAGE_ALIGN | MB_FLAG_MEMORY_INFO | MB_FLAG_VIDEO_MODE;

export const MBI_FLAG_MEM = 1 << 0;
export const MBI_FLAG_CMDLINE = 1 << 2;
export const MBI_FLAG_MODS = 1 << 3;
export const MBI_FLAG_MMAP = 1 << 6;
export const MBI_FLAG_LOADER_NAME = 1 << 9;
export const MBI_SIZE = 88;
export const MB_MODULE_SIZE = 16;
export const MB_MMAP_ENTRY_SIZE = 24;
const LOWER_MEMORY_LIMIT = 640 * 1024;

export interface MultibootAoutFields {
  readonly headerAddr: number;
  readonly loadAddr: number;
  readonly loadEndAddr: number;
  readonly bssEndAddr: number;
  readonly entryAddr: number;
}

export interface MultibootHeader {
  /** File offset of the magic. */
  readonly offset: number;
  readonly flags: number;
  /** The address fields, when flags bit 16 is set and the file holds them. */
  readonly aout?: MultibootAoutFields;
}

export interface MultibootSearch {
  readonly header?: MultibootHeader;
  /** The first magic found whose checksum does not hold (for error messages when nothing else boots). */
  readonly badChecksum?: { readonly offset: number; readonly sum: number };
}

/** Searches the first 8 KiB for a header: 32-bit aligned, entirely inside the 8 KiB, with a valid checksum. */
export function findMultibootHeader(image: Uint8Array): MultibootSearch {
  const v = new DataView(image.buffer, image.byteOffset, image.byteLength);
  const last = Math.min(MULTIBOOT_SEARCH_LIMIT, image.length) - HEADER_SIZE;
  let badChecksum: MultibootSearch['badChecksum'];
  for (let at = 0; at <= last; at += 4) {
    if (v.getUint32(at, true) !== MULTIBOOT_HEADER_MAGIC) continue;
    const flags = v.getUint32(at + 4, true);
    const sum = (MULTIBOOT_HEADER_MAGIC + flags + v.getUint32(at + 8, true)) % 2 ** 32;
    if (sum !== 0) {
      badChecksum ??= { offset: at, sum };
      continue;
    }
    let aout: MultibootAoutFields | undefined;
    if (flags & MB_FLAG_AOUT_KLUDGE && at + AOUT_HEADER_SIZE <= image.length) {
      const f = (n: number): number => v.getUint32(at + 12 + 4 * n, true);
      aout = { headerAddr: f(0), loadAddr: f(1), loadEndAddr: f(2), bssEndAddr: f(3), entryAddr: f(4) };
    }
    return { header: { offset: at, flags, aout }, badChecksum };
  }
  return { badChecksum };
}

function flagNames(bits: number): string {
  const out: string[] = [];
  for (let b = 0; b < 32; b++) if (bits & (1 << b)) out.push(`bit ${b}`);
  return out.join(', ');
}

/** The a.out kludge: header_addr/load_addr/load_end_addr/bss_end_addr/entry_addr say where the file goes. */
function aoutPieces(request: BootRequest, h: MultibootHeader): { pieces: LoadPiece[]; entry: number } {
  const { image, imageName: file } = request;
  const a = h.aout;
  if (!a) {
    throw new BootImageError(
      file,
      `truncated: the multiboot header at offset ${h.offset} sets flag bit 16 (a.out kludge), so it needs ${AOUT_HEADER_SIZE} bytes up to byte ${h.offset + AOUT_HEADER_SIZE}, but the file has ${image.length}`,
    );
  }
  const fields = `header_addr ${hex(a.headerAddr)}, load_addr ${hex(a.loadAddr)}`;
  if (a.loadAddr > a.headerAddr) throw new BootImageError(file, `multiboot load_addr is above header_addr (${fields})`);
  const fileStart = h.offset - (a.headerAddr - a.loadAddr);
  if (fileStart < 0) {
    throw new BootImageError(
      file,
      `multiboot header_addr - load_addr is ${a.headerAddr - a.loadAddr} bytes but the header is at file offset ${h.offset}: load_addr would lie before the start of the file (${fields})`,
    );
  }
  const loadEnd = a.loadEndAddr === 0 ? a.loadAddr + (image.length - fileStart) : a.loadEndAddr;
  if (loadEnd < a.loadAddr) {
    throw new BootImageError(
      file,
      `multiboot load_end_addr ${hex(a.loadEndAddr)} is below load_addr ${hex(a.loadAddr)}`,
    );
  }
  if (a.headerAddr + HEADER_SIZE > loadEnd) {
    throw new BootImageError(
      file,
      `multiboot header_addr ${hex(a.headerAddr)} is outside the loaded text ${hex(a.loadAddr)}-${hex(loadEnd)}`,
    );
  }
  const size = loadEnd - a.loadAddr;
  if (fileStart + size > image.length) {
    throw new BootImageError(
      file,
      `truncated: multiboot load_addr..load_end_addr (${hex(a.loadAddr)}-${hex(loadEnd)}) needs file bytes ${fileStart}..${fileStart + size} but the file has ${image.length} bytes`,
    );
  }
  const bssEnd = a.bssEndAddr === 0 ? loadEnd : a.bssEndAddr;
  if (bssEnd < loadEnd) {
    throw new BootImageError(
      file,
      `multiboot bss_end_addr ${hex(a.bssEndAddr)} is below load_end_addr ${hex(loadEnd)}`,
    );
  }
  return {
    pieces: [
      {
        what: 'the a.out-kludge image',
        address: a.loadAddr,
        data: image.subarray(fileStart, fileStart + size),
        memsz: bssEnd - a.loadAddr,
      },
    ],
    entry: a.entryAddr,
  };
}

/** An ELF32 kernel: PT_LOAD segments at p_paddr; e_entry translated to physical when it is a linked (virtual) address. */
function elfPieces(request: BootRequest): { pieces: LoadPiece[]; entry: number } {
  const { image, imageName: file } = request;
  if (!isElf(image)) {
    throw new BootImageError(
      file,
      'the multiboot kernel is not an ELF file and its header does not set flag bit 16 (a.out kludge) to say where to load it',
    );
  }
  const elf = parseElf(image, file);
  if (elf.class === 64) {
    throw new BootImageError(
      file,
      'a multiboot kernel in ELF64 format: multiboot v1 loads 32-bit ELF kernels only; convert it with `objcopy -O elf32-i386` (as QEMU requires too)',
    );
  }
  if (elf.machine !== EM_386) {
    throw new BootImageError(file, `a multiboot ELF32 kernel must be for EM_386 (3), not machine ${elf.machine}`);
  }
  const segments = loadSegments(elf);
  const pieces = segments.map((s) => ({
    what: `segment ${s.index}`,
    address: s.paddr,
    data: image.subarray(s.offset, s.offset + s.filesz),
    memsz: s.memsz,
  }));
  // Higher-half kernels link at virtual addresses (p_vaddr != p_paddr) and give a virtual e_entry: like GRUB,
  // translate an entry that falls inside a segment's virtual range to the physical address it is loaded at.
  const containing = segments.find((s) => s.memsz > 0 && elf.entry >= s.vaddr && elf.entry < s.vaddr + BigInt(s.memsz));
  const entry = containing ? containing.paddr + Number(elf.entry - containing.vaddr) : Number(elf.entry);
  return { pieces, entry };
}

/** Loads a multiboot kernel (header found already, or searched here) and writes multiboot_info. */
export function loadMultiboot(request: BootRequest, found?: MultibootHeader): BootEntry {
  const { imageName: file, memory, memoryMap, modules } = request;
  const header = found ?? findMultibootHeader(request.image).header;
  if (!header) {
    throw new BootImageError(file, 'no multiboot header (magic 0x1BADB002 with a valid checksum) in the first 8 KiB');
  }
  const unsupported = header.flags & 0xffff & ~SUPPORTED_REQUIRED;
  if (unsupported) {
    throw new BootImageError(
      file,
      `the multiboot header requires features Partita does not provide: flags ${flagNames(unsupported)} (header flags ${hex(header.flags)}; Partita supports bits 0-2 and 16)`,
    );
  }

  // Validate everything before writing anything.
  const { pieces, entry } = header.flags & MB_FLAG_AOUT_KLUDGE ? aoutPieces(request, header) : elfPieces(request);
  validatePieces(file, pieces, memory, memoryMap);
  entryInside(file, entry, pieces);
  const kernelRange = kernelExtent(pieces);
  if (memoryMap.length * MB_MMAP_ENTRY_SIZE > PAGE_SIZE) {
    throw new BootImageError(
      file,
      `the memory map has ${memoryMap.length} entries; at most ${PAGE_SIZE / MB_MMAP_ENTRY_SIZE} fit in its page`,
    );
  }
  if (modules.length * MB_MODULE_SIZE > PAGE_SIZE) {
    throw new BootImageError(
      file,
      `too many modules (${modules.length}); at most ${PAGE_SIZE / MB_MODULE_SIZE} fit in the module list`,
    );
  }
  const placed = placeModules(file, modules, kernelRange.end, memoryMap);
  // GRUB and QEMU pass the kernel's file name followed by its arguments; multiboot kernels expect that.
  const kernelCmdline = request.cmdline ? `${file} ${request.cmdline}` : file;
  const encoded = checkStrings(file, [
    { what: 'the kernel command line', text: kernelCmdline },
    { what: 'the boot loader name', text: MULTIBOOT_BOOTLOADER_NAME },
    ...modules.map((m) => ({ what: `the command line of module ${m.name}`, text: m.cmdline || m.name })),
  ]);

  // From here on, write.
  copyPieces(pieces, memory);
  const [cmdlineAddress, loaderNameAddress, ...moduleStrings] = writeStrings(encoded, memory);
  modules.forEach((m, i) => {
    memory.write(placed[i].address, m.data);
    const at = BOOT_MODLIST_ADDRESS + i * MB_MODULE_SIZE;
    memory.writeU32(at, placed[i].address);
    memory.writeU32(at + 4, placed[i].address + placed[i].size);
    memory.writeU32(at + 8, moduleStrings[i]);
    memory.writeU32(at + 12, 0);
  });
  memoryMap.forEach((e, i) => {
    const at = BOOT_MEMMAP_ADDRESS + i * MB_MMAP_ENTRY_SIZE;
    memory.writeU32(at, MB_MMAP_ENTRY_SIZE - 4);
    memory.writeU64(at + 4, e.base);
    memory.writeU64(at + 12, e.size);
    memory.writeU32(at + 20, e.type);
  });
  const { lower, upper } = memorySizes(memoryMap);
  const mbi = BOOT_INFO_ADDRESS;
  memory.fill(mbi, MBI_SIZE, 0);
  memory.writeU32(mbi, MBI_FLAG_MEM | MBI_FLAG_CMDLINE | MBI_FLAG_MODS | MBI_FLAG_MMAP | MBI_FLAG_LOADER_NAME);
  memory.writeU32(mbi + 4, lower);
  memory.writeU32(mbi + 8, upper);
  memory.writeU32(mbi + 16, cmdlineAddress);
  memory.writeU32(mbi + 20, modules.length);
  memory.writeU32(mbi + 24, BOOT_MODLIST_ADDRESS);
  memory.writeU32(mbi + 44, memoryMap.length * MB_MMAP_ENTRY_SIZE);
  memory.writeU32(mbi + 48, BOOT_MEMMAP_ADDRESS);
  memory.writeU32(mbi + 64, loaderNameAddress);
  return { protocol: 'multiboot', entryPoint: entry, eax: MULTIBOOT_BOOTLOADER_MAGIC, ebx: mbi, kernelRange };
}

/**
 * mem_lower: KiB of RAM from address 0 (at most 640); mem_upper: KiB of RAM contiguous from 1 MiB, up to the first
 * hole (below 4 GiB, so it fits the 32-bit field).
 */
export function memorySizes(map: BootRequest['memoryMap']): { lower: number; upper: number } {
  const usable = usableRamBelow4G(map);
  const low = usable.find((r) => r.start === 0);
  const high = usable.find((r) => r.start <= HIGH_MEMORY_START && r.end > HIGH_MEMORY_START);
  return {
    lower: low ? Math.floor(Math.min(low.end, LOWER_MEMORY_LIMIT) / 1024) : 0,
    upper: high ? Math.floor((high.end - HIGH_MEMORY_START) / 1024) : 0,
  };
}
