// What a kernel loader is given and what it hands back: shared by the loaders and their dispatcher (index.ts).
import type { MemoryMapEntry } from '../arch/x86_64/layout.js';
import type { GuestMemory } from '../base/guest-memory.js';

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
