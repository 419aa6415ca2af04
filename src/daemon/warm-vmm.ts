// The daemon's side of a warm VMM (`partita vmm-standby`, src/cli/vmm-standby.ts): a VMM process started ahead
// of time, Node booted and the VMM bundle loaded, that becomes the next started VM's VMM. A cold `partita run`
// spends most of its start-up there, so a start through the daemon is then only the VM's own set-up.
//
// It is spawned like a cold VMM (detached: own session and process group, stdin /dev/null), with one more
// descriptor, fd 3, a socket pair carrying the hand-off; stdout/stderr are /dev/null until the hand-off points
// them at the VM's vmm.log. Its PID and /proc start time are read at spawn, while it is our unreaped child.
// Anything unexpected (it died, answers "error", closes the socket, or does not answer in time) makes the
// hand-off fail; the caller then starts a cold VMM, so a broken standby costs time, never a start.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import type { Socket } from 'node:net';
import { processStartTime } from './proc.js';

/** What the daemon sends a standby: how it would have spawned the VMM. */
export interface HandOff {
  /** The arguments after `run`. */
  readonly args: string[];
  /** The VM's vmm.log: stdout and stderr, appended to. */
  readonly log: string;
  readonly cwd: string;
}

export interface WarmExit {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

export class WarmVmm {
  readonly pid: number;
  readonly startTime: string;
  /** The random `--standby-id` on its command line: recorded at hand-off, checked before reattaching. */
  readonly id: string;
  /** Settles when the process has exited (and was reaped). */
  readonly exit: Promise<WarmExit>;
  private exited = false;
  private readonly lines: string[] = [];
  private wake?: () => void;
  private channelClosed = false;
  private readonly ready: Promise<boolean>;
  private used = false;

  private constructor(
    readonly child: ChildProcess,
    private readonly channel: Socket,
    pid: number,
    id: string,
  ) {
    this.pid = pid;
    this.id = id;
    this.startTime = processStartTime(pid) ?? '';
    let markReady!: (ready: boolean) => void;
    this.ready = new Promise((resolve) => (markReady = resolve));
    this.exit = new Promise((resolve) =>
      child.once('exit', (code, signal) => {
        this.exited = true;
        markReady(false);
        this.wake?.();
        resolve({ code, signal });
      }),
    );
    let pending = '';
    channel.on('data', (d: Buffer) => {
      pending += d.toString('utf8');
      for (let at = pending.indexOf('\n'); at >= 0; at = pending.indexOf('\n')) {
        const line = pending.slice(0, at);
        pending = pending.slice(at + 1);
        if (line === 'ready') markReady(true);
        else this.lines.push(line);
      }
      this.wake?.();
    });
    const closed = (): void => {
      this.channelClosed = true;
      markReady(false);
      this.wake?.();
    };
    channel.on('close', closed);
    channel.on('error', closed);
  }

  /** Spawns `command` (the argv of `partita vmm-standby`) plus `--standby-id ID`; undefined if it cannot start. */
  static spawn(command: readonly string[]): WarmVmm | undefined {
    const id = randomBytes(12).toString('hex');
    const [cmd, ...args] = command;
    let child: ChildProcess;
    try {
      child = spawn(cmd, [...args, '--standby-id', id], {
        detached: true,
        stdio: ['ignore', 'ignore', 'ignore', 'pipe'],
      });
    } catch {
      return undefined;
    }
    const channel = child.stdio[3] as Socket | null;
    if (child.pid === undefined || !channel) {
      child.on('error', () => undefined);
      return undefined;
    }
    child.on('error', () => undefined);
    const warm = new WarmVmm(child, channel, child.pid, id);
    // Neither keeps the daemon's event loop alive: close() kills an idle standby explicitly.
    child.unref();
    channel.unref();
    return warm;
  }

  /** Resolves true once the standby has loaded the VMM (said "ready"), false if it died first. */
  whenReady(): Promise<boolean> {
    return this.ready;
  }

  get alive(): boolean {
    return !this.exited && this.child.exitCode === null && this.child.signalCode === null;
  }

  /** The next line from the standby; undefined when the channel closed, the process exited or `ms` passed. */
  private async nextLine(ms: number): Promise<string | undefined> {
    const end = Date.now() + ms;
    for (;;) {
      const line = this.lines.shift();
      if (line !== undefined) return line;
      if (this.channelClosed || this.exited || Date.now() >= end) return undefined;
      await new Promise<void>((resolve) => {
        const timer = Number.isFinite(ms) ? setTimeout(resolve, Math.max(1, end - Date.now())) : undefined;
        this.wake = () => {
          if (timer) clearTimeout(timer);
          resolve();
        };
      });
      this.wake = undefined;
    }
  }

  /**
   * Hands a VM to the standby (once). True: the process is now that VM's VMM, writing to its log. False: it was
   * unusable and is gone (killed if it still ran), so a cold VMM can take its place without meeting it.
   */
  async handOff(order: HandOff, timeoutMs: number): Promise<{ ok: true } | { ok: false; why: string }> {
    if (this.used) throw new Error('a warm VMM takes one hand-off');
    this.used = true;
    let why: string;
    if (!this.alive) why = 'it had exited';
    else {
      // The standby may still be loading: it reads the order once it is ready.
      this.channel.write(JSON.stringify(order) + '\n');
      const line = await this.nextLine(timeoutMs);
      if (line === 'ok') {
        this.channel.destroy();
        return { ok: true };
      }
      why =
        line === undefined
          ? this.alive
            ? `no answer in ${timeoutMs} ms`
            : 'it exited'
          : line.startsWith('error ')
            ? line.slice(6)
            : `it said '${line}'`;
    }
    await this.kill();
    return { ok: false, why };
  }

  /** Kills the standby (its process group) and resolves once it has exited; only while it is our live child. */
  async kill(): Promise<void> {
    this.channel.destroy();
    if (this.alive) {
      try {
        process.kill(-this.pid, 'SIGKILL');
      } catch {
        this.child.kill('SIGKILL');
      }
    }
    await this.exit;
  }
}
