// One supervised VMM process per VM. A VM starts as `partita run --spec <vm>/spec.json --control … --serial
// unix:… --serial-log …` in its own process group (detached: a daemon restart or a Ctrl-C in the daemon's
// terminal does not touch it), stderr into <vm>/vmm.log. Its state follows the process:
//
//   stopped/crashed --start--> starting --control answers--> running <--pause/resume--> paused
//   running/paused/starting --stop--> stopping --exit--> stopped;  any --unexpected non-clean exit--> crashed
//
// A VMM that dies on its own with a non-clean status is 'crashed' (its vmm.log kept); other VMs are separate
// processes and never notice. <vm>/vmm-state.json records pid, process start time (/proc/PID/stat field 22)
// and socket paths while a VMM runs, so a restarted daemon reattaches: only to the very process it started
// (same PID and start time: a reused PID is someone else) that answers 'status' on its control socket.
//
// Warm VMM (src/daemon/warm-vmm.ts): the daemon keeps one `partita vmm-standby` process started ahead of time
// and hands the next started VM to it (the same `run` arguments, its stderr into the same vmm.log), so a start
// does not wait for Node's start-up and the VMM bundle's loading. After each start a new standby is spawned once
// that VM is up (not while it boots: on a small machine the two would compete for the CPU). A standby that
// died idle is not replaced until the next start (so a standby that cannot start is never respawned in a
// loop); an unusable one means a cold spawn, transparently. PARTITA_WARM_VMM=0 turns it off.
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import {
  appendFileSync,
  closeSync,
  existsSync,
  fstatSync,
  mkdirSync,
  openSync,
  readFileSync,
  readSync,
  rmSync,
  writeSync,
} from 'node:fs';
import { dirname, join } from 'node:path';
import { constants as osConstants, tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import type { VmLibrary } from './library.js';
import type { DaemonEvent, VmRecord, VmState } from './api-schemas.js';
import { conflict, DaemonError } from './errors.js';
import { writeFileAtomic } from './atomic-file.js';
import { isSameProcess, isZombie, processStartTime } from './proc.js';
import { controlRequest } from './vmm-client.js';
import { MAX_SOCKET_PATH } from './paths.js';
import { WarmVmm, type WarmExit } from './warm-vmm.js';
import type { ControlResponse } from '../vmm/control-protocol.js';

/** What <vm>/vmm-state.json holds while a VMM runs. */
export interface VmmStateFile {
  readonly pid: number;
  /** /proc/PID/stat field 22 of the VMM when it was started. */
  readonly startTime: string;
  readonly control: string;
  readonly serial: string;
  readonly statusFile: string;
  /** A VMM that was a warm standby: the `--standby-id` on its command line (it has no --control there). */
  readonly standbyId?: string;
}

/** What a VMM wrote to its --status-file when its VM stopped. */
interface VmmStatus {
  readonly status: number;
  readonly kind: string;
  readonly message: string;
}

export const STATE_FILE = 'vmm-state.json';

export interface SupervisorOptions {
  /** argv that runs `partita run` (default: this Node and the checkout's bin/partita.js). */
  readonly vmmCommand?: readonly string[];
  /** How long a VMM gets to end after 'stop' over the control channel, then after SIGTERM. */
  readonly stopGraceMs?: number;
  /** Where sockets go when the VM folder's path is too long for a UNIX socket. */
  readonly runtimeDir?: string;
  /**
   * argv of a warm VMM (`partita vmm-standby`, plus `--standby-id ID`); [] for none. Default: the checkout's when
   * vmmCommand is the default (and PARTITA_WARM_VMM is not 0), none for another vmmCommand (whose standby
   * protocol is unknown).
   */
  readonly standbyCommand?: readonly string[];
  /** How long a standby gets to take a hand-off before a cold VMM is spawned instead. */
  readonly handOffTimeoutMs?: number;
}

interface Running {
  state: VmState;
  pid: number;
  startTime: string;
  files: VmmStateFile;
  child?: ChildProcess;
  stopRequested: boolean;
  exited: Promise<void>;
  markExited: () => void;
  watch?: NodeJS.Timeout;
}

/** How a VMM ended, as a child process. */
function exitStatusOf(code: number | null, signal: NodeJS.Signals | null): number {
  return code ?? 128 + (signal ? (osConstants.signals[signal] ?? 0) : 0);
}

/** The checkout's bin/partita.js, found upwards from this module (bundled into dist/ or compiled into dist/src/). */
export function defaultVmmCommand(): string[] {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const bin = join(dir, 'bin', 'partita.js');
    if (existsSync(bin)) return [process.execPath, bin, 'run'];
    const up = dirname(dir);
    if (up === dir) throw new Error('cannot find bin/partita.js above ' + fileURLToPath(import.meta.url));
    dir = up;
  }
}

