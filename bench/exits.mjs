#!/usr/bin/env node
// Exit benchmark: Partita vs QEMU microvm vs a minimal C VMM (the floor), in one run, interleaved, as ratios.
//   node bench/exits.mjs [--runs N] [--count N] [--json FILE]
// Per VMM: wall and user CPU per port-I/O exit ((run with count=N) - (run with count=0)) / N, start-to-exit wall
// of the hello guest, peak RSS; plus `node -e 0` as the start-up reference. Medians of --runs runs.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '3' },
    count: { type: 'string', default: '1000000' },
    json: { type: 'string' },
    cpus: { type: 'string', default: '1' },
  },
});
const RUNS = Number(values.runs);
const COUNT = Number(values.count);
const bin = join(root, 'build/bench');
mkdirSync(bin, { recursive: true });
for (const name of ['floor', 'rusage']) {
  const src = join(root, 'bench', `${name}.c`);
  const out = join(bin, name);
  if (!existsSync(out) || statSync(out).mtimeMs < statSync(src).mtimeMs)
    execFileSync('gcc', ['-O2', '-o', out, src], { stdio: 'inherit' });
}
const exitsGuest = join(root, 'build/guests/exits.pvh.elf');
const helloGuest = join(root, 'build/guests/hello.pvh.elf');
if (!existsSync(exitsGuest))
  execFileSync(process.execPath, [join(root, 'scripts/build-guests.mjs')], { stdio: 'inherit' });

const haveQemu = spawnSync('qemu-system-x86_64', ['--version'], { stdio: 'ignore' }).status === 0;
const qemu = (kernel, cmdline) => [
  'qemu-system-x86_64',
  '-M',
  'microvm',
  '-enable-kvm',
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
  kernel,
  '-append',
  cmdline,
];
const vmms = {
  // Every VMM gets the same 128 MiB of RAM (QEMU's default): KVM's memslot set-up cost grows with its size.
  partita: (kernel, cmdline) => [
    process.execPath,
    join(root, 'bin/partita.js'),
    'run',
    '--kernel',
    kernel,
    '--cmdline',
    cmdline,
    '--cpus',
    values.cpus,
    '--memory',
    '128M',
  ],
  ...(haveQemu ? { qemu } : {}),
  floor: (kernel, cmdline) => [join(bin, 'floor'), kernel, cmdline],
};

const tmp = join(tmpdir(), `partita-bench-${process.pid}.json`);
function measure(argv) {
  execFileSync(join(bin, 'rusage'), ['-o', tmp, '--', ...argv], { stdio: 'ignore' });
  return JSON.parse(readFileSync(tmp, 'utf8'));
}
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const samples = {};
for (const name of [...Object.keys(vmms), 'node -e 0']) samples[name] = { exits: [], zero: [], hello: [] };
const failures = [];
process.stderr.write(
  `bench: ${RUNS} runs x (${COUNT} exits, 0 exits, hello) per VMM${haveQemu ? '' : ' (QEMU not installed: apt-get install qemu-system-x86)'}\n`,
);
for (let run = 0; run < RUNS; run++) {
  for (const [name, argv] of Object.entries(vmms)) {
    for (const [kind, kernel, cmdline, status] of [
      ['exits', exitsGuest, `count=${COUNT}`, 1],
      ['zero', exitsGuest, 'count=0', 1],
      ['hello', helloGuest, 'exit=0', 1],
    ]) {
      const r = measure(argv(kernel, cmdline));
      if (r.status !== status) failures.push(`${name} ${kind}: status ${r.status}, expected ${status}`);
      samples[name][kind].push(r);
    }
  }
  samples['node -e 0'].hello.push(measure([process.execPath, '-e', '0']));
  process.stderr.write(`  run ${run + 1}/${RUNS} done\n`);
}
rmSync(tmp, { force: true });

