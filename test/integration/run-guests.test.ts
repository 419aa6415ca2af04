// Boots the test guests (test/guests, built by scripts/build-guests.mjs) with the real `partita run` command.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { guest, haveKvm, isPvm, repoRoot, runPartita, skippedForKvm } from '../support/partita.js';

const skip = !haveKvm && 'no /dev/kvm on this machine';

for (const format of ['pvh', 'mb'] as const) {
  test(`hello (${format}) prints its greeting and exits with the guest's code`, { skip }, async () => {
    const r = await runPartita(['run', '--kernel', guest('hello', format), '--cmdline', 'exit=5 greeting=yes']);
    assert.equal(r.status, 11, `status (v=5 → 11); stderr: ${r.stderr}`);
    assert.match(r.stdout, /^Hello from a Partita test guest\n/);
    assert.match(r.stdout, new RegExp(`boot protocol: ${format === 'pvh' ? 'pvh' : 'multiboot'}\n`));
    if (format === 'pvh') assert.match(r.stdout, /cmdline: exit=5 greeting=yes\n/);
    else assert.match(r.stdout, /cmdline: \S*hello\.mb\.elf exit=5 greeting=yes\n/);
    assert.equal(r.stderr, '');
  });
}

test('memory: 128 GiB of lazily allocated RAM, patterns read back above 4 GiB', { skip }, async () => {
  const r = await runPartita(['run', '--kernel', guest('memory'), '--memory', '128G']);
  assert.equal(r.status, 1, `stderr: ${r.stderr}\nstdout: ${r.stdout}`);
  assert.match(r.stdout, /memmap: base=0x0000000100000000 size=0x0000001f40000000 type=1\n/);
  assert.match(r.stdout, /memory: ok at 0x1[0-9a-f]{8}\n/, 'a pattern above 4 GiB');
  assert.match(r.stdout, /memory: ok at 0x20[0-9a-f]{8}\n/, 'a pattern near the top of 128 GiB');
  assert.match(r.stdout, /memory: total RAM 131071 MiB, \d+ places tested, all ok\n/);
  assert.doesNotMatch(r.stdout, /FAIL/);
});

test('memory: small VM reports the memory map it was given', { skip }, async () => {
  const r = await runPartita(['run', '--kernel', guest('memory', 'mb'), '--memory', '64M']);
  assert.equal(r.status, 1, r.stderr);
  assert.match(r.stdout, /memmap: base=0x0000000000000000 size=0x000000000009fc00 type=1\n/);
  assert.match(r.stdout, /memmap: base=0x0000000000100000 size=0x0000000003f00000 type=1\n/);
  assert.match(r.stdout, /all ok/);
});

test('serial-echo: input reaches the guest through the UART receive interrupt', { skip }, async () => {
  let sent = false;
  const r = await runPartita(['run', '--kernel', guest('serial-echo')], {
    onStdout: (out, write) => {
      if (!sent && out.includes('serial-echo: ready\n')) {
        sent = true;
        write('abcq');
      }
    },
    keepStdinOpen: true,
  });
  assert.equal(r.status, 1, `stderr: ${r.stderr}\nstdout: ${r.stdout}`);
  assert.match(r.stdout, /serial-echo: ready\nabcq\nserial-echo: bye after [1-9]\d* interrupts\n/);
});

test('halt with interrupts disabled stops the VM with a register dump instead of hanging', { skip }, async () => {
  const r = await runPartita(['run', '--kernel', guest('halt')]);
  assert.equal(r.status, 3);
  assert.match(r.stdout, /halt: stopping with interrupts disabled/);
  assert.match(r.stderr, /halted with interrupts disabled/);
  assert.match(r.stderr, /RIP=[0-9a-f]{16} RFL=[0-9a-f]{8}/);
});

test('triple fault stops the VM with a clear message', { skip }, async () => {
  const r = await runPartita(['run', '--kernel', guest('triple-fault')]);
  assert.equal(r.status, 3);
  assert.match(r.stderr, /triple-faulted \(KVM_EXIT_SHUTDOWN\)/);
  assert.match(r.stderr, /CR0=/);
});

