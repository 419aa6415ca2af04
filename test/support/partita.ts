// Runs the real `partita` command (bin/partita.js) as a user would, for integration tests.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
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

export interface RunResult {
  readonly stdout: string;
  readonly stderr: string;
  readonly status: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly timedOut: boolean;
  readonly ms: number;
}

export interface RunOptions {
  /** Bytes written to the guest's serial input (stdin), after `inputDelayMs`. Without it stdin is /dev/null. */
  readonly input?: string;
  readonly inputDelayMs?: number;
  /** Keep stdin open (a pipe) after writing input. */
  readonly keepStdinOpen?: boolean;
  readonly timeoutMs?: number;
  /** Called with stdout as it grows; return true to stop feeding/waiting logic (used to send input on a prompt). */
  readonly onStdout?: (text: string, write: (s: string) => void) => void;
}

export function runPartita(args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  const started = Date.now();
  return new Promise((resolve) => {
    const wantsStdin = opts.input !== undefined || opts.onStdout !== undefined || opts.keepStdinOpen;
    const child = spawn(process.execPath, [partitaBin, ...args], {
      stdio: [wantsStdin ? 'pipe' : 'ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    const write = (s: string): void => void child.stdin?.write(s);
    child.stdout!.on('data', (d: Buffer) => {
      stdout += d.toString('latin1');
      opts.onStdout?.(stdout, write);
    });
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString('utf8')));
    child.stdin?.on('error', () => undefined);
    if (opts.input !== undefined) {
      setTimeout(() => {
        child.stdin?.write(opts.input);
        if (!opts.keepStdinOpen) child.stdin?.end();
      }, opts.inputDelayMs ?? 0);
    }
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, opts.timeoutMs ?? 60_000);
    child.on('close', (status, signal) => {
      clearTimeout(timer);
      resolve({ stdout, stderr, status, signal, timedOut, ms: Date.now() - started });
    });
  });
}
