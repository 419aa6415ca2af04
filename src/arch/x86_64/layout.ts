// Guest-physical address map of a Partita x86-64 VM.
//
//   0x0000_0000 ─ 0x0009_FC00  RAM (boot structures live here, see BOOT_* below)
//   0x0009_FC00 ─ 0x0010_0000  reserved: EBDA, VGA window, option ROMs, BIOS (as on a PC)
//   0x0010_0000 ─ lowRamEnd    RAM, up to the 32-bit PCI hole
//   0xC000_0000 ─ 0x1_0000_0000 the 32-bit MMIO hole:
//       0xC000_0000 ─ 0xE000_0000  PCI 32-bit memory window (BARs)
//       0xE000_0000 ─ 0xF000_0000  PCIe ECAM (MMCONFIG) for buses 0-255, E820-reserved
//       then IOAPIC (0xFEC0_0000), LAPIC (0xFEE0_0000), KVM's TSS and identity-map pages, firmware (below 4 GiB)
// The PCI windows and ECAM are where QEMU's microvm puts them, so one test guest finds PCI alike on both.
//   0x1_0000_0000 ─ …          RAM above 4 GiB: whatever did not fit below the hole
import { GIB, KIB, MIB } from '../../base/units.js';

export const EBDA_START = 0x9fc00;
export const HIGH_MEMORY_START = 1 * MIB;
/** Start of the 32-bit MMIO hole; RAM below 4 GiB ends here at the latest. */
export const MMIO_HOLE_START = 3 * GIB;
export const FOUR_GIB = 4 * GIB;
export const IOAPIC_ADDRESS = 0xfec0_0000;
export const LAPIC_ADDRESS = 0xfee0_0000;
/** PCI: the 32-bit BAR window, the ECAM window, and the I/O port window for I/O BARs (above the legacy ports). */
export const PCI_MMIO32_BASE = 0xc000_0000;
export const PCI_MMIO32_END = 0xe000_0000;
export const PCI_ECAM_BASE = 0xe000_0000;
export const PCI_ECAM_BUSES = 256;
export const PCI_ECAM_SIZE = PCI_ECAM_BUSES << 20;
export const PCI_IO_BASE = 0xc000;
export const PCI_IO_END = 0x1_0000;
/** INTA# of PCI slot s (1..) goes to GSI PCI_INTX_GSI_BASE + (s - 1) % PCI_INTX_GSI_COUNT (IOAPIC pins 16-23). */
export const PCI_INTX_GSI_BASE = 16;
export const PCI_INTX_GSI_COUNT = 8;

/** KVM_SET_IDENTITY_MAP_ADDR (one page) and KVM_SET_TSS_ADDR (three pages), inside the hole, as QEMU places them. */
export const KVM_IDENTITY_MAP_ADDRESS = 0xfeffc000;
export const KVM_TSS_ADDRESS = 0xfeffd000;

/** Low-memory locations of the boot structures Partita writes for the guest. */
export const BOOT_GDT_ADDRESS = 0x500;
export const BOOT_IDT_ADDRESS = 0x520;
export const BOOT_INFO_ADDRESS = 0x6000; // hvm_start_info or multiboot_info (one page)
export const BOOT_MEMMAP_ADDRESS = 0x7000; // memory map entries (one page)
export const BOOT_MODLIST_ADDRESS = 0x8000; // module list (one page)
export const BOOT_CMDLINE_ADDRESS = 0x20000; // kernel and module command lines
export const BOOT_CMDLINE_AREA_SIZE = 64 * KIB;

/**
 * The legacy VGA window (0xA0000-0xBFFFF): on a PC it is the display adapter's, not RAM. Firmware boot leaves
 * it unbacked so the std VGA device decodes it; direct kernel boot keeps it inside the first RAM slot (no
 * legacy display there, and E820 reserves 0x9FC00-0xFFFFF anyway).
 */
export const VGA_WINDOW_BASE = 0xa0000;
export const VGA_WINDOW_END = 0xc0000;

/** The largest guest RAM Partita accepts. */
export const MAX_MEMORY = 1024 * GIB;
/** The smallest: enough for the boot structures and a small kernel. */
export const MIN_MEMORY = 2 * MIB;

export type { RamRange } from '../../base/guest-memory.js';
import type { RamRange } from '../../base/guest-memory.js';

/** Where `memorySize` bytes of RAM go: below the hole first, the rest above 4 GiB. */
export function ramRanges(memorySize: number): RamRange[] {
  if (!Number.isSafeInteger(memorySize) || memorySize < MIN_MEMORY || memorySize > MAX_MEMORY) {
    throw new RangeError(`memory size ${memorySize} is outside ${MIN_MEMORY}..${MAX_MEMORY} bytes`);
  }
  const low = Math.min(memorySize, MMIO_HOLE_START);
  const ranges: RamRange[] = [{ gpa: 0, size: low }];
  if (memorySize > low) ranges.push({ gpa: FOUR_GIB, size: memorySize - low });
  return ranges;
}

/** E820 types (ACPI 6.5, table 15.312) */
export const E820_RAM = 1;
export const E820_RESERVED = 2;
export const E820_ACPI = 3;
export const E820_NVS = 4;

export interface MemoryMapEntry {
  readonly base: number;
  readonly size: number;
  readonly type: number; // E820_*
}

/**
 * The memory map handed to a guest (PVH memmap, multiboot mmap, Linux e820), sorted, non-overlapping: RAM, the
 * BIOS area, and `reserved` ranges the devices ask for (the PCI root's ECAM window: an OS may refuse MMCONFIG
 * that E820 does not reserve, PCI Firmware 3.2 §4.1.2 note). Reserved ranges must lie outside RAM.
 */
export function guestMemoryMap(
  memorySize: number,
  reserved: readonly { readonly base: number; readonly size: number }[] = [],
): MemoryMapEntry[] {
  const [low, high] = ramRanges(memorySize);
  const map: MemoryMapEntry[] = [
    { base: 0, size: EBDA_START, type: E820_RAM },
    { base: EBDA_START, size: HIGH_MEMORY_START - EBDA_START, type: E820_RESERVED },
  ];
  if (low.size > HIGH_MEMORY_START)
    map.push({ base: HIGH_MEMORY_START, size: low.size - HIGH_MEMORY_START, type: E820_RAM });
  for (const r of reserved) {
    const inRam = [low, high].some((ram) => ram && r.base < ram.gpa + ram.size && ram.gpa < r.base + r.size);
    if (inRam) throw new RangeError(`reserved range 0x${r.base.toString(16)} (+0x${r.size.toString(16)}) overlaps RAM`);
    map.push({ base: r.base, size: r.size, type: E820_RESERVED });
  }
  if (high) map.push({ base: high.gpa, size: high.size, type: E820_RAM });
  return map.sort((a, b) => a.base - b.base);
}

/**
 * RAM of a PC booted by firmware: as ramRanges(), with the VGA window cut out of the first range. 0xC0000-0xFFFFF
 * stays RAM: with no PAM shadowing to emulate, the BIOS image and the option ROMs firmware copies there live in
 * plain RAM (the firmware boot strategy reloads the image on reset).
 */
export function firmwareRamRanges(memorySize: number): RamRange[] {
  const [low, ...rest] = ramRanges(memorySize);
  if (low.size <= VGA_WINDOW_END)
    throw new RangeError(`firmware boot needs more than ${VGA_WINDOW_END / 1024} KiB of RAM below the PCI hole`);
  return [{ gpa: 0, size: VGA_WINDOW_BASE }, { gpa: VGA_WINDOW_END, size: low.size - VGA_WINDOW_END }, ...rest];
}
