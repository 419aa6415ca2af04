// The CPUID a guest sees: KVM_GET_SUPPORTED_CPUID, filtered by a feature profile, with the topology leaves
// (APIC IDs, logical-processor counts, cache sharing, extended topology) rewritten for this vCPU's place in
// the VM's sockets × cores × threads topology.
//
// Bit positions and field meanings: Intel SDM vol. 2A, CPUID instruction (leaves 0x1, 0x4, 0x7, 0xB, 0x1F);
// AMD APM vol. 3, appendix E (0x8000_0001, 0x8000_0008, 0x8000_001D, 0x8000_001E); the KVM paravirtual leaves
// 0x4000_0000/0x4000_0001 as Documentation/virt/kvm/x86/cpuid.rst describes them.
import { ioctls, kvm_cpuid2, kvm_cpuid_entry2 } from '../../kvm/abi.js';
import { check, native } from '../../native/index.js';
import { apicIdLayout, type ApicIdLayout, type CpuTopology } from './topology.js';

export interface CpuidEntry {
  function: number;
  index: number;
  flags: number;
  eax: number;
  ebx: number;
  ecx: number;
  edx: number;
}

/**
 * `host`: everything KVM supports. `compat`: additionally masks what KVM's instruction emulator cannot run
 * (XSAVE and everything whose state lives in XSAVE areas — the AVX and AVX-512 families, AMX, MPX, PKU, CET —
 * and CMPXCHG16B), for nested/emulated KVM such as PVM.
 */
export type CpuProfile = 'host' | 'compat';

/** kvm_cpuid_entry2.flags: the entry applies to one sub-leaf (ECX value) only. */
export const KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1;

export type CpuVendor = 'intel' | 'amd' | 'other';

const E2BIG = 7;

export function supportedCpuid(kvmFd: number): CpuidEntry[] {
  for (let n = 128; n <= 4096; n *= 2) {
    const buf = new DataView(new ArrayBuffer(kvm_cpuid2.size + n * kvm_cpuid_entry2.size));
    buf.setUint32(0, n, true);
    const r = native.ioctl(kvmFd, ioctls.KVM_GET_SUPPORTED_CPUID, buf);
    if (r === -E2BIG) continue;
    check(r, 'KVM_GET_SUPPORTED_CPUID');
    return decodeCpuid(buf);
  }
  throw new Error('KVM_GET_SUPPORTED_CPUID: more than 4096 entries');
}

/** KVM_GET_CPUID2: the table a vCPU was given with KVM_SET_CPUID2 (empty before that). */
export function vcpuCpuidTable(vcpuFd: number): CpuidEntry[] {
  for (let n = 128; n <= 4096; n *= 2) {
    const buf = new DataView(new ArrayBuffer(kvm_cpuid2.size + n * kvm_cpuid_entry2.size));
    buf.setUint32(0, n, true);
    const r = native.ioctl(vcpuFd, ioctls.KVM_GET_CPUID2, buf);
    if (r === -E2BIG) continue;
    check(r, 'KVM_GET_CPUID2');
    return decodeCpuid(buf);
  }
  throw new Error('KVM_GET_CPUID2: more than 4096 entries');
}

export function decodeCpuid(buf: DataView): CpuidEntry[] {
  const f = kvm_cpuid_entry2.fields;
  const n = buf.getUint32(kvm_cpuid2.fields.nent.offset, true);
  const out: CpuidEntry[] = [];
  for (let i = 0; i < n; i++) {
    const o = kvm_cpuid2.size + i * kvm_cpuid_entry2.size;
    out.push({
      function: buf.getUint32(o + f.function.offset, true),
      index: buf.getUint32(o + f.index.offset, true),
      flags: buf.getUint32(o + f.flags.offset, true),
      eax: buf.getUint32(o + f.eax.offset, true),
      ebx: buf.getUint32(o + f.ebx.offset, true),
      ecx: buf.getUint32(o + f.ecx.offset, true),
      edx: buf.getUint32(o + f.edx.offset, true),
    });
  }
  return out;
}

