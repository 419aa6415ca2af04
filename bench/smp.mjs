#!/usr/bin/env node
// SMP bench: start → "all N vCPUs online" (the smp guest exits as soon as every AP reported) and peak RSS, for
// N = 1, 16, 64, Partita vs QEMU microvm on the same guest binary; medians of --runs, interleaved.
//   node bench/smp.mjs [--runs N]
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const { values } = parseArgs({ options: { runs: { type: 'string', default: '3' } } });
const rusage = join(root, 'build/bench/rusage');
if (!existsSync(rusage) || statSync(rusage).mtimeMs < statSync(join(root, 'bench/rusage.c')).mtimeMs) {
  execFileSync('gcc', ['-O2', '-o', rusage, join(root, 'bench/rusage.c')], { stdio: 'inherit' });
}
const guest = join(root, 'build/guests/smp.pvh.elf');
const haveQemu = spawnSync('qemu-system-x86_64', ['--version'], { stdio: 'ignore' }).status === 0;
const vmms = {
  partita: (n) => [
    process.execPath,
    join(root, 'bin/partita.js'),
    'run',
    '--kernel',
    guest,
    '--cpus',
    String(n),
    '--memory',
    '128M',
  ],
  ...(haveQemu
    ? {
        qemu: (n) => [
          'qemu-system-x86_64',
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
          '-m',
          '128M',
          '-smp',
          String(n),
          '-kernel',
          guest,
        ],
      }
    : {}),
};
const tmp = join(tmpdir(), `partita-smp-${process.pid}.json`);
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const samples = {};
for (let run = 0; run < Number(values.runs); run++) {
  for (const n of [1, 16, 64]) {
    for (const [name, argv] of Object.entries(vmms)) {
      execFileSync(rusage, ['-o', tmp, '--', ...argv(n)], { stdio: 'ignore' });
      const r = JSON.parse(readFileSync(tmp, 'utf8'));
      if (r.status !== 1) console.error(`${name} N=${n}: status ${r.status} (expected 1: all CPUs online)`);
      ((samples[name] ??= {})[n] ??= []).push(r);
    }
  }
}
rmSync(tmp, { force: true });
console.log(
  `${'VMM'.padEnd(8)} ${'N'.padStart(3)} ${'start→all online ms'.padStart(20)} ${'peak RSS MiB'.padStart(13)}`,
);
const row = {};
for (const [name, byN] of Object.entries(samples)) {
  for (const [n, rs] of Object.entries(byN)) {
    const ms = median(rs.map((r) => r.wall_us)) / 1000;
    const rss = median(rs.map((r) => r.maxrss_kib)) / 1024;
    (row[name] ??= {})[n] = { ms, rss };
    console.log(`${name.padEnd(8)} ${n.padStart(3)} ${ms.toFixed(1).padStart(20)} ${rss.toFixed(1).padStart(13)}`);
  }
}
const p = row.partita;
console.log(
  `\nPartita RSS per extra vCPU: 1→16 ${((p[16].rss - p[1].rss) / 15).toFixed(2)} MiB, 16→64 ${((p[64].rss - p[16].rss) / 48).toFixed(2)} MiB (target ≤ 1 MiB)`,
);
if (row.qemu)
  for (const n of [1, 16, 64])
    console.log(
      `N=${n}: Partita/QEMU time ${(p[n].ms / row.qemu[n].ms).toFixed(2)}x, RSS ${(p[n].rss / row.qemu[n].rss).toFixed(2)}x`,
    );
