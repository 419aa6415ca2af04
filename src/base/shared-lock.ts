// A mutex in shared memory, so the same device state can be used from the vCPU thread that took an exit and
// from the I/O thread that feeds it input, without handing the exit to another thread.
// States: 0 unlocked, 1 locked, 2 locked with waiters (the classic futex mutex, Drepper's "Futexes are tricky").
export class SharedLock {
  private readonly word: Int32Array;

  /** `buffer` holds the lock word at `byteOffset` (4-byte aligned). */
  constructor(buffer: SharedArrayBuffer, byteOffset = 0) {
    this.word = new Int32Array(buffer, byteOffset, 1);
  }

  static readonly BYTES = 4;

  lock(): void {
    let c = Atomics.compareExchange(this.word, 0, 0, 1);
    if (c === 0) return;
    for (let spin = 0; spin < 100 && c !== 0; spin++) {
      c = Atomics.compareExchange(this.word, 0, 0, 1);
      if (c === 0) return;
    }
    if (c !== 2) c = Atomics.exchange(this.word, 0, 2);
    while (c !== 0) {
      Atomics.wait(this.word, 0, 2);
      c = Atomics.exchange(this.word, 0, 2);
    }
  }

  unlock(): void {
    if (Atomics.sub(this.word, 0, 1) !== 1) {
      Atomics.store(this.word, 0, 0);
      Atomics.notify(this.word, 0, 1);
    }
  }

  with<T>(fn: () => T): T {
    this.lock();
    try {
      return fn();
    } finally {
      this.unlock();
    }
  }
}
