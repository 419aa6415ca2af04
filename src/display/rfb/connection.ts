// RFC 6143 §7 (protocol messages) for one viewer: its handshake, its client-to-server messages (§7.5 and the
// rfbproto extensions QEMU Extended Key Event and SetDesktopSize), and its FramebufferUpdates (§7.6.1) in its
// own pixel format and encoding. Anything a viewer does wrong closes that viewer alone with a one-line reason.
import type { Duplex } from 'node:stream';
import type { DisplayFrame, InputSink, Rect } from '../source.js';
import { cursorShape } from './cursor.js';
import {
  DeflateStream,
  ENCODING_RAW,
  ENCODING_ZLIB,
  ENCODING_ZRLE,
  encodeRaw,
  encodeZlib,
  encodeZrle,
  PIXEL_ENCODINGS,
  PSEUDO_CURSOR,
  PSEUDO_DESKTOP_SIZE,
  PSEUDO_EXTENDED_DESKTOP_SIZE,
  PSEUDO_QEMU_EXTENDED_KEY,
  PSEUDO_QEMU_LED_STATE,
} from './encodings.js';
import {
  parseClientVersion,
  SECURITY_NONE,
  securityOffer,
  securityResult,
  SERVER_VERSION,
  serverInit,
  type ProtocolMinor,
} from './handshake.js';
import { keysymToScancode, qemuKeycodeToScancode } from './keysyms.js';
import {
  parsePixelFormat,
  pixelConverter,
  rectPixelValues,
  SERVER_PIXEL_FORMAT,
  type PixelConverter,
} from './pixel-format.js';
import { addDirtyRect, clipRect } from './rects.js';

/** What a connection needs from the server that owns it. */
export interface RfbHost {
  readonly name: string;
  readonly input: InputSink;
  readonly cursor: 'arrow' | 'none';
  readonly limits: RfbLimits;
  screenSize(): { width: number; height: number };
  /** The screen as rendered in the current poll (rendered at most once per poll, shared by all viewers). */
  frame(): DisplayFrame;
  leds(): number;
  /** A viewer is waiting for an update (or can take one again): poll soon. */
  wantPoll(): void;
  /** A FramebufferUpdate of this many bytes went out. */
  updateSent(bytes: number): void;
  closed(connection: RfbConnection): void;
  log(line: string): void;
}

export interface RfbLimits {
  /** ClientCutText longer than this closes the connection (the text itself is ignored). */
  readonly maxCutText: number;
  /** A viewer that has not finished the handshake by then is closed. */
  readonly handshakeTimeoutMs: number;
  /** Unparsed input beyond this closes the connection (no valid message is near this long). */
  readonly maxPendingInput: number;
}

type Phase = 'version' | 'security' | 'clientInit' | 'normal' | 'closed';

const MSG_SET_PIXEL_FORMAT = 0;
const MSG_SET_ENCODINGS = 2;
const MSG_FRAMEBUFFER_UPDATE_REQUEST = 3;
const MSG_KEY_EVENT = 4;
const MSG_POINTER_EVENT = 5;
const MSG_CLIENT_CUT_TEXT = 6;
const MSG_SET_DESKTOP_SIZE = 251;
const MSG_QEMU = 255;
const QEMU_EXTENDED_KEY_EVENT = 0;

/** rfbproto ExtendedDesktopSize: reason 1 (reply to our SetDesktopSize), status 1 (resize prohibited). */
const EDS_REASON_CLIENT = 1;
const EDS_STATUS_PROHIBITED = 1;

export class RfbConnection {
  private phase: Phase = 'version';
  private minor: ProtocolMinor = 8;
  private input: Buffer = Buffer.alloc(0);
  private skipBytes = 0;
  private converter: PixelConverter = pixelConverter(SERVER_PIXEL_FORMAT);
  private encoding = ENCODING_RAW;
  private supports = { desktopSize: false, extDesktopSize: false, cursor: false, qemuKey: false, leds: false };
  private requestPending = false;
  private sending = false;
  private dirty: Rect[] = [];
  /** The size the viewer believes the screen has (ServerInit, then each DesktopSize we sent). */
  private viewerSize = { width: 0, height: 0 };
  private cursorSent = false;
  private ledsSent = -1;
  private desktopSizeReplies = 0;
  private warnedNoResize = false;
  private lastPointer: { x: number; y: number } | undefined;
  private buttons = 0;
  private readonly keysDown = new Set<number>();
  private zlibStream: DeflateStream | undefined;
  private zrleStream: DeflateStream | undefined;
  private readonly handshakeTimer: NodeJS.Timeout;
  /** Bytes of FramebufferUpdate messages written, for tests and the benchmark. */
  bytesSent = 0;
  updatesSent = 0;

