/* smp: the BSP reads the CPUs from the ACPI MADT and, separately, from the MP table, wakes every application
 * processor with INIT/SIPI (in-kernel LAPIC), and each AP reports its APIC ID and its CPUID topology view
 * (leaf 1 and leaf 0xB). The BSP checks that everything agrees and prints a summary. Needs trampoline.S. */
#include "runtime/guest.h"

#define LAPIC 0xfee00000ULL
#define TRAMPOLINE_BASE 0x10000
#define MAX_CPUS 256

extern char ap_trampoline[], ap_trampoline_end[];
struct report { volatile u32 seen, apic, x2apic, smt_shift, core_shift, smt_count, core_count, logical; };
static struct report reports[MAX_CPUS];
static volatile u32 online;
static volatile u32 in_main; /* CPUs that entered main(): only the BSP may, APs start in the trampoline */

static void cpuid(u32 leaf, u32 sub, u32 *a, u32 *b, u32 *c, u32 *d) {
  __asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(sub));
}

static void describe_self(struct report *r) {
  u32 a, b, c, d, max;
  cpuid(0, 0, &max, &b, &c, &d);
  cpuid(1, 0, &a, &b, &c, &d);
  r->apic = b >> 24;
  r->logical = (b >> 16) & 0xff;
  r->x2apic = r->apic;
  if (max >= 0xb) {
    cpuid(0xb, 0, &a, &b, &c, &d);
    r->smt_shift = a & 0x1f;
    r->smt_count = b & 0xffff;
    r->x2apic = d;
    cpuid(0xb, 1, &a, &b, &c, &d);
    r->core_shift = a & 0x1f;
    r->core_count = b & 0xffff;
  }
}

void ap_main(void) {
  struct report me;
  describe_self(&me);
  struct report *r = &reports[me.x2apic % MAX_CPUS];
  *r = me;
  r->seen = 1;
  __atomic_fetch_add(&online, 1, __ATOMIC_SEQ_CST);
}

static int checksum_ok(const u8 *p, u32 len) {
  u8 s = 0;
  for (u32 i = 0; i < len; i++) s += p[i];
  return s == 0;
}

static int sig_is(const u8 *p, const char *s) { for (int i = 0; s[i]; i++) if (p[i] != (u8)s[i]) return 0; return 1; }

/* APIC IDs of enabled processors in the MADT (types 0 and 9). Returns the count, or -1. */
static int madt_cpus(u32 *ids) {
  const u8 *rsdp = 0;
  for (u64 a = 0xe0000; a < 0x100000; a += 16) if (sig_is((const u8 *)a, "RSD PTR ") && checksum_ok((const u8 *)a, 20)) { rsdp = (const u8 *)a; break; }
  if (!rsdp) { printf("smp: no ACPI RSDP found\n"); return -1; }
  const u8 *xsdt = (const u8 *)*(const u64 *)(rsdp + 24);
  if (!sig_is(xsdt, "XSDT") || !checksum_ok(xsdt, *(const u32 *)(xsdt + 4))) { printf("smp: bad XSDT\n"); return -1; }
  u32 n = (*(const u32 *)(xsdt + 4) - 36) / 8;
  for (u32 i = 0; i < n; i++) {
    const u8 *t = (const u8 *)*(const u64 *)(xsdt + 36 + 8 * i);
    if (!sig_is(t, "APIC")) continue;
    u32 len = *(const u32 *)(t + 4);
    if (!checksum_ok(t, len)) { printf("smp: MADT checksum bad\n"); return -1; }
    int count = 0;
    for (const u8 *e = t + 44; e < t + len; e += e[1]) {
      if (e[1] == 0) return -1;
      if (e[0] == 0 && (*(const u32 *)(e + 4) & 1)) ids[count++] = e[3];
      if (e[0] == 9 && (*(const u32 *)(e + 8) & 1)) ids[count++] = *(const u32 *)(e + 4);
    }
    return count;
  }
  printf("smp: no MADT\n");
  return -1;
}

/* Processor entries of the MP table (Intel MP spec 1.4). Returns the count, 0 when there is no table. */
static int mp_cpus(u32 *ids, u32 *bsp) {
  const u8 *fp = 0;
  for (u64 a = 0x9fc00; a < 0xa0000 && !fp; a += 16) if (sig_is((const u8 *)a, "_MP_") && checksum_ok((const u8 *)a, 16)) fp = (const u8 *)a;
  for (u64 a = 0xf0000; a < 0x100000 && !fp; a += 16) if (sig_is((const u8 *)a, "_MP_") && checksum_ok((const u8 *)a, 16)) fp = (const u8 *)a;
  if (!fp) return 0;
  const u8 *ct = (const u8 *)(u64)*(const u32 *)(fp + 4);
  if (!sig_is(ct, "PCMP") || !checksum_ok(ct, *(const u16 *)(ct + 4))) { printf("smp: bad MP config table\n"); return -1; }
  u16 entries = *(const u16 *)(ct + 34);
  const u8 *e = ct + 44;
  int count = 0;
  for (u16 i = 0; i < entries; i++) {
    if (e[0] == 0) {
      if (e[3] & 1) ids[count++] = e[1];
      if (e[3] & 2) *bsp = e[1];
      e += 20;
    } else {
      e += 8;
    }
  }
  return count;
}

