/* virtio-input test guest: virtio 1.2 §5.8 (input device). Finds the first virtio-input function (it must be the
 * tablet: put it before a keyboard), prints its configuration (§5.8.4: name, device IDs, property bits, EV_BITS
 * of each event type, ABS_INFO of X and Y), then posts eventq buffers and prints every event the device delivers
 * (§5.8.6) until it has seen a BTN_LEFT press; exits 0 then. With configonly=1 it stops after the configuration
 * (QEMU: nothing sends it events). Polling only, like the other virtio guests. */
#include "runtime/guest.h"
#include "lib/virtio.h"

#define VIRTIO_ID_INPUT 18
#define CFG_SELECT 0
#define CFG_SUBSEL 1
#define CFG_SIZE 2
#define CFG_UNION 8
#define SEL_ID_NAME 0x01
#define SEL_ID_DEVIDS 0x03
#define SEL_PROP_BITS 0x10
#define SEL_EV_BITS 0x11
#define SEL_ABS_INFO 0x12
#define EV_KEY 1
#define BTN_LEFT 0x110
#define EVENT_BUFFERS 8

static struct virtio_dev dev;
static struct virtq evq;
static u8 events[EVENT_BUFFERS][8];

/* §5.8.5.1: the driver writes select and subsel, then reads size (0: the device has no such information). */
static u32 cfg_select(u8 select, u8 subsel) {
  *(volatile u8 *)(dev.device + CFG_SELECT) = select;
  *(volatile u8 *)(dev.device + CFG_SUBSEL) = subsel;
  u32 size = virtio_cfg8(&dev, CFG_SIZE);
  if (size > 128) fail("input: config size over 128");
  return size;
}

static u8 cfg_byte(u32 at) { return virtio_cfg8(&dev, CFG_UNION + at); }
static u32 cfg_u16(u32 at) { return cfg_byte(at) | (u32)cfg_byte(at + 1) << 8; }

static void print_bits(u8 type) {
  u32 size = cfg_select(SEL_EV_BITS, type);
  printf("input: ev_bits type=%u size=%u bits=", type, size);
  int first = 1;
  for (u32 i = 0; i < size; i++) {
    u8 b = cfg_byte(i);
    for (u32 bit = 0; bit < 8; bit++)
      if (b & (1u << bit)) {
        printf(first ? "%u" : ",%u", i * 8 + bit);
        first = 0;
      }
  }
  printf("\n");
}

static void print_config(void) {
  u32 size = cfg_select(SEL_ID_NAME, 0);
  char name[129];
  for (u32 i = 0; i < size; i++) name[i] = (char)cfg_byte(i);
  name[size] = 0;
  printf("input: name=%s\n", name);
  if (cfg_select(SEL_ID_DEVIDS, 0) != 8) fail("input: ID_DEVIDS is not 8 bytes");
  u32 product = cfg_u16(4);
  printf("input: devids bustype=0x%04x vendor=0x%04x product=0x%04x version=0x%04x\n", cfg_u16(0), cfg_u16(2),
         product, cfg_u16(6));
  printf("input: prop_bits size=%u\n", cfg_select(SEL_PROP_BITS, 0));
  print_bits(EV_KEY);
  print_bits(2);    /* EV_REL */
  print_bits(3);    /* EV_ABS */
  print_bits(0x11); /* EV_LED */
  print_bits(0x14); /* EV_REP */
  for (u8 axis = 0; axis < 2; axis++) {
    u32 n = cfg_select(SEL_ABS_INFO, axis);
    u32 v[5] = { 0 };
    for (u32 i = 0; i < 5 && 4 * i + 3 < n; i++)
      v[i] = cfg_byte(4 * i) | (u32)cfg_byte(4 * i + 1) << 8 | (u32)cfg_byte(4 * i + 2) << 16 |
             (u32)cfg_byte(4 * i + 3) << 24;
    printf("input: abs_info axis=%u size=%u min=%d max=%d fuzz=%d flat=%d res=%d\n", axis, n, (int)v[0],
           (int)v[1], (int)v[2], (int)v[3], (int)v[4]);
  }
  printf("input: unknown select size=%u\n", cfg_select(0x7f, 0));
  if (product != 3) fail("input: the first virtio-input device is not a tablet (product 3)");
}

int main(struct boot_info *bi) {
  (void)bi;
  virtio_open(&dev, VIRTIO_ID_INPUT, 0);
  print_config();
  const char *only = cmdline_value("configonly");
  if (only && only[0] == '1') {
    printf("input: ok\n");
    return 0;
  }
  virtq_setup(&dev, &evq, 0, EVENT_BUFFERS, 0xffff);
  for (int i = 0; i < EVENT_BUFFERS; i++) {
    struct vq_buf b = { events[i], 8, 1 };
    vq_add(&evq, &b, 1, 0);
  }
  virtio_driver_ok(&dev);
  vq_kick(&evq);
  printf("input: ready\n");
  for (int n = 0; n < 1000; n++) {
    u32 len;
    u16 id = vq_wait(&evq, &len, "event");
    if (len != 8) fail("input: an event buffer came back with used length other than 8");
    /* One descriptor per buffer: the freed descriptor still holds the address of the buffer the event is in. */
    const u8 *e = (const u8 *)evq.desc[id].addr;
    u32 type = e[0] | (u32)e[1] << 8;
    u32 code = e[2] | (u32)e[3] << 8;
    int value = (int)(e[4] | (u32)e[5] << 8 | (u32)e[6] << 16 | (u32)e[7] << 24);
    printf("event type=%u code=%u value=%d\n", type, code, value);
    struct vq_buf b = { e, 8, 1 };
    vq_add(&evq, &b, 1, 0);
    vq_kick(&evq);
    if (type == EV_KEY && code == BTN_LEFT && value == 1) {
      printf("input: ok\n");
      return 0;
    }
  }
  fail("input: 1000 events without a BTN_LEFT press");
}
