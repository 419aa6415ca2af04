// The native layer checks its arguments: a wrong type is a TypeError, a value out of range (a short ioctl
// buffer, a made-up handle, a path with a NUL byte) a RangeError or TypeError, never a crash or a system call
// on garbage. Each case runs in a child process, so a crash fails the case instead of killing the test runner.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';

const nativeUrl = new URL('../../src/native/index.js', import.meta.url).href;

interface Outcome {
  readonly name?: string;
  readonly message?: string;
  readonly returned?: string;
}

/** Runs `body` (an ES module with `native` in scope) in a child; returns what it printed last, as JSON. */
function inChild(body: string): unknown {
  const script = `import { native } from ${JSON.stringify(nativeUrl)};\n${body}`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(r.signal, null, `the child died of ${r.signal}: ${r.stderr}`);
  assert.equal(r.status, 0, `the child failed: ${r.stderr}`);
  const lines = r.stdout.trim().split('\n');
  return JSON.parse(lines[lines.length - 1]) as unknown;
}

function outcome(call: string, setup = ''): Outcome {
  return inChild(`${setup}
try {
  const r = ${call};
  console.log(JSON.stringify({ returned: String(r) }));
} catch (e) {
  console.log(JSON.stringify({ name: e.name, message: e.message }));
}`) as Outcome;
}

const KVM_GET_REGS = 0x8090ae81; // _IOR(KVMIO, 0x81, struct kvm_regs): 144 bytes
const BLKGETSIZE64 = 0x80081272; // _IOR(0x12, 114, size_t): 8 bytes
const devNull = 'const fd = native.open("/dev/null", 0);';

