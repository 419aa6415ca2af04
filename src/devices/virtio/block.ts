// Virtio block device, virtio 1.2 §5.2 (feature bits §5.2.3, configuration §5.2.4, requests §5.2.6) over a raw image.
//
// The image is a regular file or a block device, opened and locked on the builder thread (openBlock) so that a
// missing file or an image another VM holds is one clear error before the guest starts. Requests are served on
// the VM's I/O thread; their data moves straight into and out of guest RAM (no copy) on other threads: reads in
// libuv's thread pool (in parallel), writes and syncs on the disk's own native thread (block-io.ts: back to
// back, in submission order). Neither a vCPU nor the VM's I/O thread ever waits on the disk.
//
// Everything in a request is hostile: lengths, sectors and segment counts are checked against the image before
// the file is touched, so no request can reach outside the image. A chain that is not a request at all (no
// 16-byte header, no writable status byte) is a driver bug: DEVICE_NEEDS_RESET, as QEMU does.
//
// Bounds against a hostile driver: the queues keep at most their size in requests in flight (queue.ts), and
// the device as a whole stops taking new requests while BLOCK_INFLIGHT_BYTES of data or BLOCK_INFLIGHT_BUFFERS
// guest buffers are in flight, resuming as requests complete (each in-flight buffer costs host memory for its
// view and iovec, however short it is: a chain can have 65536 of them). One turn of the I/O thread serves at most
// BLOCK_TURN_CHAINS requests per queue, then continues on setImmediate, so a driver that keeps a queue busy cannot
// starve the other devices, the application processors' exits or this device's own completions on that thread.
import * as fs from 'node:fs';
import { native } from '../../native/index.js';
import { constants as osConstants } from 'node:os';
import { BlockIoThread, IO_SYNC, IO_WRITE } from './block-io.js';
import type { VirtioBackend, VirtioQueueContext } from './device.js';
import { DeviceOpenError } from '../model.js';
import type { VirtioDeviceInfo } from './pci-transport.js';
import { VirtqueueError, type DescriptorChain, type Virtqueue } from './queue.js';
import { Type } from '@sinclair/typebox';
import { virtioPciModel } from './pci-model.js';

// §5.2.3 feature bits.
export const VIRTIO_BLK_F_SIZE_MAX = 1n;
export const VIRTIO_BLK_F_SEG_MAX = 2n;
export const VIRTIO_BLK_F_GEOMETRY = 4n;
export const VIRTIO_BLK_F_RO = 5n;
export const VIRTIO_BLK_F_BLK_SIZE = 6n;
export const VIRTIO_BLK_F_FLUSH = 9n;
export const VIRTIO_BLK_F_TOPOLOGY = 10n;
export const VIRTIO_BLK_F_CONFIG_WCE = 11n;
export const VIRTIO_BLK_F_MQ = 12n;
export const VIRTIO_BLK_F_DISCARD = 13n;
export const VIRTIO_BLK_F_WRITE_ZEROES = 14n;

// §5.2.6 request types and status values.
export const VIRTIO_BLK_T_IN = 0;
export const VIRTIO_BLK_T_OUT = 1;
export const VIRTIO_BLK_T_FLUSH = 4;
export const VIRTIO_BLK_T_GET_ID = 8;
export const VIRTIO_BLK_T_DISCARD = 11;
export const VIRTIO_BLK_T_WRITE_ZEROES = 13;
export const VIRTIO_BLK_S_OK = 0;
export const VIRTIO_BLK_S_IOERR = 1;
export const VIRTIO_BLK_S_UNSUPP = 2;
/** struct virtio_blk_discard_write_zeroes.flags bit 0. */
export const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP = 1;

export const SECTOR_SIZE = 512;
/** struct virtio_blk_req header: type u32, reserved u32, sector u64. */
export const REQUEST_HEADER_SIZE = 16;
/** struct virtio_blk_discard_write_zeroes: sector u64, num_sectors u32, flags u32. */
export const SEGMENT_SIZE = 16;
/** GET_ID answers with a 20-byte serial, NUL-padded, not terminated when it is 20 bytes long. */
export const ID_BYTES = 20;
/** struct virtio_blk_config up to and including write_zeroes_may_unmap and its 3 padding bytes. */
export const BLOCK_CONFIG_SIZE = 60;
export const MAX_QUEUES = 16;
export const DEFAULT_QUEUE_SIZE = 256;
/** Per discard / write-zeroes segment, and segments per request: bounds the work one request can ask for (512 MiB). */
export const MAX_DISCARD_SECTORS = 65536;
export const MAX_DISCARD_SEGMENTS = 16;
/** Suggested discard granularity: 4 KiB, the block size of the usual host file systems, so holes free real blocks. */
const DISCARD_ALIGNMENT_SECTORS = 8;
/** PCI class: mass storage, SCSI (what virtio-blk has always used). */
const CLASS_MASS_STORAGE = 0x010000;