/**
 * Clean ends of a VMM: 0 (power-off, stop, quit) and a guest's debug-exit status (odd, below 128) except 3,
 * which is also the VMM's "stopped on a fault" status. 2 (bad input), 3 and signals are crashes.
 */
export function isCleanExit(status: number): boolean {
  return status === 0 || (status % 2 === 1 && status < 128 && status !== 3);
}

export class Supervisor extends EventEmitter<{ event: [DaemonEvent] }> {
  private readonly running = new Map<string, Running>();
  private readonly locks = new Map<string, Promise<unknown>>();
  private readonly vmmCommand: readonly string[];
  private readonly stopGraceMs: number;
  private readonly runtimeDir: string;
  private readonly standbyCommand: readonly string[];
  private readonly handOffTimeoutMs: number;
  /** The idle warm VMM, if one is kept. */
  private standby?: WarmVmm;
  private closed = false;

  constructor(
    readonly library: VmLibrary,
    options: SupervisorOptions = {},
  ) {
    super();
    this.vmmCommand = options.vmmCommand ?? defaultVmmCommand();
    this.stopGraceMs = options.stopGraceMs ?? 10_000;
    this.runtimeDir = options.runtimeDir ?? join(tmpdir(), `partita-${process.getuid?.() ?? 'user'}`);
    this.standbyCommand =
      options.standbyCommand ??
      (options.vmmCommand === undefined && process.env.PARTITA_WARM_VMM !== '0'
        ? [...this.vmmCommand.slice(0, -1), 'vmm-standby']
        : []);
    this.handOffTimeoutMs = options.handOffTimeoutMs ?? 10_000;
  }

  /** Starts a warm VMM unless one is kept already (or none is configured, or the supervisor is closed). */
  keepWarm(): void {
    if (this.closed || this.standby || this.standbyCommand.length === 0) return;
    const warm = WarmVmm.spawn(this.standbyCommand);
    if (!warm) return;
    this.standby = warm;
    void warm.exit.then(() => {
      if (this.standby === warm) this.standby = undefined;
    });
  }

  /** The idle warm VMM's PID once it is ready for a hand-off; undefined when there is none (or it died). */
  async warmReady(): Promise<number | undefined> {
    const warm = this.standby;
    return warm && (await warm.whenReady()) && warm.alive ? warm.pid : undefined;
  }

  /** The record with the live state (and pid) of its VMM. */
  record(name: string): VmRecord {
    const stored = this.library.get(name);
    const live = this.running.get(name);
    if (!live) {
      // No VMM: whatever the record last said, the VM is not running (and has no pid).
      const rest: VmRecord = { ...stored };
      delete rest.pid;
      return { ...rest, state: stored.state === 'crashed' ? 'crashed' : 'stopped' };
    }
    return { ...stored, state: live.state, pid: live.pid };
  }

  list(): VmRecord[] {
    return this.library.names().flatMap((n) => {
      try {
        return [this.record(n)];
      } catch {
        return [];
      }
    });
  }

  state(name: string): VmState {
    return this.running.get(name)?.state ?? this.record(name).state;
  }

  /** The serial console socket of a VM whose VMM runs. */
  serialSocket(name: string): string | undefined {
    return this.running.get(name)?.files.serial;
  }

  isActive(name: string): boolean {
    return this.running.has(name);
  }

  /** Runs `fn` after every earlier operation on the same VM (start, stop, settings, delete) finished. */
  exclusive<T>(name: string, fn: () => Promise<T> | T): Promise<T> {
    const before = this.locks.get(name) ?? Promise.resolve();
    const result = before.then(fn, fn);
    const tail = result.catch(() => undefined);
    this.locks.set(name, tail);
    void tail.then(() => {
      if (this.locks.get(name) === tail) this.locks.delete(name);
    });
    return result;
  }

