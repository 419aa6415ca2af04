// The CPU model: topology parsing, the APIC ID layout, the per-vCPU CPUID table and the MSR defaults.
//
// The CPUID tables are read back the way a guest reads them — through KVM's lookup rules (cpuidLookup) and
// with the arithmetic of Linux's arch/x86/kernel/cpu/topology*.c and cacheinfo.c: thread, core and package IDs
// come from the 0xB/0x1F shifts applied to the x2APIC ID, cache IDs from APIC ID >> order(sharing count).
// Synthetic Intel and AMD "supported" tables keep these tests independent of the host; the last tests run
// against the real /dev/kvm when there is one.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { ioctls, kvm_lapic_state } from '../../src/kvm/abi.js';
import { check, native } from '../../src/native/index.js';
import { KvmSystem, KvmUnavailableError } from '../../src/kvm/system.js';
import { Vm } from '../../src/vmm/vm.js';
import { Vcpu } from '../../src/vmm/vcpu.js';
import {
  apicIdLayout,
  defaultTopology,
  formatTopology,
  parseTopology,
  type CpuTopology,
} from '../../src/arch/x86_64/topology.js';
import {
  cpuidLookup,
  cpuVendor,
  decodeCpuid,
  describeCpuid,
  encodeCpuid,
  EXT1_ECX,
  hypervisorSignature,
  KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
  KVM_FEATURES,
  KVM_SIGNATURE,
  LEAF1_ECX,
  LEAF1_EDX,
  supportedCpuid,
  vcpuCpuid,
  vcpuCpuidTable,
  type CpuidEntry,
  type CpuProfile,
} from '../../src/arch/x86_64/cpuid.js';
import {
  getMsrs,
  MSR_DEFAULTS,
  MSR_IA32_MISC_ENABLE,
  MSR_IA32_TSC,
  MSR_MTRR_DEF_TYPE,
  msrIndexList,
  setupMsrs,
} from '../../src/arch/x86_64/msrs.js';

// ---------------------------------------------------------------------------------------------------------
// Helpers.

const field = (v: number, lo: number, width: number): number => Math.floor((v >>> 0) / 2 ** lo) % 2 ** width;
/** Linux's get_count_order: ceil(log2(n)). */
const countOrder = (n: number): number => (n <= 1 ? 0 : Math.ceil(Math.log2(n)));
const str4 = (s: string): number => Buffer.from(s, 'latin1').readUInt32LE(0);
const SIG = KVM_CPUID_FLAG_SIGNIFCANT_INDEX;

function entry(
  fn: number,
  index: number,
  flags: number,
  eax: number,
  ebx: number,
  ecx: number,
  edx: number,
): CpuidEntry {
  return { function: fn, index, flags, eax: eax >>> 0, ebx: ebx >>> 0, ecx: ecx >>> 0, edx: edx >>> 0 };
}

/** A leaf 4 / 0x8000_001D cache descriptor EAX. */
const cacheEax = (type: number, level: number, sharing: number, cores = 0): number =>
  (type | (level << 5) | (1 << 8) | ((sharing - 1) << 14)) + (cores ? (cores - 1) * 2 ** 26 : 0);

const kvmLeaves = [
  entry(0x4000_0000, 0, 0, 0x4000_0001, str4('KVMK'), str4('VMKV'), str4('M\0\0\0')),
  entry(0x4000_0001, 0, 0, 0x0100_7efb, 0, 0, 0),
];

/** KVM_GET_SUPPORTED_CPUID as an Intel host (Sapphire Rapids-like, 56 cores × 2 threads) might report it. */
const INTEL: readonly CpuidEntry[] = [
  entry(0x0, 0, 0, 0x20, str4('Genu'), str4('ntel'), str4('ineI')),
  entry(0x1, 0, 0, 0x000806f8, 0x00700800, 0xfffa3203, 0x1f8bfbff),
  entry(0x4, 0, SIG, cacheEax(1, 1, 2, 64), 0x00c0003f, 0x3f, 0),
  entry(0x4, 1, SIG, cacheEax(2, 1, 2, 64), 0x01c0003f, 0x3f, 0),
  entry(0x4, 2, SIG, cacheEax(3, 2, 2, 64), 0x03c0003f, 0x7ff, 0),
  entry(0x4, 3, SIG, cacheEax(3, 3, 128, 64), 0x03c0003f, 0x1ffff, 4),
  entry(0x4, 4, SIG, 0, 0, 0, 0),
  entry(0x7, 0, SIG, 2, 0xffffffff, 0xffffffff, 0xffffffff),
  entry(0x7, 1, SIG, 0xffffffff, 0, 0, 0xffffffff),
  entry(0xb, 0, SIG, 1, 2, 0x100, 0),
  entry(0xb, 1, SIG, 7, 112, 0x201, 0),
  entry(0xd, 0, SIG, 0xe7, 0x988, 0x2b00, 0),
  entry(0xd, 1, SIG, 0xf, 0x988, 0, 0),
  entry(0xd, 2, SIG, 0x100, 0x240, 0, 0),
  entry(0x1d, 0, SIG, 1, 0, 0, 0),
  entry(0x1f, 0, SIG, 1, 2, 0x100, 0),
  entry(0x1f, 1, SIG, 7, 112, 0x201, 0),
  entry(0x1f, 2, SIG, 8, 112, 0x502, 0),
  ...kvmLeaves,
  entry(0x8000_0000, 0, 0, 0x8000_0008, 0, 0, 0),
  entry(0x8000_0001, 0, 0, 0, 0, 0x121, 0x2c100800),
  entry(0x8000_0008, 0, 0, 0x3030, 0, 0, 0),
];