const LOCK_SH = 1;
const LOCK_EX = 2;
const LOCK_NB = 4;
const EWOULDBLOCK = 11;
/** <linux/fs.h> BLKGETSIZE64 = _IOR(0x12, 114, size_t): a block device's size in bytes. */
const BLKGETSIZE64 = 0x80081272;
const FALLOC_FL_KEEP_SIZE = 0x01;
const FALLOC_FL_PUNCH_HOLE = 0x02;
const FALLOC_FL_ZERO_RANGE = 0x10;
const EOPNOTSUPP = 95;
const ENOSYS = 38;
const ENODEV = 19;
/** libuv caps a readv/writev at IOV_MAX buffers; more are sent in the next call. */
const IOV_MAX = 1024;
/** Adjacent requests merged into one transfer up to this size: long enough to save round trips, short enough to keep several in flight. */
const MERGE_MAX_BYTES = 256 * 1024;
/** Discard and write-zeroes without fallocate write zeros in chunks of this size. */
const ZERO_CHUNK = 1024 * 1024;
/** Requests popped per queue and turn of the I/O thread before yielding (setImmediate). */
export const BLOCK_TURN_CHAINS = 64;
/**
 * New requests wait in the ring while this much read/write data is in flight on the device (one request larger
 * than this is still served, alone). Far above what a disk needs to stay busy, small enough that requests cannot
 * pin guest RAM in host I/O without bound.
 */
export const BLOCK_INFLIGHT_BYTES = 64 * 1024 * 1024;
/** …or this many guest buffers of read/write requests (the host keeps a view of each until the request is done). */
export const BLOCK_INFLIGHT_BUFFERS = 65536;

export interface BlockOptions {
  path: string;
  readOnly?: boolean;
  /** Reported by GET_ID (at most 20 bytes): Linux shows it as /sys/block/vdX/serial and /dev/disk/by-id. */
  serial?: string;
  /** 1..16, default 1. */
  queues?: number;
  /** Entries per queue: a power of two, 4..32768, default 256. */
  queueSize?: number;
}

/** An opened, locked image: plain values only, so it crosses to the I/O worker by structured clone (fds are process-wide). */
export interface BlockHandle {
  readonly fd: number;
  readonly path: string;
  readonly readOnly: boolean;
  /** Size in 512-byte sectors. */
  readonly capacity: number;
  readonly serial: string;
  readonly queues: number;
  readonly queueSize: number;
}

function describeOpenError(path: string, readOnly: boolean, e: NodeJS.ErrnoException): string {
  switch (e.code) {
    case 'ENOENT':
      return `disk image '${path}' does not exist`;
    case 'EISDIR':
      return `disk image '${path}' is a directory`;
    case 'EACCES':
    case 'EPERM':
      return readOnly
        ? `disk image '${path}': permission denied`
        : `disk image '${path}': permission denied for read-write (use it read-only, or fix its permissions)`;
    case 'EROFS':
      return `disk image '${path}' is on a read-only file system (use it read-only)`;
    case 'ENOTDIR':
      return `disk image '${path}': a component of the path is not a directory`;
    default:
      return `cannot open disk image '${path}': ${e.code ?? e.message}`;
  }
}

/** Bytes in a block device or regular file; a DeviceOpenError for anything else. */
function imageSize(fd: number, path: string): number {
  const st = fs.fstatSync(fd);
  if (st.isDirectory()) throw new DeviceOpenError(`disk image '${path}' is a directory`);
  if (st.isFile()) return st.size;
  if (st.isBlockDevice()) {
    const out = new BigUint64Array(1);
    const r = native.ioctl(fd, BLKGETSIZE64, out);
    if (r < 0) throw new DeviceOpenError(`disk '${path}': cannot read the block device's size (errno ${-r})`);
    if (out[0] > BigInt(Number.MAX_SAFE_INTEGER)) throw new DeviceOpenError(`disk '${path}' is too large`);
    return Number(out[0]);
  }
  throw new DeviceOpenError(`disk image '${path}' is not a regular file or a block device`);
}

/**
 * Opens and locks a raw disk image (builder thread). A writer takes an exclusive lock and a read-only user a
 * shared one, so any number of VMs may share an image read-only but none can open it while another writes it.
 */
