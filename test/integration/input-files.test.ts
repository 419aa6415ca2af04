// Kernels and initrds too large to load are one clear line with status 2 (they used to end in Node's
// ERR_FS_FILE_TOO_LARGE stack trace, status 1). The files are sparse: nothing is read before the refusal,
// which comes before /dev/kvm is opened, so these run on any machine.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { guest, runPartita } from '../support/partita.js';

const GIB = 1024 ** 3;

function sparse(dir: string, name: string, bytes: number): string {
  const path = join(dir, name);
  writeFileSync(path, '');
  truncateSync(path, bytes);
  return path;
}

function assertOneLine(r: { status: number | null; stderr: string }, pattern: RegExp): void {
  assert.equal(r.status, 2, r.stderr);
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, `one line: ${r.stderr}`);
  assert.match(lines[0], pattern);
  assert.doesNotMatch(r.stderr, /ERR_FS_FILE_TOO_LARGE|\n\s+at /, 'no stack trace');
}

test('a 3 GiB kernel or initrd: one line, status 2, no stack trace', { timeout: 60_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'partita-input-files-'));
  try {
    const big = sparse(dir, 'big.img', 3 * GIB);
    assertOneLine(
      await runPartita(['run', '--kernel', big]),
      /^partita: kernel '.*big\.img' is 3G, larger than the guest's 512M of RAM \(memory\): it cannot be loaded$/,
    );
    assertOneLine(
      await runPartita(['run', '--kernel', guest('hello'), '--initrd', big]),
      /^partita: initrd '.*big\.img' is 3G, larger than the guest's 512M of RAM/,
    );
    // A bad --memory is named as such, not measured against.
    assertOneLine(
      await runPartita(['run', '--kernel', big, '--memory', '1K']),
      /^partita: --memory 1K is smaller than the 2M minimum$/,
    );
    // More RAM than a buffer can hold: the named limit, still before anything is read.
    const huge = sparse(dir, 'huge.img', 5 * GIB);
    assertOneLine(
      await runPartita(['run', '--kernel', guest('hello'), '--initrd', huge, '--memory', '8G']),
      /^partita: initrd '.*huge\.img' is 5G, more than the 4G limit$/,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
