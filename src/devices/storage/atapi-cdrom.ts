// An ATAPI CD/DVD-ROM drive on an ISO 9660 image: the PACKET command (ATA8-ACS §7.18) and IDENTIFY PACKET
// DEVICE (§7.17), carrying SCSI commands of SPC-4 (TEST UNIT READY, REQUEST SENSE with fixed-format sense
// §4.5.3, INQUIRY, MODE SENSE(6/10), START STOP UNIT, PREVENT ALLOW MEDIUM REMOVAL) and MMC-6 (READ CAPACITY,
// READ(10/12), READ CD (user data only), READ TOC/PMA/ATIP formats 0-2, GET CONFIGURATION, GET EVENT STATUS
// NOTIFICATION (media class), READ DISC INFORMATION, MECHANISM STATUS, SET CD SPEED; the capabilities mode page
// 2Ah). 2048-byte sectors, read-only. A medium change raises UNIT ATTENTION (28h/00h: not ready to ready
// change) and a media event, as a real drive does, so guests re-read the disc.
//
// The drive's state (which image is loaded, tray, lock, pending sense and events) lives in shared memory guarded
// by the AHCI controller's lock; media changes (insertMedia/ejectMedia in ahci.ts) take the same lock.
import * as fs from 'node:fs';
import { openBlock } from '../virtio/block.js';
import { DeviceOpenError } from '../model.js';
import { readIsoInfo, ISO_SECTOR_SIZE } from './iso9660.js';
import { ATA_CMD } from './ata-disk.js';
import {
  abortOutcome,
  ATA_STATUS_DRDY,
  ATA_STATUS_ERR,
  ATA_STATUS_READY,
  okOutcome,
  putAtaString,
  sealIdentify,
  SIGNATURE_ATAPI,
  type AtaOutcome,
  type AtaTaskFile,
  type DataBuffer,
  type SataDrive,
} from './sata-drive.js';

export const CD_SECTOR_SIZE = ISO_SECTOR_SIZE;
/** Discs above this many sectors (a 90-minute CD) are reported as DVD-ROM media. */
const CD_MAX_SECTORS = 405000;

// SCSI operation codes (SPC-4, MMC-6).
export const SCSI = {
  TEST_UNIT_READY: 0x00,
  REQUEST_SENSE: 0x03,
  INQUIRY: 0x12,
  MODE_SELECT_6: 0x15,
  MODE_SENSE_6: 0x1a,
  START_STOP_UNIT: 0x1b,
  PREVENT_ALLOW_MEDIUM_REMOVAL: 0x1e,
  READ_CAPACITY: 0x25,
  READ_10: 0x28,
  SEEK_10: 0x2b,
  SYNCHRONIZE_CACHE: 0x35,
  READ_TOC: 0x43,
  GET_CONFIGURATION: 0x46,
  GET_EVENT_STATUS_NOTIFICATION: 0x4a,
  READ_DISC_INFORMATION: 0x51,
  MODE_SELECT_10: 0x55,
  MODE_SENSE_10: 0x5a,
  READ_12: 0xa8,
  READ_DVD_STRUCTURE: 0xad,
  SET_CD_SPEED: 0xbb,
  MECHANISM_STATUS: 0xbd,
  READ_CD: 0xbe,
} as const;

export const SENSE_NO_SENSE = 0x0;
export const SENSE_NOT_READY = 0x2;
export const SENSE_MEDIUM_ERROR = 0x3;
export const SENSE_ILLEGAL_REQUEST = 0x5;
export const SENSE_UNIT_ATTENTION = 0x6;
export const ASC_INVALID_OPCODE = 0x20;
export const ASC_LBA_OUT_OF_RANGE = 0x21;
export const ASC_INVALID_FIELD_IN_CDB = 0x24;
export const ASC_MEDIUM_MAY_HAVE_CHANGED = 0x28;
export const ASC_SAVING_PARAMETERS_NOT_SUPPORTED = 0x39;
export const ASC_MEDIUM_NOT_PRESENT = 0x3a;
export const ASC_MEDIUM_REMOVAL_PREVENTED = 0x53;
const ASC_UNRECOVERED_READ_ERROR = 0x11;
const ASC_INCOMPATIBLE_MEDIUM = 0x30;