export function openBlock(o: BlockOptions): BlockHandle {
  const path = o.path;
  if (typeof path !== 'string' || path === '') throw new DeviceOpenError('disk: no image path given');
  const readOnly = o.readOnly ?? false;
  const queues = o.queues ?? 1;
  if (!Number.isInteger(queues) || queues < 1 || queues > MAX_QUEUES) {
    throw new DeviceOpenError(`disk '${path}': queues must be 1..${MAX_QUEUES}, not ${queues}`);
  }
  const queueSize = o.queueSize ?? DEFAULT_QUEUE_SIZE;
  if (!Number.isInteger(queueSize) || queueSize < 4 || queueSize > 32768 || (queueSize & (queueSize - 1)) !== 0) {
    throw new DeviceOpenError(`disk '${path}': queue size must be a power of two in 4..32768, not ${queueSize}`);
  }
  const serial = o.serial ?? '';
  const serialBytes = Buffer.byteLength(serial, 'utf8');
  if (serialBytes > ID_BYTES) {
    throw new DeviceOpenError(`disk '${path}': serial '${serial}' is ${serialBytes} bytes; at most ${ID_BYTES}`);
  }

  let fd: number;
  try {
    fd = fs.openSync(path, readOnly ? fs.constants.O_RDONLY : fs.constants.O_RDWR);
  } catch (e) {
    throw new DeviceOpenError(describeOpenError(path, readOnly, e as NodeJS.ErrnoException));
  }
  try {
    const size = imageSize(fd, path);
    const locked = native.flock(fd, (readOnly ? LOCK_SH : LOCK_EX) | LOCK_NB);
    if (locked === -EWOULDBLOCK) {
      throw new DeviceOpenError(`disk image '${path}' is in use by another VM (it is locked)`);
    }
    if (locked < 0) throw new DeviceOpenError(`disk image '${path}': cannot lock it (errno ${-locked})`);
    if (size === 0) throw new DeviceOpenError(`disk image '${path}' is empty`);
    if (size % SECTOR_SIZE !== 0) {
      throw new DeviceOpenError(
        `disk image '${path}' is ${size} bytes, not a multiple of the ${SECTOR_SIZE}-byte sector size`,
      );
    }
    return { fd, path, readOnly, capacity: size / SECTOR_SIZE, serial, queues, queueSize };
  } catch (e) {
    fs.closeSync(fd); // also drops the lock, if it was taken
    if (e instanceof DeviceOpenError) throw e;
    throw new DeviceOpenError(`disk image '${path}': ${(e as Error).message}`);
  }
}

/** One request being served: what its completion needs. */
interface Request {
  /** The device generation it belongs to: a reset in between makes its completion a no-op. */
  readonly generation: number;
  readonly queueIndex: number;
  readonly queue: Virtqueue;
  readonly chain: DescriptorChain;
  /** Live view of the status byte (the chain's last writable byte). */
  readonly status: Uint8Array;
  /** Data bytes and buffers this request counts in the device's in-flight totals (read/write data only). */
  bytes: number;
  buffers: number;
}

/** A read's or write's data: guest RAM views and where in the image they go. */
interface DataRange {
  readonly request: Request;
  readonly views: readonly Uint8Array[];
  readonly position: number;
  readonly length: number;
}

/**
 * One pread/pwrite(v) in progress, for one request or several adjacent ones merged (QEMU's virtio-blk does the
 * same): a sequential stream then costs one thread-pool round trip per batch, not per request.
 */
interface Transfer {
  readonly write: boolean;
  readonly ranges: DataRange[];
  /** What is left, advanced on short transfers (or beyond IOV_MAX buffers). */
  views: Uint8Array[];
  position: number;
  remaining: number;
}

/** Byte ranges a discard or write-zeroes request clears, checked against the image first. */
interface ZeroJob {
  readonly request: Request;
  readonly ranges: readonly { offset: number; length: number; unmap: boolean }[];
  index: number;
  /** Byte offset reached inside ranges[index] (zero-writing fallback). */
  done: number;
}

let zeroChunk: Uint8Array | undefined;

/** A live view of a chain's last writable byte (the chain has one: writableLength ≥ 1). */
function statusByte(ctx: VirtioQueueContext, chain: DescriptorChain): Uint8Array {
  const buffers = chain.buffers;
  let i = buffers.length - 1;
  while (buffers[i].len === 0) i--; // zero-length buffers hold nothing
  return ctx.memory.slice(buffers[i].gpa + buffers[i].len - 1, 1);
}

export class VirtioBlock implements VirtioBackend {
  readonly info: VirtioDeviceInfo;
  private readonly fd: number;
  private readonly readOnly: boolean;
  private readonly capacity: number;
  private readonly idBytes: Uint8Array;
  private ctx: VirtioQueueContext | undefined;
  private generation = 0;
  /** Without FLUSH negotiated, a completed write must already be stable (§5.2.6.2): fdatasync before completing. */
  private writeThrough = false;
  /** fs calls issued and not yet called back: the fd is closed only when this drops to zero. */
  private inFlight = 0;
  private io: BlockIoThread | undefined;
  /** Resolvers of reset() promises, settled when inFlight drops to 0. */
  private drained: (() => void)[] = [];
  private closed = false;
  private fdClosed = false;
  /** Between quiesce() and resume(): no new request is started. */
  private quiesced = false;
  /** Queues owed an interrupt: one per queue per event-loop turn, however many requests completed in it. */
  private readonly interruptDue: boolean[];
  private interruptTimer: NodeJS.Immediate | undefined;
  /** Adjacent reads or writes gathered while one queue is drained (sent when the drain ends or the run breaks). */
  private batch: Transfer | undefined;
  /** Per queue: a drain continued on the next turn of the I/O thread (the turn's budget was spent). */
  private readonly continuation: (NodeJS.Immediate | undefined)[];
  /** Per queue: draining stopped at the in-flight limits; completions resume it. */
  private readonly throttled: boolean[];
  /** Read/write data and guest buffers of the requests in flight (BLOCK_INFLIGHT_BYTES, BLOCK_INFLIGHT_BUFFERS). */
  private inFlightBytes = 0;
  private inFlightBuffers = 0;
  /** Scratch for the request header (copied out of guest RAM once, then parsed). */
  private readonly header = new Uint8Array(REQUEST_HEADER_SIZE);
  private readonly headerView = new DataView(this.header.buffer);

