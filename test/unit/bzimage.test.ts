// Linux boot protocol (bzImage, 64-bit entry): synthetic images for parsing, zero page, e820, initrd placement,
// page tables, GDT and every error (each a BootImageError naming the file, with guest memory untouched); then the
// real Debian cloud kernel fetched by buildDemoImage (skipped, loudly, when the Debian archive is unreachable).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { gunzipSync } from 'node:zlib';
import {
  ramRanges,
  guestMemoryMap,
  E820_RAM,
  FOUR_GIB,
  MMIO_HOLE_START,
  type MemoryMapEntry,
} from '../../src/arch/x86_64/layout.js';
import { GuestMemory } from '../../src/base/guest-memory.js';
import { BootImageError } from '../../src/boot/errors.js';
import type { BootModule } from '../../src/boot/index.js';
import {
  BP,
  isBzImage,
  loadBzImage,
  parseBzImage,
  LINUX_GDT_ADDRESS,
  LINUX_PML4_ADDRESS,
  LINUX_ZERO_PAGE_ADDRESS,
  type LinuxBootEntry,
} from '../../src/boot/linux.js';
import { buildDemoImage, DemoImageError } from '../../src/demo-guest/demo.js';
import { readCpio } from '../../src/demo-guest/cpio.js';
import { GIB, MIB } from '../../src/base/units.js';

const SIZE = 64 * MIB;
const memory = GuestMemory.allocateRanges(ramRanges(SIZE));
after(() => memory.release());
const map = guestMemoryMap(SIZE);

interface FakeOptions {
  version?: number;
  setupSects?: number;
  loadflags?: number;
  xloadflags?: number;
  prefAddress?: number;
  initSize?: number;
  kernelAlignment?: number;
  relocatable?: boolean;
  cmdlineSize?: number;
  initrdAddrMax?: number;
  payloadSize?: number;
  syssize?: number;
  truncateTo?: number;
  bootFlag?: number;
}

const HEADER_END_215 = 0x26c; // struct setup_header of protocol 2.15 ends at 0x26c

/** A bzImage with a plausible setup header and a patterned protected-mode kernel. */
function fakeBzImage(o: FakeOptions = {}): Uint8Array {
  const setupSects = o.setupSects ?? 4;
  const setupSize = ((setupSects || 4) + 1) * 512;
  const payloadSize = o.payloadSize ?? 0x10000;
  const image = new Uint8Array(setupSize + payloadSize);
  for (let i = 0; i < payloadSize; i++) image[setupSize + i] = (i * 13 + 7) & 0xff;
  const dv = new DataView(image.buffer);
  const version = o.version ?? 0x020f;
  image[BP.setupSects] = setupSects;
  dv.setUint32(BP.syssize, o.syssize ?? Math.ceil(payloadSize / 16), true);
  dv.setUint16(BP.vidMode, 0xfffd, true); // "ask": the loader must replace it
  dv.setUint16(BP.bootFlag, o.bootFlag ?? 0xaa55, true);
  image[0x200] = 0xeb; // jmp short …
  const headerEnd = version >= 0x020c ? HEADER_END_215 : 0x236; // a 2.10/2.11 header ends after min_alignment
  image[0x201] = headerEnd - 0x202;
  image.set([0x48, 0x64, 0x72, 0x53], BP.header); // "HdrS"
  dv.setUint16(BP.version, version, true);
  image[BP.loadflags] = o.loadflags ?? 0x01;
  dv.setUint32(BP.code32Start, 0x100000, true);
  dv.setUint32(BP.initrdAddrMax, o.initrdAddrMax ?? 0x7fffffff, true);
  dv.setUint32(BP.kernelAlignment, o.kernelAlignment ?? 0x200000, true);
  image[BP.relocatableKernel] = (o.relocatable ?? true) ? 1 : 0;
  image[BP.minAlignment] = 21;
  if (headerEnd >= 0x238) dv.setUint16(BP.xloadflags, o.xloadflags ?? 0x03, true);
  if (headerEnd >= 0x23c) dv.setUint32(BP.cmdlineSize, o.cmdlineSize ?? 2047, true);
  if (headerEnd >= 0x260) dv.setBigUint64(BP.prefAddress, BigInt(o.prefAddress ?? 0x1000000), true);
  if (headerEnd >= 0x264) dv.setUint32(BP.initSize, o.initSize ?? 8 * MIB, true);
  dv.setUint32(BP.payloadOffset, 0x100, true);
  dv.setUint32(BP.payloadLength, 0x800, true);
  return o.truncateTo !== undefined ? image.subarray(0, o.truncateTo) : image;
}

