// vCPU topology (sockets × cores × threads) and the APIC ID each vCPU gets.
//
// APIC IDs are packed the way Intel SDM vol. 3A 10.12.8 ("Hierarchical Mapping of Shared Resources") and the
// CPUID "extended topology enumeration" leaves describe: the SMT ID in the low ceil(log2(threads)) bits, the
// core ID in the next ceil(log2(cores)) bits, the package ID above. When a count is not a power of two the
// ID space has holes (3 cores use core IDs 0..2 of 0..3), so APIC IDs are not simply 0..n-1. AMD's APM vol. 3
// appendix E ("ApicIdCoreIdSize", leaf 0x8000_001E) describes the same packing.
//
// vCPU index order: threads of a core are consecutive, then the cores of a package, then packages, i.e.
// index = (package × cores + core) × threads + thread. vCPU 0 is always APIC ID 0 (KVM's boot vCPU).

export interface CpuTopology {
  readonly sockets: number;
  readonly cores: number;
  readonly threads: number;
}

/** Where one vCPU sits in the topology. */
export interface VcpuPlace {
  readonly index: number;
  readonly packageId: number;
  /** Core number within its package (0..cores-1). */
  readonly coreId: number;
  /** Thread number within its core (0..threads-1). */
  readonly threadId: number;
  readonly apicId: number;
}

export interface ApicIdLayout {
  readonly topology: CpuTopology;
  /** Bits of the APIC ID holding the SMT (thread) ID: ceil(log2(threads)). */
  readonly smtBits: number;
  /** Bits holding the core ID: ceil(log2(cores)). */
  readonly coreBits: number;
  /** smtBits + coreBits: shifting an APIC ID right by this gives its package ID. */
  readonly packageShift: number;
  /** The x2APIC ID of each vCPU, by vCPU index. */
  readonly apicIds: readonly number[];
  readonly places: readonly VcpuPlace[];
  readonly maxApicId: number;
  /**
   * True when some APIC ID is above 254: such a vCPU is only addressable through x2APIC (255 is the xAPIC
   * broadcast ID), so the guest needs x2APIC (and the MADT x2APIC entries) to bring it up.
   */
  readonly needsX2apic: boolean;
}

/** Largest APIC ID an xAPIC can address (255 is broadcast). */
export const MAX_XAPIC_ID = 254;

/** ceil(log2(n)) for n ≥ 1: the number of ID bits needed to give n things distinct IDs. */
export function idBits(n: number): number {
  if (!Number.isSafeInteger(n) || n < 1) throw new RangeError(`idBits: ${n} is not a positive whole number`);
  let bits = 0;
  while (2 ** bits < n) bits++;
  return bits;
}

export function vcpuCount(topo: CpuTopology): number {
  return topo.sockets * topo.cores * topo.threads;
}

/** One socket with n single-threaded cores. */
export function defaultTopology(n: number): CpuTopology {
  if (!Number.isSafeInteger(n) || n < 1)
    throw new RangeError(`topology: the vCPU count must be a positive whole number, not ${n}`);
  return { sockets: 1, cores: n, threads: 1 };
}

export function formatTopology(topo: CpuTopology): string {
  return `sockets=${topo.sockets},cores=${topo.cores},threads=${topo.threads}`;
}

const KEYS = ['sockets', 'cores', 'threads'] as const;
type Key = (typeof KEYS)[number];

/**
 * Parses a `--topology` value such as "sockets=2,cores=4,threads=2". Any subset of the keys may be given;
 * with `vcpus`, an unspecified value is derived so the product is `vcpus` — cores take the remainder if
 * unspecified, otherwise sockets, otherwise threads; any other unspecified value is 1 — and a product other
 * than `vcpus` is an error. Without `vcpus`, unspecified values are 1. Errors are RangeErrors naming the
 * problem.
 */
