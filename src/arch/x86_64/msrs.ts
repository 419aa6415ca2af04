// The model-specific registers a Linux guest expects to find set when its vCPUs start, written with
// KVM_SET_MSRS right after the vCPU's CPUID (KVM judges MSR writes against the vCPU's CPUID).
//
// KVM already gives every new vCPU sane values for almost everything (IA32_APIC_BASE at 0xFEE00000 with the
// BSP flag on vCPU 0, PAT at its power-on default, the SYSCALL/SYSENTER MSRs zero); what firmware would
// normally do on top of that is done here.
import { ioctls, kvm_msr_entry, kvm_msr_list, kvm_msrs } from '../../kvm/abi.js';
import { check, native, SystemCallError } from '../../native/index.js';
import { cpuidLookup, LEAF1_EDX, vcpuCpuidTable, type CpuidEntry } from './cpuid.js';

export const MSR_IA32_TSC = 0x10;
export const MSR_IA32_APIC_BASE = 0x1b;
export const MSR_IA32_MISC_ENABLE = 0x1a0;
export const MSR_MTRR_DEF_TYPE = 0x2ff;

/** IA32_MISC_ENABLE bits (SDM vol. 4, table 2-2). */
export const MISC_ENABLE = {
  FAST_STRING: 1n << 0n,
  /** Branch trace storage unavailable. */
  BTS_UNAVAIL: 1n << 11n,
  /** Processor event-based sampling unavailable. */
  PEBS_UNAVAIL: 1n << 12n,
} as const;

/** IA32_MTRR_DEF_TYPE: bits [7:0] default memory type, bit 10 FE (fixed ranges on), bit 11 E (MTRRs on). */
export const MTRR_DEF_TYPE = { TYPE_WB: 6n, FIXED_ENABLE: 1n << 10n, ENABLE: 1n << 11n } as const;

export interface MsrValue {
  readonly index: number;
  readonly name: string;
  readonly value: bigint;
}

export interface MsrDefault extends MsrValue {
  /** Why a Linux guest wants it. */
  readonly reason: string;
  /**
   * When it is set: `listed` = only if KVM_GET_MSR_INDEX_LIST lists it; `mtrr` = if the vCPU's CPUID has
   * MTRR (CPUID.1:EDX[12]). KVM never lists the MTRR MSRs in its index list (a VMM saves them because the
   * guest CPUID has MTRR), yet handles them whenever that bit is set.
   */
  readonly when: 'listed' | 'mtrr';
  /** `set`: write `value`; `or`: write the vCPU's current value with the bits of `value` added. */
  readonly mode: 'set' | 'or';
}

/** What setupMsrs writes, in order. */
export const MSR_DEFAULTS: readonly MsrDefault[] = [
  {
    index: MSR_IA32_TSC,
    name: 'IA32_TSC',
    value: 0n,
    // A host write of 0 also tells KVM to give every vCPU of the VM the same TSC offset.
    reason: 'the TSC counts from 0 at power-on, the same on every vCPU',
    when: 'listed',
    mode: 'set',
  },
  {
    index: MSR_IA32_MISC_ENABLE,
    name: 'IA32_MISC_ENABLE',
    // Added to what KVM set at reset and at KVM_SET_CPUID2 (the BTS/PEBS "unavailable" bits, which depend on
    // the vPMU), so those stay KVM's.
    value: MISC_ENABLE.FAST_STRING,
    reason: 'fast-string operations enabled, as firmware leaves them (Linux uses REP MOVSB/STOSB only then)',
    when: 'listed',
    mode: 'or',
  },
  {
    index: MSR_MTRR_DEF_TYPE,
    name: 'IA32_MTRR_DEF_TYPE',
    // MTRRs enabled, default type write-back, fixed ranges off: with them on, the all-UC fixed-range MTRRs
    // KVM starts with would make the first MiB uncacheable.
    value: MTRR_DEF_TYPE.ENABLE | MTRR_DEF_TYPE.TYPE_WB,
    reason: 'MTRRs enabled with write-back default; with MTRRs off Linux treats memory as uncacheable',
    when: 'mtrr',
    mode: 'set',
  },
];

export class MsrError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'MsrError';
  }
}

const E2BIG = 7;

/** KVM_GET_MSR_INDEX_LIST on the /dev/kvm fd: the MSRs KVM saves and restores for a vCPU. */
export function msrIndexList(kvmFd: number, initialCapacity = 64): number[] {
  let n = Math.max(1, initialCapacity);
  for (let attempt = 0; attempt < 8; attempt++) {
    const buf = new Uint32Array(kvm_msr_list.size / 4 + n);
    buf[0] = n;
    const r = native.ioctl(kvmFd, ioctls.KVM_GET_MSR_INDEX_LIST, buf);
    if (r === -E2BIG) {
      // KVM wrote back how many there are; grow to that (and at least double, should the count be stale).
      n = Math.max(buf[0], n * 2);
      continue;
    }
    check(r, 'KVM_GET_MSR_INDEX_LIST');
    return Array.from(buf.subarray(1, 1 + buf[0]));
  }
  throw new Error('KVM_GET_MSR_INDEX_LIST: the list kept growing');
}

