/* pci-hostile test guest: a hostile driver against PCI configuration space (PCI Local Bus 3.0 §6: header, BARs
 * §6.2.5, capabilities §6.7, MSI-X §6.8.2; PCIe ECAM; virtio 1.2 §4.1.4.9 VIRTIO_PCI_CAP_PCI_CFG). Needs a
 * virtio-blk disk with two queues and a virtio-rng device on PCI bus 0.
 *
 * One scenario per run, named by case=NAME on the command line:
 *   b1  BAR collisions: rng's BAR 4 on blk's, blk's on rng's, the two MSI-X BARs on each other, then apart
 *   b2  64-bit BARs at 2^64 - 16 KiB (both devices, on top of each other)
 *   b3  a BAR over guest RAM
 *   b4  a BAR over ECAM, the IOAPIC, the LAPIC, above 4 GiB, and at the last place inside the window
 *   c1  reads of every config offset: 0xCF8/0xCFC in 1, 2, 4 bytes, ECAM up to 4 KiB, odd sizes and alignments,
 *       absent functions and buses, the capability lists
 *   m1  MSI-X: control register writes, table entries with reserved bits and odd vector controls, the PBA, 8-byte
 *       and byte accesses, the area past the table; the recovery then runs on a vector with odd address bits
 *   p1  VIRTIO_PCI_CAP_PCI_CFG: proper use, then offset and length out of range, unaligned, lengths 0/3/8, other
 *       BARs, the notify area
 *   w1  writes of all ones to the read-only registers (header, capabilities) of the host bridge, blk and rng
 * Afterwards the BARs are back where they were; the guest resets blk, initialises it again and reads sector 0
 * ("pci-hostile: recovery: ..."), then prints "pci-hostile: ok" and exits 0. A device that stopped answering
 * prints "FAIL: ..." (exit FAIL_EXIT). Lines starting "info:" hold what may differ between VMMs (addresses, what
 * the spec leaves open); the rest is the same on any VMM that behaves the same. The host side (the VMM survives,
 * the image is unchanged) is checked by test/integration/pci-hostile.test.ts. */
#include "runtime/guest.h"
#include "lib/virtio.h"

#define LAPIC 0xfee00000ULL
#define IOAPIC 0xfec00000ULL
#define ECAM 0xe0000000ULL
#define WINDOW_END 0xe0000000ULL
#define MSIX_VECTOR 0x41

static struct virtio_dev dev;
static struct pci_fn rng;
static struct virtq vq;
static struct blk_req hdr;
static volatile u8 st;
static u8 data[512] __attribute__((aligned(512)));
/* 16 KiB-aligned guest RAM for a BAR to land on. */
static u8 ram_under_bar[0x4000] __attribute__((aligned(0x4000)));
static u16 rec_vector = 0xffff; /* the queue's MSI-X vector in the recovery (m1 uses one) */

