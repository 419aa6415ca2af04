// What an AHCI port (ahci.ts) and the drive behind it (ata-disk.ts, atapi-cdrom.ts) say to each other: the ATA
// task file of a Register Host-to-Device FIS (Serial ATA AHCI 1.3.1 §4.2.2 and SATA 3.x §10.5.5), the guest
// memory a command's PRDT describes, and how the command ended (ATA8-ACS §6 status and error registers).
// The drive never sees guest addresses: only a DataBuffer the controller has already checked against guest RAM.

/** ATA status register bits (ATA8-ACS §6.2). */
export const ATA_STATUS_ERR = 0x01;
export const ATA_STATUS_DRQ = 0x08;
export const ATA_STATUS_DSC = 0x10;
export const ATA_STATUS_DF = 0x20;
export const ATA_STATUS_DRDY = 0x40;
export const ATA_STATUS_BSY = 0x80;
/** A drive ready for commands: DRDY and (legacy) seek complete. */
export const ATA_STATUS_READY = ATA_STATUS_DRDY | ATA_STATUS_DSC;

/** ATA error register bits (ATA8-ACS §6.3). */
export const ATA_ERROR_ABRT = 0x04;
export const ATA_ERROR_IDNF = 0x10;
export const ATA_ERROR_UNC = 0x40;

/** Device signatures (ATA8-ACS §9.12, as PxSIG reports them: count | lba low << 8 | lba mid << 16 | lba high << 24). */
export const SIGNATURE_ATA = 0x00000101;
export const SIGNATURE_ATAPI = 0xeb140101;

/** The registers of one command (a Register H2D FIS), LBA and count already assembled from both halves. */
export interface AtaTaskFile {
  readonly command: number;
  /** Features 15:0 (the FIS's features and features (exp)). */
  readonly features: number;
  /** Count 15:0. */
  readonly count: number;
  /** LBA 47:0 (the low 28 bits with the device register's 27:24 for 28-bit commands are the drive's business). */
  readonly lbaLow24: number;
  readonly lbaHigh24: number;
  readonly device: number;
}

/** 28-bit LBA of a task file: LBA 23:0 plus device register bits 3:0. */
export const lba28 = (tf: AtaTaskFile): number => tf.lbaLow24 + (tf.device & 0x0f) * 0x1000000;
/** 48-bit LBA of a task file. */
export const lba48 = (tf: AtaTaskFile): number => tf.lbaLow24 + tf.lbaHigh24 * 0x1000000;

/**
 * The guest memory a command moves data through (its PRDT), every region already checked to lie in guest RAM.
 * Transfers stop at its end; what they did not reach is reported by the byte counts they return.
 */
export interface DataBuffer {
  /** Bytes the PRDT describes. */
  readonly length: number;
  /** Device → guest: copies `data` to the buffer at `offset`; returns the bytes copied. */
  fromDevice(data: Uint8Array, offset?: number): number;
  /** Guest → device: the first `length` bytes of the buffer (fewer when it is shorter). */
  toDevice(length: number): Uint8Array;
  /** Image → guest: reads `length` bytes of `fd` at `position` straight into the buffer; returns bytes moved. */
  readFile(fd: number, position: number, length: number): number;
  /** Guest → image: writes `length` bytes of the buffer to `fd` at `position`; returns bytes moved. */
  writeFile(fd: number, position: number, length: number): number;
}

/**
 * How the drive finished a command, which decides the FISes the port posts (AHCI §5.3): PIO data-in ends with a
 * PIO Setup FIS (its E_Status is the ending status, as Linux's ahci_qc_fill_rtf reads it); everything else ends
 * with a Register D2H FIS.
 */
export interface AtaOutcome {
  readonly status: number;
  readonly error: number;
  readonly protocol: 'pio-in' | 'pio-out' | 'dma' | 'non-data';
  /** Data bytes moved (PxPRDBC / the command header's PRDBC). */
  readonly bytes: number;
  /** Registers the ending FIS carries besides status and error (a signature, CHECK POWER MODE's count). */
  readonly count?: number;
  readonly lbaLow24?: number;
  readonly device?: number;
}

/** A drive behind an AHCI port. Its mutable state lives in shared memory the controller's lock guards. */
export interface SataDrive {
  readonly type: 'disk' | 'cdrom';
  /** PxSIG after a reset. */
  readonly signature: number;
  /** Status after a reset (the initial Register D2H FIS). */
  readonly resetStatus: number;
  /** An ATA command (packet commands included: `packet` is the 16-byte ACMD area of the command table). */
  execute(tf: AtaTaskFile, packet: Uint8Array, data: DataBuffer): AtaOutcome;
  /** COMRESET, software reset or DEVICE RESET: the drive's volatile settings go back to their defaults. */
  reset(): void;
}

/** A command the drive aborts (ATA8-ACS: ABRT in the error register). */
export const abortOutcome = (protocol: AtaOutcome['protocol'] = 'non-data'): AtaOutcome => ({
  status: ATA_STATUS_READY | ATA_STATUS_ERR,
  error: ATA_ERROR_ABRT,
  protocol,
  bytes: 0,
});

/** A command that ended well with no data. */
export const okOutcome = (protocol: AtaOutcome['protocol'] = 'non-data', bytes = 0): AtaOutcome => ({
  status: ATA_STATUS_READY,
  error: 0,
  protocol,
  bytes,
});

/** Writes an ATA string (ATA8-ACS §3.3.10: two characters a word, first one in the high byte, space padded). */
export function putAtaString(words: Uint16Array, firstWord: number, wordCount: number, text: string): void {
  const chars = text.padEnd(wordCount * 2, ' ');
  for (let i = 0; i < wordCount; i++) {
    const hi = asciiCode(chars, 2 * i);
    const lo = asciiCode(chars, 2 * i + 1);
    words[firstWord + i] = (hi << 8) | lo;
  }
}

/** Printable ASCII only: IDENTIFY strings are ASCII, anything else becomes '?'. */
function asciiCode(text: string, i: number): number {
  const c = text.charCodeAt(i);
  return c >= 0x20 && c < 0x7f ? c : 0x3f;
}

/** IDENTIFY word 255: signature A5h and a checksum making all 512 bytes sum to 0 (ATA8-ACS §7.16.7.88). */
export function sealIdentify(words: Uint16Array): Uint8Array {
  words[255] = 0x00a5;
  const bytes = new Uint8Array(words.buffer, words.byteOffset, 512);
  let sum = 0;
  for (let i = 0; i < 511; i++) sum += bytes[i];
  words[255] = 0x00a5 | (((256 - (sum & 0xff)) & 0xff) << 8);
  return new Uint8Array(words.buffer, words.byteOffset, 512);
}

/** Serial numbers default to one derived from the image path, so the same image shows the same serial. */
export function defaultSerial(prefix: string, path: string): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < path.length; i++) h = Math.imul(h ^ path.charCodeAt(i), 0x01000193) >>> 0;
  return `${prefix}${h.toString(16).toUpperCase().padStart(8, '0')}`;
}
