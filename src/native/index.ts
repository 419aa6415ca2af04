// Typed face of the native layer (src/native/partita_native.c). Every call that can fail returns -errno there;
// the wrappers here turn that into a SystemCallError naming the call and the errno. Arguments are checked
// natively: a wrong type throws a TypeError, a value out of range (a buffer shorter than its ioctl's _IOC_SIZE,
// a path with a NUL byte, a handle that is not live) a RangeError or TypeError, before any system call.
import { createRequire } from 'node:module';
import { constants as osConstants } from 'node:os';

export interface VcpuThreadHandle {
  readonly handle: bigint;
  readonly thread: bigint;
}

interface NativeBinding {
  open(path: string, flags: number): number;
  close(fd: number): number;
  /** dup2(2): newfd, or -errno (the new descriptor is not close-on-exec). */
  dup2(oldfd: number, newfd: number): number;
  ioctl(fd: number, request: number, arg?: number | bigint | ArrayBufferView | ArrayBuffer): number;
  /** flock(2): LOCK_SH 1, LOCK_EX 2, LOCK_NB 4, LOCK_UN 8. */
  flock(fd: number, operation: number): number;
  /** fallocate(2): mode FALLOC_FL_KEEP_SIZE 1, PUNCH_HOLE 2, ZERO_RANGE 0x10. */
  fallocate(fd: number, mode: number, offset: number, length: number): number;
  run(fd: number): number;
  /** A native block I/O thread (see partita_native.c): handle, or -errno. */
  ioThreadStart(onCompletions: () => void): bigint | number;
  /** op 1 pwritev from `views`, 2 fdatasync. 0 or -errno. */
  ioSubmit(thread: bigint, id: number, fd: number, op: number, offset: number, views: readonly Uint8Array[]): number;
  /** Fills `out` with (id, bytes or -errno) pairs; returns how many. */
  ioReap(thread: bigint, out: Float64Array): number;
  /** Whether pending I/O keeps the calling thread's event loop alive. */
  ioKeepAlive(thread: bigint, keep: boolean): number;
  mmap(length: number | bigint, prot: number, flags: number, fd: number, offset: number): bigint | number;
  munmap(address: bigint, length: number | bigint): number;
  madvise(address: bigint, length: number | bigint, advice: number): number;
  view(address: bigint, length: number): ArrayBuffer;
  addressOf(buffer: ArrayBufferView | ArrayBuffer): bigint;
  eventfd(initval: number, flags: number): number;
  threadSelf(): bigint;
  /** 0, or -errno; -ESRCH (no signal, no immediate_exit write) for an application-processor thread that ended. */
  kick(thread: bigint, immediateExitAddress: bigint): number;
  startTick(ms: number): bigint | number;
  stopTick(timer: bigint): number;
  watchTerminationSignals(immediateExitAddress: bigint): number;
  pendingSignal(): number;
  restoreTerminationSignals(): number;
  startVcpuThread(
    fd: number,
    id: number,
    onExit: (id: number, result: number) => void,
    immediateExitAddress: bigint,
  ): VcpuThreadHandle | number;
  stopVcpuThreads(timeoutMs: number): number;
  completeVcpuExit(handle: bigint, keepRunning: boolean): void;
  /** At most 64 calls wait for the calling thread; beyond that the watcher thread waits (kicks add up meanwhile). */
  watchFds(onReady: (fd: number) => void): bigint | number;
  /** An eventfd (the watcher reads it), or with `readinessOnly` any fd, reported edge-triggered when readable. */
  watchFdAdd(watcher: bigint, fd: number, readinessOnly?: boolean): number;
  watchFdRemove(watcher: bigint, fd: number): number;
  readonly SIG_KICK: number;
}

const require = createRequire(import.meta.url);

function loadBinding(): NativeBinding {
  // Relative to dist/src/native/index.js (tsc output), a bundle chunk in dist/chunks/, or a bundle in dist/.
  const candidates = [
    '../../../build/partita_native.node',
    '../../build/partita_native.node',
    '../build/partita_native.node',
  ];
  let lastError: unknown;
  for (const c of candidates) {
    try {
      return require(c) as NativeBinding;
    } catch (e) {
      lastError = e;
      if ((e as NodeJS.ErrnoException).code !== 'MODULE_NOT_FOUND') break;
    }
  }
  throw new Error(
    `partita: the native layer is not built (${(lastError as Error).message.split('\n')[0]}); run \`npm ci\` ` +
      '(it needs gcc: sudo apt-get install gcc libc6-dev)',
  );
}

export const native: NativeBinding = loadBinding();

const errnoNames = new Map<number, string>(
  Object.entries(osConstants.errno).map(([name, value]) => [value, name] as [number, string]),
);

export function errnoName(errno: number): string {
  return errnoNames.get(errno) ?? `errno ${errno}`;
}

export class SystemCallError extends Error {
  constructor(
    readonly call: string,
    readonly errno: number,
    detail?: string,
  ) {
    super(`${call} failed: ${errnoName(errno)}${detail ? ` (${detail})` : ''}`);
    this.name = 'SystemCallError';
  }
  get code(): string {
    return errnoName(this.errno);
  }
}

/** Throws a SystemCallError when a native call returned -errno; returns the result otherwise. */
export function check(result: number, call: string, detail?: string): number {
  if (result < 0) throw new SystemCallError(call, -result, detail);
  return result;
}

export function checkBig(result: bigint | number, call: string, detail?: string): bigint {
  if (typeof result === 'number') throw new SystemCallError(call, -result, detail);
  return result;
}

export const O_RDWR = 2;
export const O_RDONLY = 0;
export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const MAP_SHARED = 0x01;
export const MAP_PRIVATE = 0x02;
export const MAP_ANONYMOUS = 0x20;
export const MAP_NORESERVE = 0x4000;
export const MADV_DONTNEED = 4;
export const MADV_DONTDUMP = 16;
export const MADV_MERGEABLE = 12;
export const EFD_NONBLOCK = 0o4000;
export const EINTR = osConstants.errno.EINTR;
export const EAGAIN = osConstants.errno.EAGAIN;
