// virtio 1.2 §5.3 Console Device, one port without VIRTIO_CONSOLE_F_MULTIPORT: receiveq0 (queue 0) carries host
// input to the guest, transmitq0 (queue 1) carries guest output to the host (§5.3.2, §5.3.6).
//
// The port is connected to a host file (output only: created, or appended to and never truncated, and never a
// disk image: src/host/output-file.ts) or to an existing UNIX socket (both ways). Connecting is asynchronous and
// the handle must stay a plain object, so the socket is connected when the driver first activates the device,
// and kept across driver resets: a guest reboot does not hang up on the host's peer. No feature is offered: F_SIZE needs a window size, which a file or
// a socket does not have, and F_EMERG_WRITE needs config-space writes, which reach the transport on the vCPU
// thread (VirtioPciDevice.deviceConfigWritten) but not this backend on the I/O thread.
//
// Bounds against a hostile driver: at most TX_CHAIN_MAX bytes are taken from one transmit chain (Linux sends at
// most 32 KiB per port write; splice can send a pipe's worth); per queue, one turn of the I/O thread serves at
// most TURN_CHAINS chains / TURN_BYTES bytes and continues on setImmediate. Host input waits in a buffer of at most
// RX_BUFFER_LIMIT bytes (plus the read that crossed it): the socket is paused while it is full (the peer then
// blocks on its full socket buffer), and guest output waits while the socket's write buffer is over its
// high-water mark. Output order is the order of the transmit ring.
import { accessSync, closeSync, constants, fstatSync, statSync, writeSync, type Stats } from 'node:fs';
import { createConnection, type Socket } from 'node:net';
import { dirname } from 'node:path';
import { openOutputFile, OutputFileError } from '../../host/output-file.js';
import type { VirtioBackend, VirtioQueueContext } from './device.js';
import { DeviceOpenError } from '../model.js';
import type { VirtioDeviceInfo } from './pci-transport.js';
import { VirtqueueError, type DescriptorChain } from './queue.js';
import { Type } from '@sinclair/typebox';
import { virtioPciModel } from './pci-model.js';

export const VIRTIO_ID_CONSOLE = 3;
export const CONSOLE_RECEIVEQ = 0;
export const CONSOLE_TRANSMITQ = 1;
export const CONSOLE_QUEUE_SIZE = 256;
/** struct virtio_console_config (§5.3.4): cols u16, rows u16, max_nr_ports u32, emerg_wr u32. */
export const CONSOLE_CONFIG_SIZE = 12;
/** Bytes taken from one transmit chain at most; the rest of a longer chain is dropped. */
export const CONSOLE_TX_CHAIN_MAX = 1024 * 1024;
/** Host input buffered for the guest before the socket is paused. */
export const CONSOLE_RX_BUFFER_LIMIT = 64 * 1024;
/** Per queue and turn of the I/O thread. */
export const CONSOLE_TURN_CHAINS = 64;
export const CONSOLE_TURN_BYTES = 1024 * 1024;
/** How long close() waits for queued output to reach a socket peer before hanging up anyway. */
const CLOSE_GRACE_MS = 1000;

export interface ConsoleOptions {
  /** An existing UNIX socket to connect to, or a file to create (or append to) for the guest's output. */
  readonly path: string;
  /** This VM's disk images: the output file may not be one of them. */
  readonly disks?: readonly string[];
}

export type ConsoleHandle =
  | { readonly kind: 'console'; readonly sink: 'file'; readonly path: string; readonly fd: number }
  | { readonly kind: 'console'; readonly sink: 'socket'; readonly path: string };

