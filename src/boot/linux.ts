// Linux x86 boot protocol (Documentation/arch/x86/boot.rst, zero-page.rst; struct boot_params and struct
// setup_header in arch/x86/include/uapi/asm/bootparam.h), 64-bit entry: the protected-mode part of a bzImage is
// copied to RAM, a zero page (struct boot_params) is filled from the image's setup header plus what the loader
// knows (command line, initrd, e820 map, RSDP), and the vCPU starts at startup_64 = load address + 0x200 in long
// mode with %rsi pointing at the zero page, on page tables that identity-map the first 4 GiB and a GDT whose
// selectors 0x10/0x18 are flat 64-bit code and data (__BOOT_CS/__BOOT_DS).
//
// Low-memory structures of this loader (all between the boot-structure pages at 0x500-0x9000 and the command-line
// area at 0x20000):
//   0x9000  PML4            0xA000  PDPT            0xB000-0xEFFF  four page directories (2 MiB pages, 0-4 GiB)
//   0xF000  GDT (64-bit)    0x10000 boot_params (the zero page, 4 KiB)
// The command line goes to BOOT_CMDLINE_ADDRESS (0x20000), the kernel to pref_address (or 1 MiB), the initrd as
// high as it may go below 4 GiB. Nothing is written before the whole request validated.
import {
  BOOT_CMDLINE_ADDRESS,
  BOOT_CMDLINE_AREA_SIZE,
  E820_RAM,
  FOUR_GIB,
  HIGH_MEMORY_START,
  type MemoryMapEntry,
} from '../arch/x86_64/layout.js';
import { BootImageError } from './errors.js';
import type { BootRequest } from './types.js';

export const LINUX_PML4_ADDRESS = 0x9000;
export const LINUX_PDPT_ADDRESS = 0xa000;
export const LINUX_PD_ADDRESS = 0xb000; // four pages: 0xB000, 0xC000, 0xD000, 0xE000
export const LINUX_GDT_ADDRESS = 0xf000;
export const LINUX_ZERO_PAGE_ADDRESS = 0x10000;
/** The 64-bit boot GDT: null, null, code64 (0x10), data (0x18), 64-bit TSS (0x20, 16 bytes). */
export const LINUX_GDT_LIMIT = 6 * 8 - 1;
export const LINUX_BOOT_CS = 0x10;
export const LINUX_BOOT_DS = 0x18;
export const LINUX_BOOT_TSS = 0x20;

/** Offsets in struct boot_params (zero-page.rst) and in it of struct setup_header (boot.rst). */
export const BP = {
  acpiRsdpAddr: 0x070,
  extRamdiskImage: 0x0c0,
  extRamdiskSize: 0x0c4,
  extCmdLinePtr: 0x0c8,
  e820Entries: 0x1e8,
  sentinel: 0x1ef,
  hdr: 0x1f1,
  e820Table: 0x2d0,
  // setup_header fields, at their boot_params (= file) offsets
  setupSects: 0x1f1,
  syssize: 0x1f4,
  vidMode: 0x1fa,
  bootFlag: 0x1fe,
  jump: 0x200,
  header: 0x202,
  version: 0x206,
  typeOfLoader: 0x210,
  loadflags: 0x211,
  code32Start: 0x214,
  ramdiskImage: 0x218,
  ramdiskSize: 0x21c,
  heapEndPtr: 0x224,
  cmdLinePtr: 0x228,
  initrdAddrMax: 0x22c,
  kernelAlignment: 0x230,
  relocatableKernel: 0x234,
  minAlignment: 0x235,
  xloadflags: 0x236,
  cmdlineSize: 0x238,
  payloadOffset: 0x248,
  payloadLength: 0x24c,
  setupData: 0x250,
  prefAddress: 0x258,
  initSize: 0x260,
} as const;
export const ZERO_PAGE_SIZE = 4096;
/** struct setup_header may extend at most to the next boot_params member (edd_mbr_sig_buffer at 0x290). */
const HDR_LIMIT = 0x290;
const E820_MAX_ENTRIES_ZEROPAGE = 128;
const E820_ENTRY_SIZE = 20;

