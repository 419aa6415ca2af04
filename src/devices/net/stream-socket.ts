// virtio 1.2 §5.1 Network Device, host side: a UNIX stream socket speaking QEMU's "stream" netdev framing.
//
// The wire format is QEMU's net/stream.c (net_fill_rstate), which passt's tap.c speaks too: every Ethernet frame
// is preceded by its length as a 4-byte big-endian integer, and the frames are plain (no virtio_net_hdr), so the
// device strips the header on transmit and prepends a neutral one on receive. A stream has no message
// boundaries: one read may hold half a length word or a hundred frames, so FrameDecoder reassembles them.
//
// The peer is another host process (passt, QEMU's -netdev stream server, a test acting as the network): not
// hostile like a guest, but not trusted to be sane either. A length beyond NET_MAX_FRAME is a protocol error
// that closes the link (logged), never an allocation of whatever size the peer asked for.
import { statSync } from 'node:fs';
import { createConnection, type Socket } from 'node:net';
import { resolve } from 'node:path';
import { DeviceOpenError } from '../model.js';
import { NET_MAX_FRAME, type NetLink, type NetLinkSink, type SendResult } from './link.js';

/** sun_path is 108 bytes including the terminating NUL. */
const MAX_SOCKET_PATH = 107;
/** passt binds its socket a moment before it listens: connecting is retried this often, this far apart. */
const CONNECT_ATTEMPTS = 20;
const CONNECT_RETRY_MS = 50;
/** Frames the guest sends while the connection is being made are kept (this many at most) and sent on connect. */
const CONNECTING_MAX_FRAMES = 64;

export interface StreamSocketHandle {
  readonly kind: 'socket';
  /** Absolute path of the UNIX stream socket to connect to. */
  readonly path: string;
}

/** Builder thread: checks that `path` names a UNIX socket (connecting waits for the I/O thread's activate). */
export function openStreamSocket(path: string): StreamSocketHandle {
  const absolute = resolve(path);
  checkSocketPath(absolute);
  let isSocket: boolean;
  try {
    isSocket = statSync(absolute).isSocket();
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT')
      throw new DeviceOpenError(`net socket ${absolute} does not exist (start the network side first)`);
    throw new DeviceOpenError(`net socket ${absolute}: ${code ?? (e as Error).message}`);
  }
  if (!isSocket) throw new DeviceOpenError(`net socket ${absolute} is not a UNIX socket`);
  return { kind: 'socket', path: absolute };
}

export function checkSocketPath(path: string): void {
  if (Buffer.byteLength(path) > MAX_SOCKET_PATH)
    throw new DeviceOpenError(
      `net socket path ${path} is longer than the ${MAX_SOCKET_PATH} bytes a UNIX socket allows`,
    );
}

/** A length-prefixed frame as it goes on the wire. */
export function encodeFrame(frame: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(4 + frame.length);
  out.writeUInt32BE(frame.length, 0);
  out.set(frame, 4);
  return out;
}

/**
 * Reassembles length-prefixed frames from arbitrary chunks (partial length words, partial frames, many frames
 * per chunk). Each frame is handed out as its own array. Memory is bounded by NET_MAX_FRAME plus 4 bytes.
 */
export class FrameDecoder {
  private readonly lengthBytes = new Uint8Array(4);
  private lengthFill = 0;
  private frame: Uint8Array | undefined;
  private frameFill = 0;
  private failed: string | undefined;

  constructor(private readonly maxFrame = NET_MAX_FRAME) {}

  /** Feeds one chunk; calls `emit` for every completed frame. Returns a protocol error, after which it stays failed. */
  push(chunk: Uint8Array, emit: (frame: Uint8Array) => void): string | undefined {
    if (this.failed) return this.failed;
    let at = 0;
    while (at < chunk.length) {
      if (!this.frame) {
        const n = Math.min(4 - this.lengthFill, chunk.length - at);
        this.lengthBytes.set(chunk.subarray(at, at + n), this.lengthFill);
        this.lengthFill += n;
        at += n;
        if (this.lengthFill < 4) break;
        this.lengthFill = 0;
        const b = this.lengthBytes;
        const length = ((b[0] << 24) | (b[1] << 16) | (b[2] << 8) | b[3]) >>> 0;
        if (length > this.maxFrame) {
          this.failed = `the peer sent a frame length of ${length} bytes, more than the ${this.maxFrame} an Ethernet frame can have`;
          return this.failed;
        }
        if (length === 0) continue; // nothing to deliver; QEMU ignores empty frames too
        this.frame = new Uint8Array(length);
        this.frameFill = 0;
      }
      const frame = this.frame;
      const n = Math.min(frame.length - this.frameFill, chunk.length - at);
      frame.set(chunk.subarray(at, at + n), this.frameFill);
      this.frameFill += n;
      at += n;
      if (this.frameFill === frame.length) {
        this.frame = undefined;
        emit(frame);
      }
    }
    return undefined;
  }
}