  constructor(private readonly handle: BlockHandle) {
    this.fd = handle.fd;
    this.readOnly = handle.readOnly;
    this.capacity = handle.capacity;
    this.idBytes = new Uint8Array(ID_BYTES);
    this.idBytes.set(Buffer.from(handle.serial, 'utf8').subarray(0, ID_BYTES));
    let features = (1n << VIRTIO_BLK_F_SEG_MAX) | (1n << VIRTIO_BLK_F_BLK_SIZE) | (1n << VIRTIO_BLK_F_FLUSH);
    if (handle.readOnly) features |= 1n << VIRTIO_BLK_F_RO;
    else features |= (1n << VIRTIO_BLK_F_DISCARD) | (1n << VIRTIO_BLK_F_WRITE_ZEROES);
    if (handle.queues > 1) features |= 1n << VIRTIO_BLK_F_MQ;
    this.info = {
      deviceType: 2,
      classCode: CLASS_MASS_STORAGE,
      features,
      queueSizes: new Array<number>(handle.queues).fill(handle.queueSize),
      configSize: BLOCK_CONFIG_SIZE,
    };
    this.interruptDue = new Array<boolean>(handle.queues).fill(false);
    this.continuation = new Array<NodeJS.Immediate | undefined>(handle.queues).fill(undefined);
    this.throttled = new Array<boolean>(handle.queues).fill(false);
  }

  /** struct virtio_blk_config (§5.2.4), little-endian. */
  configBytes(): Uint8Array {
    const bytes = new Uint8Array(BLOCK_CONFIG_SIZE);
    const v = new DataView(bytes.buffer);
    v.setBigUint64(0, BigInt(this.capacity), true); // capacity
    v.setUint32(8, 0, true); // size_max: SIZE_MAX not offered
    v.setUint32(12, Math.max(1, this.handle.queueSize - 2), true); // seg_max: room for the header and status
    v.setUint32(20, SECTOR_SIZE, true); // blk_size
    v.setUint8(32, 0); // writeback: CONFIG_WCE not offered (the cache mode follows FLUSH negotiation)
    v.setUint16(34, this.handle.queues, true); // num_queues
    if (!this.readOnly) {
      v.setUint32(36, MAX_DISCARD_SECTORS, true); // max_discard_sectors
      v.setUint32(40, MAX_DISCARD_SEGMENTS, true); // max_discard_seg
      v.setUint32(44, DISCARD_ALIGNMENT_SECTORS, true); // discard_sector_alignment
      v.setUint32(48, MAX_DISCARD_SECTORS, true); // max_write_zeroes_sectors
      v.setUint32(52, MAX_DISCARD_SEGMENTS, true); // max_write_zeroes_seg
      // UNMAP write-zeroes punch holes (fallocate); "may" (§5.2.6.2): where the filesystem cannot, zeros are written.
      v.setUint8(56, 1); // write_zeroes_may_unmap
    }
    return bytes;
  }

  activate(ctx: VirtioQueueContext): void {
    if (this.closed) return;
    this.ctx = ctx;
    this.writeThrough = !this.readOnly && ((ctx.features >> VIRTIO_BLK_F_FLUSH) & 1n) === 0n;
  }

  queueNotified(index: number): void {
    // A continuation already pending, or completions of a throttled queue, will see the new chains; serving now
    // would only break the turn's budget or the in-flight limits.
    if (this.continuation[index] || this.throttled[index]) return;
    this.drain(index);
  }