export const LOADED_HIGH = 0x01;
export const CAN_USE_HEAP = 0x80;
export const XLF_KERNEL_64 = 0x01;
export const XLF_CAN_BE_LOADED_ABOVE_4G = 0x02;
const HDRS_MAGIC = 0x53726448; // "HdrS"
const BOOT_FLAG = 0xaa55;
/** setup stack/heap end, as an offset from the real-mode code, minus 0x200 (boot.rst, "heap_end_ptr"). */
const HEAP_END_PTR = 0xe000 - 0x200;
const PAGE = 4096;
const MIB = 1024 * 1024;

export interface LinuxBootEntry {
  readonly protocol: 'linux';
  /** startup_64: the protected-mode kernel's load address + 0x200; entered in 64-bit mode. */
  readonly entryPoint: number;
  /** struct boot_params (the zero page), for %rsi. */
  readonly rsi: number;
  /** The PML4 of page tables identity-mapping 0-4 GiB with 2 MiB pages, for CR3. */
  readonly cr3: number;
  /** The GDT: 0x10 flat 64-bit code, 0x18 flat data, 0x20 a 64-bit TSS (base 0, limit 0x67). */
  readonly gdtAddress: number;
  readonly gdtLimit: number;
  /** Where the kernel runs: from its load address to the end of what it uses while decompressing (init_size). */
  readonly kernelRange: { readonly start: number; readonly end: number };
  readonly initrdRange?: { readonly start: number; readonly end: number };
  /** The boot protocol version the image speaks, e.g. 0x020f. */
  readonly protocolVersion: number;
}

/** What a bzImage's setup header says, after validation. */
export interface BzImageHeader {
  readonly version: number; // 0x020f = 2.15
  readonly setupSects: number; // 0 already replaced by 4
  readonly setupSize: number; // (setup_sects + 1) * 512: the protected-mode kernel's offset in the file
  readonly headerEnd: number; // 0x202 + byte at 0x201: the setup header is [0x1f1, headerEnd)
  readonly syssize: number; // in 16-byte paragraphs
  readonly loadflags: number;
  readonly code32Start: number;
  readonly initrdAddrMax: number;
  readonly kernelAlignment: number;
  readonly relocatable: boolean;
  readonly minAlignment: number; // log2
  readonly xloadflags: number;
  readonly cmdlineSize: number;
  readonly payloadOffset: number;
  readonly payloadLength: number;
  readonly prefAddress: number;
  readonly initSize: number;
  /** The protected-mode kernel: the file from setupSize on. */
  readonly kernel: Uint8Array;
}

const hex = (n: number): string => `0x${n.toString(16)}`;
const versionText = (v: number): string => `${v >> 8}.${(v & 0xff).toString().padStart(2, '0')}`;
const mib = (n: number): string => {
  const v = n / MIB;
  return Number.isInteger(v) ? `${v}` : v.toFixed(1);
};

/** True when the image carries a Linux x86 boot-protocol setup header ("HdrS" at 0x202). */
export function isBzImage(image: Uint8Array): boolean {
  return (
    image.length >= 0x206 &&
    image[0x202] === 0x48 &&
    image[0x203] === 0x64 &&
    image[0x204] === 0x72 &&
    image[0x205] === 0x53
  );
}

