/* virtio-hostile test guest: a malicious driver against virtio-blk, virtio 1.2 §2.7 (split virtqueues: chains
 * §2.7.5, indirect descriptors §2.7.5.3), §4.1.4.3 (common configuration: queue_size, ring addresses), §5.2.6
 * (block requests), §2.1.2 and §2.4 (DEVICE_NEEDS_RESET, device reset).
 *
 * One scenario per run, named by case=NAME on the command line, so every scenario meets a fresh device. The guest
 * sets the device up normally, then posts one malformed request (or configures a malformed queue), and reports how
 * the device reacted: DEVICE_NEEDS_RESET with a configuration-change interrupt, or a completed request and the
 * status byte it wrote. Then it resets the device, initialises it again and reads sector 0 the correct way.
 * It exits 0 when the reaction is one the spec allows for that case and the device works again afterwards, and
 * prints "FAIL: ..." (exit FAIL_EXIT) otherwise. The host side (image unchanged, VMM still alive, its log) is
 * checked by test/integration/virtio-hostile.test.ts.
 *
 * MSI-X stays off: interrupts are observed in the ISR status register (§4.1.4.5), as a driver without MSI-X
 * does, and reading it acknowledges them. Guest-physical addresses go to "info:" lines (they depend on the
 * VMM's memory map); everything else is the same on any VMM that behaves the same. */
#include "runtime/guest.h"
#include "lib/virtio.h"

#define T_IN 0
#define T_OUT 1
#define BLK_S_OK 0
#define BLK_S_IOERR 1
#define BLK_S_UNSUPP 2

#define QSIZE 8                  /* the hostile queue's size: small, so "longer than the queue" is cheap */
#define FEATURES (1ULL << VIRTIO_F_INDIRECT_DESC)
#define E820_RAM 1
/* Scratch RAM outside the guest image for large buffers (every VMM here gives the guest 512 MiB or more). */
#define BIG 0x01000000ULL
#define BIG_SIZE 0x00100000ULL
/* A device reacts within milliseconds; not reacting is always a failure, so this is a hang guard like WAIT_TSC. */
#define REACT_TSC WAIT_TSC

/* What a case accepts as good device behaviour. */
#define ALLOW_RESET 1 /* DEVICE_NEEDS_RESET (§2.1.2) */
#define ALLOW_ERROR 2 /* the request completed with IOERR or UNSUPP */
#define ALLOW_OK 4    /* the request completed with OK (only where no data can have moved, or moved correctly) */

static struct virtio_dev dev;
static struct virtq vq;
static struct blk_req hdr;
static volatile u8 st;
static u8 data[4096] __attribute__((aligned(4096)));
static struct virtq_desc table[64] __attribute__((aligned(16)));
static struct virtq_desc table2[4] __attribute__((aligned(16)));
static u8 ring_page[4096] __attribute__((aligned(4096)));
static u8 dummy_used[4096] __attribute__((aligned(4096)));
static u64 ram_low_end; /* end of the RAM range holding the guest: the end of RAM, or the start of the 32-bit hole */
static u64 ram_end;     /* end of all RAM */
static u64 capacity;

static inline void mmio_write16(u64 a, u16 v) { *(volatile u16 *)a = v; }
static inline u16 mmio_read16(u64 a) { return *(volatile u16 *)a; }

static u32 checksum(const u8 *p, u32 n) {
  u32 sum = 0;
  for (u32 i = 0; i < n; i++) sum = sum * 31 + p[i];
  return sum;
}

static void memory_map(const struct boot_info *bi) {
  for (int i = 0; i < bi->nmem; i++) {
    const struct mem_entry *m = &bi->mem[i];
    if (m->type != E820_RAM) continue;
    if (m->base + m->size > ram_end) ram_end = m->base + m->size;
    if (m->base <= 0x100000 && m->base + m->size > 0x100000) ram_low_end = m->base + m->size;
  }
  if (!ram_low_end || ram_end < BIG + BIG_SIZE) fail("memory map: no RAM range holding the guest, or under 32 MiB");
  printf("info: RAM ends at 0x%lx, the range holding the guest at 0x%lx\n", ram_end, ram_low_end);
}

/* ---- the hostile queue ------------------------------------------------------------------------------------- */

static void d(u16 i, u64 addr, u32 len, u16 flags, u16 next) {
  vq.desc[i].addr = addr;
  vq.desc[i].len = len;
  vq.desc[i].flags = flags;
  vq.desc[i].next = next;
}

