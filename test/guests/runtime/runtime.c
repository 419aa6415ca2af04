/* Boot-info normalisation (PVH start_info, multiboot info), COM1 output, printf, cmdline, page mapping. */
#include "guest.h"
#include <stdarg.h>

#define COM1 0x3f8
static struct boot_info info;

void putc(char c) {
  while (!(inb(COM1 + 5) & 0x20)) {}
  outb(COM1, (u8)c);
}
void puts(const char *s) { while (*s) putc(*s++); }

static void put_num(u64 v, unsigned base, int width, char pad) {
  char buf[32];
  int n = 0;
  do { buf[n++] = "0123456789abcdef"[v % base]; v /= base; } while (v);
  while (n < width) buf[n++] = pad;
  while (n) putc(buf[--n]);
}

void printf(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  for (; *fmt; fmt++) {
    if (*fmt != '%') { putc(*fmt); continue; }
    fmt++;
    char pad = ' ';
    int width = 0, longs = 0;
    if (*fmt == '0') { pad = '0'; fmt++; }
    while (*fmt >= '0' && *fmt <= '9') width = width * 10 + (*fmt++ - '0');
    while (*fmt == 'l') { longs++; fmt++; }
    u64 v;
    switch (*fmt) {
      case 's': puts(va_arg(ap, const char *)); break;
      case 'c': putc((char)va_arg(ap, int)); break;
      case 'u': case 'x':
        v = longs ? va_arg(ap, u64) : va_arg(ap, u32);
        put_num(v, *fmt == 'x' ? 16 : 10, width, pad);
        break;
      case 'd': {
        long long s = longs ? va_arg(ap, long long) : va_arg(ap, int);
        if (s < 0) { putc('-'); s = -s; }
        put_num((u64)s, 10, width, pad);
        break;
      }
      default: putc('%'); putc(*fmt);
    }
  }
  va_end(ap);
}

void exit(u32 value) {
  outl(0xf4, value);
  for (;;) __asm__ volatile("cli; hlt");
}

const char *cmdline_value(const char *key) {
  const char *s = info.cmdline;
  if (!s) return 0;
  while (*s) {
    while (*s == ' ') s++;
    const char *k = key, *t = s;
    while (*k && *t == *k) { k++; t++; }
    if (!*k && *t == '=') return t + 1;
    while (*s && *s != ' ') s++;
  }
  return 0;
}

u64 cmdline_number(const char *key, u64 fallback) {
  const char *v = cmdline_value(key);
  if (!v || *v < '0' || *v > '9') return fallback;
  u64 n = 0;
  while (*v >= '0' && *v <= '9') n = n * 10 + (u64)(*v++ - '0');
  return n;
}

/* Extra page directories for mappings above the first 4 GiB, one per 1 GiB region touched. */
extern u64 pdpt[512];
static u64 pd_pool[16][512] __attribute__((aligned(4096)));
static int pd_used;

void map_2m(u64 address) {
  u64 gib = address >> 30;
  if (gib >= 512) { puts("map_2m: address beyond 512 GiB\n"); exit(0x7f); }
  if (!(pdpt[gib] & 1)) {
    if (pd_used == 16) { puts("map_2m: out of page directories\n"); exit(0x7f); }
    u64 *pd = pd_pool[pd_used++];
    pdpt[gib] = (u64)pd | 3;
    (void)pd;
  }
  u64 *pd = (u64 *)(pdpt[gib] & ~0xfffULL);
  pd[(address >> 21) & 511] = (address & ~0x1fffffULL) | 0x83;
  __asm__ volatile("invlpg (%0)" : : "r"(address) : "memory");
}

static void serial_init(void) {
  outb(COM1 + 1, 0x00);            /* no interrupts */
  outb(COM1 + 3, 0x80);            /* DLAB */
  outb(COM1 + 0, 0x01);            /* 115200 baud */
  outb(COM1 + 1, 0x00);
  outb(COM1 + 3, 0x03);            /* 8N1 */
  outb(COM1 + 2, 0x07);            /* FIFO on, cleared */
  outb(COM1 + 4, 0x03);            /* DTR, RTS */
}

static void parse_pvh(u32 addr) {
  const u32 *si = (const u32 *)(u64)addr;
  if (si[0] != 0x336ec578) { puts("bad hvm_start_info magic\n"); exit(0x7e); }
  const u64 *si64 = (const u64 *)(u64)addr;
  info.cmdline = (const char *)si64[3];           /* offset 24 */
  u32 nmods = si[3];
  const u64 *mods = (const u64 *)si64[2];        /* offset 16 */
  for (u32 i = 0; i < nmods && i < MAX_MODS; i++) {
    info.mods[i].start = mods[4 * i];
    info.mods[i].size = mods[4 * i + 1];
    info.mods[i].cmdline = (const char *)mods[4 * i + 2];
    info.nmods++;
  }
  if (si[1] >= 1) {
    const u8 *map = (const u8 *)si64[5];          /* offset 40 */
    u32 n = si[12];                               /* offset 48 */
    for (u32 i = 0; i < n && i < MAX_MEM; i++) {
      const u8 *e = map + 24 * i;
      info.mem[i].base = *(const u64 *)e;
      info.mem[i].size = *(const u64 *)(e + 8);
      info.mem[i].type = *(const u32 *)(e + 16);
      info.nmem++;
    }
  }
}

static void parse_multiboot(u32 addr) {
  const u32 *mbi = (const u32 *)(u64)addr;
  u32 flags = mbi[0];
  if (flags & (1 << 2)) info.cmdline = (const char *)(u64)mbi[4];
  if (flags & (1 << 3)) {
    const u32 *m = (const u32 *)(u64)mbi[6];
    for (u32 i = 0; i < mbi[5] && i < MAX_MODS; i++) {
      info.mods[i].start = m[4 * i];
      info.mods[i].size = m[4 * i + 1] - m[4 * i];
      info.mods[i].cmdline = (const char *)(u64)m[4 * i + 2];
      info.nmods++;
    }
  }
  if (flags & (1 << 6)) {
    const u8 *p = (const u8 *)(u64)mbi[12], *end = p + mbi[11];
    while (p < end && info.nmem < MAX_MEM) {
      u32 size = *(const u32 *)p;
      info.mem[info.nmem].base = *(const u64 *)(p + 4);
      info.mem[info.nmem].size = *(const u64 *)(p + 12);
      info.mem[info.nmem].type = *(const u32 *)(p + 20);
      info.nmem++;
      p += size + 4;
    }
  }
}

void c_entry(u32 protocol, u32 addr) {
  serial_init();
  info.protocol = (int)protocol;
  if (protocol == PROTO_PVH) parse_pvh(addr);
  else parse_multiboot(addr);
  if (!info.cmdline) info.cmdline = "";
  exit((u32)main(&info));
}

__attribute__((weak)) void interrupt_handler(int vector) { (void)vector; }