  /** Serves queue `index` until it is empty, this turn's budget is spent or the in-flight limits are reached. */
  private drain(index: number): void {
    const ctx = this.ctx;
    const queue = ctx?.queues[index];
    if (!ctx || !queue || this.quiesced) return;
    const generation = this.generation;
    let chains = 0;
    // Kicks are off while the ring is drained; re-enabling reports buffers added meanwhile (§2.7.10). They stay off
    // while the drain waits for the next turn or for completions: the device will look at the ring anyway.
    for (;;) {
      queue.disableNotifications();
      for (;;) {
        if (this.inFlightBytes >= BLOCK_INFLIGHT_BYTES || this.inFlightBuffers >= BLOCK_INFLIGHT_BUFFERS) {
          this.sendBatch();
          this.throttled[index] = true; // complete() resumes
          return;
        }
        if (chains === BLOCK_TURN_CHAINS) {
          this.sendBatch();
          this.continuation[index] = setImmediate(() => {
            this.continuation[index] = undefined;
            if (this.generation === generation) this.drain(index);
          });
          return;
        }
        const chain = queue.popAvailable();
        if (chain === undefined) break;
        if (chain instanceof VirtqueueError) {
          ctx.needsReset(`queue ${index}: ${chain.message}`);
          return;
        }
        try {
          this.serve(ctx, index, queue, chain);
        } catch (e) {
          // Defence in depth: the chain was validated, so nothing here should throw; never let it out of the device.
          ctx.needsReset(`queue ${index}: request ${chain.head}: ${(e as Error).message}`);
          return;
        }
        if (this.generation !== generation) return; // the request made us need a reset
        chains++;
      }
      this.sendBatch();
      if (!queue.enableNotifications()) return;
    }
  }

  /**
   * I/O in flight cannot be cancelled: a pread/pwrite already in libuv's thread pool finishes, and a read then
   * still lands in the guest buffers the driver handed over before the reset. Its completion sees the new
   * generation: no status byte, no used entry, no follow-up transfer, no interrupt. The returned promise
   * settles when the last such call is back, and the transport reports the reset done (device_status 0,
   * virtio 1.2 §2.4.1) only then, as QEMU drains its block backend first.
   */
  reset(): Promise<void> | undefined {
    this.resetState();
    if (this.inFlight === 0) return undefined;
    return new Promise((resolve) => this.drained.push(resolve));
  }

  /**
   * For a snapshot: no new request is taken, and the returned promise settles once every request in flight has
   * completed (status byte, used element) and its interrupt has been sent. Writes are then in the image (or the
   * host's cache: a snapshot that must survive a host crash flushes the image itself, as settle() does).
   */
  async quiesce(): Promise<void> {
    this.quiesced = true;
    // A completion may issue the next transfer of its request (short transfers, write-through syncs, zeroing):
    // wait until nothing at all is out.
    while (this.inFlight > 0) await new Promise<void>((resolve) => this.drained.push(resolve));
    if (this.interruptTimer) {
      clearImmediate(this.interruptTimer);
      this.sendInterrupts();
    }
  }

  /** Takes requests again; the runner passes on the kicks that came meanwhile. */
  resume(): void {
    this.quiesced = false;
  }

  private ioReturned(): void {
    this.inFlight--;
    if (this.inFlight === 0 && this.drained.length) for (const resolve of this.drained.splice(0)) resolve();
  }

  private resetState(): void {
    this.generation++;
    this.ctx = undefined;
    this.batch = undefined;
    this.interruptDue.fill(false);
    if (this.interruptTimer) clearImmediate(this.interruptTimer);
    this.interruptTimer = undefined;
    for (const c of this.continuation) if (c) clearImmediate(c);
    this.continuation.fill(undefined);
    this.throttled.fill(false);
    // Requests of the old generation complete as no-ops and are not counted out again.
    this.inFlightBytes = 0;
    this.inFlightBuffers = 0;
  }

  close(): void {
    if (this.closed) return;
    this.resetState();
    this.closed = true;
    if (!this.readOnly) {
      try {
        fs.fdatasyncSync(this.fd);
      } catch {
        // Nothing to report it to at shutdown; the guest's own FLUSH requests are where errors are seen.
      }
    }
    if (this.inFlight === 0) this.closeFd();
  }

  private closeFd(): void {
    if (this.fdClosed) return;
    this.fdClosed = true;
    try {
      fs.closeSync(this.fd); // releases the image lock
    } catch {
      // already gone: nothing holds the lock then either
    }
  }

