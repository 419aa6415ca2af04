// Runs the real `partita` command (bin/partita.js) as a user would, for integration tests.
//
// A test passes or fails on what the guest printed, never on how fast this (shared, busy) machine is: a run ends
// when the VM ends or as soon as `stopWhen` says the output the test checks is there; `timeoutMs` is only a
// hang guard, and when it fires the run is rejected with what the guest had printed by then.
import { spawn } from 'node:child_process';
import { accessSync, constants, existsSync, mkdirSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository root (this file is compiled to dist/test/support/). */
export const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
export const partitaBin = join(repoRoot, 'bin', 'partita.js');

export function guest(name: string, format: 'pvh' | 'mb' = 'pvh'): string {
  return join(repoRoot, 'build', 'guests', `${name}.${format}.elf`);
}

export const isPvm = existsSync('/sys/module/kvm_pvm');
export const haveKvm = existsSync('/dev/kvm');

/**
 * The default hang guard of one VM run. Test guests take seconds even in KVM's instruction emulator on a busy
 * machine; this only bounds a run that would otherwise never end.
 */
export const HANG_GUARD_MS = 5 * 60_000;

/**
 * Partita checks some options only once it has opened /dev/kvm: on a machine without KVM such a case can only say
 * SKIPPED (returns true after skipping `t`), not what it checks.
 */
export function skippedForKvm(t: { skip(message: string): void }, r: { stderr: string }): boolean {
  if (haveKvm || !/\/dev\/kvm does not exist/.test(r.stderr)) return false;
  t.skip('SKIPPED: partita checks this only after opening /dev/kvm, which this machine does not have');
  return true;
}

export interface RunResult {
  readonly stdout: string;
  readonly stderr: string;
  readonly status: number | null;
  readonly signal: NodeJS.Signals | null;
  /** True when `stopWhen` held and the test ended the VM (with `stopSignal`). */
  readonly stoppedEarly: boolean;
  readonly ms: number;
}

export interface RunOptions {
  /** Bytes written to the guest's serial input (stdin), after `inputDelayMs`. Without it stdin is /dev/null. */
  readonly input?: string;
  readonly inputDelayMs?: number;
  /** Keep stdin open (a pipe) after writing input. */
  readonly keepStdinOpen?: boolean;
  /** Hang guard (default HANG_GUARD_MS): the run is killed and rejected (HangError) with its output so far. */
  readonly timeoutMs?: number;
  /** Called with stdout as it grows, with a writer to the guest's serial input (to answer a prompt). */
  readonly onStdout?: (text: string, write: (s: string) => void) => void;
  /** Called with stdout as it grows: once it returns true the VM is killed and the run resolves (stoppedEarly). */
  readonly stopWhen?: (stdout: string) => boolean;
  /** The signal `stopWhen` ends the VM with (default SIGKILL: the test has what it needs). */
  readonly stopSignal?: NodeJS.Signals;
}

/** A run that outlived its hang guard; the message carries what the guest and Partita had printed. */
export class HangError extends Error {
  constructor(
    what: string,
    ms: number,
    readonly stdout: string,
    readonly stderr: string,
  ) {
    super(
      `${what} was still running after ${(ms / 1000).toFixed(0)} s (hang guard); ` +
        `it printed ${stdout.split('\n').length - 1} lines:\n--- stdout (last lines) ---\n${lastLines(stdout, 40)}` +
        `\n--- stderr ---\n${lastLines(stderr, 20)}`,
    );
    this.name = 'HangError';
  }
}

export function lastLines(text: string, n: number): string {
  const lines = text.split('\n');
  return (lines.length > n ? ['…', ...lines.slice(-n)] : lines).join('\n');
}

export function runPartita(args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  // At the hang guard Partita gets SIGQUIT first: it stops the VM and prints the vCPU's registers, so a
  // HangError shows where the guest was.
  return runProgram(process.execPath, [partitaBin, ...args], opts, `partita ${args.join(' ')}`, 'SIGQUIT');
}

/** How long a program given its hang-guard signal may take to end before SIGKILL. */
const GUARD_SIGNAL_GRACE_MS = 10_000;

/** runPartita's machinery for any program (`what` names it in a HangError). */
export function runProgram(
  command: string,
  args: readonly string[],
  opts: RunOptions = {},
  what = command,
  guardSignal: NodeJS.Signals = 'SIGKILL',
): Promise<RunResult> {
  const started = Date.now();
  const guardMs = opts.timeoutMs ?? HANG_GUARD_MS;
  return new Promise((resolve, reject) => {
    const wantsStdin = opts.input !== undefined || opts.onStdout !== undefined || opts.keepStdinOpen;
    const child = spawn(command, args, {
      stdio: [wantsStdin ? 'pipe' : 'ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    let stoppedEarly = false;
    const write = (s: string): void => void child.stdin?.write(s);
    let graceTimer: NodeJS.Timeout | undefined;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill(guardSignal);
      if (guardSignal !== 'SIGKILL') graceTimer = setTimeout(() => child.kill('SIGKILL'), GUARD_SIGNAL_GRACE_MS);
    }, guardMs);
    child.stdout!.on('data', (d: Buffer) => {
      stdout += d.toString('latin1');
      opts.onStdout?.(stdout, write);
      if (!stoppedEarly && opts.stopWhen?.(stdout)) {
        stoppedEarly = true;
        const signal = opts.stopSignal ?? 'SIGKILL';
        child.kill(signal);
        // SIGKILL cannot be ignored; a program given another signal stays under the hang guard until it ends.
        if (signal === 'SIGKILL') clearTimeout(timer);
      }
    });
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString('utf8')));
    child.stdin?.on('error', () => undefined);
    if (opts.input !== undefined) {
      setTimeout(() => {
        child.stdin?.write(opts.input);
        if (!opts.keepStdinOpen) child.stdin?.end();
      }, opts.inputDelayMs ?? 0);
    }
    child.on('close', (status, signal) => {
      clearTimeout(timer);
      clearTimeout(graceTimer);
      const ms = Date.now() - started;
      if (timedOut) reject(new HangError(what, ms, stdout, stderr));
      else resolve({ stdout, stderr, status, signal, stoppedEarly, ms });
    });
  });
}

/**
 * Where tests keep screenshots and logs for a person to look at (gitignored): test-artifacts/, or
 * PARTITA_ARTIFACTS, or a temporary folder when the tree is read-only (npm run test:nested).
 */
export function artifactsDir(): string {
  const dir = process.env.PARTITA_ARTIFACTS ?? join(repoRoot, 'test-artifacts');
  try {
    mkdirSync(dir, { recursive: true });
    accessSync(dir, constants.W_OK);
    return dir;
  } catch {
    return mkdtempSync(join(tmpdir(), 'partita-artifacts-'));
  }
}