const cases: [string, string, 'TypeError' | 'RangeError', RegExp][] = [
  // [call, setup, error, message]
  ['native.open(123, 0)', '', 'TypeError', /^open: path must be a string$/],
  ['native.open("/dev/null\\0/etc/passwd", 0)', '', 'TypeError', /^open: path must be a string without NUL bytes$/],
  ['native.open("/" + "a".repeat(5000), 0)', '', 'RangeError', /^open: path is too long$/],
  ['native.open("/dev/null", "0")', '', 'TypeError', /^open: flags must be a number$/],
  ['native.close("0")', '', 'TypeError', /^close: fd must be a number$/],
  ['native.dup2("1", 9)', '', 'TypeError', /^dup2: oldfd must be a number$/],
  ['native.dup2(1, 2 ** 40)', '', 'RangeError', /^dup2: newfd is out of range$/],
  ['native.close(1.5)', '', 'RangeError', /^close: fd must be a whole number$/],
  ['native.close(2 ** 40)', '', 'RangeError', /^close: fd is out of range$/],
  ['native.flock(undefined, 2)', '', 'TypeError', /^flock: fd must be a number$/],
  ['native.fallocate(0, 0, "x", 1)', '', 'TypeError', /^fallocate: offset must be a number$/],
  [
    `native.ioctl(fd, ${KVM_GET_REGS}, new Uint8Array(16))`,
    devNull,
    'RangeError',
    /^ioctl: buffer is 16 bytes; request 0x8090ae81 needs 144$/,
  ],
  [`native.ioctl(fd, ${BLKGETSIZE64}, new Uint32Array(1))`, devNull, 'RangeError', /^ioctl: buffer is 4 bytes/],
  ['native.ioctl(fd, 0x5401, "termios")', devNull, 'TypeError', /^ioctl: argument must be a number, bigint/],
  ['native.ioctl(fd, 2 ** 40)', devNull, 'RangeError', /^ioctl: request must fit in 32 bits$/],
  ['native.ioctl("3", 0x5401)', '', 'TypeError', /^ioctl: fd must be a number$/],
  ['native.run("3")', '', 'TypeError', /^run: fd must be a number$/],
  ['native.mmap("4096", 3, 0x22, -1, 0)', '', 'TypeError', /^mmap: length must be a bigint or a number$/],
  ['native.munmap(undefined, 4096)', '', 'TypeError', /^munmap: address must be a bigint or a number$/],
  ['native.madvise(1n << 70n, 4096, 4)', '', 'RangeError', /^madvise: address must be a non-negative 64-bit value$/],
  ['new Uint8Array(native.view(0n, 4096))[0]', '', 'RangeError', /^view: address is null$/],
  ['native.addressOf({ length: 4 })', '', 'TypeError', /^addressOf: buffer must be a TypedArray/],
  ['native.eventfd(-1, 0)', '', 'RangeError', /^eventfd: initval is out of range$/],
  ['native.kick(undefined, 0n)', '', 'TypeError', /^kick: thread must be a bigint or a number$/],
  ['native.kick(0n, 0n)', '', 'RangeError', /^kick: thread is 0/],
  ['native.startTick(0)', '', 'RangeError', /^startTick: ms is out of range$/],
  ['native.stopTick(12345n)', '', 'RangeError', /^stopTick: timer is not a live timer$/],
  ['native.watchTerminationSignals("x")', '', 'TypeError', /^watchTerminationSignals: immediateExitAddress must be/],
  [
    'native.startVcpuThread(-1, 1, "not a function", 4096n)',
    '',
    'TypeError',
    /^startVcpuThread: onExit must be a function$/,
  ],
  ['native.startVcpuThread(-1, 1, () => {}, 0n)', '', 'RangeError', /^startVcpuThread: immediateExitAddress is null$/],
  [
    'native.completeVcpuExit(0x7fff12345678n, true)',
    '',
    'RangeError',
    /^completeVcpuExit: handle is not a vCPU thread$/,
  ],
  ['native.stopVcpuThreads("soon")', '', 'TypeError', /^stopVcpuThreads: timeoutMs must be a number$/],
  ['native.watchFds(42)', '', 'TypeError', /^watchFds: onReady must be a function$/],
  ['native.watchFdAdd(0x7fff12345678n, 0)', '', 'RangeError', /^watchFdAdd: handle is not a live handle$/],
  ['native.watchFdRemove(0x7fff12345678n, 0)', '', 'RangeError', /^watchFdRemove: handle is not a live handle$/],
  [
    'native.watchFdAdd(w, 0, "yes")',
    'const w = native.watchFds(() => {});',
    'TypeError',
    /^watchFdAdd: readinessOnly must be a boolean$/,
  ],
  ['native.ioThreadStart(null)', '', 'TypeError', /^ioThreadStart: onCompletions must be a function$/],
  ['native.ioSubmit(0x7fff12345678n, 1, 0, 2, 0, [])', '', 'RangeError', /^ioSubmit: handle is not a live handle$/],
  [
    'native.ioSubmit(t, 1, 0, 1, 0, "views")',
    'const t = native.ioThreadStart(() => {});',
    'TypeError',
    /^ioSubmit: views must be an array of Uint8Array$/,
  ],
  [
    'native.ioSubmit(t, 1, 0, 1, 0, [new Uint16Array(2)])',
    'const t = native.ioThreadStart(() => {});',
    'TypeError',
    /^ioSubmit: views must be an array of Uint8Array$/,
  ],
  [
    'native.ioSubmit(t, 1, 0, 7, 0, [])',
    'const t = native.ioThreadStart(() => {});',
    'RangeError',
    /^ioSubmit: op must be 1/,
  ],
  ['native.ioReap(0x7fff12345678n, new Float64Array(2))', '', 'RangeError', /^ioReap: handle is not a live handle$/],
  [
    'native.ioReap(t, new Uint8Array(16))',
    'const t = native.ioThreadStart(() => {});',
    'TypeError',
    /^ioReap: out must be a Float64Array$/,
  ],
  [
    'native.ioKeepAlive(t, 1)',
    'const t = native.ioThreadStart(() => {});',
    'TypeError',
    /^ioKeepAlive: keep must be a boolean$/,
  ],
];

for (const [call, setup, name, message] of cases) {
  test(`native: ${call} throws a ${name}`, () => {
    const o = outcome(call, setup);
    assert.equal(o.name, name, `${call}: ${JSON.stringify(o)}`);
    assert.match(o.message ?? '', message);
  });
}

