// Byte units and the parser for user-given sizes ("512M", "128G", "1T", "4096").
export const KIB = 1024;
export const MIB = 1024 * KIB;
export const GIB = 1024 * MIB;
export const TIB = 1024 * GIB;

const suffixes: Record<string, number> = { '': 1, B: 1, K: KIB, M: MIB, G: GIB, T: TIB };

/** Parses a size with an optional binary suffix (K, M, G, T, with optional "iB"/"B"); throws a clear error. */
export function parseSize(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$/i.exec(text);
  if (!m) throw new RangeError(`"${text}" is not a size (examples: 512M, 4G, 1T)`);
  const value = Number(m[1]) * suffixes[m[2].toUpperCase()];
  if (!Number.isFinite(value) || !Number.isSafeInteger(Math.round(value)))
    throw new RangeError(`"${text}" is too large`);
  // Rounding would silently turn "1.5" (bytes) into 2: a fraction of a byte is refused, naming the unit.
  if (!Number.isInteger(value)) {
    const hint = m[2] === '' ? ' (without a suffix a size counts bytes: e.g. 1.5G)' : '';
    throw new RangeError(`"${text}" is ${value} bytes, not a whole number of bytes${hint}`);
  }
  return value;
}

export function formatSize(bytes: number): string {
  for (const [unit, size] of [
    ['T', TIB],
    ['G', GIB],
    ['M', MIB],
    ['K', KIB],
  ] as const) {
    if (bytes >= size && bytes % size === 0) return `${bytes / size}${unit}`;
  }
  return `${bytes}`;
}