/**
 * I/O thread: the connected stream. Connects on start() (so the builder thread opens nothing it would have to
 * hand over), keeps the connection for the life of the VM (a driver reset must not hang up on passt, which
 * exits when its one client goes), and applies back-pressure both ways: pause() stops reading the socket, and
 * send() reports 'full' when Node's write buffer is over its high-water mark until 'drain'.
 */
export class StreamSocketLink implements NetLink {
  readonly vnetHeader = false;
  private socket: Socket | undefined;
  private connected = false;
  private closed = false;
  private paused = false;
  private retryTimer: NodeJS.Timeout | undefined;
  private readonly decoder = new FrameDecoder();
  private sink: NetLinkSink | undefined;
  /** Encoded frames sent before the connection was up (a guest's first DHCP request usually is). */
  private early: Buffer[] = [];

  constructor(
    readonly path: string,
    /** What the peer is, for log lines. */
    private readonly peer = 'socket',
  ) {}

  get description(): string {
    return `${this.peer} ${this.path}`;
  }

  start(sink: NetLinkSink): void {
    this.sink = sink;
    this.connect(1);
  }

  private connect(attempt: number): void {
    if (this.closed) return;
    const socket = createConnection({ path: this.path });
    this.socket = socket;
    socket.on('connect', () => {
      this.connected = true;
      if (this.paused) socket.pause();
      const early = this.early;
      this.early = [];
      for (const frame of early) socket.write(frame);
      this.sink?.writable();
    });
    socket.on('data', (chunk: Buffer) => this.received(chunk));
    socket.on('drain', () => this.sink?.writable());
    socket.on('error', (e: NodeJS.ErrnoException) => {
      if (this.closed || socket !== this.socket) return;
      const retryable = !this.connected && (e.code === 'ECONNREFUSED' || e.code === 'ENOENT');
      if (retryable && attempt < CONNECT_ATTEMPTS) {
        socket.destroy();
        this.retryTimer = setTimeout(() => {
          this.retryTimer = undefined;
          this.connect(attempt + 1);
        }, CONNECT_RETRY_MS);
        return;
      }
      this.fail(this.connected ? `${e.code ?? e.message}` : `cannot connect: ${e.code ?? e.message}`);
    });
    socket.on('close', () => {
      if (socket === this.socket && !this.closed && this.connected) this.fail('the peer closed the connection');
    });
  }

  private received(chunk: Buffer): void {
    const error = this.decoder.push(chunk, (frame) => this.sink?.frame(frame));
    if (error) this.fail(`protocol error: ${error}`);
  }

  /** The link is gone for good: tell the device once, and stop reading and writing. */
  private fail(reason: string): void {
    if (this.closed) return;
    this.shutdown();
    this.sink?.closed(`${this.description}: ${reason}`);
  }

  send(spans: readonly Uint8Array[], length: number): SendResult {
    const socket = this.socket;
    if (this.closed || !socket) return 'dropped';
    if (this.connected && socket.destroyed) return 'dropped';
    if (!this.connected && this.early.length >= CONNECTING_MAX_FRAMES) return 'dropped';
    // The guest's buffers go back to it when send() returns, and Node may hold the bytes longer: copy them.
    const out = Buffer.allocUnsafe(4 + length);
    out.writeUInt32BE(length, 0);
    let at = 4;
    for (const span of spans) {
      out.set(span, at);
      at += span.length;
    }
    if (!this.connected) {
      this.early.push(out);
      return 'sent';
    }
    return socket.write(out) ? 'sent' : 'full';
  }

  pause(): void {
    this.paused = true;
    if (this.connected) this.socket?.pause();
  }

  resume(): void {
    this.paused = false;
    if (this.connected) this.socket?.resume();
  }

  negotiated(): void {
    // Plain frames: there are no offloads to configure.
  }

  close(): void {
    this.shutdown();
  }

  private shutdown(): void {
    this.closed = true;
    this.early = [];
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    this.socket?.destroy();
  }
}