// GET EVENT STATUS NOTIFICATION media event codes (MMC-6 §6.6.2.4, table 126).
const MEDIA_EVENT_NONE = 0;
const MEDIA_EVENT_NEW_MEDIA = 2;
const MEDIA_EVENT_REMOVAL = 3;

/** Words of a drive's shared state (ahci.ts gives each port a slice). */
export const CD_STATE_INTS = 12;
const S_FD = 0; // the loaded image's fd, or -1
const S_SECTORS = 1; // its size in 2048-byte sectors
const S_TRAY_OPEN = 2;
const S_PREVENT = 3;
const S_UNIT_ATTENTION = 4;
const S_SENSE_KEY = 5;
const S_ASC = 6;
const S_ASCQ = 7;
const S_MEDIA_EVENT = 8;
/** Bytes of a loaded image's path kept in shared memory (so every thread and a snapshot know what is loaded). */
export const CD_PATH_BYTES = 4096;
const S_PATH_LENGTH = 9;

/** Commands that do not report a pending UNIT ATTENTION (MMC-6 §4.1.6.1, as drives and QEMU behave). */
const PASS_UNIT_ATTENTION = new Set<number>([
  SCSI.INQUIRY,
  SCSI.REQUEST_SENSE,
  SCSI.GET_CONFIGURATION,
  SCSI.GET_EVENT_STATUS_NOTIFICATION,
]);
/** Commands that need a medium (NOT READY, MEDIUM NOT PRESENT without one). */
const NEED_MEDIUM = new Set<number>([
  SCSI.TEST_UNIT_READY,
  SCSI.READ_CAPACITY,
  SCSI.READ_10,
  SCSI.READ_12,
  SCSI.READ_CD,
  SCSI.READ_TOC,
  SCSI.READ_DISC_INFORMATION,
  SCSI.SEEK_10,
  SCSI.READ_DVD_STRUCTURE,
]);

/** The host side of one drive: plain values. */
export interface AtapiConfig {
  readonly serial: string;
  readonly model: string;
  readonly firmware: string;
}

/** An opened ISO image: its fd and size in 2048-byte sectors. */
export interface CdImage {
  readonly fd: number;
  readonly sectors: number;
  readonly path: string;
}

/**
 * Opens an image for a CD drive (builder thread or a media change): read-only, share-locked like a read-only
 * disk, and it must be ISO 9660; a DeviceOpenError of one line otherwise.
 */
export function openCdImage(path: string): CdImage {
  const handle = openBlock({ path, readOnly: true });
  try {
    if (!readIsoInfo(handle.fd)) throw new DeviceOpenError(`CD image '${path}' is not an ISO 9660 image`);
    return { fd: handle.fd, sectors: Math.floor((handle.capacity * 512) / CD_SECTOR_SIZE), path };
  } catch (e) {
    fs.closeSync(handle.fd);
    throw e;
  }
}

/** Sets a drive's shared state to "no disc, tray closed". */
export function initialCdState(state: Int32Array): void {
  state.fill(0);
  state[S_FD] = -1;
}

const be16 = (b: Uint8Array, at: number): number => (b[at] << 8) | b[at + 1];
const be32 = (b: Uint8Array, at: number): number =>
  ((b[at] << 24) | (b[at + 1] << 16) | (b[at + 2] << 8) | b[at + 3]) >>> 0;
function putBe16(b: Uint8Array, at: number, v: number): void {
  b[at] = (v >>> 8) & 0xff;
  b[at + 1] = v & 0xff;
}
function putBe32(b: Uint8Array, at: number, v: number): void {
  putBe16(b, at, Math.floor(v / 0x10000) & 0xffff);
  putBe16(b, at + 2, v & 0xffff);
}
/** A CD address as minutes/seconds/frames (MMC-6 §6.1: 75 frames a second, LBA 0 at 00:02:00). */
function putMsf(b: Uint8Array, at: number, lba: number): void {
  const f = lba + 150;
  b[at] = 0;
  b[at + 1] = Math.floor(f / (75 * 60));
  b[at + 2] = Math.floor(f / 75) % 60;
  b[at + 3] = f % 75;
}