export function encodeCpuid(entries: readonly CpuidEntry[]): DataView {
  const f = kvm_cpuid_entry2.fields;
  const buf = new DataView(new ArrayBuffer(kvm_cpuid2.size + entries.length * kvm_cpuid_entry2.size));
  buf.setUint32(kvm_cpuid2.fields.nent.offset, entries.length, true);
  entries.forEach((e, i) => {
    const o = kvm_cpuid2.size + i * kvm_cpuid_entry2.size;
    buf.setUint32(o + f.function.offset, e.function >>> 0, true);
    buf.setUint32(o + f.index.offset, e.index >>> 0, true);
    buf.setUint32(o + f.flags.offset, e.flags >>> 0, true);
    buf.setUint32(o + f.eax.offset, e.eax >>> 0, true);
    buf.setUint32(o + f.ebx.offset, e.ebx >>> 0, true);
    buf.setUint32(o + f.ecx.offset, e.ecx >>> 0, true);
    buf.setUint32(o + f.edx.offset, e.edx >>> 0, true);
  });
  return buf;
}

// ---------------------------------------------------------------------------------------------------------
// Bits and fields.

const bit = (n: number): number => 2 ** n;
const bits = (...ns: number[]): number => ns.reduce((m, n) => m + bit(n), 0);
const clear = (value: number, mask: number): number => (value & ~mask) >>> 0;
const setIf = (value: number, mask: number, on: boolean): number => (on ? (value | mask) >>> 0 : clear(value, mask));
/** value with bits [lo, lo+width) replaced by field (which is clamped to the field's maximum). */
function withField(value: number, lo: number, width: number, field: number): number {
  const max = 2 ** width - 1;
  const mask = max * 2 ** lo;
  return ((value & ~mask) | (Math.min(Math.max(field, 0), max) * 2 ** lo)) >>> 0;
}
const field = (value: number, lo: number, width: number): number => Math.floor((value >>> 0) / 2 ** lo) % 2 ** width;

/** CPUID.1:ECX */
export const LEAF1_ECX = {
  FMA: bit(12),
  CX16: bit(13),
  X2APIC: bit(21),
  TSC_DEADLINE: bit(24),
  XSAVE: bit(26),
  OSXSAVE: bit(27),
  AVX: bit(28),
  F16C: bit(29),
  HYPERVISOR: bit(31),
} as const;
/** CPUID.1:EDX */
export const LEAF1_EDX = { MTRR: bit(12), APIC: bit(9), HTT: bit(28) } as const;
/** CPUID.8000_0001:ECX (AMD) */
export const EXT1_ECX = { CMP_LEGACY: bit(1), XOP: bit(11), LWP: bit(15), FMA4: bit(16), TOPOEXT: bit(22) } as const;

/** CPUID.4000_0001:EAX (KVM_FEATURE_*), Documentation/virt/kvm/x86/cpuid.rst. */
export const KVM_FEATURES: Readonly<Record<string, number>> = {
  CLOCKSOURCE: 0,
  NOP_IO_DELAY: 1,
  MMU_OP: 2,
  CLOCKSOURCE2: 3,
  ASYNC_PF: 4,
  STEAL_TIME: 5,
  PV_EOI: 6,
  PV_UNHALT: 7,
  PV_TLB_FLUSH: 9,
  ASYNC_PF_VMEXIT: 10,
  PV_SEND_IPI: 11,
  POLL_CONTROL: 12,
  PV_SCHED_YIELD: 13,
  ASYNC_PF_INT: 14,
  MSI_EXT_DEST_ID: 15,
  HC_MAP_GPA_RANGE: 16,
  MIGRATION_CONTROL: 17,
  CLOCKSOURCE_STABLE_BIT: 24,
};
/** The KVM hypervisor signature in CPUID.4000_0000 EBX, ECX, EDX. */
export const KVM_SIGNATURE = 'KVMKVMKVM\0\0\0';

