// virtio 1.2 §5.1 Network Device: receiveq0 and transmitq0, MAC/status/MTU configuration (§5.1.4), mergeable
// receive buffers (§5.1.6.3.2), and frames to and from a host backend: a TAP interface, passt ("user"
// networking), or a UNIX stream socket with QEMU's "stream" framing (src/devices/net/).
//
// Header (§5.1.6): with VERSION_1 every packet, both ways, starts with the 12-byte struct virtio_net_hdr
// { flags u8, gso_type u8, hdr_len le16, gso_size le16, csum_start le16, csum_offset le16, num_buffers le16 }.
// A TAP opened with a 12-byte vnet header takes and gives that header as it is, so checksum and TSO offloads are
// offered there (only when the kernel accepted them); passt and stream sockets carry plain Ethernet frames, so
// the device strips the header on transmit and writes a neutral one (flags 0, GSO_NONE, num_buffers) on receive,
// and offers no offloads.
//
// Receive: frames from the backend wait in a bounded queue until the driver posts buffers. Chains popped for a
// frame that does not fit yet are held, never put back: the device's avail index then always covers every buffer
// it has seen, so when it re-arms notifications the driver's next buffer brings a kick (§2.7.10). Without
// MRG_RXBUF a frame larger than the chain in hand is dropped and counted; with it, a frame spans as many chains
// as it needs (num_buffers says how many).
//
// Back-pressure: a long receive queue pauses the backend (the socket is not read, the TAP not polled) until the
// driver catches up; a congested backend stops transmit-queue processing until it drains. Nothing in flight ever
// outlives a reset: every continuation checks the generation, and reset() drops queued frames and held chains.
import { randomBytes } from 'node:crypto';
import { writeSync } from 'node:fs';
import type { VirtioBackend, VirtioQueueContext } from './device.js';
import { DeviceOpenError } from '../model.js';
import type { VirtioDeviceInfo } from './pci-transport.js';
import { VirtqueueError, type DescriptorChain, type Virtqueue } from './queue.js';
import { openPasst, releasePasst, type PasstHandle } from '../net/passt.js';
import { NET_MAX_FRAME, type GuestOffloads, type NetLink, type NetLinkSink, type SendResult } from '../net/link.js';
import { openStreamSocket, StreamSocketLink, type StreamSocketHandle } from '../net/stream-socket.js';
import { openTap, releaseTap, TapLink, type TapHandle } from '../net/tap.js';
import { Type } from '@sinclair/typebox';
import { virtioPciModel } from './pci-model.js';

export { NET_MAX_FRAME };
export type { GuestOffloads, NetLink, NetLinkSink, SendResult };

export const VIRTIO_ID_NET = 1;
export const NET_RX_QUEUE = 0;
export const NET_TX_QUEUE = 1;
export const NET_QUEUE_SIZE = 256;
export const NET_MTU = 1500;
/** struct virtio_net_hdr with num_buffers: 12 bytes whenever VERSION_1 is negotiated (§5.1.6). */
export const VIRTIO_NET_HDR_SIZE = 12;
/** The longest transmit chain carried: header + the largest frame. Longer ones are dropped and counted. */
export const NET_MAX_TX_CHAIN = VIRTIO_NET_HDR_SIZE + NET_MAX_FRAME;

// Feature bits, §5.1.3.
export const VIRTIO_NET_F_CSUM = 0n;
export const VIRTIO_NET_F_GUEST_CSUM = 1n;
export const VIRTIO_NET_F_MTU = 3n;
export const VIRTIO_NET_F_MAC = 5n;
export const VIRTIO_NET_F_GUEST_TSO4 = 7n;
export const VIRTIO_NET_F_GUEST_TSO6 = 8n;
export const VIRTIO_NET_F_HOST_TSO4 = 11n;
export const VIRTIO_NET_F_HOST_TSO6 = 12n;
export const VIRTIO_NET_F_MRG_RXBUF = 15n;
export const VIRTIO_NET_F_STATUS = 16n;
export const VIRTIO_NET_S_LINK_UP = 1;
/** Offset of the status field in struct virtio_net_config (after mac[6]). */
export const NET_CONFIG_STATUS_OFFSET = 6;
/** struct virtio_net_config up to mtu (§5.1.4): mac[6], status, max_virtqueue_pairs, mtu. */
export const NET_CONFIG_SIZE = 12;