static void t(struct virtq_desc *tb, u16 i, u64 addr, u32 len, u16 flags, u16 next) {
  tb[i].addr = addr;
  tb[i].len = len;
  tb[i].flags = flags;
  tb[i].next = next;
}

static void header(u32 type, u64 sector) {
  hdr.type = type;
  hdr.reserved = 0;
  hdr.sector = sector;
  st = 0xff;
}

/* Makes descriptor `head` available and kicks, whatever the descriptors say. */
static void post(u16 head) {
  vq.avail->ring[vq.avail_idx % vq.size] = head;
  barrier();
  vq.avail->idx = ++vq.avail_idx;
  barrier();
  vq_kick(&vq);
}

/* A normally set-up device with one queue of QSIZE entries: the starting point of most cases. */
static void start(void) {
  virtq_setup(&dev, &vq, 0, QSIZE, 0xffff);
  if (vq.size != QSIZE) fail("device offers fewer than 8 queue entries");
  virtio_driver_ok(&dev);
}

enum { NO_REACTION, COMPLETED, NEEDS_RESET };
struct reaction { int kind; u32 id, len; u8 status, blk_status, isr; };
static u16 posted_head;

/* Waits (bounded) for a used buffer or DEVICE_NEEDS_RESET, then for the interrupt that should come with it. */
static struct reaction await_reaction(void) {
  struct reaction r = { NO_REACTION, 0, 0, 0, 0xff, 0 };
  u64 deadline = rdtsc() + REACT_TSC;
  for (u32 spins = 1;; spins++) {
    if (vq.used->idx != vq.last_used) {
      barrier();
      volatile struct virtq_used_elem *e = &vq.used->ring[vq.last_used % vq.size];
      r.kind = COMPLETED;
      r.id = e->id;
      r.len = e->len;
      r.blk_status = st;
      vq.last_used++;
      break;
    }
    if (spins % 64) { /* each status read is an exit to the VMM: poll RAM in between */
      __asm__ volatile("pause");
      continue;
    }
    u8 s = virtio_status(&dev);
    if (s & S_NEEDS_RESET) {
      r.kind = NEEDS_RESET;
      r.status = s;
      break;
    }
    if (rdtsc() > deadline) break;
  }
  if (r.kind == NO_REACTION) return r;
  /* ISR bit 0: used buffers; bit 1: configuration change (§4.1.4.5). The status or the ring can be seen before
   * the interrupt is raised, so wait for the bit (reads accumulate: each one clears the register). */
  u8 want = r.kind == COMPLETED ? 1 : 2;
  deadline = rdtsc() + REACT_TSC;
  while (!(r.isr & want) && rdtsc() < deadline) r.isr |= virtio_isr(&dev);
  return r;
}

static const char *blk_status_name(u8 s) {
  return s == BLK_S_OK       ? "OK"
         : s == BLK_S_IOERR  ? "IOERR"
         : s == BLK_S_UNSUPP ? "UNSUPP"
         : s == 0xff         ? "not written"
                             : "other";
}

/* Prints the reaction and judges it against what the case allows. */
static struct reaction expect(int allowed) {
  struct reaction r = await_reaction();
  if (r.kind == NEEDS_RESET) {
    printf("hostile: device set DEVICE_NEEDS_RESET (status 0x%02x), ISR 0x%x, used idx %u\n", r.status, r.isr,
           vq.used->idx);
    if (!(r.isr & 2)) fail("DEVICE_NEEDS_RESET without a configuration-change interrupt (ISR bit 1)");
    if (vq.used->idx != vq.last_used) fail("the device used a buffer of the chain that made it need a reset");
    if (!(allowed & ALLOW_RESET)) fail("DEVICE_NEEDS_RESET where the request should have completed");
  } else if (r.kind == COMPLETED) {
    printf("hostile: request completed: status %u (%s), used len %u, ISR 0x%x\n", r.blk_status,
           blk_status_name(r.blk_status), r.len, r.isr);
    if (r.id != posted_head) fail("the used element names another descriptor than the one posted");
    if (!(r.isr & 1)) fail("used buffer without an interrupt (ISR bit 0)");
    int error = r.blk_status == BLK_S_IOERR || r.blk_status == BLK_S_UNSUPP;
    if (!(allowed & (error ? ALLOW_ERROR : r.blk_status == BLK_S_OK ? ALLOW_OK : 0)))
      fail("the device completed the malformed request with a status this case does not allow");
  } else {
    printf("hostile: no reaction (status 0x%02x, used idx %u)\n", virtio_status(&dev), vq.used->idx);
    fail("the device neither completed the request nor set DEVICE_NEEDS_RESET");
  }
  return r;
}

