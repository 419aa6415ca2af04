// The contract between virtio-net and a host network backend (TAP, passt, stream socket): frames in and out,
// back-pressure, and what the guest negotiated. Backends implement NetLink; the device implements NetLinkSink.

/**
 * The largest Ethernet frame any backend carries: a 64 KiB IP packet (what a GSO/TSO path produces at most) plus
 * the Ethernet header and one 802.1Q tag. Longer length words on a stream are protocol errors.
 */
export const NET_MAX_FRAME = 65535 + 14 + 4;

/** Receive offloads the driver negotiated (what a TAP may hand the guest). */
export interface GuestOffloads {
  readonly csum: boolean;
  readonly tso4: boolean;
  readonly tso6: boolean;
}

/** 'full': sent, but the backend is congested: stop transmitting until NetLinkSink.writable(). */
export type SendResult = 'sent' | 'full' | 'dropped';

/** How a host backend reports to the device (all calls on the I/O thread). */
export interface NetLinkSink {
  /** A frame from the host (ownership passes to the device); with a vnet-header link, header included. */
  frame(frame: Uint8Array): void;
  /** The backend can take frames again (after 'full', or once connected). */
  writable(): void;
  warn(message: string): void;
  /** The backend is gone for good (peer hung up, protocol error, read error). */
  closed(reason: string): void;
}

/** A host backend as the device drives it (I/O thread). */
export interface NetLink {
  /** Frames carry the 12-byte virtio_net_hdr (TAP) rather than being plain Ethernet. */
  readonly vnetHeader: boolean;
  readonly description: string;
  start(sink: NetLinkSink): void;
  /** Sends one frame given as spans (live guest-memory views, valid only during the call) totalling `length`. */
  send(spans: readonly Uint8Array[], length: number): SendResult;
  pause(): void;
  resume(): void;
  negotiated(offloads: GuestOffloads): void;
  close(): void;
}
