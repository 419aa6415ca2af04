// Runs a virtio device on the I/O thread: watches the transport's control eventfd (status and queue changes
// written by vCPU threads) and the queues' ioeventfds, builds validated split or packed queues when the driver sets
// DRIVER_OK, and hands kicks to the backend. Interrupt suppression (EVENT_IDX / NO_INTERRUPT) is applied here.
import { native } from '../../native/index.js';
import type { GuestMemory } from '../../base/guest-memory.js';
import type { VirtioBackend, VirtioQueueContext } from './device.js';
import type { JsonValue } from '../model.js';
import {
  STATUS_DRIVER_OK,
  STATUS_FAILED,
  STATUS_FEATURES_OK,
  STATUS_NEEDS_RESET,
  VIRTIO_F_RING_EVENT_IDX,
  VIRTIO_F_RING_INDIRECT_DESC,
  VIRTIO_F_RING_PACKED,
  type VirtioPciDevice,
} from './pci-transport.js';
import { SplitQueue, VirtqueueError, type Virtqueue } from './queue.js';
import { PackedQueue } from './packed-queue.js';

/** Where a runner registers its eventfds (the I/O thread's one epoll watcher). */
export interface EventFdSource {
  on(fd: number, handler: () => void): void;
}

/** One epoll watcher per I/O thread serves every device on it. */
export class EventFdDispatcher implements EventFdSource {
  private readonly handlers = new Map<number, () => void>();
  private readonly watcher: bigint;

  constructor() {
    const w = native.watchFds((fd) => this.handlers.get(fd)?.());
    if (typeof w === 'number') throw new Error(`cannot start the eventfd watcher: errno ${-w}`);
    this.watcher = w;
  }

  on(fd: number, handler: () => void): void {
    this.handlers.set(fd, handler);
    const r = native.watchFdAdd(this.watcher, fd);
    if (r < 0) throw new Error(`cannot watch eventfd ${fd}: errno ${-r}`);
  }
}

export class VirtioRunner {
  private active = false;
  private queues: (Virtqueue | undefined)[] = [];
  /** Settles when the backend's last reset has drained (its in-flight host I/O is back). */
  private drained: Promise<void> = Promise.resolve();

  constructor(
    private readonly transport: VirtioPciDevice,
    private readonly backend: VirtioBackend,
    private readonly memory: GuestMemory,
    dispatcher: EventFdSource,
    private readonly log: (message: string) => void = () => undefined,
  ) {
    transport.deferResets();
    dispatcher.on(transport.shared.controlEventFd, () => this.reconcile());
    transport.shared.queueEventFds.forEach((fd, index) => dispatcher.on(fd, () => this.kicked(index)));
  }

  /** Stops taking requests from the guest; settles when the backend has no host I/O in flight. */
  quiesce(): Promise<void> {
    return Promise.reject(new Error(`${this.transport.name}: quiesce is not implemented yet`));
  }

  /** Serves the queues again after quiesce(). */
  resume(): void {
    throw new Error(`${this.transport.name}: resume is not implemented yet`);
  }

  /** Queue positions (split: next avail, used idx; packed: wrap counters) for a snapshot; quiesced first. */
  saveQueues(): JsonValue {
    throw new Error(`${this.transport.name}: saveQueues is not implemented yet`);
  }

  restoreQueues(_saved: JsonValue | undefined): void {
    throw new Error(`${this.transport.name}: restoreQueues is not implemented yet`);
  }

  /** Brings the backend in line with the driver's status. */
  private reconcile(): void {
    if (this.transport.resetPending) {
      this.stopBackend();
      // Only once nothing of the old session can touch guest memory does the driver see device_status 0.
      const transport = this.transport;
      void this.drained.then(() => {
        transport.completeReset();
        this.reconcile(); // anything the driver did meanwhile was ignored or is seen now
      });
      return;
    }
    const status = this.transport.status;
    // A device that needs a reset serves nothing more (the transport sets NEEDS_RESET itself when the driver
    // takes FEATURES_OK away from a running device).
    if (status === 0 || status & (STATUS_FAILED | STATUS_NEEDS_RESET)) {
      this.stopBackend();
      return;
    }
    // Only features the transport accepted with FEATURES_OK are ever run (§3.1.1; the transport also sets
    // NEEDS_RESET for DRIVER_OK without FEATURES_OK).
    const ready = STATUS_DRIVER_OK | STATUS_FEATURES_OK;
    if (!this.active && (status & ready) === ready && !(status & STATUS_NEEDS_RESET)) this.activate();
  }

  private activate(): void {
    const features = this.transport.driverFeatures;
    const queues: (Virtqueue | undefined)[] = [];
    const eventIdx = this.transport.negotiated(VIRTIO_F_RING_EVENT_IDX);
    const indirect = this.transport.negotiated(VIRTIO_F_RING_INDIRECT_DESC);
    const packed = this.transport.negotiated(VIRTIO_F_RING_PACKED);
    for (let i = 0; i < this.transport.info.queueSizes.length; i++) {
      const q = this.transport.queueConfig(i);
      if (!q.enabled) {
        queues.push(undefined);
        continue;
      }
      // §2.8 packed: descriptor ring, driver and device event suppression areas in the same three registers.
      const result = packed
        ? PackedQueue.create(this.memory, {
            size: q.size,
            descRing: q.desc,
            driverArea: q.driver,
            deviceArea: q.device,
            eventIdx,
            indirect,
          })
        : SplitQueue.create(this.memory, {
            size: q.size,
            descTable: q.desc,
            availRing: q.driver,
            usedRing: q.device,
            eventIdx,
            indirect,
          });
      if (result instanceof VirtqueueError) {
        this.needsReset(`queue ${i}: ${result.message}`);
        return;
      }
      queues.push(result);
    }
    this.queues = queues;
    this.active = true;
    const ctx: VirtioQueueContext = {
      memory: this.memory,
      queues,
      features,
      interrupt: (queue) => {
        const q = this.queues[queue];
        if (q && q.needsNotification()) this.transport.interruptQueue(queue);
      },
      needsReset: (reason) => this.needsReset(reason),
      updateConfig: (offset, bytes) => this.transport.updateDeviceConfig(offset, bytes),
    };
    this.backend.activate(ctx);
    // Buffers the driver made available before DRIVER_OK (allowed by §3.1.1) are served now.
    queues.forEach((q, i) => q && this.backend.queueNotified(i));
  }

  private kicked(index: number): void {
    this.transport.countKick();
    if (this.active && this.queues[index]) this.backend.queueNotified(index);
  }

  private needsReset(reason: string): void {
    this.log(`${this.transport.name}: ${reason}; the device needs a reset`);
    this.stopBackend();
    this.transport.needsReset();
  }

  /** Stops serving the queues; a backend with host I/O still in flight reports when it has drained. */
  private stopBackend(): void {
    if (!this.active) return;
    this.active = false;
    this.queues = [];
    const drain = this.backend.reset();
    if (drain) {
      const previous = this.drained;
      this.drained = Promise.all([previous, drain]).then(
        () => undefined,
        (e: unknown) => this.log(`${this.transport.name}: reset: ${(e as Error).message}`),
      );
    }
  }
}