/** Frames queued for the guest before the backend is paused, and resumed below; and the hard caps (tail drop). */
const RX_HIGH_FRAMES = 256;
const RX_LOW_FRAMES = 64;
const RX_MAX_FRAMES = 4096;
const RX_MAX_BYTES = 4 * 1024 * 1024;
/** Transmit chains served per turn of the I/O thread before yielding (setImmediate). */
const TX_TURN_CHAINS = 256;
const ZERO_HEADER = new Uint8Array(VIRTIO_NET_HDR_SIZE);

export type NetBackendOption = { kind: 'tap'; name: string } | { kind: 'user' } | { kind: 'socket'; path: string };

export interface NetOptions {
  readonly backend: NetBackendOption;
  /** "52:54:00:12:34:56"; a random locally administered 52:54:00:xx:xx:xx when absent. */
  readonly mac?: string;
}

export type NetBackendHandle = TapHandle | PasstHandle | StreamSocketHandle;

/** What crosses from the builder thread to the I/O thread: plain data (fds are process-wide). */
export interface NetHandle {
  readonly mac: string;
  readonly backend: NetBackendHandle;
}

export interface NetStats {
  txFrames: number;
  txBytes: number;
  /** Oversized, empty, or refused by the backend (down, congested kernel, bad GSO fields). */
  txDropped: number;
  rxFrames: number;
  rxBytes: number;
  /** No driver running, receive queue over its hard cap, or larger than the buffers the driver gives. */
  rxDropped: number;
  /** Times the backend was paused because the guest was not taking frames. */
  rxPauses: number;
}

/** Parses "xx:xx:xx:xx:xx:xx" into bytes; a malformed, multicast or all-zero address is the user's to fix. */
export function parseMac(text: string): Uint8Array {
  if (!/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i.test(text))
    throw new DeviceOpenError(`MAC address '${text}' is not six hex pairs like 52:54:00:12:34:56`);
  const bytes = Uint8Array.from(text.split(':').map((h) => parseInt(h, 16)));
  if (bytes[0] & 1)
    throw new DeviceOpenError(`MAC address ${text} is a multicast address (the first byte must be even)`);
  if (bytes.every((b) => b === 0)) throw new DeviceOpenError(`MAC address ${text} is not a usable unicast address`);
  return bytes;
}

export function formatMac(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join(':');
}

/** 52:54:00 (QEMU's prefix: locally administered, unicast) and three random bytes. */
export function randomMac(): string {
  return formatMac(Uint8Array.from([0x52, 0x54, 0x00, ...randomBytes(3)]));
}

/** Builder thread: validates the options and opens the backend's host side (TAP fd, passt process, socket check). */
export function openNet(options: NetOptions): NetHandle {
  const mac = options.mac === undefined ? randomMac() : formatMac(parseMac(options.mac));
  const b = options.backend;
  switch (b.kind) {
    case 'tap':
      return { mac, backend: openTap(b.name) };
    case 'user':
      return { mac, backend: openPasst(NET_MTU) };
    case 'socket':
      return { mac, backend: openStreamSocket(b.path) };
    default:
      throw new DeviceOpenError(`unknown network backend '${(b as { kind: string }).kind}' (tap, user or socket)`);
  }
}

const logToStderr = (message: string): void => void writeSync(2, `partita: ${message}\n`);

const bit = (features: bigint, b: bigint): boolean => ((features >> b) & 1n) === 1n;

export class VirtioNet implements VirtioBackend {
  readonly info: VirtioDeviceInfo;
  readonly stats: NetStats = {
    txFrames: 0,
    txBytes: 0,
    txDropped: 0,
    rxFrames: 0,
    rxBytes: 0,
    rxDropped: 0,
    rxPauses: 0,
  };
  private readonly mac: Uint8Array;
  private link: NetLink | undefined;
  private ctx: VirtioQueueContext | undefined;
  /** Bumped whenever serving stops (reset, needs-reset, close): a continuation of an older one does nothing. */
  private generation = 0;
  private mergeable = false;
  private guestCsum = false;
  /** CSUM negotiated: the guest's transmit header means something and goes to a TAP as is. */
  private hostOffloads = false;
  private readonly rxFrames: Uint8Array[] = [];
  private rxQueuedBytes = 0;
  private rxPaused = false;
  /** A delivery is queued as a microtask: the frames of one socket read or TAP poll go in one batch, one interrupt. */
  private rxScheduled = false;
  /** Receive chains popped but not used yet (waiting for a frame, or for more chains for a big frame). */
  private rxHeld: DescriptorChain[] = [];
  private txBlocked = false;
  private txContinuation: NodeJS.Immediate | undefined;
  private closed = false;
  /** The host backend is connected; once it is gone for good the guest sees the link down (§5.1.4 status). */
  private linkUp = true;
  /** Between quiesce() and resume(): no chain is taken, frames arriving anyway are dropped. */
  private quiesced = false;

