// Writes all of `bytes` to a file descriptor, for device output that must not be lost or reordered (the serial
// console): retries short writes and a momentarily full non-blocking terminal.
import { writeSync } from 'node:fs';

export function writeAll(fd: number, bytes: Uint8Array): void {
  let done = 0;
  while (done < bytes.length) {
    try {
      done += writeSync(fd, bytes, done, bytes.length - done);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EAGAIN') continue; // a non-blocking terminal that is momentarily full
      if (code === 'EPIPE') return; // nobody reads the serial output any more: drop it, keep the guest running
      throw e;
    }
  }
}