/** A command's answer: status and sense to set, data to return. */
type Reply = { readonly data?: Uint8Array; readonly bytes?: number } | { readonly sense: [number, number, number] };

export class AtapiCdrom implements SataDrive {
  readonly type = 'cdrom' as const;
  readonly signature = SIGNATURE_ATAPI;
  readonly resetStatus = 0x00; // PACKET devices clear DRDY after reset (ATA8-ACS §9.12)

  constructor(
    readonly config: AtapiConfig,
    private readonly state: Int32Array,
    private readonly pathBytes: Uint8Array,
  ) {}

  get mediumPresent(): boolean {
    return this.state[S_FD] >= 0 && !this.state[S_TRAY_OPEN];
  }

  /** The loaded image's path ('' when none). */
  get mediaPath(): string {
    return Buffer.from(this.pathBytes.subarray(0, this.state[S_PATH_LENGTH])).toString('utf8');
  }

  /**
   * Loads `image` (or none), closing the tray: the previous image's fd is returned for the caller to close once
   * no thread can use it any more (the caller holds the controller's lock). A new disc raises UNIT ATTENTION and
   * a new-media event; taking the disc out a removal event.
   */
  changeMedia(image: CdImage | undefined, announce = true): number {
    const old = this.state[S_FD];
    const path = image ? Buffer.from(image.path, 'utf8') : Buffer.alloc(0);
    if (path.length > CD_PATH_BYTES) throw new DeviceOpenError(`CD image path is longer than ${CD_PATH_BYTES} bytes`);
    this.pathBytes.fill(0);
    this.pathBytes.set(path);
    this.state[S_PATH_LENGTH] = path.length;
    this.state[S_FD] = image ? image.fd : -1;
    this.state[S_SECTORS] = image ? image.sectors : 0;
    this.state[S_TRAY_OPEN] = image ? 0 : 1;
    if (image && announce) {
      this.state[S_UNIT_ATTENTION] = 1;
      this.state[S_MEDIA_EVENT] = MEDIA_EVENT_NEW_MEDIA;
    } else if (old >= 0) this.state[S_MEDIA_EVENT] = MEDIA_EVENT_REMOVAL;
    return old;
  }

  reset(): void {
    this.state[S_PREVENT] = 0;
    this.setSense(SENSE_NO_SENSE, 0, 0);
  }

  execute(tf: AtaTaskFile, packet: Uint8Array, data: DataBuffer): AtaOutcome {
    const c = ATA_CMD;
    switch (tf.command) {
      case c.PACKET:
        return this.packet(packet, (tf.features & 1) !== 0, data);
      case c.IDENTIFY_PACKET:
        return okOutcome('pio-in', data.fromDevice(this.identify()));
      case c.DEVICE_RESET:
      case c.EXECUTE_DIAGNOSTIC:
        this.reset();
        return { status: 0, error: 0x01, protocol: 'non-data', bytes: 0, count: 1, lbaLow24: 0xeb1401, device: 0 };
      case c.IDENTIFY:
      case c.READ_SECTORS:
      case c.READ_DMA:
        // An ATA command to a PACKET device aborts with the PACKET signature in the registers (ATA8-ACS §7.16.4),
        // which is how drivers probing with IDENTIFY DEVICE learn what it is.
        return { ...abortOutcome(), count: 1, lbaLow24: 0xeb1401, device: 0 };
      case c.CHECK_POWER_MODE:
        return { ...okOutcome(), count: 0xff };
      case c.IDLE:
      case c.IDLE_IMMEDIATE:
      case c.STANDBY:
      case c.STANDBY_IMMEDIATE:
      case c.SET_FEATURES:
      case c.FLUSH_CACHE:
        return okOutcome();
      default:
        return abortOutcome();
    }
  }

