#!/usr/bin/env node
// Daemon benchmark (issue 11): VM start to the guest's first serial line, and the daemon's memory.
//   node bench/daemon.mjs [--runs N] [--vms N] [--json FILE]        (npm run bench:daemon builds first)
// Start rows, N runs interleaved, medians, ratios against QEMU's cold start:
//   daemon, warm  POST /api/vms/NAME/start on a daemon keeping a warm VMM → "Hello from a Partita test guest"
//                 in the VM's serial.log (hello test guest, build/guests/hello.pvh.elf, 128 MiB, like QEMU's)
//   daemon, cold  the same with the warm VMM off (PARTITA_WARM_VMM=0: a `partita run` spawned per start)
//   partita run   cold `node bin/partita.js run --kernel hello.pvh.elf` → the line on its stdout
//   qemu          cold `qemu-system-x86_64 -M microvm -enable-kvm … -kernel hello.pvh.elf` → the line on stdout
// Memory: the daemon's RSS (after a full GC) with 0 and --vms VMs defined, and its growth per running VM (with
// the serial-echo guest, which keeps running; the VMM processes are not counted).
// Without /dev/kvm no guest runs: the start rows say so and are not measured. What is measured instead, labelled
// as such: the start path up to KVM (to the VMM's "no /dev/kvm" error, the part a warm VMM saves), QEMU on TCG,
// and the per-running-VM growth with the fake VMM (test/support/fake-vmm.ts: the daemon's own share).
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { performance } from 'node:perf_hooks';
import { clearTimeout, setTimeout as timer } from 'node:timers';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const dist = (p) => pathToFileURL(join(root, 'dist', p)).href;
const GREETING = 'Hello from a Partita test guest';

// --- daemon mode: this script re-run as the daemon under test, driven over stdin/stdout (one line each way) ---
if (process.argv[2] === '--daemon') {
  const [, , , dataDir, mode] = process.argv;
  const { startDaemon } = await import(dist('src/daemon/daemon.js'));
  const fakeVmm = join(root, 'dist/test/support/fake-vmm.js');
  const supervisor =
    mode === 'fake'
      ? {
          vmmCommand: [process.execPath, fakeVmm, 'run'],
          standbyCommand: [process.execPath, fakeVmm, 'vmm-standby'],
        }
      : mode === 'cold'
        ? { standbyCommand: [] }
        : {};
  const daemon = await startDaemon({
    dataDir,
    socketPath: join(dataDir, 'partita.sock'),
    version: 'bench',
    supervisor,
  });
  const say = (line) => process.stdout.write(line + '\n');
  say('up');
  for await (const line of createInterface({ input: process.stdin })) {
    if (line === 'warm') say(`warm ${(await daemon.supervisor.warmReady()) ?? 'none'}`);
    else if (line === 'rss') {
      globalThis.gc?.();
      await sleep(50);
      globalThis.gc?.();
      say(`rss ${rssKiB(process.pid)}`);
    } else if (line === 'close') {
      await daemon.close();
      say('closed');
      process.exit(0);
    }
  }
  process.exit(0);
}

function rssKiB(pid) {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : NaN;
}

const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '5' },
    vms: { type: 'string', default: '10' },
    json: { type: 'string' },
  },
});
const RUNS = Number(values.runs);
const VMS = Number(values.vms);
const hello = join(root, 'build/guests/hello.pvh.elf');
const echo = join(root, 'build/guests/serial-echo.pvh.elf');
if (!existsSync(join(root, 'dist/main.js'))) {
  console.error('bench: not built: npm run build (npm run bench:daemon does)');
  process.exit(2);
}
if (!existsSync(hello) || !existsSync(echo))
  spawnSync(process.execPath, [join(root, 'scripts/build-guests.mjs')], { stdio: 'inherit' });
const { DaemonClient } = await import(dist('src/cli/daemon-client.js'));

const haveKvm = existsSync('/dev/kvm');
const haveQemu = spawnSync('qemu-system-x86_64', ['--version'], { stdio: 'ignore' }).status === 0;
const median = (xs) => (xs.length ? [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] : undefined);
const now = () => performance.now();

/** Waits (hang guard only) until `check` is truthy; polls every millisecond. */
async function until(what, check, guardMs = 60_000) {
  const end = Date.now() + guardMs;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > end) throw new Error(`bench: hang guard: still waiting for ${what}`);
    await sleep(1);
  }
}

