// Multiboot version 1 (Multiboot Specification 0.6.96): header search, ELF32 or a.out-kludge loading, and the
// multiboot_info structure with memory, command line, modules, memory map and boot loader name.
import { BOOT_INFO_ADDRESS, BOOT_MEMMAP_ADDRESS, BOOT_MODLIST_ADDRESS, E820_RAM, EBDA_START, HIGH_MEMORY_START } from '../arch/x86_64/layout.js';
import { isElf, parseElf, PT_LOAD } from './elf.js';
import { BootImageError } from './errors.js';
import { checkStrings, copyPieces, entryInside, placeModules, placeStrings, validatePieces, type LoadPiece } from './placement.js';
import type { BootEntry, BootRequest } from './index.js';

export const MULTIBOOT_HEADER_MAGIC = 0x1badb002;
export const MULTIBOOT_BOOTLOADER_MAGIC = 0x2badb002;
const SEARCH_LIMIT = 8192;
const FLAG_PAGE_ALIGN = 1 << 0;
const FLAG_MEMORY_INFO = 1 << 1;
const FLAG_VIDEO_MODE = 1 << 2;
const FLAG_AOUT_KLUDGE = 1 << 16;
/** Required-feature bits (0-15) Partita satisfies. Bit 2 (video mode) is accepted without providing video
 * information: the spec lets the loader leave flags bit 11 clear, and we have no framebuffer (QEMU does the same). */
const SUPPORTED_REQUIRED = FLAG_PAGE_ALIGN | FLAG_MEMORY_INFO | FLAG_VIDEO_MODE;

const INFO_MEM = 1 << 0;
const INFO_CMDLINE = 1 << 2;
const INFO_MODS = 1 << 3;
const INFO_MMAP = 1 << 6;
const INFO_LOADER_NAME = 1 << 9;
const MBI_SIZE = 0x58;

export interface MultibootHeader {
  readonly offset: number; // in the file
  readonly flags: number;
  readonly headerAddr: number;
  readonly loadAddr: number;
  readonly loadEndAddr: number;
  readonly bssEndAddr: number;
  readonly entryAddr: number;
}

/** Finds a valid multiboot header in the first 8 KiB (32-bit aligned, checksum holds). */
export function findMultibootHeader(image: Uint8Array): MultibootHeader | undefined {
  const v = new DataView(image.buffer, image.byteOffset, image.byteLength);
  const limit = Math.min(SEARCH_LIMIT, image.length) - 12;
  for (let at = 0; at <= limit; at += 4) {
    if (v.getUint32(at, true) !== MULTIBOOT_HEADER_MAGIC) continue;
    const flags = v.getUint32(at + 4, true);
    if (((MULTIBOOT_HEADER_MAGIC + flags + v.getUint32(at + 8, true)) & 0xffffffff) >>> 0 !== 0) continue;
    const field = (n: number): number => (at + 12 + 4 * n + 4 <= image.length ? v.getUint32(at + 12 + 4 * n, true) : 0);
    return { offset: at, flags, headerAddr: field(0), loadAddr: field(1), loadEndAddr: field(2), bssEndAddr: field(3), entryAddr: field(4) };
  }
  return undefined;
}

function aoutPieces(request: BootRequest, h: MultibootHeader): { pieces: LoadPiece[]; entry: number } {
  const file = request.imageName;
  if (h.offset + 32 > request.image.length) throw new BootImageError(file, 'truncated: the multiboot a.out-kludge header is cut off');
  if (h.loadAddr > h.headerAddr) throw new BootImageError(file, 'multiboot load_addr is above header_addr');
  const fileStart = h.offset - (h.headerAddr - h.loadAddr);
  if (fileStart < 0) throw new BootImageError(file, 'multiboot header_addr/load_addr point before the start of the file');
  const loadEnd = h.loadEndAddr === 0 ? h.loadAddr + (request.image.length - fileStart) : h.loadEndAddr;
  if (loadEnd < h.loadAddr) throw new BootImageError(file, 'multiboot load_end_addr is below load_addr');
  const size = loadEnd - h.loadAddr;
  if (fileStart + size > request.image.length) {
    throw new BootImageError(file, `truncated: the multiboot image needs ${fileStart + size} bytes but the file has ${request.image.length}`);
  }
  const bssEnd = h.bssEndAddr === 0 ? loadEnd : h.bssEndAddr;
  if (bssEnd < loadEnd) throw new BootImageError(file, 'multiboot bss_end_addr is below load_end_addr');
  return {
    pieces: [{ what: 'the a.out-kludge image', address: h.loadAddr, data: request.image.subarray(fileStart, fileStart + size), memsz: bssEnd - h.loadAddr }],
    entry: h.entryAddr,
  };
}