  /** IDENTIFY PACKET DEVICE data (ATA8-ACS §7.17.7, table 26). */
  identify(): Uint8Array {
    const w = new Uint16Array(256);
    // ATAPI, CD-ROM command set (05h), removable, DRQ within 50 µs, 12-byte packets.
    w[0] = (2 << 14) | (5 << 8) | (1 << 7) | (2 << 5);
    putAtaString(w, 10, 10, this.config.serial);
    putAtaString(w, 23, 4, this.config.firmware);
    putAtaString(w, 27, 20, this.config.model);
    w[49] = (1 << 11) | (1 << 9) | (1 << 8); // IORDY, LBA, DMA
    w[53] = 0x0007;
    w[63] = 0x0007;
    w[64] = 0x0003;
    w[65] = 120;
    w[66] = 120;
    w[67] = 120;
    w[68] = 120;
    w[76] = 0x0002; // SATA Gen1
    w[80] = 0x01f0; // ATA/ATAPI-4 to ATA8-ACS
    w[82] = (1 << 14) | (1 << 9) | (1 << 4); // NOP, DEVICE RESET, PACKET
    w[83] = 0x4000;
    w[84] = 0x4000;
    w[85] = (1 << 14) | (1 << 9) | (1 << 4);
    w[86] = 0;
    w[87] = 0x4000;
    w[88] = 0x203f; // Ultra DMA 0-5, mode 5 selected
    w[222] = 0x1000 | 0x003f;
    return sealIdentify(w);
  }

  private setSense(key: number, asc: number, ascq: number): void {
    this.state[S_SENSE_KEY] = key;
    this.state[S_ASC] = asc;
    this.state[S_ASCQ] = ascq;
  }

  /** One SCSI command in a PACKET: CHECK CONDITION sets sense and ends with ERR, sense key in error 7:4. */
  private packet(cdb: Uint8Array, dma: boolean, data: DataBuffer): AtaOutcome {
    const reply = this.scsi(cdb, data);
    if ('sense' in reply) {
      const [key, asc, ascq] = reply.sense;
      this.setSense(key, asc, ascq);
      return { status: ATA_STATUS_DRDY | ATA_STATUS_ERR, error: key << 4, protocol: 'non-data', bytes: 0 };
    }
    if (cdb[0] !== SCSI.REQUEST_SENSE) this.setSense(SENSE_NO_SENSE, 0, 0);
    const bytes = reply.data ? data.fromDevice(reply.data) : (reply.bytes ?? 0);
    // A PACKET command ends with a Register D2H FIS (count 03h: I/O and C/D set, command complete).
    return {
      status: ATA_STATUS_READY,
      error: 0,
      protocol: bytes === 0 ? 'non-data' : dma ? 'dma' : 'pio-in',
      bytes,
      count: 0x03,
    };
  }