static void fill(u8 *p, u32 n, u8 v) {
  for (u32 i = 0; i < n; i++) p[i] = v;
}
static int all(const u8 *p, u32 n, u8 v) {
  for (u32 i = 0; i < n; i++)
    if (p[i] != v) return 0;
  return 1;
}

/* ---- the cases ------------------------------------------------------------------------------------------- */

#define FAR 0xf000000000000000ULL

/* a1: a read whose data buffer is far outside guest RAM. */
static void case_a1(void) {
  start();
  header(T_IN, 0);
  d(0, (u64)&hdr, 16, VIRTQ_DESC_F_NEXT, 1);
  d(1, FAR, 512, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 2);
  d(2, (u64)&st, 1, VIRTQ_DESC_F_WRITE, 0);
  printf("hostile: read into a buffer at 0xf000000000000000, far outside RAM\n");
  post(posted_head = 0);
  expect(ALLOW_RESET | ALLOW_ERROR);
}

/* a2: a write whose data buffer starts right at the end of RAM. */
static void case_a2(void) {
  start();
  header(T_OUT, 4);
  d(0, (u64)&hdr, 16, VIRTQ_DESC_F_NEXT, 1);
  d(1, ram_end, 512, VIRTQ_DESC_F_NEXT, 2);
  d(2, (u64)&st, 1, VIRTQ_DESC_F_WRITE, 0);
  printf("info: data buffer at 0x%lx\n", ram_end);
  printf("hostile: write from a buffer just past the end of RAM\n");
  post(posted_head = 0);
  expect(ALLOW_RESET | ALLOW_ERROR);
}

/* a3: a write whose data buffer straddles the end of the RAM range holding the guest (the end of RAM, or the
 * start of the 32-bit MMIO hole at 3 GiB when the VM has more memory than fits below it). */
static void case_a3(void) {
  start();
  header(T_OUT, 4);
  d(0, (u64)&hdr, 16, VIRTQ_DESC_F_NEXT, 1);
  d(1, ram_low_end - 256, 512, VIRTQ_DESC_F_NEXT, 2);
  d(2, (u64)&st, 1, VIRTQ_DESC_F_WRITE, 0);
  printf("info: data buffer at 0x%lx (+0x200)\n", ram_low_end - 256);
  printf("hostile: write from a buffer straddling the end of %s\n",
         ram_low_end == ram_end ? "RAM" : "low RAM (the 32-bit hole)");
  post(posted_head = 0);
  expect(ALLOW_RESET | ALLOW_ERROR);
}

/* a4: a read whose buffer address + length wraps past 2^64. */
static void case_a4(void) {
  start();
  header(T_IN, 0);
  d(0, (u64)&hdr, 16, VIRTQ_DESC_F_NEXT, 1);
  d(1, 0xffffffffffffff00ULL, 512, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 2);
  d(2, (u64)&st, 1, VIRTQ_DESC_F_WRITE, 0);
  printf("hostile: read into a buffer at 2^64 - 256 (+512 wraps past 2^64)\n");
  post(posted_head = 0);
  expect(ALLOW_RESET | ALLOW_ERROR);
}

/* a5: a read with a good data buffer whose status byte lies outside RAM: nowhere to report anything. */
static void case_a5(void) {
  start();
  header(T_IN, 0);
  fill(data, 512, 0x5a);
  d(0, (u64)&hdr, 16, VIRTQ_DESC_F_NEXT, 1);
  d(1, (u64)data, 512, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 2);
  d(2, ram_end + 0x1000, 1, VIRTQ_DESC_F_WRITE, 0);
  printf("hostile: read with its status byte outside RAM\n");
  post(posted_head = 0);
  expect(ALLOW_RESET);
  printf("hostile: data buffer %s\n", all(data, 512, 0x5a) ? "untouched" : "written");
}

/* b1: a NEXT loop: the status descriptor continues back to the data descriptor (a well-ordered loop, so only the
 * length of the walk can reveal it). */
static void case_b1(void) {
  start();
  header(T_IN, 0);
  d(0, (u64)&hdr, 16, VIRTQ_DESC_F_NEXT, 1);
  d(1, (u64)data, 512, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 2);
  d(2, (u64)&st, 1, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1);
  printf("hostile: chain 0 -> 1 -> 2 -> 1 -> ...\n");
  post(posted_head = 0);
  expect(ALLOW_RESET);
}

/* b2: a descriptor that continues to itself. */
static void case_b2(void) {
  start();
  header(T_IN, 0);
  d(0, (u64)&hdr, 16, VIRTQ_DESC_F_NEXT, 1);
  d(1, (u64)&st, 1, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1);
  printf("hostile: chain 0 -> 1 -> 1 -> ...\n");
  post(posted_head = 0);
  expect(ALLOW_RESET);
}

