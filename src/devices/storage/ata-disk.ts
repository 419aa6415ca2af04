// An ATA hard disk on a raw image: ATA/ATAPI-8 ACS (T13/1699-D) — IDENTIFY DEVICE (§7.16), READ/WRITE DMA
// (EXT) (§7.21-22, §7.58-59), READ/WRITE SECTORS (EXT) and MULTIPLE (EXT) (§7.24-29, §7.62-67), FLUSH CACHE (EXT)
// (§7.10-11), SET FEATURES (§7.47), READ VERIFY SECTORS (EXT) (§7.31-32), SET MULTIPLE MODE (§7.49), CHECK POWER
// MODE (§7.4), IDLE / STANDBY (IMMEDIATE) (§7.14-15, §7.50-51). IDENTIFY PACKET DEVICE and DEVICE RESET are
// PACKET-device commands, aborted here as the standard says (SeaBIOS tells disks from CD-ROMs that way).
//
// The image is opened and locked by virtio-blk's openBlock (one writer per image, shared for read-only users).
// I/O is synchronous pread/pwrite on the exit path that issued the command (see ahci.ts for why that is so for now).
import * as fs from 'node:fs';
import {
  abortOutcome,
  ATA_ERROR_ABRT,
  ATA_ERROR_IDNF,
  ATA_ERROR_UNC,
  ATA_STATUS_ERR,
  ATA_STATUS_READY,
  lba28,
  lba48,
  okOutcome,
  putAtaString,
  sealIdentify,
  SIGNATURE_ATA,
  type AtaOutcome,
  type AtaTaskFile,
  type DataBuffer,
  type SataDrive,
} from './sata-drive.js';

export const ATA_SECTOR_SIZE = 512;
/** READ/WRITE MULTIPLE block size limit advertised in IDENTIFY word 47 (sectors per DRQ block). */
export const MAX_MULTIPLE_SECTORS = 16;
const LBA28_LIMIT = 0x0fffffff;
/** Default CHS geometry for the legacy words (ATA8-ACS Annex: 16 heads, 63 sectors per track). */
const HEADS = 16;
const SECTORS_PER_TRACK = 63;

// Command opcodes (ATA8-ACS Annex B).
export const ATA_CMD = {
  NOP: 0x00,
  DEVICE_RESET: 0x08,
  RECALIBRATE: 0x10,
  READ_SECTORS: 0x20,
  READ_SECTORS_NORETRY: 0x21,
  READ_SECTORS_EXT: 0x24,
  READ_DMA_EXT: 0x25,
  READ_MULTIPLE_EXT: 0x29,
  WRITE_SECTORS: 0x30,
  WRITE_SECTORS_NORETRY: 0x31,
  WRITE_SECTORS_EXT: 0x34,
  WRITE_DMA_EXT: 0x35,
  WRITE_MULTIPLE_EXT: 0x39,
  READ_VERIFY: 0x40,
  READ_VERIFY_NORETRY: 0x41,
  READ_VERIFY_EXT: 0x42,
  SEEK: 0x70,
  EXECUTE_DIAGNOSTIC: 0x90,
  INITIALIZE_PARAMETERS: 0x91,
  PACKET: 0xa0,
  IDENTIFY_PACKET: 0xa1,
  READ_MULTIPLE: 0xc4,
  WRITE_MULTIPLE: 0xc5,
  SET_MULTIPLE: 0xc6,
  READ_DMA: 0xc8,
  READ_DMA_NORETRY: 0xc9,
  WRITE_DMA: 0xca,
  WRITE_DMA_NORETRY: 0xcb,
  STANDBY_IMMEDIATE: 0xe0,
  IDLE_IMMEDIATE: 0xe1,
  STANDBY: 0xe2,
  IDLE: 0xe3,
  CHECK_POWER_MODE: 0xe5,
  SLEEP: 0xe6,
  FLUSH_CACHE: 0xe7,
  IDENTIFY: 0xec,
  FLUSH_CACHE_EXT: 0xea,
  SET_FEATURES: 0xef,
} as const;

// SET FEATURES subcommands (ATA8-ACS §7.47, table 64).
const SF_ENABLE_WRITE_CACHE = 0x02;
const SF_SET_TRANSFER_MODE = 0x03;
const SF_DISABLE_READ_LOOKAHEAD = 0x55;
const SF_DISABLE_REVERTING = 0x66;
const SF_DISABLE_WRITE_CACHE = 0x82;
const SF_ENABLE_READ_LOOKAHEAD = 0xaa;
const SF_ENABLE_REVERTING = 0xcc;