test('native: well-formed calls still work (the checks do not refuse what the VMM passes)', () => {
  const o = inChild(`
const fd = native.open('/dev/null', 0);
const out = new BigUint64Array(1);
const results = {
  fd: fd >= 0,
  ioctl: native.ioctl(fd, ${BLKGETSIZE64}, out),            // ENOTTY: reached the kernel
  ioctlByValue: native.ioctl(fd, 0x5401, 0),
  flock: native.flock(fd, 1 | 4),
  close: native.close(fd),
  closeAgain: native.close(fd),                            // EBADF: negative fds and stale ones reach the kernel
  addr: typeof native.addressOf(new Uint8Array(8)),
  mmap: typeof native.mmap(4096, 3, 0x22, -1, 0),
  tick: typeof native.startTick(1000),
};
results.stopTick = native.stopTick(native.startTick(1000));
console.log(JSON.stringify(results));
`);
  assert.deepEqual(o, {
    fd: true,
    ioctl: -25,
    ioctlByValue: -25,
    flock: 0,
    close: 0,
    closeAgain: -9,
    addr: 'bigint',
    mmap: 'bigint',
    tick: 'bigint',
    stopTick: 0,
  });
});

test('native: kicking an application-processor thread that has ended neither signals it nor writes its kvm_run', () => {
  // The thread runs KVM_RUN on fd -1 (EBADF), hands that exit to JavaScript, is told to stop and ends; a late
  // kick (VmControl.stop racing the end of a vCPU) must then be refused rather than pthread_kill a finished
  // thread, which is undefined behaviour (a crash once its stack is unmapped).
  const o = inChild(`
const ie = new Uint8Array(8);
const ieAddress = native.addressOf(ie);
let started;
const exit = await new Promise((resolve) => {
  started = native.startVcpuThread(-1, 7, (id, result) => {
    native.completeVcpuExit(started.handle, false);
    resolve({ id, result });
  }, ieAddress);
});
const left = native.stopVcpuThreads(30000); // returns once every AP thread has ended
ie[0] = 0;
const kick = native.kick(started.thread, ieAddress);
console.log(JSON.stringify({ exit, left, kick, immediateExit: ie[0], self: native.kick(native.threadSelf(), 0n) }));
`);
  assert.deepEqual(o, {
    exit: { id: 7, result: -9 },
    left: 0,
    kick: -3, // -ESRCH
    immediateExit: 0,
    self: 0, // a live thread is still kicked
  });
});

test('native: the fd watcher hands over a bounded number of calls and loses none', () => {
  // 400 eventfds are signalled while this thread is blocked: the watcher may queue at most its 64-call limit
  // (plus the one it is blocked on) and must leave the rest unread. Once unblocked, every eventfd is accounted
  // for exactly once: either read here or reported by a call.
  const o = inChild(`
import { readSync, writeSync } from 'node:fs';
const N = 400;
const fds = Array.from({ length: N }, () => native.eventfd(0, 0o4000));
let calls = 0;
const w = native.watchFds(() => calls++);
for (const fd of fds) native.watchFdAdd(w, fd);
const one = Buffer.alloc(8);
one.writeBigUint64LE(1n);
for (const fd of fds) writeSync(fd, one);
Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1000); // the watcher cannot hand anything over now
let unread = 0;
const buf = Buffer.alloc(8);
for (const fd of fds) {
  try {
    readSync(fd, buf);
    unread++;
  } catch (e) {
    if (e.code !== 'EAGAIN') throw e;
  }
}
const deadline = Date.now() + 30000;
while (calls + unread < N && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
console.log(JSON.stringify({ N, unread, calls }));
`) as { N: number; unread: number; calls: number };
  assert.equal(o.calls + o.unread, o.N, `every eventfd once: ${JSON.stringify(o)}`);
  assert.ok(o.unread >= o.N - 65, `the watcher waited at its queue limit (${o.unread} of ${o.N} left unread)`);
});