/** What `compat` clears: features needing XSAVE-managed state, or CMPXCHG16B. */
const COMPAT_MASK = {
  leaf1Ecx: LEAF1_ECX.FMA | LEAF1_ECX.CX16 | LEAF1_ECX.XSAVE | LEAF1_ECX.OSXSAVE | LEAF1_ECX.AVX | LEAF1_ECX.F16C,
  // AVX2 5, MPX 14, AVX512F 16, DQ 17, IFMA 21, PF 26, ER 27, CD 28, BW 30, VL 31
  leaf7Ebx: bits(5, 14, 16, 17, 21, 26, 27, 28, 30, 31),
  // AVX512_VBMI 1, PKU 3, OSPKE 4, AVX512_VBMI2 6, CET_SS 7, VAES 9, VPCLMULQDQ 10, AVX512_VNNI 11,
  // AVX512_BITALG 12, AVX512_VPOPCNTDQ 14
  leaf7Ecx: bits(1, 3, 4, 6, 7, 9, 10, 11, 12, 14),
  // AVX512_4VNNIW 2, AVX512_4FMAPS 3, AVX512_VP2INTERSECT 8, ARCH_LBR 19, CET_IBT 20, AMX_BF16 22,
  // AVX512_FP16 23, AMX_TILE 24, AMX_INT8 25
  leaf7Edx: bits(2, 3, 8, 19, 20, 22, 23, 24, 25),
  // 7.1 EAX: SHA512 0, SM3 1, SM4 2, AVX_VNNI 4, AVX512_BF16 5, AMX_FP16 21, AVX_IFMA 23
  leaf7s1Eax: bits(0, 1, 2, 4, 5, 21, 23),
  // 7.1 EDX: AVX_VNNI_INT8 4, AVX_NE_CONVERT 5, AMX_COMPLEX 8, AVX_VNNI_INT16 10, AVX10 19, APX_F 21
  leaf7s1Edx: bits(4, 5, 8, 10, 19, 21),
  ext1Ecx: EXT1_ECX.XOP | EXT1_ECX.LWP | EXT1_ECX.FMA4,
  // XSAVE state enumeration, AMX tile/TMUL info, AVX10 info
  droppedLeaves: new Set([0xd, 0x1d, 0x1e, 0x24]),
} as const;

/** Level types of CPUID leaves 0xB / 0x1F, ECX[15:8]. */
export const TOPOLOGY_LEVEL = { INVALID: 0, SMT: 1, CORE: 2 } as const;

// ---------------------------------------------------------------------------------------------------------
// Reading a table.

/**
 * What CPUID (function, index) returns with this table, as KVM answers it: the entry for that leaf (and
 * sub-leaf, when the entry's index is significant); for an unlisted sub-leaf of 0xB/0x1F, ECX[7:0] = the
 * sub-leaf and EDX = the x2APIC ID (SDM: "EDX is the x2APIC ID even for invalid sub-leaves"); otherwise zeros.
 */
export function cpuidLookup(entries: readonly CpuidEntry[], fn: number, index = 0): CpuidEntry {
  const e = entries.find(
    (x) => x.function === fn && ((x.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX) === 0 || x.index === index),
  );
  if (e) return e;
  const out: CpuidEntry = { function: fn, index, flags: 0, eax: 0, ebx: 0, ecx: 0, edx: 0 };
  if (fn === 0xb || fn === 0x1f) {
    const one = entries.find((x) => x.function === fn && x.index === 1);
    if (one) {
      out.ecx = index & 0xff;
      out.edx = one.edx;
    }
  }
  return out;
}

function regString(...regs: number[]): string {
  const b = Buffer.alloc(regs.length * 4);
  regs.forEach((r, i) => b.writeUInt32LE(r >>> 0, i * 4));
  return b.toString('latin1');
}

/** The 12-character vendor string of leaf 0 (EBX, EDX, ECX), e.g. "GenuineIntel". */
export function vendorString(entries: readonly CpuidEntry[]): string {
  const l0 = entries.find((e) => e.function === 0);
  return l0 ? regString(l0.ebx, l0.edx, l0.ecx) : '';
}

export function cpuVendor(entries: readonly CpuidEntry[]): CpuVendor {
  switch (vendorString(entries)) {
    case 'GenuineIntel':
    case 'CentaurHauls':
    case '  Shanghai  ':
      return 'intel'; // these use Intel's leaf 4 / 0xB topology enumeration
    case 'AuthenticAMD':
    case 'HygonGenuine':
      return 'amd';
    default:
      return 'other';
  }
}