  constructor(
    private readonly socket: Duplex,
    readonly peer: string,
    private readonly host: RfbHost,
  ) {
    this.handshakeTimer = setTimeout(
      () => this.close('handshake not finished in time'),
      host.limits.handshakeTimeoutMs,
    );
    this.handshakeTimer.unref?.();
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (err: Error) => this.close(`socket error: ${err.message}`));
    socket.on('close', () => this.close('viewer disconnected'));
    socket.on('end', () => this.close('viewer disconnected'));
    socket.on('drain', () => host.wantPoll());
    this.write(SERVER_VERSION);
  }

  get isOpen(): boolean {
    return this.phase !== 'closed';
  }

  /** True while the viewer has asked for an update we have not sent yet. */
  get waiting(): boolean {
    return this.phase === 'normal' && this.requestPending;
  }

  close(reason: string): void {
    if (this.phase === 'closed') return;
    this.phase = 'closed';
    clearTimeout(this.handshakeTimer);
    this.host.log(`${this.peer}: ${reason}`);
    // Keys and buttons this viewer held stay pressed in the guest otherwise.
    try {
      for (const code of this.keysDown) this.host.input.key(code, false);
      if (this.buttons !== 0) {
        const at = this.lastPointer ?? { x: 0, y: 0 };
        const size = this.host.screenSize();
        if (!this.host.input.pointerAbsolute?.(at.x, at.y, size.width, size.height, 0))
          this.host.input.pointer(0, 0, 0);
      }
    } catch (err) {
      this.host.log(`${this.peer}: input sink failed releasing keys: ${(err as Error).message}`);
    }
    this.keysDown.clear();
    this.zlibStream?.close();
    this.zrleStream?.close();
    this.socket.destroy();
    this.host.closed(this);
  }

  /** Rectangles that changed on the screen since the previous poll. */
  noteChanges(rects: readonly Rect[]): void {
    if (this.phase !== 'normal') return;
    const size = this.host.screenSize();
    for (const r of rects) this.markDirty(r, size);
  }

  private markDirty(r: Rect, size: { width: number; height: number }): void {
    const clipped = clipRect(r, size.width, size.height);
    if (clipped) this.dirty = addDirtyRect(this.dirty, clipped);
  }

  private write(b: Buffer): void {
    if (this.phase === 'closed') return;
    this.socket.write(b);
  }

  // ---- input -------------------------------------------------------------------------------------------

  private onData(chunk: Buffer): void {
    if (this.phase === 'closed') return;
    this.input = this.input.length === 0 ? chunk : Buffer.concat([this.input, chunk]);
    try {
      this.parse();
    } catch (err) {
      // A parser bug must not take the server down: drop this viewer only.
      this.close(`internal error: ${(err as Error).message}`);
      return;
    }
    if (this.isOpen && this.input.length > this.host.limits.maxPendingInput) {
      this.close(`${this.input.length} bytes of unparsed input`);
    }
  }

  private consume(n: number): Buffer {
    const msg = this.input.subarray(0, n);
    this.input = this.input.subarray(n);
    return msg;
  }

  private parse(): void {
    for (;;) {
      if (!this.isOpen) return;
      if (this.skipBytes > 0) {
        const n = Math.min(this.skipBytes, this.input.length);
        this.consume(n);
        this.skipBytes -= n;
        if (this.skipBytes > 0) return;
      }
      if (this.input.length === 0) return;
      switch (this.phase) {
        case 'version':
          if (this.input.length < 12) return;
          this.onVersion(this.consume(12));
          break;
        case 'security':
          this.onSecurityChoice(this.consume(1)[0]);
          break;
        case 'clientInit':
          this.consume(1); // shared flag: every viewer shares the screen
          this.onClientInit();
          break;
        case 'normal':
          if (!this.parseMessage()) return;
          break;
      }
    }
  }

  private onVersion(b: Buffer): void {
    const minor = parseClientVersion(b);
    if (typeof minor === 'string') return this.close(minor);
    this.minor = minor;
    this.write(securityOffer(minor));
    this.phase = minor === 3 ? 'clientInit' : 'security';
  }

  private onSecurityChoice(type: number): void {
    if (type !== SECURITY_NONE) {
      this.write(securityResult(this.minor, `security type ${type} not offered`));
      return this.close(`chose security type ${type}, which was not offered`);
    }
    if (this.minor === 8) this.write(securityResult(8));
    this.phase = 'clientInit';
  }

  private onClientInit(): void {
    clearTimeout(this.handshakeTimer);
    const size = this.host.screenSize();
    this.viewerSize = { ...size };
    this.write(serverInit(size.width, size.height, SERVER_PIXEL_FORMAT, this.host.name));
    this.phase = 'normal';
  }

  /** Parses one client message if it is complete; false when more bytes are needed. */
  private parseMessage(): boolean {
    const b = this.input;
    const type = b[0];
    let length: number;
    switch (type) {
      case MSG_SET_PIXEL_FORMAT:
        length = 20;
        break;
      case MSG_SET_ENCODINGS:
        if (b.length < 4) return false;
        length = 4 + 4 * b.readUInt16BE(2);
        break;
      case MSG_FRAMEBUFFER_UPDATE_REQUEST:
        length = 10;
        break;
      case MSG_KEY_EVENT:
        length = 8;
        break;
      case MSG_POINTER_EVENT:
        length = 6;
        break;
      case MSG_CLIENT_CUT_TEXT: {
        if (b.length < 8) return false;
        const textLength = b.readUInt32BE(4);
        if (textLength > this.host.limits.maxCutText) {
          this.close(`cut text of ${textLength} bytes exceeds ${this.host.limits.maxCutText}`);
          return false;
        }
        this.consume(8);
        this.skipBytes = textLength; // the clipboard is not shared with the guest (yet)
        return true;
      }
      case MSG_SET_DESKTOP_SIZE:
        if (b.length < 8) return false;
        length = 8 + 16 * b[6];
        break;
      case MSG_QEMU:
        if (b.length < 2) return false;
        if (b[1] !== QEMU_EXTENDED_KEY_EVENT) {
          this.close(`unsupported QEMU client message subtype ${b[1]}`);
          return false;
        }
        length = 12;
        break;
      default:
        this.close(`unknown client message type ${type}`);
        return false;
    }
    if (b.length < length) return false;
    this.handleMessage(type, this.consume(length));
    return true;
  }

  private handleMessage(type: number, m: Buffer): void {
    switch (type) {
      case MSG_SET_PIXEL_FORMAT: {
        const pf = parsePixelFormat(m.subarray(4, 20));
        if (typeof pf === 'string') return this.close(`SetPixelFormat: ${pf}`);
        this.converter = pixelConverter(pf);
        this.cursorSent = false; // the cursor's pixels are in the viewer's format
        return;
      }
      case MSG_SET_ENCODINGS:
        return this.onSetEncodings(m);
      case MSG_FRAMEBUFFER_UPDATE_REQUEST: {
        const incremental = m[1] !== 0;
        if (!incremental) {
          const r = { x: m.readUInt16BE(2), y: m.readUInt16BE(4), width: m.readUInt16BE(6), height: m.readUInt16BE(8) };
          // Outside the screen (a viewer still on the old size) is clipped, not an error.
          this.markDirty(r, this.host.screenSize());
        }
        // Incremental requests send whatever changed anywhere (as QEMU does), not only inside their rectangle.
        this.requestPending = true;
        this.host.wantPoll();
        return;
      }
      case MSG_KEY_EVENT: {
        const code = keysymToScancode(m.readUInt32BE(4));
        if (code !== undefined) this.key(code, m[1] !== 0);
        return;
      }
      case MSG_POINTER_EVENT:
        return this.onPointer(m[1], m.readUInt16BE(2), m.readUInt16BE(4));
      case MSG_SET_DESKTOP_SIZE:
        // The guest picks its video mode; a viewer cannot resize it. Answered only if it speaks the extension.
        if (this.supports.extDesktopSize) {
          this.desktopSizeReplies++;
          this.host.wantPoll();
        }
        return;
      case MSG_QEMU: {
        const down = m.readUInt16BE(2) !== 0;
        const code = qemuKeycodeToScancode(m.readUInt32BE(8)) ?? keysymToScancode(m.readUInt32BE(4));
        if (code !== undefined) this.key(code, down);
        return;
      }
    }
  }

  private onSetEncodings(m: Buffer): void {
    const count = m.readUInt16BE(2);
    const list: number[] = [];
    for (let i = 0; i < count; i++) list.push(m.readInt32BE(4 + 4 * i));
    // §7.5.2: the viewer's list is in its order of preference; the first pixel encoding we can produce wins.
    this.encoding = list.find((e) => PIXEL_ENCODINGS.includes(e)) ?? ENCODING_RAW;
    const had = this.supports;
    this.supports = {
      desktopSize: list.includes(PSEUDO_DESKTOP_SIZE),
      extDesktopSize: list.includes(PSEUDO_EXTENDED_DESKTOP_SIZE),
      cursor: list.includes(PSEUDO_CURSOR),
      qemuKey: list.includes(PSEUDO_QEMU_EXTENDED_KEY),
      leds: list.includes(PSEUDO_QEMU_LED_STATE),
    };
    if (this.supports.cursor && !had.cursor) this.cursorSent = false;
    if (this.supports.leds && !had.leds) this.ledsSent = -1;
    // QEMU (and noVNC, which waits for it) acknowledges the extended key event by sending that pseudo-encoding
    // as an empty rectangle in the next update; ExtendedDesktopSize is likewise announced with the current size.
    if (this.supports.qemuKey && !had.qemuKey) this.announceQemuKey = true;
    if (this.supports.extDesktopSize && !had.extDesktopSize) this.announceExtDesktopSize = true;
  }

  private announceQemuKey = false;
  private announceExtDesktopSize = false;

  private key(code: number, down: boolean): void {
    if (down) this.keysDown.add(code);
    else this.keysDown.delete(code);
    try {
      this.host.input.key(code, down);
    } catch (err) {
      this.host.log(`${this.peer}: input sink failed: ${(err as Error).message}`);
    }
  }

  private onPointer(buttons: number, x: number, y: number): void {
    // An absolute device (the virtio tablet, once the guest's driver runs) gets the position itself, so the
    // guest's pointer is where the viewer's is. Otherwise the PS/2 mouse moves relatively: motion is the
    // difference from this viewer's previous position (kept either way, for a switch between the two), and the
    // guest's pointer drifts from the viewer's where the guest accelerates or clamps.
    const dx = this.lastPointer ? x - this.lastPointer.x : 0;
    const dy = this.lastPointer ? y - this.lastPointer.y : 0;
    this.lastPointer = { x, y };
    // RFB's button bits match InputSink's (left, middle, right, wheel up, wheel down); 5 and 6 (horizontal
    // wheel) have no PS/2 equivalent.
    this.buttons = buttons & 0x1f;
    try {
      const size = this.host.screenSize();
      if (this.host.input.pointerAbsolute?.(x, y, size.width, size.height, this.buttons)) return;
      this.host.input.pointer(dx, dy, this.buttons);
    } catch (err) {
      this.host.log(`${this.peer}: input sink failed: ${(err as Error).message}`);
    }
  }

  // ---- output ------------------------------------------------------------------------------------------

  /**
   * Sends one FramebufferUpdate if the viewer asked for one, something is due, and its socket has flushed the
   * previous update: a slow viewer's changes keep merging in `dirty` instead of queueing frames in memory.
   */
  trySend(): void {
    if (this.phase !== 'normal' || !this.requestPending || this.sending) return;
    if (this.socket.writableNeedDrain) return; // 'drain' polls again
    const size = this.host.screenSize();
    const header: Buffer[] = [];
    let count = 0;
    const pseudo = (x: number, y: number, w: number, h: number, encoding: number, data?: Buffer): void => {
      const b = Buffer.alloc(12);
      b.writeUInt16BE(x, 0);
      b.writeUInt16BE(y, 2);
      b.writeUInt16BE(w, 4);
      b.writeUInt16BE(h, 6);
      b.writeInt32BE(encoding, 8);
      header.push(b);
      if (data) header.push(data);
      count++;
    };
    if (size.width !== this.viewerSize.width || size.height !== this.viewerSize.height) {
      if (this.supports.extDesktopSize)
        pseudo(0, 0, size.width, size.height, PSEUDO_EXTENDED_DESKTOP_SIZE, screenLayout(size));
      else if (this.supports.desktopSize) pseudo(0, 0, size.width, size.height, PSEUDO_DESKTOP_SIZE);
      else if (!this.warnedNoResize) {
        this.warnedNoResize = true;
        this.host.log(`${this.peer}: screen is now ${size.width}x${size.height} but the viewer cannot resize`);
      }
      this.viewerSize = { ...size };
      this.announceExtDesktopSize = false;
      this.dirty = [{ x: 0, y: 0, width: size.width, height: size.height }];
    }
    if (this.announceExtDesktopSize) {
      this.announceExtDesktopSize = false;
      pseudo(0, 0, size.width, size.height, PSEUDO_EXTENDED_DESKTOP_SIZE, screenLayout(size));
    }
    for (; this.desktopSizeReplies > 0; this.desktopSizeReplies--) {
      pseudo(
        EDS_REASON_CLIENT,
        EDS_STATUS_PROHIBITED,
        size.width,
        size.height,
        PSEUDO_EXTENDED_DESKTOP_SIZE,
        screenLayout(size),
      );
    }
    if (this.announceQemuKey) {
      this.announceQemuKey = false;
      pseudo(0, 0, 0, 0, PSEUDO_QEMU_EXTENDED_KEY);
    }
    if (this.supports.cursor && !this.cursorSent) {
      this.cursorSent = true;
      const c = cursorShape(this.host.cursor, this.converter);
      pseudo(c.hotX, c.hotY, c.width, c.height, PSEUDO_CURSOR, c.data);
    }
    if (this.supports.leds) {
      const leds = this.host.leds() & 7;
      if (leds !== this.ledsSent) {
        this.ledsSent = leds;
        pseudo(0, 0, 0, 0, PSEUDO_QEMU_LED_STATE, Buffer.from([leds]));
      }
    }
    const rects = this.dirty;
    if (count === 0 && rects.length === 0) return; // idle: the request stays pending, nothing is sent
    this.dirty = [];
    this.requestPending = false;

    // Pixels are converted now, from this poll's frame; only compression runs after an await.
    const frame = rects.length > 0 ? this.host.frame() : undefined;
    const jobs: { rect: Rect; values: Uint32Array }[] = [];
    if (frame) {
      for (const r of rects) {
        const c = clipRect(r, frame.width, frame.height);
        if (c)
          jobs.push({
            rect: c,
            values: rectPixelValues(this.converter, frame.rgba, frame.width, c.x, c.y, c.width, c.height),
          });
      }
    }
    this.sending = true;
    void this.finishUpdate(header, count, jobs);
  }

  private async finishUpdate(
    header: Buffer[],
    pseudoCount: number,
    jobs: { rect: Rect; values: Uint32Array }[],
  ): Promise<void> {
    const format = this.converter.format;
    const encoding = this.encoding;
    const parts: Buffer[] = [];
    try {
      for (const { rect, values } of jobs) {
        const h = Buffer.alloc(12);
        h.writeUInt16BE(rect.x, 0);
        h.writeUInt16BE(rect.y, 2);
        h.writeUInt16BE(rect.width, 4);
        h.writeUInt16BE(rect.height, 6);
        h.writeInt32BE(encoding, 8);
        parts.push(h);
        if (encoding === ENCODING_ZLIB) {
          this.zlibStream ??= new DeflateStream();
          parts.push(await encodeZlib(format, values, this.zlibStream));
        } else if (encoding === ENCODING_ZRLE) {
          this.zrleStream ??= new DeflateStream();
          parts.push(await encodeZrle(format, values, rect.width, rect.height, this.zrleStream));
        } else {
          parts.push(encodeRaw(format, values));
        }
        if (this.phase === 'closed') return; // disconnected mid-update: drop it
      }
    } catch (err) {
      this.sending = false;
      return this.close(`encoding failed: ${(err as Error).message}`);
    }
    this.sending = false;
    if (this.phase === 'closed') return;
    const top = Buffer.alloc(4);
    top[0] = 0; // FramebufferUpdate
    top.writeUInt16BE(pseudoCount + jobs.length, 2);
    const message = Buffer.concat([top, ...header, ...parts]);
    this.bytesSent += message.length;
    this.updatesSent++;
    this.host.updateSent(message.length);
    this.write(message);
    if (this.requestPending) this.host.wantPoll();
  }
}

/** rfbproto ExtendedDesktopSize payload: one screen covering the whole framebuffer. */
function screenLayout(size: { width: number; height: number }): Buffer {
  const b = Buffer.alloc(4 + 16);
  b[0] = 1; // number of screens
  b.writeUInt32BE(0, 4); // screen id
  b.writeUInt16BE(0, 8);
  b.writeUInt16BE(0, 10);
  b.writeUInt16BE(size.width, 12);
  b.writeUInt16BE(size.height, 14);
  b.writeUInt32BE(0, 16); // flags
  return b;
}
