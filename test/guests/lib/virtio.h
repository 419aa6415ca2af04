/* Mini virtio-pci driver for the test guests: virtio 1.2 §4.1 (PCI transport), §3.1.1 (initialization),
 * §2.7 (split virtqueues). Just enough to drive one device by polling; every wait is bounded and a failure
 * prints one "FAIL: ..." line and exits with FAIL_EXIT, so a broken VMM shows up as a clear test failure. */
#ifndef VIRTIO_LIB_H
#define VIRTIO_LIB_H
#include "../runtime/guest.h"

#define FAIL_EXIT 0x20 /* debug-exit status 0x41 on both VMMs */

#define VIRTIO_VENDOR 0x1af4
#define VIRTIO_F_INDIRECT_DESC 28
#define VIRTIO_F_VERSION_1 32

#define VIRTQ_DESC_F_NEXT 1
#define VIRTQ_DESC_F_WRITE 2
#define VIRTQ_DESC_F_INDIRECT 4

/* struct virtio_pci_common_cfg offsets (§4.1.4.3) */
#define C_DFSELECT 0x00
#define C_DF 0x04
#define C_GFSELECT 0x08
#define C_GF 0x0c
#define C_STATUS 0x14
#define C_Q_SELECT 0x16
#define C_Q_SIZE 0x18
#define C_Q_MSIX 0x1a
#define C_Q_ENABLE 0x1c
#define C_Q_NOFF 0x1e
#define C_Q_DESC 0x20
#define C_Q_DRIVER 0x28
#define C_Q_DEVICE 0x30

#define S_ACKNOWLEDGE 1
#define S_DRIVER 2
#define S_DRIVER_OK 4
#define S_FEATURES_OK 8
#define S_NEEDS_RESET 0x40

#define VQ_MAX_SIZE 64
#define VQ_INDIRECT_MAX 16

#define barrier() __asm__ volatile("" : : : "memory")

void *memset(void *d, int c, unsigned long n);
void *memcpy(void *d, const void *s, unsigned long n);
__attribute__((noreturn)) void fail(const char *msg);
u64 cmdline_hex(const char *key, u64 fallback);

/* ---- PCI (bus 0): ECAM, or configuration mechanism #1 when ECAM is absent ---- */
struct pci_fn {
  u8 slot, fn;
  u64 bar_base[6]; /* cached by pci_bar(); 0 = not yet looked at */
  u64 bar_size[6];
};
void pci_init(void);
u32 pci_read(const struct pci_fn *f, u32 off, int size);
void pci_write(const struct pci_fn *f, u32 off, int size, u32 value);
int pci_find(u16 vendor, u16 device, struct pci_fn *out); /* 0 when found */
u64 pci_bar(struct pci_fn *f, int bar);                  /* base of memory BAR, assigned if needed */
u8 pci_find_cap(const struct pci_fn *f, u8 id, u8 start); /* offset of the next cap with id after start */

/* ---- virtio device ---- */
struct virtio_dev {
  struct pci_fn pci;
  u64 common, isr, device, notify;
  u32 notify_mult;
  u8 msix_cap;
  u64 features; /* negotiated */
};

struct virtq_desc { u64 addr; u32 len; u16 flags; u16 next; };
struct virtq_avail { u16 flags; u16 idx; u16 ring[VQ_MAX_SIZE]; u16 used_event; };
struct virtq_used_elem { u32 id; u32 len; };
struct virtq_used { u16 flags; u16 idx; struct virtq_used_elem ring[VQ_MAX_SIZE]; u16 avail_event; };

struct virtq {
  struct virtio_dev *dev;
  u16 index, size, free_head, num_free, avail_idx, last_used;
  u64 notify_addr;
  volatile struct virtq_desc *desc;
  volatile struct virtq_avail *avail;
  volatile struct virtq_used *used;
  struct virtq_desc *indirect; /* one indirect table per queue; at most one indirect chain in flight */
  int indirect_busy;
};

struct vq_buf { const void *addr; u32 len; int writable; };

/* virtio 1.2 §5.2.6: the device-readable header of a virtio-blk request */
struct blk_req { u32 type; u32 reserved; u64 sector; };

/* Finds the device (vendor 0x1af4, id 0x1040 + type), walks its virtio capabilities, maps its BARs, resets it
 * and negotiates wanted & offered features (VERSION_1 is required) up to FEATURES_OK. */
void virtio_open(struct virtio_dev *d, u16 type, u64 wanted);
/* Queue setup (§4.1.5.1.3) with size min(device max, want); msix_vector 0xffff for none. */
void virtq_setup(struct virtio_dev *d, struct virtq *q, u16 index, u16 want, u16 msix_vector);
void virtio_driver_ok(struct virtio_dev *d);
/* Device reset and §3.1.1 steps 1-6 again (what virtio_open does after finding the device): re-initialises a
 * device that was already opened, e.g. after it set DEVICE_NEEDS_RESET. */
void virtio_reinit(struct virtio_dev *d, u64 wanted);
u8 virtio_status(struct virtio_dev *d);
void virtio_set_status(struct virtio_dev *d, u8 s);
u8 virtio_isr(struct virtio_dev *d); /* reading the ISR status clears it (§4.1.4.5) */
u8 virtio_cfg8(struct virtio_dev *d, u32 off);
u32 virtio_cfg32(struct virtio_dev *d, u32 off);
/* MSI-X: enable the function, program table entry `entry` to (LAPIC dest 0, vector), unmasked. */
void virtio_msix_setup(struct virtio_dev *d, u16 entry, u8 vector);

/* Makes a chain of n buffers available (in an indirect table when `indirect`); returns its head id. */
u16 vq_add(struct virtq *q, const struct vq_buf *bufs, int n, int indirect);
void vq_kick(struct virtq *q);
/* Waits (bounded) for the next used element; returns its id, stores the written length. */
u16 vq_wait(struct virtq *q, u32 *len, const char *what);

static inline u64 rdtsc(void) {
  u32 lo, hi;
  __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
  return ((u64)hi << 32) | lo;
}
/* A hang guard, not a speed limit: ~2 minutes at 2.5 GHz (the emulated CPU runs ~1-2 MIPS, the TSC runs in host
 * time, and the host may be busy). A device that answers at all answers long before; a passing run never waits
 * this long, and it stays below the test's own hang guard so the guest's FAIL line is what gets reported. */
#define WAIT_TSC 300000000000ULL
#endif