/** KVM_GET_SUPPORTED_CPUID as an AMD EPYC host might report it (leaf 1 ECX with every feature on). */
const AMD: readonly CpuidEntry[] = [
  entry(0x0, 0, 0, 0x10, str4('Auth'), str4('cAMD'), str4('enti')),
  entry(0x1, 0, 0, 0x00a10f11, 0x01020800, 0xfef83203, 0x178bfbff),
  entry(0x4, 0, SIG, 0, 0, 0, 0),
  entry(0x7, 0, SIG, 1, 0xf1bf07ab, 0x405fce, 0x10),
  entry(0xb, 0, SIG, 0, 0, 0, 1),
  entry(0xd, 0, SIG, 0xe7, 0x980, 0x980, 0),
  ...kvmLeaves,
  entry(0x8000_0000, 0, 0, 0x8000_0026, str4('Auth'), str4('cAMD'), str4('enti')),
  entry(0x8000_0001, 0, 0, 0x00a10f11, 0x40000000, 0x00400391 | EXT1_ECX.XOP | EXT1_ECX.FMA4, 0x2fd3fbff),
  entry(0x8000_0008, 0, 0, 0x3030, 0x50020005, 0x7001, 0),
  entry(0x8000_001d, 0, SIG, cacheEax(1, 1, 2), 0x01c0003f, 0x3f, 0),
  entry(0x8000_001d, 1, SIG, cacheEax(2, 1, 2), 0x01c0003f, 0x3f, 0),
  entry(0x8000_001d, 2, SIG, cacheEax(3, 2, 2), 0x01c0003f, 0x7ff, 2),
  entry(0x8000_001d, 3, SIG, cacheEax(3, 3, 16), 0x03c0003f, 0x7fff, 1),
  entry(0x8000_001d, 4, SIG, 0, 0, 0, 0),
  entry(0x8000_001e, 0, 0, 0, 0, 0, 0),
  entry(0x8000_0026, 0, SIG, 1, 2, 0x100, 0),
];

/** The APIC ID of vCPU i by the SDM packing, computed independently of topology.ts. */
function sdmApicId(t: CpuTopology, i: number): { apicId: number; pkg: number; core: number; thread: number } {
  const thread = i % t.threads;
  const core = Math.floor(i / t.threads) % t.cores;
  const pkg = Math.floor(i / (t.threads * t.cores));
  const smt = countOrder(t.threads);
  const coreW = countOrder(t.cores);
  return { apicId: pkg * 2 ** (smt + coreW) + core * 2 ** smt + thread, pkg, core, thread };
}

interface GuestTopology {
  apicId: number;
  smtShift: number;
  pkgShift: number;
  threadsPerCore: number;
  logicalPerPackage: number;
  threadId: number;
  coreId: number;
  packageId: number;
}

/**
 * What a Linux guest derives from the table (topology_ext.c): walk 0x1F (if the max basic leaf reaches it)
 * or 0xB sub-leaves until level type 0, take each level's shift, then split the x2APIC ID of sub-leaf 0.
 */
function linuxTopology(table: readonly CpuidEntry[]): GuestTopology {
  const maxBasic = cpuidLookup(table, 0).eax;
  const leaf = maxBasic >= 0x1f ? 0x1f : 0xb;
  const sl0 = cpuidLookup(table, leaf, 0);
  assert.ok(
    field(sl0.ebx, 0, 16) !== 0 && field(sl0.ecx, 8, 8) !== 0,
    `leaf 0x${leaf.toString(16)} sub-leaf 0 must be valid`,
  );
  const apicId = sl0.edx;
  let smtShift = -1;
  let coreShift = -1;
  let threadsPerCore = 0;
  let logicalPerPackage = 0;
  for (let sub = 0; sub < 16; sub++) {
    const sl = cpuidLookup(table, leaf, sub);
    assert.equal(field(sl.ecx, 0, 8), sub, `0x${leaf.toString(16)}.${sub} ECX[7:0] echoes the sub-leaf`);
    assert.equal(sl.edx, apicId, `0x${leaf.toString(16)}.${sub} EDX is the x2APIC ID`);
    const type = field(sl.ecx, 8, 8);
    if (type === 0) {
      assert.equal(sl.eax, 0);
      assert.equal(sl.ebx, 0);
      break;
    }
    if (type === 1) {
      smtShift = field(sl.eax, 0, 5);
      threadsPerCore = field(sl.ebx, 0, 16);
    } else if (type === 2) {
      coreShift = field(sl.eax, 0, 5);
      logicalPerPackage = field(sl.ebx, 0, 16);
    } else {
      assert.fail(`unexpected level type ${type}`);
    }
  }
  assert.ok(smtShift >= 0 && coreShift >= smtShift, 'SMT and core levels present, core shift ≥ SMT shift');
  return {
    apicId,
    smtShift,
    pkgShift: coreShift,
    threadsPerCore,
    logicalPerPackage,
    threadId: apicId % 2 ** smtShift,
    coreId: Math.floor(apicId / 2 ** smtShift) % 2 ** (coreShift - smtShift),
    packageId: Math.floor(apicId / 2 ** coreShift),
  };
}