/** Parses and checks a bzImage's setup header (boot.rst, "THE REAL-MODE KERNEL HEADER"); throws BootImageError. */
export function parseBzImage(image: Uint8Array, file: string): BzImageHeader {
  if (!isBzImage(image))
    throw new BootImageError(file, 'not a Linux bzImage (no "HdrS" boot-protocol header at offset 0x202)');
  const dv = new DataView(image.buffer, image.byteOffset, image.byteLength);
  if (image.length < 0x208)
    throw new BootImageError(file, `truncated bzImage: ${image.length} bytes end inside the setup header`);
  const magic = dv.getUint32(BP.header, true);
  if (magic !== HDRS_MAGIC) throw new BootImageError(file, 'not a Linux bzImage (bad "HdrS" magic)');
  const version = dv.getUint16(BP.version, true);
  if (version < 0x020a) {
    throw new BootImageError(
      file,
      `Linux boot protocol ${versionText(version)} too old: the 64-bit entry needs protocol 2.10 or later (Linux 2.6.31+)`,
    );
  }
  const headerEnd = 0x202 + image[0x201];
  if (image.length < headerEnd)
    throw new BootImageError(
      file,
      `truncated bzImage: ${image.length} bytes end inside the setup header (which ends at ${hex(headerEnd)})`,
    );
  const bootFlag = dv.getUint16(BP.bootFlag, true);
  if (bootFlag !== BOOT_FLAG)
    throw new BootImageError(file, `bad boot_flag ${hex(bootFlag)} in the setup header (expected 0xaa55)`);
  const has = (offset: number, size: number): boolean => offset + size <= headerEnd;
  if (!has(BP.xloadflags, 2)) {
    throw new BootImageError(
      file,
      `boot protocol ${versionText(version)} has no xloadflags (protocol 2.12+): cannot tell whether the kernel has a 64-bit entry (XLF_KERNEL_64)`,
    );
  }
  const xloadflags = dv.getUint16(BP.xloadflags, true);
  if (!(xloadflags & XLF_KERNEL_64)) {
    throw new BootImageError(
      file,
      `xloadflags ${hex(xloadflags)} lacks XLF_KERNEL_64: not a 64-bit kernel with a 64-bit entry point (a 32-bit kernel?)`,
    );
  }
  const loadflags = image[BP.loadflags];
  if (!(loadflags & LOADED_HIGH))
    throw new BootImageError(
      file,
      'a zImage (loadflags without LOADED_HIGH): only bzImages, loaded at 1 MiB or above, are supported',
    );
  const setupSects = image[BP.setupSects] || 4;
  const setupSize = (setupSects + 1) * 512;
  if (setupSize < headerEnd)
    throw new BootImageError(file, `setup_sects ${setupSects} is too small to hold the setup header`);
  if (image.length <= setupSize) {
    throw new BootImageError(
      file,
      `truncated bzImage: the ${setupSects} setup sectors end at ${setupSize} bytes but the file has only ${image.length}`,
    );
  }
  const kernel = image.subarray(setupSize);
  const syssize = dv.getUint32(BP.syssize, true);
  if (syssize === 0) throw new BootImageError(file, 'syssize is 0: no protected-mode kernel');
  if (kernel.length < syssize * 16) {
    throw new BootImageError(
      file,
      `truncated bzImage: the protected-mode kernel has ${kernel.length} bytes, the header says ${syssize * 16} (syssize ${syssize})`,
    );
  }
  const u32 = (o: number, size = 4): number => (has(o, size) ? dv.getUint32(o, true) : 0);
  const payloadOffset = u32(BP.payloadOffset);
  const payloadLength = u32(BP.payloadLength);
  if (payloadOffset + payloadLength > kernel.length) {
    throw new BootImageError(
      file,
      `truncated bzImage: the compressed payload (${hex(payloadOffset)} +${payloadLength}) extends past the protected-mode kernel (${kernel.length} bytes)`,
    );
  }
  const pref = has(BP.prefAddress, 8) ? dv.getBigUint64(BP.prefAddress, true) : 0n;
  if (pref >= BigInt(FOUR_GIB)) throw new BootImageError(file, `pref_address 0x${pref.toString(16)} is above 4 GiB`);
  const kernelAlignment = dv.getUint32(BP.kernelAlignment, true);
  if (kernelAlignment !== 0 && (kernelAlignment & (kernelAlignment - 1)) !== 0) {
    throw new BootImageError(file, `kernel_alignment ${hex(kernelAlignment)} is not a power of two`);
  }
  return {
    version,
    setupSects,
    setupSize,
    headerEnd,
    syssize,
    loadflags,
    code32Start: dv.getUint32(BP.code32Start, true),
    initrdAddrMax: dv.getUint32(BP.initrdAddrMax, true),
    kernelAlignment,
    relocatable: image[BP.relocatableKernel] !== 0,
    minAlignment: image[BP.minAlignment],
    xloadflags,
    cmdlineSize: u32(BP.cmdlineSize) || 255, // cmdline_size is 2.06+; before it the limit was 255
    payloadOffset,
    payloadLength,
    prefAddress: Number(pref),
    initSize: u32(BP.initSize),
    kernel,
  };
}

