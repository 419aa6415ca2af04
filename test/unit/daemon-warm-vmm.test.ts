// The warm VMM (src/daemon/warm-vmm.ts, src/cli/vmm-standby.ts): a start is handed to the standby process (the
// fake VMM speaks the real standby protocol with the real hand-off code; the last case uses the real CLI), which
// is replaced after use and killed when the daemon closes; a standby that died or does not answer means a cold
// start; a handed-off VMM writes its stderr to vmm.log, lives in its own process group, outlives the daemon
// (even a SIGKILLed one) and is reattached by a restarted daemon.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { alive, startTestDaemon, type TestDaemon, until } from '../support/daemon.js';
import { DaemonClient } from '../../src/cli/daemon-client.js';
import { defaultVmmCommand, lastLogLine } from '../../src/daemon/supervisor.js';
import type { VmRecord } from '../../src/daemon/api-schemas.js';

/** Exited (a zombie not yet reaped by its new parent counts as exited). */
function gone(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] === 'Z';
  } catch {
    return true;
  }
}

/** Process group and session of a process (/proc/PID/stat fields 5 and 6). */
function groupOf(pid: number): { pgrp: number; session: number } {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { pgrp: Number(rest[2]), session: Number(rest[3]) };
}

function cmdline(pid: number): string[] {
  return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
}

async function create(client: DaemonClient, dataDir: string, name: string): Promise<void> {
  const kernel = join(dataDir, 'k');
  writeFileSync(kernel, 'k');
  assert.equal((await client.request('POST', '/api/vms', { name, kernel })).status, 201);
}

async function stateOf(client: DaemonClient, name: string, state: string): Promise<VmRecord | false> {
  const r = (await client.request<VmRecord>('GET', `/api/vms/${name}`)).body;
  return r.state === state && r;
}

async function newStandby(d: TestDaemon, not: number): Promise<number> {
  return until('a new standby', async () => {
    const pid = await d.daemon.supervisor.warmReady();
    return pid !== undefined && pid !== not && pid;
  });
}

test('a start is handed to the warm VMM, which is replaced; close kills the idle one; the VM outlives it', async () => {
  let d = await startTestDaemon({ standbyCommand: true });
  let vmPid: number | undefined;
  try {
    const warm = await until('a standby', () => d.daemon.supervisor.warmReady());
    assert.ok(cmdline(warm).includes('vmm-standby'));
    await create(d.client, d.dataDir, 'w');
    const started = (await d.client.request<VmRecord>('POST', '/api/vms/w/start', {})).body;
    assert.equal(started.pid, warm, 'the standby became the VMM');
    vmPid = warm;
    await until('running', () => stateOf(d.client, 'w', 'running'));
    const dir = join(d.dataDir, 'vms', 'w');
    assert.match(readFileSync(join(dir, 'serial.log'), 'utf8'), /hello from the fake guest with 1 vCPUs/);
    // Detached as a cold VMM is: its own session and process group.
    assert.deepEqual(groupOf(warm), { pgrp: warm, session: warm });
    const state = JSON.parse(readFileSync(join(dir, 'vmm-state.json'), 'utf8')) as { standbyId?: string };
    const argv = cmdline(warm);
    assert.equal(argv[argv.indexOf('--standby-id') + 1], state.standbyId);

    const second = await newStandby(d, warm);
    assert.ok(alive(second));
    await d.close();
    assert.equal(alive(second), false, 'the idle standby is killed with the daemon');
    assert.ok(alive(warm), 'the VM keeps running');

    d = await d.restart();
    assert.deepEqual(d.daemon.reattached, ['w'], JSON.stringify(d.daemon.refused));
    const stopped = (await d.client.request<VmRecord>('POST', '/api/vms/w/stop', {})).body;
    assert.equal(stopped.state, 'stopped');
    assert.equal(stopped.exitStatus, 0);
    await until('the VMM gone', () => !alive(warm));
    vmPid = undefined;
  } finally {
    const standby = await d.daemon.supervisor.warmReady();
    await d.destroy();
    if (standby !== undefined) assert.equal(alive(standby), false, 'destroy leaves no standby');
    if (vmPid !== undefined) process.kill(-vmPid, 'SIGKILL');
  }
});

