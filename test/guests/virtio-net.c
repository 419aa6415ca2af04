/* virtio-net test guest: virtio 1.2 §5.1 (network device) without offloads or mergeable buffers, so every
 * buffer starts with the 12-byte struct virtio_net_hdr (§5.1.6, VERSION_1). Prints the MAC from the device
 * configuration, posts receive buffers, sends one broadcast frame (ethertype 0x88b5, "partita-net-test"),
 * then waits for the host's reply frame addressed to it and prints its payload. */
#include "runtime/guest.h"
#include "lib/virtio.h"

#define VIRTIO_NET_F_MAC 5
#define HDR 12
#define RXBUFS 4
#define RXLEN (HDR + 1514)

static struct virtio_dev dev;
static struct virtq rx, tx;
static u8 rxbuf[RXBUFS][2048];
static u8 txhdr[HDR];
static u8 frame[60];
static u8 mac[6];

static void print_mac(const u8 *m) {
  printf("%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5]);
}

int main(struct boot_info *bi) {
  (void)bi;
  virtio_open(&dev, 1, 1ULL << VIRTIO_NET_F_MAC);
  if (!(dev.features & (1ULL << VIRTIO_NET_F_MAC))) fail("net: device has no MAC address (VIRTIO_NET_F_MAC)");
  for (int i = 0; i < 6; i++) mac[i] = virtio_cfg8(&dev, (u32)i);
  printf("net: mac ");
  print_mac(mac);
  printf("\n");
  virtq_setup(&dev, &rx, 0, 16, 0xffff);
  virtq_setup(&dev, &tx, 1, 16, 0xffff);
  virtio_driver_ok(&dev);

  for (int i = 0; i < RXBUFS; i++) {
    struct vq_buf b = { rxbuf[i], RXLEN, 1 };
    vq_add(&rx, &b, 1, 0);
  }
  vq_kick(&rx);

  memset(frame, 0, sizeof frame); /* padded to the 60-byte Ethernet minimum */
  memset(frame, 0xff, 6);
  memcpy(frame + 6, mac, 6);
  frame[12] = 0x88;
  frame[13] = 0xb5;
  memcpy(frame + 14, "partita-net-test", 16);
  struct vq_buf t[2] = { { txhdr, HDR, 0 }, { frame, sizeof frame, 0 } };
  vq_add(&tx, t, 2, 0);
  vq_kick(&tx);
  u32 len;
  vq_wait(&tx, &len, "net transmit");
  printf("net: sent %u-byte frame\n", (u32)sizeof frame);

  /* Frames that are not ours (other ethertypes, other destinations) go back to the device. */
  for (int n = 0; n < 8; n++) {
    u16 id = vq_wait(&rx, &len, "net receive");
    u8 *b = (u8 *)rx.desc[id].addr;
    if (len < HDR + 14 || len > RXLEN) {
      printf("FAIL: net: received %u bytes\n", len);
      exit(FAIL_EXIT);
    }
    u8 *f = b + HDR;
    int ours = f[12] == 0x88 && f[13] == 0xb5;
    for (int i = 0; i < 6; i++)
      if (f[i] != mac[i]) ours = 0;
    if (!ours) {
      printf("net: ignored a %u-byte frame\n", len - HDR);
      struct vq_buf again = { b, RXLEN, 1 };
      vq_add(&rx, &again, 1, 0);
      vq_kick(&rx);
      continue;
    }
    char payload[64];
    u32 plen = len - HDR - 14;
    if (plen > 63) plen = 63;
    u32 k = 0;
    while (k < plen && f[14 + k] >= 0x20 && f[14 + k] < 0x7f) {
      payload[k] = (char)f[14 + k];
      k++;
    }
    payload[k] = 0;
    printf("net: received %u-byte frame from ", len - HDR);
    print_mac(f + 6);
    printf(": '%s'\n", payload);
    printf("net: ok\n");
    return 0;
  }
  fail("net: no frame for us among 8 received");
}