/** The RAM entry of the memory map containing [start, end), if any. */
function ramEntry(map: readonly MemoryMapEntry[], start: number, end: number): MemoryMapEntry | undefined {
  return map.find((e) => e.type === E820_RAM && start >= e.base && end <= e.base + e.size);
}

const alignUp = (n: number, a: number): number => (a > 1 ? Math.ceil(n / a) * a : n);

interface KernelPlacement {
  readonly load: number; // where the protected-mode kernel is copied
  readonly runStart: number; // where the decompressed kernel runs (init_size counts from here)
  readonly end: number; // end of everything the kernel uses before it reads the memory map
}

/**
 * Where the protected-mode kernel goes. The 64-bit entry (arch/x86/boot/compressed/head_64.S) of a relocatable
 * kernel runs at its load address rounded up to kernel_alignment, but never below LOAD_PHYSICAL_ADDR, which the
 * header publishes as pref_address; a non-relocatable one always runs at pref_address. Loading at pref_address
 * spares the decompressor a move; 1 MiB is the classic bzImage address and the fallback.
 */
function placeKernel(h: BzImageHeader, file: string, map: readonly MemoryMapEntry[]): KernelPlacement {
  const pm = h.kernel.length;
  const align = Math.max(h.kernelAlignment, 1);
  const runAt = (load: number): number =>
    h.relocatable ? Math.max(alignUp(load, align), h.prefAddress) : h.prefAddress || load;
  const candidates: number[] = [];
  if (h.prefAddress >= HIGH_MEMORY_START && (!h.relocatable || h.prefAddress % align === 0))
    candidates.push(h.prefAddress);
  candidates.push(HIGH_MEMORY_START);
  for (const load of candidates) {
    const runStart = runAt(load);
    const end = Math.max(load + pm, runStart + h.initSize);
    if (end <= FOUR_GIB && ramEntry(map, load, end)) return { load, runStart, end };
  }
  const load = candidates[candidates.length - 1];
  const runStart = runAt(load);
  const end = Math.max(load + pm, runStart + h.initSize);
  const lowRam = map
    .filter((e) => e.type === E820_RAM && e.base < FOUR_GIB)
    .reduce((n, e) => Math.max(n, Math.min(e.base + e.size, FOUR_GIB)), 0);
  throw new BootImageError(
    file,
    `the kernel needs RAM up to ${hex(end)} (${mib(h.initSize)} MiB init_size from ${hex(runStart)}) but RAM below 4 GiB ends at ${hex(lowRam)}; give the VM more memory`,
  );
}

/** Highest page-aligned place for the initrd below min(initrd_addr_max + 1, end of RAM below 4 GiB), above the kernel. */
function placeInitrd(
  h: BzImageHeader,
  file: string,
  name: string,
  size: number,
  kernelEnd: number,
  map: readonly MemoryMapEntry[],
): number {
  const limit = Math.min(h.initrdAddrMax + 1 || FOUR_GIB, FOUR_GIB); // initrd_addr_max is the highest byte address it may occupy
  const floor = Math.max(kernelEnd, HIGH_MEMORY_START);
  const ram = map.filter((e) => e.type === E820_RAM && e.base < limit).sort((a, b) => b.base - a.base);
  for (const e of ram) {
    const top = Math.min(e.base + e.size, limit);
    const at = Math.floor((top - size) / PAGE) * PAGE;
    if (at >= Math.max(e.base, floor)) return at;
  }
  const ramTop = ram.reduce((n, e) => Math.max(n, Math.min(e.base + e.size, limit)), 0);
  throw new BootImageError(
    file,
    `initrd of ${mib(size)} MiB (${name}) does not fit below ${hex(Math.min(limit, ramTop))} (initrd_addr_max ${hex(h.initrdAddrMax)}, end of RAM below 4 GiB) above the kernel (which ends at ${hex(kernelEnd)}); give the VM more memory`,
  );
}

