// A guest that floods virtio-blk with one request (test/guests/virtio-flood.c): it makes the same head available
// again each time the device popped it, never waiting for it to be used. A device that takes every re-post as a
// new request keeps them all in flight, and the VMM's memory grows with each (before the fix: hundreds of MiB in
// seconds). Partita refuses a head that is still in flight (virtio 1.2 §2.7.13, src/devices/virtio/queue.ts):
// the device sets DEVICE_NEEDS_RESET, the VMM keeps running, and its peak RSS stays that of a small VM.
//
// The peak RSS (VmHWM of the partita process) is read when the guest says "flood: done"; the guest then waits for
// a byte on its serial port, so the process is still there to be measured, and exits as soon as it gets it.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { guest, haveKvm, partitaBin } from '../support/partita.js';

const work = mkdtempSync(join(tmpdir(), 'partita-flood-'));
after(() => rmSync(work, { recursive: true, force: true }));

/** Generous: a VM this small peaks well under 100 MiB; the flood took the old code past 200 MiB within 5000 posts. */
const RSS_LIMIT = 200 * 1024 * 1024;

/** Peak resident set of a live process (VmHWM), in bytes; undefined once it is gone. */
function peakRss(pid: number): number | undefined {
  try {
    const m = /^VmHWM:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

interface FloodRun {
  readonly stdout: string;
  readonly stderr: string;
  readonly status: number | null;
  readonly timedOut: boolean;
  /** VmHWM when the guest printed "flood: done". */
  readonly peak: number | undefined;
}

function runFlood(image: string): Promise<FloodRun> {
  return new Promise((resolve) => {
    const args = ['run', '--kernel', guest('virtio-flood'), '--memory', '256M', '--disk', image];
    const child = spawn(process.execPath, [partitaBin, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let peak: number | undefined;
    let timedOut = false;
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString('latin1');
      if (peak === undefined && stdout.includes('flood: done\n')) {
        peak = child.pid === undefined ? undefined : peakRss(child.pid);
        child.stdin.end('x'); // the guest exits when this byte arrives
      }
    });
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString('utf8')));
    child.stdin.on('error', () => undefined);
    // A hang guard only: the guest stops at the device's first refusal, in well under a second of guest time.
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, 180_000);
    child.on('close', (status) => {
      clearTimeout(timer);
      resolve({ stdout, stderr, status, timedOut, peak });
    });
  });
}

test(
  'virtio-blk flood: re-posting an in-flight head sets DEVICE_NEEDS_RESET, the VMM survives, its peak RSS stays bounded',
  { skip: !haveKvm && 'no /dev/kvm' },
  async (t) => {
    const image = join(work, 'disk.img');
    writeFileSync(image, '');
    truncateSync(image, 64 * 1024 * 1024); // sparse: one request reads 31 MiB of it
    const r = await runFlood(image);
    const show = `status ${r.status}${r.timedOut ? ' (timed out)' : ''}\n--- guest output ---\n${r.stdout}--- stderr ---\n${r.stderr}`;
    assert.equal(r.timedOut, false, show);
    assert.equal(r.status, 1, `the guest finished and exited 0 through the debug port\n${show}`);
    assert.match(r.stdout, /^flood: device set DEVICE_NEEDS_RESET \(status 0x4f\) after \d+ posts$/m, show);
    assert.match(
      r.stderr,
      /^partita: virtio-blk0: queue 0: available ring entry \d+ names descriptor 0, whose chain is still in flight \(\d+ of 64 in flight\); the device needs a reset$/m,
      show,
    );
    assert.ok(r.peak !== undefined, `VmHWM was read while the VMM ran\n${show}`);
    t.diagnostic(`peak RSS (VmHWM) of the VMM: ${(r.peak / 2 ** 20).toFixed(1)} MiB`);
    assert.ok(r.peak < RSS_LIMIT, `peak RSS ${(r.peak / 2 ** 20).toFixed(1)} MiB, limit ${RSS_LIMIT / 2 ** 20} MiB`);
  },
);
