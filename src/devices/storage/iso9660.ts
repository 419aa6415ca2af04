// Recognises an ISO 9660 image: ECMA-119 §8 (the volume descriptor set from logical sector 16: type byte,
// standard identifier "CD001", version 1, ended by a terminator of type 255) and the El Torito 1.0 boot record
// volume descriptor (§2.0: boot system identifier "EL TORITO SPECIFICATION", the boot catalog's sector at 47h).
import * as fs from 'node:fs';

export const ISO_SECTOR_SIZE = 2048;
const FIRST_DESCRIPTOR_SECTOR = 16;
/** Descriptors looked at before giving up on a terminator (real images have a handful). */
const MAX_DESCRIPTORS = 64;
const TYPE_BOOT_RECORD = 0;
const TYPE_PRIMARY = 1;
const TYPE_TERMINATOR = 255;
const EL_TORITO_ID = 'EL TORITO SPECIFICATION';

export interface IsoInfo {
  /** The primary volume descriptor's volume identifier (trailing spaces removed). */
  readonly volumeId: string;
  /** Volume space size from the primary volume descriptor, in 2048-byte sectors. */
  readonly volumeSectors: number;
  /** The El Torito boot catalog's sector, when the image has a boot record. */
  readonly bootCatalogSector?: number;
}

const ascii = (b: Uint8Array, from: number, to: number): string => Buffer.from(b.subarray(from, to)).toString('latin1');

/**
 * Reads the volume descriptor set of the image open on `fd`: undefined when the image is not ISO 9660 (no
 * "CD001" descriptor at sector 16, or no primary volume descriptor before the terminator).
 */
export function readIsoInfo(fd: number): IsoInfo | undefined {
  const sector = new Uint8Array(ISO_SECTOR_SIZE);
  let volumeId: string | undefined;
  let volumeSectors = 0;
  let bootCatalogSector: number | undefined;
  for (let i = 0; i < MAX_DESCRIPTORS; i++) {
    const position = (FIRST_DESCRIPTOR_SECTOR + i) * ISO_SECTOR_SIZE;
    let n: number;
    try {
      n = fs.readSync(fd, sector, 0, ISO_SECTOR_SIZE, position);
    } catch {
      return undefined;
    }
    if (n < ISO_SECTOR_SIZE || ascii(sector, 1, 6) !== 'CD001') return undefined;
    const type = sector[0];
    if (type === TYPE_TERMINATOR) break;
    if (type === TYPE_PRIMARY && volumeId === undefined) {
      volumeId = ascii(sector, 40, 72).trimEnd();
      volumeSectors = new DataView(sector.buffer).getUint32(80, true); // both-endian field: the LE half
    } else if (type === TYPE_BOOT_RECORD && ascii(sector, 7, 7 + EL_TORITO_ID.length) === EL_TORITO_ID) {
      bootCatalogSector = new DataView(sector.buffer).getUint32(0x47, true);
    }
  }
  if (volumeId === undefined) return undefined;
  return { volumeId, volumeSectors, bootCatalogSector };
}