static inline u16 mmio_read16(u64 a) { return *(volatile u16 *)a; }
static inline u8 mmio_read8(u64 a) { return *(volatile u8 *)a; }
static inline void mmio_write16(u64 a, u16 v) { *(volatile u16 *)a = v; }
static inline void mmio_write8(u64 a, u8 v) { *(volatile u8 *)a = v; }
static inline u64 mmio_read64(u64 a) { return *(volatile u64 *)a; }
static inline void mmio_write64(u64 a, u64 v) { *(volatile u64 *)a = v; }
static inline u32 inl(u16 port) { u32 v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u16 inw(u16 port) { u16 v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }

static u32 checksum(const u8 *p, u32 n) {
  u32 sum = 0;
  for (u32 i = 0; i < n; i++) sum = sum * 31 + p[i];
  return sum;
}

/* ---- BARs, programmed the hostile way: decoding stays on while they move ---------------------------------- */

static u64 bar_raw(const struct pci_fn *f, int bar, int is64) {
  u64 v = pci_read(f, 0x10 + 4 * (u32)bar, 4);
  if (is64) v |= (u64)pci_read(f, 0x14 + 4 * (u32)bar, 4) << 32;
  return v;
}
static void bar_move(const struct pci_fn *f, int bar, int is64, u64 at) {
  pci_write(f, 0x10 + 4 * (u32)bar, 4, (u32)at);
  if (is64) pci_write(f, 0x14 + 4 * (u32)bar, 4, (u32)(at >> 32));
}

static u64 blk_bar1, blk_bar4, rng_bar1, rng_bar4;

static void restore_bars(void) {
  bar_move(&dev.pci, 1, 0, blk_bar1);
  bar_move(&dev.pci, 4, 1, blk_bar4);
  bar_move(&rng, 1, 0, rng_bar1);
  bar_move(&rng, 4, 1, rng_bar4);
}

/* num_queues of the common configuration at BAR 4 offset 0 (virtio-pci places it there on both VMMs). */
static u16 num_queues_at(u64 bar4) { return mmio_read16(bar4 + 0x12); }

static void case_b1(void) {
  bar_move(&rng, 4, 1, blk_bar4);
  printf("pci-hostile: rng BAR 4 placed on blk BAR 4\n");
  printf("info: the shared place answers num_queues %u\n", num_queues_at(blk_bar4));
  bar_move(&rng, 4, 1, rng_bar4);
  bar_move(&dev.pci, 4, 1, rng_bar4);
  printf("pci-hostile: blk BAR 4 placed on rng BAR 4\n");
  printf("info: the shared place answers num_queues %u\n", num_queues_at(rng_bar4));
  bar_move(&dev.pci, 4, 1, blk_bar4);
  bar_move(&rng, 1, 0, blk_bar1);
  printf("pci-hostile: rng BAR 1 (MSI-X) placed on blk BAR 1\n");
  printf("info: the shared MSI-X table answers vector control 0x%x\n", mmio_read32(blk_bar1 + 12));
  bar_move(&rng, 1, 0, rng_bar1);
  printf("pci-hostile: apart again: blk num_queues %u, rng num_queues %u\n", num_queues_at(blk_bar4),
         num_queues_at(rng_bar4));
}

static void case_b2(void) {
  const u64 top = 0xffffffffffffc000ULL;
  bar_move(&dev.pci, 4, 1, top);
  bar_move(&rng, 4, 1, top);
  printf("pci-hostile: BAR 4 of blk and of rng at 2^64 - 16 KiB read back 0x%lx and 0x%lx\n", bar_raw(&dev.pci, 4, 1),
         bar_raw(&rng, 4, 1));
  bar_move(&rng, 4, 1, top - 0x4000);
  printf("pci-hostile: rng moved to 2^64 - 32 KiB: 0x%lx\n", bar_raw(&rng, 4, 1));
  restore_bars();
  printf("pci-hostile: back: blk num_queues %u, rng num_queues %u\n", num_queues_at(blk_bar4), num_queues_at(rng_bar4));
}

static void case_b3(void) {
  u64 at = (u64)ram_under_bar;
  for (u32 i = 0; i < sizeof ram_under_bar; i++) ram_under_bar[i] = (u8)(i * 7 + 3);
  bar_move(&dev.pci, 4, 1, at);
  printf("info: blk BAR 4 placed over RAM at 0x%lx\n", at);
  /* Writes at the BAR's device_status and notify offsets, a read of its common configuration: RAM answers. */
  mmio_write8(at + 0x14, 0);      /* a "reset" at device_status */
  mmio_write16(at + 0x3000, 0);   /* a "kick" at the notify offset */
  barrier();
  int ram = ram_under_bar[0x14] == 0 && ram_under_bar[0x3000] == 0 && ram_under_bar[0x3001] == 0 &&
            mmio_read8(at + 0x15) == (u8)(0x15 * 7 + 3) && mmio_read16(at + 0x12) == (u16)((0x12 * 7 + 3) | (0x13 * 7 + 3) << 8);
  printf("pci-hostile: BAR 4 over RAM: RAM reads and writes as RAM: %s\n", ram ? "yes" : "no");
  restore_bars();
  printf("pci-hostile: back: blk num_queues %u, device status %u\n", num_queues_at(blk_bar4),
         mmio_read8(blk_bar4 + 0x14));
}

static u32 ioapic_version(void) {
  mmio_write32(IOAPIC, 1);
  return mmio_read32(IOAPIC + 0x10);
}

static void case_b4(void) {
  map_2m(IOAPIC);
  map_2m(LAPIC);
  map_2m(WINDOW_END - 0x4000);
  u32 lapic_ver = mmio_read32(LAPIC + 0x30), ioapic_ver = ioapic_version();
  u32 host_id = pci_read(&(struct pci_fn){ 0 }, 0, 4), blk_id = pci_read(&dev.pci, 0, 4);
  bar_move(&dev.pci, 4, 1, ECAM);
  printf("pci-hostile: BAR 4 over ECAM: host bridge %s, blk %s through ECAM\n",
         pci_read(&(struct pci_fn){ 0 }, 0, 4) == host_id ? "unchanged" : "CHANGED",
         pci_read(&dev.pci, 0, 4) == blk_id ? "unchanged" : "CHANGED");
  bar_move(&dev.pci, 4, 1, IOAPIC);
  printf("pci-hostile: BAR 4 over the IOAPIC: version %s\n", ioapic_version() == ioapic_ver ? "unchanged" : "CHANGED");
  bar_move(&dev.pci, 4, 1, LAPIC);
  printf("pci-hostile: BAR 4 over the LAPIC: version %s\n", mmio_read32(LAPIC + 0x30) == lapic_ver ? "unchanged" : "CHANGED");
  bar_move(&dev.pci, 4, 1, 0x100000000ULL);
  printf("pci-hostile: BAR 4 above 4 GiB: reads back 0x%lx\n", bar_raw(&dev.pci, 4, 1));
  bar_move(&dev.pci, 4, 1, WINDOW_END - 0x4000);
  printf("pci-hostile: BAR 4 at the last place in the window: num_queues %u\n", num_queues_at(WINDOW_END - 0x4000));
  restore_bars();
  printf("pci-hostile: back: blk num_queues %u\n", num_queues_at(blk_bar4));
}

/* ---- config reads -------------------------------------------------------------------------------------------- */

static u32 cf8_read(const struct pci_fn *f, u32 bus, u32 off, int size, u32 extra) {
  outl(0xcf8, 0x80000000u | extra | (bus << 16) | ((u32)f->slot << 11) | ((u32)f->fn << 8) | (off & 0xfc));
  u16 port = (u16)(0xcfc + (off & 3));
  return size == 1 ? inb(port) : size == 2 ? inw(port) : inl(port);
}

static void read_everything(const struct pci_fn *f) {
  u32 mismatches = 0, ext_nonzero = 0, sum = 0;
  for (u32 off = 0; off < 256; off += 4) {
    u32 d = pci_read(f, off, 4); /* ECAM */
    if (cf8_read(f, 0, off, 4, 0) != d) mismatches++;
    for (u32 i = 0; i < 4; i++) {
      if (cf8_read(f, 0, off + i, 1, 0) != ((d >> (8 * i)) & 0xff)) mismatches++;
      if (i < 3 && (off + i) % 2 == 0 && cf8_read(f, 0, off + i, 2, 0) != ((d >> (8 * i)) & 0xffff)) mismatches++;
    }
  }
  for (u32 off = 0; off < 4096; off += 4) {
    u32 d = pci_read(f, off, 4);
    sum = sum * 31 + d;
    if (off >= 256 && d) ext_nonzero++;
  }
  printf("pci-hostile: 00:%02x.%x: 0xCF8 and ECAM agree on 256 bytes in 1, 2, 4-byte reads: %s\n", f->slot, f->fn,
         mismatches ? "no" : "yes");
  printf("info: 00:%02x.%x: extended space has %u nonzero dwords, config checksum %08x\n", f->slot, f->fn, ext_nonzero,
         sum);
  /* Capability list: pointers dword-aligned in the device-specific area, no loop. */
  u32 caps = 0, sane = 1;
  if (pci_read(f, 6, 2) & 0x10) {
    u8 p = (u8)pci_read(f, 0x34, 1);
    for (; p && caps < 48; caps++) {
      if (p < 0x40 || (p & 3)) sane = 0;
      p = (u8)pci_read(f, (u32)(p & 0xfc) + 1, 1);
    }
    if (p) sane = 0;
  }
  printf("pci-hostile: 00:%02x.%x: %u capabilities, list %s\n", f->slot, f->fn, caps, sane ? "sane" : "BROKEN");
  /* Odd accesses: a dword at 0xCFD, AMD's extended-register bits in CONFIG_ADDRESS, ECAM 8-byte and unaligned. */
  u64 e = ECAM + ((u64)f->slot << 15) + ((u64)f->fn << 12);
  outl(0xcf8, 0x80000000u | ((u32)f->slot << 11) | ((u32)f->fn << 8));
  u32 odd = inl(0xcfd);
  printf("info: 00:%02x.%x: dword at 0xCFD 0x%x, register 0x100 via 0xCF8 bits 27:24 0x%x, ECAM qword 0x%lx, "
         "ECAM dword at +1 0x%x, ECAM dword at 0xffc 0x%x\n",
         f->slot, f->fn, odd, cf8_read(f, 0, 0, 4, 1u << 24), mmio_read64(e), mmio_read32(e + 1), mmio_read32(e + 0xffc));
}

static void case_c1(void) {
  struct pci_fn host = { 0 };
  read_everything(&host);
  read_everything(&dev.pci);
  read_everything(&rng);
  struct pci_fn absent = { 0 };
  absent.slot = 31;
  absent.fn = 7;
  struct pci_fn on_bus1 = { 0 };
  printf("pci-hostile: absent 00:1f.7 reads 0x%x (ECAM) 0x%x (0xCF8), bus 1 reads 0x%x (ECAM) 0x%x (0xCF8)\n",
         pci_read(&absent, 0, 4), cf8_read(&absent, 0, 0, 4, 0), mmio_read32(ECAM + (1ULL << 20)),
         cf8_read(&on_bus1, 1, 0, 4, 0));
  outl(0xcf8, 0); /* enable bit clear */
  printf("pci-hostile: 0xCFC with CONFIG_ADDRESS disabled reads 0x%x\n", inl(0xcfc));
}

/* ---- MSI-X ----------------------------------------------------------------------------------------------------- */

static void case_m1(void) {
  struct pci_fn *f = &dev.pci;
  u8 cap = dev.msix_cap;
  if (!cap) fail("no MSI-X capability");
  u16 ctrl = (u16)pci_read(f, cap + 2, 2);
  u32 t = pci_read(f, cap + 4, 4), p = pci_read(f, cap + 8, 4);
  u64 table = pci_bar(f, (int)(t & 7)) + (t & ~7u), pba = pci_bar(f, (int)(p & 7)) + (p & ~7u);
  u32 entries = (ctrl & 0x7ff) + 1u;
  pci_write(f, cap + 2, 2, 0xffff);
  printf("pci-hostile: MSI-X control 0x%x, after writing 0xffff 0x%x\n", ctrl, pci_read(f, cap + 2, 2));
  pci_write(f, cap + 4, 4, 0xffffffff);
  pci_write(f, cap + 8, 4, 0xffffffff);
  printf("pci-hostile: MSI-X table/PBA offsets after writes of all ones: %s\n",
         pci_read(f, cap + 4, 4) == t && pci_read(f, cap + 8, 4) == p ? "unchanged" : "CHANGED");
  /* Entry 0: reserved address bits 1:0, a high address, data with reserved bits, vector control all ones. */
  mmio_write32(table + 0, 0xfee00003);
  mmio_write32(table + 4, 0xffffffff);
  mmio_write32(table + 8, 0xffff0000u | MSIX_VECTOR);
  mmio_write32(table + 12, 0xffffffff);
  printf("info: MSI-X entry 0 reads 0x%x 0x%x 0x%x 0x%x\n", mmio_read32(table), mmio_read32(table + 4),
         mmio_read32(table + 8), mmio_read32(table + 12));
  printf("pci-hostile: MSI-X entry 0 mask bit after writing all ones: %u\n", mmio_read32(table + 12) & 1);
  /* Entry 1 by 8-byte and byte accesses, vector control with reserved bits but unmasked. */
  mmio_write64(table + 16, 0x00000000fee00000ULL);
  for (int i = 0; i < 4; i++) mmio_write8(table + 24 + (u64)i, (u8)(i == 0 ? MSIX_VECTOR : 0));
  mmio_write32(table + 28, 0xfffffffe);
  printf("info: MSI-X entry 1 reads 0x%lx 0x%x 0x%x\n", mmio_read64(table + 16), mmio_read32(table + 24),
         mmio_read32(table + 28));
  /* Past the last entry (inside the BAR), and the PBA, which is read-only. */
  mmio_write32(table + 16ULL * entries, 0x12345678);
  printf("info: past the table (entry %u) reads 0x%x\n", entries, mmio_read32(table + 16ULL * entries));
  mmio_write32(pba, 0xffffffff);
  printf("pci-hostile: PBA after a write of all ones: 0x%x\n", mmio_read32(pba) & ((1u << entries) - 1));
  /* Entry 0 usable again but with odd address bits: the recovery's queue interrupts go there. */
  mmio_write32(table + 0, 0xfee0000c); /* redirection hint + logical destination mode bits */
  mmio_write32(table + 4, 0);
  mmio_write32(table + 8, MSIX_VECTOR);
  mmio_write32(table + 12, 0);
  pci_write(f, cap + 2, 2, (ctrl | 0x8000) & ~0x4000u); /* enabled, function unmasked */
  rec_vector = 0;
}

/* ---- VIRTIO_PCI_CAP_PCI_CFG -------------------------------------------------------------------------------- */

static u8 cfg_cap;
static void window(u8 bar, u32 off, u32 len) {
  pci_write(&dev.pci, cfg_cap + 4, 1, bar);
  pci_write(&dev.pci, cfg_cap + 8, 4, off);
  pci_write(&dev.pci, cfg_cap + 12, 4, len);
}
static u32 window_data(void) { return pci_read(&dev.pci, cfg_cap + 16, 4); }

static void case_p1(void) {
  for (u8 p = pci_find_cap(&dev.pci, 0x09, 0); p; p = pci_find_cap(&dev.pci, 0x09, p))
    if (pci_read(&dev.pci, p + 3, 1) == 5) cfg_cap = p;
  if (!cfg_cap) fail("no VIRTIO_PCI_CAP_PCI_CFG capability");
  window(4, 0x12, 2);
  printf("pci-hostile: pci_cfg: num_queues through the window %u\n", window_data() & 0xffff);
  window(4, 0x14, 1);
  pci_write(&dev.pci, cfg_cap + 16, 1, S_ACKNOWLEDGE);
  printf("pci-hostile: pci_cfg: device_status written through the window reads %u\n", virtio_status(&dev));
  static const struct { u8 bar; u32 off, len; const char *what; } abuse[] = {
    { 4, 0x12, 0, "length 0" },        { 4, 0x12, 3, "length 3" },           { 4, 0x10, 8, "length 8" },
    { 4, 0x13, 2, "unaligned" },       { 4, 0x4000, 4, "past the BAR" },     { 4, 0xfffffffc, 4, "offset 2^32-4" },
    { 4, 0x3000, 2, "notify area" },   { 4, 0x1000, 1, "ISR" },              { 1, 0, 4, "the MSI-X BAR" },
    { 5, 0, 4, "BAR 5" },              { 0xff, 0, 4, "BAR 255" },            { 4, 0xffffffff, 0xffffffff, "all ones" },
  };
  for (u32 i = 0; i < sizeof abuse / sizeof abuse[0]; i++) {
    window(abuse[i].bar, abuse[i].off, abuse[i].len);
    u32 r = window_data();
    pci_write(&dev.pci, cfg_cap + 16, 2, 0); /* a write through it (the notify area: a kick of queue 0) */
    pci_write(&dev.pci, cfg_cap + 16, 4, 0);
    printf("info: pci_cfg %s: reads 0x%x\n", abuse[i].what, r);
  }
  window(0, 0, 0);
  printf("pci-hostile: pci_cfg abuse survived: blk num_queues %u\n", num_queues_at(blk_bar4));
}

/* ---- read-only registers ---------------------------------------------------------------------------------- */

static void write_all_ones(const struct pci_fn *f) {
  u8 before[256];
  for (u32 off = 0; off < 256; off += 4) {
    u32 d = pci_read(f, off, 4);
    for (int i = 0; i < 4; i++) before[off + i] = (u8)(d >> (8 * i));
  }
  /* Every register a driver may not change: IDs, revision/class, header type, subsystem, capability pointer,
   * interrupt pin, status (RW1C: all ones clears nothing that is clear), and every capability byte. */
  pci_write(f, 0x00, 4, 0xffffffff);
  pci_write(f, 0x08, 4, 0xffffffff);
  pci_write(f, 0x0e, 1, 0xff);
  pci_write(f, 0x2c, 4, 0xffffffff);
  pci_write(f, 0x34, 1, 0xff);
  pci_write(f, 0x3d, 1, 0xff);
  pci_write(f, 0x06, 2, 0xffff);
  u8 writable[256] = { 0 };
  writable[0x04] = writable[0x05] = writable[0x0c] = writable[0x0d] = writable[0x3c] = 1;
  for (u32 i = 0x10; i < 0x28; i++) writable[i] = 1;
  for (u8 p = pci_find_cap(f, 0x11, 0); p; p = 0) writable[p + 3] = 1; /* MSI-X enable, function mask */
  for (u8 p = pci_find_cap(f, 0x09, 0); p; p = pci_find_cap(f, 0x09, p))
    if (pci_read(f, p + 3, 1) == 5)
      for (u32 i = 4; i < 20; i++) writable[p + i] = i == 4 || i >= 8;
  /* The capabilities' bytes (the rest of the device-specific area is the device's to define: QEMU makes it
   * writable, Partita does not). */
  u8 in_cap[256] = { 0 };
  for (u8 p = (u8)pci_read(f, 0x34, 1), n = 0; p >= 0x40 && n < 48; p = (u8)pci_read(f, p + 1, 1), n++) {
    u32 id = pci_read(f, p, 1), len = id == 0x11 ? 12 : id == 0x09 ? pci_read(f, p + 2, 1) : 2;
    for (u32 i = 0; i < len && p + i < 256; i++) in_cap[p + i] = 1;
  }
  for (u32 off = 0x40; off < 256; off++)
    if (in_cap[off] && !writable[off]) pci_write(f, off, 1, 0xff);
  /* BAR type bits: write the address back with all low bits set. */
  for (int bar = 0; bar < 6; bar++) {
    u32 v = pci_read(f, 0x10 + 4 * (u32)bar, 4);
    if (v & 1) continue;
    pci_write(f, 0x10 + 4 * (u32)bar, 4, v | 0xf);
    if (((v >> 1) & 3) == 2) bar++; /* the next dword is this 64-bit BAR's upper half: all address bits */
  }
  u32 changed = 0, first = 0;
  for (u32 off = 0; off < 256; off++) {
    u8 now = (u8)pci_read(f, off, 1);
    if ((off < 0x40 || in_cap[off]) && (!writable[off] || (off >= 0x10 && off < 0x28))) {
      if (now != before[off] && !changed++) first = off;
    }
  }
  if (changed) printf("info: 00:%02x.%x: first changed byte 0x%x: 0x%x -> 0x%x\n", f->slot, f->fn, first, before[first],
                      (u8)pci_read(f, first, 1));
  printf("pci-hostile: 00:%02x.%x: read-only registers after writes of all ones: %s\n", f->slot, f->fn,
         changed ? "CHANGED" : "unchanged");
}

static void case_w1(void) {
  struct pci_fn host = { 0 };
  write_all_ones(&host);
  write_all_ones(&dev.pci);
  write_all_ones(&rng);
  /* MSI-X got enabled and masked by the all-ones writes where it was writable: put it back as it was. */
  if (dev.msix_cap) pci_write(&dev.pci, dev.msix_cap + 2, 2, 0);
  restore_bars();
}

/* ---- recovery ------------------------------------------------------------------------------------------------ */

static void recover(void) {
  virtio_reinit(&dev, 0);
  virtq_setup(&dev, &vq, 0, 8, rec_vector);
  virtio_driver_ok(&dev);
  hdr.type = 0; /* VIRTIO_BLK_T_IN */
  hdr.reserved = 0;
  hdr.sector = 0;
  st = 0xff;
  memset(data, 0, sizeof data);
  struct vq_buf b[3] = { { &hdr, sizeof hdr, 0 }, { data, 512, 1 }, { (const void *)&st, 1, 1 } };
  vq_add(&vq, b, 3, 0);
  vq_kick(&vq);
  u32 len;
  vq_wait(&vq, &len, "recovery read of sector 0");
  char start[17];
  for (int i = 0; i < 16; i++) start[i] = (char)data[i];
  start[16] = 0;
  printf("pci-hostile: recovery: read sector 0: status %u, checksum %08x, starts '%s'\n", st, checksum(data, 512), start);
}

int main(struct boot_info *bi) {
  (void)bi;
  const char *name = cmdline_value("case");
  if (!name) fail("no case=NAME on the command line");
  virtio_open(&dev, 2, 0);
  if (pci_find(VIRTIO_VENDOR, 0x1044, &rng)) fail("no virtio-rng device on PCI bus 0");
  blk_bar1 = pci_bar(&dev.pci, 1);
  blk_bar4 = pci_bar(&dev.pci, 4);
  rng_bar1 = pci_bar(&rng, 1);
  rng_bar4 = pci_bar(&rng, 4);
  printf("info: blk at 00:%02x.%x, rng at 00:%02x.%x\n", dev.pci.slot, dev.pci.fn, rng.slot, rng.fn);
  if (num_queues_at(blk_bar4) != 2) fail("the disk needs two queues (queues=2 / num-queues=2)");
  char c[3] = { name[0], name[0] ? name[1] : 0, 0 };
  printf("pci-hostile: case %s\n", c);
  if (c[0] == 'b' && c[1] == '1') case_b1();
  else if (c[0] == 'b' && c[1] == '2') case_b2();
  else if (c[0] == 'b' && c[1] == '3') case_b3();
  else if (c[0] == 'b' && c[1] == '4') case_b4();
  else if (c[0] == 'c' && c[1] == '1') case_c1();
  else if (c[0] == 'm' && c[1] == '1') case_m1();
  else if (c[0] == 'p' && c[1] == '1') case_p1();
  else if (c[0] == 'w' && c[1] == '1') case_w1();
  else fail("unknown case");
  recover();
  printf("pci-hostile: ok\n");
  return 0;
}
