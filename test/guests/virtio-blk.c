/* virtio-blk test guest: virtio 1.2 §5.2 (block device). Reads sector 0, GET_ID, writes sectors 1..8 in one
 * request (indirect table when offered), FLUSH, reads them back; proves MSI-X delivery through the LAPIC IRR
 * with interrupts kept disabled (no IDT needed). Prints "blk: ok" and exits 0 on success. With readonly=1 on
 * the command line the disk must offer VIRTIO_BLK_F_RO and refuse the write with IOERR instead. */
#include "runtime/guest.h"
#include "lib/virtio.h"

#define VIRTIO_BLK_F_RO 5
#define VIRTIO_BLK_F_FLUSH 9
#define T_IN 0
#define T_OUT 1
#define T_FLUSH 4
#define T_GET_ID 8

#define LAPIC 0xfee00000ULL
#define MSIX_VECTOR 0x41

static struct virtio_dev dev;
static struct virtq vq;
static struct blk_req hdr;
static volatile u8 st;
static u8 data[4096] __attribute__((aligned(4096)));
static char id[21];

/* One request: header, optional data buffer(s), status byte. Returns the status the device wrote. */
static u8 request(u32 type, u64 sector, void *buf, u32 len, int writable, int split, int indirect, const char *what) {
  struct vq_buf b[4];
  int n = 0;
  hdr.type = type;
  hdr.reserved = 0;
  hdr.sector = sector;
  st = 0xff;
  b[n++] = (struct vq_buf){ &hdr, sizeof hdr, 0 };
  if (len && split) { /* data in two descriptors: exercises multi-segment data */
    b[n++] = (struct vq_buf){ buf, len / 2, writable };
    b[n++] = (struct vq_buf){ (u8 *)buf + len / 2, len - len / 2, writable };
  } else if (len) {
    b[n++] = (struct vq_buf){ buf, len, writable };
  }
  b[n++] = (struct vq_buf){ (const void *)&st, 1, 1 };
  u16 head = vq_add(&vq, b, n, indirect);
  vq_kick(&vq);
  u32 used_len;
  u16 got = vq_wait(&vq, &used_len, what);
  if (got != head) {
    printf("FAIL: %s: used id %u, expected %u\n", what, got, head);
    exit(FAIL_EXIT);
  }
  printf("blk: %s: %d descriptors%s, status %u\n", what, n, indirect ? " (indirect)" : "", st);
  return st;
}

static u8 pattern(u32 i, u64 sector) { return (u8)((i * 7 + sector) & 0xff); }

int main(struct boot_info *bi) {
  (void)bi;
  /* LAPIC software-enabled so a fixed interrupt is accepted into IRR; IF stays 0, so it is never taken. */
  map_2m(LAPIC);
  mmio_write32(LAPIC + 0xf0, mmio_read32(LAPIC + 0xf0) | 0x100);

  u64 readonly = cmdline_number("readonly", 0);
  virtio_open(&dev, 2, (1ULL << VIRTIO_BLK_F_RO) | (1ULL << VIRTIO_BLK_F_FLUSH) | (1ULL << VIRTIO_F_INDIRECT_DESC));
  if (!readonly != !(dev.features & (1ULL << VIRTIO_BLK_F_RO))) fail(readonly ? "disk is not read-only" : "disk is read-only");
  virtio_msix_setup(&dev, 0, MSIX_VECTOR);
  virtq_setup(&dev, &vq, 0, 16, 0);
  virtio_driver_ok(&dev);
  u64 capacity = virtio_cfg32(&dev, 0) | ((u64)virtio_cfg32(&dev, 4) << 32);
  printf("blk: capacity %lu sectors\n", capacity);
  if (capacity < 9) fail("disk smaller than 9 sectors");

  /* Sector 0: the host wrote a known pattern there. */
  if (request(T_IN, 0, data, 512, 1, 0, 0, "read sector 0")) fail("read sector 0 failed");
  u32 sum = 0;
  for (int i = 0; i < 512; i++) sum = sum * 31 + data[i];
  printf("blk: sector 0:");
  for (int i = 0; i < 16; i++) printf(" %02x", data[i]);
  printf(" checksum %08x\n", sum);

  /* The completion above was signalled with MSI-X vector 0: with IF=0 it waits in the IRR. */
  u64 irr = LAPIC + 0x200 + 0x10 * (MSIX_VECTOR / 32), bit = 1u << (MSIX_VECTOR % 32);
  u64 deadline = rdtsc() + WAIT_TSC;
  while (!(mmio_read32(irr) & bit))
    if (rdtsc() > deadline) fail("msix: vector 0x41 never reached the LAPIC IRR");
  printf("msix: delivered\n");

  memset(id, 0, sizeof id);
  if (request(T_GET_ID, 0, id, 20, 1, 0, 0, "get id")) fail("GET_ID failed");
  printf("blk: serial '%s'\n", id);

  for (u32 i = 0; i < 4096; i++) data[i] = pattern(i % 512, 1 + i / 512);
  int indirect = (dev.features >> VIRTIO_F_INDIRECT_DESC) & 1;
  u8 ws = request(T_OUT, 1, data, 4096, 0, 1, indirect, "write sectors 1-8");
  if (readonly) {
    /* §5.2.6.2: a write to a read-only device fails (IOERR); the image must not change. */
    if (ws != 1) fail("write to a read-only disk did not return VIRTIO_BLK_S_IOERR");
    printf("blk: write refused: IOERR\nblk: ok\n");
    return 0;
  }
  if (ws) fail("write failed");

  if (dev.features & (1ULL << VIRTIO_BLK_F_FLUSH)) {
    if (request(T_FLUSH, 0, 0, 0, 0, 0, 0, "flush")) fail("flush failed");
  } else {
    printf("blk: flush not offered\n");
  }

  memset(data, 0, sizeof data);
  if (request(T_IN, 1, data, 4096, 1, 0, 0, "read sectors 1-8")) fail("read back failed");
  for (u32 i = 0; i < 4096; i++) {
    if (data[i] != pattern(i % 512, 1 + i / 512)) {
      printf("FAIL: read back: byte %u of sectors 1-8 is %02x, wrote %02x\n", i, data[i], pattern(i % 512, 1 + i / 512));
      exit(FAIL_EXIT);
    }
  }

  /* Out-of-range sector: the device must answer with an error status, not crash or hang. */
  u8 s = request(T_IN, capacity, data, 512, 1, 0, 0, "read past the end");
  printf("blk: read past the end: %s\n", s == 1 ? "IOERR" : s == 0 ? "ok?!" : "other");
  if (s != 1) fail("read past the end did not return VIRTIO_BLK_S_IOERR");

  printf("blk: ok\n");
  return 0;
}
