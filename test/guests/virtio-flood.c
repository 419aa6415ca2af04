/* virtio-flood test guest: a driver that floods virtio-blk with one request, virtio 1.2 §2.7 (split virtqueues),
 * §2.7.10 (avail_event, VIRTIO_F_EVENT_IDX), §2.7.13 (a buffer is the device's until it is used), §2.1.2
 * (DEVICE_NEEDS_RESET).
 *
 * It builds one read request and makes its head available again each time the device has popped it (it watches
 * avail_event move), without ever waiting for the request to be used: a device that takes every re-post as a new
 * request keeps an unbounded number of them in flight, host memory growing with each. The request is an indirect
 * table of `entries` buffers of `len` bytes that all alias one guest area (defaults: 1000 × 32 KiB, a 31 MiB read
 * of sector 0), so each request costs the host a lot and the guest little. It posts at most `posts` times
 * (default 20000) and stops as soon as the device sets DEVICE_NEEDS_RESET, or when the device stops popping.
 *
 * It prints "flood: device set DEVICE_NEEDS_RESET (status 0x..) after N posts" or "flood: no reset after N posts",
 * then "flood: done", and waits (bounded, ~10 s) for a byte on COM1 before it exits 0: the host measures the
 * VMM's peak RSS while it is still running (test/integration/virtio-flood.test.ts), then lets it go. */
#include "runtime/guest.h"
#include "lib/virtio.h"

#define VIRTIO_F_EVENT_IDX 29
#define T_IN 0
#define MAX_ENTRIES 4096
/* Scratch RAM outside the guest image for the data buffer (the test gives the guest 256 MiB). */
#define BIG 0x01000000ULL
#define MAX_LEN 0x00100000ULL
#define COM1 0x3f8

static struct virtio_dev dev;
static struct virtq vq;
static struct blk_req hdr;
static volatile u8 st;
static struct virtq_desc table[MAX_ENTRIES + 2] __attribute__((aligned(16)));

static inline void mmio_write16(u64 a, u16 v) { *(volatile u16 *)a = v; }

int main(struct boot_info *bi) {
  (void)bi;
  u64 posts = cmdline_number("posts", 20000);
  u64 entries = cmdline_number("entries", 1000);
  u64 len = cmdline_number("len", 32768);
  if (entries < 1 || entries > MAX_ENTRIES || len < 512 || len > MAX_LEN || len % 512)
    fail("entries must be 1..4096 and len a multiple of 512 up to 1 MiB");

  virtio_open(&dev, 2, (1ULL << VIRTIO_F_EVENT_IDX) | (1ULL << VIRTIO_F_INDIRECT_DESC));
  if (!(dev.features & (1ULL << VIRTIO_F_EVENT_IDX))) fail("VIRTIO_F_EVENT_IDX not offered");
  if (!(dev.features & (1ULL << VIRTIO_F_INDIRECT_DESC))) fail("VIRTIO_F_INDIRECT_DESC not offered");
  virtq_setup(&dev, &vq, 0, 64, 0xffff);
  virtio_driver_ok(&dev);
  u64 capacity = virtio_cfg32(&dev, 0) | ((u64)virtio_cfg32(&dev, 4) << 32);
  if (capacity * 512 < entries * len) fail("disk smaller than one request");

  /* header, `entries` writable buffers all at BIG, status byte */
  hdr.type = T_IN;
  hdr.reserved = 0;
  hdr.sector = 0;
  st = 0xff;
  u32 n = (u32)entries + 2;
  table[0] = (struct virtq_desc){ (u64)&hdr, sizeof hdr, VIRTQ_DESC_F_NEXT, 1 };
  for (u32 i = 1; i <= entries; i++)
    table[i] = (struct virtq_desc){ BIG, (u32)len, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, (u16)(i + 1) };
  table[n - 1] = (struct virtq_desc){ (u64)&st, 1, VIRTQ_DESC_F_WRITE, 0 };
  const u16 head = 0;
  vq.desc[head].addr = (u64)table;
  vq.desc[head].len = 16 * n;
  vq.desc[head].flags = VIRTQ_DESC_F_INDIRECT;
  vq.desc[head].next = 0;
  printf("flood: one request of %lu x %lu bytes, posted up to %lu times\n", entries, len, posts);

  u64 done = 0;
  u8 status = 0;
  while (done < posts) {
    vq.avail->ring[vq.avail_idx % vq.size] = head;
    barrier();
    vq.avail->idx = ++vq.avail_idx;
    barrier();
    mmio_write16(vq.notify_addr, vq.index);
    done++;
    /* The device moves avail_event past the entry once it popped it (§2.7.10): then post again at once. */
    u64 deadline = rdtsc() + WAIT_TSC;
    u32 spins = 0;
    while (vq.used->avail_event != vq.avail_idx) {
      if (++spins % 256 == 0) { /* each status read is an exit: poll RAM in between */
        status = virtio_status(&dev);
        if (status & S_NEEDS_RESET) break;
        if (rdtsc() > deadline) break;
      }
      __asm__ volatile("pause");
    }
    barrier();
    status = virtio_status(&dev);
    if (status & S_NEEDS_RESET) break;
    if (vq.used->avail_event != vq.avail_idx) break; /* the device stopped popping */
  }
  if (status & S_NEEDS_RESET)
    printf("flood: device set DEVICE_NEEDS_RESET (status 0x%x) after %lu posts\n", status, done);
  else
    printf("flood: no reset after %lu posts (status 0x%x, used idx %u)\n", done, status, vq.used->idx);
  printf("flood: done\n");

  /* The host reads the VMM's peak RSS now, then sends a byte (or ~10 s pass). */
  u64 deadline = rdtsc() + WAIT_TSC;
  while (!(inb(COM1 + 5) & 1) && rdtsc() < deadline) __asm__ volatile("pause");
  return 0;
}