/** Words of a disk's shared state (ahci.ts gives each port a slice). */
export const DISK_STATE_INTS = 8;
const S_WRITE_CACHE = 0;
const S_MULTIPLE = 1;
const S_POWER = 2; // CHECK POWER MODE's count: 0xFF active/idle, 0x00 standby
const S_UDMA = 3; // selected Ultra DMA mode, or -1
const S_MWDMA = 4; // selected multiword DMA mode, or -1
const S_LOOKAHEAD = 5;

/** The host side of one disk: plain values (structured-clone safe). */
export interface AtaDiskConfig {
  readonly fd: number;
  readonly path: string;
  /** 512-byte sectors. */
  readonly capacity: number;
  readonly readOnly: boolean;
  readonly serial: string;
  readonly model: string;
  readonly firmware: string;
}

/** Sets a disk's shared state to its power-on defaults. */
export function initialDiskState(state: Int32Array): void {
  state[S_WRITE_CACHE] = 1; // as QEMU's ide-hd: write-back, the guest flushes
  state[S_MULTIPLE] = MAX_MULTIPLE_SECTORS;
  state[S_POWER] = 0xff;
  state[S_UDMA] = 5;
  state[S_MWDMA] = -1;
  state[S_LOOKAHEAD] = 1;
}

export class AtaDisk implements SataDrive {
  readonly type = 'disk' as const;
  readonly signature = SIGNATURE_ATA;
  readonly resetStatus = ATA_STATUS_READY;

  /** `state`: this disk's DISK_STATE_INTS words of the controller's shared state (guarded by its lock). */
  constructor(
    readonly config: AtaDiskConfig,
    private readonly state: Int32Array,
  ) {}

  reset(): void {
    // Settings that survive a software reset stay (ATA8-ACS §4.18.3 with reverting disabled): write cache and
    // transfer modes; the power mode returns to active.
    this.state[S_POWER] = 0xff;
  }

  execute(tf: AtaTaskFile, _packet: Uint8Array, data: DataBuffer): AtaOutcome {
    const c = ATA_CMD;
    this.state[S_POWER] = tf.command === c.CHECK_POWER_MODE ? this.state[S_POWER] : 0xff;
    switch (tf.command) {
      case c.IDENTIFY:
        return this.pioIn(data, this.identify());
      case c.READ_DMA:
      case c.READ_DMA_NORETRY:
        return this.read(data, tf, false, 'dma');
      case c.READ_DMA_EXT:
        return this.read(data, tf, true, 'dma');
      case c.READ_SECTORS:
      case c.READ_SECTORS_NORETRY:
      case c.READ_MULTIPLE:
        return this.read(data, tf, false, 'pio-in');
      case c.READ_SECTORS_EXT:
      case c.READ_MULTIPLE_EXT:
        return this.read(data, tf, true, 'pio-in');
      case c.WRITE_DMA:
      case c.WRITE_DMA_NORETRY:
        return this.write(data, tf, false, 'dma');
      case c.WRITE_DMA_EXT:
        return this.write(data, tf, true, 'dma');
      case c.WRITE_SECTORS:
      case c.WRITE_SECTORS_NORETRY:
      case c.WRITE_MULTIPLE:
        return this.write(data, tf, false, 'pio-out');
      case c.WRITE_SECTORS_EXT:
      case c.WRITE_MULTIPLE_EXT:
        return this.write(data, tf, true, 'pio-out');
      case c.READ_VERIFY:
      case c.READ_VERIFY_NORETRY:
        return this.verify(tf, false);
      case c.READ_VERIFY_EXT:
        return this.verify(tf, true);
      case c.FLUSH_CACHE:
      case c.FLUSH_CACHE_EXT:
        return this.flush();
      case c.SET_FEATURES:
        return this.setFeatures(tf);
      case c.SET_MULTIPLE: {
        const n = tf.count & 0xff;
        // 0 disables multiple mode; otherwise a power of two up to the advertised maximum (ATA8-ACS §7.49).
        if (n > MAX_MULTIPLE_SECTORS || (n & (n - 1)) !== 0) return abortOutcome();
        this.state[S_MULTIPLE] = n;
        return okOutcome();
      }
      case c.CHECK_POWER_MODE:
        return { ...okOutcome(), count: this.state[S_POWER] & 0xff };
      case c.IDLE:
      case c.IDLE_IMMEDIATE:
        return okOutcome();
      case c.STANDBY:
      case c.STANDBY_IMMEDIATE:
      case c.SLEEP:
        // A standby disk spins up again on the next media access; nothing is lost, so only the mode is kept.
        this.state[S_POWER] = 0x00;
        return okOutcome();
      case c.RECALIBRATE:
      case c.SEEK:
      case c.INITIALIZE_PARAMETERS:
        return okOutcome();
      case c.EXECUTE_DIAGNOSTIC:
        // Error register 01h: device 0 passed (ATA8-ACS §7.9); the signature is placed as after a reset.
        return { status: ATA_STATUS_READY, error: 0x01, protocol: 'non-data', bytes: 0, count: 1, lbaLow24: 1 };
      case c.IDENTIFY_PACKET:
      case c.PACKET:
      case c.DEVICE_RESET:
      case c.NOP:
      default:
        return abortOutcome();
    }
  }

