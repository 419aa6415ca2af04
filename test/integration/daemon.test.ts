// The daemon with real VMs (`partita run` under the supervisor): start → running → the guest's first serial line
// over the console WebSocket → typed input echoed → SIGKILL of one VMM → crashed while the other VM runs on →
// a daemon restart with a VM running → reattached and stopped through its control channel; the same through the
// warm VMM (test/unit/daemon-warm-vmm.test.ts covers it without KVM). Needs /dev/kvm.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { WebSocket } from 'ws';
import { guest, haveKvm } from '../support/partita.js';
import { alive, startTestDaemon, until } from '../support/daemon.js';
import { defaultVmmCommand } from '../../src/daemon/supervisor.js';
import type { VmRecord } from '../../src/daemon/api-schemas.js';

const NO_KVM = 'no /dev/kvm on this machine: Partita cannot run a VM here (SKIPPED, not passed)';
const GUESTS_MISSING = 'test guests not built (node scripts/build-guests.mjs) (SKIPPED, not passed)';
const skip = !haveKvm
  ? NO_KVM
  : !existsSync(guest('hello')) || !existsSync(guest('serial-echo'))
    ? GUESTS_MISSING
    : false;

test('real VMs under the daemon: console, crash isolation, reattach', { skip, timeout: 15 * 60_000 }, async () => {
  let d = await startTestDaemon({ vmmCommand: defaultVmmCommand() });
  try {
    const get = async (name: string): Promise<VmRecord> =>
      (await d.client.request<VmRecord>('GET', `/api/vms/${name}`)).body;
    const inState = (name: string, state: string) => async () => {
      const r = await get(name);
      return r.state === state && r;
    };

    // hello: its greeting lands in serial.log, and it ends cleanly with its debug-exit status.
    const created = await d.client.request('POST', '/api/vms', {
      name: 'hello',
      kernel: guest('hello'),
      cmdline: 'exit=5',
      memory: 64 * 1024 * 1024,
    });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    await d.client.request('POST', '/api/vms/hello/start', {});
    const ended = await until('hello stopped', inState('hello', 'stopped'));
    assert.equal(ended.exitStatus, 11, ended.message);
    assert.match(
      readFileSync(join(d.dataDir, 'vms', 'hello', 'serial.log'), 'utf8'),
      /Hello from a Partita test guest/,
    );

    // Two long-running guests.
    for (const name of ['echo', 'other']) {
      await d.client.request('POST', '/api/vms', { name, kernel: guest('serial-echo'), memory: 64 * 1024 * 1024 });
      await d.client.request('POST', `/api/vms/${name}/start`, {});
    }
    const echo = await until('echo running', inState('echo', 'running'));
    const other = await until('other running', inState('other', 'running'));

    // The console: the first serial line (replayed to a client that connects after it was printed), then input.
    const ws = new WebSocket(`ws+unix://${d.daemon.socketPath}:/api/vms/echo/console`);
    let text = '';
    ws.on('message', (m: Buffer) => (text += m.toString('latin1')));
    await new Promise((ok, fail) => {
      ws.once('open', ok);
      ws.once('error', fail);
    });
    await until('the first serial line', () => text.includes('serial-echo: ready'));
    ws.send(Buffer.from('partita'));
    await until('the echo of our input', () => text.includes('partita'));

    // SIGKILL one VMM: that VM is crashed, the other one does not notice.
    process.kill(echo.pid!, 'SIGKILL');
    const crashed = await until('echo crashed', inState('echo', 'crashed'));
    assert.match(crashed.message!, /SIGKILL/);
    assert.ok(existsSync(join(d.dataDir, 'vms', 'echo', 'vmm.log')));
    const still = await get('other');
    assert.equal(still.state, 'running');
    assert.equal(still.pid, other.pid);
    ws.close();

    // Restart the daemon while 'other' runs: it is taken back, and stops through its control channel.
    await d.close();
    assert.ok(alive(other.pid!), 'the VMM outlives its daemon');
    d = await d.restart();
    assert.deepEqual(d.daemon.reattached, ['other']);
    const back = await get('other');
    assert.equal(back.state, 'running');
    assert.equal(back.pid, other.pid);
    const stopped = (await d.client.request<VmRecord>('POST', '/api/vms/other/stop', {})).body;
    assert.equal(stopped.state, 'stopped', JSON.stringify(stopped));
    assert.equal(stopped.exitStatus, 0);
  } finally {
    await d.destroy();
  }
});

test(
  'real VMs through the warm VMM: the hand-off boots the guest, the VMM is reattached by its standby id',
  {
    skip,
    timeout: 15 * 60_000,
  },
  async () => {
    const vmmCommand = defaultVmmCommand();
    const standbyCommand = [...vmmCommand.slice(0, -1), 'vmm-standby'];
    let d = await startTestDaemon({ vmmCommand, standbyCommand });
    try {
      const get = async (name: string): Promise<VmRecord> =>
        (await d.client.request<VmRecord>('GET', `/api/vms/${name}`)).body;
      const inState = (name: string, state: string) => async () => {
        const r = await get(name);
        return r.state === state && r;
      };
      await d.client.request('POST', '/api/vms', {
        name: 'hello',
        kernel: guest('hello'),
        cmdline: 'exit=5',
        memory: 64 * 1024 * 1024,
      });
      const warm = await until('a standby', () => d.daemon.supervisor.warmReady());
      assert.equal((await d.client.request<VmRecord>('POST', '/api/vms/hello/start', {})).body.pid, warm);
      const ended = await until('hello stopped', inState('hello', 'stopped'));
      assert.equal(ended.exitStatus, 11, ended.message);
      assert.match(
        readFileSync(join(d.dataDir, 'vms', 'hello', 'serial.log'), 'utf8'),
        /Hello from a Partita test guest/,
      );

      await d.client.request('POST', '/api/vms', { name: 'echo', kernel: guest('serial-echo'), memory: 64 << 20 });
      const next = await until('the next standby', async () => {
        const pid = await d.daemon.supervisor.warmReady();
        return pid !== undefined && pid !== warm && pid;
      });
      await d.client.request('POST', '/api/vms/echo/start', {});
      const echo = await until('echo running', inState('echo', 'running'));
      assert.equal(echo.pid, next);
      await d.close();
      assert.ok(alive(next), 'the handed-off VMM outlives its daemon');
      d = await d.restart();
      assert.deepEqual(d.daemon.reattached, ['echo'], JSON.stringify(d.daemon.refused));
      const stopped = (await d.client.request<VmRecord>('POST', '/api/vms/echo/stop', {})).body;
      assert.equal(stopped.state, 'stopped', JSON.stringify(stopped));
      assert.equal(stopped.exitStatus, 0);
    } finally {
      await d.destroy();
    }
  },
);