test("a handed-off VMM's stderr goes to vmm.log; its failure is a crash as a cold one's", async () => {
  process.env.FAKE_VMM_EXIT = '2'; // read by the standby at its spawn
  const d = await startTestDaemon({ standbyCommand: true });
  try {
    const warm = await until('a standby', () => d.daemon.supervisor.warmReady());
    delete process.env.FAKE_VMM_EXIT;
    await create(d.client, d.dataDir, 'bad');
    assert.equal((await d.client.request<VmRecord>('POST', '/api/vms/bad/start', {})).body.pid, warm);
    const crashed = await until('crashed', () => stateOf(d.client, 'bad', 'crashed'));
    assert.equal(crashed.exitStatus, 2);
    assert.match(crashed.message!, /fake-vmm: failing on purpose with status 2/);
    const log = readFileSync(join(d.dataDir, 'vms', 'bad', 'vmm.log'), 'utf8');
    assert.match(log, /--- partita: VMM starting at .*\nfake-vmm: failing on purpose with status 2\n/);
  } finally {
    delete process.env.FAKE_VMM_EXIT;
    await d.destroy();
  }
});

test('a standby that died idle means a cold start, and a new standby after it', async () => {
  const d = await startTestDaemon({ standbyCommand: true });
  try {
    const warm = await until('a standby', () => d.daemon.supervisor.warmReady());
    process.kill(-warm, 'SIGKILL');
    await until('the standby gone', () => !alive(warm));
    await create(d.client, d.dataDir, 'c');
    const started = (await d.client.request<VmRecord>('POST', '/api/vms/c/start', {})).body;
    assert.notEqual(started.pid, warm);
    const running = await until('running', () => stateOf(d.client, 'c', 'running'));
    assert.ok(cmdline(running.pid!).includes('--control'), 'a cold VMM has its arguments on its command line');
    assert.ok(alive(await newStandby(d, warm)));
  } finally {
    await d.destroy();
  }
});

test('a standby that does not answer the hand-off is killed and a cold VMM starts', async () => {
  process.env.FAKE_VMM_STANDBY_BROKEN = '1';
  const d = await startTestDaemon({ standbyCommand: true, handOffTimeoutMs: 1000 });
  try {
    const broken = await until('a standby', () => d.daemon.supervisor.warmReady());
    delete process.env.FAKE_VMM_STANDBY_BROKEN; // its replacement is a working one
    await create(d.client, d.dataDir, 'b');
    const started = (await d.client.request<VmRecord>('POST', '/api/vms/b/start', {})).body;
    assert.notEqual(started.pid, broken);
    assert.equal(alive(broken), false, 'the broken standby was killed before the cold start');
    await until('running', () => stateOf(d.client, 'b', 'running'));
    const log = readFileSync(join(d.dataDir, 'vms', 'b', 'vmm.log'), 'utf8');
    assert.match(log, /the warm VMM was unusable \(no answer in 1000 ms\): starting a cold one/);
    const next = await newStandby(d, broken);
    await d.client.request('POST', '/api/vms/b/stop', {});
    await d.client.request('POST', '/api/vms/b/start', {});
    assert.equal((await d.client.request<VmRecord>('GET', '/api/vms/b')).body.pid, next);
    await until('running on the new standby', () => stateOf(d.client, 'b', 'running'));
  } finally {
    delete process.env.FAKE_VMM_STANDBY_BROKEN;
    await d.destroy();
  }
});

