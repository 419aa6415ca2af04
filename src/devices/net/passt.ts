// virtio 1.2 §5.1 Network Device, host side: user-mode networking through passt (https://passt.top), run as a child.
//
// passt gives the guest a network without privileges: it answers ARP/NDP and DHCP/DHCPv6 itself (handing out the
// host's own address and gateway) and maps the guest's TCP/UDP/ICMP flows onto ordinary host sockets. It talks
// to its one client over a UNIX stream socket with QEMU's "stream" framing, so once it runs, the link is a
// StreamSocketLink (stream-socket.ts).
//
// Lifetime: `--one-off` makes passt exit when its client disconnects, so it dies with the VM whenever the VMM's
// socket closes (including when the VMM is killed). close() also signals it, and an exit hook on the thread that
// spawned it covers a VMM that exits before the I/O thread ever connected.
//
// When the VMM runs as root, passt drops to nobody (65534) *before* binding its socket; the private directory the
// socket goes in is therefore handed to that user, or the bind fails (and this passt version does not say so).
import { spawn } from 'node:child_process';
import { chownSync, closeSync, lstatSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { findExecutable } from '../../host/executables.js';
import { DeviceOpenError } from '../model.js';
import { checkSocketPath } from './stream-socket.js';

export interface PasstHandle {
  readonly kind: 'user';
  /** passt's socket, in a private directory. */
  readonly path: string;
  readonly pid: number;
  /** The private directory (socket and passt's log); removed by releasePasst. */
  readonly dir: string;
}

/** How long passt may take to bind its socket. */
const START_TIMEOUT_MS = 5000;
const START_POLL_MS = 10;
/** The uid/gid passt runs as when started by root (it refuses to stay root). */
const NOBODY = 65534;

/** Builder thread: starts passt and waits (synchronously, bounded) until its socket exists. `mtu` goes to DHCP/NDP. */
export function openPasst(mtu: number): PasstHandle {
  const binary = findExecutable('passt', ['/usr/bin', '/usr/sbin']);
  if (!binary)
    throw new DeviceOpenError('user networking needs passt, which is not installed (sudo apt-get install passt)');
  const dir = mkdtempSync(join(tmpdir(), 'partita-passt-'));
  const path = join(dir, 'passt.sock');
  const logPath = join(dir, 'passt.log');
  let pid: number | undefined;
  try {
    checkSocketPath(path);
    const args = ['--foreground', '--one-off', '--quiet', '--socket', path, '--mtu', String(mtu)];
    if (process.getuid?.() === 0) {
      try {
        chownSync(dir, NOBODY, NOBODY);
      } catch (e) {
        throw new DeviceOpenError(`cannot hand ${dir} to uid ${NOBODY} for passt: ${(e as Error).message}`);
      }
      args.push('--runas', `${NOBODY}:${NOBODY}`);
    }
    // passt's messages go to a file: a pipe would tie the child to this thread's event loop.
    const log = openSync(logPath, 'w', 0o600);
    try {
      const child = spawn(binary, args, { stdio: ['ignore', 'ignore', log] });
      child.on('error', () => undefined); // a failed spawn shows up as a missing pid below
      child.unref();
      pid = child.pid;
    } finally {
      closeSync(log);
    }
    if (pid === undefined) throw new DeviceOpenError(`cannot start ${binary}`);
    waitForSocket(path, pid, logPath);
    const handle: PasstHandle = { kind: 'user', path, pid, dir };
    killOnExit(handle);
    return handle;
  } catch (e) {
    if (pid !== undefined) signal(pid, 'SIGKILL');
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
}

function waitForSocket(path: string, pid: number, logPath: string): void {
  const sleeper = new Int32Array(new SharedArrayBuffer(4));
  const deadline = Date.now() + START_TIMEOUT_MS;
  for (;;) {
    if (isSocket(path)) return;
    if (!alive(pid)) throw new DeviceOpenError(`passt exited at start-up${lastWords(logPath)}`);
    if (Date.now() > deadline) {
      throw new DeviceOpenError(
        `passt did not create its socket within ${START_TIMEOUT_MS / 1000} s${lastWords(logPath)}`,
      );
    }
    Atomics.wait(sleeper, 0, 0, START_POLL_MS); // the builder thread may block: nothing else runs on it yet
  }
}

function isSocket(path: string): boolean {
  try {
    return lstatSync(path).isSocket();
  } catch {
    return false;
  }
}

/** Whether `pid` is still running: not gone and not a zombie waiting to be reaped (/proc/PID/stat state Z). */
function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

/** passt's last meaningful log line, for an error message ("Failed to send … to syslog" is noise without syslog). */
function lastWords(logPath: string): string {
  let text = '';
  try {
    text = readFileSync(logPath, 'utf8');
  } catch {
    return '';
  }
  const lines = text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !/syslog/.test(l));
  return lines.length ? `: ${lines[lines.length - 1]}` : '';
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // already gone
  }
}

/** Only a process that is still this passt (its command line names our socket) is signalled: pids get reused. */
function isOurPasst(handle: PasstHandle): boolean {
  try {
    return readFileSync(`/proc/${handle.pid}/cmdline`, 'utf8').split('\0').includes(handle.path);
  } catch {
    return false;
  }
}

const exitHooks = new Map<number, () => void>();

function killOnExit(handle: PasstHandle): void {
  const hook = (): void => releasePasst(handle);
  exitHooks.set(handle.pid, hook);
  process.once('exit', hook);
}

/** Ends passt and removes its directory. Safe to call more than once and from any thread of the process. */
export function releasePasst(handle: PasstHandle): void {
  if (isOurPasst(handle)) signal(handle.pid, 'SIGTERM');
  rmSync(handle.dir, { recursive: true, force: true });
  const hook = exitHooks.get(handle.pid);
  if (hook) {
    exitHooks.delete(handle.pid);
    process.removeListener('exit', hook);
  }
}