  constructor(
    readonly handle: NetHandle,
    private readonly log: (message: string) => void = logToStderr,
  ) {
    this.mac = parseMac(handle.mac);
    let features =
      (1n << VIRTIO_NET_F_MAC) |
      (1n << VIRTIO_NET_F_STATUS) |
      (1n << VIRTIO_NET_F_MTU) |
      (1n << VIRTIO_NET_F_MRG_RXBUF);
    if (handle.backend.kind === 'tap' && handle.backend.offloads) {
      // §5.1.3.1: the TSO bits depend on the matching CSUM bit; both directions go through the kernel's checks.
      for (const b of [
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
      ])
        features |= 1n << b;
    }
    this.info = {
      deviceType: VIRTIO_ID_NET,
      classCode: 0x020000, // network controller, Ethernet
      features,
      queueSizes: [NET_QUEUE_SIZE, NET_QUEUE_SIZE],
      configSize: NET_CONFIG_SIZE,
    };
  }

  /** Frames from the host waiting for receive buffers. */
  get rxQueuedFrames(): number {
    return this.rxFrames.length;
  }

  configBytes(): Uint8Array {
    const config = new Uint8Array(NET_CONFIG_SIZE);
    const view = new DataView(config.buffer);
    config.set(this.mac, 0);
    view.setUint16(6, VIRTIO_NET_S_LINK_UP, true);
    view.setUint16(8, 1, true); // max_virtqueue_pairs: one (no VIRTIO_NET_F_MQ)
    view.setUint16(10, NET_MTU, true);
    return config;
  }

  activate(ctx: VirtioQueueContext): void {
    if (this.closed) return;
    this.stopServing();
    this.ctx = ctx;
    this.mergeable = bit(ctx.features, VIRTIO_NET_F_MRG_RXBUF);
    this.guestCsum = bit(ctx.features, VIRTIO_NET_F_GUEST_CSUM);
    this.hostOffloads = bit(ctx.features, VIRTIO_NET_F_CSUM);
    if (!this.link) {
      // The backend connects on the first activation and stays up across driver resets (passt --one-off would
      // exit if its client went away).
      this.link = this.createLink();
      this.link.start({
        frame: (frame) => this.received(frame),
        writable: () => {
          this.txBlocked = false;
          this.processTx();
        },
        warn: (message) => this.log(`virtio-net: ${message}`),
        closed: (reason) => {
          this.log(`virtio-net: ${reason}`);
          this.linkUp = false;
          this.reportLink();
          this.txBlocked = false;
          this.processTx(); // what the guest queued is dropped now rather than left hanging
        },
      });
      if (this.quiesced) this.link.pause(); // activated by a restore into a quiesced device: resume() lets frames in
    }
    if (!this.linkUp) this.reportLink(); // it went down while no driver was there
    this.link.negotiated({
      csum: this.guestCsum,
      tso4: bit(ctx.features, VIRTIO_NET_F_GUEST_TSO4),
      tso6: bit(ctx.features, VIRTIO_NET_F_GUEST_TSO6),
    });
  }

  /** Tells the driver the link status (VIRTIO_NET_F_STATUS): the status field with a config change interrupt. */
  private reportLink(): void {
    const status = new Uint8Array(2);
    new DataView(status.buffer).setUint16(0, this.linkUp ? VIRTIO_NET_S_LINK_UP : 0, true);
    this.ctx?.updateConfig?.(NET_CONFIG_STATUS_OFFSET, status);
  }

  queueNotified(index: number): void {
    if (index === NET_RX_QUEUE) this.deliverRx();
    else if (index === NET_TX_QUEUE) this.processTx();
  }

  reset(): void {
    this.stopServing();
    this.link?.negotiated({ csum: false, tso4: false, tso6: false });
  }

