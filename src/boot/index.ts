// Kernel loading: picks the boot protocol from the image the way QEMU does (a multiboot header in the first 8 KiB
// wins, then an ELF with a PVH entry note), validates the whole image against guest RAM, and only then writes the
// kernel, its modules and the boot information. Every refusal is a BootImageError naming the file and the problem.
import type { MemoryMapEntry } from '../arch/x86_64/layout.js';
import type { GuestMemory } from '../vmm/memory.js';
import { isElf, parseElf } from './elf.js';
import { isBzImage, loadBzImage, type LinuxBootEntry } from './linux.js';
import { BootImageError } from './errors.js';
import { findMultibootHeader, loadMultiboot } from './multiboot.js';
import { loadPvh, probePvh } from './pvh.js';

export interface BootModule {
  /** File name, for messages (and the multiboot module string when `cmdline` is empty). */
  readonly name: string;
  readonly data: Uint8Array;
  readonly cmdline: string;
}

export interface BootRequest {
  /** The kernel's file name: in every error message, and (multiboot) the first word of the command line. */
  readonly imageName: string;
  readonly image: Uint8Array;
  readonly cmdline: string;
  readonly modules: readonly BootModule[];
  readonly memory: GuestMemory;
  /** The memory map handed to the guest (PVH memmap, multiboot mmap); kernels and modules go in its RAM. */
  readonly memoryMap: readonly MemoryMapEntry[];
  /** PVH: hvm_start_info.rsdp_paddr (0 when absent). */
  readonly rsdpAddress?: number;
}

export interface BootEntry {
  readonly protocol: 'pvh' | 'multiboot';
  /** 32-bit physical entry; the CPU starts in flat 32-bit protected mode with paging off. */
  readonly entryPoint: number;
  /** PVH: 0; multiboot: 0x2BADB002. */
  readonly eax: number;
  /** PVH: hvm_start_info; multiboot: multiboot_info (both at BOOT_INFO_ADDRESS). */
  readonly ebx: number;
  /** Physical range of the loaded kernel, bss included (modules are above it). */
  readonly kernelRange: { readonly start: number; readonly end: number };
}

export function loadKernel(request: BootRequest): BootEntry | LinuxBootEntry {
  const { image, imageName: file } = request;
  if (image.length === 0) throw new BootImageError(file, 'the file is empty');
  const search = findMultibootHeader(image);
  if (search.header) return loadMultiboot(request, search.header);

  const reasons: string[] = [];
  if (isElf(image)) {
    const elf = parseElf(image, file);
    const probe = probePvh(image, elf);
    if (probe.kind === 'entry') return loadPvh(request, elf);
    reasons.push(
      probe.xenNotes > 0
        ? `it is an ELF${elf.class} file with Xen notes but no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY): a Xen PV-only kernel?`
        : `it is an ELF${elf.class} file without a PVH entry note (Xen, XEN_ELFNOTE_PHYS32_ENTRY)`,
    );
  } else if (isBzImage(image)) {
    return loadBzImage(request);
  } else {
    reasons.push('it is not an ELF file');
  }
  const bad = search.badChecksum;
  reasons.push(
    bad
      ? `the multiboot magic at offset ${bad.offset} has a bad checksum (magic + flags + checksum = 0x${bad.sum.toString(16)}, not 0)`
      : 'there is no multiboot header in its first 8 KiB',
  );
  throw new BootImageError(file, `not a multiboot or PVH ELF kernel: ${reasons.join('; ')}`);
}