/** Validates the port's path and opens its file (sockets are connected later, by the device). */
export function openConsole(options: ConsoleOptions): ConsoleHandle {
  const path = options.path;
  if (typeof path !== 'string' || path === '') {
    throw new DeviceOpenError('console: no path given (a file for the guest output, or a UNIX socket)');
  }
  if (path.includes('\0')) throw new DeviceOpenError(`console: the path ${JSON.stringify(path)} contains a NUL byte`);
  let st: Stats | undefined;
  try {
    st = statSync(path);
  } catch (e) {
    if (errorCode(e) !== 'ENOENT') throw openError(path, e, 'cannot use');
  }
  if (st?.isSocket()) {
    try {
      accessSync(path, constants.W_OK); // connect(2) on a UNIX socket needs write permission on it
    } catch (e) {
      throw openError(path, e, 'cannot connect to');
    }
    return { kind: 'console', sink: 'socket', path };
  }
  if (st?.isDirectory()) {
    throw new DeviceOpenError(`console: ${path} is a directory; give a file to create or a UNIX socket`);
  }
  if (st && !st.isFile()) {
    throw new DeviceOpenError(`console: ${path} is ${fileKind(st)}, not a regular file or a UNIX socket`);
  }
  let fd: number;
  try {
    // O_NONBLOCK: were a FIFO put there since the stat, open would wait for a reader; fstat below refuses it.
    fd = openOutputFile(path, { disks: options.disks ?? [], flags: constants.O_NONBLOCK });
  } catch (e) {
    if (e instanceof OutputFileError) throw new DeviceOpenError(`console: ${e.message}`);
    throw openError(path, e, 'cannot create');
  }
  const opened = fstatSync(fd);
  if (!opened.isFile()) {
    closeSync(fd);
    throw new DeviceOpenError(`console: ${path} is ${fileKind(opened)}, not a regular file or a UNIX socket`);
  }
  return { kind: 'console', sink: 'file', path, fd };
}

