// The same test-guest ELFs on QEMU (microvm + KVM) and on Partita: same output, same exit status.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { guest, haveKvm, runPartita } from '../support/partita.js';
import { QEMU_MISSING, qemuAvailable, runOnQemu } from '../support/qemu.js';

const haveQemu = qemuAvailable();
const skip = !haveKvm ? 'no /dev/kvm' : !haveQemu ? QEMU_MISSING : false;

for (const format of ['pvh', 'mb'] as const) {
  test(`hello (${format}): identical output and status on QEMU and Partita`, { skip }, async () => {
    const cmdline = 'exit=9 from=parity';
    const [ours, theirs] = [
      await runPartita(['run', '--kernel', guest('hello', format), '--cmdline', cmdline]),
      await runOnQemu(guest('hello', format), { cmdline }),
    ];
    assert.equal(theirs.status, 19);
    assert.equal(ours.status, theirs.status);
    assert.equal(ours.stdout, theirs.output);
  });

  test(`exits (${format}): same lines and status`, { skip }, async () => {
    const [ours, theirs] = [
      await runPartita(['run', '--kernel', guest('exits', format), '--cmdline', 'count=5000']),
      await runOnQemu(guest('exits', format), { cmdline: 'count=5000' }),
    ];
    assert.equal(ours.status, 1);
    assert.equal(theirs.status, 1);
    assert.equal(ours.stdout, theirs.output);
  });

  test(`memory (${format}): both VMMs' RAM passes the patterns, above 4 GiB too`, { skip }, async () => {
    const [ours, theirs] = [
      await runPartita(['run', '--kernel', guest('memory', format), '--memory', '5G']),
      await runOnQemu(guest('memory', format), { memory: '5G' }),
    ];
    for (const [who, r] of [
      ['partita', { out: ours.stdout, status: ours.status }],
      ['qemu', { out: theirs.output, status: theirs.status }],
    ] as const) {
      assert.equal(r.status, 1, `${who}: ${r.out}`);
      assert.match(r.out, /memory: ok at 0x1000[0-9a-f]{5}\n/, `${who} tested above 4 GiB`);
      assert.match(r.out, /places tested, all ok\n/, who);
    }
  });
}

test('serial-echo: both echo the input taken by interrupt', { skip }, async () => {
  const theirs = await runOnQemu(guest('serial-echo'), { input: 'xyzq', inputAfter: 'ready\n' });
  let sent = false;
  const ours = await runPartita(['run', '--kernel', guest('serial-echo')], {
    keepStdinOpen: true,
    onStdout: (out, write) => {
      if (!sent && out.includes('ready\n')) {
        sent = true;
        write('xyzq');
      }
    },
  });
  for (const out of [theirs.output, ours.stdout])
    assert.match(out, /serial-echo: ready\nxyzq\nserial-echo: bye after [1-9]\d* interrupts\n/);
  assert.equal(ours.status, theirs.status);
});
