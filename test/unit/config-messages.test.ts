// The one-line messages for a bad --memory or --topology: they say what the user typed, once.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseSize } from '../../src/base/units.js';
import { ConfigError, machineTopology, validateConfig, type MachineConfig } from '../../src/vmm/machine.js';

function config(overrides: Partial<MachineConfig>): MachineConfig {
  const base: MachineConfig = {
    kernel: 'k',
    initrd: [],
    cmdline: '',
    cpus: 1,
    memory: 512 * 1024 * 1024,
    serialOutputFd: 1,
    serialInput: 'none',
  };
  return { ...base, ...overrides };
}

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

test('--memory: the limit messages quote what the user typed', () => {
  for (const typed of ['1000', '0.5M', '1K']) {
    const m = messageOf(() => validateConfig(config({ memory: parseSize(typed), memoryText: typed })));
    assert.equal(m, `--memory ${typed} is smaller than the 2M minimum`);
  }
  assert.equal(
    messageOf(() => validateConfig(config({ memory: parseSize('2T'), memoryText: '2T' }))),
    '--memory 2T is larger than the 1T limit',
  );
  assert.equal(
    messageOf(() => validateConfig(config({ memory: parseSize('4097K'), memoryText: '4097K' }))),
    '--memory 4097K is not a whole number of 4 KiB pages',
  );
});

test('--topology: a bad value is named once', () => {
  for (const [spec, cpus] of [
    ['x', 4],
    ['dies=2', 4],
    ['sockets=2,cores=3,threads=1', 4],
  ] as const) {
    let error: unknown;
    try {
      machineTopology({ cpus, topology: spec });
    } catch (e) {
      error = e;
    }
    assert.ok(error instanceof ConfigError, `${spec}: a ConfigError`);
    assert.ok(error.message.startsWith(`--topology '${spec}': `), error.message);
    assert.equal(error.message.split('--topology').length, 2, `said once: ${error.message}`);
  }
});