  /** Socket paths of a VM: in its folder, or under the runtime dir when that path would be too long to bind. */
  private socketPaths(name: string): { control: string; serial: string } {
    const dir = this.library.vmDir(name);
    const inFolder = { control: join(dir, 'control.sock'), serial: join(dir, 'serial.sock') };
    if (Buffer.byteLength(inFolder.control) <= MAX_SOCKET_PATH && Buffer.byteLength(inFolder.serial) <= MAX_SOCKET_PATH)
      return inFolder;
    const short = join(this.runtimeDir, createHash('sha256').update(dir).digest('hex').slice(0, 16));
    mkdirSync(short, { recursive: true, mode: 0o700 });
    return { control: join(short, 'control.sock'), serial: join(short, 'serial.sock') };
  }

  start(name: string): Promise<VmRecord> {
    return this.exclusive(name, async () => {
      const record = this.record(name);
      if (this.running.has(name)) throw wrongState(name, record.state, 'already');
      const dir = this.library.vmDir(name);
      // The spec the VMM runs, without a serial section: --serial below says how this run is connected.
      const spec = { ...record.spec };
      delete spec.serial;
      const specPath = join(dir, 'spec.json');
      writeFileAtomic(specPath, JSON.stringify(spec, null, 2) + '\n', 0o600);
      const sockets = this.socketPaths(name);
      const statusFile = join(dir, 'vmm-status.json');
      for (const p of [sockets.control, sockets.serial, statusFile]) rmSync(p, { force: true });
      const logPath = join(dir, 'vmm.log');
      const runArgs = [
        '--spec',
        specPath,
        '--control',
        sockets.control,
        '--serial',
        `unix:${sockets.serial}`,
        '--serial-log',
        join(dir, 'serial.log'),
        '--status-file',
        statusFile,
        // The screen over RFB, which the daemon bridges to browsers (/api/vms/NAME/vnc) and native viewers.
        ...(specHasDisplay(specPath) ? ['--vnc', `unix:${join(dir, 'vnc.sock')}`] : []),
      ];
      const log = openSync(logPath, 'a', 0o600);
      writeSync(log, `--- partita: VMM starting at ${new Date().toISOString()}\n`);
      closeSync(log);
      // Taken synchronously: a concurrent start of another VM finds no standby and spawns cold.
      const warm = this.standby;
      this.standby = undefined;
      let vmm: { pid: number; startTime: string; child: ChildProcess; exit: Promise<WarmExit>; standbyId?: string };
      const handed = warm
        ? await warm.handOff({ args: runArgs, log: logPath, cwd: dir }, this.handOffTimeoutMs)
        : undefined;
      if (warm && handed?.ok) {
        vmm = { pid: warm.pid, startTime: warm.startTime, child: warm.child, exit: warm.exit, standbyId: warm.id };
      } else {
        if (handed && !handed.ok)
          appendFileSync(logPath, `--- partita: the warm VMM was unusable (${handed.why}): starting a cold one\n`);
        vmm = this.spawnCold(name, runArgs, logPath);
      }
      const { pid, startTime, child } = vmm;
      const files: VmmStateFile = {
        pid,
        startTime,
        ...sockets,
        statusFile,
        ...(vmm.standbyId !== undefined ? { standbyId: vmm.standbyId } : {}),
      };
      writeFileAtomic(join(dir, STATE_FILE), JSON.stringify(files) + '\n', 0o600);
      const live = this.track(name, files, child);
      void vmm.exit.then(({ code, signal }) =>
        this.ended(name, live, exitStatusOf(code, signal), signal ? `killed by ${signal}` : undefined),
      );
      this.setState(name, 'starting', { pid, message: undefined, exitStatus: undefined });
      // The next standby once this VM is up (or after a while, should it never answer).
      const replace = setTimeout(() => this.keepWarm(), 5000);
      replace.unref();
      void this.waitUntilUp(name, live).then(() => {
        clearTimeout(replace);
        this.keepWarm();
      });
      return this.record(name);
    });
  }