/** The hypervisor signature in leaf 0x4000_0000, or undefined when the leaf is absent. */
export function hypervisorSignature(entries: readonly CpuidEntry[]): string | undefined {
  const e = entries.find((x) => x.function === 0x4000_0000);
  return e ? regString(e.ebx, e.ecx, e.edx) : undefined;
}

// ---------------------------------------------------------------------------------------------------------
// The per-vCPU table.

export interface VcpuCpuidOptions {
  /** The VM's topology; its product is the VM's vCPU count. */
  readonly topology: CpuTopology;
  /** This vCPU's index, 0 .. vCPU count - 1 (not its APIC ID). */
  readonly index: number;
  readonly profile: CpuProfile;
  /** apicIdLayout(topology), if the caller has it already. */
  readonly layout?: ApicIdLayout;
}

/**
 * The CPUID table for vCPU `index` of a VM with the given topology, built from KVM_GET_SUPPORTED_CPUID.
 * Give it to the vCPU created with KVM_CREATE_VCPU(id = apicIdLayout(topology).apicIds[index]): KVM uses the
 * vCPU id as the local APIC ID, and this table reports that same ID.
 */
export function vcpuCpuid(supported: readonly CpuidEntry[], opts: VcpuCpuidOptions): CpuidEntry[] {
  const layout = opts.layout ?? apicIdLayout(opts.topology);
  const place = layout.places[opts.index];
  if (!Number.isInteger(opts.index) || !place) {
    throw new RangeError(`vcpuCpuid: vCPU index ${opts.index} is outside 0..${layout.apicIds.length - 1}`);
  }
  const { threads, cores } = layout.topology;
  const compat = opts.profile === 'compat';
  const vendor = cpuVendor(supported);
  const apicId = place.apicId;
  const logicalPerPackage = threads * cores;
  const idsPerPackage = 2 ** layout.packageShift; // addressable logical-processor IDs per package
  const idsPerCore = 2 ** layout.smtBits;
  const maxBasic = supported.find((e) => e.function === 0)?.eax ?? 0;

  const out: CpuidEntry[] = [];
  for (const src of supported) {
    const e = { ...src };
    if (compat && COMPAT_MASK.droppedLeaves.has(e.function)) continue;
    switch (e.function) {
      case 0x1:
        // EBX[31:24] initial APIC ID; [23:16] addressable logical-processor IDs per package (a power of two
        // here; the guest rounds it up to one anyway); [15:0] (CLFLUSH size, brand index) as KVM says.
        e.ebx = withField(e.ebx, 24, 8, apicId & 0xff);
        e.ebx = withField(e.ebx, 16, 8, Math.min(idsPerPackage, 255));
        e.edx = setIf(e.edx, LEAF1_EDX.HTT, idsPerPackage > 1);
        e.ecx = (e.ecx | LEAF1_ECX.HYPERVISOR) >>> 0;
        if (compat) e.ecx = clear(e.ecx, COMPAT_MASK.leaf1Ecx);
        break;
      case 0x4:
        // Deterministic cache parameters (Intel): L1 and L2 per core, shared by its SMT siblings; L3 and
        // beyond by the whole package. Sub-leaves with cache type 0 (no more caches) are left alone.
        if (vendor === 'intel' && field(e.eax, 0, 5) !== 0) {
          const level = field(e.eax, 5, 3);
          e.eax = withField(e.eax, 14, 12, (level <= 2 ? idsPerCore : idsPerPackage) - 1);
          e.eax = withField(e.eax, 26, 6, 2 ** layout.coreBits - 1);
        }
        break;
      case 0x7:
        if (compat && e.index === 0) {
          e.ebx = clear(e.ebx, COMPAT_MASK.leaf7Ebx);
          e.ecx = clear(e.ecx, COMPAT_MASK.leaf7Ecx);
          e.edx = clear(e.edx, COMPAT_MASK.leaf7Edx);
        }
        if (compat && e.index === 1) {
          e.eax = clear(e.eax, COMPAT_MASK.leaf7s1Eax);
          e.edx = clear(e.edx, COMPAT_MASK.leaf7s1Edx);
        }
        break;
      case 0xb:
      case 0x1f:
        continue; // generated below
      case 0x8000_0001:
        if (vendor === 'amd') e.ecx = setIf(e.ecx, EXT1_ECX.CMP_LEGACY, logicalPerPackage > 1);
        if (compat) e.ecx = clear(e.ecx, COMPAT_MASK.ext1Ecx);
        break;
      case 0x8000_0008:
        // AMD: ECX[7:0] NC = logical processors per package - 1, [15:12] ApicIdCoreIdSize = APIC ID bits
        // below the package ID. Intel: ECX is reserved.
        if (vendor === 'amd') {
          e.ecx = withField(e.ecx, 0, 8, logicalPerPackage - 1);
          e.ecx = withField(e.ecx, 12, 4, layout.packageShift);
        }
        break;
      case 0x8000_001d:
        // AMD cache topology: EAX[25:14] NumSharingCache - 1, same sharing as leaf 4 on Intel. Linux derives
        // the LLC ID as APIC ID >> order(NumSharingCache), so an addressable (power-of-two) count keeps that
        // shift equal to the package shift even when cores or threads are not powers of two.
        if (vendor === 'amd' && field(e.eax, 0, 5) !== 0) {
          const level = field(e.eax, 5, 3);
          e.eax = withField(e.eax, 14, 12, (level <= 2 ? idsPerCore : idsPerPackage) - 1);
        }
        break;
      case 0x8000_001e:
        // AMD: EAX extended APIC ID; EBX[7:0] core ID, [15:8] threads per core - 1; ECX[7:0] node ID (one
        // node per package), [10:8] nodes per package - 1 = 0.
        if (vendor === 'amd') {
          e.eax = apicId >>> 0;
          e.ebx = withField(withField(0, 0, 8, place.coreId), 8, 8, threads - 1);
          e.ecx = withField(0, 0, 8, place.packageId);
          e.edx = 0;
        }
        break;
      case 0x8000_0026:
        // AMD extended CPU topology (Zen 4+): not generated; without it the guest falls back to leaf 0xB.
        if (vendor === 'amd') continue;
        break;
    }
    out.push(e);
  }
  if (maxBasic >= 0xb) out.push(...extendedTopologyLeaf(0xb, layout, apicId));
  if (maxBasic >= 0x1f) out.push(...extendedTopologyLeaf(0x1f, layout, apicId));
  out.sort((a, b) => a.function - b.function || a.index - b.index);
  return out;
}

