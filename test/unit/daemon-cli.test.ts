// The prlctl-style verbs (src/cli/verbs.ts) as a user runs them (bin/partita.js) against a daemon with the fake
// VMM: what they print, and one clear line with a non-zero status for no daemon, an unknown VM, a VM in the
// wrong state and bad input. Also the VMM's new `run` flags refusing bad combinations before any VM is built.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { partitaBin } from '../support/partita.js';
import { startTestDaemon, until } from '../support/daemon.js';
import type { VmRecord } from '../../src/daemon/api-schemas.js';

function partita(
  args: string[],
  onStdout?: (text: string, write: (s: string) => void) => void,
): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [partitaBin, ...args], {
      stdio: [onStdout ? 'pipe' : 'ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (b: Buffer) => {
      stdout += b.toString();
      onStdout?.(stdout, (s) => child.stdin!.write(s));
    });
    child.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
    child.on('error', reject);
    child.on('close', (status) => resolve({ status, stdout, stderr }));
  });
}

function oneLine(r: { stderr: string }, pattern: RegExp): void {
  const lines = r.stderr.trimEnd().split('\n');
  assert.equal(lines.length, 1, `one line expected, got: ${r.stderr}`);
  assert.match(lines[0], pattern);
}

test('verbs: create, list, start, status, set, stop, delete; one-line errors with a non-zero status', async () => {
  const d = await startTestDaemon();
  try {
    const s = ['--socket', d.daemon.socketPath];
    const kernel = join(d.dataDir, 'kernel.elf');
    writeFileSync(kernel, 'k');

    const none = await partita(['list', '--socket', join(d.dataDir, 'nobody.sock')]);
    assert.equal(none.status, 1);
    oneLine(none, /^partita: no daemon at .*nobody\.sock: start it with: partita serve$/);

    const created = await partita([
      'create',
      'web',
      '--kernel',
      kernel,
      '--cpus',
      '2',
      '--memory',
      '256M',
      '--disk',
      '1G',
      ...s,
    ]);
    assert.equal(created.status, 0, created.stderr);
    assert.match(created.stdout, /created 'web' \(2 vCPU, 256M\)/);

    const bad = await partita(['create', 'a..b', '--kernel', kernel, ...s]);
    assert.equal(bad.status, 2);
    oneLine(bad, /^partita: 'a\.\.b' contains '\.\.' \(at \/name\)$/);

    assert.equal((await partita(['list', ...s])).stdout.trim(), 'NAME  STATE  OS  CPUS  MEMORY  PID');
    assert.match((await partita(['list', '-a', ...s])).stdout, /web\s+stopped\s+linux\s+2\s+256M\s+-/);
    const json = JSON.parse((await partita(['list', '-a', '--json', ...s])).stdout) as VmRecord[];
    assert.equal(json[0].name, 'web');

    const unknown = await partita(['start', 'nope', ...s]);
    assert.equal(unknown.status, 1);
    oneLine(unknown, /^partita: no VM named 'nope'$/);

    const stopStopped = await partita(['stop', 'web', ...s]);
    assert.equal(stopStopped.status, 1);
    oneLine(stopStopped, /^partita: vm 'web' is stopped, not running$/);

    const started = await partita(['start', 'web', ...s]);
    assert.equal(started.status, 0, started.stderr);
    assert.match(started.stdout, /vm 'web' is running \(pid \d+\)/);
    const again = await partita(['start', 'web', ...s]);
    assert.equal(again.status, 1);
    oneLine(again, /^partita: vm 'web' is running: stop it first$/);
    const setRunning = await partita(['set', 'web', '--cpus', '1', ...s]);
    assert.equal(setRunning.status, 1);
    oneLine(setRunning, /stop it first/);
    const delRunning = await partita(['delete', 'web', ...s]);
    assert.equal(delRunning.status, 1);
    oneLine(delRunning, /stop it first/);
    const capture = await partita(['capture', 'web', join(d.dataDir, 'x.png'), ...s]);
    assert.equal(capture.status, 1);
    oneLine(capture, /no display/);
    assert.match((await partita(['status', 'web', ...s])).stdout, /vm 'web' running \(pid \d+\)/);
    // The console: the guest's output, our keys to it, Ctrl-] to leave (the VM keeps running).
    let sent = false;
    const con = await partita(['console', 'web', ...s], (text, write) => {
      if (!sent && text.includes('hello from the fake guest')) {
        sent = true;
        write('hi there');
      }
      if (text.includes('echo: hi there')) write('\x1d');
    });
    assert.equal(con.status, 0, con.stderr);
    assert.match(con.stdout, /hello from the fake guest with 2 vCPUs\n[^]*echo: hi there/);
    assert.match(con.stderr, /Ctrl-\] or Ctrl-A x leaves/);
    assert.match((await partita(['pause', 'web', ...s])).stdout, /vm 'web' is paused/);
    assert.match((await partita(['resume', 'web', ...s])).stdout, /vm 'web' is running/);
    assert.match((await partita(['stop', 'web', ...s])).stdout, /vm 'web' is stopped/);

    const set = await partita(['set', 'web', '--cpus', '4', '--device-add', 'rng', '--device-del', '0', ...s]);
    assert.equal(set.status, 0, set.stderr);
    assert.match(set.stdout, /4 vCPU, 256M, devices: 0:virtio-rng/);
    const outside = await partita(['set', 'web', '--device-add', 'disk=/etc/passwd', ...s]);
    assert.equal(outside.status, 2);
    oneLine(outside, /outside the VM's folder.*\(at \/addDevices\/0\/path\)$/);

    assert.match((await partita(['status', ...s])).stdout, /1 VMs, 0 running/);
    assert.equal((await partita(['delete', 'web', ...s])).status, 0);
    await until('gone', async () => (await d.client.request('GET', '/api/vms/web')).status === 404);
  } finally {
    await d.destroy();
  }
});

test('partita run: --serial unix: needs --serial-log, and --serial-log needs --serial unix:', async () => {
  const kernel = join(partitaBin, '..', '..', 'build', 'guests', 'hello.pvh.elf');
  const a = await partita(['run', '--kernel', kernel, '--serial', 'unix:/tmp/x.sock']);
  assert.equal(a.status, 2);
  oneLine(a, /--serial unix:PATH needs --serial-log FILE/);
  const b = await partita(['run', '--kernel', kernel, '--serial-log', '/tmp/x.log']);
  assert.equal(b.status, 2);
  oneLine(b, /--serial-log FILE goes with --serial unix:PATH only/);
});