test('a SIGKILLed daemon neither kills nor blocks a handed-off VMM; its idle standby ends by itself', async () => {
  const dataDir = mkdtempSync(join(tmpdir(), 'partita-daemon-'));
  const supportUrl = new URL('../support/daemon.js', import.meta.url).href;
  const script = `import { startTestDaemon } from ${JSON.stringify(supportUrl)};
const d = await startTestDaemon({ dataDir: ${JSON.stringify(dataDir)}, standbyCommand: true });
await d.daemon.supervisor.warmReady();
console.log('ready');`;
  const daemon = spawn(process.execPath, ['--input-type=module', '-e', script], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let vmPid: number | undefined;
  try {
    let out = '';
    daemon.stdout.on('data', (b: Buffer) => (out += b.toString()));
    await until('the daemon process', () => out.includes('ready'));
    const client = new DaemonClient({ socketPath: join(dataDir, 'partita.sock') });
    await create(client, dataDir, 'orphan');
    await client.request('POST', '/api/vms/orphan/start', {});
    vmPid = (await until('running', () => stateOf(client, 'orphan', 'running'))).pid!;
    // The standby that replaces it, a child of the daemon process.
    const standby = await until('a new standby', () => {
      const kids = readFileSync(`/proc/${daemon.pid}/task/${daemon.pid}/children`, 'utf8').trim().split(/\s+/);
      return kids.map(Number).find((p) => p && p !== vmPid && cmdline(p).includes('vmm-standby'));
    });
    daemon.kill('SIGKILL');
    await until('the daemon gone', () => daemon.exitCode !== null || daemon.signalCode !== null);
    await until('the orphaned standby ended', () => gone(standby));
    assert.ok(alive(vmPid));
    // Still serving its guest: the serial socket echoes into serial.log.
    const dir = join(dataDir, 'vms', 'orphan');
    const s = connect(join(dir, 'serial.sock'));
    await new Promise<void>((resolve, reject) => s.on('connect', resolve).on('error', reject));
    s.write('after the daemon');
    await until('echo', () => readFileSync(join(dir, 'serial.log'), 'utf8').includes('echo: after the daemon'));
    s.destroy();
    const again = await startTestDaemon({ dataDir });
    try {
      assert.deepEqual(again.daemon.reattached, ['orphan'], JSON.stringify(again.daemon.refused));
      assert.equal((await again.client.request<VmRecord>('POST', '/api/vms/orphan/stop', {})).body.state, 'stopped');
      await until('the VMM gone', () => !alive(vmPid!));
      vmPid = undefined;
    } finally {
      await again.destroy();
    }
  } finally {
    daemon.kill('SIGKILL');
    if (vmPid !== undefined) process.kill(-vmPid, 'SIGKILL');
    rmSync(dataDir, { recursive: true, force: true });
  }
});

test('the real CLI: a VM whose kernel vanished fails the same through the standby as through a cold start', async () => {
  const vmmCommand = defaultVmmCommand();
  const standbyCommand = [...vmmCommand.slice(0, -1), 'vmm-standby'];
  const shared = mkdtempSync(join(tmpdir(), 'partita-kernel-'));
  const kernel = join(shared, 'vmlinux');
  const outcome = async (warm: boolean): Promise<{ state: string; exitStatus?: number; last?: string }> => {
    const d = await startTestDaemon({ vmmCommand, standbyCommand: warm ? standbyCommand : [] });
    try {
      const standby = warm ? await until('a standby', () => d.daemon.supervisor.warmReady()) : undefined;
      writeFileSync(kernel, 'k');
      assert.equal((await d.client.request('POST', '/api/vms', { name: 'gone', kernel })).status, 201);
      rmSync(kernel);
      const started = (await d.client.request<VmRecord>('POST', '/api/vms/gone/start', {})).body;
      if (warm) assert.equal(started.pid, standby, 'handed to the standby');
      const r = await until('ended', async () => {
        const v = (await d.client.request<VmRecord>('GET', '/api/vms/gone')).body;
        return (v.state === 'crashed' || v.state === 'stopped') && v;
      });
      return {
        state: r.state,
        exitStatus: r.exitStatus,
        last: lastLogLine(join(d.dataDir, 'vms', 'gone', 'vmm.log')),
      };
    } finally {
      await d.destroy();
    }
  };
  try {
    const cold = await outcome(false);
    const warm = await outcome(true);
    assert.match(cold.last ?? '', /^partita: /, JSON.stringify(cold));
    assert.deepEqual(warm, cold);
  } finally {
    rmSync(shared, { recursive: true, force: true });
  }
});
