/* virtio-console test guest: virtio 1.2 §5.3 (console device), single port without MULTIPORT: receiveq0 is
 * queue 0, transmitq0 queue 1. Writes a greeting in one descriptor, then a longer message as two chains of
 * several descriptors each made available together; the host checks what reached its file. */
#include "runtime/guest.h"
#include "lib/virtio.h"

static struct virtio_dev dev;
static struct virtq rx, tx;
static u8 rxbuf[64];
static const char hello[] = "hello from virtio-console\n";
static char lines[8][64];

static u32 len_of(const char *s) {
  u32 n = 0;
  while (s[n]) n++;
  return n;
}

int main(struct boot_info *bi) {
  (void)bi;
  virtio_open(&dev, 3, 0);
  virtq_setup(&dev, &rx, 0, 16, 0xffff);
  virtq_setup(&dev, &tx, 1, 16, 0xffff);
  virtio_driver_ok(&dev);
  /* A receive buffer, as a driver would have; the host sends nothing, it stays posted. */
  struct vq_buf r = { rxbuf, sizeof rxbuf, 1 };
  vq_add(&rx, &r, 1, 0);
  vq_kick(&rx);

  struct vq_buf h = { hello, len_of(hello), 0 };
  vq_add(&tx, &h, 1, 0);
  vq_kick(&tx);
  u32 len;
  vq_wait(&tx, &len, "console greeting");
  printf("console: greeting sent\n");

  /* "console line N: ..." x 8; lines 0-3 one descriptor each in chain A, lines 4-7 two per descriptor in B. */
  static const char text[] = ": the quick brown fox jumps over the lazy dog\n";
  for (int i = 0; i < 8; i++) {
    char *p = lines[i];
    const char *pre = "console line ";
    while (*pre) *p++ = *pre++;
    *p++ = (char)('0' + i);
    for (const char *t = text; *t; t++) *p++ = *t;
    *p = 0;
  }
  u32 l = len_of(lines[0]);
  for (int i = 1; i < 8; i++)
    if (len_of(lines[i]) != l) fail("console: line lengths differ");
  /* lines[] rows are 64 bytes apart: pack lines 4..7 pairwise so one descriptor holds two of them. */
  static char pairs[2][128];
  for (int k = 0; k < 2; k++) {
    memcpy(pairs[k], lines[4 + 2 * k], l);
    memcpy(pairs[k] + l, lines[5 + 2 * k], l);
  }
  struct vq_buf a[4], b[2];
  for (int i = 0; i < 4; i++) a[i] = (struct vq_buf){ lines[i], l, 0 };
  for (int k = 0; k < 2; k++) b[k] = (struct vq_buf){ pairs[k], 2 * l, 0 };
  vq_add(&tx, a, 4, 0);
  vq_add(&tx, b, 2, 0);
  vq_kick(&tx);
  vq_wait(&tx, &len, "console chain A");
  vq_wait(&tx, &len, "console chain B");
  printf("console: sent %u bytes in 3 chains\n", len_of(hello) + 8 * l);
  printf("console: ok\n");
  return 0;
}