  /**
   * For a snapshot. Transmit is synchronous (a chain is used as soon as the backend took its frame), so only
   * receive holds anything: the receive chains held for coming frames go back to the ring (the driver still owns
   * them; they are popped again), and frames from the network not yet given to the guest are dropped, as a
   * lossy link drops them (TCP and the like resend). The link is paused until resume(): further frames wait in
   * the host (socket buffer, TAP queue) instead of being dropped. Link status is in the device config bytes,
   * which the transport saves.
   */
  quiesce(): void {
    this.quiesced = true;
    const queue = this.ctx?.queues[NET_RX_QUEUE];
    if (queue && this.rxHeld.length > 0) queue.rewind(this.rxHeld);
    this.rxHeld = [];
    this.stats.rxDropped += this.rxFrames.length;
    this.rxFrames.length = 0;
    this.rxQueuedBytes = 0;
    this.rxPaused = false; // the backlog that paused the link is gone; the link stays paused for quiesce below
    this.link?.pause();
    if (this.txContinuation) clearImmediate(this.txContinuation);
    this.txContinuation = undefined;
  }

  /** Lets frames in again and serves both queues (a transmit turn cut short, buffers posted meanwhile). */
  resume(): void {
    this.quiesced = false;
    this.link?.resume();
    this.deliverRx();
    this.processTx();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.stopServing();
    this.link?.close();
    const b = this.handle.backend;
    if (b.kind === 'tap') releaseTap(b);
    else if (b.kind === 'user') releasePasst(b);
  }

  private createLink(): NetLink {
    const b = this.handle.backend;
    switch (b.kind) {
      case 'tap':
        return new TapLink(b);
      case 'user':
        return new StreamSocketLink(b.path, 'passt');
      case 'socket':
        return new StreamSocketLink(b.path);
    }
  }

  /** Stops touching the current queues: queued frames and held chains are dropped, continuations disarmed. */
  private stopServing(): void {
    this.generation++;
    this.ctx = undefined;
    this.rxScheduled = false;
    this.rxFrames.length = 0;
    this.rxQueuedBytes = 0;
    this.rxHeld = [];
    this.txBlocked = false;
    if (this.txContinuation) clearImmediate(this.txContinuation);
    this.txContinuation = undefined;
    if (this.rxPaused) {
      this.rxPaused = false;
      this.link?.resume(); // with no driver, frames are read and dropped, as a NIC without a driver does
    }
  }

  /** A driver error: stop serving, tell the driver about what was already used, ask for a reset (§2.1.2). */
  private fail(ctx: VirtioQueueContext, queue: number, pushed: boolean, reason: string): void {
    this.stopServing();
    if (pushed) ctx.interrupt(queue);
    ctx.needsReset(reason); // the runner resets this backend from inside this call
  }

  // ---- receive ------------------------------------------------------------------------------------------

  private received(frame: Uint8Array): void {
    const vnet = this.link?.vnetHeader ?? false;
    if (
      !this.ctx ||
      this.quiesced ||
      (vnet && frame.length <= VIRTIO_NET_HDR_SIZE) ||
      this.rxFrames.length >= RX_MAX_FRAMES ||
      this.rxQueuedBytes + frame.length > RX_MAX_BYTES
    ) {
      this.stats.rxDropped++;
      return;
    }
    this.rxFrames.push(frame);
    this.rxQueuedBytes += frame.length;
    if (this.rxFrames.length >= RX_HIGH_FRAMES && !this.rxPaused) {
      this.deliverRx();
      if (this.rxFrames.length >= RX_HIGH_FRAMES) {
        this.rxPaused = true;
        this.stats.rxPauses++;
        this.link?.pause();
      }
    }
    if (!this.rxScheduled) {
      this.rxScheduled = true;
      const generation = this.generation;
      queueMicrotask(() => {
        this.rxScheduled = false;
        if (generation === this.generation) this.deliverRx();
      });
    }
  }

  private deliverRx(): void {
    const ctx = this.ctx;
    const queue = ctx?.queues[NET_RX_QUEUE];
    const link = this.link;
    if (!ctx || !queue || !link || this.quiesced) return;
    let used = 0;
    try {
      while (this.rxFrames.length > 0) {
        const frame = this.rxFrames[0];
        const need = link.vnetHeader ? frame.length : VIRTIO_NET_HDR_SIZE + frame.length;
        const chains = this.gather(ctx, queue, need, used > 0);
        if (chains === 'failed') return;
        if (chains === 'wait') break;
        this.rxFrames.shift();
        this.rxQueuedBytes -= frame.length;
        if (chains === 'too-big') {
          this.stats.rxDropped++;
          continue;
        }
        this.writeFrame(queue, frame, chains, link.vnetHeader);
        used += chains;
        this.stats.rxFrames++;
        this.stats.rxBytes += link.vnetHeader ? frame.length - VIRTIO_NET_HDR_SIZE : frame.length;
      }
    } catch (e) {
      // Validated chains cannot fault; if one does anyway, the device stops instead of the I/O thread.
      this.fail(ctx, NET_RX_QUEUE, used > 0, `receiveq: internal error: ${e instanceof Error ? e.message : String(e)}`);
      return;
    }
    if (used > 0) ctx.interrupt(NET_RX_QUEUE);
    if (this.rxPaused && this.rxFrames.length <= RX_LOW_FRAMES) {
      this.rxPaused = false;
      link.resume();
    }
  }