/**
 * Leaf 0xB or 0x1F: sub-leaf 0 the SMT level, 1 the core level, 2 the first invalid level (the guest walks
 * sub-leaves until it sees level type 0; KVM answers later ones from sub-leaf 1's EDX). EDX is the x2APIC ID
 * in every sub-leaf.
 */
function extendedTopologyLeaf(fn: number, layout: ApicIdLayout, apicId: number): CpuidEntry[] {
  const { threads, cores } = layout.topology;
  const entry = (index: number, shift: number, count: number, type: number): CpuidEntry => ({
    function: fn,
    index,
    flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
    eax: shift,
    ebx: withField(0, 0, 16, count),
    ecx: withField(index & 0xff, 8, 8, type),
    edx: apicId >>> 0,
  });
  return [
    entry(0, layout.smtBits, threads, TOPOLOGY_LEVEL.SMT),
    entry(1, layout.packageShift, threads * cores, TOPOLOGY_LEVEL.CORE),
    entry(2, 0, 0, TOPOLOGY_LEVEL.INVALID),
  ];
}

// ---------------------------------------------------------------------------------------------------------
// Debugging.

const hex = (n: number, w = 8): string => (n >>> 0).toString(16).padStart(w, '0');

function flagNames(value: number, names: Readonly<Record<string, number>>, asBits = false): string[] {
  return Object.entries(names)
    .filter(([, b]) => (asBits ? (value >>> 0) & bit(b) : (value >>> 0) & b) !== 0)
    .map(([n]) => n.toLowerCase());
}