  /** `partita run …` as a new process: detached (own process group), stdout and stderr into vmm.log. */
  private spawnCold(
    name: string,
    runArgs: readonly string[],
    logPath: string,
  ): { pid: number; startTime: string; child: ChildProcess; exit: Promise<WarmExit> } {
    const log = openSync(logPath, 'a', 0o600);
    let child: ChildProcess;
    try {
      const [cmd, ...args] = this.vmmCommand;
      child = spawn(cmd, [...args, ...runArgs], {
        detached: true,
        stdio: ['ignore', log, log],
        cwd: dirname(logPath),
      });
    } finally {
      closeSync(log);
    }
    const pid = child.pid;
    if (pid === undefined) {
      child.on('error', () => undefined);
      throw new DaemonError(500, `cannot start the VMM of '${name}' (see ${logPath})`);
    }
    child.unref();
    // The start time is read at once: the child is this process (forked, exec'ing) and cannot be reaped yet.
    const startTime = processStartTime(pid) ?? '';
    const exit = new Promise<WarmExit>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
    return { pid, startTime, child, exit };
  }

  private track(name: string, files: VmmStateFile, child?: ChildProcess): Running {
    let markExited!: () => void;
    const exited = new Promise<void>((resolve) => (markExited = resolve));
    const live: Running = {
      state: 'starting',
      pid: files.pid,
      startTime: files.startTime,
      files,
      child,
      stopRequested: false,
      exited,
      markExited,
    };
    this.running.set(name, live);
    return live;
  }

  /** 'starting' ends when the control channel answers (the VMM serves it once the VM is built). */
  private async waitUntilUp(name: string, live: Running): Promise<void> {
    let delay = 20;
    while (this.running.get(name) === live && live.state === 'starting') {
      const answer = await controlRequest(live.files.control, 'status', 2000).catch(() => undefined);
      if (answer?.ok && this.running.get(name) === live && live.state === 'starting') {
        this.setState(name, answer.state === 'paused' ? 'paused' : 'running');
        return;
      }
      await sleep(delay);
      delay = Math.min(delay * 2, 500);
    }
  }

  /** The VMM ended (exit of our child, or a reattached process that vanished). */
  private ended(name: string, live: Running, status: number | undefined, how?: string): void {
    if (this.running.get(name) !== live) return;
    if (live.watch) clearInterval(live.watch);
    this.running.delete(name);
    const dir = this.library.vmDir(name);
    const reported = readStatusFile(live.files.statusFile);
    const exitStatus = status ?? reported?.status;
    let state: VmState;
    let message: string;
    if (live.stopRequested) {
      state = 'stopped';
      message = reported?.message ?? 'stopped';
    } else if (exitStatus !== undefined && isCleanExit(exitStatus)) {
      state = 'stopped';
      message = reported?.message ?? `the VMM exited with status ${exitStatus}`;
    } else {
      state = 'crashed';
      const last = lastLogLine(join(dir, 'vmm.log'));
      message =
        reported?.message ??
        (how
          ? `the VMM was ${how}`
          : exitStatus !== undefined
            ? `the VMM exited with status ${exitStatus}`
            : 'the VMM ended without a status') +
          (last ? `: ${last}` : '') +
          ` (see ${join(dir, 'vmm.log')})`;
    }
    for (const p of [live.files.control, live.files.serial, join(dir, STATE_FILE)]) rmSync(p, { force: true });
    try {
      this.setState(name, state, { pid: undefined, exitStatus, message });
    } catch {
      // the VM was deleted meanwhile
    }
    live.markExited();
  }

  private setState(name: string, state: VmState, changes: Partial<VmRecord> = {}): void {
    const live = this.running.get(name);
    if (live) live.state = state;
    const stored = this.library.get(name);
    const next: VmRecord = { ...stored, ...changes, state };
    for (const key of Object.keys(next) as (keyof VmRecord)[]) if (next[key] === undefined) delete next[key];
    this.library.save(next);
    this.emit('event', { type: 'state', name, state, ...(next.message ? { message: next.message } : {}) });
  }

  stop(name: string, kill = false): Promise<VmRecord> {
    return this.exclusive(name, async () => {
      const live = this.running.get(name);
      if (!live) throw wrongState(name, this.record(name).state, 'not-running');
      live.stopRequested = true;
      this.setState(name, 'stopping');
      if (kill) {
        this.signal(live, 'SIGKILL');
        await live.exited;
        return this.record(name);
      }
      await controlRequest(live.files.control, 'stop', 2000).catch(() => undefined);
      if (await ended(live, this.stopGraceMs)) return this.record(name);
      this.signal(live, 'SIGTERM');
      if (await ended(live, this.stopGraceMs)) return this.record(name);
      throw conflict(`vm '${name}' did not stop (pid ${live.pid}): stop it with --kill`);
    });
  }

