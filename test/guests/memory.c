/* memory: prints the memory map it was given, writes and reads back patterns at the bottom of RAM, at the top
 * below 4 GiB and (when there is RAM there) at 4 GiB and at the very top, mapping high pages on demand. */
#include "runtime/guest.h"

#define FOUR_GIB 0x100000000ULL
#define PAGE 4096ULL

static int test_page(u64 addr) {
  if (addr >= FOUR_GIB) map_2m(addr);
  volatile u64 *p = (volatile u64 *)addr;
  for (int i = 0; i < 512; i++) p[i] = (addr + 8ULL * i) ^ 0xA5A5A5A55A5A5A5AULL;
  int ok = 1;
  for (int i = 0; i < 512; i++) if (p[i] != ((addr + 8ULL * i) ^ 0xA5A5A5A55A5A5A5AULL)) ok = 0;
  printf("memory: %s at 0x%lx\n", ok ? "ok" : "FAIL", addr);
  return ok;
}

int main(struct boot_info *bi) {
  u64 total = 0, bottom = 0, top_low = 0, first_high = 0, top_high = 0;
  u64 image_end = ((u64)_end + PAGE - 1) & ~(PAGE - 1);
  for (int i = 0; i < bi->nmem; i++) {
    struct mem_entry *e = &bi->mem[i];
    printf("memmap: base=0x%016lx size=0x%016lx type=%u\n", e->base, e->size, e->type);
    if (e->type != 1 || e->size < PAGE) continue;
    total += e->size;
    u64 end = e->base + e->size;
    if (!bottom && end > image_end + PAGE && e->base < FOUR_GIB) bottom = e->base > image_end ? e->base : image_end;
    if (e->base < FOUR_GIB && end <= FOUR_GIB && end - PAGE > top_low) top_low = (end - PAGE) & ~(PAGE - 1);
    if (e->base >= FOUR_GIB) {
      if (!first_high || e->base < first_high) first_high = e->base;
      if (end - PAGE > top_high) top_high = (end - PAGE) & ~(PAGE - 1);
    }
  }
  int places = 0, ok = 1;
  if (bottom) { ok &= test_page(bottom); places++; }
  if (top_low && top_low != bottom) { ok &= test_page(top_low); places++; }
  if (first_high) { ok &= test_page(first_high); places++; }
  if (top_high && top_high != first_high) { ok &= test_page(top_high); places++; }
  if (!ok) { printf("memory: FAILED\n"); return 1; }
  printf("memory: total RAM %lu MiB, %d places tested, all ok\n", total >> 20, places);
  return 0;
}
