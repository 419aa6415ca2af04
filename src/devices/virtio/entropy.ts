// virtio 1.2 §5.4 Entropy Device: one requestq; every device-writable buffer the driver posts is filled with
// random bytes from the host's CSPRNG (node:crypto randomFillSync, i.e. OpenSSL seeded from getrandom(2)).
//
// §5.4.6.1 says the driver MUST NOT post device-readable buffers, but §5.4.6.2 asks nothing of the device about
// them, so a chain carrying some is not worth a DEVICE_NEEDS_RESET: its readable part is never read, its
// writable part is filled as usual, and a chain with no writable part comes back with used length 0.
//
// Bounds against a hostile driver: at most MAX_REQUEST bytes go into one chain (§5.4.6.2 lets the device use
// less than the whole buffer; the driver reads the used length), and one turn of the I/O thread serves at most
// TURN_CHAINS chains / TURN_BYTES bytes before yielding to the event loop (setImmediate), so a guest that
// keeps the ring full cannot starve the other devices on the thread.
import { randomFillSync } from 'node:crypto';
import type { VirtioBackend, VirtioQueueContext } from './device.js';
import type { VirtioDeviceInfo } from './pci-transport.js';
import { VirtqueueError } from './queue.js';
import { virtioPciModel } from './pci-model.js';

export const VIRTIO_ID_ENTROPY = 4;
export const ENTROPY_REQUESTQ = 0;
export const ENTROPY_QUEUE_SIZE = 256;
/** Random bytes written into one chain at most. */
export const ENTROPY_MAX_REQUEST = 64 * 1024;
/** Chains served per turn of the I/O thread before yielding. */
export const ENTROPY_TURN_CHAINS = 64;
/** Random bytes produced per turn before yielding (randomFillSync made ~6 GB/s on this workplace: well under 1 ms). */
export const ENTROPY_TURN_BYTES = 256 * 1024;

/** Nothing to open on the host: the handle only says which backend to build. */
export interface EntropyHandle {
  readonly kind: 'entropy';
}

export function openEntropy(): EntropyHandle {
  return { kind: 'entropy' };
}

export class VirtioEntropy implements VirtioBackend {
  readonly info: VirtioDeviceInfo = {
    deviceType: VIRTIO_ID_ENTROPY,
    classCode: 0x00ff00, // what QEMU's virtio-rng-pci reports: "unclassified device, other"
    features: 0n, // §5.4.3: none defined
    queueSizes: [ENTROPY_QUEUE_SIZE],
    configSize: 0, // §5.4.4: none defined
  };

  private ctx: VirtioQueueContext | undefined;
  /** Bumped by activate and reset: a continuation scheduled for an older generation does nothing. */
  private generation = 0;
  private continuation: NodeJS.Immediate | undefined;
  private quiesced = false;

  constructor(readonly handle: EntropyHandle) {}

  configBytes(): Uint8Array {
    return new Uint8Array(0);
  }

  activate(ctx: VirtioQueueContext): void {
    this.stop();
    this.ctx = ctx;
  }

  queueNotified(index: number): void {
    // A continuation already pending will see the new chains; serving now would only break the turn budget.
    if (index !== ENTROPY_REQUESTQ || this.continuation) return;
    this.serve();
  }

  reset(): void {
    this.stop();
  }

  /** For a snapshot: the turn in progress ends here (filling a chain is synchronous: nothing is in flight). */
  quiesce(): void {
    this.quiesced = true;
    if (this.continuation) clearImmediate(this.continuation);
    this.continuation = undefined;
  }

  /** Serves again, including chains a cut-short turn left (its kick was not repeated). */
  resume(): void {
    this.quiesced = false;
    this.serve();
  }

  close(): void {
    this.stop();
  }

  private stop(): void {
    this.generation++;
    this.ctx = undefined;
    if (this.continuation) clearImmediate(this.continuation);
    this.continuation = undefined;
  }

  /** Fills available chains until the ring is empty or this turn's budget is spent. */
  private serve(): void {
    const ctx = this.ctx;
    const queue = ctx?.queues[ENTROPY_REQUESTQ];
    if (!ctx || !queue || this.quiesced) return;
    let chains = 0;
    let bytes = 0;
    try {
      while (chains < ENTROPY_TURN_CHAINS && bytes < ENTROPY_TURN_BYTES) {
        const chain = queue.popAvailable();
        if (chain === undefined) break;
        if (chain instanceof VirtqueueError) {
          this.fail(ctx, chains > 0, `requestq: ${chain.message}`);
          return;
        }
        // Zero-copy: the random bytes go straight into guest RAM; the readable part is never touched.
        const written = chain.forEachSpan('writable', (view) => void randomFillSync(view), 0, ENTROPY_MAX_REQUEST);
        queue.pushUsed(chain, written);
        chains++;
        bytes += written;
      }
    } catch (e) {
      // Validated chains cannot fault; if one does anyway, the device stops instead of the I/O thread.
      this.fail(ctx, chains > 0, `requestq: internal error: ${e instanceof Error ? e.message : String(e)}`);
      return;
    }
    if (chains > 0) ctx.interrupt(ENTROPY_REQUESTQ);
    if (chains === ENTROPY_TURN_CHAINS || bytes >= ENTROPY_TURN_BYTES) {
      const generation = this.generation;
      this.continuation = setImmediate(() => {
        this.continuation = undefined;
        if (generation === this.generation) this.serve();
      });
    }
  }

  private fail(ctx: VirtioQueueContext, pushed: boolean, reason: string): void {
    if (pushed) ctx.interrupt(ENTROPY_REQUESTQ); // the chains already used are the driver's: tell it
    ctx.needsReset(reason); // the runner resets this backend from inside this call
  }
}

/** virtio-rng (virtio 1.2 §5.4), fed from the host's getrandom. */
export const virtioEntropyModel = virtioPciModel<EntropyHandle>({
  kind: 'virtio-rng',
  summary: "virtio-rng: entropy from the host's getrandom",
  options: {},
  open: () => openEntropy(),
  backend: (handle) => new VirtioEntropy(handle),
});