/** Cache IDs as Linux's cacheinfo computes them: APIC ID with the low order(sharing) bits dropped. */
function cacheIds(table: readonly CpuidEntry[], leaf: 0x4 | 0x8000_001d, apicId: number): Map<number, number> {
  const ids = new Map<number, number>();
  for (let sub = 0; sub < 16; sub++) {
    const e = cpuidLookup(table, leaf, sub);
    if (field(e.eax, 0, 5) === 0) break;
    const level = field(e.eax, 5, 3);
    const id = Math.floor(apicId / 2 ** countOrder(field(e.eax, 14, 12) + 1));
    if (ids.has(level)) assert.equal(ids.get(level), id, `L${level} caches of one level share one ID`);
    ids.set(level, id);
  }
  return ids;
}

function tablesFor(supported: readonly CpuidEntry[], topo: CpuTopology, profile: CpuProfile = 'host'): CpuidEntry[][] {
  const n = topo.sockets * topo.cores * topo.threads;
  return Array.from({ length: n }, (_, index) => vcpuCpuid(supported, { topology: topo, index, profile }));
}

const TOPOLOGIES: readonly (CpuTopology & { note: string })[] = [
  { sockets: 1, cores: 1, threads: 1, note: '1 vCPU' },
  { sockets: 1, cores: 2, threads: 1, note: '2 = 1×2×1' },
  { sockets: 2, cores: 4, threads: 2, note: '16 = 2×4×2' },
  { sockets: 4, cores: 8, threads: 2, note: '64 = 4×8×2' },
  { sockets: 1, cores: 3, threads: 2, note: '6 = 1×3×2, cores not a power of two' },
  { sockets: 1, cores: 64, threads: 1, note: '64 = 1×64×1' },
  { sockets: 2, cores: 3, threads: 1, note: '6 = 2×3×1, gap between packages' },
  { sockets: 1, cores: 2, threads: 3, note: '6 = 1×2×3, gap inside each core' },
  { sockets: 3, cores: 5, threads: 3, note: '45 = 3×5×3, nothing a power of two' },
];

// ---------------------------------------------------------------------------------------------------------
// Topology parsing.

test('parseTopology: full, partial and derived specs', () => {
  assert.deepEqual(parseTopology('sockets=2,cores=4,threads=2', 16), { sockets: 2, cores: 4, threads: 2 });
  assert.deepEqual(parseTopology(' sockets = 1 , cores = 2 ', 2), { sockets: 1, cores: 2, threads: 1 });
  assert.deepEqual(parseTopology('sockets=2', 8), { sockets: 2, cores: 4, threads: 1 });
  assert.deepEqual(parseTopology('cores=4', 8), { sockets: 2, cores: 4, threads: 1 });
  assert.deepEqual(parseTopology('threads=2', 8), { sockets: 1, cores: 4, threads: 2 });
  assert.deepEqual(parseTopology('cores=4,threads=2', 16), { sockets: 2, cores: 4, threads: 2 });
  assert.deepEqual(parseTopology('sockets=2,cores=4', 16), { sockets: 2, cores: 4, threads: 2 });
  assert.deepEqual(parseTopology('threads=2,sockets=4', 64), { sockets: 4, cores: 8, threads: 2 });
  assert.deepEqual(parseTopology('cores=2'), { sockets: 1, cores: 2, threads: 1 });
  assert.deepEqual(defaultTopology(6), { sockets: 1, cores: 6, threads: 1 });
  assert.equal(formatTopology(parseTopology('sockets=4,cores=8,threads=2', 64)), 'sockets=4,cores=8,threads=2');
});

test('parseTopology: bad --topology strings are RangeErrors naming the problem', () => {
  const bad: [spec: string, vcpus: number | undefined, message: RegExp][] = [
    ['dies=2', 2, /unknown key 'dies' \(expected sockets, cores, threads\)/],
    ['sockets=2,clusters=1', 2, /unknown key 'clusters'/],
    ['cores=0', 1, /cores must be at least 1, not 0/],
    ['sockets=1,threads=0', 1, /threads must be at least 1, not 0/],
    ['cores=two', 2, /cores='two' is not a whole number/],
    ['cores=-1', 2, /cores='-1' is not a whole number/],
    ['cores=1.5', 2, /cores='1.5' is not a whole number/],
    ['cores=', 2, /cores='' is not a whole number/],
    ['cores=0x4', 4, /not a whole number/],
    ['cores', 2, /'cores' is not key=value/],
    ['', 2, /empty/],
    ['cores=2,cores=2', 4, /cores is given twice/],
    ['sockets=2,cores=3,threads=1', 8, /sockets=2 × cores=3 × threads=1 = 6, but the VM has 8 vCPUs/],
    ['sockets=1,cores=1,threads=1', 2, /= 1, but the VM has 2 vCPUs/],
    ['sockets=3', 8, /8 vCPUs cannot be divided evenly by sockets=3 × threads=1 \(= 3\) to derive cores/],
    ['cores=3,threads=2', 8, /cannot be divided evenly/],
    ['cores=99999999999999999999', 4, /too large/],
  ];
  for (const [spec, vcpus, message] of bad) {
    assert.throws(
      () => parseTopology(spec, vcpus),
      (e: unknown) => {
        assert.ok(e instanceof RangeError, `${spec}: a RangeError`);
        assert.match(e.message, message, `${spec}`);
        assert.match(e.message, /--topology/);
        return true;
      },
    );
  }
  assert.throws(() => defaultTopology(0), RangeError);
  assert.throws(() => apicIdLayout({ sockets: 1, cores: 0, threads: 1 }), RangeError);
});

// ---------------------------------------------------------------------------------------------------------
// APIC IDs.