function load(
  image: Uint8Array,
  opts: {
    cmdline?: string;
    modules?: BootModule[];
    mem?: GuestMemory;
    memoryMap?: readonly MemoryMapEntry[];
    rsdp?: number;
  } = {},
): LinuxBootEntry {
  return loadBzImage({
    imageName: 'vmlinuz',
    image,
    cmdline: opts.cmdline ?? 'console=ttyS0',
    modules: opts.modules ?? [],
    memory: opts.mem ?? memory,
    memoryMap: opts.memoryMap ?? map,
    ...(opts.rsdp === undefined ? {} : { rsdpAddress: opts.rsdp }),
  });
}

const ZEROS = Buffer.alloc(SIZE);
function memoryIsZero(): boolean {
  return Buffer.from(memory.slice(0, SIZE)).equals(ZEROS);
}

function rejects(image: Uint8Array, message: RegExp, opts: Parameters<typeof load>[1] = {}): void {
  memory.fill(0, SIZE, 0);
  assert.throws(
    () => load(image, opts),
    (e: unknown) => {
      assert.ok(e instanceof BootImageError, `expected BootImageError, got ${String(e)}`);
      assert.match((e as Error).message, message);
      assert.match((e as Error).message, /^vmlinuz: /, 'names the file');
      return true;
    },
  );
  assert.ok(memoryIsZero(), `guest memory untouched after: ${message}`);
}

const initrd = (size: number, name = 'initrd.img'): BootModule => ({
  name,
  data: new Uint8Array(size).fill(0x5a),
  cmdline: '',
});

test('isBzImage: "HdrS" at 0x202', () => {
  assert.equal(isBzImage(fakeBzImage()), true);
  assert.equal(isBzImage(new Uint8Array(4096)), false);
  assert.equal(isBzImage(new Uint8Array([0x7f, 0x45, 0x4c, 0x46])), false);
});

test('parse: header fields, setup_sects 0 means 4', () => {
  const h = parseBzImage(fakeBzImage({ setupSects: 0 }), 'vmlinuz');
  assert.equal(h.setupSects, 4);
  assert.equal(h.setupSize, 2560);
  assert.equal(h.version, 0x020f);
  assert.equal(h.headerEnd, HEADER_END_215);
  assert.equal(h.prefAddress, 0x1000000);
  assert.equal(h.initSize, 8 * MIB);
  assert.equal(h.kernelAlignment, 0x200000);
  assert.equal(h.relocatable, true);
  assert.equal(h.xloadflags, 3);
  assert.equal(h.cmdlineSize, 2047);
  assert.equal(h.kernel.length, 0x10000);
});

test('load: kernel at pref_address, entry startup_64 = load + 0x200, registers for the 64-bit entry', () => {
  memory.fill(0, SIZE, 0);
  const image = fakeBzImage();
  const e = load(image);
  assert.equal(e.protocol, 'linux');
  assert.equal(e.entryPoint, 0x1000200);
  assert.equal(e.rsi, LINUX_ZERO_PAGE_ADDRESS);
  assert.equal(e.cr3, LINUX_PML4_ADDRESS);
  assert.equal(e.gdtAddress, LINUX_GDT_ADDRESS);
  assert.deepEqual(e.kernelRange, { start: 0x1000000, end: 0x1000000 + 8 * MIB });
  assert.equal(e.initrdRange, undefined);
  assert.deepEqual(memory.read(0x1000000, 0x10000), image.subarray(2560));
  assert.equal(memory.readU32(0x1000000 + 0x10000), 0, 'nothing past the protected-mode kernel');
});