  /** IDENTIFY DEVICE data (ATA8-ACS §7.16.7, table 22). */
  identify(): Uint8Array {
    const w = new Uint16Array(256);
    const cap = this.config.capacity;
    const cylinders = Math.min(16383, Math.max(1, Math.floor(cap / (HEADS * SECTORS_PER_TRACK))));
    const chsSectors = Math.min(cap, cylinders * HEADS * SECTORS_PER_TRACK);
    w[0] = 0x0040; // fixed device, not removable
    w[1] = cylinders;
    w[3] = HEADS;
    w[6] = SECTORS_PER_TRACK;
    putAtaString(w, 10, 10, this.config.serial);
    putAtaString(w, 23, 4, this.config.firmware);
    putAtaString(w, 27, 20, this.config.model);
    w[47] = 0x8000 | MAX_MULTIPLE_SECTORS;
    w[49] = (1 << 11) | (1 << 9) | (1 << 8); // IORDY, LBA, DMA
    w[50] = 0x4000;
    w[53] = 0x0007; // words 54-58, 64-70 and 88 are valid
    w[54] = cylinders;
    w[55] = HEADS;
    w[56] = SECTORS_PER_TRACK;
    w[57] = chsSectors & 0xffff;
    w[58] = chsSectors >>> 16;
    const multiple = this.state[S_MULTIPLE];
    w[59] = multiple ? 0x0100 | multiple : 0;
    const lba28Sectors = Math.min(cap, LBA28_LIMIT);
    w[60] = lba28Sectors & 0xffff;
    w[61] = lba28Sectors >>> 16;
    const mwdma = this.state[S_MWDMA];
    w[63] = 0x0007 | (mwdma >= 0 ? 0x100 << mwdma : 0);
    w[64] = 0x0003; // PIO modes 3 and 4
    w[65] = 120;
    w[66] = 120;
    w[67] = 120;
    w[68] = 120;
    w[76] = 0x0002; // SATA Gen1 (1.5 Gb/s); no NCQ
    w[80] = 0x01f0; // ATA/ATAPI-4 to ATA8-ACS
    w[82] = (1 << 14) | (1 << 6) | (1 << 5); // NOP, read look-ahead, write cache
    w[83] = 0x4000 | (1 << 13) | (1 << 12) | (1 << 10); // FLUSH CACHE EXT, FLUSH CACHE, 48-bit addresses
    w[84] = 0x4000;
    w[85] = (1 << 14) | (this.state[S_LOOKAHEAD] ? 1 << 6 : 0) | (this.state[S_WRITE_CACHE] ? 1 << 5 : 0);
    w[86] = (1 << 13) | (1 << 12) | (1 << 10);
    w[87] = 0x4000;
    const udma = this.state[S_UDMA];
    w[88] = 0x003f | (udma >= 0 ? 0x100 << udma : 0); // Ultra DMA modes 0-5
    w[93] = 0; // hardware reset result: a parallel-ATA field, zero on SATA
    for (let i = 0; i < 4; i++) w[100 + i] = Math.floor(cap / 2 ** (16 * i)) & 0xffff;
    w[106] = 0x4000; // one 512-byte logical sector per physical sector
    w[217] = 1; // non-rotating medium: guests skip seek-time heuristics
    w[222] = 0x1000 | 0x003f; // serial transport, SATA 1.0a-3.0
    return sealIdentify(w);
  }

  private pioIn(data: DataBuffer, bytes: Uint8Array): AtaOutcome {
    return okOutcome('pio-in', data.fromDevice(bytes));
  }

  /** LBA and sector count of a read/write/verify, or undefined when they fall outside the disk. */
  private range(tf: AtaTaskFile, ext: boolean): { lba: number; count: number } | undefined {
    let lba: number;
    if (ext) lba = lba48(tf);
    else if (tf.device & 0x40) lba = lba28(tf);
    else {
      // CHS (ATA8-ACS §4.2.2 legacy addressing): cylinder in LBA 23:8, sector number in LBA 7:0, head in device 3:0.
      const sector = tf.lbaLow24 & 0xff;
      const cylinder = (tf.lbaLow24 >>> 8) & 0xffff;
      if (sector === 0) return undefined;
      lba = (cylinder * HEADS + (tf.device & 0x0f)) * SECTORS_PER_TRACK + sector - 1;
    }
    const count = ext ? tf.count || 0x10000 : tf.count & 0xff || 0x100;
    if (lba + count > this.config.capacity) return undefined;
    return { lba, count };
  }

