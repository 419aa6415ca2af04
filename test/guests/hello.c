/* hello: greets over COM1, reports how it was booted and its command line, exits with exit=N. */
#include "runtime/guest.h"

int main(struct boot_info *bi) {
  printf("Hello from a Partita test guest\n");
  printf("boot protocol: %s\n", bi->protocol == PROTO_PVH ? "pvh" : "multiboot");
  printf("cmdline: %s\n", bi->cmdline);
  for (int i = 0; i < bi->nmods; i++) {
    const u8 *m = (const u8 *)bi->mods[i].start;
    u32 sum = 0;
    for (u64 j = 0; j < bi->mods[i].size; j++) sum = sum * 31 + m[j];
    printf("module %d: %s size=%lu at 0x%lx checksum=%x\n", i, bi->mods[i].cmdline ? bi->mods[i].cmdline : "", bi->mods[i].size, bi->mods[i].start, sum);
  }
  return (int)cmdline_number("exit", 0);
}
