// The smp guest on Partita (and on QEMU for comparison): it reads the MADT and the MP table, checks that no AP
// has run before it sends INIT/SIPI, starts every AP with INIT/SIPI, and checks each CPU's APIC ID and CPUID
// topology view against the tables.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { guest, haveKvm, runPartita, skippedForKvm } from '../support/partita.js';
import { QEMU_MISSING, qemuAvailable, runOnQemu } from '../support/qemu.js';

const skip = !haveKvm && 'no /dev/kvm';
const cases: { cpus: number; topology?: string; smt: number; perPackage: number; packages: number }[] = [
  { cpus: 1, smt: 1, perPackage: 1, packages: 1 },
  { cpus: 2, smt: 1, perPackage: 2, packages: 1 },
  { cpus: 16, smt: 1, perPackage: 16, packages: 1 },
  { cpus: 16, topology: 'sockets=2,cores=4,threads=2', smt: 2, perPackage: 8, packages: 2 },
  { cpus: 64, smt: 1, perPackage: 64, packages: 1 },
  { cpus: 64, topology: 'sockets=4,cores=8,threads=2', smt: 2, perPackage: 16, packages: 4 },
  { cpus: 6, topology: 'sockets=1,cores=3,threads=2', smt: 2, perPackage: 6, packages: 1 },
];

for (const c of cases) {
  test(
    `smp: ${c.cpus} vCPUs${c.topology ? ` (${c.topology})` : ''} all online with a consistent topology`,
    { skip },
    async () => {
      const args = [
        'run',
        '--kernel',
        guest('smp'),
        '--cpus',
        String(c.cpus),
        ...(c.topology ? ['--topology', c.topology] : []),
      ];
      const r = await runPartita(args);
      assert.equal(r.status, 1, `stderr: ${r.stderr}\n${r.stdout}`);
      assert.match(r.stdout, new RegExp(`smp: MADT lists ${c.cpus} CPUs, MP table ${c.cpus}, BSP APIC ID 0\\n`));
      assert.equal(r.stdout.split('smp: MADT lists').length - 1, 1, 'only the BSP ran the kernel');
      // The APs wait in the in-kernel LAPIC until the guest sends INIT/SIPI, then all of them come up.
      assert.match(r.stdout, /smp: before INIT\/SIPI: 1 CPU in the kernel, 0 application processors online\n/);
      assert.match(r.stdout, new RegExp(`smp: ${c.cpus - 1} of ${c.cpus - 1} application processors online\\n`));
      assert.match(
        r.stdout,
        new RegExp(
          `smp: ${c.cpus} CPUs online, ${c.smt} threads per core, ${c.perPackage} logical per package, topology consistent\\n`,
        ),
      );
      const packages = new Set([...r.stdout.matchAll(/package (\d+) core (\d+) thread (\d+)/g)].map((m) => m[1]));
      assert.equal(packages.size, c.packages);
      const places = new Set(
        [...r.stdout.matchAll(/package (\d+) core (\d+) thread (\d+)/g)].map((m) => m.slice(1).join('.')),
      );
      assert.equal(places.size, c.cpus, 'every CPU has its own (package, core, thread)');
    },
  );
}

test('smp on QEMU reaches the same verdict', { skip: skip || (!qemuAvailable() && QEMU_MISSING) }, async () => {
  const theirs = await runOnQemu(guest('smp'), { extraArgs: ['-smp', '4'] });
  const ours = await runPartita(['run', '--kernel', guest('smp'), '--cpus', '4']);
  for (const out of [theirs.output, ours.stdout]) {
    assert.match(out, /smp: 3 of 3 application processors online\n/);
    assert.match(out, /smp: 4 CPUs online, 1 threads per core, 4 logical per package, topology consistent\n/);
  }
  // Each CPU's CPUID topology view (leaf 1 and leaf 0xB) is the same under both VMMs.
  const cpuLines = (out: string): string[] => out.split('\n').filter((l) => l.startsWith('cpu '));
  assert.deepEqual(cpuLines(ours.stdout), cpuLines(theirs.output));
  assert.equal(theirs.status, ours.status);
});

test('bad --cpus and --topology values: one clear line each', async (t) => {
  const cases: [string[], RegExp][] = [
    [
      ['--cpus', '4', '--topology', 'sockets=2,cores=3,threads=1'],
      /^partita: --topology 'sockets=2,cores=3,threads=1': .*6.*4|^partita: --topology .*4/,
    ],
    [['--cpus', '4', '--topology', 'sockets=two'], /^partita: --topology 'sockets=two'/],
    [['--cpus', '4', '--topology', 'dies=2'], /^partita: --topology 'dies=2'/],
    [['--cpus', '4', '--topology', 'cores=0'], /^partita: --topology 'cores=0'/],
    [['--cpus', '100'], /^partita: --cpus 100 is more than Partita's limit of 64/],
  ];
  for (const [extra, message] of cases) {
    await t.test(extra.join(' '), async (st) => {
      const r = await runPartita(['run', '--kernel', guest('hello'), ...extra]);
      if (skippedForKvm(st, r)) return;
      assert.equal(r.status, 2, `${extra.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, message);
      assert.equal(r.stderr.trim().split('\n').length, 1);
    });
  }
});