/** The 64-bit boot GDT (Intel SDM vol. 3A, 3.4.5): code64 with L=1, D=0; data flat 4 GiB; a 64-bit TSS. */
export function linuxBootGdt(): BigUint64Array {
  return new BigUint64Array([
    0n,
    0n,
    0x00af9b000000ffffn, // 0x10 code: base 0, limit 4G, G=1, L=1, execute/read, accessed
    0x00cf93000000ffffn, // 0x18 data: base 0, limit 4G, G=1, D/B=1, read/write, accessed
    0x00008b0000000067n, // 0x20 TSS: base 0, limit 0x67, busy 64-bit TSS (system descriptor, low half)
    0n, //                          (its high half: base bits 63:32)
  ]);
}

/** Page tables identity-mapping 0-4 GiB with 2 MiB pages, as bytes to put at LINUX_PML4_ADDRESS (6 pages). */
export function identityPageTables(): Uint8Array {
  const pages = new Uint8Array(6 * PAGE);
  const dv = new DataView(pages.buffer);
  const PRESENT_RW = 0x3n;
  const PS = 0x80n;
  dv.setBigUint64(0, BigInt(LINUX_PDPT_ADDRESS) | PRESENT_RW, true); // PML4[0] → PDPT
  for (let g = 0; g < 4; g++) {
    dv.setBigUint64(PAGE + g * 8, BigInt(LINUX_PD_ADDRESS + g * PAGE) | PRESENT_RW, true); // PDPT[g] → PD g
    for (let i = 0; i < 512; i++) {
      const address = BigInt(g) * 0x4000_0000n + BigInt(i) * 0x20_0000n;
      dv.setBigUint64(2 * PAGE + g * PAGE + i * 8, address | PRESENT_RW | PS, true);
    }
  }
  return pages;
}

/**
 * Loads a bzImage for the 64-bit boot protocol: validates everything first (header, sizes, RAM, command line,
 * initrd), then writes the kernel, initrd, command line, zero page, page tables and GDT.
 */
