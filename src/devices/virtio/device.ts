// The contract between the virtio-pci transport and a device backend (virtio 1.2 §2, §3 device initialization).
// The transport (pci-transport.ts) owns registers and interrupts; the backend (block.ts, entropy.ts, …)
// owns request processing. Backends run on the VM's I/O thread, never on a vCPU thread.
import type { GuestMemory } from '../../base/guest-memory.js';
import type { VirtioDeviceInfo } from './pci-transport.js';
import type { Virtqueue } from './queue.js';
import type { JsonValue } from '../model.js';

export interface VirtioQueueContext {
  readonly memory: GuestMemory;
  /** The queues the driver enabled, by index (undefined for queues it left disabled). */
  readonly queues: readonly (Virtqueue | undefined)[];
  /** Feature bits the driver accepted (FEATURES_OK). */
  readonly features: bigint;
  /** Tells the driver that buffers were used on `queue` (MSI-X vector or INTx; honours suppression upstream). */
  interrupt(queue: number): void;
  /** Marks the device DEVICE_NEEDS_RESET after a driver error (malformed descriptors etc.). */
  needsReset(reason: string): void;
  /**
   * Changes device-specific configuration the driver reads (e.g. virtio-net's link status) and tells it: a new
   * config_generation and a configuration change notification (virtio 1.2 §2.5.1, §4.1.4.5).
   */
  updateConfig?(offset: number, bytes: Uint8Array): void;
}

export interface VirtioBackend {
  readonly info: VirtioDeviceInfo;
  /** Device-specific configuration bytes (virtio 1.2 §5.x.4), written once into the transport's config space. */
  configBytes(): Uint8Array;
  /** DRIVER_OK: the driver is ready; start serving `ctx.queues`. */
  activate(ctx: VirtioQueueContext): void;
  /** The driver kicked queue `index` (ioeventfd fired). */
  queueNotified(index: number): void;
  /**
   * The driver reset the device (status 0): drop all queue state. Work that cannot be stopped at once (host
   * I/O already issued) may still finish: then return a promise that settles when nothing can touch guest
   * memory or the queues any more; the transport shows device_status 0 to the driver only after that
   * (virtio 1.2 §2.4.1). Returning nothing means the reset is complete.
   */
  reset(): Promise<void> | void;
  /**
   * The VM is being paused for a snapshot: take no new chain from the guest (kicks are held back by the runner;
   * this is for work the backend starts itself: continuations, host input) and settle when no host I/O is in
   * flight, every completion is in the used rings and its interrupt sent. Chains popped and held for later
   * (e.g. network receive buffers) go back to the ring (Virtqueue.rewind): a snapshot has none in flight.
   * Without this method the backend is taken to do nothing on its own.
   */
  quiesce?(): Promise<void> | void;
  /** Ends quiesce(): serve again, including whatever the backend put off meanwhile. */
  resume?(): void;
  /**
   * Host-side state a snapshot must carry besides the transport and queues (e.g. input events not yet delivered),
   * taken while quiesced; undefined: none. restoreState gets it back (undefined from an older snapshot) after the
   * queues were restored.
   */
  saveState?(): JsonValue | undefined;
  restoreState?(saved: JsonValue | undefined): void;
  /** The VM is shutting down: flush and release host resources (files, sockets). */
  close(): void;
}