test('apicIdLayout: SMT ID low, core ID next, package ID above (SDM 10.12.8)', () => {
  for (const topo of TOPOLOGIES) {
    const layout = apicIdLayout(topo);
    const n = topo.sockets * topo.cores * topo.threads;
    assert.equal(layout.apicIds.length, n, topo.note);
    assert.equal(layout.smtBits, countOrder(topo.threads), topo.note);
    assert.equal(layout.coreBits, countOrder(topo.cores), topo.note);
    assert.equal(layout.packageShift, layout.smtBits + layout.coreBits, topo.note);
    for (let i = 0; i < n; i++) {
      const want = sdmApicId(topo, i);
      assert.equal(layout.apicIds[i], want.apicId, `${topo.note}: vCPU ${i}`);
      assert.deepEqual(layout.places[i], {
        index: i,
        packageId: want.pkg,
        coreId: want.core,
        threadId: want.thread,
        apicId: want.apicId,
      });
    }
    assert.equal(new Set(layout.apicIds).size, n, `${topo.note}: APIC IDs are unique`);
    assert.equal(layout.apicIds[0], 0, 'vCPU 0 (the BSP) is APIC ID 0');
    assert.equal(layout.maxApicId, Math.max(...layout.apicIds));
    assert.equal(layout.needsX2apic, layout.maxApicId > 254);
  }
  assert.deepEqual(apicIdLayout({ sockets: 1, cores: 3, threads: 2 }).apicIds, [0, 1, 2, 3, 4, 5]);
  assert.deepEqual(apicIdLayout({ sockets: 2, cores: 3, threads: 1 }).apicIds, [0, 1, 2, 4, 5, 6]);
  assert.deepEqual(apicIdLayout({ sockets: 1, cores: 2, threads: 3 }).apicIds, [0, 1, 2, 4, 5, 6]);
  assert.deepEqual(
    apicIdLayout({ sockets: 2, cores: 3, threads: 2 }).apicIds,
    [0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 13],
  );
  assert.equal(apicIdLayout({ sockets: 1, cores: 64, threads: 1 }).maxApicId, 63);
  assert.equal(apicIdLayout({ sockets: 4, cores: 8, threads: 2 }).needsX2apic, false);
  // Beyond what the VM builder allows, but the layout itself must say when x2APIC becomes necessary.
  const big = apicIdLayout({ sockets: 3, cores: 65, threads: 1 });
  assert.equal(big.maxApicId, 2 * 128 + 64);
  assert.equal(big.needsX2apic, true);
  assert.equal(apicIdLayout({ sockets: 2, cores: 127, threads: 1 }).needsX2apic, false); // max 254
});

// ---------------------------------------------------------------------------------------------------------
// CPUID, Intel.

test('CPUID (Intel): leaves 1, 4, 0xB and 0x1F describe the topology the way Linux decodes it', () => {
  for (const topo of TOPOLOGIES) {
    const layout = apicIdLayout(topo);
    const tables = tablesFor(INTEL, topo);
    const seen = new Set<string>();
    const l3ByPackage = new Map<number, number>();
    const l2s = new Set<number>();
    tables.forEach((table, i) => {
      const what = `${topo.note}, vCPU ${i}`;
      const place = layout.places[i];
      const apicId = layout.apicIds[i];

      // 0xB and 0x1F, walked the way Linux does, give back the place we laid out.
      const g = linuxTopology(table);
      assert.equal(g.apicId, apicId, what);
      assert.equal(g.smtShift, layout.smtBits, what);
      assert.equal(g.pkgShift, layout.packageShift, what);
      assert.equal(g.threadsPerCore, topo.threads, what);
      assert.equal(g.logicalPerPackage, topo.threads * topo.cores, what);
      assert.deepEqual([g.packageId, g.coreId, g.threadId], [place.packageId, place.coreId, place.threadId], what);
      seen.add(`${g.packageId}/${g.coreId}/${g.threadId}`);
      for (const leaf of [0xb, 0x1f]) {
        const subs = table.filter((e) => e.function === leaf);
        assert.deepEqual(
          subs.map((e) => e.index),
          [0, 1, 2],
          `${what}: 0x${leaf.toString(16)} sub-leaves 0, 1 and the invalid 2`,
        );
        for (const e of subs)
          assert.equal(e.flags & SIG, SIG, `${what}: 0x${leaf.toString(16)}.${e.index} is index-significant`);
        // Sub-leaves nobody listed: KVM answers ECX = sub-leaf, EDX = x2APIC ID, level type 0.
        const far = cpuidLookup(table, leaf, 7);
        assert.deepEqual([far.eax, far.ebx, far.ecx, far.edx], [0, 0, 7, apicId], what);
      }
      const b = table.filter((e) => e.function === 0xb).map(({ eax, ebx, ecx }) => [eax, ebx, ecx]);
      const f = table.filter((e) => e.function === 0x1f).map(({ eax, ebx, ecx }) => [eax, ebx, ecx]);
      assert.deepEqual(b, f, `${what}: 0xB and 0x1F agree`);

      // Leaf 1.
      const l1 = cpuidLookup(table, 1);
      assert.equal(field(l1.ebx, 24, 8), apicId & 0xff, `${what}: initial APIC ID`);
      const addressable = field(l1.ebx, 16, 8);
      assert.equal(
        2 ** countOrder(addressable),
        2 ** layout.packageShift,
        `${what}: leaf 1 logical IDs ≡ package shift`,
      );
      assert.ok(addressable >= topo.threads * topo.cores, what);
      assert.equal((l1.edx & LEAF1_EDX.HTT) !== 0, addressable > 1, `${what}: HTT`);
      assert.equal(field(l1.ebx, 0, 16), 0x0800, `${what}: CLFLUSH size and brand index untouched`);
      assert.ok(l1.ecx & LEAF1_ECX.HYPERVISOR, `${what}: hypervisor bit`);
      assert.ok(l1.ecx & LEAF1_ECX.X2APIC, `${what}: x2APIC as KVM reports`);

      // Leaf 4: cores per package, and cache sharing (L1/L2 per core, L3 per package).
      const l4 = cpuidLookup(table, 4, 0);
      assert.equal(countOrder(field(l4.eax, 26, 6) + 1), layout.coreBits, `${what}: leaf 4 cores`);
      for (let sub = 0; sub < 4; sub++) {
        const e = cpuidLookup(table, 4, sub);
        assert.equal(field(e.eax, 26, 6), field(l4.eax, 26, 6), `${what}: EAX[31:26] alike in all caches`);
        const src = INTEL.find((x) => x.function === 4 && x.index === sub)!;
        assert.equal(field(e.eax, 0, 14), field(src.eax, 0, 14), `${what}: cache type/level untouched`);
        assert.deepEqual([e.ebx, e.ecx, e.edx], [src.ebx, src.ecx, src.edx], `${what}: cache geometry untouched`);
      }
      assert.deepEqual(
        cpuidLookup(table, 4, 4),
        INTEL.find((x) => x.function === 4 && x.index === 4),
        'null cache',
      );
      const caches = cacheIds(table, 4, apicId);
      assert.equal(caches.get(1), Math.floor(apicId / 2 ** layout.smtBits), `${what}: L1 per core`);
      assert.equal(caches.get(2), Math.floor(apicId / 2 ** layout.smtBits), `${what}: L2 per core`);
      assert.equal(caches.get(3), place.packageId, `${what}: L3 per package`);
      l2s.add(caches.get(2)!);
      l3ByPackage.set(place.packageId, caches.get(3)!);

      // Untouched: the vendor, the hypervisor leaves, and AMD-only fields.
      assert.deepEqual(cpuidLookup(table, 0), INTEL[0]);
      assert.deepEqual(
        cpuidLookup(table, 0x8000_0008),
        INTEL.find((x) => x.function === 0x8000_0008),
      );
      assert.deepEqual(
        cpuidLookup(table, 0x8000_0001),
        INTEL.find((x) => x.function === 0x8000_0001),
      );
      assert.equal(
        table.some((e) => e.function === 0x8000_001e),
        false,
      );
    });
    assert.equal(seen.size, tables.length, `${topo.note}: every vCPU has its own (package, core, thread)`);
    assert.equal(l2s.size, topo.sockets * topo.cores, `${topo.note}: one L2 per core`);
    assert.equal(new Set(l3ByPackage.values()).size, topo.sockets, `${topo.note}: one L3 per package`);
  }
});