function elfPieces(request: BootRequest): { pieces: LoadPiece[]; entry: number } {
  const file = request.imageName;
  if (!isElf(request.image)) throw new BootImageError(file, 'multiboot kernel is neither ELF nor marked with the a.out kludge (header flag 16)');
  const elf = parseElf(request.image, file);
  if (elf.class === 64) {
    throw new BootImageError(file, 'multiboot v1 loads 32-bit ELF kernels only; convert it with `objcopy -O elf32-i386` (as QEMU requires too)');
  }
  const pieces = elf.segments
    .filter((s) => s.type === PT_LOAD)
    .map((s) => ({ what: `segment ${s.index}`, address: s.paddr, data: request.image.subarray(s.offset, s.offset + s.filesz), memsz: s.memsz }));
  return { pieces, entry: elf.entry };
}

export function loadMultiboot(request: BootRequest, header: MultibootHeader | undefined = findMultibootHeader(request.image)): BootEntry {
  const file = request.imageName;
  if (!header) throw new BootImageError(file, 'no multiboot header in the first 8 KiB');
  const unsupported = header.flags & 0xffff & ~SUPPORTED_REQUIRED;
  if (unsupported) throw new BootImageError(file, `the multiboot header requires features Partita does not provide (flags 0x${unsupported.toString(16)})`);
  const { pieces, entry } = header.flags & FLAG_AOUT_KLUDGE ? aoutPieces(request, header) : elfPieces(request);
  const { memory, memoryMap } = request;
  validatePieces(file, pieces, memory, memoryMap);
  entryInside(file, entry, pieces);
  const kernelEnd = Math.max(...pieces.map((p) => p.address + p.memsz));
  const modules = placeModules(file, request.modules, kernelEnd, memoryMap);
  if (memoryMap.length * 24 > 4096) throw new BootImageError(file, 'the memory map does not fit in its page');
  if (request.modules.length * 16 > 4096) throw new BootImageError(file, `too many modules (${request.modules.length})`);

  // GRUB and QEMU pass the kernel's file name followed by its arguments; multiboot kernels expect that.
  const kernelCmdline = request.cmdline ? `${file} ${request.cmdline}` : file;
  const strings = [kernelCmdline, 'Partita', ...request.modules.map((m) => m.cmdline || m.name)];
  checkStrings(file, strings);
  // Validation done: from here on, write.
  const kernelRange = copyPieces(pieces, memory);
  const [cmdlineAddress, loaderName, ...moduleStrings] = placeStrings(file, strings, memory);
  request.modules.forEach((m, i) => {
    memory.write(modules[i].address, m.data);
    const at = BOOT_MODLIST_ADDRESS + i * 16;
    memory.writeU32(at, modules[i].address);
    memory.writeU32(at + 4, modules[i].address + modules[i].size);
    memory.writeU32(at + 8, moduleStrings[i]);
    memory.writeU32(at + 12, 0);
  });
  memoryMap.forEach((e, i) => {
    const at = BOOT_MEMMAP_ADDRESS + i * 24;
    memory.writeU32(at, 20); // size of the entry, not counting this field
    memory.writeU64(at + 4, e.base);
    memory.writeU64(at + 12, e.size);
    memory.writeU32(at + 20, e.type);
  });
  const upper = memoryMap.find((e) => e.type === E820_RAM && e.base === HIGH_MEMORY_START);
  const mbi = BOOT_INFO_ADDRESS;
  memory.fill(mbi, MBI_SIZE, 0);
  memory.writeU32(mbi, INFO_MEM | INFO_CMDLINE | INFO_MMAP | INFO_LOADER_NAME | (request.modules.length ? INFO_MODS : 0));
  memory.writeU32(mbi + 4, Math.floor(EBDA_START / 1024)); // mem_lower, KiB
  memory.writeU32(mbi + 8, upper ? Math.floor(upper.size / 1024) : 0); // mem_upper, KiB from 1 MiB
  memory.writeU32(mbi + 16, cmdlineAddress);
  memory.writeU32(mbi + 20, request.modules.length);
  memory.writeU32(mbi + 24, request.modules.length ? BOOT_MODLIST_ADDRESS : 0);
  memory.writeU32(mbi + 44, memoryMap.length * 24);
  memory.writeU32(mbi + 48, BOOT_MEMMAP_ADDRESS);
  memory.writeU32(mbi + 64, loaderName);
  return { protocol: 'multiboot', entryPoint: entry, eax: MULTIBOOT_BOOTLOADER_MAGIC, ebx: mbi, kernelRange };
}