  private scsi(cdb: Uint8Array, data: DataBuffer): Reply {
    const op = cdb[0];
    if (this.state[S_UNIT_ATTENTION] && !PASS_UNIT_ATTENTION.has(op)) {
      this.state[S_UNIT_ATTENTION] = 0;
      return { sense: [SENSE_UNIT_ATTENTION, ASC_MEDIUM_MAY_HAVE_CHANGED, 0] };
    }
    if (NEED_MEDIUM.has(op) && !this.mediumPresent)
      return { sense: [SENSE_NOT_READY, ASC_MEDIUM_NOT_PRESENT, this.state[S_TRAY_OPEN] ? 2 : 1] };
    switch (op) {
      case SCSI.TEST_UNIT_READY:
      case SCSI.SEEK_10:
      case SCSI.SET_CD_SPEED:
      case SCSI.SYNCHRONIZE_CACHE:
        return {};
      case SCSI.MODE_SELECT_6:
      case SCSI.MODE_SELECT_10:
        return {}; // no changeable parameters: what the guest sends is not taken
      case SCSI.REQUEST_SENSE:
        return { data: this.requestSense(cdb[4]) };
      case SCSI.INQUIRY:
        return this.inquiry(cdb);
      case SCSI.READ_CAPACITY: {
        const b = new Uint8Array(8);
        putBe32(b, 0, this.state[S_SECTORS] - 1);
        putBe32(b, 4, CD_SECTOR_SIZE);
        return { data: b };
      }
      case SCSI.READ_10:
        return this.read(be32(cdb, 2), be16(cdb, 7), data);
      case SCSI.READ_12:
        return this.read(be32(cdb, 2), be32(cdb, 6), data);
      case SCSI.READ_CD: {
        const count = (cdb[6] << 16) | (cdb[7] << 8) | cdb[8];
        const sectorType = (cdb[1] >> 2) & 7;
        if (count === 0) return {};
        // Only what a data disc has: user data of mode-1 sectors (no headers, subchannels or C2 errors).
        if ((sectorType !== 0 && sectorType !== 2) || (cdb[9] & 0xf8) !== 0x10)
          return { sense: [SENSE_ILLEGAL_REQUEST, ASC_INVALID_FIELD_IN_CDB, 0] };
        return this.read(be32(cdb, 2), count, data);
      }
      case SCSI.MODE_SENSE_6:
        return this.modeSense(cdb, false);
      case SCSI.MODE_SENSE_10:
        return this.modeSense(cdb, true);
      case SCSI.START_STOP_UNIT:
        return this.startStop(cdb);
      case SCSI.PREVENT_ALLOW_MEDIUM_REMOVAL:
        this.state[S_PREVENT] = cdb[4] & 1;
        return {};
      case SCSI.READ_TOC:
        return this.readToc(cdb);
      case SCSI.GET_CONFIGURATION:
        return this.clip(this.configuration(cdb), be16(cdb, 7));
      case SCSI.GET_EVENT_STATUS_NOTIFICATION:
        return this.eventStatus(cdb);
      case SCSI.READ_DISC_INFORMATION: {
        const b = new Uint8Array(34);
        putBe16(b, 0, 32);
        b[2] = 0x0e; // last session complete, disc complete
        b[3] = 1; // first track
        b[4] = 1; // sessions
        b[5] = 1; // first track of the last session
        b[6] = 1; // last track of the last session
        return this.clip(b, be16(cdb, 7));
      }
      case SCSI.READ_DVD_STRUCTURE:
        return this.dvdStructure(cdb);
      case SCSI.MECHANISM_STATUS: {
        const b = new Uint8Array(8);
        b[1] = this.state[S_TRAY_OPEN] ? 0x10 : 0;
        return this.clip(b, be16(cdb, 8));
      }
      default:
        return { sense: [SENSE_ILLEGAL_REQUEST, ASC_INVALID_OPCODE, 0] };
    }
  }

  /** At most `allocation` bytes of `b` (the CDB's allocation length). */
  private clip(b: Uint8Array, allocation: number): Reply {
    return { data: b.subarray(0, Math.min(b.length, allocation)) };
  }

  /** Fixed-format sense data (SPC-4 §4.5.3); a pending UNIT ATTENTION is reported (and cleared) first. */
  private requestSense(allocation: number): Uint8Array {
    let key = this.state[S_SENSE_KEY];
    let asc = this.state[S_ASC];
    let ascq = this.state[S_ASCQ];
    if (key === SENSE_NO_SENSE && this.state[S_UNIT_ATTENTION]) {
      this.state[S_UNIT_ATTENTION] = 0;
      [key, asc, ascq] = [SENSE_UNIT_ATTENTION, ASC_MEDIUM_MAY_HAVE_CHANGED, 0];
    }
    this.setSense(SENSE_NO_SENSE, 0, 0);
    const b = new Uint8Array(18);
    b[0] = 0x70; // current error, fixed format
    b[2] = key;
    b[7] = 10; // additional sense length
    b[12] = asc;
    b[13] = ascq;
    return b.subarray(0, Math.min(18, allocation));
  }

  private inquiry(cdb: Uint8Array): Reply {
    if (cdb[1] & 1) return { sense: [SENSE_ILLEGAL_REQUEST, ASC_INVALID_FIELD_IN_CDB, 0] }; // no VPD pages
    const b = new Uint8Array(36);
    b[0] = 0x05; // CD/DVD device
    b[1] = 0x80; // removable
    b[2] = 0x05; // SPC-3
    b[3] = 0x32; // ATAPI transport, response data format 2
    b[4] = 36 - 5;
    b.set(Buffer.from('PARTITA '), 8);
    b.set(Buffer.from(this.config.model.padEnd(16, ' ').slice(0, 16), 'latin1'), 16);
    b.set(Buffer.from(this.config.firmware.padEnd(4, ' ').slice(0, 4), 'latin1'), 32);
    return this.clip(b, be16(cdb, 3));
  }

