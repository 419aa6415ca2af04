// An RFB (RFC 6143) server for one machine's screen: several viewers at once over TCP, a UNIX socket or the
// daemon's WebSocket bridge (noVNC), each with its own pixel format and encoding. The screen comes from a
// DisplaySource, keys and pointer go to an InputSink (src/display/source.ts).
//
// Updates are driven by the source's dirty rectangles, never by diffing frames: while at least one viewer waits
// for an update, the server polls `changes()` at most `pollHz` times a second, hands the rectangles to every
// viewer, renders the screen once and lets each waiting viewer send what it has. An idle screen costs a poll
// and sends nothing; with no viewer waiting there is no timer at all.
import * as fs from 'node:fs';
import * as net from 'node:net';
import type { Duplex } from 'node:stream';
import { createWebSocketStream, type WebSocket } from 'ws';
import type { DisplayFrame, DisplaySource, InputSink } from '../source.js';
import { RfbConnection, type RfbHost, type RfbLimits } from './connection.js';

export interface RfbServerOptions {
  readonly source: DisplaySource;
  readonly input: InputSink;
  /** The desktop name viewers show (ServerInit). */
  readonly name: string;
  /** One-line events (viewer connected, why one was disconnected). Default: stderr with an "rfb: " prefix. */
  readonly log?: (line: string) => void;
  /** Most polls of the display per second while a viewer waits (default 30). */
  readonly pollHz?: number;
  /** The local cursor sent to viewers that take the Cursor pseudo-encoding (default an arrow). */
  readonly cursor?: 'arrow' | 'none';
  readonly limits?: Partial<RfbLimits>;
}

export const DEFAULT_LIMITS: RfbLimits = {
  maxCutText: 1 << 20,
  handshakeTimeoutMs: 30_000,
  maxPendingInput: 1 << 20,
};

export class RfbServer {
  readonly connections = new Set<RfbConnection>();
  private readonly host: RfbHost;
  private readonly minPollInterval: number;
  private pollTimer: NodeJS.Timeout | undefined;
  private lastPoll = -Infinity;
  private currentFrame: DisplayFrame | undefined;
  private currentSize: { width: number; height: number };
  private nextId = 1;
  private closed = false;
  /** Polls done and frames rendered, for tests and the benchmark. */
  polls = 0;
  renders = 0;
  /** FramebufferUpdates sent to all viewers, and their bytes. */
  updatesSent = 0;
  bytesSent = 0;

  constructor(private readonly options: RfbServerOptions) {
    const log = options.log ?? ((line: string) => process.stderr.write(`rfb: ${line}\n`));
    this.minPollInterval = 1000 / Math.max(1, Math.min(options.pollHz ?? 30, 240));
    this.currentSize = { ...options.source.size() };
    const limits = { ...DEFAULT_LIMITS, ...options.limits };
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const server = this;
    this.host = {
      name: options.name,
      input: options.input,
      cursor: options.cursor ?? 'arrow',
      limits,
      screenSize: () => server.currentSize,
      frame: () => server.frame(),
      leds: () => server.leds(),
      wantPoll: () => server.schedulePoll(),
      updateSent: (bytes) => {
        server.updatesSent++;
        server.bytesSent += bytes;
      },
      closed: (c) => server.connections.delete(c),
      log,
    };
  }

  /** Serves one viewer on any byte stream (a net.Socket, a WebSocket stream, a test's Duplex). */
  attach(stream: Duplex, peer?: string): RfbConnection {
    const name = peer ?? `viewer#${this.nextId++}`;
    const connection = new RfbConnection(stream, name, this.host);
    if (this.closed) connection.close('server closed');
    else {
      this.connections.add(connection);
      this.host.log(`${name}: connected`);
    }
    return connection;
  }

  /** Serves one viewer over a `ws` WebSocket (binary frames carry the RFB byte stream, as websockify does). */
  attachWebSocket(ws: WebSocket, peer?: string): RfbConnection {
    const stream = createWebSocketStream(ws);
    return this.attach(stream, peer ?? `ws#${this.nextId++}`);
  }

  close(): void {
    this.closed = true;
    if (this.pollTimer) clearTimeout(this.pollTimer);
    this.pollTimer = undefined;
    for (const c of [...this.connections]) c.close('server closed');
  }

  private frame(): DisplayFrame {
    if (!this.currentFrame) {
      this.currentFrame = this.options.source.render();
      this.renders++;
    }
    return this.currentFrame;
  }

  private leds(): number {
    try {
      return this.options.input.leds();
    } catch {
      return 0;
    }
  }

  private schedulePoll(): void {
    if (this.pollTimer || this.closed) return;
    const delay = Math.max(0, this.lastPoll + this.minPollInterval - performance.now());
    this.pollTimer = setTimeout(() => this.poll(), delay);
  }

  private poll(): void {
    this.pollTimer = undefined;
    this.lastPoll = performance.now();
    this.polls++;
    this.currentFrame = undefined;
    try {
      const changes = this.options.source.changes();
      this.currentSize = { ...this.options.source.size() };
      for (const c of this.connections) c.noteChanges(changes);
      for (const c of this.connections) c.trySend();
    } catch (err) {
      this.host.log(`display source failed: ${(err as Error).message}`);
    }
    this.currentFrame = undefined; // do not keep a whole screen alive between polls
    for (const c of this.connections) if (c.waiting) return this.schedulePoll();
  }
}

export type RfbListen = { readonly unix: string } | { readonly port: number; readonly host?: string };

export interface RfbServerHandle {
  readonly server: RfbServer;
  /** Where it listens: the UNIX socket path, or the TCP port actually bound (port 0 picks one). */
  readonly address: string | net.AddressInfo;
  attachWebSocket(ws: WebSocket): void;
  close(): Promise<void>;
}

/** Listens on a UNIX socket or a TCP port and serves every connection as a viewer. */
export async function startRfbServer(
  options: RfbServerOptions & { readonly listen: RfbListen },
): Promise<RfbServerHandle> {
  if ('unix' in options.listen) removeStaleSocket(options.listen.unix);
  const server = new RfbServer(options);
  const listener = net.createServer((socket) => {
    socket.setNoDelay(true);
    const peer = socket.remoteAddress ? `${socket.remoteAddress}:${socket.remotePort}` : undefined;
    server.attach(socket, peer);
  });
  await new Promise<void>((resolve, reject) => {
    listener.once('error', reject);
    if ('unix' in options.listen) listener.listen(options.listen.unix, resolve);
    else listener.listen(options.listen.port, options.listen.host ?? '127.0.0.1', resolve);
  });
  listener.on('error', (err) => (options.log ?? console.error)(`rfb listener: ${err.message}`));
  const address = listener.address();
  if (address === null) throw new Error('RFB listener has no address');
  return {
    server,
    address,
    attachWebSocket: (ws) => void server.attachWebSocket(ws),
    close: () =>
      new Promise<void>((resolve) => {
        server.close();
        listener.close(() => resolve());
      }),
  };
}

/** A socket file left by a previous run would make listen() fail; anything else at that path is left alone. */
function removeStaleSocket(path: string): void {
  try {
    if (fs.lstatSync(path).isSocket()) fs.unlinkSync(path);
  } catch {
    // nothing there
  }
}
