// A daemon for tests: a fresh data directory, the API on a UNIX socket in it (and loopback TCP if asked), and
// VMMs that are the fake VMM (test/support/fake-vmm.ts) unless a test asks for the real `partita run`.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { startDaemon, type Daemon } from '../../src/daemon/daemon.js';
import { DaemonClient } from '../../src/cli/daemon-client.js';

export const fakeVmm = join(dirname(fileURLToPath(import.meta.url)), 'fake-vmm.js');
export const fakeVmmCommand = [process.execPath, fakeVmm, 'run'];
/** The fake VMM as a warm standby (the standby protocol of src/cli/vmm-standby.ts). */
export const fakeStandbyCommand = [process.execPath, fakeVmm, 'vmm-standby'];

export interface TestDaemon {
  readonly daemon: Daemon;
  readonly client: DaemonClient;
  readonly dataDir: string;
  /** Starts another daemon on the same data directory (after close()): a daemon restart. */
  restart(): Promise<TestDaemon>;
  close(): Promise<void>;
  /** Closes the daemon, kills every VMM it knows of, removes the data directory. */
  destroy(): Promise<void>;
}

export async function startTestDaemon(
  options: {
    listen?: string;
    vmmCommand?: readonly string[];
    /** A warm VMM: `true` is the fake VMM's standby; off unless asked (tests set FAKE_VMM_* per start). */
    standbyCommand?: readonly string[] | true;
    dataDir?: string;
    stopGraceMs?: number;
    handOffTimeoutMs?: number;
  } = {},
): Promise<TestDaemon> {
  const dataDir = options.dataDir ?? mkdtempSync(join(tmpdir(), 'partita-daemon-'));
  const socketPath = join(dataDir, 'partita.sock');
  const daemon = await startDaemon({
    dataDir,
    socketPath,
    listen: options.listen,
    version: 'test',
    supervisor: {
      vmmCommand: options.vmmCommand ?? fakeVmmCommand,
      standbyCommand: options.standbyCommand === true ? fakeStandbyCommand : (options.standbyCommand ?? []),
      stopGraceMs: options.stopGraceMs ?? 10_000,
      ...(options.handOffTimeoutMs !== undefined ? { handOffTimeoutMs: options.handOffTimeoutMs } : {}),
    },
  });
  let closed = false;
  const close = async (): Promise<void> => {
    if (closed) return;
    closed = true;
    await daemon.close();
  };
  return {
    daemon,
    client: new DaemonClient({ socketPath }),
    dataDir,
    restart: () => startTestDaemon({ ...options, dataDir }),
    close,
    async destroy() {
      const pids = daemon.supervisor.list().flatMap((r) => (r.pid ? [r.pid] : []));
      await close();
      for (const pid of pids) {
        try {
          process.kill(-pid, 'SIGKILL');
        } catch {
          // gone
        }
      }
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** Waits until `check` holds; only a hang guard bounds it (never a pass/fail by speed). */
export async function until<T>(
  what: string,
  check: () => T | undefined | false | Promise<T | undefined | false>,
  guardMs = 120_000,
): Promise<T> {
  const end = Date.now() + guardMs;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > end) throw new Error(`hang guard: still waiting for ${what}`);
    await sleep(25);
  }
}

/** Whether process `pid` exists (signal 0; a zombie not yet reaped still counts). */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
