// Kernels and initrds are read in chunks (readFileSync stops at 2 GiB): the chunk loop must return the file
// exactly, whatever the chunk size.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MAX_INPUT_FILE_BYTES, readWholeFile } from '../../src/host/input-file.js';

test('readWholeFile: chunked reads give back the file byte for byte', () => {
  const dir = mkdtempSync(join(tmpdir(), 'partita-input-file-'));
  try {
    const path = join(dir, 'f');
    const bytes = new Uint8Array(10_007).map((_, i) => (i * 7 + 3) & 0xff);
    writeFileSync(path, bytes);
    for (const chunk of [1, 7, 4096, 10_007, 1 << 20]) {
      assert.deepEqual(new Uint8Array(readWholeFile(path, bytes.length, chunk)), bytes, `chunk ${chunk}`);
    }
    // The file shrank after stat: what is there comes back, no garbage after it.
    truncateSync(path, 5000);
    assert.deepEqual(new Uint8Array(readWholeFile(path, bytes.length, 4096)), bytes.subarray(0, 5000));
    assert.throws(() => readWholeFile(path, MAX_INPUT_FILE_BYTES + 1), RangeError);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