test('CPUID: 1 vCPU has no HTT and one logical processor per level', () => {
  for (const supported of [INTEL, AMD]) {
    const [table] = tablesFor(supported, defaultTopology(1));
    const l1 = cpuidLookup(table, 1);
    assert.equal(l1.edx & LEAF1_EDX.HTT, 0, 'HTT clear even though the host had it');
    assert.equal(field(l1.ebx, 16, 8), 1);
    assert.equal(field(l1.ebx, 24, 8), 0);
    const b0 = cpuidLookup(table, 0xb, 0);
    const b1 = cpuidLookup(table, 0xb, 1);
    assert.deepEqual([b0.eax, b0.ebx, b0.ecx, b0.edx], [0, 1, 0x100, 0]);
    assert.deepEqual([b1.eax, b1.ebx, b1.ecx, b1.edx], [0, 1, 0x201, 0]);
  }
  const [amd] = tablesFor(AMD, defaultTopology(1));
  assert.equal(
    cpuidLookup(amd, 0x8000_0001).ecx & EXT1_ECX.CMP_LEGACY,
    0,
    'CmpLegacy clear with one logical processor',
  );
});

// ---------------------------------------------------------------------------------------------------------
// CPUID, AMD.

test('CPUID (AMD): leaves 0xB, 0x8000_0001/08/1D/1E describe the topology the way Linux decodes it', () => {
  const srcTopoExt = AMD.find((e) => e.function === 0x8000_0001)!.ecx & EXT1_ECX.TOPOEXT;
  for (const topo of TOPOLOGIES) {
    const layout = apicIdLayout(topo);
    const logical = topo.threads * topo.cores;
    const tables = tablesFor(AMD, topo);
    tables.forEach((table, i) => {
      const what = `${topo.note}, vCPU ${i}`;
      const place = layout.places[i];
      const apicId = layout.apicIds[i];

      // Max basic leaf 0x10 < 0x1F: Linux uses 0xB, and there is no 0x1F.
      assert.equal(
        table.some((e) => e.function === 0x1f),
        false,
        what,
      );
      const g = linuxTopology(table);
      assert.deepEqual([g.apicId, g.smtShift, g.pkgShift], [apicId, layout.smtBits, layout.packageShift], what);
      assert.deepEqual([g.packageId, g.coreId, g.threadId], [place.packageId, place.coreId, place.threadId], what);

      const ext1 = cpuidLookup(table, 0x8000_0001);
      assert.equal((ext1.ecx & EXT1_ECX.CMP_LEGACY) !== 0, logical > 1, `${what}: CmpLegacy`);
      assert.equal(ext1.ecx & EXT1_ECX.TOPOEXT, srcTopoExt, `${what}: TopologyExtensions as KVM reports`);

      // 0x8000_0008 ECX: NC and ApicIdCoreIdSize (Linux's parse_8000_0008).
      const e8 = cpuidLookup(table, 0x8000_0008);
      assert.equal(field(e8.ecx, 0, 8) + 1, logical, `${what}: NC + 1 = logical processors per package`);
      assert.equal(field(e8.ecx, 12, 4), layout.packageShift, `${what}: ApicIdCoreIdSize`);
      assert.equal(
        Math.floor(apicId / 2 ** field(e8.ecx, 12, 4)),
        place.packageId,
        `${what}: package from ApicIdCoreIdSize`,
      );
      assert.equal(e8.eax, 0x3030, 'address sizes untouched');

      // 0x8000_001E.
      const e1e = cpuidLookup(table, 0x8000_001e);
      assert.equal(e1e.eax, apicId, `${what}: extended APIC ID`);
      assert.equal(field(e1e.ebx, 0, 8), place.coreId, `${what}: core ID`);
      assert.equal(field(e1e.ebx, 8, 8) + 1, topo.threads, `${what}: threads per core`);
      assert.equal(field(e1e.ecx, 0, 8), place.packageId, `${what}: node ID`);
      assert.equal(field(e1e.ecx, 8, 3), 0, `${what}: one node per package`);

      // 0x8000_001D: L1/L2 per core, L3 per package.
      const caches = cacheIds(table, 0x8000_001d, apicId);
      assert.equal(caches.get(1), Math.floor(apicId / 2 ** layout.smtBits), what);
      assert.equal(caches.get(2), Math.floor(apicId / 2 ** layout.smtBits), what);
      assert.equal(caches.get(3), place.packageId, what);

      // Leaf 1, and what is left alone on AMD.
      const l1 = cpuidLookup(table, 1);
      assert.equal(field(l1.ebx, 24, 8), apicId & 0xff, what);
      assert.equal(2 ** countOrder(field(l1.ebx, 16, 8)), 2 ** layout.packageShift, what);
      assert.deepEqual(
        cpuidLookup(table, 4, 0),
        AMD.find((x) => x.function === 4),
        `${what}: leaf 4 untouched on AMD`,
      );
      assert.deepEqual(
        cpuidLookup(table, 0x8000_0000),
        AMD.find((x) => x.function === 0x8000_0000),
        'vendor untouched',
      );
      assert.equal(
        table.some((e) => e.function === 0x8000_0026),
        false,
        `${what}: 0x8000_0026 dropped`,
      );
    });
  }
});