  /** Parses one chain and starts (or finishes) its request. */
  private serve(ctx: VirtioQueueContext, queueIndex: number, queue: Virtqueue, chain: DescriptorChain): void {
    // §5.2.6: the header is device-readable and the status is the last device-writable byte; a chain without
    // them is not a request, and there is nowhere to report an error in it.
    if (chain.writableLength < 1) {
      ctx.needsReset(`queue ${queueIndex}: request ${chain.head} has no device-writable status byte`);
      return;
    }
    if (chain.readableLength < REQUEST_HEADER_SIZE) {
      ctx.needsReset(
        `queue ${queueIndex}: request ${chain.head} has a ${chain.readableLength}-byte header; ${REQUEST_HEADER_SIZE} needed`,
      );
      return;
    }
    const status = statusByte(ctx, chain);
    chain.forEachSpan('readable', this.copyHeader, 0, REQUEST_HEADER_SIZE);
    const request: Request = { generation: this.generation, queueIndex, queue, chain, status, bytes: 0, buffers: 0 };
    const type = this.headerView.getUint32(0, true);
    const sectorLo = this.headerView.getUint32(8, true);
    const sectorHi = this.headerView.getUint32(12, true);
    switch (type) {
      case VIRTIO_BLK_T_IN:
        this.readWrite(request, false, sectorLo, sectorHi);
        return;
      case VIRTIO_BLK_T_OUT:
        if (this.readOnly) return this.complete(request, VIRTIO_BLK_S_IOERR); // §5.2.6.2: and write nothing
        this.readWrite(request, true, sectorLo, sectorHi);
        return;
      case VIRTIO_BLK_T_FLUSH:
        if (this.readOnly) return this.complete(request, VIRTIO_BLK_S_OK);
        this.sync((err) => {
          if (!this.afterClose()) this.complete(request, err ? VIRTIO_BLK_S_IOERR : VIRTIO_BLK_S_OK);
        });
        return;
      case VIRTIO_BLK_T_GET_ID:
        chain.writeBytes(this.idBytes, 0, Math.min(ID_BYTES, chain.writableLength - 1));
        return this.complete(request, VIRTIO_BLK_S_OK);
      case VIRTIO_BLK_T_DISCARD:
      case VIRTIO_BLK_T_WRITE_ZEROES:
        if (this.readOnly) return this.complete(request, VIRTIO_BLK_S_UNSUPP); // not offered
        this.zeroes(request, type === VIRTIO_BLK_T_DISCARD);
        return;
      default:
        return this.complete(request, VIRTIO_BLK_S_UNSUPP);
    }
  }

  private readonly copyHeader = (view: Uint8Array, at: number): void => this.header.set(view, at);

  /** Byte offset of `count` sectors from sector hi:lo when they lie inside the image, else -1. */
  private range(sectorLo: number, sectorHi: number, count: number): number {
    if (sectorHi >= 2 ** 21) return -1; // beyond 2^53 bytes: outside any image
    const sector = sectorHi * 2 ** 32 + sectorLo;
    if (sector > this.capacity || count > this.capacity - sector) return -1;
    return sector * SECTOR_SIZE;
  }

  private readWrite(request: Request, write: boolean, sectorLo: number, sectorHi: number): void {
    const chain = request.chain;
    // IN: data is the writable part before the status byte. OUT: the readable part after the header.
    const length = write ? chain.readableLength - REQUEST_HEADER_SIZE : chain.writableLength - 1;
    if (length % SECTOR_SIZE !== 0) return this.complete(request, VIRTIO_BLK_S_IOERR);
    const position = this.range(sectorLo, sectorHi, length / SECTOR_SIZE);
    if (position < 0) return this.complete(request, VIRTIO_BLK_S_IOERR);
    if (length === 0) return this.complete(request, VIRTIO_BLK_S_OK);
    request.bytes = length;
    request.buffers = chain.buffers.length;
    this.inFlightBytes += length;
    this.inFlightBuffers += request.buffers;
    const views: Uint8Array[] = [];
    if (write) chain.forEachSpan('readable', (view) => views.push(view), REQUEST_HEADER_SIZE, length);
    else chain.forEachSpan('writable', (view) => views.push(view), 0, length);
    const range: DataRange = { request, views, position, length };
    // Requests popped in one drain of the ring that continue each other are sent as one transfer.
    const b = this.batch;
    if (
      b &&
      b.write === write &&
      b.position + b.remaining === position &&
      b.remaining + length <= MERGE_MAX_BYTES &&
      b.views.length + views.length <= IOV_MAX
    ) {
      b.ranges.push(range);
      for (const v of views) b.views.push(v);
      b.remaining += length;
      return;
    }
    this.sendBatch();
    this.batch = { write, ranges: [range], views: [...views], position, remaining: length };
  }

  /** Starts the transfer being gathered, if any. */
  private sendBatch(): void {
    const b = this.batch;
    this.batch = undefined;
    if (b && b.ranges[0].request.generation === this.generation) this.transfer(b);
  }

  /**
   * Issues the next transfer straight from/into guest RAM. Reads go to libuv's thread pool, where several run
   * in parallel (measured: 64 KiB sequential reads 93% of one thread's pread rate, 60% on one thread); writes go
   * to the disk's own thread, back to back and in order (64 KiB random writes: 46% from the pool, whose threads
   * contend for the file's inode lock, 76% on one thread). See bench/block.mjs.
   */
  private transfer(t: Transfer): void {
    const views = t.views.length > IOV_MAX ? t.views.slice(0, IOV_MAX) : t.views;
    if (!t.write) {
      const done = (err: NodeJS.ErrnoException | null, n: number): void => this.transferred(t, err, n);
      try {
        if (views.length === 1) fs.read(this.fd, views[0], 0, views[0].length, t.position, done);
        else fs.readv(this.fd, views, t.position, done);
      } catch {
        // fs rejected the arguments: nothing was issued
        for (const range of t.ranges) this.complete(range.request, VIRTIO_BLK_S_IOERR);
        return;
      }
      this.inFlight++;
      return;
    }
    const r = this.ioThread().submit(this.fd, IO_WRITE, t.position, views, (result) =>
      this.transferred(t, result < 0 ? errnoError(result) : null, result < 0 ? 0 : result),
    );
    if (r < 0) {
      // nothing was issued
      for (const range of t.ranges) this.complete(range.request, VIRTIO_BLK_S_IOERR);
      return;
    }
    this.inFlight++;
  }

