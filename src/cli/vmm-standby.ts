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
import { closeSync, fstatSync, openSync } from 'node:fs';
import { Socket } from 'node:net';
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

/** Whether this process was started with a hand-off socket on fd 3 (by the daemon), not by hand. */
export function hasHandOffChannel(): boolean {
  try {
    return fstatSync(STANDBY_FD).isSocket();
  } catch {
    return false;
  }
}

/** The hand-off socket (fd 3) on the event loop: an idle standby sleeps in epoll, costing no CPU. */
class HandOffChannel {
  private readonly socket = new Socket({ fd: STANDBY_FD, readable: true, writable: true });
  private text = '';

  /** The daemon's first line; undefined when its end closes (or fails) first. */
  readLine(): Promise<string | undefined> {
    return new Promise((resolve) => {
      const done = (line: string | undefined): void => {
        this.socket.removeAllListeners('data');
        this.socket.removeAllListeners('end');
        this.socket.pause();
        resolve(line);
      };
      this.socket.setEncoding('utf8');
      this.socket.on('data', (chunk: string) => {
        this.text += chunk;
        const nl = this.text.indexOf('\n');
        if (nl >= 0) done(this.text.slice(0, nl));
      });
      this.socket.on('end', () => done(undefined));
      this.socket.on('error', () => done(undefined));
    });
  }

  send(line: string): void {
    this.socket.write(line);
  }

  /** Writes `line` and closes fd 3 (libuv owns it: closing it by number could close a reused descriptor). */
  finish(line: string): Promise<void> {
    return new Promise((resolve) => {
      this.socket.once('close', () => resolve());
      this.socket.end(line);
    });
  }
}

/**
 * Waits for the hand-off and takes it: returns the `run` arguments, with stdout/stderr on the VM's log and the
 * working directory its folder. Exits (status 0) when the daemon goes away first: an idle standby ends with it.
 */
export async function awaitHandOff(): Promise<string[]> {
  const channel = new HandOffChannel();
  channel.send('ready\n');
  const line = await channel.readLine();
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
    await channel.finish(`error ${(e as Error).message.split('\n')[0]}\n`);
    process.exit(1);
  }
  // The daemon's end may be gone by now (it then cold-starts this VM: nobody waits for this one's answer).
  await channel.finish('ok\n');
  return order.args;
}
