// The machine spec: JSON Schema validation with errors that name the JSON path, `partita spec` (flags → spec)
// and `partita run --spec` refusing bad specs with one line and status 2 before anything is built.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { MachineSpec } from '../../src/spec/machine-spec.js';
import { parseMachineSpec, validateMachineSpec } from '../../src/spec/validate.js';
import { runPartita } from '../support/partita.js';

const base: MachineSpec = {
  version: 1,
  cpus: 2,
  memory: 128 << 20,
  boot: { kind: 'kernel', kernel: '/boot/k.elf', cmdline: 'x=1' },
  devices: [{ kind: 'virtio-rng' }],
};

function specError(json: unknown): string {
  try {
    validateMachineSpec(json);
  } catch (e) {
    return (e as Error).message;
  }
  assert.fail('the spec was accepted');
}

test('spec: a valid spec passes and comes back unchanged', () => {
  assert.deepEqual(validateMachineSpec(structuredClone(base)), base);
  assert.deepEqual(parseMachineSpec(JSON.stringify(base)), base);
});

test('spec: errors name the JSON path of the value at fault', () => {
  assert.match(
    specError({ ...base, devices: [{ kind: 'virtio-gpu' }] }),
    /^\/devices\/0\/kind: unknown device kind 'virtio-gpu' \(known: .*virtio-blk/,
  );
  assert.match(specError({ ...base, cpus: 'two' }), /^\/cpus: expected integer/);
  assert.match(specError({ ...base, cpus: 65 }), /^\/cpus: .*64/);
  assert.match(specError({ ...base, memory: 1 << 20 }), /^\/memory: 1M is smaller than the 2M minimum/);
  assert.match(specError({ ...base, memory: (2 << 20) + 1 }), /^\/memory: must be a whole number of 4 KiB pages/);
  assert.match(specError({ ...base, colour: 'red' }), /^\/colour: unknown key 'colour'/);
  assert.match(
    specError({ ...base, boot: { kind: 'kernel', kernel: '/k', append: '' } }),
    /^\/boot\/append: unknown key/,
  );
  assert.match(
    specError({ ...base, devices: [{ kind: 'virtio-blk', path: '/d', queues: 99 }] }),
    /^\/devices\/0\/queues: /,
  );
  assert.match(
    specError({ ...base, devices: [{ kind: 'virtio-blk', path: '/d', readonly: true }] }),
    /^\/devices\/0\/readonly: unknown key/,
  );
  assert.match(specError({ ...base, devices: [{ kind: 'virtio-blk' }] }), /^\/devices\/0\/path: /);
  assert.match(
    specError({ ...base, devices: [{ kind: 'virtio-net', backend: { kind: 'bridge' } }] }),
    /^\/devices\/0\/backend/,
  );
  assert.match(
    specError({ ...base, topology: { sockets: 2, cores: 2, threads: 1 } }),
    /^\/topology: .*gives 4 vCPUs, not cpus 2/,
  );
  assert.match(specError({ ...base, version: 2 }), /^\/version: /);
  assert.match(specError([]), /^\/: /);
});

test('spec: two disks on one image are refused, naming both places', () => {
  const dir = mkdtempSync(join(tmpdir(), 'partita-spec-'));
  try {
    const img = join(dir, 'a.img');
    writeFileSync(img, Buffer.alloc(4096));
    const twice = {
      ...base,
      devices: [{ kind: 'virtio-blk', path: img }, { kind: 'virtio-rng' }, { kind: 'virtio-blk', path: img }],
    };
    assert.match(
      specError(twice),
      /^\/devices\/2\/path: disk image '.*a\.img' is given twice \(first at \/devices\/0\/path\)/,
    );
    symlinkSync(img, join(dir, 'b.img'));
    const viaLink = {
      ...base,
      devices: [
        { kind: 'virtio-blk', path: img },
        { kind: 'virtio-blk', path: join(dir, 'b.img') },
      ],
    };
    assert.match(specError(viaLink), /^\/devices\/1\/path: .* is the same file as \/devices\/0\/path/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('partita spec: flags become the spec they mean; run --spec reads it back', async () => {
  const r = await runPartita([
    'spec',
    '--kernel',
    '/boot/k.elf',
    '--cmdline',
    'a=1 b',
    '--cpus',
    '4',
    '--topology',
    'sockets=2,cores=2,threads=1',
    '--memory',
    '1G',
    '--rng',
    '--net',
    'socket=/run/n.sock,mac=52:54:00:12:34:56',
    '--console',
    '/tmp/c.out',
  ]);
  assert.equal(r.status, 0, r.stderr);
  const spec = JSON.parse(r.stdout) as MachineSpec;
  assert.deepEqual(spec, {
    version: 1,
    cpus: 4,
    topology: { sockets: 2, cores: 2, threads: 1 },
    memory: 1 << 30,
    boot: { kind: 'kernel', kernel: '/boot/k.elf', cmdline: 'a=1 b' },
    devices: [
      { kind: 'virtio-net', backend: { kind: 'socket', path: '/run/n.sock' }, mac: '52:54:00:12:34:56' },
      { kind: 'virtio-rng' },
      { kind: 'virtio-console', path: '/tmp/c.out' },
    ],
  });
  assert.deepEqual(validateMachineSpec(spec), spec, 'what partita spec prints is a valid spec');
});

test('partita run --spec: a bad spec is one line naming the JSON path, status 2, before any VM exists', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'partita-spec-'));
  try {
    const cases: [unknown, RegExp][] = [
      [{ ...base, devices: [{ kind: 'floppy' }] }, /\/devices\/0\/kind: unknown device kind 'floppy'/],
      [{ ...base, cpus: '2' }, /\/cpus: expected integer/],
      [{ ...base, extra: 1 }, /\/extra: unknown key 'extra'/],
      [{ ...base, devices: [{ kind: 'virtio-rng', packed: 'yes' }] }, /\/devices\/0\/packed: expected boolean/],
    ];
    for (const [json, expected] of cases) {
      const file = join(dir, 'vm.json');
      writeFileSync(file, JSON.stringify(json));
      const r = await runPartita(['run', '--spec', file]);
      assert.equal(r.status, 2, r.stderr);
      assert.match(r.stderr, expected);
      assert.equal(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`);
      assert.match(r.stderr, /^partita: spec '.*vm\.json': /);
    }
    writeFileSync(join(dir, 'bad.json'), '{"version": 1,');
    const r = await runPartita(['run', '--spec', join(dir, 'bad.json')]);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /not valid JSON/);
    const both = await runPartita(['run', '--spec', join(dir, 'bad.json'), '--cpus', '2']);
    assert.equal(both.status, 2);
    assert.match(both.stderr, /--cpus cannot be combined with --spec/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("partita run: device option errors found by the spec are said in the flag's words", async () => {
  const r = await runPartita(['run', '--kernel', '/boot/k.elf', '--disk', '/tmp/x.img,queues=99']);
  assert.equal(r.status, 2);
  assert.match(r.stderr, /^partita: --disk '\/tmp\/x\.img,queues=99': queues: /);
  const twice = await runPartita([
    'run',
    '--kernel',
    '/boot/k.elf',
    '--disk',
    '/tmp/y.img',
    '--disk',
    '/tmp/y.img,readonly',
  ]);
  assert.equal(twice.status, 2);
  assert.equal(
    twice.stderr,
    "partita: --disk '/tmp/y.img,readonly': path: disk image '/tmp/y.img' is given twice (first at --disk '/tmp/y.img')\n",
  );
});