/* c1: through an indirect table, a chain of 40 descriptors on a queue of 8 (§2.7.5.3.1 forbids the driver a chain
 * longer than the queue size; nothing bounds the device, which may serve it or refuse it). */
static void case_c1(void) {
  start();
  header(T_IN, 0);
  u8 *big = (u8 *)BIG;
  fill(big, 38 * 512, 0x5a);
  t(table, 0, (u64)&hdr, 16, VIRTQ_DESC_F_NEXT, 1);
  for (u16 i = 1; i <= 38; i++)
    t(table, i, BIG + 512ULL * (i - 1), 512, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, (u16)(i + 1));
  t(table, 39, (u64)&st, 1, VIRTQ_DESC_F_WRITE, 0);
  d(0, (u64)table, 40 * 16, VIRTQ_DESC_F_INDIRECT, 0);
  printf("hostile: read of 38 sectors in a 40-descriptor indirect chain on a queue of %u\n", vq.size);
  post(posted_head = 0);
  struct reaction r = expect(ALLOW_RESET | ALLOW_ERROR | ALLOW_OK);
  if (r.kind == COMPLETED && r.blk_status == BLK_S_OK) {
    /* Served: then it must be the disk's first 38 sectors, all of them. */
    int rest_zero = all(big + 512, 37 * 512, 0);
    printf("hostile: data: sector 0 checksum %08x, sectors 1-37 %s\n", checksum(big, 512),
           rest_zero ? "zero" : "not zero");
    if (!rest_zero) fail("a served long chain did not read the sectors it named");
  }
}

/* c2: a NEXT loop inside an indirect table. */
static void case_c2(void) {
  start();
  header(T_IN, 0);
  t(table, 0, (u64)&hdr, 16, VIRTQ_DESC_F_NEXT, 1);
  t(table, 1, (u64)data, 512, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 2);
  t(table, 2, (u64)&st, 1, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1);
  d(0, (u64)table, 3 * 16, VIRTQ_DESC_F_INDIRECT, 0);
  printf("hostile: indirect table 0 -> 1 -> 2 -> 1 -> ...\n");
  post(posted_head = 0);
  expect(ALLOW_RESET);
}

/* d1: an INDIRECT descriptor inside an indirect table (§2.7.5.3.1: the driver MUST NOT). */
static void case_d1(void) {
  start();
  header(T_IN, 0);
  t(table2, 0, (u64)data, 512, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1);
  t(table2, 1, (u64)&st, 1, VIRTQ_DESC_F_WRITE, 0);
  t(table, 0, (u64)&hdr, 16, VIRTQ_DESC_F_NEXT, 1);
  t(table, 1, (u64)table2, 2 * 16, VIRTQ_DESC_F_INDIRECT, 0);
  d(0, (u64)table, 2 * 16, VIRTQ_DESC_F_INDIRECT, 0);
  printf("hostile: indirect table inside an indirect table\n");
  post(posted_head = 0);
  expect(ALLOW_RESET);
}

/* e1: NEXT names a descriptor beyond the queue. */
static void case_e1(void) {
  start();
  header(T_IN, 0);
  d(0, (u64)&hdr, 16, VIRTQ_DESC_F_NEXT, 200);
  printf("hostile: descriptor 0 continues to descriptor 200 of %u\n", vq.size);
  post(posted_head = 0);
  expect(ALLOW_RESET);
}

/* e2: the available ring names a head beyond the queue. */
static void case_e2(void) {
  start();
  printf("hostile: available ring entry names descriptor %u of %u\n", QSIZE + 1, vq.size);
  post(posted_head = QSIZE + 1);
  expect(ALLOW_RESET);
}

/* e3: avail->idx jumps 100 entries ahead on a queue of 8. */
static void case_e3(void) {
  start();
  printf("hostile: avail idx moves 100 ahead on a queue of %u\n", vq.size);
  vq.avail_idx = (u16)(vq.avail_idx + 100);
  vq.avail->idx = vq.avail_idx;
  barrier();
  vq_kick(&vq);
  posted_head = 0xffff;
  expect(ALLOW_RESET);
}

