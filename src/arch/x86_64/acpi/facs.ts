// ACPI 6.5 §5.2.10 Firmware ACPI Control Structure (FACS): required with fixed-hardware ACPI (not with
// HW_REDUCED_ACPI). Partita's has no hardware signature, no firmware waking vector and no S4BIOS; OSPM owns the
// global lock word in it. 64 bytes, 64-byte aligned, no checksum.
import { ByteWriter } from './sdt.js';

export const FACS_LENGTH = 64;
export const FACS_VERSION = 2;

export function buildFacs(): Uint8Array {
  return new ByteWriter()
    .ascii('FACS', 4) //  0 Signature
    .u32(FACS_LENGTH) //  4 Length
    .u32(0) //            8 Hardware Signature
    .u32(0) //           12 Firmware Waking Vector
    .u32(0) //           16 Global Lock
    .u32(0) //           20 Flags: no S4BIOS, no 64-bit wake
    .u64(0) //           24 X Firmware Waking Vector
    .u8(FACS_VERSION) // 32 Version
    .zeros(3) //         33 reserved
    .u32(0) //           36 OSPM Flags
    .zeros(24) //        40 reserved
    .finish();
}
