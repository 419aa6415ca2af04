// Pause, resume and stop of a running VM from another thread: a paused guest makes no progress and its VM burns
// next to no CPU (compared with the same VM running, in the same run), a resumed one continues, and stop ends it
// with the requested reason.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { mkdtempSync, openSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { VmControl } from '../../src/vmm/control.js';
import { runMachine } from '../../src/vmm/machine.js';
import { guest, HANG_GUARD_MS, haveKvm } from '../support/partita.js';

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
    { skip: !haveKvm && 'no /dev/kvm', timeout: 3 * HANG_GUARD_MS },
    async (t) => {
      const dir = mkdtempSync(join(tmpdir(), 'partita-pause-'));
      const control = new VmControl();
      const worker = new Worker(new URL(import.meta.url), {
        workerData: { control: control.buffer, out: join(dir, 'serial') } satisfies Job,
      });
      const done = new Promise<{ kind: string; status: number }>((resolve, reject) => {
        worker.once('message', resolve);
        worker.once('error', reject);
      });
      // Progress is the guest's port writes (one exit each, counted by the VMM), not time: every wait below ends
      // on what the guest did, and only a hang guard bounds it.
      const exits = (): number => control.exitCounts().pio;
      let ended: string | undefined;
      done.then(
        (r) => (ended = `the VM stopped (${r.kind})`),
        (e: unknown) => (ended = `the VM thread failed: ${String(e)}`),
      );
      const until = async (what: string, ok: () => boolean): Promise<void> => {
        const guard = Date.now() + HANG_GUARD_MS;
        while (!ok()) {
          if (ended) assert.fail(`${ended} while waiting for ${what}`);
          if (Date.now() > guard) assert.fail(`hang guard: still waiting for ${what} (${exits()} port exits so far)`);
          await sleep(10);
        }
      };
      const cpu = (): number => {
        const u = process.cpuUsage();
        return u.user + u.system;
      };
      const MANY = 1000;
      try {
        await until('the guest to enter its port-write loop', () => exits() > MANY);
        // Running: the CPU time this process takes per wall-clock ms while the guest runs, over at least 0.5 s
        // and MANY exits: the yardstick for the paused VM, measured in the same run on the same machine.
        let at = exits();
        let cpuBefore = cpu();
        let wallBefore = performance.now();
        await sleep(500);
        await until(`${MANY} port writes`, () => exits() - at >= MANY);
        const running = (cpu() - cpuBefore) / (performance.now() - wallBefore);

        control.pause();
        at = exits();
        cpuBefore = cpu();
        wallBefore = performance.now();
        await sleep(1000);
        const pausedExits = exits() - at;
        const paused = (cpu() - cpuBefore) / (performance.now() - wallBefore);
        t.diagnostic(`CPU per wall ms: running ${running.toFixed(1)} µs, paused ${paused.toFixed(2)} µs`);
        // pause() kicks the vCPU: an exit it was handling may still be counted, nothing after it.
        assert.ok(pausedExits <= 1, `a paused guest makes no progress (${pausedExits} port writes while paused)`);
        assert.ok(
          paused < running / 10,
          `a paused VM burns (next to) no CPU: ${paused.toFixed(2)} µs/ms paused, ${running.toFixed(1)} µs/ms running`,
        );

        control.resume();
        at = exits();
        await until('the guest to run again after resume', () => exits() - at >= MANY);

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
