// virtio 1.2 §5.1 Network Device, host side: a Linux TAP interface (Documentation/networking/tuntap.rst).
//
// The TAP is opened with IFF_VNET_HDR and a 12-byte vnet header (TUNSETVNETHDRSZ), the size of virtio 1.x's
// struct virtio_net_hdr (§5.1.6), so a frame and its header pass between guest and kernel unchanged: that is what
// lets the device offer checksum and TSO offloads (the kernel validates the guest's GSO fields, and TUNSETOFFLOAD
// limits what it sends the guest to what the driver negotiated).
//
// Reading: a native epoll watcher reports the non-blocking fd readable (edge-triggered, readiness only: the
// watcher reads nothing), and frames are read until EAGAIN, at most READS_PER_TURN per turn of the event loop.
import { readSync, writevSync } from 'node:fs';
import { native } from '../../native/index.js';
import { DeviceOpenError } from '../model.js';
import { NET_MAX_FRAME, type GuestOffloads, type NetLink, type NetLinkSink, type SendResult } from './link.js';

// <linux/if_tun.h>
const TUNSETIFF = 0x400454ca; // _IOW('T', 202, int)
const TUNSETOFFLOAD = 0x400454d0; // _IOW('T', 208, unsigned int)
const TUNSETVNETHDRSZ = 0x400454d8; // _IOW('T', 216, int)
const IFF_TAP = 0x0002;
const IFF_NO_PI = 0x1000;
const IFF_VNET_HDR = 0x4000;
const TUN_F_CSUM = 0x01;
const TUN_F_TSO4 = 0x02;
const TUN_F_TSO6 = 0x04;
const O_RDWR = 2;
const O_NONBLOCK = 0o4000;
/** struct ifreq is 40 bytes on x86-64 (16-byte name + 24-byte union); TUNSETIFF copies all of it both ways. */
const IFREQ_SIZE = 40;
const IFNAMSIZ = 16;
/** virtio 1.x's struct virtio_net_hdr including num_buffers (§5.1.6): the vnet header size the TAP is given. */
const VNET_HDR_SIZE = 12;

/** Frames read per turn before yielding to the event loop. */
const READS_PER_TURN = 64;

export interface TapHandle {
  readonly kind: 'tap';
  /** The interface name the kernel gave (a "tap%d" template comes back filled in). */
  readonly name: string;
  /** Non-blocking fd of /dev/net/tun attached to the interface (process-wide: the I/O thread uses it). */
  readonly fd: number;
  /** The kernel accepted TUNSETOFFLOAD with checksum and TSO: the device may offer those features. */
  readonly offloads: boolean;
}

/** Builder thread: attaches to TAP `name` (creating it when it does not exist and we may). */
export function openTap(name: string): TapHandle {
  // dev_valid_name(): 1..15 bytes, not "." or "..", no '/', ':' or whitespace.
  if (!name || Buffer.byteLength(name) >= IFNAMSIZ || name === '.' || name === '..' || /[/:\s]/.test(name))
    throw new DeviceOpenError(
      `'${name}' is not a valid network interface name (1 to 15 characters, no '/', ':' or spaces)`,
    );
  const fd = native.open('/dev/net/tun', O_RDWR | O_NONBLOCK);
  if (fd < 0) {
    const errno = -fd;
    if (errno === 2)
      throw new DeviceOpenError('TAP: /dev/net/tun does not exist (load the tun module: sudo modprobe tun)');
    if (errno === 1 || errno === 13)
      throw new DeviceOpenError(`TAP: permission denied opening /dev/net/tun (needed for TAP device ${name})`);
    throw new DeviceOpenError(`TAP: cannot open /dev/net/tun (errno ${errno})`);
  }
  try {
    const ifr = new Uint8Array(IFREQ_SIZE);
    ifr.set(Buffer.from(name));
    new DataView(ifr.buffer).setUint16(IFNAMSIZ, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, true);
    const r = native.ioctl(fd, TUNSETIFF, ifr);
    if (r < 0) throw tunSetIffError(name, -r);
    const nul = ifr.indexOf(0);
    const actual = Buffer.from(ifr.subarray(0, nul < 0 || nul > IFNAMSIZ ? IFNAMSIZ : nul)).toString();
    const size = new Int32Array([VNET_HDR_SIZE]);
    const s = native.ioctl(fd, TUNSETVNETHDRSZ, size);
    if (s < 0)
      throw new DeviceOpenError(`TAP ${actual}: the kernel refused a ${VNET_HDR_SIZE}-byte vnet header (errno ${-s})`);
    // Probe the offloads now: the feature bits the device offers are fixed before the guest driver looks.
    const offloads = native.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6) === 0;
    native.ioctl(fd, TUNSETOFFLOAD, 0); // nothing the guest has not negotiated
    return { kind: 'tap', name: actual, fd, offloads };
  } catch (e) {
    native.close(fd);
    throw e;
  }
}

