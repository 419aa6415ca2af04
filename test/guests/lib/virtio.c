/* Mini virtio-pci driver: virtio 1.2 §4.1.4 (capabilities), §4.1.5.1 (device discovery and queue setup),
 * §3.1.1 (driver initialization), §2.7 (split virtqueues), with PCI bus 0 config access and BAR assignment.
 * Written for polling: no interrupt handler is ever installed (the emulated CPU here cannot afford one per
 * request, and MSI-X is proven separately by the LAPIC IRR, see virtio-blk.c). */
#include "virtio.h"

/* GCC may turn loops into calls to these even in freestanding code. */
void *memset(void *d, int c, unsigned long n) {
  u8 *p = d;
  while (n--) *p++ = (u8)c;
  return d;
}
void *memcpy(void *d, const void *s, unsigned long n) {
  u8 *p = d;
  const u8 *q = s;
  while (n--) *p++ = *q++;
  return d;
}

static inline void outw(u16 port, u16 v) { __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port)); }
static inline u16 inw(u16 port) { u16 v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u32 inl(u16 port) { u32 v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u8 mmio_read8(u64 a) { return *(volatile u8 *)a; }
static inline u16 mmio_read16(u64 a) { return *(volatile u16 *)a; }
static inline void mmio_write8(u64 a, u8 v) { *(volatile u8 *)a = v; }
static inline void mmio_write16(u64 a, u16 v) { *(volatile u16 *)a = v; }

void fail(const char *msg) {
  printf("FAIL: %s\n", msg);
  exit(FAIL_EXIT);
}

u64 cmdline_hex(const char *key, u64 fallback) {
  const char *v = cmdline_value(key);
  if (!v) return fallback;
  if (v[0] == '0' && (v[1] == 'x' || v[1] == 'X')) v += 2;
  u64 n = 0;
  int digits = 0;
  for (;; v++, digits++) {
    char c = *v;
    int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
    if (d < 0) break;
    n = n * 16 + (u64)d;
  }
  return digits ? n : fallback;
}

/* ---- PCI configuration space ---------------------------------------------------------------------------- */

#define MMIO32_BASE 0xc0000000ULL /* the 32-bit BAR window both VMMs route to PCI: [0xC0000000, 0xE0000000) */
#define MMIO32_END 0xe0000000ULL

static u64 ecam;
static int use_io;     /* configuration mechanism #1 (0xCF8/0xCFC) instead of ECAM */
static u64 alloc_next; /* next free address for BARs the guest assigns itself */

static u64 ecam_addr(const struct pci_fn *f, u32 off) {
  return ecam + ((u64)f->slot << 15) + ((u64)f->fn << 12) + off;
}

u32 pci_read(const struct pci_fn *f, u32 off, int size) {
  if (!use_io) {
    u64 a = ecam_addr(f, off);
    return size == 1 ? mmio_read8(a) : size == 2 ? mmio_read16(a) : mmio_read32(a);
  }
  outl(0xcf8, 0x80000000u | ((u32)f->slot << 11) | ((u32)f->fn << 8) | (off & 0xfc));
  u16 port = (u16)(0xcfc + (off & 3));
  return size == 1 ? inb(port) : size == 2 ? inw(port) : inl(port);
}

void pci_write(const struct pci_fn *f, u32 off, int size, u32 value) {
  if (!use_io) {
    u64 a = ecam_addr(f, off);
    if (size == 1) mmio_write8(a, (u8)value);
    else if (size == 2) mmio_write16(a, (u16)value);
    else mmio_write32(a, value);
    return;
  }
  outl(0xcf8, 0x80000000u | ((u32)f->slot << 11) | ((u32)f->fn << 8) | (off & 0xfc));
  u16 port = (u16)(0xcfc + (off & 3));
  if (size == 1) outb(port, (u8)value);
  else if (size == 2) outw(port, (u16)value);
  else outl(port, value);
}

/* Sizes a BAR the standard way (decoding off, write all-ones, read the mask back, restore). */
static void bar_probe(const struct pci_fn *f, int bar, u64 *base, u64 *size, int *is64) {
  u32 reg = 0x10 + 4 * (u32)bar;
  u32 lo = pci_read(f, reg, 4);
  *is64 = 0;
  *base = 0;
  *size = 0;
  if (lo & 1) return; /* I/O BAR: the drivers here never use one */
  *is64 = ((lo >> 1) & 3) == 2;
  u32 hi = *is64 ? pci_read(f, reg + 4, 4) : 0;
  u16 cmd = (u16)pci_read(f, 4, 2);
  pci_write(f, 4, 2, cmd & ~3u);
  pci_write(f, reg, 4, 0xffffffff);
  u32 mlo = pci_read(f, reg, 4) & ~0xfu;
  u32 mhi = 0xffffffff;
  if (*is64) {
    pci_write(f, reg + 4, 4, 0xffffffff);
    mhi = pci_read(f, reg + 4, 4);
    pci_write(f, reg + 4, 4, hi);
  }
  pci_write(f, reg, 4, lo);
  pci_write(f, 4, 2, cmd);
  u64 mask = ((u64)mhi << 32) | mlo;
  *size = mlo ? ~mask + 1 : 0;
  *base = ((u64)hi << 32) | (lo & ~0xfu);
}

static int fn_present(struct pci_fn *f) { return (pci_read(f, 0, 4) & 0xffff) != 0xffff; }

/* Visits every function on bus 0; stops when visit returns nonzero. */
static int pci_scan(int (*visit)(struct pci_fn *f, void *arg), void *arg) {
  struct pci_fn f = {0};
  for (u8 slot = 0; slot < 32; slot++) {
    f.slot = slot;
    f.fn = 0;
    if (!fn_present(&f)) continue;
    u8 nfn = (pci_read(&f, 0x0e, 1) & 0x80) ? 8 : 1;
    for (u8 fn = 0; fn < nfn; fn++) {
      f.fn = fn;
      if (fn && !fn_present(&f)) continue;
      if (visit(&f, arg)) return 1;
    }
  }
  return 0;
}

/* Raises alloc_next above every memory BAR already placed in the 32-bit window (by the VMM or firmware). */
static int note_assigned(struct pci_fn *f, void *arg) {
  (void)arg;
  int nbars = (pci_read(f, 0x0e, 1) & 0x7f) == 0 ? 6 : (pci_read(f, 0x0e, 1) & 0x7f) == 1 ? 2 : 0;
  for (int bar = 0; bar < nbars; bar++) {
    u64 base, size;
    int is64;
    bar_probe(f, bar, &base, &size, &is64);
    if (size && base >= MMIO32_BASE && base < MMIO32_END && base + size > alloc_next) alloc_next = base + size;
    if (is64) bar++;
  }
  return 0;
}

void pci_init(void) {
  const char *how = cmdline_value("pci");
  ecam = cmdline_hex("ecam", 0xe0000000ULL);
  use_io = how && how[0] == 'i' && how[1] == 'o';
  if (!use_io) {
    map_2m(ecam); /* bus 0 is the first 1 MiB of ECAM */
    map_2m(ecam + 0xfffff);
    u32 id = mmio_read32(ecam);
    if (id == 0xffffffff || id == 0) use_io = 1;
  }
  if (use_io) {
    outl(0xcf8, 0x80000000u);
    u32 id = inl(0xcfc);
    if (id == 0xffffffff || id == 0) fail("no PCI configuration space (neither ECAM nor ports 0xCF8/0xCFC)");
    printf("info: pci config through ports 0xcf8/0xcfc\n");
  } else {
    printf("info: pci config through ECAM at 0x%lx\n", ecam);
  }
  alloc_next = MMIO32_BASE;
  pci_scan(note_assigned, 0);
}

struct find_arg { u16 vendor, device; struct pci_fn *out; };
static int match(struct pci_fn *f, void *arg) {
  struct find_arg *a = arg;
  u32 id = pci_read(f, 0, 4);
  if ((id & 0xffff) != a->vendor || (id >> 16) != a->device) return 0;
  *a->out = *f;
  return 1;
}

int pci_find(u16 vendor, u16 device, struct pci_fn *out) {
  struct find_arg a = { vendor, device, out };
  memset(out, 0, sizeof *out);
  return pci_scan(match, &a) ? 0 : -1;
}

u64 pci_bar(struct pci_fn *f, int bar) {
  if (bar < 0 || bar > 5) fail("BAR index out of range");
  if (f->bar_size[bar]) return f->bar_base[bar];
  u64 base, size;
  int is64;
  bar_probe(f, bar, &base, &size, &is64);
  if (!size) {
    printf("FAIL: %02x.%x BAR%d is not an implemented memory BAR\n", f->slot, f->fn, bar);
    exit(FAIL_EXIT);
  }
  const char *who = "vmm";
  if (base == 0 || base + size > 0x100000000ULL) {
    /* Unassigned (QEMU microvm's qboot assigns nothing) or out of our identity map: place it ourselves. */
    u64 at = (alloc_next + size - 1) & ~(size - 1);
    if (at + size > MMIO32_END) fail("32-bit PCI memory window exhausted");
    alloc_next = at + size;
    u16 cmd = (u16)pci_read(f, 4, 2);
    pci_write(f, 4, 2, cmd & ~3u);
    pci_write(f, 0x10 + 4 * (u32)bar, 4, (u32)at);
    if (is64) pci_write(f, 0x14 + 4 * (u32)bar, 4, 0);
    pci_write(f, 4, 2, cmd);
    base = at;
    who = "guest";
  }
  /* Memory decoding on, and bus mastering (the device reads and writes our rings). */
  pci_write(f, 4, 2, (pci_read(f, 4, 2) | 6) & 0xffff);
  map_2m(base);
  map_2m(base + size - 1);
  printf("info: %02x.%x BAR%d at 0x%lx size 0x%lx (placed by %s)\n", f->slot, f->fn, bar, base, size, who);
  f->bar_base[bar] = base;
  f->bar_size[bar] = size;
  return base;
}

u8 pci_find_cap(const struct pci_fn *f, u8 id, u8 start) {
  u8 p;
  if (!start) {
    if (!(pci_read(f, 6, 2) & 0x10)) return 0; /* no capability list */
    p = (u8)pci_read(f, 0x34, 1);
  } else {
    p = (u8)pci_read(f, start + 1, 1);
  }
  /* 48 = the most capabilities that fit in 192 bytes; a looping list must not hang the guest. */
  for (int n = 0; p >= 0x40 && n < 48; n++) {
    p &= 0xfc;
    if (pci_read(f, p, 1) == id) return p;
    p = (u8)pci_read(f, p + 1, 1);
  }
  return 0;
}

/* ---- virtio-pci transport -------------------------------------------------------------------------------- */

static u8 status(struct virtio_dev *d) { return mmio_read8(d->common + C_STATUS); }
static void set_status(struct virtio_dev *d, u8 s) { mmio_write8(d->common + C_STATUS, s); }
u8 virtio_status(struct virtio_dev *d) { return status(d); }
void virtio_set_status(struct virtio_dev *d, u8 s) { set_status(d, s); }
u8 virtio_isr(struct virtio_dev *d) { return mmio_read8(d->isr); }

void virtio_open(struct virtio_dev *d, u16 type, u64 wanted) {
  memset(d, 0, sizeof *d);
  pci_init();
  u16 devid = (u16)(0x1040 + type);
  if (pci_find(VIRTIO_VENDOR, devid, &d->pci)) {
    printf("FAIL: no virtio device 1af4:%04x on PCI bus 0\n", devid);
    exit(FAIL_EXIT);
  }
  struct pci_fn *f = &d->pci;
  printf("info: virtio 1af4:%04x at 00:%02x.%x\n", devid, f->slot, f->fn);
  for (u8 p = pci_find_cap(f, 0x09, 0); p; p = pci_find_cap(f, 0x09, p)) {
    u8 cfg_type = (u8)pci_read(f, p + 3, 1);
    u8 bar = (u8)pci_read(f, p + 4, 1);
    u32 off = pci_read(f, p + 8, 4), len = pci_read(f, p + 12, 4);
    /* §4.1.4: unknown types and reserved BAR numbers are ignored; the first cap of a type wins. */
    if (bar > 5 || cfg_type < 1 || cfg_type > 4) continue;
    u64 *slot = cfg_type == 1 ? &d->common : cfg_type == 2 ? &d->notify : cfg_type == 3 ? &d->isr : &d->device;
    if (*slot) continue;
    u64 base = pci_bar(f, bar);
    if ((u64)off + len > f->bar_size[bar]) fail("virtio capability points outside its BAR");
    if (cfg_type == 1 && len < 0x38) fail("common configuration capability too short");
    *slot = base + off;
    if (cfg_type == 2) d->notify_mult = pci_read(f, p + 16, 4);
  }
  if (!d->common || !d->notify || !d->isr) fail("virtio common/notify/ISR capability missing");
  d->msix_cap = pci_find_cap(f, 0x11, 0);
  virtio_reinit(d, wanted);
}

void virtio_reinit(struct virtio_dev *d, u64 wanted) {
  /* §3.1.1 steps 1-6 */
  set_status(d, 0);
  u64 deadline = rdtsc() + WAIT_TSC;
  while (status(d) != 0)
    if (rdtsc() > deadline) fail("device did not finish reset");
  set_status(d, S_ACKNOWLEDGE);
  set_status(d, S_ACKNOWLEDGE | S_DRIVER);
  mmio_write32(d->common + C_DFSELECT, 0);
  u64 offered = mmio_read32(d->common + C_DF);
  mmio_write32(d->common + C_DFSELECT, 1);
  offered |= (u64)mmio_read32(d->common + C_DF) << 32;
  printf("info: offered features 0x%lx\n", offered);
  if (!(offered & (1ULL << VIRTIO_F_VERSION_1))) fail("device does not offer VIRTIO_F_VERSION_1");
  d->features = offered & (wanted | (1ULL << VIRTIO_F_VERSION_1));
  mmio_write32(d->common + C_GFSELECT, 0);
  mmio_write32(d->common + C_GF, (u32)d->features);
  mmio_write32(d->common + C_GFSELECT, 1);
  mmio_write32(d->common + C_GF, (u32)(d->features >> 32));
  set_status(d, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
  if (!(status(d) & S_FEATURES_OK)) fail("device refused FEATURES_OK");
  printf("virtio: features accepted 0x%lx\n", d->features);
}

u8 virtio_cfg8(struct virtio_dev *d, u32 off) {
  if (!d->device) fail("no device configuration capability");
  return mmio_read8(d->device + off);
}
u32 virtio_cfg32(struct virtio_dev *d, u32 off) {
  if (!d->device) fail("no device configuration capability");
  return mmio_read32(d->device + off);
}

void virtio_msix_setup(struct virtio_dev *d, u16 entry, u8 vector) {
  struct pci_fn *f = &d->pci;
  u8 cap = d->msix_cap;
  if (!cap) fail("no MSI-X capability");
  u16 ctrl = (u16)pci_read(f, cap + 2, 2);
  if (entry > (ctrl & 0x7ff)) fail("MSI-X table too small");
  u32 t = pci_read(f, cap + 4, 4);
  u64 table = pci_bar(f, (int)(t & 7)) + (t & ~7u);
  /* Enable with the function masked while the entry is written (PCI 3.0 §6.8.2.3), then unmask. */
  pci_write(f, cap + 2, 2, ctrl | 0x8000 | 0x4000);
  u64 e = table + 16ULL * entry;
  mmio_write32(e + 0, 0xfee00000); /* destination APIC ID 0, physical */
  mmio_write32(e + 4, 0);
  mmio_write32(e + 8, vector); /* fixed delivery, edge */
  mmio_write32(e + 12, 0);     /* unmasked */
  pci_write(f, cap + 2, 2, (ctrl | 0x8000) & ~0x4000u);
}

static u8 vq_pages[4][4096] __attribute__((aligned(4096)));
static struct virtq_desc vq_indirect[4][VQ_INDIRECT_MAX] __attribute__((aligned(16)));
static int vq_pages_used;

void virtq_setup(struct virtio_dev *d, struct virtq *q, u16 index, u16 want, u16 msix_vector) {
  if (vq_pages_used == 4) fail("out of virtqueue memory");
  u8 *page = vq_pages[vq_pages_used];
  memset(page, 0, 4096);
  memset(q, 0, sizeof *q);
  q->dev = d;
  q->index = index;
  q->indirect = vq_indirect[vq_pages_used++];
  /* Split-queue layout in one page: table at 0 (16-aligned), avail at 0x400 (2), used at 0x800 (4). */
  q->desc = (volatile struct virtq_desc *)page;
  q->avail = (volatile struct virtq_avail *)(page + 0x400);
  q->used = (volatile struct virtq_used *)(page + 0x800);
  mmio_write16(d->common + C_Q_SELECT, index);
  u16 max = mmio_read16(d->common + C_Q_SIZE);
  if (!max) {
    printf("FAIL: queue %u does not exist\n", index);
    exit(FAIL_EXIT);
  }
  if (mmio_read16(d->common + C_Q_ENABLE)) fail("queue enabled right after reset");
  u16 size = 1;
  while (size * 2 <= max && size * 2 <= want && size * 2 <= VQ_MAX_SIZE) size *= 2;
  q->size = size;
  mmio_write16(d->common + C_Q_SIZE, size);
  if (msix_vector != 0xffff) {
    mmio_write16(d->common + C_Q_MSIX, msix_vector);
    if (mmio_read16(d->common + C_Q_MSIX) != msix_vector) fail("device refused the queue's MSI-X vector");
  }
  mmio_write32(d->common + C_Q_DESC, (u32)(u64)q->desc);
  mmio_write32(d->common + C_Q_DESC + 4, 0);
  mmio_write32(d->common + C_Q_DRIVER, (u32)(u64)q->avail);
  mmio_write32(d->common + C_Q_DRIVER + 4, 0);
  mmio_write32(d->common + C_Q_DEVICE, (u32)(u64)q->used);
  mmio_write32(d->common + C_Q_DEVICE + 4, 0);
  q->notify_addr = d->notify + (u64)mmio_read16(d->common + C_Q_NOFF) * d->notify_mult;
  for (u16 i = 0; i < size; i++) q->desc[i].next = (u16)(i + 1); /* free list */
  q->num_free = size;
  mmio_write16(d->common + C_Q_ENABLE, 1);
}

void virtio_driver_ok(struct virtio_dev *d) {
  set_status(d, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
  if (status(d) & S_NEEDS_RESET) fail("device needs reset right after DRIVER_OK");
}

u16 vq_add(struct virtq *q, const struct vq_buf *bufs, int n, int indirect) {
  if (n < 1) fail("empty chain");
  u16 head = q->free_head;
  if (indirect) {
    if (q->indirect_busy || n > VQ_INDIRECT_MAX || !q->num_free) fail("indirect table busy or too small");
    for (int i = 0; i < n; i++) {
      q->indirect[i].addr = (u64)bufs[i].addr;
      q->indirect[i].len = bufs[i].len;
      q->indirect[i].flags = (u16)((bufs[i].writable ? VIRTQ_DESC_F_WRITE : 0) | (i + 1 < n ? VIRTQ_DESC_F_NEXT : 0));
      q->indirect[i].next = (u16)(i + 1);
    }
    q->desc[head].addr = (u64)q->indirect;
    q->desc[head].len = (u32)(16 * n);
    q->desc[head].flags = VIRTQ_DESC_F_INDIRECT;
    q->free_head = q->desc[head].next;
    q->num_free--;
    q->indirect_busy = 1;
  } else {
    if (q->num_free < n) fail("virtqueue full");
    u16 id = head;
    for (int i = 0; i < n; i++) {
      q->desc[id].addr = (u64)bufs[i].addr;
      q->desc[id].len = bufs[i].len;
      q->desc[id].flags = (u16)((bufs[i].writable ? VIRTQ_DESC_F_WRITE : 0) | (i + 1 < n ? VIRTQ_DESC_F_NEXT : 0));
      id = q->desc[id].next; /* the free list already links the chain */
    }
    q->free_head = id;
    q->num_free = (u16)(q->num_free - n);
  }
  q->avail->ring[q->avail_idx % q->size] = head;
  barrier(); /* descriptors and ring slot before the index the device polls (x86 keeps stores in order) */
  q->avail->idx = ++q->avail_idx;
  barrier();
  return head;
}

void vq_kick(struct virtq *q) { mmio_write16(q->notify_addr, q->index); }

u16 vq_wait(struct virtq *q, u32 *len, const char *what) {
  u64 deadline = rdtsc() + WAIT_TSC;
  for (u32 spins = 1; q->used->idx == q->last_used; spins++) {
    /* Status and TSC only now and then: each status read is an exit to the VMM. */
    if (spins % 64) {
      __asm__ volatile("pause");
      continue;
    }
    if (status(q->dev) & S_NEEDS_RESET) {
      printf("FAIL: %s: device set DEVICE_NEEDS_RESET\n", what);
      exit(FAIL_EXIT);
    }
    if (rdtsc() > deadline) {
      printf("FAIL: %s: no used buffer on queue %u (used.idx %u)\n", what, q->index, q->used->idx);
      exit(FAIL_EXIT);
    }
  }
  barrier();
  volatile struct virtq_used_elem *e = &q->used->ring[q->last_used % q->size];
  u32 id = e->id;
  *len = e->len;
  q->last_used++;
  if (id >= q->size) {
    printf("FAIL: %s: device used descriptor id %u of %u\n", what, id, q->size);
    exit(FAIL_EXIT);
  }
  /* Back onto the free list. */
  u16 last = (u16)id;
  u16 count = 1;
  if (q->desc[id].flags & VIRTQ_DESC_F_INDIRECT) q->indirect_busy = 0;
  while ((q->desc[last].flags & VIRTQ_DESC_F_NEXT) && count < q->size) {
    last = q->desc[last].next;
    count++;
  }
  q->desc[last].next = q->free_head;
  q->free_head = (u16)id;
  q->num_free = (u16)(q->num_free + count);
  return (u16)id;
}