test('load: falls back to 1 MiB when pref_address is not aligned to kernel_alignment; non-relocatable keeps pref_address', () => {
  memory.fill(0, SIZE, 0);
  const e = load(fakeBzImage({ prefAddress: 0x1080000 }));
  assert.equal(e.entryPoint, 0x100200);
  // runs at max(alignUp(1 MiB, 2 MiB), pref_address): init_size counts from pref_address
  assert.deepEqual(e.kernelRange, { start: 0x100000, end: 0x1080000 + 8 * MIB });
  memory.fill(0, SIZE, 0);
  const f = load(fakeBzImage({ relocatable: false, prefAddress: 0x1000000 }));
  assert.equal(f.entryPoint, 0x1000200);
});

test('zero page: setup header copied, loader fields set, command line, e820 table, RSDP', () => {
  memory.fill(0, SIZE, 0);
  const image = fakeBzImage();
  const cmdline = 'console=ttyS0 root=/dev/vda rw quiet';
  load(image, { cmdline, rsdp: 0xe0000, modules: [initrd(5000)] });
  const zp = memory.read(LINUX_ZERO_PAGE_ADDRESS, 4096);
  const z = new DataView(zp.buffer);
  const changed = new Set<number>();
  const mark = (o: number, n: number): void => {
    for (let i = 0; i < n; i++) changed.add(o + i);
  };
  mark(BP.vidMode, 2);
  mark(BP.typeOfLoader, 1);
  mark(BP.loadflags, 1);
  mark(BP.code32Start, 4);
  mark(BP.ramdiskImage, 8);
  mark(BP.heapEndPtr, 2);
  mark(BP.cmdLinePtr, 4);
  mark(BP.setupData, 8);
  for (let o = BP.hdr; o < HEADER_END_215; o++)
    if (!changed.has(o)) assert.equal(zp[o], image[o], `setup header byte ${o.toString(16)} copied`);
  assert.ok(
    zp.subarray(HEADER_END_215, 0x290).every((b) => b === 0),
    'nothing past the header',
  );
  assert.equal(z.getUint32(BP.header, true), 0x53726448);
  assert.equal(z.getUint16(BP.vidMode, true), 0xffff);
  assert.equal(zp[BP.typeOfLoader], 0xff);
  assert.equal(zp[BP.loadflags], 0x81, 'LOADED_HIGH | CAN_USE_HEAP');
  assert.ok(z.getUint16(BP.heapEndPtr, true) > 0);
  assert.equal(z.getUint32(BP.code32Start, true), 0x1000000);
  assert.equal(zp[BP.sentinel], 0);
  const cmdPtr = z.getUint32(BP.cmdLinePtr, true) + z.getUint32(BP.extCmdLinePtr, true) * FOUR_GIB;
  assert.equal(memory.readCString(cmdPtr), cmdline);
  assert.equal(z.getBigUint64(BP.acpiRsdpAddr, true), 0xe0000n);
  assert.equal(zp[BP.e820Entries], map.length);
  map.forEach((e, i) => {
    const at = BP.e820Table + 20 * i;
    assert.equal(Number(z.getBigUint64(at, true)), e.base, `e820[${i}].addr`);
    assert.equal(Number(z.getBigUint64(at + 8, true)), e.size, `e820[${i}].size`);
    assert.equal(z.getUint32(at + 16, true), e.type, `e820[${i}].type`);
  });
  assert.ok(zp.subarray(BP.e820Table + 20 * map.length, 0xcd0).every((b) => b === 0));
});

test('zero page: no acpi_rsdp_addr before protocol 2.14', () => {
  memory.fill(0, SIZE, 0);
  load(fakeBzImage({ version: 0x020d }), { rsdp: 0xe0000 });
  assert.equal(memory.readU64(LINUX_ZERO_PAGE_ADDRESS + BP.acpiRsdpAddr), 0n);
});

test('initrd: page-aligned, as high as possible below the end of RAM, after the kernel', () => {
  memory.fill(0, SIZE, 0);
  const size = 3 * MIB + 123;
  const e = load(fakeBzImage(), { modules: [initrd(size)] });
  const start = Math.floor((SIZE - size) / 4096) * 4096;
  assert.deepEqual(e.initrdRange, { start, end: start + size });
  assert.equal(memory.readU32(LINUX_ZERO_PAGE_ADDRESS + BP.ramdiskImage), start);
  assert.equal(memory.readU32(LINUX_ZERO_PAGE_ADDRESS + BP.ramdiskSize), size);
  assert.equal(memory.readU32(LINUX_ZERO_PAGE_ADDRESS + BP.extRamdiskImage), 0);
  assert.equal(memory.readU32(LINUX_ZERO_PAGE_ADDRESS + BP.extRamdiskSize), 0);
  assert.ok(memory.read(start, size).every((b) => b === 0x5a));
  assert.ok(start >= e.kernelRange.end);
});

