// Pause, resume and stop of a running VM from another thread: a paused guest consumes no CPU, a resumed one
// continues, and stop ends it with the requested reason.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { mkdtempSync, openSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { VmControl } from '../../src/vmm/control.js';
import { runMachine } from '../../src/vmm/machine.js';
import { guest, haveKvm } from '../support/partita.js';

interface Job {
  readonly control: SharedArrayBuffer;
  readonly out: string;
}

if (!isMainThread && workerData) {
  const job = workerData as Job;
  const result = runMachine(
    {
      version: 1,
      cpus: 1,
      memory: 64 * 1024 * 1024,
      boot: { kind: 'kernel', kernel: guest('exits'), cmdline: 'count=100000000' },
      devices: [],
    },
    { serialOutputFd: openSync(job.out, 'w'), serialInput: 'none', control: new VmControl(job.control) },
  );
  parentPort!.postMessage(result.reason);
} else {
  test(
    'pause stops the vCPUs, resume continues, stop ends the VM',
    { skip: !haveKvm && 'no /dev/kvm', timeout: 60_000 },
    async () => {
      const dir = mkdtempSync(join(tmpdir(), 'partita-pause-'));
      const control = new VmControl();
      const worker = new Worker(new URL(import.meta.url), {
        workerData: { control: control.buffer, out: join(dir, 'serial') } satisfies Job,
      });
      const done = new Promise<{ kind: string; status: number }>((resolve, reject) => {
        worker.once('message', resolve);
        worker.once('error', reject);
      });
      try {
        await sleep(1500); // booted and inside the port-write loop
        const cpu = (): number => process.cpuUsage().user + process.cpuUsage().system;
        let before = cpu();
        await sleep(500);
        const running = cpu() - before;
        control.pause();
        await sleep(100);
        before = cpu();
        await sleep(1000);
        const paused = cpu() - before;
        control.resume();
        before = cpu();
        await sleep(500);
        const resumed = cpu() - before;
        assert.ok(running > 200_000, `the guest runs (${running} µs CPU in 0.5 s)`);
        assert.ok(paused < 50_000, `a paused VM burns no CPU (${paused} µs in 1 s)`);
        assert.ok(resumed > 200_000, `it runs again after resume (${resumed} µs in 0.5 s)`);
        control.stop({ kind: 'user-quit', status: 0, message: 'stopped by the test' });
        const reason = await done;
        assert.equal(reason.kind, 'user-quit');
        assert.equal(reason.status, 0);
      } finally {
        await worker.terminate();
        rmSync(dir, { recursive: true, force: true });
      }
    },
  );
}