function errorCode(e: unknown): string | undefined {
  const code = (e as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

function openError(path: string, e: unknown, verb: string): DeviceOpenError {
  const why: Record<string, string> = {
    ENOENT: `the directory ${dirname(path)} does not exist`,
    EACCES: 'permission denied',
    EPERM: 'permission denied',
    ENOTDIR: 'a component of the path is not a directory',
    EISDIR: 'it is a directory',
    EROFS: 'read-only file system',
    ELOOP: 'too many levels of symbolic links',
    ENAMETOOLONG: 'the name is too long',
    ENOSPC: 'no space left on the device',
    ENXIO: 'no reader on the other end',
  };
  const code = errorCode(e);
  const reason = (code && why[code]) ?? (e instanceof Error ? e.message : String(e));
  return new DeviceOpenError(`console: ${verb} ${path}: ${reason}`);
}

function fileKind(st: Stats): string {
  if (st.isFIFO()) return 'a FIFO';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  return 'not a regular file';
}

export class VirtioConsole implements VirtioBackend {
  readonly info: VirtioDeviceInfo = {
    deviceType: VIRTIO_ID_CONSOLE,
    classCode: 0x078000, // what QEMU's virtio-serial-pci reports: "communication controller, other"
    features: 0n,
    queueSizes: [CONSOLE_QUEUE_SIZE, CONSOLE_QUEUE_SIZE],
    configSize: CONSOLE_CONFIG_SIZE,
  };

  private ctx: VirtioQueueContext | undefined;
  /** Bumped by activate and reset: a continuation scheduled for an older generation does nothing. */
  private generation = 0;
  private rxContinuation: NodeJS.Immediate | undefined;
  private txContinuation: NodeJS.Immediate | undefined;
  private closed = false;
  private fileFailed = false;
  /** Between quiesce() and resume(): no chain is taken. */
  private quiesced = false;

  private socket: Socket | undefined;
  /** The connection failed or ended: guest output is consumed and dropped, so the guest never stalls on it. */
  private socketGone = false;
  /** The socket's write buffer is over its high-water mark: transmit chains wait for 'drain'. */
  private txBlocked = false;

  /** Host input not yet given to the guest, in order; `rxOffset` bytes of the first chunk are already given. */
  private readonly rx: Uint8Array[] = [];
  private rxOffset = 0;
  private rxBytes = 0;
  private rxPaused = false;

  constructor(
    readonly handle: ConsoleHandle,
    private readonly log: (message: string) => void = () => undefined,
  ) {}

  /** Host input waiting for receive buffers (bytes). */
  get bufferedInput(): number {
    return this.rxBytes;
  }

  /** Whether reading the socket is paused because the input buffer is full. */
  get inputPaused(): boolean {
    return this.rxPaused;
  }

  configBytes(): Uint8Array {
    const config = new Uint8Array(CONSOLE_CONFIG_SIZE);
    // cols, rows and emerg_wr stay 0: their features are not offered. max_nr_ports is only valid with
    // F_MULTIPORT, but 1 is the truth for a driver that reads it anyway.
    new DataView(config.buffer).setUint32(4, 1, true);
    return config;
  }

  activate(ctx: VirtioQueueContext): void {
    if (this.closed) return;
    this.stop();
    this.ctx = ctx;
    if (this.handle.sink === 'socket' && !this.socket && !this.socketGone) this.connect(this.handle.path);
  }

  queueNotified(index: number): void {
    // A continuation already pending will see the new chains; serving now would only break the turn budget.
    if (index === CONSOLE_RECEIVEQ && !this.rxContinuation) this.serveRx();
    else if (index === CONSOLE_TRANSMITQ && !this.txContinuation) this.serveTx();
  }

  reset(): void {
    // Host input already buffered, and the connection, belong to the host side and survive a driver reset.
    this.stop();
  }

  /**
   * For a snapshot: no chain is taken (host input keeps collecting in the bounded buffer, the socket is paused
   * when it is full). Serving a chain is synchronous, so nothing is in flight. Buffered input is host-side
   * state of this connection and not in the snapshot: a device restored elsewhere has its own connection.
   */
  quiesce(): void {
    this.quiesced = true;
    if (this.rxContinuation) clearImmediate(this.rxContinuation);
    if (this.txContinuation) clearImmediate(this.txContinuation);
    this.rxContinuation = this.txContinuation = undefined;
  }

  /** Serves both queues again: input that came meanwhile, chains a cut-short turn left. */
  resume(): void {
    this.quiesced = false;
    this.serveRx();
    this.serveTx();
  }

  close(): void {
    if (this.closed) return;
    this.stop();
    this.closed = true;
    if (this.handle.sink === 'file') {
      try {
        closeSync(this.handle.fd);
      } catch {
        // already gone: nothing left to release
      }
    }
    const socket = this.socket;
    if (socket && !socket.destroyed) {
      // Flush queued output, then hang up; a peer that stopped reading gets CLOSE_GRACE_MS, not forever.
      socket.end(() => socket.destroy());
      setTimeout(() => socket.destroy(), CLOSE_GRACE_MS).unref();
    }
  }

  private stop(): void {
    this.generation++;
    this.ctx = undefined;
    if (this.rxContinuation) clearImmediate(this.rxContinuation);
    if (this.txContinuation) clearImmediate(this.txContinuation);
    this.rxContinuation = this.txContinuation = undefined;
  }

  private connect(path: string): void {
    const socket = createConnection(path);
    this.socket = socket;
    socket.on('data', (chunk: Buffer) => this.input(chunk));
    socket.on('drain', () => {
      this.txBlocked = false;
      if (!this.txContinuation) this.serveTx();
    });
    socket.on('error', (e) => this.log(`console ${path}: ${e.message}; guest output is dropped from now on`));
    socket.on('close', () => {
      this.socketGone = true;
      this.txBlocked = false;
      if (!this.txContinuation) this.serveTx(); // chains that waited for 'drain' are consumed (and dropped)
    });
  }

  private input(chunk: Uint8Array): void {
    if (chunk.length === 0) return;
    this.rx.push(chunk);
    this.rxBytes += chunk.length;
    if (this.rxBytes >= CONSOLE_RX_BUFFER_LIMIT && !this.rxPaused) {
      this.rxPaused = true;
      this.socket?.pause();
    }
    if (!this.rxContinuation) this.serveRx();
  }

  // ---- receiveq: host input into the guest's buffers -----------------------------------------------------

  private serveRx(): void {
    const ctx = this.ctx;
    const queue = ctx?.queues[CONSOLE_RECEIVEQ];
    if (!ctx || !queue || this.quiesced) return;
    let chains = 0;
    try {
      while (this.rxBytes > 0 && chains < CONSOLE_TURN_CHAINS) {
        const chain = queue.popAvailable();
        if (chain === undefined) break;
        if (chain instanceof VirtqueueError) {
          this.fail(ctx, CONSOLE_RECEIVEQ, chains > 0, `receiveq: ${chain.message}`);
          return;
        }
        // A chain with no writable part (against §5.3.6.1) comes back empty rather than blocking the queue.
        queue.pushUsed(chain, this.fillRx(chain));
        chains++;
      }
    } catch (e) {
      this.fail(ctx, CONSOLE_RECEIVEQ, chains > 0, `receiveq: internal error: ${message(e)}`);
      return;
    }
    if (chains > 0) ctx.interrupt(CONSOLE_RECEIVEQ);
    // Resume at half the limit, not just under it, so a steady stream is not paused and resumed per read.
    if (this.rxPaused && this.rxBytes <= CONSOLE_RX_BUFFER_LIMIT / 2) {
      this.rxPaused = false;
      this.socket?.resume();
    }
    if (chains === CONSOLE_TURN_CHAINS && this.rxBytes > 0) {
      const generation = this.generation;
      this.rxContinuation = setImmediate(() => {
        this.rxContinuation = undefined;
        if (generation === this.generation) this.serveRx();
      });
    }
  }

  /** Copies buffered input into the chain's writable part; returns the bytes copied. */
  private fillRx(chain: DescriptorChain): number {
    let written = 0;
    while (this.rx.length > 0 && written < chain.writableLength) {
      const head = this.rx[0];
      const n = chain.writeBytes(head.subarray(this.rxOffset), written);
      written += n;
      this.rxOffset += n;
      if (this.rxOffset === head.length) {
        this.rx.shift();
        this.rxOffset = 0;
      }
      if (n === 0) break; // cannot happen (written < writableLength); never spin if it does
    }
    this.rxBytes -= written;
    return written;
  }

  // ---- transmitq: guest output to the host -------------------------------------------------------------

  private serveTx(): void {
    const ctx = this.ctx;
    const queue = ctx?.queues[CONSOLE_TRANSMITQ];
    if (!ctx || !queue || this.quiesced) return;
    let chains = 0;
    let bytes = 0;
    try {
      while (!this.txBlocked && chains < CONSOLE_TURN_CHAINS && bytes < CONSOLE_TURN_BYTES) {
        const chain = queue.popAvailable();
        if (chain === undefined) break;
        if (chain instanceof VirtqueueError) {
          this.fail(ctx, CONSOLE_TRANSMITQ, chains > 0, `transmitq: ${chain.message}`);
          return;
        }
        bytes += this.emit(chain);
        // §5.3.6: nothing is written into a transmit buffer (a writable part, against §5.3.6.1, is ignored).
        queue.pushUsed(chain, 0);
        chains++;
      }
    } catch (e) {
      this.fail(ctx, CONSOLE_TRANSMITQ, chains > 0, `transmitq: internal error: ${message(e)}`);
      return;
    }
    if (chains > 0) ctx.interrupt(CONSOLE_TRANSMITQ);
    if (!this.txBlocked && (chains === CONSOLE_TURN_CHAINS || bytes >= CONSOLE_TURN_BYTES)) {
      const generation = this.generation;
      this.txContinuation = setImmediate(() => {
        this.txContinuation = undefined;
        if (generation === this.generation) this.serveTx();
      });
    }
  }

  /** Sends the chain's readable bytes (at most CONSOLE_TX_CHAIN_MAX) to the host side; returns how many it took. */
  private emit(chain: DescriptorChain): number {
    const length = Math.min(chain.readableLength, CONSOLE_TX_CHAIN_MAX);
    if (length === 0) return 0;
    if (this.handle.sink === 'file') {
      const fd = this.handle.fd;
      chain.forEachSpan('readable', (view) => this.writeFile(fd, view), 0, length); // zero-copy
      return length;
    }
    const socket = this.socket;
    if (!socket || this.socketGone) return length;
    // A copy: views of guest RAM must not outlive pushUsed, and the socket keeps what it cannot send yet.
    if (!socket.write(chain.readBytes(length))) this.txBlocked = true;
    return length;
  }

  private writeFile(fd: number, view: Uint8Array): void {
    let done = 0;
    try {
      while (done < view.length) done += writeSync(fd, view, done, view.length - done);
    } catch (e) {
      // ENOSPC, EIO…: the guest keeps running and its output is lost; say so once, not per chain.
      if (!this.fileFailed) this.log(`console ${this.handle.path}: ${message(e)}; guest output is being lost`);
      this.fileFailed = true;
    }
  }

  private fail(ctx: VirtioQueueContext, queue: number, pushed: boolean, reason: string): void {
    if (pushed) ctx.interrupt(queue); // the chains already used are the driver's: tell it
    ctx.needsReset(reason); // the runner resets this backend from inside this call
  }
}

function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** virtio-console (virtio 1.2 §5.3): one port, to a file (guest output) or a UNIX socket (both ways). */
export const virtioConsoleModel = virtioPciModel<ConsoleHandle>({
  kind: 'virtio-console',
  summary: 'virtio-console port to a file (guest output) or a UNIX socket (both ways)',
  options: { path: Type.String({ minLength: 1 }) },
  open: (o, ctx) => openConsole({ path: o.path as string, disks: ctx.diskImages }),
  backend: (handle, log) => new VirtioConsole(handle, log),
});