  private read(lba: number, count: number, data: DataBuffer): Reply {
    const sectors = this.state[S_SECTORS];
    if (lba >= sectors || count > sectors - lba) return { sense: [SENSE_ILLEGAL_REQUEST, ASC_LBA_OUT_OF_RANGE, 0] };
    if (count === 0) return {};
    const length = count * CD_SECTOR_SIZE;
    // The PRDT must take the whole transfer; a guest asking for more than it gave memory for gets an error.
    if (data.length < length) return { sense: [SENSE_ILLEGAL_REQUEST, ASC_INVALID_FIELD_IN_CDB, 0] };
    try {
      return { bytes: data.readFile(this.state[S_FD], lba * CD_SECTOR_SIZE, length) };
    } catch {
      return { sense: [SENSE_MEDIUM_ERROR, ASC_UNRECOVERED_READ_ERROR, 0] };
    }
  }

  /** MODE SENSE: the read error recovery page (01h) and the capabilities page (2Ah), MMC-6 §7.3 and Annex. */
  private modeSense(cdb: Uint8Array, ten: boolean): Reply {
    const control = cdb[2] >> 6;
    const page = cdb[2] & 0x3f;
    if (control === 3) return { sense: [SENSE_ILLEGAL_REQUEST, ASC_SAVING_PARAMETERS_NOT_SUPPORTED, 0] };
    const pages: Uint8Array[] = [];
    if (page === 0x01 || page === 0x3f) {
      const p = new Uint8Array(8);
      p[0] = 0x01;
      p[1] = 6;
      if (control !== 1) p[3] = 5; // read retry count
      pages.push(p);
    }
    if (page === 0x2a || page === 0x3f) {
      const p = new Uint8Array(22);
      p[0] = 0x2a;
      p[1] = 20;
      if (control !== 1) {
        p[2] = 0x3b; // reads CD-R, CD-RW, method 2, DVD-ROM
        p[3] = 0x00; // writes nothing
        p[4] = 0x71; // multi-session, mode 2 form 1/2, audio play
        p[5] = 0xff;
        p[6] = 0x29 | (this.state[S_PREVENT] ? 0x02 : 0); // tray, eject, lock (and its state)
        putBe16(p, 8, 706); // maximum read speed, kB/s (4×)
        putBe16(p, 10, 0x100);
        putBe16(p, 12, 2048); // buffer size, KiB
        putBe16(p, 14, 706);
      }
      pages.push(p);
    }
    if (pages.length === 0) return { sense: [SENSE_ILLEGAL_REQUEST, ASC_INVALID_FIELD_IN_CDB, 0] };
    const header = ten ? 8 : 4;
    const length = header + pages.reduce((n, p) => n + p.length, 0);
    const b = new Uint8Array(length);
    if (ten) putBe16(b, 0, length - 2);
    else b[0] = length - 1;
    let at = header;
    for (const p of pages) {
      b.set(p, at);
      at += p.length;
    }
    return this.clip(b, ten ? be16(cdb, 7) : cdb[4]);
  }

  private startStop(cdb: Uint8Array): Reply {
    const loadEject = (cdb[4] & 0x02) !== 0;
    const start = (cdb[4] & 0x01) !== 0;
    if (!loadEject) return {};
    if (start) {
      if (this.state[S_TRAY_OPEN]) {
        this.state[S_TRAY_OPEN] = 0;
        if (this.state[S_FD] >= 0) {
          this.state[S_UNIT_ATTENTION] = 1;
          this.state[S_MEDIA_EVENT] = MEDIA_EVENT_NEW_MEDIA;
        }
      }
      return {};
    }
    if (this.state[S_PREVENT]) return { sense: [SENSE_ILLEGAL_REQUEST, ASC_MEDIUM_REMOVAL_PREVENTED, 2] };
    if (!this.state[S_TRAY_OPEN]) {
      this.state[S_TRAY_OPEN] = 1;
      if (this.state[S_FD] >= 0) this.state[S_MEDIA_EVENT] = MEDIA_EVENT_REMOVAL;
    }
    return {};
  }

