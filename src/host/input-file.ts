// Reading a kernel or initrd whole. readFileSync refuses files of 2 GiB and more (ERR_FS_FILE_TOO_LARGE), so
// files are read in chunks into one buffer; what one buffer can hold is the hard limit, and the builder also
// refuses a file larger than guest RAM (it could never be loaded) before reading anything.
import { constants } from 'node:buffer';
import { closeSync, openSync, readSync } from 'node:fs';

/** The largest file that can be read into one buffer (4 GiB on 64-bit Node 20). */
export const MAX_INPUT_FILE_BYTES = constants.MAX_LENGTH;

/** Bytes per read(2): well under the 2 GiB a single read may transfer. */
export const READ_CHUNK_BYTES = 64 * 1024 * 1024;

/**
 * Reads `size` bytes of `path` (its size as stat saw it) into one buffer, `chunkBytes` at a time. A file that
 * shrank meanwhile comes back shorter; one that grew is cut at `size`.
 */
export function readWholeFile(path: string, size: number, chunkBytes = READ_CHUNK_BYTES): Uint8Array {
  if (!Number.isSafeInteger(size) || size < 0 || size > MAX_INPUT_FILE_BYTES)
    throw new RangeError(`cannot read ${size} bytes into one buffer (at most ${MAX_INPUT_FILE_BYTES})`);
  const out = Buffer.allocUnsafe(size);
  const fd = openSync(path, 'r');
  try {
    let done = 0;
    while (done < size) {
      const n = readSync(fd, out, done, Math.min(chunkBytes, size - done), done);
      if (n === 0) break;
      done += n;
    }
    return done === size ? out : out.subarray(0, done);
  } finally {
    closeSync(fd);
  }
}