function cacheDescription(eax: number): string {
  const type = ['none', 'data', 'instruction', 'unified'][field(eax, 0, 5)] ?? `type ${field(eax, 0, 5)}`;
  return `L${field(eax, 5, 3)} ${type}, shared by ${field(eax, 14, 12) + 1} IDs`;
}

/** What the topology and feature fields of one entry say, in words. */
function annotate(e: CpuidEntry): string {
  switch (e.function) {
    case 0x0:
      return `vendor "${regString(e.ebx, e.edx, e.ecx)}", max basic leaf 0x${e.eax.toString(16)}`;
    case 0x1: {
      const on = flagNames(e.ecx, {
        hypervisor: LEAF1_ECX.HYPERVISOR,
        x2apic: LEAF1_ECX.X2APIC,
        xsave: LEAF1_ECX.XSAVE,
        avx: LEAF1_ECX.AVX,
        cx16: LEAF1_ECX.CX16,
      });
      if (e.edx & LEAF1_EDX.HTT) on.push('htt');
      return `initial APIC ID ${field(e.ebx, 24, 8)}, ${field(e.ebx, 16, 8)} logical IDs/package; ${on.join(' ') || '-'}`;
    }
    case 0x4:
      return field(e.eax, 0, 5) === 0
        ? 'no more caches'
        : `${cacheDescription(e.eax)}, ${field(e.eax, 26, 6) + 1} core IDs/package`;
    case 0xb:
    case 0x1f: {
      const type = field(e.ecx, 8, 8);
      const name = ['invalid', 'SMT', 'core', 'module', 'tile', 'die'][type] ?? `type ${type}`;
      return `level ${field(e.ecx, 0, 8)} ${name}: shift ${field(e.eax, 0, 5)}, ${field(e.ebx, 0, 16)} logical, x2APIC ID ${e.edx >>> 0}`;
    }
    case 0xd:
      return e.index === 0
        ? `XSAVE features 0x${hex(e.edx)}${hex(e.eax)}, area ${e.ecx} bytes`
        : `XSAVE component ${e.index}`;
    case 0x4000_0000:
      return `hypervisor "${regString(e.ebx, e.ecx, e.edx).replace(/\0/g, '\\0')}", max leaf 0x${e.eax.toString(16)}`;
    case 0x4000_0001:
      return `KVM features: ${flagNames(e.eax, KVM_FEATURES, true).join(' ') || '-'}`;
    case 0x8000_0000:
      return `max extended leaf 0x${e.eax.toString(16)}`;
    case 0x8000_0001: {
      const on = flagNames(e.ecx, {
        cmp_legacy: EXT1_ECX.CMP_LEGACY,
        topoext: EXT1_ECX.TOPOEXT,
        xop: EXT1_ECX.XOP,
        fma4: EXT1_ECX.FMA4,
      });
      return on.join(' ') || '';
    }
    case 0x8000_0008:
      return `phys ${field(e.eax, 0, 8)} bits, virt ${field(e.eax, 8, 8)} bits; NC ${field(e.ecx, 0, 8) + 1}, ApicIdCoreIdSize ${field(e.ecx, 12, 4)}`;
    case 0x8000_001d:
      return field(e.eax, 0, 5) === 0 ? 'no more caches' : cacheDescription(e.eax);
    case 0x8000_001e:
      return `ext APIC ID ${e.eax >>> 0}, core ${field(e.ebx, 0, 8)}, ${field(e.ebx, 8, 8) + 1} threads/core, node ${field(e.ecx, 0, 8)}`;
    default:
      return '';
  }
}

/** One line per entry: leaf.subleaf (* = sub-leaf significant), the four registers, and what they mean. */
export function describeCpuid(entries: readonly CpuidEntry[]): string[] {
  return entries.map((e) => {
    const sig = e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX ? '*' : ' ';
    const note = annotate(e);
    return `0x${hex(e.function)}.${e.index}${sig} eax=${hex(e.eax)} ebx=${hex(e.ebx)} ecx=${hex(e.ecx)} edx=${hex(e.edx)}${note ? `  ${note}` : ''}`;
  });
}
