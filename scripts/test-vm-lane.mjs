#!/usr/bin/env node
// `npm run test:vm`: the tests that boot VMs need a KVM. With a usable /dev/kvm they run in `npm test`'s main
// suite. Without one (a machine whose kernel is itself a KVM guest that cannot nest, as on this project's
// developer and CI machines) they would only say SKIPPED there; this runs the VM lane — real firmware on
// Partita's PC (SeaBIOS → GRUB from CD, AHCI disk and virtio-blk; iPXE; guest resets), the daemon with real VMs,
// the web UI driving a VM's console and screen, and the virtio tablet fed by RFB — inside a QEMU VM whose emulated CPU
// has AMD-V (scripts/nested-kvm.mjs): there they meet a real KVM (kvm_amd), slowly, and pass or fail on what the
// guests did. QEMU comparisons stay off in there (QEMU inside emulated nesting is far too slow).
//
// PARTITA_NO_NESTED=1 skips the lane (the VM tests then stay SKIPPED). A machine that cannot run the nested VM
// (no QEMU, no package lists to fetch its kernel from) skips it with the reason; a test that fails in it fails
// the lane.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { clearTimeout, setTimeout } from 'node:timers';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const LANE = ['firmware-pc', 'ps2-keyboard', 'virtio-input', 'daemon', 'ui'].map(
  (name) => `dist/test/integration/${name}.test.js`,
);
/** Hang guard of the whole lane: the nested VM is killed, and the lane fails, after this. */
const GUARD_MS = 45 * 60_000;

/** nested-kvm.mjs's status when this machine cannot run the nested VM (it printed why). */
const CANNOT_NEST = 75;
const say = (line) => process.stderr.write(`partita: VM lane: ${line}\n`);

if (existsSync('/dev/kvm')) {
  say('this machine has /dev/kvm: the VM tests ran in the main suite on it');
  process.exit(0);
}
if (process.env.PARTITA_NO_NESTED === '1') {
  say('SKIPPED (PARTITA_NO_NESTED=1): without /dev/kvm the VM tests above were skipped, not passed');
  process.exit(0);
}
if (spawnSync('qemu-system-x86_64', ['--version'], { stdio: 'ignore' }).error) {
  say('SKIPPED: no /dev/kvm and no QEMU to nest one in (sudo apt-get install qemu-system-x86)');
  process.exit(0);
}

say(`no /dev/kvm here: running ${LANE.length} VM test files on a nested KVM inside QEMU (takes minutes)`);
const started = Date.now();
const lane = spawn(
  process.execPath,
  [join(root, 'scripts', 'nested-kvm.mjs'), 'node', '--test', '--test-concurrency=1', ...LANE],
  { cwd: root, stdio: ['ignore', 'inherit', 'inherit'] },
);
const guard = setTimeout(() => {
  say(`hang guard: still running after ${GUARD_MS / 60_000} minutes; stopping it`);
  lane.kill('SIGTERM'); // nested-kvm.mjs takes its QEMU down with it
}, GUARD_MS);
lane.on('close', (status) => {
  clearTimeout(guard);
  const minutes = ((Date.now() - started) / 60_000).toFixed(1);
  if (status === CANNOT_NEST) {
    say(`SKIPPED: the nested VM could not be prepared (see the line above); ${minutes} min`);
    process.exit(0);
  }
  say(status === 0 ? `passed in ${minutes} min` : `FAILED (status ${status}) after ${minutes} min`);
  process.exit(status ?? 1);
});
