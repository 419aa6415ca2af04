// The host side of Partita's virtio devices seen from the command line: disk image locking between VMs, clear
// errors for bad device options, and the exit path of virtio kicks (ioeventfd, not userspace exits).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync, readFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { guest, haveKvm, runPartita } from '../support/partita.js';

const skip = !haveKvm && 'no /dev/kvm';

function scratch(): { dir: string; image: string; done: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'partita-virtio-host-'));
  const image = join(dir, 'disk.img');
  const bytes = new Uint8Array(1 << 20);
  for (let i = 0; i < 512; i++) bytes[i] = (i * 3) & 0xff;
  writeFileSync(image, bytes);
  return { dir, image, done: () => rmSync(dir, { recursive: true, force: true }) };
}

test('two VMs on one image: the second gets a clear "in use" error and the first is untouched', { skip }, async () => {
  const s = scratch();
  try {
    // VM 1 holds the image while it waits on its serial input (the echo guest runs until it reads 'q').
    let sendQuit: (() => void) | undefined;
    let ready!: () => void;
    const isReady = new Promise<void>((resolve) => (ready = resolve));
    const first = runPartita(['run', '--kernel', guest('serial-echo'), '--disk', s.image], {
      keepStdinOpen: true,
      onStdout: (text, write) => {
        if (!sendQuit && text.includes('serial-echo: ready\n')) {
          sendQuit = () => write('q');
          ready();
        }
      },
    });
    first.catch(() => undefined); // awaited below (a hang guard rejects there, with the output)
    await Promise.race([
      isReady,
      first.then((r) => {
        if (!sendQuit)
          assert.fail(`the first VM ended before it was ready: status ${r.status}\n${r.stdout}${r.stderr}`);
      }),
    ]);

    const second = await runPartita(['run', '--kernel', guest('hello'), '--disk', s.image]);
    assert.equal(second.status, 2, `second VM: ${second.stderr}`);
    assert.match(second.stderr, /disk image '.*disk\.img' is in use by another VM/);
    assert.equal(second.stderr.trim().split('\n').length, 1, 'one line');

    const readOnly = await runPartita(['run', '--kernel', guest('hello'), '--disk', `${s.image},readonly`]);
    assert.equal(readOnly.status, 2, 'a read-only open is refused too while a VM writes the image');
    assert.match(readOnly.stderr, /in use/);

    sendQuit!();
    const r1 = await first;
    assert.equal(r1.status, 1, `the first VM ends when it reads 'q': ${r1.stderr}`);
    assert.equal(readFileSync(s.image)[3], 9, 'the image is intact');

    // Once the first VM is gone the image is free again.
    const third = await runPartita(['run', '--kernel', guest('hello'), '--disk', s.image]);
    assert.notEqual(third.status, 2, third.stderr);
  } finally {
    s.done();
  }
});

test('bad device options and missing images are one clear line with status 2', { skip }, async () => {
  const s = scratch();
  try {
    const dir = join(s.dir, 'adir');
    mkdirSync(dir);
    const odd = join(s.dir, 'odd.img');
    writeFileSync(odd, new Uint8Array(1000));
    const cases: [string[], RegExp][] = [
      [['--disk', join(s.dir, 'missing.img')], /missing\.img/],
      [['--disk', dir], /adir/],
      [['--disk', odd], /512/],
      [['--disk', `${s.image},bogus`], /'bogus'/],
      [['--disk', s.image, '--disk', `${s.image},readonly`], /is given twice/],
      [['--net', 'bridge=br0'], /expected user, tap=NAME or socket=PATH/],
      [['--net', `socket=${join(s.dir, 'nobody.sock')}`], /nobody\.sock/],
      [['--net', 'socket=/x,mac=01:00:5e:00:00:01'], /mac|MAC/],
      [['--console', join(s.dir, 'no', 'such', 'dir', 'out')], /no[/\\]such/],
    ];
    for (const [args, message] of cases) {
      const r = await runPartita(['run', '--kernel', guest('hello'), ...args]);
      assert.equal(r.status, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, message, args.join(' '));
      assert.equal(r.stderr.trim().split('\n').length, 1, `${args.join(' ')}: one line, got ${r.stderr}`);
      assert.equal(r.stdout, '', 'the guest never ran');
    }
  } finally {
    s.done();
  }
});

test('virtio-blk guest: every queue kick goes through the ioeventfd, none exits to userspace', { skip }, async () => {
  const s = scratch();
  try {
    const r = await runPartita([
      'run',
      '--kernel',
      guest('virtio-blk'),
      '--disk',
      `${s.image},serial=EXITS`,
      '--stats',
    ]);
    assert.equal(r.status, 1, `${r.stdout}\n${r.stderr}`);
    assert.match(r.stdout, /blk: ok/);
    const m = /virtio-blk0: (\d+) ioeventfd wake-ups, (\d+) queue notifications by exit/.exec(r.stderr);
    assert.ok(m, r.stderr);
    assert.ok(Number(m[1]) >= 5, `the backend was woken through its ioeventfd (${m[1]} times)`);
    assert.equal(Number(m[2]), 0, 'no queue notification reached userspace as an MMIO exit');
    const exits = /exits to userspace: (\d+) port I\/O, (\d+) MMIO/.exec(r.stderr);
    assert.ok(exits);
  } finally {
    s.done();
  }
});
