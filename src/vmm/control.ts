// Run state shared by every thread of one VM (in a SharedArrayBuffer): running / paused / stopping, why it
// stopped, and the threads to kick out of KVM_RUN when that changes. Any thread may stop or pause the VM.
import { native } from '../native/index.js';

export type StopKind =
  | 'guest-exit' // the guest wrote to the debug-exit port
  | 'poweroff'
  | 'reset'
  | 'triple-fault'
  | 'emulation-failure'
  | 'internal-error'
  | 'fail-entry'
  | 'unknown-exit'
  | 'halted'
  | 'system-event'
  | 'signal'
  | 'user-quit'
  | 'error';

const KINDS: readonly StopKind[] = [
  'guest-exit',
  'poweroff',
  'reset',
  'triple-fault',
  'emulation-failure',
  'internal-error',
  'fail-entry',
  'unknown-exit',
  'halted',
  'system-event',
  'signal',
  'user-quit',
  'error',
];

export interface StopReason {
  readonly kind: StopKind;
  /** The process exit status this stop maps to (see README, "Exit status"). */
  readonly status: number;
  readonly message: string;
}

const STATE = 0; // 0 running, 1 stopping (the reason is being written), 2 stopping (the reason is readable)
const STATE_CLAIMED = 1;
const STATE_STOPPED = 2;
const STATUS = 1;
const KIND = 2;
const PAUSED = 3; // 0 running, 1 paused
const MESSAGE_LENGTH = 4;
const TARGET_COUNT = 5;
/** Exits handled in userspace, by kind (what --stats prints): indexes into VmControl.exitCounters. */
export const EXIT_COUNT_PIO = 0;
export const EXIT_COUNT_MMIO = 1;
export const EXIT_COUNT_OTHER = 2;
const EXIT_COUNTERS_AT = 8; // header word of the first counter
const HEADER_INTS = 16;
const MAX_TARGETS = 1024;
const MESSAGE_BYTES = 16384;

export class VmControl {
  private readonly ints: Int32Array;
  private readonly targets: BigUint64Array; // pairs: pthread_t, address of kvm_run.immediate_exit (0 = none)
  private readonly message: Uint8Array;
  /** Counters any exit-handling thread bumps with Atomics.add (indexes EXIT_COUNT_*); a view of them only. */
  readonly exitCounters: Int32Array;

  constructor(readonly buffer: SharedArrayBuffer = VmControl.createBuffer()) {
    this.ints = new Int32Array(buffer, 0, HEADER_INTS);
    this.exitCounters = new Int32Array(buffer, EXIT_COUNTERS_AT * 4, 3);
    this.targets = new BigUint64Array(buffer, HEADER_INTS * 4, MAX_TARGETS * 2);
    this.message = new Uint8Array(buffer, HEADER_INTS * 4 + MAX_TARGETS * 16, MESSAGE_BYTES);
  }

  exitCounts(): { pio: number; mmio: number; other: number } {
    return {
      pio: Atomics.load(this.exitCounters, EXIT_COUNT_PIO),
      mmio: Atomics.load(this.exitCounters, EXIT_COUNT_MMIO),
      other: Atomics.load(this.exitCounters, EXIT_COUNT_OTHER),
    };
  }

  static createBuffer(): SharedArrayBuffer {
    return new SharedArrayBuffer(HEADER_INTS * 4 + MAX_TARGETS * 16 + MESSAGE_BYTES);
  }

  get stopping(): boolean {
    return this.ints[STATE] !== 0;
  }

  get paused(): boolean {
    return Atomics.load(this.ints, PAUSED) !== 0;
  }

  /** Registers a thread that runs a vCPU, so stop/pause can kick it out of KVM_RUN. */
  addKickTarget(thread: bigint, immediateExitAddress: bigint): void {
    const i = Atomics.add(this.ints, TARGET_COUNT, 1);
    if (i >= MAX_TARGETS) throw new Error('too many vCPU threads');
    this.targets[2 * i] = thread;
    this.targets[2 * i + 1] = immediateExitAddress;
  }

  kickAll(): void {
    const n = Math.min(Atomics.load(this.ints, TARGET_COUNT), MAX_TARGETS);
    for (let i = 0; i < n; i++) native.kick(this.targets[2 * i], this.targets[2 * i + 1]);
  }

  /** Stops the VM for `reason` unless it is already stopping; returns the reason that won. */
  stop(reason: StopReason): StopReason {
    if (Atomics.compareExchange(this.ints, STATE, 0, STATE_CLAIMED) === 0) {
      const bytes = new TextEncoder().encode(reason.message).subarray(0, MESSAGE_BYTES);
      this.message.set(bytes);
      Atomics.store(this.ints, MESSAGE_LENGTH, bytes.length);
      Atomics.store(this.ints, STATUS, reason.status);
      Atomics.store(this.ints, KIND, KINDS.indexOf(reason.kind));
      // Threads that saw `stopping` may already be in reason(): they wait for this.
      Atomics.store(this.ints, STATE, STATE_STOPPED);
      Atomics.notify(this.ints, STATE);
      this.resume();
      this.kickAll();
      return reason;
    }
    return this.reason();
  }

  /**
   * After a guest-initiated reset (kind 'reset' or 'triple-fault') that the machine turns into a reboot: clears the
   * stop so the vCPUs run again. Returns false, changing nothing, when the VM is stopping for another reason.
   */
  restart(): boolean {
    if (Atomics.load(this.ints, STATE) !== STATE_STOPPED) return false;
    const kind = KINDS[Atomics.load(this.ints, KIND)];
    if (kind !== 'reset' && kind !== 'triple-fault') return false;
    return Atomics.compareExchange(this.ints, STATE, STATE_STOPPED, 0) === STATE_STOPPED;
  }

  fault(message: string, status: number, kind: StopKind = 'error'): StopReason {
    return this.stop({ kind, status, message });
  }

  reason(): StopReason {
    while (Atomics.load(this.ints, STATE) === STATE_CLAIMED) Atomics.wait(this.ints, STATE, STATE_CLAIMED, 10);
    const len = Atomics.load(this.ints, MESSAGE_LENGTH);
    return {
      kind: KINDS[Atomics.load(this.ints, KIND)] ?? 'error',
      status: Atomics.load(this.ints, STATUS),
      message: new TextDecoder().decode(this.message.slice(0, len)),
    };
  }

  pause(): void {
    if (this.stopping) return;
    Atomics.store(this.ints, PAUSED, 1);
    this.kickAll();
  }

  resume(): void {
    Atomics.store(this.ints, PAUSED, 0);
    Atomics.notify(this.ints, PAUSED);
  }

  /** Blocks the calling vCPU thread while the VM is paused (returns at once when it is not). */
  waitWhilePaused(): void {
    while (Atomics.load(this.ints, PAUSED) !== 0 && !this.stopping) Atomics.wait(this.ints, PAUSED, 1, 1000);
  }

  /** For event-loop threads: resolves when the VM is no longer paused. */
  async whenResumed(): Promise<void> {
    while (Atomics.load(this.ints, PAUSED) !== 0 && !this.stopping) {
      const w = Atomics.waitAsync(this.ints, PAUSED, 1, 1000);
      if (w.async) await w.value;
    }
  }
}