  /** READ TOC/PMA/ATIP formats 0 (TOC), 1 (session information) and 2 (raw TOC), MMC-6 §6.39. */
  private readToc(cdb: Uint8Array): Reply {
    const msf = (cdb[1] & 0x02) !== 0;
    let format = cdb[2] & 0x0f;
    if (format === 0) format = cdb[9] >> 6; // the old (SFF-8020) place of the format
    const track = cdb[6];
    const allocation = be16(cdb, 7);
    const leadOut = this.state[S_SECTORS];
    const address = (b: Uint8Array, at: number, lba: number): void => (msf ? putMsf(b, at, lba) : putBe32(b, at, lba));
    if (format === 0) {
      if (track > 1 && track !== 0xaa) return { sense: [SENSE_ILLEGAL_REQUEST, ASC_INVALID_FIELD_IN_CDB, 0] };
      const entries: [number, number][] = track <= 1 ? [[1, 0]] : [];
      entries.push([0xaa, leadOut]);
      const b = new Uint8Array(4 + 8 * entries.length);
      putBe16(b, 0, b.length - 2);
      b[2] = 1;
      b[3] = 1;
      entries.forEach(([number, lba], i) => {
        b[4 + 8 * i + 1] = 0x14; // ADR 1, data track
        b[4 + 8 * i + 2] = number;
        address(b, 4 + 8 * i + 4, lba);
      });
      return this.clip(b, allocation);
    }
    if (format === 1) {
      const b = new Uint8Array(12);
      putBe16(b, 0, 10);
      b[2] = 1;
      b[3] = 1;
      b[5] = 0x14;
      b[6] = 1;
      address(b, 8, 0);
      return this.clip(b, allocation);
    }
    if (format === 2) {
      // Raw TOC of one session: points A0 (first track), A1 (last track), A2 (lead-out), then track 1.
      const points: [number, number, number, number][] = [
        [0xa0, 1, 0x00, 0], // PMIN first track, PSEC disc type (CD-DA or CD-ROM)
        [0xa1, 1, 0, 0],
        [0xa2, -1, 0, 0],
        [0x01, -2, 0, 0],
      ];
      const b = new Uint8Array(4 + 11 * points.length);
      putBe16(b, 0, b.length - 2);
      b[2] = 1;
      b[3] = 1;
      points.forEach(([point, pmin, psec, pframe], i) => {
        const at = 4 + 11 * i;
        b[at] = 1; // session
        b[at + 1] = 0x14;
        b[at + 3] = point;
        if (pmin === -1 || pmin === -2) {
          const m = new Uint8Array(4);
          putMsf(m, 0, pmin === -1 ? leadOut : 0);
          b[at + 8] = m[1];
          b[at + 9] = m[2];
          b[at + 10] = m[3];
        } else {
          b[at + 8] = pmin;
          b[at + 9] = psec;
          b[at + 10] = pframe;
        }
      });
      return this.clip(b, allocation);
    }
    return { sense: [SENSE_ILLEGAL_REQUEST, ASC_INVALID_FIELD_IN_CDB, 0] };
  }

  /** GET CONFIGURATION (MMC-6 §6.6): the profile list and the features of a read-only CD/DVD drive. */
  private configuration(cdb: Uint8Array): Uint8Array {
    const rt = cdb[1] & 0x03;
    const start = be16(cdb, 2);
    const medium = this.mediumPresent;
    const dvd = medium && this.state[S_SECTORS] > CD_MAX_SECTORS;
    const profile = !medium ? 0 : dvd ? 0x0010 : 0x0008;
    // [feature code, version, current, additional data]
    const features: [number, number, boolean, number[]][] = [
      [0x0000, 0, true, [0x00, 0x10, dvd ? 1 : 0, 0, 0x00, 0x08, medium && !dvd ? 1 : 0, 0]],
      [0x0001, 2, true, [0, 0, 0, 2, 0x01, 0, 0, 0]], // core: ATAPI interface, DBE
      [0x0002, 1, true, [0x02, 0, 0, 0]], // morphing: operational change events
      [0x0003, 0, true, [0x29, 0, 0, 0]], // removable medium: tray, eject, lock
      [0x0010, 0, medium, [0, 0, 0x08, 0x00, 0, dvd ? 16 : 1, 0, 0]], // random readable, 2048-byte blocks
      [0x001e, 2, medium && !dvd, [0, 0, 0, 0]], // CD read
      [0x001f, 0, dvd, [0, 0, 0, 0]], // DVD read
    ];
    const chosen = features.filter(([code, , current]) => {
      if (rt === 2) return code === start;
      return code >= start && (rt === 0 || current);
    });
    const length = 8 + chosen.reduce((n, f) => n + 4 + f[3].length, 0);
    const b = new Uint8Array(length);
    putBe32(b, 0, length - 4);
    putBe16(b, 6, profile);
    let at = 8;
    for (const [code, version, current, body] of chosen) {
      putBe16(b, at, code);
      b[at + 2] = (version << 2) | (code <= 0x0003 ? 0x02 : 0) | (current ? 0x01 : 0);
      b[at + 3] = body.length;
      b.set(body, at + 4);
      at += 4 + body.length;
    }
    return b;
  }