  /** fdatasync on the disk's I/O thread: ordered after the transfers submitted before it. */
  private sync(done: (err: NodeJS.ErrnoException | null) => void): void {
    const r = this.ioThread().submit(this.fd, IO_SYNC, 0, [], (result) => {
      this.ioReturned();
      done(result < 0 ? errnoError(result) : null);
    });
    if (r < 0) return done(errnoError(r));
    this.inFlight++;
  }

  private ioThread(): BlockIoThread {
    this.io ??= new BlockIoThread();
    return this.io;
  }

  private transferred(t: Transfer, err: NodeJS.ErrnoException | null, n: number): void {
    this.ioReturned();
    if (this.afterClose()) return;
    if (t.ranges[0].request.generation !== this.generation) return; // reset meanwhile: touch nothing more
    // A read of 0 bytes before the end means the image shrank under us.
    if (err || n <= 0) {
      if (t.ranges.length === 1) return this.complete(t.ranges[0].request, VIRTIO_BLK_S_IOERR);
      // A merged transfer failed: redo its requests one by one, so only the bad one reports the error.
      for (const r of t.ranges) {
        this.transfer({ write: t.write, ranges: [r], views: [...r.views], position: r.position, remaining: r.length });
      }
      return;
    }
    t.remaining -= n;
    if (t.remaining > 0) {
      // A short transfer (or more than IOV_MAX buffers): skip what was done and go on.
      t.position += n;
      let i = 0;
      let skip = n;
      while (skip >= t.views[i].length) skip -= t.views[i++].length;
      t.views = t.views.slice(i);
      if (skip > 0) t.views[0] = t.views[0].subarray(skip);
      this.transfer(t);
      return;
    }
    if (t.write && this.writeThrough) {
      this.sync((e) => {
        if (this.afterClose()) return;
        for (const r of t.ranges) this.complete(r.request, e ? VIRTIO_BLK_S_IOERR : VIRTIO_BLK_S_OK);
      });
      return;
    }
    for (const r of t.ranges) this.complete(r.request, VIRTIO_BLK_S_OK);
  }

  /** After close(), the last fs call to come back closes the fd (closing it earlier could let a reused fd number be written). */
  private afterClose(): boolean {
    if (!this.closed) return false;
    if (this.inFlight === 0) this.closeFd();
    return true;
  }

  /** Writes the status byte and returns the chain to the driver, unless the device was reset since the request began. */
  private complete(request: Request, status: number): void {
    if (request.generation !== this.generation) return;
    if (request.bytes > 0 || request.buffers > 0) this.counted(request);
    request.status[0] = status;
    try {
      request.queue.pushUsed(request.chain, request.chain.writableLength); // the status byte ends the writable part
    } catch (e) {
      this.ctx?.needsReset(`queue ${request.queueIndex}: request ${request.chain.head}: ${(e as Error).message}`);
      return;
    }
    this.interruptDue[request.queueIndex] = true;
    this.interruptTimer ??= setImmediate(this.sendInterrupts);
  }

  /** Takes a finished request out of the in-flight totals and resumes queues that waited for room. */
  private counted(request: Request): void {
    this.inFlightBytes -= request.bytes;
    this.inFlightBuffers -= request.buffers;
    request.bytes = request.buffers = 0;
    if (this.inFlightBytes >= BLOCK_INFLIGHT_BYTES || this.inFlightBuffers >= BLOCK_INFLIGHT_BUFFERS) return;
    for (let i = 0; i < this.throttled.length; i++) {
      if (!this.throttled[i] || this.continuation[i]) continue;
      this.throttled[i] = false;
      // On the next turn: completions may be running inside a drain (a request answered at once) or a transfer.
      const generation = this.generation;
      this.continuation[i] = setImmediate(() => {
        this.continuation[i] = undefined;
        if (this.generation === generation) this.drain(i);
      });
    }
  }

  /** Runs after the event-loop turn's I/O callbacks: one interrupt per queue for all of them. */
  private readonly sendInterrupts = (): void => {
    this.interruptTimer = undefined;
    const ctx = this.ctx;
    for (let i = 0; i < this.interruptDue.length; i++) {
      if (!this.interruptDue[i]) continue;
      this.interruptDue[i] = false;
      ctx?.interrupt(i);
    }
  };

