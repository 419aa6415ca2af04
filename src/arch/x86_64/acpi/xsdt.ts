// ACPI 6.5 §5.2.8 Extended System Description Table (XSDT): 64-bit pointers to every other table but the DSDT
// (which the FADT points to) and the FACS.
import { buildSdt, ByteWriter } from './sdt.js';

export const XSDT_REVISION = 1;

export function xsdtLength(entries: number): number {
  return 36 + 8 * entries;
}

export function buildXsdt(tableAddresses: readonly number[]): Uint8Array {
  const w = new ByteWriter();
  for (const a of tableAddresses) w.u64(a);
  return buildSdt('XSDT', XSDT_REVISION, w.finish());
}
