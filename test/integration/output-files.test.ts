// --serial file:PATH and --console PATH never truncate, and never write into a disk image: not one of this VM's
// disks, not one a running VM holds. Refusals are one line with status 2, and the image keeps its bytes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { guest, haveKvm, runPartita, type RunResult } from '../support/partita.js';
import { holdFileLock } from '../support/file-lock.js';

const skip = !haveKvm && 'no /dev/kvm';

function scratch(): { dir: string; image: string; hash: () => string; done: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'partita-output-files-'));
  const image = join(dir, 'disk.img');
  const bytes = new Uint8Array(1 << 20);
  for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 7 + 1) & 0xff;
  writeFileSync(image, bytes);
  return {
    dir,
    image,
    hash: () => createHash('sha256').update(readFileSync(image)).digest('hex'),
    done: () => rmSync(dir, { recursive: true, force: true }),
  };
}

function assertRefused(r: RunResult, pattern: RegExp, what: string): void {
  assert.equal(r.status, 2, `${what}: ${r.stderr}`);
  assert.equal(r.stderr.trim().split('\n').length, 1, `${what}: one line, got ${r.stderr}`);
  assert.match(r.stderr, pattern, what);
  assert.equal(r.stdout, '', `${what}: the guest never ran`);
}

// These two are refused before /dev/kvm is opened: they run on any machine.
test('--serial file: on a disk image of the same VM is refused, the image untouched', async () => {
  const s = scratch();
  try {
    const before = s.hash();
    const r = await runPartita(['run', '--kernel', guest('hello'), '--disk', s.image, '--serial', `file:${s.image}`]);
    assertRefused(r, /^partita: --serial: '.*disk\.img' is a disk image of this VM/, '--disk A --serial file:A');
    assert.equal(s.hash(), before);
  } finally {
    s.done();
  }
});

test('--serial file: on an image another VM holds (its flock) is refused, the image untouched', async () => {
  const s = scratch();
  const before = s.hash();
  const holder = await holdFileLock(s.image);
  try {
    const r = await runPartita(['run', '--kernel', guest('hello'), '--serial', `file:${s.image}`]);
    assertRefused(r, /^partita: --serial: '.*disk\.img' is locked by a running VM/, '--serial file:A (held)');
    assert.equal(s.hash(), before);
  } finally {
    await holder.release();
    s.done();
  }
});

test('a running VM holds image A: --console A and --serial file:A of a second VM are refused', { skip }, async () => {
  const s = scratch();
  try {
    const before = s.hash();
    // VM 1 holds the image while it waits on its serial input (the echo guest runs until it reads 'q').
    let sendQuit: (() => void) | undefined;
    const first = runPartita(['run', '--kernel', guest('serial-echo'), '--disk', s.image], {
      keepStdinOpen: true,
      onStdout: (text, write) => {
        if (!sendQuit && text.length > 0) sendQuit = () => write('q');
      },
    });
    const deadline = Date.now() + 30_000;
    while (!sendQuit && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    assert.ok(sendQuit, 'the first VM started');
    try {
      assertRefused(
        await runPartita(['run', '--kernel', guest('hello'), '--console', s.image]),
        /^partita: console: '.*disk\.img' is locked by a running VM/,
        '--console A',
      );
      assertRefused(
        await runPartita(['run', '--kernel', guest('hello'), '--serial', `file:${s.image}`]),
        /^partita: --serial: '.*disk\.img' is locked by a running VM/,
        '--serial file:A',
      );
      assert.equal(s.hash(), before, "the first VM's image is untouched");
    } finally {
      sendQuit!();
      await first; // a hang would reject here (the harness's hang guard)
    }
  } finally {
    s.done();
  }
});

test('--disk A --console A in one VM is refused, the image untouched', { skip }, async () => {
  const s = scratch();
  try {
    const before = s.hash();
    assertRefused(
      await runPartita(['run', '--kernel', guest('hello'), '--disk', s.image, '--console', s.image]),
      /^partita: console: '.*disk\.img' is a disk image of this VM/,
      '--disk A --console A',
    );
    assert.equal(s.hash(), before);
  } finally {
    s.done();
  }
});

test('--serial file: appends to an existing log instead of truncating it', { skip }, async () => {
  const s = scratch();
  try {
    const log = join(s.dir, 'serial.log');
    writeFileSync(log, 'an earlier run\n');
    const r = await runPartita(['run', '--kernel', guest('hello'), '--serial', `file:${log}`]);
    assert.equal(r.status, 1, r.stderr);
    assert.match(readFileSync(log, 'utf8'), /^an earlier run\nHello from a Partita test guest\n/);
  } finally {
    s.done();
  }
});