test('an instruction the CPU cannot run ends the VM cleanly', { skip }, async () => {
  const r = await runPartita(['run', '--kernel', guest('emulation-failure')]);
  assert.match(r.stdout, /emulation-failure: running cmpxchg16b/);
  if (isPvm) {
    assert.equal(r.status, 3);
    assert.match(r.stderr, /KVM internal error: KVM's instruction emulator could not run a guest instruction/);
    assert.match(r.stderr, /Code at RIP \(guest-physical 0x[0-9a-f]+\): f0 48 0f c7/, 'lock cmpxchg16b bytes');
  } else {
    assert.equal(r.status, 1, 'hardware KVM runs cmpxchg16b natively');
    assert.match(r.stdout, /instruction ran natively/);
  }
});

test('exits: many port writes, then a clean exit', { skip }, async () => {
  const r = await runPartita(['run', '--kernel', guest('exits'), '--cmdline', 'count=20000']);
  assert.equal(r.status, 1, r.stderr);
  assert.match(r.stdout, /exits: 20000 port writes\nexits: done\n/);
});

test('--serial file:PATH sends the console to a file', { skip }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'partita-serial-'));
  try {
    const path = join(dir, 'console.log');
    const r = await runPartita(['run', '--kernel', guest('hello'), '--serial', `file:${path}`]);
    assert.equal(r.status, 1);
    assert.equal(r.stdout, '');
    assert.match(readFileSync(path, 'utf8'), /^Hello from a Partita test guest\n/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test(
  'several vCPUs: only the BSP runs the kernel, the APs stay parked (same output as one vCPU)',
  { skip },
  async () => {
    // hello never sends INIT/SIPI: an AP that ran anyway would print a second greeting or stop the VM. (That the
    // APs do start once a guest sends INIT/SIPI, and not before, is checked by smp.test.ts.)
    const args = ['run', '--kernel', guest('hello'), '--cmdline', 'exit=3'];
    const one = await runPartita(args);
    const four = await runPartita([...args, '--cpus', '4']);
    assert.equal(four.status, 7, four.stderr);
    assert.equal(four.stderr, '');
    assert.match(four.stdout, /^Hello from a Partita test guest\n/);
    assert.equal(four.stdout, one.stdout);
  },
);

test('SIGTERM stops a running VM with status 128+15', { skip }, async () => {
  // serial-echo waits for input forever: only the signal can end it.
  const r = await runPartita(['run', '--kernel', guest('serial-echo')], {
    keepStdinOpen: true,
    stopWhen: (out) => out.includes('serial-echo: ready\n'),
    stopSignal: 'SIGTERM',
  });
  assert.equal(r.stoppedEarly, true, 'the guest got ready');
  assert.equal(r.status, 143, r.stderr);
  assert.match(r.stderr, /stopped by host signal 15/);
});

test('SIGQUIT stops a running VM and first shows where the guest was (registers, code at RIP)', { skip }, async () => {
  const r = await runPartita(['run', '--kernel', guest('serial-echo')], {
    keepStdinOpen: true,
    stopWhen: (out) => out.includes('serial-echo: ready\n'),
    stopSignal: 'SIGQUIT',
  });
  assert.equal(r.stoppedEarly, true, 'the guest got ready');
  assert.equal(r.status, 131, r.stderr);
  assert.match(r.stderr, /SIGQUIT: vCPU 0\n/);
  assert.match(r.stderr, /RIP=[0-9a-f]{16}/);
  assert.match(r.stderr, /stopped by host signal 3/);
});

test('bad command lines give one clear line and a non-zero status', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'partita-cli-'));
  const junk = join(dir, 'junk.bin');
  writeFileSync(junk, 'this is not a kernel at all, just text, long enough to be read'.repeat(10));
  const cases: [string[], RegExp][] = [
    [['run', '--kernel', guest('hello'), '--frobnicate'], /^partita: unknown option '--frobnicate'/],
    [['run', '--kernel', guest('hello'), '--memory', 'lots'], /^partita: --memory: "lots" is not a size/],
    [['run', '--kernel', guest('hello'), '--memory', '2T'], /^partita: --memory 2T is larger than the 1T limit/],
    [['run', '--kernel', guest('hello'), '--memory', '1K'], /^partita: --memory 1K is smaller than/],
    [['run'], /^partita: run: --kernel FILE, --bios \[FILE\] or --spec FILE is required/],
    [['run', '--kernel', join(dir, 'missing.elf')], /^partita: cannot read kernel '.*missing\.elf': no such file/],
    [['run', '--kernel', junk], /^partita: .*junk\.bin.*not a multiboot or PVH ELF kernel/],
    [['run', '--kernel', guest('hello'), '--cpus', 'many'], /^partita: --cpus 'many' is not a whole number/],
    [['run', '--kernel', guest('hello'), '--cpus', '65'], /^partita: --cpus 65 is more than Partita's limit of 64/],
    [['run', '--kernel', guest('hello'), '--cpus', '0'], /^partita: --cpus must be a whole number from 1 to 64/],
    [
      ['run', '--kernel', guest('hello'), '--serial', 'telnet'],
      /^partita: --serial 'telnet' is not stdio, none, file:PATH or unix:PATH/,
    ],
    [['run', '--kernel', guest('hello'), '--initrd', join(dir, 'nope')], /^partita: cannot read initrd/],
    [['fly'], /^partita: unknown command 'fly'/],
  ];
  try {
    for (const [args, message] of cases) {
      await t.test(args.slice(1).join(' ').replace(repoRoot, '.').replace(dir, '$TMP'), async (st) => {
        const r = await runPartita(args);
        if (skippedForKvm(st, r)) return;
        assert.equal(r.status, 2, `${args.join(' ')}: status ${r.status}, stderr ${r.stderr}`);
        assert.match(r.stderr, message, args.join(' '));
        assert.equal(r.stderr.trim().split('\n').length, 1, `one line for ${args.join(' ')}: ${r.stderr}`);
      });
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