const results = {};
for (const [name, s] of Object.entries(samples)) {
  const hello = { wall: median(s.hello.map((r) => r.wall_us)), rss: median(s.hello.map((r) => r.maxrss_kib)) };
  if (name === 'node -e 0') {
    results[name] = { startMs: hello.wall / 1000, rssMiB: hello.rss / 1024 };
    continue;
  }
  const perExit = (key) => median(s.exits.map((r, i) => (r[key] - s.zero[i][key]) / COUNT));
  results[name] = {
    wallPerExitUs: perExit('wall_us'),
    userPerExitUs: perExit('user_us'),
    startMs: hello.wall / 1000,
    rssMiB: hello.rss / 1024,
    rssExitsMiB: median(s.exits.map((r) => r.maxrss_kib)) / 1024,
  };
}

const f = (x, d = 2) => (x === undefined ? '-' : x.toFixed(d));
const pad = (s, n) => String(s).padStart(n);
const lines = [];
lines.push(
  `${'VMM'.padEnd(10)} ${pad('wall/exit µs', 13)} ${pad('user/exit µs', 13)} ${pad('start→exit ms', 14)} ${pad('peak RSS MiB', 13)} ${pad('RSS (exits)', 12)}`,
);
for (const [name, r] of Object.entries(results)) {
  lines.push(
    `${name.padEnd(10)} ${pad(f(r.wallPerExitUs), 13)} ${pad(f(r.userPerExitUs, 3), 13)} ${pad(f(r.startMs, 1), 14)} ${pad(f(r.rssMiB, 1), 13)} ${pad(f(r.rssExitsMiB, 1), 12)}`,
  );
}
const P = results.partita;
const Q = results.qemu;
const F = results.floor;
const N = results['node -e 0'];
lines.push('', 'Ratios (same run):');
lines.push(
  `  wall per exit   partita/floor ${f(P.wallPerExitUs / F.wallPerExitUs, 3)}x${Q ? `   qemu/floor ${f(Q.wallPerExitUs / F.wallPerExitUs, 3)}x` : ''}`,
);
if (Q)
  lines.push(
    `  user per exit   partita/qemu  ${f(P.userPerExitUs / Q.userPerExitUs, 3)}x   partita/floor ${f(P.userPerExitUs / Math.max(F.userPerExitUs, 1e-3), 2)}x`,
  );
lines.push(
  `  start→exit      partita/node -e 0 ${f(P.startMs / N.startMs, 3)}x${Q ? `   qemu/node -e 0 ${f(Q.startMs / N.startMs, 3)}x` : ''}`,
);
if (Q) lines.push(`  peak RSS        partita/qemu  ${f(P.rssMiB / Q.rssMiB, 3)}x`);
lines.push('', 'Targets (issue #2):');
const target = (ok, text) => lines.push(`  [${ok ? 'met ' : 'MISS'}] ${text}`);
target(
  P.wallPerExitUs <= 1.05 * F.wallPerExitUs,
  `wall per exit ≤ 1.05x floor: ${f(P.wallPerExitUs / F.wallPerExitUs, 3)}x`,
);
if (Q)
  target(
    P.userPerExitUs <= Q.userPerExitUs,
    `user CPU per exit ≤ QEMU's: ${f(P.userPerExitUs, 3)} vs ${f(Q.userPerExitUs, 3)} µs`,
  );
target(
  P.startMs <= 1.2 * N.startMs,
  `start-to-exit within 20% of node -e 0: ${f(P.startMs, 1)} vs ${f(N.startMs, 1)} ms`,
);
if (Q) target(P.rssMiB <= 1.3 * Q.rssMiB, `peak RSS ≤ 1.3x QEMU's: ${f(P.rssMiB, 1)} vs ${f(Q.rssMiB, 1)} MiB`);
if (failures.length) lines.push('', 'FAILED RUNS:', ...failures.map((x) => `  ${x}`));
console.log(lines.join('\n'));
if (values.json) writeFileSync(values.json, JSON.stringify({ count: COUNT, runs: RUNS, results, failures }, null, 2));
process.exit(failures.length ? 1 : 0);
