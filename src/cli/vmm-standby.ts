// `partita vmm-standby` (hidden): a warm VMM. The daemon keeps one such process started ahead of time, so a VM
// start does not pay for Node's start-up and loading the VMM bundle (most of a cold `partita run`'s start).
// The process waits on fd 3, a socket pair with the daemon, for one hand-off, then becomes that VM's VMM:
//
//   standby → daemon   "ready\n"                       (the bundle is loaded)
//   daemon  → standby  {"args":[…],"log":"…","cwd":"…"}\n  (the `run` arguments the daemon would spawn with)
//   standby → daemon   "ok\n" then closes fd 3        or "error WHY\n" and exits (the daemon cold-starts)
//
// After "ok" nothing ties the VMM to the daemon: the daemon spawned it detached (own session and process group)
// with stdin on /dev/null, fd 3 is closed, and stdout/stderr are the VM's vmm.log (dup2, as a cold spawn's
// stdio would be), so the daemon's death neither kills nor blocks it. Until then its stdout/stderr are /dev/null,
// and process.stdout/stderr are not touched here: Node creates those streams lazily, after the dup2.
import { closeSync, openSync, readSync, writeSync } from 'node:fs';
import { native, check } from '../native/index.js';
import type { HandOff } from '../daemon/warm-vmm.js';

/** The daemon's end of the hand-off socket pair, in the standby process. */
export const STANDBY_FD = 3;

function parseHandOff(line: string): HandOff {
  const v = JSON.parse(line) as Partial<HandOff>;
  if (
    !Array.isArray(v.args) ||
    !v.args.every((a) => typeof a === 'string') ||
    typeof v.log !== 'string' ||
    typeof v.cwd !== 'string'
  )
    throw new Error('malformed hand-off');
  return { args: v.args, log: v.log, cwd: v.cwd };
}

/** One line from a blocking descriptor; undefined at end of file before a newline. */
function readLine(fd: number): string | undefined {
  const chunks: Buffer[] = [];
  const buf = Buffer.alloc(4096);
  for (;;) {
    let n: number;
    try {
      n = readSync(fd, buf, 0, buf.length, null);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EAGAIN') {
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 10);
        continue;
      }
      throw e;
    }
    if (n === 0) return undefined;
    const at = buf.subarray(0, n).indexOf(10);
    if (at >= 0) {
      chunks.push(Buffer.from(buf.subarray(0, at)));
      return Buffer.concat(chunks).toString('utf8');
    }
    chunks.push(Buffer.from(buf.subarray(0, n)));
  }
}

/**
 * Waits for the hand-off and takes it: returns the `run` arguments, with stdout/stderr on the VM's log and the
 * working directory its folder. Exits (status 0) when the daemon goes away first: an idle standby ends with it.
 */
export function awaitHandOff(): string[] {
  try {
    writeSync(STANDBY_FD, 'ready\n');
    const line = readLine(STANDBY_FD);
    if (line === undefined) process.exit(0);
    let order: HandOff;
    try {
      order = parseHandOff(line);
      const log = openSync(order.log, 'a', 0o600);
      check(native.dup2(log, 1), 'dup2', 'stdout');
      check(native.dup2(log, 2), 'dup2', 'stderr');
      closeSync(log);
      process.chdir(order.cwd);
    } catch (e) {
      writeSync(STANDBY_FD, `error ${(e as Error).message.split('\n')[0]}\n`);
      process.exit(1);
    }
    writeSync(STANDBY_FD, 'ok\n');
    closeSync(STANDBY_FD);
    return order.args;
  } catch {
    // The daemon's end is gone (EPIPE, ECONNRESET): nobody to hand a VM over.
    process.exit(0);
  }
}
