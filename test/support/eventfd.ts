// Reads an eventfd's counter for a test: how often it was signalled since the last read (0 when it was not).
import { readSync } from 'node:fs';

export function drainEventfd(fd: number): number {
  const b = new BigUint64Array(1);
  try {
    readSync(fd, b);
  } catch {
    return 0; // EAGAIN: nothing signalled (the eventfds are non-blocking)
  }
  return Number(b[0]);
}