/* e4: NEXT inside an indirect table names an entry beyond the table. */
static void case_e4(void) {
  start();
  header(T_IN, 0);
  t(table, 0, (u64)&hdr, 16, VIRTQ_DESC_F_NEXT, 1);
  t(table, 1, (u64)data, 512, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 7);
  t(table, 2, (u64)&st, 1, VIRTQ_DESC_F_WRITE, 0);
  d(0, (u64)table, 3 * 16, VIRTQ_DESC_F_INDIRECT, 0);
  printf("hostile: indirect entry 1 continues to entry 7 of 3\n");
  post(posted_head = 0);
  expect(ALLOW_RESET);
}

/* f1: a write whose data is device-writable (the wrong direction): no data is device-readable, so nothing may reach
 * the disk; an empty write may complete. */
static void case_f1(void) {
  start();
  header(T_OUT, 4);
  fill(data, 512, 0xa5);
  d(0, (u64)&hdr, 16, VIRTQ_DESC_F_NEXT, 1);
  d(1, (u64)data, 512, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 2);
  d(2, (u64)&st, 1, VIRTQ_DESC_F_WRITE, 0);
  printf("hostile: write of sector 4 with its data in a device-writable buffer\n");
  post(posted_head = 0);
  expect(ALLOW_RESET | ALLOW_ERROR | ALLOW_OK);
  printf("hostile: data buffer %s\n", all(data, 512, 0xa5) ? "untouched" : "written");
}

/* f2: a write whose status byte is device-readable: the chain has nothing device-writable at all. */
static void case_f2(void) {
  start();
  header(T_OUT, 4);
  fill(data, 512, 0xa5);
  d(0, (u64)&hdr, 16, VIRTQ_DESC_F_NEXT, 1);
  d(1, (u64)data, 512, VIRTQ_DESC_F_NEXT, 2);
  d(2, (u64)&st, 1, 0, 0);
  printf("hostile: write of sector 4 with its status byte in a device-readable buffer\n");
  post(posted_head = 0);
  expect(ALLOW_RESET);
  printf("hostile: status byte %s\n", st == 0xff ? "untouched" : "written");
}

/* f3: a read whose data is device-readable (the wrong direction): the guest's buffer must stay as it was. */
static void case_f3(void) {
  start();
  header(T_IN, 0);
  fill(data, 512, 0xa5);
  d(0, (u64)&hdr, 16, VIRTQ_DESC_F_NEXT, 1);
  d(1, (u64)data, 512, VIRTQ_DESC_F_NEXT, 2);
  d(2, (u64)&st, 1, VIRTQ_DESC_F_WRITE, 0);
  printf("hostile: read of sector 0 into a device-readable buffer\n");
  post(posted_head = 0);
  expect(ALLOW_RESET | ALLOW_ERROR | ALLOW_OK);
  printf("hostile: data buffer %s\n", all(data, 512, 0xa5) ? "untouched" : "written");
  if (!all(data, 512, 0xa5)) fail("the device wrote into a device-readable buffer");
}

/* f4: the request header in a device-writable buffer: no device-readable header at all. */
static void case_f4(void) {
  start();
  header(T_IN, 0);
  d(0, (u64)&hdr, 16, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1);
  d(1, (u64)data, 512, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 2);
  d(2, (u64)&st, 1, VIRTQ_DESC_F_WRITE, 0);
  printf("hostile: read whose header is device-writable\n");
  post(posted_head = 0);
  expect(ALLOW_RESET | ALLOW_ERROR);
}

/* g: requests whose sector or length must be refused with IOERR (§5.2.6.2) before the disk is touched. */
static void sector_request(u32 type, u64 sector, u32 len, const char *what) {
  start();
  header(type, sector);
  fill(data, sizeof data, 0x5a);
  d(0, (u64)&hdr, 16, VIRTQ_DESC_F_NEXT, 1);
  d(1, (u64)data, len, (u16)((type == T_IN ? VIRTQ_DESC_F_WRITE : 0) | VIRTQ_DESC_F_NEXT), 2);
  d(2, (u64)&st, 1, VIRTQ_DESC_F_WRITE, 0);
  printf("hostile: %s\n", what);
  post(posted_head = 0);
  expect(ALLOW_ERROR);
  if (type == T_IN) printf("hostile: data buffer %s\n", all(data, len, 0x5a) ? "untouched" : "written");
}

static void case_g1(void) { sector_request(T_IN, 1ULL << 63, 512, "read of sector 2^63"); }
/* 2^55 sectors are 2^64 bytes: a device computing the byte offset in 64 bits would read sector 0. */
static void case_g2(void) {
  sector_request(T_IN, 1ULL << 55, 512, "read of sector 2^55 (byte offset 2^64 wraps to 0)");
}
static void case_g3(void) {
  sector_request(T_OUT, capacity - 1, 1024, "write of 2 sectors from the last sector (crosses the end)");
}
/* sector + count wraps: 2^64 - 1 + 2 = 1. */
static void case_g4(void) {
  sector_request(T_OUT, ~0ULL, 1024, "write of 2 sectors from sector 2^64 - 1 (sector + count wraps)");
}