function encodeMsrs(entries: readonly { index: number; value: bigint }[]): DataView {
  const f = kvm_msr_entry.fields;
  const buf = new DataView(new ArrayBuffer(kvm_msrs.size + entries.length * kvm_msr_entry.size));
  buf.setUint32(kvm_msrs.fields.nmsrs.offset, entries.length, true);
  entries.forEach((e, i) => {
    const o = kvm_msrs.size + i * kvm_msr_entry.size;
    buf.setUint32(o + f.index.offset, e.index >>> 0, true);
    buf.setBigUint64(o + f.data.offset, BigInt.asUintN(64, e.value), true);
  });
  return buf;
}

const msrName = (index: number): string =>
  MSR_DEFAULTS.find((m) => m.index === index)?.name ?? `MSR 0x${index.toString(16)}`;

/**
 * KVM_SET_MSRS on a vCPU fd. KVM stops at the first MSR it refuses and returns how many it set; that MSR is
 * named in the error.
 */
export function setMsrs(vcpuFd: number, entries: readonly MsrValue[]): void {
  if (entries.length === 0) return;
  const r = check(native.ioctl(vcpuFd, ioctls.KVM_SET_MSRS, encodeMsrs(entries)), 'KVM_SET_MSRS');
  if (r < entries.length) {
    const bad = entries[r];
    throw new MsrError(
      `KVM_SET_MSRS: KVM refused ${bad.name} (0x${bad.index.toString(16)}) = 0x${bad.value.toString(16)}` +
        (r > 0
          ? ` after setting ${entries
              .slice(0, r)
              .map((e) => e.name)
              .join(', ')}`
          : ''),
    );
  }
}

/** KVM_GET_MSRS on a vCPU fd: the current value of each MSR. An MSR KVM cannot read is an error naming it. */
export function getMsrs(vcpuFd: number, indices: readonly number[]): Map<number, bigint> {
  const out = new Map<number, bigint>();
  if (indices.length === 0) return out;
  const buf = encodeMsrs(indices.map((index) => ({ index, value: 0n })));
  const r = check(native.ioctl(vcpuFd, ioctls.KVM_GET_MSRS, buf), 'KVM_GET_MSRS');
  if (r < indices.length)
    throw new MsrError(`KVM_GET_MSRS: KVM cannot read ${msrName(indices[r])} (0x${indices[r].toString(16)})`);
  indices.forEach((index, i) => {
    out.set(index, buf.getBigUint64(kvm_msrs.size + i * kvm_msr_entry.size + kvm_msr_entry.fields.data.offset, true));
  });
  return out;
}

export interface MsrSetupResult {
  /** The MSRs written, with their values. */
  readonly set: readonly MsrValue[];
  /** Defaults not written, and why (not in KVM's list, no MTRR in CPUID). */
  readonly skipped: readonly { readonly index: number; readonly name: string; readonly why: string }[];
}

export interface MsrSetupOptions {
  /** KVM_GET_MSR_INDEX_LIST, if the caller has it already (it is the same for every vCPU). */
  readonly indexList?: readonly number[];
  /** The vCPU's CPUID; read back with KVM_GET_CPUID2 when not given. */
  readonly cpuid?: readonly CpuidEntry[];
}

/**
 * Writes MSR_DEFAULTS to a vCPU (after its KVM_SET_CPUID2, before its first KVM_RUN). IA32_APIC_BASE is left
 * to KVM. Returns what was set and what was skipped; throws MsrError naming an MSR KVM refused.
 */
export function setupMsrs(vcpuFd: number, kvmFd: number, opts: MsrSetupOptions = {}): MsrSetupResult {
  const listed = new Set(opts.indexList ?? msrIndexList(kvmFd));
  let cpuid = opts.cpuid;
  const hasMtrr = (): boolean => {
    cpuid ??= vcpuCpuidTable(vcpuFd);
    return (cpuidLookup(cpuid, 1).edx & LEAF1_EDX.MTRR) !== 0;
  };
  const chosen: MsrDefault[] = [];
  const skipped: { index: number; name: string; why: string }[] = [];
  for (const m of MSR_DEFAULTS) {
    if (m.when === 'listed' && !listed.has(m.index)) {
      skipped.push({ index: m.index, name: m.name, why: 'not in KVM_GET_MSR_INDEX_LIST' });
    } else if (m.when === 'mtrr' && !hasMtrr()) {
      skipped.push({ index: m.index, name: m.name, why: 'the vCPU CPUID has no MTRR (CPUID.1:EDX[12])' });
    } else {
      chosen.push(m);
    }
  }
  const ors = chosen.filter((m) => m.mode === 'or').map((m) => m.index);
  const current = getMsrs(vcpuFd, ors);
  const set: MsrValue[] = chosen.map((m) => ({
    index: m.index,
    name: m.name,
    value: m.mode === 'or' ? (current.get(m.index) ?? 0n) | m.value : m.value,
  }));
  try {
    setMsrs(vcpuFd, set);
  } catch (e) {
    if (e instanceof SystemCallError) throw new MsrError(`setting ${set.map((m) => m.name).join(', ')}: ${e.message}`);
    throw e;
  }
  return { set, skipped };
}
