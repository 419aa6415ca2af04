// The CPUID a guest sees: KVM_GET_SUPPORTED_CPUID, filtered by a feature profile, with per-vCPU APIC IDs.
// Bit positions: Intel SDM vol. 2A, CPUID instruction, tables 3-8 to 3-10; AMD APM vol. 3, appendix E.
import { ioctls, kvm_cpuid2, kvm_cpuid_entry2 } from '../../kvm/abi.js';
import { check, native } from '../../native/index.js';

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
 * (XSAVE and the AVX family that depends on it, CMPXCHG16B), for nested/emulated KVM such as PVM.
 */
export type CpuProfile = 'host' | 'compat';


export function supportedCpuid(kvmFd: number): CpuidEntry[] {
  for (let n = 128; n <= 4096; n *= 2) {
    const buf = new DataView(new ArrayBuffer(kvm_cpuid2.size + n * kvm_cpuid_entry2.size));
    buf.setUint32(0, n, true);
    const r = native.ioctl(kvmFd, ioctls.KVM_GET_SUPPORTED_CPUID, buf);
    if (r === -7 /* E2BIG */) continue;
    check(r, 'KVM_GET_SUPPORTED_CPUID');
    return decodeCpuid(buf);
  }
  throw new Error('KVM_GET_SUPPORTED_CPUID: more than 4096 entries');
}

export function decodeCpuid(buf: DataView): CpuidEntry[] {
  const n = buf.getUint32(0, true);
  const out: CpuidEntry[] = [];
  for (let i = 0; i < n; i++) {
    const o = kvm_cpuid2.size + i * kvm_cpuid_entry2.size;
    out.push({
      function: buf.getUint32(o, true),
      index: buf.getUint32(o + 4, true),
      flags: buf.getUint32(o + 8, true),
      eax: buf.getUint32(o + 12, true),
      ebx: buf.getUint32(o + 16, true),
      ecx: buf.getUint32(o + 20, true),
      edx: buf.getUint32(o + 24, true),
    });
  }
  return out;
}

export function encodeCpuid(entries: readonly CpuidEntry[]): DataView {
  const buf = new DataView(new ArrayBuffer(kvm_cpuid2.size + entries.length * kvm_cpuid_entry2.size));
  buf.setUint32(0, entries.length, true);
  entries.forEach((e, i) => {
    const o = kvm_cpuid2.size + i * kvm_cpuid_entry2.size;
    buf.setUint32(o, e.function, true);
    buf.setUint32(o + 4, e.index, true);
    buf.setUint32(o + 8, e.flags, true);
    buf.setUint32(o + 12, e.eax >>> 0, true);
    buf.setUint32(o + 16, e.ebx >>> 0, true);
    buf.setUint32(o + 20, e.ecx >>> 0, true);
    buf.setUint32(o + 24, e.edx >>> 0, true);
  });
  return buf;
}

const bit = (n: number): number => (1 << n) >>> 0;
const clear = (value: number, mask: number): number => (value & ~mask) >>> 0;

/** The CPUID table for one vCPU. */
export function vcpuCpuid(supported: readonly CpuidEntry[], opts: { apicId: number; vcpuCount: number; profile: CpuProfile }): CpuidEntry[] {
  const compat = opts.profile === 'compat';
  const out: CpuidEntry[] = [];
  for (const src of supported) {
    const e = { ...src };
    switch (e.function) {
      case 0x1:
        // EBX[31:24] initial APIC ID, [23:16] addressable logical processors; ECX[31] hypervisor present.
        e.ebx = ((e.ebx & 0x0000ffff) | ((Math.min(opts.vcpuCount, 255) & 0xff) << 16) | ((opts.apicId & 0xff) << 24)) >>> 0;
        e.ecx = (e.ecx | bit(31)) >>> 0;
        if (opts.vcpuCount > 1) e.edx = (e.edx | bit(28)) >>> 0; // HTT: more than one logical processor
        if (compat) e.ecx = clear(e.ecx, bit(13) | bit(26) | bit(27) | bit(28) | bit(12) | bit(29)); // CX16, XSAVE, OSXSAVE, AVX, FMA, F16C
        break;
      case 0x7:
        if (compat && e.index === 0) {
          // AVX2 (EBX5), AVX-512 family (EBX16,17,21,26,27,28,30,31), AVX512_VBMI etc. in ECX, AMX in EDX.
          e.ebx = clear(e.ebx, bit(5) | bit(16) | bit(17) | bit(21) | bit(26) | bit(27) | bit(28) | bit(30) | bit(31));
          e.ecx = clear(e.ecx, bit(1) | bit(6) | bit(11) | bit(12) | bit(14) | bit(9) | bit(10));
          e.edx = clear(e.edx, bit(2) | bit(3) | bit(8) | bit(22) | bit(23) | bit(24));
        }
        if (compat && e.index === 1) e.eax = clear(e.eax, bit(4) | bit(5)); // AVX-VNNI, AVX512_BF16
        break;
      case 0xb:
      case 0x1f:
        e.edx = opts.apicId >>> 0; // x2APIC ID of this logical processor
        break;
      case 0xd:
        if (compat) continue; // no XSAVE: no XSAVE state enumeration
        break;
    }
    out.push(e);
  }
  return out;
}