// ---------------------------------------------------------------------------------------------------------
// Profiles, vendors, pass-through.

test('CPUID profiles: compat masks XSAVE and what depends on it, and CMPXCHG16B; host keeps them', () => {
  const topo = { sockets: 1, cores: 2, threads: 2 };
  for (const supported of [INTEL, AMD]) {
    const [host] = tablesFor(supported, topo, 'host');
    const [compat] = tablesFor(supported, topo, 'compat');
    const vendor = cpuVendor(supported);

    const hostL1 = cpuidLookup(host, 1);
    for (const b of [LEAF1_ECX.XSAVE, LEAF1_ECX.AVX, LEAF1_ECX.FMA, LEAF1_ECX.F16C, LEAF1_ECX.CX16])
      assert.ok(hostL1.ecx & b, `${vendor}: host keeps 0x${b.toString(16)}`);
    assert.ok(
      host.some((e) => e.function === 0xd),
      `${vendor}: host keeps leaf 0xD`,
    );

    const l1 = cpuidLookup(compat, 1);
    for (const b of [
      LEAF1_ECX.XSAVE,
      LEAF1_ECX.OSXSAVE,
      LEAF1_ECX.AVX,
      LEAF1_ECX.FMA,
      LEAF1_ECX.F16C,
      LEAF1_ECX.CX16,
    ]) {
      assert.equal(l1.ecx & b, 0, `${vendor}: compat clears CPUID.1:ECX 0x${b.toString(16)}`);
    }
    assert.ok(l1.ecx & LEAF1_ECX.HYPERVISOR);
    assert.ok(l1.ecx & LEAF1_ECX.X2APIC, 'x2APIC stays');
    assert.equal(
      l1.ecx & 0x00fa0003,
      cpuidLookup(supported, 1).ecx & 0x00fa0003,
      'SSE3, PCLMUL, SSE4.x, x2APIC... stay',
    );
    assert.equal(
      compat.some((e) => e.function === 0xd),
      false,
      `${vendor}: no leaf 0xD in compat`,
    );

    const l7 = cpuidLookup(compat, 7, 0);
    const src7 = cpuidLookup(supported, 7, 0);
    const avx2 = 1 << 5;
    const avx512f = 1 << 16;
    const bmi1 = 1 << 3;
    const erms = 1 << 9;
    assert.equal(l7.ebx & (avx2 | avx512f), 0, `${vendor}: AVX2/AVX-512F masked`);
    assert.equal(l7.ebx & (bmi1 | erms), src7.ebx & (bmi1 | erms), `${vendor}: BMI1/ERMS kept`);
  }
  // Intel: the AVX-512 and AMX families in 7.0/7.1, leaves 0x1D.
  const [compat] = tablesFor(INTEL, topo, 'compat');
  const l7 = cpuidLookup(compat, 7, 0);
  for (const b of [16, 17, 21, 26, 27, 28, 30, 31]) assert.equal(l7.ebx & (2 ** b), 0, `AVX-512 EBX bit ${b}`);
  for (const b of [1, 6, 9, 10, 11, 12, 14]) assert.equal(l7.ecx & (2 ** b), 0, `AVX-512/VAES ECX bit ${b}`);
  for (const b of [22, 24, 25, 23]) assert.equal(l7.edx & (2 ** b), 0, `AMX/FP16 EDX bit ${b}`);
  assert.equal(cpuidLookup(compat, 7, 1).eax & ((1 << 4) | (1 << 5)), 0, 'AVX-VNNI, AVX512_BF16');
  assert.equal(
    compat.some((e) => e.function === 0x1d),
    false,
    'AMX tile leaf dropped',
  );
  // AMD: XOP and FMA4 (AVX-state instructions) masked in compat.
  const [amdCompat] = tablesFor(AMD, topo, 'compat');
  assert.equal(cpuidLookup(amdCompat, 0x8000_0001).ecx & (EXT1_ECX.XOP | EXT1_ECX.FMA4), 0);
});