  /**
   * READ DISC STRUCTURE for DVD media (MMC-6 §6.22): physical format (00h), copyright (01h: no protection) and
   * disc manufacturing (04h, empty). Windows asks for these on DVD media; a CD has none of them.
   */
  private dvdStructure(cdb: Uint8Array): Reply {
    const format = cdb[7];
    const allocation = be16(cdb, 8);
    if (cdb[6] !== 0 || (cdb[1] & 0x0f) !== 0) return { sense: [SENSE_ILLEGAL_REQUEST, ASC_INVALID_FIELD_IN_CDB, 0] };
    if (this.state[S_SECTORS] <= CD_MAX_SECTORS) return { sense: [SENSE_ILLEGAL_REQUEST, ASC_INCOMPATIBLE_MEDIUM, 2] };
    const sectors = this.state[S_SECTORS];
    switch (format) {
      case 0x00: {
        const b = new Uint8Array(4 + 2048);
        putBe16(b, 0, 2048 + 2);
        b[4] = 0x01; // DVD-ROM, version 1
        b[5] = 0x0f; // 120 mm, maximum rate unspecified
        b[6] = 0x01; // one layer, embossed (read-only)
        putBe32(b, 8, 0x30000); // first physical sector of the data area
        putBe32(b, 12, 0x30000 + sectors - 1);
        return this.clip(b, allocation);
      }
      case 0x01: {
        const b = new Uint8Array(8);
        putBe16(b, 0, 6); // no copy protection, playable in all regions
        return this.clip(b, allocation);
      }
      case 0x04: {
        const b = new Uint8Array(4 + 2048);
        putBe16(b, 0, 2048 + 2);
        return this.clip(b, allocation);
      }
      default:
        return { sense: [SENSE_ILLEGAL_REQUEST, ASC_INVALID_FIELD_IN_CDB, 0] };
    }
  }

  /** GET EVENT STATUS NOTIFICATION, polled, media class only (MMC-6 §6.7). Reading an event consumes it. */
  private eventStatus(cdb: Uint8Array): Reply {
    if (!(cdb[1] & 1)) return { sense: [SENSE_ILLEGAL_REQUEST, ASC_INVALID_FIELD_IN_CDB, 0] }; // asynchronous mode
    const allocation = be16(cdb, 7);
    const MEDIA_CLASS = 0x10;
    if (!(cdb[4] & MEDIA_CLASS)) {
      const b = new Uint8Array(4);
      putBe16(b, 0, 2);
      b[2] = 0x80; // no event available
      b[3] = MEDIA_CLASS;
      return this.clip(b, allocation);
    }
    const b = new Uint8Array(8);
    putBe16(b, 0, 6);
    b[2] = 4; // media class
    b[3] = MEDIA_CLASS;
    b[4] = this.state[S_MEDIA_EVENT];
    b[5] = (this.mediumPresent ? 0x02 : 0) | (this.state[S_TRAY_OPEN] ? 0x01 : 0);
    this.state[S_MEDIA_EVENT] = MEDIA_EVENT_NONE;
    return this.clip(b, allocation);
  }
}