test('initrd: below initrd_addr_max (inclusive) and below the 32-bit hole in a 4.5 GiB VM', () => {
  const big = GuestMemory.allocateRanges(ramRanges(4.5 * GIB));
  try {
    const bigMap = guestMemoryMap(4.5 * GIB);
    const size = 10 * MIB + 1;
    const a = load(fakeBzImage({ initrdAddrMax: 0x7fffffff }), {
      mem: big,
      memoryMap: bigMap,
      modules: [initrd(size)],
    });
    assert.equal(a.initrdRange!.start, Math.floor((0x80000000 - size) / 4096) * 4096);
    assert.ok(a.initrdRange!.end <= 0x80000000);
    const b = load(fakeBzImage({ initrdAddrMax: 0xffffffff }), {
      mem: big,
      memoryMap: bigMap,
      modules: [initrd(size)],
    });
    assert.equal(
      b.initrdRange!.start,
      Math.floor((MMIO_HOLE_START - size) / 4096) * 4096,
      'not in the MMIO hole, not above 4 GiB',
    );
    assert.equal(big.readU32(LINUX_ZERO_PAGE_ADDRESS + BP.ramdiskImage), b.initrdRange!.start);
    // e820 of a VM with RAM above 4 GiB
    const zp = LINUX_ZERO_PAGE_ADDRESS;
    assert.equal(big.readU8(zp + BP.e820Entries), bigMap.length);
    const last = bigMap.length - 1;
    assert.equal(Number(big.readU64(zp + BP.e820Table + 20 * last)), FOUR_GIB);
    assert.equal(Number(big.readU64(zp + BP.e820Table + 20 * last + 8)), 4.5 * GIB - MMIO_HOLE_START);
    assert.equal(big.readU32(zp + BP.e820Table + 20 * last + 16), E820_RAM);
  } finally {
    big.release();
  }
});

test('page tables: 0-4 GiB identity-mapped with 2 MiB pages from cr3', () => {
  memory.fill(0, SIZE, 0);
  const { cr3 } = load(fakeBzImage());
  const P = 1n;
  const RW = 2n;
  const PS = 0x80n;
  const ADDR = 0x000ffffffffff000n;
  const walk = (va: number): number => {
    const v = BigInt(va);
    const pml4e = memory.readU64(cr3 + Number((v >> 39n) & 511n) * 8);
    assert.equal(pml4e & (P | RW), P | RW, `PML4E for ${va.toString(16)}`);
    const pdpte = memory.readU64(Number(pml4e & ADDR) + Number((v >> 30n) & 511n) * 8);
    assert.equal(pdpte & (P | RW | PS), P | RW, `PDPTE for ${va.toString(16)}`);
    const pde = memory.readU64(Number(pdpte & ADDR) + Number((v >> 21n) & 511n) * 8);
    assert.equal(pde & (P | RW | PS), P | RW | PS, `PDE for ${va.toString(16)}`);
    return Number((pde & 0x000fffffffe00000n) | (v & 0x1fffffn));
  };
  for (let va = 0; va < FOUR_GIB; va += 2 * MIB) assert.equal(walk(va + 0x1234), va + 0x1234);
  assert.equal(walk(FOUR_GIB - 1), FOUR_GIB - 1);
  // nothing else mapped: PML4[1..511] and PDPT[4..511] are empty
  for (let i = 1; i < 512; i++) assert.equal(memory.readU64(cr3 + i * 8), 0n);
  const pdpt = Number(memory.readU64(cr3) & ADDR);
  for (let i = 4; i < 512; i++) assert.equal(memory.readU64(pdpt + i * 8), 0n);
  // the tables lie in low RAM clear of Partita's other boot structures and of the zero page
  assert.ok(cr3 >= 0x9000 && pdpt >= 0x9000 && cr3 < LINUX_ZERO_PAGE_ADDRESS && pdpt < LINUX_ZERO_PAGE_ADDRESS);
});