test('CPUID: vendor and KVM hypervisor leaves pass through; x2APIC follows KVM', () => {
  for (const supported of [INTEL, AMD]) {
    for (const profile of ['host', 'compat'] as const) {
      const [table] = tablesFor(supported, { sockets: 2, cores: 2, threads: 1 }, profile);
      assert.deepEqual(cpuidLookup(table, 0), supported[0]);
      assert.equal(hypervisorSignature(table), KVM_SIGNATURE);
      assert.deepEqual(cpuidLookup(table, 0x4000_0000), kvmLeaves[0], `${profile}: 0x4000_0000 untouched`);
      assert.deepEqual(cpuidLookup(table, 0x4000_0001), kvmLeaves[1], `${profile}: kvmclock and friends kept`);
      assert.ok(cpuidLookup(table, 0x4000_0001).eax & (1 << KVM_FEATURES.CLOCKSOURCE2));
    }
  }
  assert.equal(cpuVendor(INTEL), 'intel');
  assert.equal(cpuVendor(AMD), 'amd');
  const noX2apic = INTEL.map((e) => (e.function === 1 ? { ...e, ecx: (e.ecx & ~LEAF1_ECX.X2APIC) >>> 0 } : e));
  assert.equal(cpuidLookup(tablesFor(noX2apic, defaultTopology(2))[1], 1).ecx & LEAF1_ECX.X2APIC, 0);
  // The supported table itself is not modified.
  assert.equal(INTEL.find((e) => e.function === 1)!.ebx, 0x00700800);
});

test('CPUID: index checks, encode/decode round trip, describeCpuid', () => {
  const topo = { sockets: 2, cores: 3, threads: 2 };
  assert.throws(() => vcpuCpuid(INTEL, { topology: topo, index: 12, profile: 'host' }), RangeError);
  assert.throws(() => vcpuCpuid(INTEL, { topology: topo, index: -1, profile: 'host' }), RangeError);
  const layout = apicIdLayout(topo);
  const table = vcpuCpuid(AMD, { topology: topo, index: 7, profile: 'host', layout });
  assert.deepEqual(table, vcpuCpuid(AMD, { topology: topo, index: 7, profile: 'host' }));
  assert.deepEqual(decodeCpuid(encodeCpuid(table)), table);
  const lines = describeCpuid(table);
  assert.equal(lines.length, table.length);
  assert.ok(lines.some((l) => l.includes('vendor "AuthenticAMD"')));
  assert.ok(
    lines.some((l) => /^0x0000000b\.1\*.*level 1 core: shift 3, 6 logical, x2APIC ID 9$/.test(l)),
    lines.join('\n'),
  );
  assert.ok(lines.some((l) => l.includes('ext APIC ID 9, core 0, 2 threads/core, node 1')));
  assert.ok(lines.some((l) => l.includes('hypervisor "KVMKVMKVM\\0\\0\\0"')));
});

// ---------------------------------------------------------------------------------------------------------
// Against the real KVM.

/** KvmSystem.open(), or undefined after skipping the test when this host has no usable KVM. */
function openKvm(t: { skip(message: string): void }): KvmSystem | undefined {
  if (!existsSync('/dev/kvm')) {
    t.skip('/dev/kvm is absent: no KVM on this host');
    return undefined;
  }
  try {
    return KvmSystem.open();
  } catch (e) {
    if (e instanceof KvmUnavailableError) {
      t.skip(e.message);
      return undefined;
    }
    throw e;
  }
}

const MIB = 1024 * 1024;

