// ACPI 6.5 §5.2.5.3 Root System Description Pointer (RSDP) Structure, revision 2 (ACPI 2.0+): the XSDT's
// address, both checksums. Found by OSPM at a 16-byte boundary in 0xE0000-0xFFFFF (§5.2.5.1) or handed over by
// the loader (PVH start_info.rsdp_paddr, Linux boot_params.acpi_rsdp_addr).
import { ByteWriter, fixChecksum, OEM_ID } from './sdt.js';

export const RSDP_SIGNATURE = 'RSD PTR ';
export const RSDP_REVISION = 2;
export const RSDP_LENGTH = 36;
/** The ACPI 1.0 checksum covers the first 20 bytes; the extended checksum the whole structure. */
export const RSDP_V1_LENGTH = 20;

export function buildRsdp(xsdtAddress: number): Uint8Array {
  const w = new ByteWriter();
  w.ascii(RSDP_SIGNATURE, 8)
    .u8(0) //                8 checksum (first 20 bytes)
    .ascii(OEM_ID, 6) //     9
    .u8(RSDP_REVISION) //   15
    .u32(0) //              16 RsdtAddress: no RSDT, the XSDT replaces it
    .u32(RSDP_LENGTH) //    20
    .u64(xsdtAddress) //    24
    .u8(0) //               32 extended checksum (whole structure)
    .zeros(3); //           33 reserved
  const rsdp = w.finish();
  fixChecksum(rsdp, 8, 0, RSDP_V1_LENGTH);
  fixChecksum(rsdp, 32, 0, RSDP_LENGTH);
  return rsdp;
}