export function parseTopology(spec: string, vcpus?: number): CpuTopology {
  const what = `--topology '${spec}'`;
  if (vcpus !== undefined && (!Number.isSafeInteger(vcpus) || vcpus < 1)) {
    throw new RangeError(`${what}: the vCPU count must be a positive whole number, not ${vcpus}`);
  }
  const given: Partial<Record<Key, number>> = {};
  const text = spec.trim();
  if (text === '') throw new RangeError(`${what}: empty; expected e.g. sockets=1,cores=4,threads=2`);
  for (const part of text.split(',')) {
    const item = part.trim();
    const eq = item.indexOf('=');
    if (eq < 0) {
      throw new RangeError(`${what}: '${item}' is not key=value (keys: ${KEYS.join(', ')})`);
    }
    const key = item.slice(0, eq).trim();
    const valueText = item.slice(eq + 1).trim();
    if (!(KEYS as readonly string[]).includes(key)) {
      throw new RangeError(`${what}: unknown key '${key}' (expected ${KEYS.join(', ')})`);
    }
    const k = key as Key;
    if (given[k] !== undefined) throw new RangeError(`${what}: ${k} is given twice`);
    if (!/^\d+$/.test(valueText)) throw new RangeError(`${what}: ${k}='${valueText}' is not a whole number`);
    const value = Number(valueText);
    if (value === 0) throw new RangeError(`${what}: ${k} must be at least 1, not 0`);
    if (!Number.isSafeInteger(value)) throw new RangeError(`${what}: ${k}=${valueText} is too large`);
    given[k] = value;
  }

  if (vcpus === undefined) {
    return { sockets: given.sockets ?? 1, cores: given.cores ?? 1, threads: given.threads ?? 1 };
  }
  // The one unspecified value that absorbs the rest of the vCPU count.
  const derived = (['cores', 'sockets', 'threads'] as const).find((k) => given[k] === undefined);
  const values: Record<Key, number> = {
    sockets: given.sockets ?? 1,
    cores: given.cores ?? 1,
    threads: given.threads ?? 1,
  };
  if (derived) {
    const rest = KEYS.filter((k) => k !== derived).reduce((p, k) => p * values[k], 1);
    if (vcpus % rest !== 0) {
      const others = KEYS.filter((k) => k !== derived)
        .map((k) => `${k}=${values[k]}`)
        .join(' × ');
      throw new RangeError(
        `${what}: ${vcpus} vCPUs cannot be divided evenly by ${others} (= ${rest}) to derive ${derived}`,
      );
    }
    values[derived] = vcpus / rest;
  }
  const product = values.sockets * values.cores * values.threads;
  if (product !== vcpus) {
    throw new RangeError(
      `${what}: sockets=${values.sockets} × cores=${values.cores} × threads=${values.threads} = ${product}, but the VM has ${vcpus} vCPU${vcpus === 1 ? '' : 's'}`,
    );
  }
  return values;
}

function checkTopology(topo: CpuTopology): void {
  for (const k of KEYS) {
    const v = topo[k];
    if (!Number.isSafeInteger(v) || v < 1)
      throw new RangeError(`topology: ${k} must be a positive whole number, not ${v}`);
  }
}

/** The APIC ID of every vCPU, and the bit fields they are built from. */
export function apicIdLayout(topo: CpuTopology): ApicIdLayout {
  checkTopology(topo);
  const smtBits = idBits(topo.threads);
  const coreBits = idBits(topo.cores);
  const packageShift = smtBits + coreBits;
  if (packageShift + idBits(topo.sockets) > 32) {
    throw new RangeError(`topology ${formatTopology(topo)}: APIC IDs would not fit in 32 bits`);
  }
  const places: VcpuPlace[] = [];
  const n = vcpuCount(topo);
  for (let index = 0; index < n; index++) {
    const threadId = index % topo.threads;
    const coreId = Math.floor(index / topo.threads) % topo.cores;
    const packageId = Math.floor(index / (topo.threads * topo.cores));
    // Multiplication rather than << so a package ID at bit 31 stays positive.
    const apicId = packageId * 2 ** packageShift + coreId * 2 ** smtBits + threadId;
    places.push({ index, packageId, coreId, threadId, apicId });
  }
  const apicIds = places.map((p) => p.apicId);
  const maxApicId = apicIds[apicIds.length - 1];
  return {
    topology: { ...topo },
    smtBits,
    coreBits,
    packageShift,
    apicIds,
    places,
    maxApicId,
    needsX2apic: maxApicId > MAX_XAPIC_ID,
  };
}