test('real KVM: supported CPUID has the KVM leaves; one vCPU takes our CPUID and MSRs and reads them back', (t) => {
  const kvm = openKvm(t);
  if (!kvm) return;
  try {
    const supported = supportedCpuid(kvm.fd);
    assert.ok(
      supported.some((e) => e.function === 0),
      'leaf 0',
    );
    assert.equal(
      hypervisorSignature(supported),
      KVM_SIGNATURE,
      'KVM_GET_SUPPORTED_CPUID has 0x4000_0000 "KVMKVMKVM\\0\\0\\0"',
    );
    const kvmFeatures = supported.find((e) => e.function === 0x4000_0001);
    assert.ok(kvmFeatures, 'KVM_GET_SUPPORTED_CPUID has 0x4000_0001');
    assert.ok(
      kvmFeatures.eax & ((1 << KVM_FEATURES.CLOCKSOURCE) | (1 << KVM_FEATURES.CLOCKSOURCE2)),
      'kvmclock offered',
    );

    const profile: CpuProfile = KvmSystem.isPvm() ? 'compat' : 'host';
    const topology = defaultTopology(1);
    const table = vcpuCpuid(supported, { topology, index: 0, profile });
    assert.equal(hypervisorSignature(table), KVM_SIGNATURE);
    assert.equal(cpuidLookup(table, 0x4000_0001).eax, kvmFeatures.eax, `${profile}: KVM features (kvmclock) kept`);

    // The index list, including its E2BIG path.
    const list = msrIndexList(kvm.fd);
    assert.deepEqual(msrIndexList(kvm.fd, 1), list);
    assert.ok(
      list.includes(MSR_IA32_TSC) && list.includes(MSR_IA32_MISC_ENABLE),
      'KVM lists IA32_TSC and IA32_MISC_ENABLE',
    );

    const vm = Vm.create(kvm, 16 * MIB);
    try {
      const vcpu = Vcpu.create(vm.fd, apicIdLayout(topology).apicIds[0], kvm.vcpuMmapSize);
      try {
        vcpu.setCpuid(table);
        const back = vcpuCpuidTable(vcpu.fd);
        for (const fn of [0xb, 0x4000_0000, 0x4000_0001]) {
          assert.deepEqual(
            back.filter((e) => e.function === fn),
            table.filter((e) => e.function === fn),
            `KVM_GET_CPUID2 0x${fn.toString(16)}`,
          );
        }
        assert.equal(cpuidLookup(back, 1).ebx, cpuidLookup(table, 1).ebx);

        const msrsWritten = performance.now();
        const result = setupMsrs(vcpu.fd, kvm.fd);
        const names = result.set.map((x) => x.name);
        assert.ok(names.includes('IA32_TSC') && names.includes('IA32_MISC_ENABLE'), names.join(', '));
        const hasMtrr = (cpuidLookup(table, 1).edx & LEAF1_EDX.MTRR) !== 0;
        assert.equal(names.includes('IA32_MTRR_DEF_TYPE'), hasMtrr);
        assert.equal(result.set.length + result.skipped.length, MSR_DEFAULTS.length);

        const values = getMsrs(
          vcpu.fd,
          result.set.map((x) => x.index),
        );
        for (const x of result.set.filter((s) => s.index !== MSR_IA32_TSC)) {
          assert.equal(values.get(x.index), x.value, `${x.name} reads back`);
        }
        assert.equal(values.get(MSR_IA32_MISC_ENABLE)! & 1n, 1n, 'fast strings on');
        if (hasMtrr)
          assert.equal(values.get(MSR_MTRR_DEF_TYPE), 0x806n, 'IA32_MTRR_DEF_TYPE: enabled, write-back default');
        // The TSC runs on from 0: at most the time since the write at 10 GHz, far above any real TSC (bounded by
        // the elapsed time, not by how fast this machine is) — except under PVM, which accepts TSC writes but runs
        // guests on the host TSC without an offset.
        const tsc = values.get(MSR_IA32_TSC)!;
        const bound = BigInt(Math.ceil((performance.now() - msrsWritten + 1000) * 1e7));
        if (KvmSystem.isPvm()) t.diagnostic(`PVM: IA32_TSC reads ${tsc} after writing 0 (no TSC offsetting)`);
        else assert.ok(tsc < bound, `IA32_TSC restarted from 0 (reads ${tsc}, bound ${bound})`);
        t.diagnostic(
          `MSRs set: ${result.set.map((x) => `${x.name}=0x${x.value.toString(16)}`).join(' ')}; skipped: ${result.skipped.map((x) => x.name).join(' ') || '-'}`,
        );
      } finally {
        vcpu.close();
      }
    } finally {
      vm.close();
    }
  } finally {
    kvm.close();
  }
});

test('real KVM: vCPUs created with gapped APIC IDs as their ids carry those IDs in CPUID and the LAPIC', (t) => {
  const kvm = openKvm(t);
  if (!kvm) return;
  try {
    const supported = supportedCpuid(kvm.fd);
    const profile: CpuProfile = KvmSystem.isPvm() ? 'compat' : 'host';
    const topology = parseTopology('sockets=2,cores=3', 6);
    const layout = apicIdLayout(topology);
    assert.deepEqual(layout.apicIds, [0, 1, 2, 4, 5, 6]);
    const indexList = msrIndexList(kvm.fd);
    const vm = Vm.create(kvm, 16 * MIB);
    const vcpus: Vcpu[] = [];
    try {
      layout.apicIds.forEach((apicId, index) => {
        const vcpu = Vcpu.create(vm.fd, apicId, kvm.vcpuMmapSize);
        vcpus.push(vcpu);
        const table = vcpuCpuid(supported, { topology, index, profile, layout });
        vcpu.setCpuid(table);
        setupMsrs(vcpu.fd, kvm.fd, { indexList, cpuid: table });
        const back = vcpuCpuidTable(vcpu.fd);
        assert.equal(cpuidLookup(back, 0xb, 0).edx, apicId);
        assert.equal(linuxTopology(back).packageId, layout.places[index].packageId);
        // The local APIC's ID register (offset 0x20; xAPIC mode after reset: bits 31:24) is KVM's vCPU id.
        const lapic = new DataView(new ArrayBuffer(kvm_lapic_state.size));
        check(native.ioctl(vcpu.fd, ioctls.KVM_GET_LAPIC, lapic), 'KVM_GET_LAPIC');
        assert.equal(lapic.getUint32(0x20, true) >>> 24, apicId, `vCPU ${index}: LAPIC ID`);
      });
    } finally {
      for (const v of vcpus) v.close();
      vm.close();
    }
  } finally {
    kvm.close();
  }
});
