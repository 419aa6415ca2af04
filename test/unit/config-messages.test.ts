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

test('firmware flags: --bios makes a PC spec (std VGA first, one AHCI controller for CDs and SATA disks, boot order)', async () => {
  const r = await runPartita([
    'spec',
    '--bios',
    '--cdrom',
    'a.iso',
    '--disk',
    'b.img,if=ahci',
    '--disk',
    'c.img',
    '--boot',
    'order=cd,disk',
    '--firmware-log',
    'fw.log',
  ]);
  assert.equal(r.status, 0, r.stderr);
  const spec = JSON.parse(r.stdout) as { boot: unknown; devices: unknown[] };
  assert.deepEqual(spec.boot, {
    kind: 'firmware',
    firmware: '/usr/share/seabios/bios-256k.bin',
    bootOrder: ['cdrom', 'disk'],
    log: 'fw.log',
  });
  assert.deepEqual(spec.devices, [
    { kind: 'std-vga' },
    { kind: 'virtio-blk', path: 'c.img' },
    {
      kind: 'ahci',
      drives: [
        { type: 'disk', path: 'b.img' },
        { type: 'cdrom', path: 'a.iso' },
      ],
    },
  ]);
  const none = await runPartita(['spec', '--bios', 'my.rom', '--display', 'none']);
  assert.equal(none.status, 0, none.stderr);
  assert.deepEqual((JSON.parse(none.stdout) as { devices: unknown[] }).devices, []);
});

test('firmware flags: mixed or misplaced boot flags get one line, status 2', async () => {
  const cases: [string[], RegExp][] = [
    [['--kernel', 'k', '--bios'], /--kernel and --bios are two ways to boot/],
    [['--kernel', 'k', '--cdrom', 'a.iso'], /--cdrom needs firmware boot \(--bios\)/],
    [['--kernel', 'k', '--disk', 'd.img,if=ahci'], /if=ahci needs firmware boot/],
    [['--bios', '--cmdline', 'x'], /--initrd and --cmdline go with --kernel/],
    [['--bios', '--display', 'sdl'], /--display 'sdl' is not vga or none/],
    [['--bios', '--boot', 'order=floppy'], /'floppy' is not cd, disk or net/],
  ];
  for (const [args, error] of cases) {
    const r = await runPartita(['spec', ...args]);
    assert.equal(r.status, 2, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, error);
    assert.equal(r.stderr.trim().split('\n').length, 1);
  }
  const shot = await runPartita(['run', '--bios', '--display', 'none', '--screenshot', '/tmp/x.png']);
  assert.equal(shot.status, 2);
  assert.match(shot.stderr, /--screenshot needs a display/);
});
