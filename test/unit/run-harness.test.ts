// The integration tests' process runner (test/support/partita.ts): a run ends as soon as the output a test checks
// is there (stopWhen), and a hang guard that fires rejects with what the program had printed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { HangError, runProgram } from '../support/partita.js';

/** A program that prints a numbered line every 20 ms and never ends by itself (as a guest that runs on). */
const endless = [
  '-e',
  "let i = 0; setInterval(() => console.log(`line ${++i}`), 20); process.on('SIGTERM', () => process.exit(9));",
];

test('stopWhen ends the run as soon as the predicate holds', async () => {
  const r = await runProgram(process.execPath, endless, { stopWhen: (out) => out.includes('line 3\n') });
  assert.equal(r.stoppedEarly, true);
  assert.equal(r.signal, 'SIGKILL');
  assert.match(r.stdout, /^line 1\nline 2\nline 3\n/);
});

test('stopSignal chooses the signal that ends it', async () => {
  const r = await runProgram(process.execPath, endless, {
    stopWhen: (out) => out.includes('line 2\n'),
    stopSignal: 'SIGTERM',
  });
  assert.equal(r.stoppedEarly, true);
  assert.equal(r.status, 9, 'the program handled SIGTERM');
});

test('a program that ignores the stop signal stays under the hang guard', async () => {
  const run = runProgram(
    process.execPath,
    ['-e', "process.on('SIGTERM', () => {}); console.log('up'); setInterval(() => {}, 1000)"],
    { stopWhen: (out) => out.includes('up\n'), stopSignal: 'SIGTERM', timeoutMs: 5000 },
  );
  await assert.rejects(run, HangError);
});

test('a program that ends by itself is not "stopped early"', async () => {
  const r = await runProgram(process.execPath, ['-e', "console.log('bye'); process.exit(3)"], {
    stopWhen: (out) => out.includes('never printed'),
  });
  assert.equal(r.stoppedEarly, false);
  assert.equal(r.status, 3);
  assert.equal(r.stdout, 'bye\n');
});

test('the hang guard rejects with what the program had printed by then', async () => {
  const run = runProgram(
    process.execPath,
    ['-e', "console.log('booting'); console.error('still here'); setInterval(() => {}, 1000)"],
    { timeoutMs: 1500 },
    'the stuck program',
  );
  await assert.rejects(run, (e: unknown) => {
    assert.ok(e instanceof HangError);
    assert.match(e.message, /^the stuck program was still running after \d+ s \(hang guard\)/);
    // How much it printed within the guard depends on the machine; the report carries whatever it was.
    assert.ok(e.message.includes(`--- stdout (last lines) ---\n${e.stdout}`), e.message);
    assert.ok(e.message.includes(`--- stderr ---\n${e.stderr}`), e.message);
    return true;
  });
});

test('a hang report shows the last lines of long output', () => {
  const out = Array.from({ length: 100 }, (_, i) => `line ${i + 1}\n`).join('');
  const e = new HangError('partita run', 61_000, out, 'partita: something\n');
  assert.match(e.message, /^partita run was still running after 61 s \(hang guard\); it printed 100 lines:/);
  assert.match(e.message, /\n…\nline 62\n/);
  assert.doesNotMatch(e.message, /line 61\n/);
  assert.match(e.message, /line 100\n\n--- stderr ---\npartita: something\n$/);
});