test('GDT: 0x10 flat 64-bit code, 0x18 flat data', () => {
  memory.fill(0, SIZE, 0);
  const e = load(fakeBzImage());
  const desc = (
    sel: number,
  ): {
    base: number;
    limit: number;
    type: number;
    s: number;
    p: number;
    l: number;
    db: number;
    g: number;
    dpl: number;
  } => {
    const d = memory.readU64(e.gdtAddress + sel);
    const bits = (lo: number, n: number): number => Number((d >> BigInt(lo)) & ((1n << BigInt(n)) - 1n));
    return {
      limit: bits(0, 16) | (bits(48, 4) << 16),
      base: bits(16, 24) | (bits(56, 8) << 24),
      type: bits(40, 4),
      s: bits(44, 1),
      dpl: bits(45, 2),
      p: bits(47, 1),
      l: bits(53, 1),
      db: bits(54, 1),
      g: bits(55, 1),
    };
  };
  assert.ok(e.gdtLimit >= 0x1f);
  assert.equal(memory.readU64(e.gdtAddress), 0n, 'null descriptor');
  const cs = desc(0x10);
  assert.deepEqual(
    { ...cs, type: cs.type & 0xa },
    { base: 0, limit: 0xfffff, type: 0xa, s: 1, dpl: 0, p: 1, l: 1, db: 0, g: 1 },
  );
  const ds = desc(0x18);
  assert.equal(ds.type & 0xa, 0x2, 'data, writable');
  assert.deepEqual(
    { base: ds.base, limit: ds.limit, s: ds.s, p: ds.p, g: ds.g, dpl: ds.dpl },
    { base: 0, limit: 0xfffff, s: 1, p: 1, g: 1, dpl: 0 },
  );
});

test('errors: every bad image or request is refused before anything is written', () => {
  rejects(new Uint8Array(8192).fill(0x90), /not a Linux bzImage/);
  rejects(fakeBzImage({ version: 0x0208 }), /protocol 2\.08 too old/);
  rejects(fakeBzImage({ version: 0x020b }), /2\.11 has no xloadflags/);
  rejects(fakeBzImage({ xloadflags: 0x02 }), /lacks XLF_KERNEL_64/);
  rejects(fakeBzImage({ loadflags: 0 }), /zImage/);
  rejects(fakeBzImage({ bootFlag: 0x1234 }), /boot_flag/);
  rejects(fakeBzImage({ truncateTo: 0x230 }), /truncated bzImage.*setup header/);
  rejects(
    fakeBzImage({ truncateTo: 2000 }),
    /truncated bzImage: the 4 setup sectors end at 2560 bytes but the file has only 2000/,
  );
  const manySects = fakeBzImage();
  manySects[BP.setupSects] = 200;
  rejects(manySects, /truncated bzImage: the 200 setup sectors end at 102912 bytes/);
  rejects(
    fakeBzImage({ truncateTo: 2560 + 0x8000 }),
    /truncated bzImage: the protected-mode kernel has 32768 bytes, the header says 65536/,
  );
  rejects(fakeBzImage({ syssize: 0x1001 }), /truncated bzImage.*syssize 4097/);
  rejects(fakeBzImage({ payloadSize: 0x400 }), /compressed payload/);
  rejects(fakeBzImage({ cmdlineSize: 16 }), /command line is 36 bytes; this kernel takes at most 16 \(cmdline_size\)/, {
    cmdline: 'console=ttyS0 root=/dev/vda rw quiet',
  });
  rejects(fakeBzImage(), /initrd of 60 MiB \(big\.img\) does not fit below 0x4000000/, {
    modules: [initrd(60 * MIB, 'big.img')],
  });
  rejects(fakeBzImage({ initrdAddrMax: 0x17fffff }), /initrd of 1 MiB .* does not fit below 0x1800000/, {
    modules: [initrd(MIB)],
  });
  rejects(fakeBzImage(), /takes one initrd; 2 were given \(a, b\)/, { modules: [initrd(10, 'a'), initrd(10, 'b')] });
  rejects(fakeBzImage({ initSize: 60 * MIB }), /needs RAM up to 0x4c00000 .*give the VM more memory/);
});