/* g5: a write of sector 0 whose buffers add up to more than 4 GiB (17 x 256 MiB, all inside RAM, overlapping):
 * the used length and any 32-bit byte count overflow. */
static void case_g5(void) {
  start();
  header(T_OUT, 0);
  if (ram_end < 0x10100000ULL) fail("case g5 needs 257 MiB of RAM");
  t(table, 0, (u64)&hdr, 16, VIRTQ_DESC_F_NEXT, 1);
  for (u16 i = 1; i <= 17; i++) t(table, i, 0x100000, 0x10000000, VIRTQ_DESC_F_NEXT, (u16)(i + 1));
  t(table, 18, (u64)&st, 1, VIRTQ_DESC_F_WRITE, 0);
  d(0, (u64)table, 19 * 16, VIRTQ_DESC_F_INDIRECT, 0);
  printf("hostile: write of sector 0 from 17 buffers of 256 MiB (4.25 GiB in all)\n");
  post(posted_head = 0);
  expect(ALLOW_RESET | ALLOW_ERROR);
}

/* h: queue addresses outside RAM, configured before DRIVER_OK (§4.1.5.1.3 leaves checking them to the device). */
static void queue_config(u64 desc, u64 avail, u64 used) {
  memset(ring_page, 0, sizeof ring_page);
  memset(dummy_used, 0, sizeof dummy_used);
  mmio_write16(dev.common + C_Q_SELECT, 0);
  mmio_write16(dev.common + C_Q_SIZE, QSIZE);
  if (mmio_read16(dev.common + C_Q_SIZE) != QSIZE) fail("device refused queue size 8");
  mmio_write32(dev.common + C_Q_DESC, (u32)desc);
  mmio_write32(dev.common + C_Q_DESC + 4, (u32)(desc >> 32));
  mmio_write32(dev.common + C_Q_DRIVER, (u32)avail);
  mmio_write32(dev.common + C_Q_DRIVER + 4, (u32)(avail >> 32));
  mmio_write32(dev.common + C_Q_DEVICE, (u32)used);
  mmio_write32(dev.common + C_Q_DEVICE + 4, (u32)(used >> 32));
  mmio_write16(dev.common + C_Q_ENABLE, 1);
  /* The guest's own view: the rings it can read (a ring outside RAM is polled through a harmless stand-in). */
  memset(&vq, 0, sizeof vq);
  vq.dev = &dev;
  vq.size = QSIZE;
  vq.desc = (volatile struct virtq_desc *)ring_page;
  vq.avail = (volatile struct virtq_avail *)(ring_page + 0x400);
  vq.used = (volatile struct virtq_used *)dummy_used;
  vq.notify_addr = dev.notify + (u64)mmio_read16(dev.common + C_Q_NOFF) * dev.notify_mult;
  virtio_set_status(&dev, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
  /* A correct request in the guest's copy of the rings, and a kick: a device that checks the rings only when it
   * first uses them gets its chance to refuse them too. */
  header(T_IN, 0);
  d(0, (u64)&hdr, 16, VIRTQ_DESC_F_NEXT, 1);
  d(1, (u64)data, 512, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 2);
  d(2, (u64)&st, 1, VIRTQ_DESC_F_WRITE, 0);
  post(posted_head = 0);
}

static void case_h1(void) {
  printf("hostile: descriptor table at 0xf000000000000000\n");
  queue_config(FAR, (u64)ring_page + 0x400, (u64)ring_page + 0x800);
  expect(ALLOW_RESET);
}

static void case_h2(void) {
  printf("info: used ring at 0x%lx (+70 bytes)\n", ram_end - 64);
  printf("hostile: used ring straddling the end of RAM\n");
  queue_config((u64)ring_page, (u64)ring_page + 0x400, ram_end - 64);
  expect(ALLOW_RESET);
}

/* h3: the available ring inside the device's own registers (its common configuration, in the BAR). */
static void case_h3(void) {
  printf("info: available ring at 0x%lx\n", dev.common);
  printf("hostile: available ring inside the device's BAR\n");
  queue_config((u64)ring_page, dev.common, (u64)ring_page + 0x800);
  expect(ALLOW_RESET);
}

/* i: queue_size values no split queue can have (§2.7: a power of two; §4.1.4.3: at most what the device offers). */
static void queue_size_case(u16 (*bad)(u16 max), const char *what) {
  mmio_write16(dev.common + C_Q_SELECT, 0);
  u16 max = mmio_read16(dev.common + C_Q_SIZE);
  u16 value = bad(max);
  mmio_write16(dev.common + C_Q_SIZE, value);
  u16 now = mmio_read16(dev.common + C_Q_SIZE);
  printf("info: queue size offered %u, wrote %u, reads back %u\n", max, value, now);
  int refused = now == max;
  printf("hostile: queue_size %s: %s\n", what,
         refused ? "refused (the offered maximum stays)" : now == value ? "accepted" : "changed to another value");
  if (!refused && (now & (now - 1))) fail("the device took a queue size that is not a power of two");
  if (now > max) fail("the device took a queue size above its maximum");
}
static u16 three(u16 max) { (void)max; return 3; }
static u16 twice(u16 max) { return (u16)(max * 2); }
static void case_i1(void) { queue_size_case(three, "3 (not a power of two)"); }
static void case_i2(void) { queue_size_case(twice, "twice the maximum"); }

/* j1: queue_select beyond num_queues (§4.1.4.3: queue_size reads 0 for a queue that does not exist); writes to
 * that queue's fields, even queue_enable, must change nothing, and queue 0 must then work as usual. */
static void case_j1(void) {
  u16 sizes[2];
  const u16 sel[2] = { 5, 0xffff };
  for (int i = 0; i < 2; i++) {
    mmio_write16(dev.common + C_Q_SELECT, sel[i]);
    sizes[i] = mmio_read16(dev.common + C_Q_SIZE);
    mmio_write16(dev.common + C_Q_SIZE, 8);
    mmio_write32(dev.common + C_Q_DESC, (u32)(u64)ring_page);
    mmio_write32(dev.common + C_Q_DRIVER, (u32)(u64)ring_page + 0x400);
    mmio_write32(dev.common + C_Q_DEVICE, (u32)(u64)ring_page + 0x800);
    mmio_write16(dev.common + C_Q_ENABLE, 1);
  }
  printf("hostile: queue_size of queue 5: %u, of queue 65535: %u\n", sizes[0], sizes[1]);
  if (sizes[0] || sizes[1]) fail("a queue that does not exist has a size");
  start();
  header(T_IN, 0);
  fill(data, 512, 0x5a);
  d(0, (u64)&hdr, 16, VIRTQ_DESC_F_NEXT, 1);
  d(1, (u64)data, 512, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 2);
  d(2, (u64)&st, 1, VIRTQ_DESC_F_WRITE, 0);
  post(posted_head = 0);
  expect(ALLOW_OK);
  printf("hostile: queue 0 after that: sector 0 checksum %08x\n", checksum(data, 512));
}

/* r1: reset with reads in flight. §2.4.1: once device status reads 0 the device MUST NOT interact with the queues:
 * no used entry, no write into the buffers it was given. Eight reads of 128 KiB (the whole 1 MiB disk) are posted
 * and the device reset at once; a sample of the buffers (8 bytes at the end of each 4 KiB page, holding a canary
 * the disk does not contain) and the used index are looked at when the reset completes and again later. */
#define R_REQS 8
#define R_BYTES 0x20000U
static struct blk_req r_hdr[R_REQS];
static volatile u8 r_st[R_REQS];
static struct virtq_desc r_tables[R_REQS][3] __attribute__((aligned(16)));
#define CANARY 0xc3c3c3c3c3c3c3c3ULL

static u32 canaries_gone(void) {
  u32 n = 0;
  for (u64 a = BIG + 0xff8; a < BIG + R_REQS * R_BYTES; a += 0x1000)
    if (*(volatile u64 *)a != CANARY) n++;
  return n;
}

static void case_r1(void) {
  if (capacity < R_REQS * R_BYTES / 512) fail("case r1 needs a 1 MiB disk");
  start();
  for (u64 a = BIG + 0xff8; a < BIG + R_REQS * R_BYTES; a += 0x1000) *(volatile u64 *)a = CANARY;
  for (u16 i = 0; i < R_REQS; i++) {
    r_hdr[i] = (struct blk_req){ T_IN, 0, (u64)i * (R_BYTES / 512) };
    r_st[i] = 0xff;
    t(r_tables[i], 0, (u64)&r_hdr[i], 16, VIRTQ_DESC_F_NEXT, 1);
    t(r_tables[i], 1, BIG + (u64)i * R_BYTES, R_BYTES, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 2);
    t(r_tables[i], 2, (u64)&r_st[i], 1, VIRTQ_DESC_F_WRITE, 0);
    d(i, (u64)r_tables[i], 3 * 16, VIRTQ_DESC_F_INDIRECT, 0);
    vq.avail->ring[i] = i;
  }
  barrier();
  vq.avail->idx = R_REQS;
  barrier();
  vq_kick(&vq);
  virtio_set_status(&dev, 0);
  u64 deadline = rdtsc() + WAIT_TSC;
  while (virtio_status(&dev) != 0)
    if (rdtsc() > deadline) fail("device did not finish reset");
  u16 used_at_reset = vq.used->idx;
  u32 gone_at_reset = canaries_gone();
  /* ~0.4 s: plenty for 1 MiB of page-cache reads that were still in flight. */
  deadline = rdtsc() + 1000000000ULL;
  while (rdtsc() < deadline) __asm__ volatile("pause");
  u16 used_later = vq.used->idx;
  u32 gone_later = canaries_gone();
  printf("info: reset with %u reads in flight: at completion used idx %u, %u/256 pages written; "
         "later used idx %u, %u/256 pages written\n",
         R_REQS, used_at_reset, gone_at_reset, used_later, gone_later);
  printf("hostile: after the reset completed: %s, %s\n",
         used_later == used_at_reset ? "no used entries" : "used entries pushed",
         gone_later == gone_at_reset ? "no buffer writes" : "buffers written");
  if (used_later != used_at_reset) fail("the device pushed used entries after its reset completed (virtio 1.2 2.4.1)");
  if (gone_later != gone_at_reset)
    fail("the device wrote into the old buffers after its reset completed (virtio 1.2 2.4.1)");
}

static const struct { const char *name; void (*run)(void); } cases[] = {
  { "a1", case_a1 }, { "a2", case_a2 }, { "a3", case_a3 }, { "a4", case_a4 }, { "a5", case_a5 },
  { "b1", case_b1 }, { "b2", case_b2 }, { "c1", case_c1 }, { "c2", case_c2 }, { "d1", case_d1 },
  { "e1", case_e1 }, { "e2", case_e2 }, { "e3", case_e3 }, { "e4", case_e4 }, { "f1", case_f1 },
  { "f2", case_f2 }, { "f3", case_f3 }, { "f4", case_f4 }, { "g1", case_g1 }, { "g2", case_g2 },
  { "g3", case_g3 }, { "g4", case_g4 }, { "g5", case_g5 }, { "h1", case_h1 }, { "h2", case_h2 },
  { "h3", case_h3 }, { "i1", case_i1 }, { "i2", case_i2 }, { "j1", case_j1 }, { "r1", case_r1 },
};

static int same(const char *a, const char *b) {
  while (*b && *a == *b) { a++; b++; }
  return !*b && (*a == 0 || *a == ' ');
}

/* Reset, initialise again, and read sector 0 the correct way: the device must work after whatever happened. */
static void recover(void) {
  virtio_reinit(&dev, FEATURES);
  struct virtq q;
  virtq_setup(&dev, &q, 0, QSIZE, 0xffff);
  virtio_driver_ok(&dev);
  header(T_IN, 0);
  fill(data, 512, 0x5a);
  struct vq_buf b[3] = { { &hdr, sizeof hdr, 0 }, { data, 512, 1 }, { (const void *)&st, 1, 1 } };
  u16 head = vq_add(&q, b, 3, 0);
  vq_kick(&q);
  u32 len;
  if (vq_wait(&q, &len, "recovery read") != head) fail("recovery read: used id is not the chain posted");
  printf("hostile: recovery: read sector 0: status %u, checksum %08x, starts '", st, checksum(data, 512));
  for (int i = 0; i < 16; i++) putc(data[i] >= 0x20 && data[i] < 0x7f ? (char)data[i] : '.');
  printf("'\n");
  if (st != BLK_S_OK) fail("recovery read failed");
}

int main(struct boot_info *bi) {
  memory_map(bi);
  const char *which = cmdline_value("case");
  if (!which) fail("no case=NAME on the command line");
  void (*run)(void) = 0;
  for (unsigned i = 0; i < sizeof cases / sizeof cases[0]; i++)
    if (same(which, cases[i].name)) run = cases[i].run;
  if (!run) fail("unknown case");
  virtio_open(&dev, 2, FEATURES);
  capacity = virtio_cfg32(&dev, 0) | ((u64)virtio_cfg32(&dev, 4) << 32);
  printf("hostile: case %c%c, capacity %lu sectors\n", which[0], which[1], capacity);
  run();
  recover();
  printf("hostile: ok\n");
  return 0;
}
