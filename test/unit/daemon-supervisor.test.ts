// Supervision with real child processes (the fake VMM, test/support/fake-vmm.ts, serves the real control
// channel and serial socket): a VMM killed behind the daemon's back is 'crashed' and the others keep running;
// a restarted daemon reattaches to its VMMs, but never to a process that merely has the recorded PID (reused
// PID: another start time) or that does not answer on the control socket (a foreign process), which it leaves
// alone.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { alive, startTestDaemon, until } from '../support/daemon.js';
import { STATE_FILE, isCleanExit, type VmmStateFile } from '../../src/daemon/supervisor.js';
import { processStartTime } from '../../src/daemon/proc.js';
import type { VmRecord } from '../../src/daemon/api-schemas.js';

test('clean and non-clean VMM exit statuses', () => {
  for (const s of [0, 1, 11, 127]) assert.equal(isCleanExit(s), true, String(s));
  for (const s of [2, 3, 4, 128 + 9, 128 + 15, 255]) assert.equal(isCleanExit(s), false, String(s));
});

test('a SIGKILLed VMM is crashed, its log kept; the other VM keeps running', async () => {
  const d = await startTestDaemon();
  try {
    const kernel = join(d.dataDir, 'k');
    writeFileSync(kernel, 'k');
    for (const name of ['one', 'two']) {
      await d.client.request('POST', '/api/vms', { name, kernel });
      await d.client.request('POST', `/api/vms/${name}/start`, {});
    }
    const running = async (name: string): Promise<VmRecord | false> => {
      const r = (await d.client.request<VmRecord>('GET', `/api/vms/${name}`)).body;
      return r.state === 'running' && r;
    };
    const one = await until('one running', () => running('one'));
    const two = await until('two running', () => running('two'));
    process.kill(one.pid!, 'SIGKILL');
    const crashed = await until('one crashed', async () => {
      const r = (await d.client.request<VmRecord>('GET', '/api/vms/one')).body;
      return r.state === 'crashed' && r;
    });
    assert.equal(crashed.exitStatus, 128 + 9);
    assert.match(crashed.message!, /SIGKILL/);
    assert.match(readFileSync(join(d.dataDir, 'vms', 'one', 'vmm.log'), 'utf8'), /VMM starting/);
    const still = (await d.client.request<VmRecord>('GET', '/api/vms/two')).body;
    assert.equal(still.state, 'running');
    assert.equal(still.pid, two.pid);
    assert.ok(alive(two.pid!));
    // A crashed VM starts again.
    assert.equal((await d.client.request('POST', '/api/vms/one/start', {})).status, 200);
    await until('one running again', () => running('one'));
  } finally {
    await d.destroy();
  }
});

test('a restarted daemon reattaches to its running VMMs, then stops them through the control channel', async () => {
  let d = await startTestDaemon();
  try {
    const kernel = join(d.dataDir, 'k');
    writeFileSync(kernel, 'k');
    await d.client.request('POST', '/api/vms', { name: 'keep', kernel });
    await d.client.request('POST', '/api/vms/keep/start', {});
    const before = await until('running', async () => {
      const r = (await d.client.request<VmRecord>('GET', '/api/vms/keep')).body;
      return r.state === 'running' && r;
    });
    await d.close(); // the daemon goes; its VMM stays (own process group)
    assert.ok(alive(before.pid!));
    d = await d.restart();
    assert.deepEqual(d.daemon.reattached, ['keep']);
    const after = (await d.client.request<VmRecord>('GET', '/api/vms/keep')).body;
    assert.equal(after.state, 'running');
    assert.equal(after.pid, before.pid);
    assert.equal((await d.client.request<VmRecord>('POST', '/api/vms/keep/pause')).body.state, 'paused');
    const stopped = (await d.client.request<VmRecord>('POST', '/api/vms/keep/stop', {})).body;
    assert.equal(stopped.state, 'stopped', JSON.stringify(stopped));
    // Not our child: the outcome comes from the status file the VMM wrote.
    assert.equal(stopped.exitStatus, 0);
    await until('the VMM gone', () => !alive(before.pid!));
  } finally {
    await d.destroy();
  }
});

test('a VMM still building its VM when the daemon restarts is taken back as starting, then running', async () => {
  process.env.FAKE_VMM_SLOW_MS = '3000';
  let d = await startTestDaemon();
  try {
    const kernel = join(d.dataDir, 'k');
    writeFileSync(kernel, 'k');
    await d.client.request('POST', '/api/vms', { name: 'slow', kernel });
    const started = (await d.client.request<VmRecord>('POST', '/api/vms/slow/start', {})).body;
    await d.close();
    d = await d.restart();
    assert.deepEqual(d.daemon.reattached, ['slow']);
    const r = (await d.client.request<VmRecord>('GET', '/api/vms/slow')).body;
    assert.ok(['starting', 'running'].includes(r.state), r.state); // 'running' only on a very slow machine
    assert.equal(r.pid, started.pid);
    await until(
      'running',
      async () => (await d.client.request<VmRecord>('GET', '/api/vms/slow')).body.state === 'running',
    );
  } finally {
    delete process.env.FAKE_VMM_SLOW_MS;
    await d.destroy();
  }
});

test('reattach refuses a reused PID and a process that does not answer, and never signals them', async () => {
  const d = await startTestDaemon();
  const bystander = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore' });
  try {
    const kernel = join(d.dataDir, 'k');
    writeFileSync(kernel, 'k');
    for (const name of ['reused', 'foreign', 'gone']) await d.client.request('POST', '/api/vms', { name, kernel });
    await d.close();
    const pid = bystander.pid!;
    const startTime = processStartTime(pid)!;
    const write = (name: string, files: Partial<VmmStateFile>): void => {
      const dir = join(d.dataDir, 'vms', name);
      const full: VmmStateFile = {
        pid,
        startTime,
        control: join(dir, 'control.sock'),
        serial: join(dir, 'serial.sock'),
        statusFile: join(dir, 'vmm-status.json'),
        ...files,
      };
      writeFileSync(join(dir, STATE_FILE), JSON.stringify(full));
      const record = JSON.parse(readFileSync(join(dir, 'vm.json'), 'utf8')) as VmRecord;
      writeFileSync(join(dir, 'vm.json'), JSON.stringify({ ...record, state: 'running', pid }));
    };
    write('reused', { startTime: String(Number(startTime) + 1) }); // same PID, another process
    write('foreign', {}); // the very process, but no control channel: not a VMM
    write('gone', { pid: 2 ** 22 + 11 });
    const again = await d.restart();
    try {
      assert.deepEqual(again.daemon.reattached, []);
      const why = Object.fromEntries(again.daemon.refused.map((r) => [r.name, r.why]));
      assert.match(why.reused, /another process/);
      assert.match(why.foreign, /not a VMM/);
      assert.match(why.gone, /gone/);
      for (const name of ['reused', 'foreign', 'gone']) {
        const r = (await again.client.request<VmRecord>('GET', `/api/vms/${name}`)).body;
        assert.equal(r.state, 'crashed', name);
        assert.equal(r.pid, undefined);
        assert.equal((await again.client.request('POST', `/api/vms/${name}/stop`, { kill: true })).status, 409);
      }
      assert.ok(alive(pid), 'the bystander must never be signalled');
    } finally {
      await again.destroy();
    }
  } finally {
    bystander.kill('SIGKILL');
  }
});