  /** Signals the VMM's process group, only while it is provably the process we started. */
  private signal(live: Running, signal: NodeJS.Signals): void {
    if (!isSameProcess(live.pid, live.startTime)) return;
    try {
      process.kill(-live.pid, signal);
    } catch {
      try {
        process.kill(live.pid, signal);
      } catch {
        // already gone
      }
    }
  }

  pause(name: string): Promise<VmRecord> {
    return this.exclusive(name, async () => {
      const live = this.running.get(name);
      if (!live || live.state !== 'running') throw wrongState(name, this.record(name).state, 'pause');
      const answer = await this.ask(name, live, 'pause');
      this.setState(name, answer.state === 'paused' ? 'paused' : live.state);
      return this.record(name);
    });
  }

  resume(name: string): Promise<VmRecord> {
    return this.exclusive(name, async () => {
      const live = this.running.get(name);
      if (!live || live.state !== 'paused') throw wrongState(name, this.record(name).state, 'resume');
      const answer = await this.ask(name, live, 'resume');
      this.setState(name, answer.state === 'running' ? 'running' : live.state);
      return this.record(name);
    });
  }

  /** A PNG of the VM's screen through its control channel. */
  async screenshot(name: string): Promise<Uint8Array> {
    const live = this.running.get(name);
    if (!live || (live.state !== 'running' && live.state !== 'paused'))
      throw wrongState(name, this.record(name).state, 'screenshot');
    const answer = await this.ask(name, live, 'screenshot', 30_000);
    if (!answer.png) throw conflict(`vm '${name}' sent no picture`);
    return Buffer.from(answer.png, 'base64');
  }

  private async ask(
    name: string,
    live: Running,
    op: 'pause' | 'resume' | 'screenshot',
    timeoutMs = 5000,
  ): Promise<ControlResponse & { ok: true }> {
    let answer: ControlResponse;
    try {
      answer = await controlRequest(live.files.control, op, timeoutMs);
    } catch (e) {
      throw new DaemonError(502, `vm '${name}': ${(e as Error).message}`);
    }
    if (!answer.ok) throw conflict(`vm '${name}': ${answer.error}`);
    return answer;
  }

  /**
   * On daemon start: every VM whose VMM was running gets it back if, and only if, the recorded PID is still
   * the process started then (same /proc start time) and it answers 'status' on its control socket. Anything
   * else (gone, reused PID, a process that does not answer) is not ours: it is never signalled, and the VM is
   * settled as stopped or crashed from what the VMM left behind.
   */
  async reattach(): Promise<{ reattached: string[]; refused: { name: string; why: string }[] }> {
    const reattached: string[] = [];
    const refused: { name: string; why: string }[] = [];
    for (const name of this.library.names()) {
      const dir = this.library.vmDir(name);
      const stateFile = join(dir, STATE_FILE);
      let files: VmmStateFile | undefined;
      try {
        files = JSON.parse(readFileSync(stateFile, 'utf8')) as VmmStateFile;
      } catch {
        files = undefined;
      }
      const stored = this.library.get(name);
      if (!files) {
        if (stored.state !== 'stopped' && stored.state !== 'crashed')
          this.settle(name, 'crashed', 'the daemon lost track of its VMM (no state file)');
        continue;
      }
      const check = await reattachProblem(files);
      if (check.why === undefined) {
        const live = this.track(name, files);
        const answer = check.answering
          ? await controlRequest(files.control, 'status', 2000).catch(() => undefined)
          : undefined;
        // A VMM still building its VM (no control channel yet) is taken back as 'starting' and followed.
        live.state = !answer?.ok ? 'starting' : answer.state === 'paused' ? 'paused' : 'running';
        this.setState(name, live.state, { pid: files.pid });
        this.watchForeign(name, live);
        if (live.state === 'starting') void this.waitUntilUp(name, live);
        reattached.push(name);
        continue;
      }
      const why = check.why;
      refused.push({ name, why });
      rmSync(stateFile, { force: true });
      const reported = readStatusFile(files.statusFile);
      if (reported && isCleanExit(reported.status)) this.settle(name, 'stopped', reported.message, reported.status);
      else
        this.settle(
          name,
          'crashed',
          reported?.message ?? `the VMM ended while the daemon was away, without a status (${why})`,
          reported?.status,
        );
    }
    return { reattached, refused };
  }

