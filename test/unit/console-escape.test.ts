// The console's Ctrl-A escape filter between the host terminal and the UART input.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ConsoleEscape, ESCAPE_HELP } from '../../src/vmm/console-escape.js';

const CTRL_A = 0x01;
const enc = (s: string): number[] => [...Buffer.from(s, 'latin1')];

function feed(escape: ConsoleEscape, ...values: (number | string)[]): { forward: number[]; commands: string[] } {
  const bytes = Uint8Array.from(values.flatMap((v) => (typeof v === 'string' ? enc(v) : [v])));
  const { forward, commands } = escape.feed(bytes);
  return { forward: [...forward], commands };
}

test('plain input passes through untouched', () => {
  const e = new ConsoleEscape();
  const input = Uint8Array.from(enc('ls -l\r\x03\x1b[A\x00\xff'));
  const { forward, commands } = e.feed(input);
  assert.deepEqual([...forward], [...input]);
  assert.deepEqual(commands, []);
  assert.deepEqual(feed(e), { forward: [], commands: [] });
});

test('Ctrl-A x quits, Ctrl-A h asks for help, Ctrl-A b sends a break; none reach the guest', () => {
  const e = new ConsoleEscape();
  assert.deepEqual(feed(e, 'ab', CTRL_A, 'xcd'), { forward: enc('abcd'), commands: ['quit'] });
  assert.deepEqual(feed(e, CTRL_A, 'h'), { forward: [], commands: ['help'] });
  assert.deepEqual(feed(e, CTRL_A, 'b', 'z'), { forward: enc('z'), commands: ['break'] });
  assert.deepEqual(feed(e, CTRL_A, 'h', '1', CTRL_A, 'b', CTRL_A, 'x'), {
    forward: enc('1'),
    commands: ['help', 'break', 'quit'],
  });
});

test('Ctrl-A Ctrl-A sends one Ctrl-A; Ctrl-A and any other key sends both', () => {
  const e = new ConsoleEscape();
  assert.deepEqual(feed(e, CTRL_A, CTRL_A), { forward: [CTRL_A], commands: [] });
  assert.deepEqual(feed(e, CTRL_A, CTRL_A, CTRL_A, CTRL_A), { forward: [CTRL_A, CTRL_A], commands: [] });
  assert.deepEqual(feed(e, CTRL_A, 'q'), { forward: [CTRL_A, ...enc('q')], commands: [] });
  assert.deepEqual(feed(e, CTRL_A, 'X'), { forward: [CTRL_A, ...enc('X')], commands: [] }, 'keys are case-sensitive');
  assert.deepEqual(feed(e, CTRL_A, 0x18), { forward: [CTRL_A, 0x18], commands: [] }, 'Ctrl-X is not x');
  assert.deepEqual(
    feed(e, CTRL_A, CTRL_A, 'x'),
    { forward: [CTRL_A, ...enc('x')], commands: [] },
    'the pair is consumed',
  );
});

test('a Ctrl-A at the end of one chunk pairs with the first byte of the next', () => {
  const e = new ConsoleEscape();
  assert.deepEqual(feed(e, 'ab', CTRL_A), { forward: enc('ab'), commands: [] });
  assert.deepEqual(feed(e, 'xy'), { forward: enc('y'), commands: ['quit'] });
  assert.deepEqual(feed(e, CTRL_A), { forward: [], commands: [] });
  assert.deepEqual(feed(e), { forward: [], commands: [] }, 'an empty chunk keeps the pending Ctrl-A');
  assert.deepEqual(feed(e, CTRL_A), { forward: [CTRL_A], commands: [] });
  assert.deepEqual(feed(e, CTRL_A), { forward: [], commands: [] });
  assert.deepEqual(feed(e, 'k'), { forward: [CTRL_A, ...enc('k')], commands: [] });
  assert.deepEqual(feed(e, 'x'), { forward: enc('x'), commands: [] }, 'no Ctrl-A pending any more');
});

test('every chunk of a byte stream gives the same result as the whole stream', () => {
  const stream = [CTRL_A, CTRL_A, 0x41, CTRL_A, 0x68, CTRL_A, 0x5a, CTRL_A, 0x62, 0x42, CTRL_A, 0x78, CTRL_A];
  const whole = new ConsoleEscape().feed(Uint8Array.from(stream));
  assert.deepEqual([...whole.forward], [CTRL_A, 0x41, CTRL_A, 0x5a, 0x42]);
  assert.deepEqual(whole.commands, ['help', 'break', 'quit']);
  for (let cut = 0; cut <= stream.length; cut++) {
    const e = new ConsoleEscape();
    const a = e.feed(Uint8Array.from(stream.slice(0, cut)));
    const b = e.feed(Uint8Array.from(stream.slice(cut)));
    assert.deepEqual([...a.forward, ...b.forward], [...whole.forward], `cut at ${cut}`);
    assert.deepEqual([...a.commands, ...b.commands], whole.commands, `cut at ${cut}`);
  }
});

test('ESCAPE_HELP describes the keys', () => {
  for (const key of ['Ctrl-A x', 'Ctrl-A h', 'Ctrl-A b', 'Ctrl-A Ctrl-A']) assert.ok(ESCAPE_HELP.includes(key), key);
  assert.match(ESCAPE_HELP, /quit/);
  assert.match(ESCAPE_HELP, /break/);
});
