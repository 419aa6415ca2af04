// The one-line messages for a bad --memory or --topology: they say what the user typed, once.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseSize } from '../../src/base/units.js';
import { parseTopology } from '../../src/arch/x86_64/topology.js';
import { runPartita } from '../support/partita.js';

function messageOf(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    return (e as Error).message;
  }
  assert.fail('expected an error');
}

test('--memory: a fraction of a byte is refused, not rounded', () => {
  // "1.5" used to become 2 bytes, and the user read "--memory 2 is smaller than the 2M minimum".
  assert.throws(() => parseSize('1.5'), RangeError);
  const m = messageOf(() => parseSize('1.5'));
  assert.match(m, /"1\.5" is 1\.5 bytes, not a whole number of bytes/);
  assert.match(m, /without a suffix a size counts bytes/);
  assert.match(
    messageOf(() => parseSize('1.1K')),
    /"1\.1K" is 1126\.4 bytes, not a whole number of bytes$/,
  );
  // Fractions that come to whole bytes stay fine.
  assert.equal(parseSize('1.5K'), 1536);
  assert.equal(parseSize('0.5M'), 512 * 1024);
});

test('--memory: the limit messages quote what the user typed', async () => {
  const cases: [string, string][] = [
    ['1000', '--memory 1000 is smaller than the 2M minimum'],
    ['0.5M', '--memory 0.5M is smaller than the 2M minimum'],
    ['1K', '--memory 1K is smaller than the 2M minimum'],
    ['2T', '--memory 2T is larger than the 1T limit'],
    ['4097K', '--memory 4097K is not a whole number of 4 KiB pages'],
  ];
  for (const [typed, message] of cases) {
    const r = await runPartita(['run', '--kernel', '/nonexistent-kernel', '--memory', typed]);
    assert.equal(r.status, 2);
    assert.equal(r.stderr, `partita: ${message}\n`);
  }
});

test('--topology: a bad value is named once', async () => {
  for (const [spec, cpus] of [
    ['x', 4],
    ['dies=2', 4],
    ['sockets=2,cores=3,threads=1', 4],
  ] as const) {
    const m = messageOf(() => parseTopology(spec, cpus));
    assert.ok(m.startsWith(`--topology '${spec}': `), m);
    const r = await runPartita(['run', '--kernel', '/nonexistent-kernel', '--cpus', String(cpus), '--topology', spec]);
    assert.equal(r.status, 2);
    assert.ok(r.stderr.startsWith(`partita: --topology '${spec}': `), r.stderr);
    assert.equal(r.stderr.split('--topology').length, 2, `said once: ${r.stderr}`);
  }
});
