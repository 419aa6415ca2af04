// ACPI 6.5 §5.2.10 Firmware ACPI Control Structure (FACS): the firmware/OS handshake area in read/write memory
// (waking vector, global lock). Optional on a hardware-reduced platform; a machine with a full fixed-hardware
// FADT (PM1 blocks, SCI) has one, pointed to by the FADT's FIRMWARE_CTRL. Unlike the other tables it has no
// checksum, and it must be 64-byte aligned.
import { ByteWriter } from './sdt.js';

export const FACS_LENGTH = 64;
export const FACS_ALIGN = 64;
/** Version 2: the fields up to OSPM Flags (ACPI 4.0 and later). */
export const FACS_VERSION = 2;

export function buildFacs(): Uint8Array {
  const w = new ByteWriter();
  w.ascii('FACS', 4)
    .u32(FACS_LENGTH) //  4
    .u32(0) //            8 Hardware Signature: changes when the hardware configuration does (never, here)
    .u32(0) //           12 Firmware Waking Vector (the OS writes it)
    .u32(0) //           16 Global Lock
    .u32(0) //           20 Flags: no S4BIOS, no 64-bit wake
    .u64(0) //           24 X Firmware Waking Vector
    .u8(FACS_VERSION) // 32
    .zeros(3) //         33 reserved
    .u32(0) //           36 OSPM Flags
    .zeros(24); //       40 reserved
  const facs = w.finish();
  if (facs.length !== FACS_LENGTH) throw new Error(`FACS is ${facs.length} bytes, not ${FACS_LENGTH}`);
  return facs;
}