/** A daemon under test: this script in --daemon mode, in a fresh data directory. */
async function startBenchDaemon(mode) {
  const dataDir = mkdtempSync(join(tmpdir(), 'partita-bench-daemon-'));
  const child = spawn(process.execPath, ['--expose-gc', fileURLToPath(import.meta.url), '--daemon', dataDir, mode], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  const next = async () => (await lines.next()).value ?? '';
  const ask = async (line) => {
    child.stdin.write(line + '\n');
    return next();
  };
  if ((await next()) !== 'up') throw new Error(`bench: the ${mode} daemon did not start`);
  const client = new DaemonClient({ socketPath: join(dataDir, 'partita.sock') });
  const call = async (method, path, body) => {
    const r = await client.request(method, path, body);
    if (r.status >= 400) throw new Error(`bench: ${method} ${path}: ${r.status} ${JSON.stringify(r.body)}`);
    return r.body;
  };
  return {
    mode,
    dataDir,
    pid: child.pid,
    call,
    vmDir: (name) => join(dataDir, 'vms', name),
    /** The warm VMM's PID once it is ready (undefined: none). */
    warm: async () => {
      const pid = Number((await ask('warm')).split(' ')[1]);
      return Number.isNaN(pid) ? undefined : pid;
    },
    rss: async () => Number((await ask('rss')).split(' ')[1]),
    async close() {
      for (const vm of await call('GET', '/api/vms'))
        if (vm.pid) await client.request('POST', `/api/vms/${vm.name}/stop`, { kill: true });
      await ask('close');
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

function fileSize(path) {
  try {
    return statSync(path).size;
  } catch {
    return 0;
  }
}

/** Bytes appended to `path` since `from`, as text. */
function tail(path, from) {
  try {
    return readFileSync(path).subarray(from).toString('latin1');
  } catch {
    return '';
  }
}

/**
 * One start through a daemon: ms from the start request to `needle` in the VM's `file` (serial.log: the guest's
 * line; vmm.log: the VMM's error without KVM), then until the VM has stopped and (warm) a new standby is ready.
 */
async function daemonStart(d, name, file, needle) {
  const path = join(d.vmDir(name), file);
  const from = fileSize(path);
  if (d.mode === 'warm') await d.warm(); // a standby ready, as it is between two starts by a user
  const t0 = now();
  await d.call('POST', `/api/vms/${name}/start`, {});
  await until(`'${needle}' in ${path}`, () => tail(path, from).includes(needle));
  const ms = now() - t0;
  await until(`${name} stopped`, async () => {
    const vm = await d.call('GET', `/api/vms/${name}`);
    return vm.state === 'stopped' || vm.state === 'crashed';
  });
  return ms;
}

/** ms from spawn to `needle` on the process's stdout or stderr; the process is then waited for. */
function coldStart(argv, needle) {
  return new Promise((resolve, reject) => {
    const t0 = now();
    const child = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let ms;
    const look = (b) => {
      out += b.toString('latin1');
      if (ms === undefined && out.includes(needle)) ms = now() - t0;
    };
    child.stdout.on('data', look);
    child.stderr.on('data', look);
    const guard = timer(() => child.kill('SIGKILL'), 60_000);
    child.on('close', () => {
      clearTimeout(guard);
      if (ms === undefined) reject(new Error(`bench: '${needle}' never came from ${argv.join(' ')}:\n${out}`));
      else resolve(ms);
    });
  });
}

const partitaRun = [process.execPath, join(root, 'bin/partita.js'), 'run', '--kernel', hello, '--memory', '128M'];
const qemuArgv = (accel) => [
  'qemu-system-x86_64',
  '-M',
  'microvm',
  '-accel',
  accel,
  '-nodefaults',
  '-no-user-config',
  '-nographic',
  '-serial',
  'stdio',
  '-device',
  'isa-debug-exit,iobase=0xf4,iosize=4',
  '-m',
  '128M',
  '-kernel',
  hello,
];

// Without KVM the VMM stops at opening /dev/kvm: the start path up to there is what is timed.
const KVM_ERROR = '/dev/kvm';
const needle = haveKvm ? GREETING : KVM_ERROR;
const file = haveKvm ? 'serial.log' : 'vmm.log';

process.stderr.write(
  `bench: ${RUNS} runs; ${haveKvm ? 'KVM present' : 'NO /dev/kvm: guests cannot run, start rows are measured to the VMM\'s "no /dev/kvm" error only'}\n`,
);
const warmD = await startBenchDaemon('warm');
const coldD = await startBenchDaemon('cold');
const samples = { warm: [], cold: [], run: [], qemu: [], node: [] };
try {
  for (const d of [warmD, coldD])
    await d.call('POST', '/api/vms', { name: 'hello', os: 'other', kernel: hello, memory: 128 * 2 ** 20 });
  for (let run = 0; run < RUNS; run++) {
    samples.warm.push(await daemonStart(warmD, 'hello', file, needle));
    samples.cold.push(await daemonStart(coldD, 'hello', file, needle));
    samples.run.push(await coldStart(partitaRun, needle));
    if (haveQemu) samples.qemu.push(await coldStart(qemuArgv(haveKvm ? 'kvm' : 'tcg'), GREETING));
    samples.node.push(await coldStart([process.execPath, '-e', 'console.log("x")'], 'x'));
    process.stderr.write(`  run ${run + 1}/${RUNS} done\n`);
  }
} finally {
  await warmD.close();
  await coldD.close();
}

// --- memory ---
process.stderr.write('bench: daemon memory\n');
const mem = {};
{
  const d = await startBenchDaemon('warm');
  try {
    mem.rss0 = await d.rss();
    const standby = await d.warm();
    mem.standby = standby ? rssKiB(standby) : undefined;
    for (let i = 0; i < VMS; i++)
      await d.call('POST', '/api/vms', { name: `vm${i}`, os: 'other', kernel: hello, memory: 128 * 2 ** 20 });
    mem.rssDefined = await d.rss();
  } finally {
    await d.close();
  }
}
{
  // Running VMs: real ones (serial-echo runs until told 'q') with KVM, else the fake VMM (the daemon's share).
  const d = await startBenchDaemon(haveKvm ? 'warm' : 'fake');
  try {
    for (let i = 0; i < VMS; i++)
      await d.call('POST', '/api/vms', { name: `vm${i}`, os: 'other', kernel: echo, memory: 128 * 2 ** 20 });
    mem.before = await d.rss();
    const vmmRss = [];
    for (let i = 0; i < VMS; i++) {
      await d.warm();
      await d.call('POST', `/api/vms/vm${i}/start`, {});
      const vm = await until(`vm${i} running`, async () => {
        const r = await d.call('GET', `/api/vms/vm${i}`);
        if (r.state === 'crashed' || r.state === 'stopped') throw new Error(`bench: vm${i} ${r.state}: ${r.message}`);
        return r.state === 'running' && r;
      });
      vmmRss.push(rssKiB(vm.pid));
    }
    await d.warm();
    mem.running = await d.rss();
    mem.perVm = (mem.running - mem.before) / VMS;
    mem.vmmRss = haveKvm ? median(vmmRss) : undefined;
  } finally {
    await d.close();
  }
}

// --- report ---
const results = Object.fromEntries(Object.entries(samples).map(([k, xs]) => [k, median(xs)]));
const f = (x, d = 1) => (x === undefined || Number.isNaN(x) ? '-' : x.toFixed(d));
const MiB = (kib) => (kib === undefined ? '-' : `${(kib / 1024).toFixed(1)} MiB`);
const q = results.qemu;
const lines = [];
const to = haveKvm ? 'first serial line' : 'the "no /dev/kvm" error (start path up to KVM; no guest ran)';
lines.push(`VM start to ${to}, median of ${RUNS} (ms):`);
const row = (label, ms, ratio) =>
  lines.push(`  ${label.padEnd(50)} ${f(ms).padStart(8)}${ratio !== undefined ? `   ${f(ratio, 2)}x QEMU` : ''}`);
const vsQemu = (ms) => (haveKvm && q ? ms / q : undefined);
row('(a) daemon API start, warm VMM', results.warm, vsQemu(results.warm));
row('(b) daemon API start, cold spawn (warm off)', results.cold, vsQemu(results.cold));
row('(c) cold partita run', results.run, vsQemu(results.run));
if (!haveQemu)
  lines.push('  (d) qemu: not measured: qemu-system-x86_64 not installed (apt-get install qemu-system-x86)');
else row(`(d) qemu -M microvm cold start${haveKvm ? ' (KVM)' : ' (TCG: no KVM here)'}`, q, haveKvm ? 1 : undefined);
row('    node -e (Node start-up, reference)', results.node);
if (!haveKvm) {
  lines.push(
    "  NOT MEASURED (no /dev/kvm): (a), (b), (c) to the guest's first serial line, and so no ratio vs QEMU;",
    '  QEMU on TCG is not the KVM cold start the goal compares with.',
  );
}
lines.push('', `Ratios (same run${haveKvm ? '' : '; to the no-KVM error'}):`);
lines.push(`  warm / cold daemon start   ${f(results.warm / results.cold, 2)}x`);
lines.push(`  warm daemon / partita run  ${f(results.warm / results.run, 2)}x`);
if (haveKvm && q) {
  const ok = results.warm <= 0.5 * q;
  lines.push(`  [${ok ? 'met ' : 'MISS'}] goal: warm daemon start ≤ 0.5x QEMU cold start: ${f(results.warm / q, 2)}x`);
}
lines.push('', 'Daemon memory (RSS after a full GC; VMM processes not counted):');
lines.push(`  0 VMs defined               ${MiB(mem.rss0)}`);
lines.push(`  ${`${VMS} VMs defined`.padEnd(27)} ${MiB(mem.rssDefined)}`);
lines.push(`  warm standby process        ${MiB(mem.standby)} (idle, its own process)`);
lines.push(
  `  growth per running VM       ${f(mem.perVm, 0)} KiB (${VMS} running; ${haveKvm ? 'serial-echo guests' : 'fake VMM: no KVM here, the daemon-side share only'})`,
);
if (mem.vmmRss !== undefined)
  lines.push(`  a running VMM's own RSS     ${MiB(mem.vmmRss)} (median; serial-echo, 128 MiB guest)`);
else lines.push("  a running VMM's own RSS: not measured (no /dev/kvm)");
console.log(lines.join('\n'));
if (values.json)
  writeFileSync(values.json, JSON.stringify({ runs: RUNS, haveKvm, haveQemu, samples, results, mem }, null, 2));
