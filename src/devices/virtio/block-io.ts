// The I/O thread of one disk: pwritev/fdatasync run back to back on a native thread (see partita_native.c,
// "block I/O thread"), in submission order, straight from guest RAM; completions come back to the VM's I/O
// thread in batches. Used by virtio-blk (block.ts) for writes and flushes.
import { native } from '../../native/index.js';

export const IO_WRITE = 1;
export const IO_SYNC = 2;

/** Completion: bytes written, 0 (sync), or -errno. */
export type IoCallback = (result: number) => void;

export class BlockIoThread {
  private readonly handle: bigint;
  private nextId = 1;
  private readonly callbacks = new Map<number, IoCallback>();
  private readonly completions = new Float64Array(2 * 256);

  constructor() {
    const h = native.ioThreadStart(() => this.reap());
    if (typeof h === 'number') throw new Error(`cannot start a block I/O thread: errno ${-h}`);
    this.handle = h;
  }

  /** Queues one operation; returns 0, or -errno when it could not be queued (then `done` is never called). */
  submit(fd: number, op: number, offset: number, views: readonly Uint8Array[], done: IoCallback): number {
    const id = this.nextId++;
    const r = native.ioSubmit(this.handle, id, fd, op, offset, views);
    if (r < 0) return r;
    // Pending I/O keeps the event loop alive (its completions are still to come); an idle disk does not.
    if (this.callbacks.size === 0) native.ioKeepAlive(this.handle, true);
    this.callbacks.set(id, done);
    return 0;
  }

  private reap(): void {
    for (;;) {
      const n = native.ioReap(this.handle, this.completions);
      if (n <= 0) {
        if (this.callbacks.size === 0) native.ioKeepAlive(this.handle, false);
        return;
      }
      for (let i = 0; i < n; i++) {
        const id = this.completions[2 * i];
        const done = this.callbacks.get(id);
        this.callbacks.delete(id);
        done?.(this.completions[2 * i + 1]);
      }
    }
  }
}
