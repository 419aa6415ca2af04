// Runs a test guest on QEMU (microvm + KVM), for side-by-side checks against Partita.
import { spawn, spawnSync } from 'node:child_process';
import { HANG_GUARD_MS, HangError } from './partita.js';

export const QEMU = 'qemu-system-x86_64';
/** PARTITA_NO_QEMU=1 turns the QEMU comparisons off (npm run test:nested does: QEMU in emulated nesting is slow). */
const qemuTurnedOff = process.env.PARTITA_NO_QEMU === '1';

export const QEMU_MISSING = qemuTurnedOff
  ? 'QEMU comparison turned off (PARTITA_NO_QEMU=1)'
  : `${QEMU} not installed: sudo apt-get install qemu-system-x86 (QEMU comparison skipped)`;

export function qemuAvailable(): boolean {
  return !qemuTurnedOff && spawnSync(QEMU, ['--version'], { stdio: 'ignore' }).status === 0;
}

export interface QemuResult {
  readonly output: string;
  readonly status: number | null;
}

/** Runs QEMU until the guest exits; `timeoutMs` (default HANG_GUARD_MS) is a hang guard that rejects (HangError). */
export function runOnQemu(
  kernel: string,
  opts: {
    cmdline?: string;
    memory?: string;
    input?: string;
    inputAfter?: string;
    initrd?: string;
    timeoutMs?: number;
    extraArgs?: string[];
  } = {},
): Promise<QemuResult> {
  const args = [
    '-M',
    'microvm,acpi=on',
    '-enable-kvm',
    '-nodefaults',
    '-no-user-config',
    '-nographic',
    '-serial',
    'stdio',
    '-device',
    'isa-debug-exit,iobase=0xf4,iosize=4',
    '-kernel',
    kernel,
  ];
  if (opts.cmdline) args.push('-append', opts.cmdline);
  if (opts.memory) args.push('-m', opts.memory);
  if (opts.initrd) args.push('-initrd', opts.initrd);
  if (opts.extraArgs) args.push(...opts.extraArgs);
  return new Promise((resolve, reject) => {
    const child = spawn(QEMU, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let output = '';
    let stderr = '';
    let timedOut = false;
    let sent = false;
    child.stdout.on('data', (d: Buffer) => {
      output += d.toString('latin1');
      if (opts.input !== undefined && !sent && output.includes(opts.inputAfter ?? '')) {
        sent = true;
        child.stdin.write(opts.input);
      }
    });
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString('utf8')));
    child.stdin.on('error', () => undefined);
    const started = Date.now();
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, opts.timeoutMs ?? HANG_GUARD_MS);
    child.on('close', (status) => {
      clearTimeout(timer);
      if (timedOut) reject(new HangError(`${QEMU} ${args.join(' ')}`, Date.now() - started, output, stderr));
      else resolve({ output, status });
    });
  });
}