test('real Debian cloud kernel (downloaded once by buildDemoImage and cached)', async (t) => {
  let demo;
  try {
    demo = await buildDemoImage();
  } catch (e) {
    if (e instanceof DemoImageError && e.reason !== 'failed') {
      const why = `SKIPPED: cannot fetch the Debian cloud kernel: ${e.message}`;
      console.warn(`\n*** ${why}\n`);
      t.skip(why);
      return;
    }
    throw e;
  }
  const image = new Uint8Array(await readFile(demo.kernel));
  const initramfs = new Uint8Array(await readFile(demo.initramfs));
  const h = parseBzImage(image, demo.kernel);
  const ver = `${h.version >> 8}.${(h.version & 0xff).toString().padStart(2, '0')}`;
  t.diagnostic(
    `${demo.kernelPackage} (${demo.kernelVersion}${demo.fromCache ? ', cached' : ''}): ${image.length} bytes, boot protocol ${ver}, setup_sects ${h.setupSects}, pref_address 0x${h.prefAddress.toString(16)}, init_size 0x${h.initSize.toString(16)}, kernel_alignment 0x${h.kernelAlignment.toString(16)}, relocatable ${h.relocatable}, xloadflags 0x${h.xloadflags.toString(16)}, cmdline_size ${h.cmdlineSize}, initrd_addr_max 0x${h.initrdAddrMax.toString(16)}`,
  );
  t.diagnostic(
    `initramfs ${initramfs.length} bytes, modules ${demo.modules.join(' ') || '(none)'}; built in: ${demo.builtin.join(' ') || '(none)'}`,
  );
  assert.ok(h.version >= 0x020c);
  assert.ok(h.xloadflags & 1, 'XLF_KERNEL_64');

  const mem = GuestMemory.allocateRanges(ramRanges(256 * MIB));
  try {
    const m = guestMemoryMap(256 * MIB);
    const cmdline = `${demo.cmdline} rdinit=/init`;
    const e = loadBzImage({
      imageName: demo.kernel,
      image,
      cmdline,
      modules: [{ name: 'initramfs', data: initramfs, cmdline: '' }],
      memory: mem,
      memoryMap: m,
      rsdpAddress: 0xe0000,
    });
    assert.equal(e.entryPoint, h.prefAddress + 0x200);
    assert.deepEqual(mem.read(h.prefAddress, 4096), h.kernel.subarray(0, 4096));
    assert.deepEqual(mem.read(h.prefAddress + h.kernel.length - 4096, 4096), h.kernel.subarray(h.kernel.length - 4096));
    const zp = e.rsi;
    assert.equal(mem.readU32(zp + BP.header), 0x53726448);
    assert.equal(mem.readU16(zp + BP.version), h.version);
    assert.equal(mem.readU8(zp + BP.typeOfLoader), 0xff);
    assert.equal(mem.readU16(zp + BP.vidMode), 0xffff);
    assert.equal(mem.readCString(mem.readU32(zp + BP.cmdLinePtr)), cmdline);
    const rd = mem.readU32(zp + BP.ramdiskImage);
    assert.equal(mem.readU32(zp + BP.ramdiskSize), initramfs.length);
    assert.equal(rd % 4096, 0);
    assert.ok(rd + initramfs.length <= 256 * MIB && rd >= e.kernelRange.end);
    assert.deepEqual(mem.read(rd, initramfs.length), initramfs);
    assert.equal(mem.readU8(zp + BP.e820Entries), m.length);
    assert.equal(mem.readU64(zp + BP.acpiRsdpAddr), h.version >= 0x020e ? 0xe0000n : 0n);
    assert.ok(e.kernelRange.end >= h.prefAddress + h.initSize);
  } finally {
    mem.release();
  }

  // the initramfs: /init with the banner, busybox, the modules it loads
  const members = new Map(readCpio(gunzipSync(initramfs)).map((x) => [x.name, x]));
  const init = Buffer.from(members.get('init')!.data).toString();
  assert.match(init, /Partita demo guest: Linux \$\(uname -r\), \$\(nproc\) CPUs/);
  assert.ok(members.get('bin/busybox')!.data.length > 100_000);
  assert.equal(Buffer.from(members.get('bin/sh')?.data ?? []).toString(), '/bin/busybox');
  for (const mod of demo.modules)
    assert.ok(
      [...members.keys()].some((n) => n.replace(/-/g, '_').endsWith(`/${mod}.ko`)),
      `module ${mod} shipped`,
    );
});