export function loadBzImage(request: BootRequest): LinuxBootEntry {
  const file = request.imageName;
  const { image, memory, memoryMap } = request;
  const h = parseBzImage(image, file);

  if (request.modules.length > 1) {
    throw new BootImageError(
      file,
      `a Linux kernel takes one initrd; ${request.modules.length} were given (${request.modules.map((m) => m.name).join(', ')}): concatenate them into one (Linux accepts concatenated cpio archives)`,
    );
  }
  const cmdline = Buffer.from(request.cmdline, 'utf8');
  if (cmdline.includes(0)) throw new BootImageError(file, 'the kernel command line contains a NUL byte');
  if (cmdline.length > h.cmdlineSize) {
    throw new BootImageError(
      file,
      `the kernel command line is ${cmdline.length} bytes; this kernel takes at most ${h.cmdlineSize} (cmdline_size)`,
    );
  }
  if (cmdline.length + 1 > BOOT_CMDLINE_AREA_SIZE)
    throw new BootImageError(
      file,
      `the kernel command line is ${cmdline.length} bytes; at most ${BOOT_CMDLINE_AREA_SIZE - 1} fit`,
    );
  const lowStructures = [LINUX_PML4_ADDRESS, LINUX_ZERO_PAGE_ADDRESS + ZERO_PAGE_SIZE];
  if (
    !ramEntry(memoryMap, lowStructures[0], lowStructures[1]) ||
    !memory.contains(lowStructures[0], lowStructures[1] - lowStructures[0])
  ) {
    throw new BootImageError(
      file,
      `low memory ${hex(lowStructures[0])}-${hex(lowStructures[1])} for the zero page and page tables is not RAM`,
    );
  }
  if (!ramEntry(memoryMap, BOOT_CMDLINE_ADDRESS, BOOT_CMDLINE_ADDRESS + cmdline.length + 1)) {
    throw new BootImageError(file, `the command-line area at ${hex(BOOT_CMDLINE_ADDRESS)} is not RAM`);
  }
  if (memoryMap.length > E820_MAX_ENTRIES_ZEROPAGE) {
    throw new BootImageError(
      file,
      `the memory map has ${memoryMap.length} entries; the zero page holds at most ${E820_MAX_ENTRIES_ZEROPAGE}`,
    );
  }

  const kernel = placeKernel(h, file, memoryMap);
  if (!memory.contains(kernel.load, kernel.end - kernel.load)) {
    throw new BootImageError(
      file,
      `the kernel at ${hex(kernel.load)}-${hex(kernel.end)} is not inside guest RAM (the VM has ${mib(memory.size)} MiB)`,
    );
  }
  let initrd: { start: number; end: number } | undefined;
  const module = request.modules[0];
  if (module) {
    if (module.data.length > 0xffffffff) throw new BootImageError(file, `initrd ${module.name} is larger than 4 GiB`);
    const at = placeInitrd(h, file, module.name, module.data.length, kernel.end, memoryMap);
    if (!memory.contains(at, module.data.length))
      throw new BootImageError(file, `initrd at ${hex(at)} (+${module.data.length}) is not inside guest RAM`);
    initrd = { start: at, end: at + module.data.length };
  }

  // Validation done: from here on, write.
  memory.write(kernel.load, h.kernel);
  if (initrd && module) memory.write(initrd.start, module.data);
  memory.write(BOOT_CMDLINE_ADDRESS, cmdline);
  memory.writeU8(BOOT_CMDLINE_ADDRESS + cmdline.length, 0);

  const zp = new Uint8Array(ZERO_PAGE_SIZE);
  const headerEnd = Math.min(h.headerEnd, HDR_LIMIT);
  zp.set(image.subarray(BP.hdr, headerEnd), BP.hdr);
  const z = new DataView(zp.buffer);
  z.setUint16(BP.vidMode, 0xffff, true); // "normal"
  zp[BP.typeOfLoader] = 0xff; // undefined loader
  zp[BP.loadflags] = (zp[BP.loadflags] | CAN_USE_HEAP) & 0xff;
  z.setUint16(BP.heapEndPtr, HEAP_END_PTR, true);
  z.setUint32(BP.code32Start, kernel.load, true);
  z.setUint32(BP.cmdLinePtr, BOOT_CMDLINE_ADDRESS, true);
  z.setUint32(BP.extCmdLinePtr, 0, true);
  if (initrd) {
    const size = initrd.end - initrd.start;
    z.setUint32(BP.ramdiskImage, initrd.start, true);
    z.setUint32(BP.ramdiskSize, size, true);
    z.setUint32(BP.extRamdiskImage, Math.floor(initrd.start / FOUR_GIB), true);
    z.setUint32(BP.extRamdiskSize, Math.floor(size / FOUR_GIB), true);
  } else {
    z.setUint32(BP.ramdiskImage, 0, true);
    z.setUint32(BP.ramdiskSize, 0, true);
  }
  if (h.headerEnd >= BP.setupData + 8) z.setBigUint64(BP.setupData, 0n, true); // no setup_data chain
  if (request.rsdpAddress !== undefined && h.version >= 0x020e)
    z.setBigUint64(BP.acpiRsdpAddr, BigInt(request.rsdpAddress), true);
  zp[BP.e820Entries] = memoryMap.length;
  memoryMap.forEach((e, i) => {
    const at = BP.e820Table + i * E820_ENTRY_SIZE;
    z.setBigUint64(at, BigInt(e.base), true);
    z.setBigUint64(at + 8, BigInt(e.size), true);
    z.setUint32(at + 16, e.type, true);
  });
  memory.write(LINUX_ZERO_PAGE_ADDRESS, zp);
  memory.write(LINUX_PML4_ADDRESS, identityPageTables());
  memory.write(LINUX_GDT_ADDRESS, new Uint8Array(linuxBootGdt().buffer));

  return {
    protocol: 'linux',
    entryPoint: kernel.load + 0x200,
    rsi: LINUX_ZERO_PAGE_ADDRESS,
    cr3: LINUX_PML4_ADDRESS,
    gdtAddress: LINUX_GDT_ADDRESS,
    gdtLimit: LINUX_GDT_LIMIT,
    kernelRange: { start: kernel.load, end: kernel.end },
    ...(initrd ? { initrdRange: initrd } : {}),
    protocolVersion: h.version,
  };
}