  private settle(name: string, state: VmState, message: string, exitStatus?: number): void {
    this.setState(name, state, { pid: undefined, message, exitStatus });
  }

  /** A reattached VMM is not our child: its end is seen by polling its identity and its control socket. */
  private watchForeign(name: string, live: Running): void {
    live.watch = setInterval(() => {
      if (!isSameProcess(live.pid, live.startTime) || isZombie(live.pid)) this.ended(name, live, undefined);
    }, 250);
    live.watch.unref();
  }

  /**
   * Stops watching (the VMMs keep running: they outlive the daemon by design) and kills the idle warm VMM,
   * resolving once it has exited.
   */
  async close(): Promise<void> {
    this.closed = true;
    for (const live of this.running.values()) if (live.watch) clearInterval(live.watch);
    const warm = this.standby;
    this.standby = undefined;
    await warm?.kill();
  }
}

/**
 * Whether the process in a state file is (provably) the VMM we started: the same PID with the same start time
 * (a reused PID is another process), running with our control socket on its command line (a state file from
 * before a reboot cannot name an unrelated process that happens to match), and, unless it is still building its
 * VM, answering 'status' there for that PID. Returns why not, or how it answers.
 */
export async function reattachProblem(
  files: VmmStateFile,
): Promise<{ answering: boolean; why?: undefined } | { why: string }> {
  const now = processStartTime(files.pid);
  if (now === undefined) return { why: `process ${files.pid} is gone` };
  if (now !== files.startTime)
    return { why: `PID ${files.pid} now belongs to another process (started at ${now}, not ${files.startTime})` };
  if (isZombie(files.pid)) return { why: `process ${files.pid} has exited` };
  const argv = processArgv(files.pid);
  // A VMM that was a warm standby has its random --standby-id on its command line instead of --control.
  const [flag, value] =
    files.standbyId !== undefined ? ['--standby-id', files.standbyId] : ['--control', files.control];
  const at = argv.indexOf(flag);
  if (at < 0 || argv[at + 1] !== value)
    return { why: `process ${files.pid} is not a VMM (no ${flag} ${value} on its command line)` };
  const answer = await controlRequest(files.control, 'status', 1000).catch(() => undefined);
  if (answer?.ok && answer.pid !== files.pid)
    return { why: `the control socket answers for process ${answer.pid}, not ${files.pid}` };
  return { answering: answer?.ok === true };
}

function processArgv(pid: number): string[] {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
  } catch {
    return [];
  }
}

function wrongState(
  name: string,
  state: VmState,
  what: 'already' | 'not-running' | 'pause' | 'resume' | 'screenshot',
): DaemonError {
  if (what === 'already') return conflict(`vm '${name}' is ${state}: stop it first`);
  if (what === 'resume') return conflict(`vm '${name}' is ${state}, not paused`);
  return conflict(`vm '${name}' is ${state}, not running`);
}

async function ended(live: Running, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
  const r = await Promise.race([live.exited.then(() => true as const), timeout]);
  clearTimeout(timer);
  return r;
}

function readStatusFile(path: string): VmmStatus | undefined {
  try {
    const s = JSON.parse(readFileSync(path, 'utf8')) as VmmStatus;
    return typeof s.status === 'number' ? s : undefined;
  } catch {
    return undefined;
  }
}

/** The last non-empty line of a log (its last 4 KiB), for a crash message. */
export function lastLogLine(path: string): string | undefined {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch {
    return undefined;
  }
  try {
    const size = fstatSync(fd).size;
    const from = Math.max(0, size - 4096);
    const buf = Buffer.alloc(size - from);
    readSync(fd, buf, 0, buf.length, from);
    const lines = buf
      .toString('utf8')
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l && !l.startsWith('--- partita:'));
    return lines.at(-1);
  } finally {
    closeSync(fd);
  }
}

/** Whether a VM's spec file has a display device (then its VMM serves RFB). */
function specHasDisplay(specPath: string): boolean {
  try {
    const spec = JSON.parse(readFileSync(specPath, 'utf8')) as { devices?: { kind?: unknown }[] };
    return (spec.devices ?? []).some((d) => d.kind === 'std-vga');
  } catch {
    return false;
  }
}
