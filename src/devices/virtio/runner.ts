// Runs a virtio device on the I/O thread: watches the transport's control eventfd (status and queue changes
// written by vCPU threads) and the queues' ioeventfds, builds validated split or packed queues when the driver sets
// DRIVER_OK, and hands kicks to the backend. Interrupt suppression (EVENT_IDX / NO_INTERRUPT) is applied here.
import { native } from '../../native/index.js';
import type { GuestMemory } from '../../base/guest-memory.js';
import type { VirtioBackend, VirtioQueueContext } from './device.js';
import { DeviceStateError, type JsonValue } from '../model.js';
import {
  STATUS_DRIVER_OK,
  STATUS_FAILED,
  STATUS_FEATURES_OK,
  STATUS_NEEDS_RESET,
  VIRTIO_F_RING_EVENT_IDX,
  VIRTIO_F_RING_INDIRECT_DESC,
  VIRTIO_F_RING_PACKED,
  type QueueConfig,
  type VirtioPciDevice,
} from './pci-transport.js';
import { SplitQueue, VirtqueueError, type SplitQueueState, type Virtqueue } from './queue.js';
import { PackedQueue, type PackedQueueState } from './packed-queue.js';

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
  /** Between quiesce() and resume(): kicks and status changes wait (kickDue, reconcileDue). */
  private quiesced = false;
  private quiescing: Promise<void> | undefined;
  private readonly kickDue: boolean[];
  private reconcileDue = false;

  constructor(
    private readonly transport: VirtioPciDevice,
    private readonly backend: VirtioBackend,
    private readonly memory: GuestMemory,
    dispatcher: EventFdSource,
    private readonly log: (message: string) => void = () => undefined,
  ) {
    this.kickDue = transport.info.queueSizes.map(() => false);
    transport.deferResets();
    dispatcher.on(transport.shared.controlEventFd, () => this.reconcile());
    transport.shared.queueEventFds.forEach((fd, index) => dispatcher.on(fd, () => this.kicked(index)));
  }

  /**
   * Stops taking requests from the guest: kicks and status changes are remembered, not served, and the backend
   * starts nothing on its own. Settles when the backend has no host I/O in flight (a reset still draining
   * included): only then do saveQueues() and the transport's saveState() describe the whole device.
   */
  quiesce(): Promise<void> {
    if (!this.quiescing) {
      this.quiesced = true;
      const backend = Promise.resolve(this.backend.quiesce?.());
      this.quiescing = Promise.all([this.drained, backend]).then(() => undefined);
    }
    return this.quiescing;
  }

  /** Serves the queues again after quiesce(): status changes and kicks that came meanwhile are handled now. */
  resume(): void {
    if (!this.quiesced) return;
    this.quiesced = false;
    this.quiescing = undefined;
    this.backend.resume?.();
    if (this.reconcileDue) {
      this.reconcileDue = false;
      this.reconcile();
    }
    this.kickDue.forEach((due, index) => {
      this.kickDue[index] = false;
      if (due && this.active && this.queues[index]) this.backend.queueNotified(index);
    });
  }

  /**
   * Each enabled queue's device-side position for a snapshot (rings and buffers are in guest RAM):
   * `{ active, queues: [null | { layout: 'split', nextAvail, nextUsed, signalledUsed, kicksOff }
   *  | { layout: 'packed', nextAvail, availWrap, nextUsed, usedWrap, usedSinceSignal }] }`.
   * A serving device must be quiesced first (a request in flight would be lost).
   */
  saveQueues(): JsonValue {
    if (this.active && !this.quiesced)
      throw new Error(`${this.transport.name}: quiesce the device before saving its queues`);
    // A status change that came while quiesced (a reset, FAILED) ends the session once handled: the queues are
    // saved as not serving, and the restored device handles the saved status as the original will on resume().
    const status = this.transport.status;
    const serving =
      this.active &&
      !this.transport.resetPending &&
      (status & STATUS_DRIVER_OK) !== 0 &&
      (status & (STATUS_NEEDS_RESET | STATUS_FAILED)) === 0;
    if (!serving) return { active: false, queues: [] };
    const queues = this.queues.map((q): JsonValue => {
      if (q instanceof SplitQueue) return { layout: 'split', ...q.saveState() };
      if (q instanceof PackedQueue) return { layout: 'packed', ...q.saveState() };
      return null;
    });
    return { active: true, queues };
  }

  /**
   * Loads saveQueues()'s result after the transport's state was restored: the queues are rebuilt from the
   * transport's queue registers, as activate() does, at the saved positions; the backend is activated and
   * whatever the driver made available is served (held back until resume() on a quiesced runner). A device
   * that was not serving at save time restores inactive. Checked before anything changes (DeviceStateError).
   */
  restoreQueues(saved: JsonValue | undefined): void {
    const name = this.transport.name;
    const fail = (problem: string): never => {
      throw new DeviceStateError(name, problem);
    };
    if (typeof saved !== 'object' || saved === null || Array.isArray(saved)) return fail("lacks 'queues'");
    const s = saved as { readonly [key: string]: JsonValue };
    if (typeof s.active !== 'boolean') fail("'queues' lacks 'active'");
    if (!Array.isArray(s.queues)) return fail("'queues' lacks its list");
    const list = s.queues as readonly JsonValue[];
    if (!s.active) {
      if (list.length !== 0) fail('lists queue positions for a device that was not serving');
      this.stopBackend();
      // The saved status may ask for more (DRIVER_OK written while the original was quiesced): handle it as
      // the original does when it resumes (now, or at resume() on a quiesced runner).
      this.reconcile();
      return;
    }
    const status = this.transport.status;
    if (!(status & STATUS_DRIVER_OK) || status & (STATUS_NEEDS_RESET | STATUS_FAILED))
      fail(`has serving queues but device status 0x${status.toString(16)} (not DRIVER_OK)`);
    const count = this.transport.info.queueSizes.length;
    if (list.length !== count) fail(`has ${list.length} queue positions; this device has ${count} queues`);
    const packed = this.transport.negotiated(VIRTIO_F_RING_PACKED);
    const queues = this.buildQueues((i, q) => {
      const entry = list[i];
      if (!q.enabled) {
        if (entry !== null) fail(`has a position for queue ${i}, which the driver did not enable`);
        return undefined;
      }
      if (typeof entry !== 'object' || entry === null || Array.isArray(entry))
        return fail(`lacks the position of enabled queue ${i}`);
      const e = entry as { readonly [key: string]: JsonValue };
      if (e.layout !== (packed ? 'packed' : 'split'))
        fail(`queue ${i} is ${JSON.stringify(e.layout)}; the driver negotiated ${packed ? 'packed' : 'split'} rings`);
      return e as unknown as SplitQueueState & PackedQueueState;
    });
    if (queues instanceof VirtqueueError) return fail(queues.message);
    this.stopBackend(); // a device that was serving (restoring into a fresh one, this does nothing)
    this.start(queues);
  }

  /** Brings the backend in line with the driver's status. */
  private reconcile(): void {
    if (this.quiesced) {
      this.reconcileDue = true; // the driver's change waits for resume(); a snapshot meanwhile has the registers
      return;
    }
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
    const queues = this.buildQueues(() => undefined);
    if (queues instanceof VirtqueueError) {
      this.needsReset(queues.message);
      return;
    }
    this.start(queues);
  }

  /**
   * Validated queues from the transport's queue registers, each at the position `position` gives (from the
   * start when undefined), or the first queue's error.
   */
  private buildQueues(
    position: (index: number, config: QueueConfig) => (SplitQueueState & PackedQueueState) | undefined,
  ): (Virtqueue | undefined)[] | VirtqueueError {
    const queues: (Virtqueue | undefined)[] = [];
    const eventIdx = this.transport.negotiated(VIRTIO_F_RING_EVENT_IDX);
    const indirect = this.transport.negotiated(VIRTIO_F_RING_INDIRECT_DESC);
    const packed = this.transport.negotiated(VIRTIO_F_RING_PACKED);
    for (let i = 0; i < this.transport.info.queueSizes.length; i++) {
      const q = this.transport.queueConfig(i);
      const saved = position(i, q);
      if (!q.enabled) {
        queues.push(undefined);
        continue;
      }
      // §2.8 packed: descriptor ring, driver and device event suppression areas in the same three registers.
      const packedConfig = {
        size: q.size,
        descRing: q.desc,
        driverArea: q.driver,
        deviceArea: q.device,
        eventIdx,
        indirect,
      };
      const splitConfig = {
        size: q.size,
        descTable: q.desc,
        availRing: q.driver,
        usedRing: q.device,
        eventIdx,
        indirect,
      };
      const result = packed
        ? saved
          ? PackedQueue.restore(this.memory, packedConfig, saved)
          : PackedQueue.create(this.memory, packedConfig)
        : saved
          ? SplitQueue.restore(this.memory, splitConfig, saved)
          : SplitQueue.create(this.memory, splitConfig);
      if (result instanceof VirtqueueError) return new VirtqueueError(result.kind, `queue ${i}: ${result.message}`);
      queues.push(result);
    }
    return queues;
  }

  /** Hands the queues to the backend and serves what the driver already made available. */
  private start(queues: (Virtqueue | undefined)[]): void {
    this.queues = queues;
    this.active = true;
    const ctx: VirtioQueueContext = {
      memory: this.memory,
      queues,
      features: this.transport.driverFeatures,
      interrupt: (queue) => {
        const q = this.queues[queue];
        if (q && q.needsNotification()) this.transport.interruptQueue(queue);
      },
      needsReset: (reason) => this.needsReset(reason),
      updateConfig: (offset, bytes) => this.transport.updateDeviceConfig(offset, bytes),
    };
    this.backend.activate(ctx);
    // Buffers the driver made available before DRIVER_OK (allowed by §3.1.1), or before a snapshot, are served
    // now (or when a quiesced runner resumes).
    queues.forEach((q, i) => {
      if (!q) return;
      if (this.quiesced) this.kickDue[i] = true;
      else this.backend.queueNotified(i);
    });
  }

  private kicked(index: number): void {
    this.transport.countKick();
    if (this.quiesced) this.kickDue[index] = true;
    else if (this.active && this.queues[index]) this.backend.queueNotified(index);
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
