// Kernel loading: picks the boot protocol from the image the way QEMU does (a multiboot header in the first
// 8 KiB wins, then an ELF with a PVH note) and loads it.
import type { MemoryMapEntry } from '../arch/x86_64/layout.js';
import type { GuestMemory } from '../vmm/memory.js';
import { isElf, parseElf } from './elf.js';
import { BootImageError } from './errors.js';
import { findMultibootHeader, loadMultiboot } from './multiboot.js';
import { loadPvh, pvhEntry } from './pvh.js';

export interface BootModule {
  readonly name: string;
  readonly data: Uint8Array;
  readonly cmdline: string;
}

export interface BootRequest {
  readonly imageName: string;
  readonly image: Uint8Array;
  readonly cmdline: string;
  readonly modules: readonly BootModule[];
  readonly memory: GuestMemory;
  readonly memoryMap: readonly MemoryMapEntry[];
  readonly rsdpAddress?: number;
}

export interface BootEntry {
  readonly protocol: 'pvh' | 'multiboot';
  /** 32-bit physical entry; the CPU starts in flat 32-bit protected mode with paging off. */
  readonly entryPoint: number;
  readonly eax: number;
  readonly ebx: number;
  readonly kernelRange: { readonly start: number; readonly end: number };
}

export function isBzImage(image: Uint8Array): boolean {
  return image.length > 0x206 && image[0x202] === 0x48 && image[0x203] === 0x64 && image[0x204] === 0x72 && image[0x205] === 0x53;
}

export function loadKernel(request: BootRequest): BootEntry {
  const { image, imageName: file } = request;
  if (image.length === 0) throw new BootImageError(file, 'the file is empty');
  const multiboot = findMultibootHeader(image);
  if (multiboot) return loadMultiboot(request, multiboot);
  if (isElf(image)) {
    const elf = parseElf(image, file);
    if (pvhEntry(image, elf, file) !== undefined) return loadPvh(request, elf);
    throw new BootImageError(file, 'an ELF kernel without a PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY) or a multiboot header: not a multiboot or PVH ELF kernel');
  }
  if (isBzImage(image)) {
    throw new BootImageError(file, 'a Linux bzImage: not a multiboot or PVH ELF kernel (bzImage boot is not supported yet; use the uncompressed vmlinux, which has a PVH note)');
  }
  throw new BootImageError(file, 'not a multiboot or PVH ELF kernel (no ELF header, no multiboot header in the first 8 KiB)');
}