  /** DISCARD and WRITE_ZEROES (§5.2.6): every segment is checked before any is executed. */
  private zeroes(request: Request, discard: boolean): void {
    const chain = request.chain;
    const payload = chain.readableLength - REQUEST_HEADER_SIZE;
    const count = payload / SEGMENT_SIZE;
    if (payload % SEGMENT_SIZE !== 0 || count < 1 || count > MAX_DISCARD_SEGMENTS) {
      return this.complete(request, VIRTIO_BLK_S_IOERR);
    }
    const bytes = chain.readBytes(payload, REQUEST_HEADER_SIZE);
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const ranges: { offset: number; length: number; unmap: boolean }[] = [];
    for (let i = 0; i < count; i++) {
      const at = i * SEGMENT_SIZE;
      const sectors = view.getUint32(at + 8, true);
      const flags = view.getUint32(at + 12, true);
      // §5.2.6.2: unknown flags, or UNMAP on a discard, are UNSUPP.
      if (flags & ~VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP || (discard && flags !== 0)) {
        return this.complete(request, VIRTIO_BLK_S_UNSUPP);
      }
      const offset = this.range(view.getUint32(at, true), view.getUint32(at + 4, true), sectors);
      if (sectors > MAX_DISCARD_SECTORS || offset < 0) return this.complete(request, VIRTIO_BLK_S_IOERR);
      // A discard deallocates like write-zeroes with UNMAP: the guest's freed data leaves the image.
      if (sectors > 0) ranges.push({ offset, length: sectors * SECTOR_SIZE, unmap: discard || flags !== 0 });
    }
    this.zeroNext({ request, ranges, index: 0, done: 0 });
  }

  /** Clears the job's ranges in turn: fallocate, or zeros in 1 MiB writes where the filesystem cannot. */
  private zeroNext(job: ZeroJob): void {
    while (job.index < job.ranges.length) {
      const r = job.ranges[job.index];
      if (job.done === 0) {
        const mode = r.unmap ? FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE : FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;
        const result = native.fallocate(this.fd, mode, r.offset, r.length);
        if (result === 0) {
          job.index++;
          continue;
        }
        if (result !== -EOPNOTSUPP && result !== -ENOSYS && result !== -ENODEV) {
          return this.complete(job.request, VIRTIO_BLK_S_IOERR);
        }
      }
      const n = Math.min(ZERO_CHUNK, r.length - job.done);
      zeroChunk ??= new Uint8Array(ZERO_CHUNK);
      this.inFlight++;
      fs.write(this.fd, zeroChunk, 0, n, r.offset + job.done, (err, written) => {
        this.ioReturned();
        if (this.afterClose() || job.request.generation !== this.generation) return;
        if (err || written <= 0) return this.complete(job.request, VIRTIO_BLK_S_IOERR);
        job.done += written;
        if (job.done >= r.length) {
          job.index++;
          job.done = 0;
        }
        this.zeroNext(job);
      });
      return;
    }
    if (this.writeThrough) {
      this.sync((e) => {
        if (!this.afterClose()) this.complete(job.request, e ? VIRTIO_BLK_S_IOERR : VIRTIO_BLK_S_OK);
      });
      return;
    }
    this.complete(job.request, VIRTIO_BLK_S_OK);
  }
}

/** A Node-style error for a native -errno result. */
function errnoError(result: number): NodeJS.ErrnoException {
  const errno = -result;
  const code = Object.entries(osConstants.errno).find(([, v]) => v === errno)?.[0] ?? `E${errno}`;
  const e: NodeJS.ErrnoException = new Error(`${code} (errno ${errno})`);
  e.code = code;
  e.errno = errno;
  return e;
}

/** virtio-blk on a raw image (virtio 1.2 §5.2). */
export const virtioBlockModel = virtioPciModel<BlockHandle>({
  kind: 'virtio-blk',
  summary: 'virtio-blk disk on a raw image (locked: one writer at a time)',
  options: {
    path: Type.String({ minLength: 1, description: 'raw image file or block device' }),
    readOnly: Type.Optional(Type.Boolean()),
    serial: Type.Optional(Type.String({ description: 'GET_ID string, at most 20 bytes' })),
    queues: Type.Optional(Type.Integer({ minimum: 1, maximum: MAX_QUEUES })),
    queueSize: Type.Optional(Type.Integer({ minimum: 4, maximum: 32768 })),
  },
  open: (o) =>
    openBlock({
      path: o.path as string,
      readOnly: o.readOnly as boolean | undefined,
      serial: o.serial as string | undefined,
      queues: o.queues as number | undefined,
      queueSize: o.queueSize as number | undefined,
    }),
  diskImages: (o) => [o.path as string],
  backend: (handle) => new VirtioBlock(handle),
  settle(handle) {
    if (handle.readOnly) return;
    try {
      fs.fdatasyncSync(handle.fd); // QEMU flushes at exit too
    } catch {
      // the guest's own FLUSH requests are where write errors are reported
    }
  },
});