static u64 rdtsc(void) {
  u32 lo, hi;
  __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
  return ((u64)hi << 32) | lo;
}

static void icr(u32 dest, u32 low) {
  mmio_write32(LAPIC + 0x310, dest << 24);
  mmio_write32(LAPIC + 0x300, low);
  while (mmio_read32(LAPIC + 0x300) & (1 << 12)) {}
}

int main(struct boot_info *bi) {
  (void)bi;
  __atomic_fetch_add(&in_main, 1, __ATOMIC_SEQ_CST);
  static u32 madt[MAX_CPUS], mp[MAX_CPUS];
  u32 mp_bsp = ~0u;
  int nm = madt_cpus(madt);
  int np = mp_cpus(mp, &mp_bsp);
  if (nm <= 0) return 1;
  struct report *me = &reports[0];
  struct report bsp;
  describe_self(&bsp);
  printf("smp: MADT lists %d CPUs, MP table %d, BSP APIC ID %u\n", nm, np, bsp.x2apic);
  int ok = 1;
  if (np > 0) {
    if (np != nm) { printf("smp: FAIL MADT and MP table disagree on the CPU count\n"); ok = 0; }
    for (int i = 0; i < np && i < nm; i++) if (mp[i] != madt[i]) { printf("smp: FAIL CPU %d: MADT APIC ID %u, MP table %u\n", i, madt[i], mp[i]); ok = 0; }
    if (mp_bsp != bsp.x2apic) { printf("smp: FAIL MP table BSP %u is not this CPU %u\n", mp_bsp, bsp.x2apic); ok = 0; }
  }
  reports[bsp.x2apic % MAX_CPUS] = bsp;
  reports[bsp.x2apic % MAX_CPUS].seen = 1;
  (void)me;

  u8 *dst = (u8 *)TRAMPOLINE_BASE;
  for (char *p = ap_trampoline; p < ap_trampoline_end; p++) *dst++ = (u8)*p;
  mmio_write32(LAPIC + 0xf0, 0x1ff);
  /* The APs must wait for INIT/SIPI: none has entered the kernel or the trampoline yet. An AP the VMM let run
   * would have had the time of this loop (and of the table parsing above) to show up in these counters. */
  for (u32 spin = 0; spin < 100000; spin++) __asm__ volatile("pause");
  printf("smp: before INIT/SIPI: %u CPU in the kernel, %u application processors online\n", in_main, online);
  if (in_main != 1 || online != 0) ok = 0;
  int aps = 0;
  for (int i = 0; i < nm; i++) {
    if (madt[i] == bsp.x2apic) continue;
    aps++;
    icr(madt[i], 0x00004500);                              /* INIT, level assert */
    icr(madt[i], 0x00004600 | (TRAMPOLINE_BASE >> 12));    /* STARTUP */
    icr(madt[i], 0x00004600 | (TRAMPOLINE_BASE >> 12));    /* second STARTUP, as the MP spec recommends */
  }
  /* A hang guard, not a speed limit: ~2 minutes of TSC at 2.5 GHz (64 AP threads may share a busy 2-core host). */
  u64 deadline = rdtsc() + 300000000000ULL;
  while (online < (u32)aps && rdtsc() < deadline) __asm__ volatile("pause");
  printf("smp: %u of %d application processors online\n", online, aps);
  if (online != (u32)aps) ok = 0;
  u32 smt = 0, cores = 0;
  for (int i = 0; i < nm; i++) {
    struct report *r = &reports[madt[i] % MAX_CPUS];
    if (!r->seen) { printf("smp: FAIL APIC ID %u never reported\n", madt[i]); ok = 0; continue; }
    if (r->x2apic != madt[i] || (madt[i] < 255 && r->apic != madt[i])) { printf("smp: FAIL CPU with MADT ID %u reports %u/%u\n", madt[i], r->apic, r->x2apic); ok = 0; }
    if (i == 0) { smt = r->smt_count; cores = r->core_count; }
    if (r->smt_count != smt || r->core_count != cores) { printf("smp: FAIL APIC ID %u sees a different topology\n", madt[i]); ok = 0; }
    printf("cpu %u: apic %u, leaf1 logical %u, leaf 0xb smt %u (shift %u) core-level %u (shift %u), package %u core %u thread %u\n",
           i, r->x2apic, r->logical, r->smt_count, r->smt_shift, r->core_count, r->core_shift,
           r->x2apic >> r->core_shift, (r->x2apic & ((1u << r->core_shift) - 1)) >> r->smt_shift, r->x2apic & ((1u << r->smt_shift) - 1));
  }
  if (!ok) { printf("smp: FAILED\n"); return 1; }
  printf("smp: %d CPUs online, %u threads per core, %u logical per package, topology consistent\n", nm, smt, cores);
  return 0;
}