function tunSetIffError(name: string, errno: number): DeviceOpenError {
  switch (errno) {
    case 1: // EPERM
      return new DeviceOpenError(
        `creating TAP device ${name} needs CAP_NET_ADMIN (run as root or pre-create it with \`ip tuntap add ${name} mode tap user $USER\`)`,
      );
    case 16: // EBUSY
      return new DeviceOpenError(`TAP device ${name} is already in use by another process`);
    case 22: // EINVAL
      return new DeviceOpenError(
        `${name} exists but cannot be used as a TAP device here (a TUN device, or multi_queue?)`,
      );
    default:
      return new DeviceOpenError(`TAP device ${name}: TUNSETIFF failed (errno ${errno})`);
  }
}

/** Closes the TAP fd (a TAP we created disappears with it; a pre-created, persistent one stays). */
export function releaseTap(handle: TapHandle): void {
  native.close(handle.fd);
}

export class TapLink implements NetLink {
  readonly vnetHeader = true;
  private sink: NetLinkSink | undefined;
  private timer: NodeJS.Immediate | undefined;
  private watcher: bigint | undefined;
  private paused = false;
  private closed = false;
  /** One frame as the kernel hands it: vnet header + up to 64 KiB of GSO frame. */
  private readonly buffer = Buffer.allocUnsafe(VNET_HDR_SIZE + NET_MAX_FRAME);
  private readonly reported = new Set<string>();

  constructor(readonly handle: TapHandle) {}

  get description(): string {
    return `TAP ${this.handle.name}`;
  }

  start(sink: NetLinkSink): void {
    this.sink = sink;
    if (this.watcher === undefined) {
      const w = native.watchFds(() => this.schedule());
      if (typeof w === 'number') {
        sink.closed(`${this.description}: cannot watch the TAP fd (errno ${-w}); no frames from the host`);
        return;
      }
      const r = native.watchFdAdd(w, this.handle.fd, true);
      if (r < 0) sink.closed(`${this.description}: cannot watch the TAP fd (errno ${-r}); no frames from the host`);
      this.watcher = w;
    }
    this.schedule(); // frames that arrived before the watch began (edge-triggered: no event for them)
  }

  /** Checksum/TSO offloads toward the guest: only what the driver negotiated (TUN_F_TSO* need TUN_F_CSUM). */
  negotiated(offloads: GuestOffloads): void {
    if (this.closed) return;
    let flags = 0;
    if (this.handle.offloads && offloads.csum) {
      flags = TUN_F_CSUM;
      if (offloads.tso4) flags |= TUN_F_TSO4;
      if (offloads.tso6) flags |= TUN_F_TSO6;
    }
    const r = native.ioctl(this.handle.fd, TUNSETOFFLOAD, flags);
    if (r < 0) this.sink?.warn(`${this.description}: TUNSETOFFLOAD 0x${flags.toString(16)} failed (errno ${-r})`);
  }

  send(spans: readonly Uint8Array[]): SendResult {
    if (this.closed) return 'dropped';
    try {
      writevSync(this.handle.fd, spans); // one writev is one frame: no copy out of guest RAM
      return 'sent';
    } catch (e) {
      // EIO: the interface is down (a cable unplugged); EINVAL: the kernel rejected the guest's GSO fields;
      // EAGAIN/ENOBUFS: the kernel is out of room. Each drops the frame, as a NIC would; reported once per kind.
      const code = (e as NodeJS.ErrnoException).code ?? String(e);
      if (code !== 'EIO' && !this.reported.has(code)) {
        this.reported.add(code);
        this.sink?.warn(`${this.description}: dropping frames the kernel refuses (${code})`);
      }
      return 'dropped';
    }
  }

  pause(): void {
    this.paused = true;
    this.cancel();
  }

  resume(): void {
    if (!this.paused) return;
    this.paused = false;
    this.schedule(); // edge-triggered: what queued up while paused raises no new event
  }

  close(): void {
    this.closed = true;
    this.cancel();
    if (this.watcher !== undefined) native.watchFdRemove(this.watcher, this.handle.fd);
  }

  private cancel(): void {
    if (this.timer) clearImmediate(this.timer);
    this.timer = undefined;
  }

  private schedule(): void {
    if (this.closed || this.paused || this.timer) return;
    this.timer = setImmediate(() => {
      this.timer = undefined;
      this.poll();
    });
  }

  /** Reads frames until the kernel has none (EAGAIN), the device pauses us, or this turn's budget is spent. */
  private poll(): void {
    let reads = 0;
    while (reads < READS_PER_TURN && !this.paused && !this.closed) {
      let n: number;
      try {
        n = readSync(this.handle.fd, this.buffer, 0, this.buffer.length, null);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'EAGAIN') break;
        this.closed = true;
        this.sink?.closed(`${this.description}: read failed (${code ?? String(e)}); no more frames from the host`);
        return;
      }
      reads++;
      if (n > VNET_HDR_SIZE) this.sink?.frame(new Uint8Array(this.buffer.subarray(0, n))); // a copy: the buffer is reused
    }
    // The turn's budget ran out before EAGAIN: the rest raises no new edge, so come back for it.
    if (reads === READS_PER_TURN) this.schedule();
  }
}