  /**
   * Makes sure enough receive chains are held for a packet of `need` bytes (header included): returns how many
   * of the held chains it takes, 'wait' (the driver must post more; notifications re-armed), 'too-big' (drop
   * the frame), or 'failed' (a malformed chain: the device asked for a reset).
   */
  private gather(
    ctx: VirtioQueueContext,
    queue: Virtqueue,
    need: number,
    pushed: boolean,
  ): number | 'wait' | 'too-big' | 'failed' {
    for (;;) {
      if (!this.mergeable) {
        // One chain per packet (§5.1.6.3.2): a frame larger than the chain in hand is dropped, the chain kept.
        if (this.rxHeld.length > 0) return this.rxHeld[0].writableLength >= need ? 1 : 'too-big';
      } else {
        let sum = 0;
        for (let i = 0; i < this.rxHeld.length; i++) {
          sum += this.rxHeld[i].writableLength;
          if (sum >= need) return i + 1;
        }
        // Every buffer the ring can hold is here and the frame still does not fit: it never will.
        if (this.rxHeld.length >= queue.size) return 'too-big';
      }
      const chain = queue.popAvailable();
      if (chain === undefined) {
        if (queue.enableNotifications()) continue; // buffers arrived while re-arming: take them
        return 'wait';
      }
      if (chain instanceof VirtqueueError) {
        this.fail(ctx, NET_RX_QUEUE, pushed, `receiveq: ${chain.message}`);
        return 'failed';
      }
      // §5.1.6.3.1: receive buffers are device-writable and each holds at least the header.
      if (chain.readableCount > 0 || chain.writableLength < VIRTIO_NET_HDR_SIZE) {
        const what =
          chain.readableCount > 0
            ? `has ${chain.readableCount} device-readable buffer(s)`
            : `has ${chain.writableLength} writable bytes, less than the ${VIRTIO_NET_HDR_SIZE}-byte header`;
        this.fail(ctx, NET_RX_QUEUE, pushed, `receiveq: chain ${chain.head} ${what}`);
        return 'failed';
      }
      this.rxHeld.push(chain);
    }
  }

  /** Writes header + frame across the first `count` held chains and returns them to the driver in order. */
  private writeFrame(queue: Virtqueue, frame: Uint8Array, count: number, vnet: boolean): void {
    const chains = this.rxHeld.splice(0, count);
    let header: Uint8Array;
    if (vnet) {
      header = frame.subarray(0, VIRTIO_NET_HDR_SIZE); // the kernel's header, passed on
      // §5.1.6.4.1: without GUEST_CSUM the device must leave flags 0 (the kernel may have said DATA_VALID).
      if (!this.guestCsum) header[0] = 0;
    } else {
      header = new Uint8Array(VIRTIO_NET_HDR_SIZE); // flags 0, VIRTIO_NET_HDR_GSO_NONE, no checksum to do
    }
    header[10] = count & 0xff; // num_buffers (1 without MRG_RXBUF)
    header[11] = count >> 8;
    const parts = vnet ? [frame] : [header, frame];
    const written = new Array<number>(count).fill(0);
    let index = 0;
    let offset = 0;
    for (const part of parts) {
      let at = 0;
      while (at < part.length && index < count) {
        const chain = chains[index];
        const n = chain.writeBytes(part.subarray(at), offset);
        at += n;
        offset += n;
        written[index] += n;
        if (offset >= chain.writableLength) {
          index++;
          offset = 0;
        }
      }
    }
    chains.forEach((chain, i) => queue.pushUsed(chain, written[i]));
  }

  // ---- transmit -----------------------------------------------------------------------------------------