  private read(data: DataBuffer, tf: AtaTaskFile, ext: boolean, protocol: AtaOutcome['protocol']): AtaOutcome {
    const r = this.range(tf, ext);
    if (!r)
      return { status: ATA_STATUS_READY | ATA_STATUS_ERR, error: ATA_ERROR_IDNF | ATA_ERROR_ABRT, protocol, bytes: 0 };
    const length = r.count * ATA_SECTOR_SIZE;
    if (data.length < length) return abortOutcome(protocol); // the PRDT cannot take the data (ahci.ts flags overflow)
    try {
      return okOutcome(protocol, data.readFile(this.config.fd, r.lba * ATA_SECTOR_SIZE, length));
    } catch {
      return { status: ATA_STATUS_READY | ATA_STATUS_ERR, error: ATA_ERROR_UNC, protocol, bytes: 0 };
    }
  }

  private write(data: DataBuffer, tf: AtaTaskFile, ext: boolean, protocol: AtaOutcome['protocol']): AtaOutcome {
    if (this.config.readOnly) return abortOutcome(protocol);
    const r = this.range(tf, ext);
    if (!r)
      return { status: ATA_STATUS_READY | ATA_STATUS_ERR, error: ATA_ERROR_IDNF | ATA_ERROR_ABRT, protocol, bytes: 0 };
    const length = r.count * ATA_SECTOR_SIZE;
    if (data.length < length) return abortOutcome(protocol);
    try {
      const bytes = data.writeFile(this.config.fd, r.lba * ATA_SECTOR_SIZE, length);
      // Write cache off: a completed write must be on the medium (ATA8-ACS §7.47.3).
      if (!this.state[S_WRITE_CACHE]) fs.fdatasyncSync(this.config.fd);
      return okOutcome(protocol, bytes);
    } catch {
      return abortOutcome(protocol);
    }
  }

  private verify(tf: AtaTaskFile, ext: boolean): AtaOutcome {
    return this.range(tf, ext)
      ? okOutcome()
      : {
          status: ATA_STATUS_READY | ATA_STATUS_ERR,
          error: ATA_ERROR_IDNF | ATA_ERROR_ABRT,
          protocol: 'non-data',
          bytes: 0,
        };
  }

  private flush(): AtaOutcome {
    if (this.config.readOnly) return okOutcome();
    try {
      fs.fdatasyncSync(this.config.fd);
      return okOutcome();
    } catch {
      return abortOutcome();
    }
  }

  private setFeatures(tf: AtaTaskFile): AtaOutcome {
    switch (tf.features & 0xff) {
      case SF_ENABLE_WRITE_CACHE:
        this.state[S_WRITE_CACHE] = 1;
        return okOutcome();
      case SF_DISABLE_WRITE_CACHE:
        // Data the cache held must reach the medium before the cache goes (ATA8-ACS §7.47.3).
        this.state[S_WRITE_CACHE] = 0;
        return this.flush();
      case SF_ENABLE_READ_LOOKAHEAD:
        this.state[S_LOOKAHEAD] = 1;
        return okOutcome();
      case SF_DISABLE_READ_LOOKAHEAD:
        this.state[S_LOOKAHEAD] = 0;
        return okOutcome();
      case SF_ENABLE_REVERTING:
      case SF_DISABLE_REVERTING:
        return okOutcome();
      case SF_SET_TRANSFER_MODE: {
        // Count 7:3 the transfer type, 2:0 the mode (ATA8-ACS §7.47.4, table 65).
        const type = (tf.count >> 3) & 0x1f;
        const mode = tf.count & 0x07;
        if (type === 0 || type === 1) return okOutcome(); // PIO default / flow control mode
        if (type === 4 && mode <= 2) {
          this.state[S_MWDMA] = mode;
          this.state[S_UDMA] = -1;
          return okOutcome();
        }
        if (type === 8 && mode <= 5) {
          this.state[S_UDMA] = mode;
          this.state[S_MWDMA] = -1;
          return okOutcome();
        }
        return abortOutcome();
      }
      default:
        return abortOutcome();
    }
  }
}

/** Error-register value of a failed command with ABRT (exported for tests reading PxTFD). */
export const ABORTED_TFD = ((ATA_ERROR_ABRT << 8) | ATA_STATUS_READY | ATA_STATUS_ERR) >>> 0;