  private processTx(): void {
    const ctx = this.ctx;
    const queue = ctx?.queues[NET_TX_QUEUE];
    const link = this.link;
    if (!ctx || !queue || !link || this.txBlocked || this.txContinuation || this.quiesced) return;
    queue.disableNotifications(); // we are looking anyway; re-armed once the ring is empty
    let chains = 0;
    try {
      for (;;) {
        if (chains === TX_TURN_CHAINS) {
          const generation = this.generation;
          this.txContinuation = setImmediate(() => {
            this.txContinuation = undefined;
            if (generation === this.generation) this.processTx();
          });
          break;
        }
        const chain = queue.popAvailable();
        if (chain === undefined) {
          if (queue.enableNotifications()) continue;
          break;
        }
        if (chain instanceof VirtqueueError) {
          this.fail(ctx, NET_TX_QUEUE, chains > 0, `transmitq: ${chain.message}`);
          return;
        }
        // §5.1.6.2: a transmit chain is device-readable and starts with the header.
        if (chain.writableLength > 0 || chain.readableLength < VIRTIO_NET_HDR_SIZE) {
          const what =
            chain.writableLength > 0
              ? `has ${chain.writableLength} device-writable bytes`
              : `has ${chain.readableLength} bytes, less than the ${VIRTIO_NET_HDR_SIZE}-byte header`;
          this.fail(ctx, NET_TX_QUEUE, chains > 0, `transmitq: chain ${chain.head} ${what}`);
          return;
        }
        const result = this.transmit(link, chain);
        queue.pushUsed(chain, 0);
        chains++;
        if (result === 'full') {
          this.txBlocked = true; // NetLinkSink.writable() resumes
          break;
        }
      }
    } catch (e) {
      this.fail(
        ctx,
        NET_TX_QUEUE,
        chains > 0,
        `transmitq: internal error: ${e instanceof Error ? e.message : String(e)}`,
      );
      return;
    }
    if (chains > 0) ctx.interrupt(NET_TX_QUEUE);
  }

  private transmit(link: NetLink, chain: DescriptorChain): SendResult {
    const total = chain.readableLength;
    const frameLength = total - VIRTIO_NET_HDR_SIZE;
    if (total > NET_MAX_TX_CHAIN || frameLength === 0) {
      this.stats.txDropped++;
      return 'dropped';
    }
    // Zero-copy views of the guest's buffers; the backend uses (or copies) them before we push the chain back.
    const spans: Uint8Array[] = [];
    const collect = (view: Uint8Array): void => void spans.push(view);
    let length = frameLength;
    if (!link.vnetHeader) {
      chain.forEachSpan('readable', collect, VIRTIO_NET_HDR_SIZE, frameLength);
    } else if (this.hostOffloads) {
      chain.forEachSpan('readable', collect, 0, total);
      length = total;
    } else {
      // Without CSUM the header's fields mean nothing (§5.1.6.2): the kernel gets a neutral one.
      spans.push(ZERO_HEADER);
      chain.forEachSpan('readable', collect, VIRTIO_NET_HDR_SIZE, frameLength);
      length = total;
    }
    const result = link.send(spans, length);
    if (result === 'dropped') {
      this.stats.txDropped++;
    } else {
      this.stats.txFrames++;
      this.stats.txBytes += frameLength;
    }
    return result;
  }
}

/** virtio-net (virtio 1.2 §5.1) on a host backend: passt (user-mode NAT), a TAP device or a stream socket. */
export const virtioNetModel = virtioPciModel<NetHandle>({
  kind: 'virtio-net',
  // iPXE from Debian's ipxe-qemu: network boot under firmware (PXE, DHCP from passt).
  optionRom: '/usr/lib/ipxe/qemu/pxe-virtio.rom',
  summary: 'virtio-net: user-mode NAT through passt, a TAP device, or a UNIX socket (QEMU stream framing)',
  options: {
    backend: Type.Union([
      Type.Object({ kind: Type.Literal('user') }, { additionalProperties: false }),
      Type.Object({ kind: Type.Literal('tap'), name: Type.String({ minLength: 1 }) }, { additionalProperties: false }),
      Type.Object(
        { kind: Type.Literal('socket'), path: Type.String({ minLength: 1 }) },
        { additionalProperties: false },
      ),
    ]),
    mac: Type.Optional(Type.String({ pattern: '^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$' })),
  },
  open: (o) => openNet({ backend: o.backend as NetBackendOption, mac: o.mac as string | undefined }),
  backend: (handle, log) => new VirtioNet(handle, log),
});
