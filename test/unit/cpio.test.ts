// The cpio "newc" writer: checked by its own reader, byte for byte against the format, and by GNU cpio (-t, -i)
// when the system has it (Debian's cpio package; skipped loudly otherwise).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readlinkSync, rmSync, lstatSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync, gunzipSync } from 'node:zlib';
import {
  readCpio,
  writeCpio,
  S_IFCHR,
  S_IFDIR,
  S_IFLNK,
  S_IFMT,
  S_IFREG,
  type CpioEntry,
} from '../../src/demo-guest/cpio.js';
import { initScript, modinfo, parseKconfig } from '../../src/demo-guest/demo.js';

const big = new Uint8Array(70_001).map((_, i) => (i * 31 + 3) & 0xff);
const entries: CpioEntry[] = [
  { path: 'bin', directory: true },
  { path: '/bin/busybox', data: big, mode: 0o755 },
  { path: 'bin/sh', symlink: '/bin/busybox' },
  { path: 'etc/motd', data: 'hello\n' },
  { path: 'e', data: new Uint8Array(0) }, // empty file, 1-character name
  { path: 'ab', data: 'x' },
  { path: 'abc', data: 'xy' },
  { path: 'abcd', data: 'xyz' },
  { path: 'init', data: '#!/bin/sh\necho hi\n', mode: 0o755, mtime: 1_700_000_000 },
];
const withDevice: CpioEntry[] = [...entries, { path: 'dev/console', device: { type: 'char', major: 5, minor: 1 } }];

test('newc layout: magic, 8-digit hex fields, 4-byte alignment, trailer', () => {
  const a = writeCpio(withDevice, { createParents: true });
  assert.equal(a.length % 4, 0);
  let at = 0;
  const names: string[] = [];
  for (;;) {
    assert.equal(at % 4, 0, 'header aligned');
    const h = Buffer.from(a.subarray(at, at + 110)).toString('latin1');
    assert.match(h, /^070701[0-9a-f]{104}$/);
    const f = (i: number): number => parseInt(h.slice(6 + 8 * i, 14 + 8 * i), 16);
    const namesize = f(11);
    const name = Buffer.from(a.subarray(at + 110, at + 110 + namesize - 1)).toString();
    assert.equal(a[at + 110 + namesize - 1], 0, 'name NUL-terminated');
    names.push(name);
    const dataAt = Math.ceil((at + 110 + namesize) / 4) * 4;
    for (let i = at + 110 + namesize; i < dataAt; i++) assert.equal(a[i], 0, 'name padding is zero');
    if (name === 'TRAILER!!!') {
      assert.equal(f(6), 0);
      assert.equal(dataAt, a.length, 'trailer ends the archive');
      break;
    }
    at = Math.ceil((dataAt + f(6)) / 4) * 4;
  }
  assert.deepEqual(names, [
    'bin',
    'bin/busybox',
    'bin/sh',
    'etc',
    'etc/motd',
    'e',
    'ab',
    'abc',
    'abcd',
    'init',
    'dev',
    'dev/console',
    'TRAILER!!!',
  ]);
});

test('own reader: names, modes, data, symlinks, devices, parents created', () => {
  const members = readCpio(writeCpio(withDevice, { createParents: true }));
  const by = new Map(members.map((m) => [m.name, m]));
  assert.equal(by.get('bin')!.mode, S_IFDIR | 0o755);
  assert.equal(by.get('etc')!.mode & S_IFMT, S_IFDIR, 'parent created');
  assert.equal(by.get('bin/busybox')!.mode, S_IFREG | 0o755);
  assert.deepEqual(by.get('bin/busybox')!.data, big);
  assert.equal(by.get('bin/sh')!.mode, S_IFLNK | 0o777);
  assert.equal(Buffer.from(by.get('bin/sh')!.data).toString(), '/bin/busybox');
  assert.equal(by.get('etc/motd')!.mode, S_IFREG | 0o644);
  assert.equal(by.get('e')!.data.length, 0);
  assert.equal(by.get('init')!.mtime, 1_700_000_000);
  const con = by.get('dev/console')!;
  assert.equal(con.mode, S_IFCHR | 0o600);
  assert.deepEqual([con.rdevmajor, con.rdevminor], [5, 1]);
  assert.equal(new Set(members.map((m) => m.ino)).size, members.length, 'distinct inode numbers');
});

test('writer refuses duplicates, bad paths, ambiguous entries and type bits in mode', () => {
  assert.throws(
    () =>
      writeCpio([
        { path: 'a', data: '' },
        { path: '/a', data: '' },
      ]),
    /twice/,
  );
  assert.throws(() => writeCpio([{ path: '../x', data: '' }]), /bad member path/);
  assert.throws(() => writeCpio([{ path: '/', directory: true }]), /bad member path/);
  assert.throws(() => writeCpio([{ path: 'x', data: '', symlink: 'y' } as unknown as CpioEntry]), /exactly one of/);
  assert.throws(() => writeCpio([{ path: 'x', data: '', mode: S_IFREG | 0o644 }]), /more than permission bits/);
  assert.throws(() => readCpio(new Uint8Array(200)), /bad magic/);
  assert.throws(() => readCpio(writeCpio(entries).subarray(0, 300)), /runs past the end|truncated/);
});

function haveCpio(): boolean {
  return spawnSync('cpio', ['--version'], { encoding: 'utf8' }).status === 0;
}

test('GNU cpio lists and extracts what the writer wrote (gzip too)', (t) => {
  if (!haveCpio()) {
    const why = 'SKIPPED: the system has no cpio to check the archive against: sudo apt-get install cpio';
    console.warn(`\n*** ${why}\n`);
    t.skip(why);
    return;
  }
  const withDev = writeCpio(withDevice, { createParents: true });
  const list = spawnSync('cpio', ['-t', '--quiet'], { input: withDev, encoding: 'utf8' });
  assert.equal(list.status, 0, list.stderr);
  assert.deepEqual(list.stdout.trim().split('\n'), [
    'bin',
    'bin/busybox',
    'bin/sh',
    'etc',
    'etc/motd',
    'e',
    'ab',
    'abc',
    'abcd',
    'init',
    'dev',
    'dev/console',
  ]);

  const dir = mkdtempSync(join(tmpdir(), 'partita-cpio-'));
  try {
    const archive = gunzipSync(gzipSync(writeCpio(entries, { createParents: true })));
    const x = spawnSync('cpio', ['-i', '-d', '--quiet', '--no-absolute-filenames', '--preserve-modification-time'], {
      cwd: dir,
      input: archive,
      encoding: 'utf8',
    });
    assert.equal(x.status, 0, x.stderr);
    assert.deepEqual(new Uint8Array(readFileSync(join(dir, 'bin/busybox'))), big);
    assert.equal(lstatSync(join(dir, 'bin/busybox')).mode & 0o777, 0o755);
    assert.equal(readlinkSync(join(dir, 'bin/sh')), '/bin/busybox');
    assert.equal(readFileSync(join(dir, 'etc/motd'), 'utf8'), 'hello\n');
    assert.equal(readFileSync(join(dir, 'abcd'), 'utf8'), 'xyz');
    assert.equal(readFileSync(join(dir, 'e')).length, 0);
    assert.equal(Math.floor(lstatSync(join(dir, 'init')).mtimeMs / 1000), 1_700_000_000);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('demo helpers: Kconfig parsing, .modinfo of an ELF module, /init', () => {
  const cfg = parseKconfig(
    'CONFIG_VIRTIO_PCI=m\n# CONFIG_VIRTIO_BLK is not set\nCONFIG_VIRTIO_NET=y\nCONFIG_CMDLINE="x"\n',
  );
  assert.equal(cfg.get('CONFIG_VIRTIO_PCI'), 'm');
  assert.equal(cfg.get('CONFIG_VIRTIO_BLK'), undefined);
  assert.equal(cfg.get('CONFIG_VIRTIO_NET'), 'y');

  // a minimal ELF64 relocatable with sections: null, .modinfo, .shstrtab
  const info = Buffer.from('license=GPL\0depends=virtio,virtio_ring\0name=virtio_pci\0', 'latin1');
  const shstr = Buffer.from('\0.modinfo\0.shstrtab\0', 'latin1');
  const infoAt = 64;
  const strAt = infoAt + info.length;
  const shoff = Math.ceil((strAt + shstr.length) / 8) * 8;
  const elf = new Uint8Array(shoff + 3 * 64);
  const dv = new DataView(elf.buffer);
  elf.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]);
  dv.setBigUint64(0x28, BigInt(shoff), true);
  dv.setUint16(0x3a, 64, true);
  dv.setUint16(0x3c, 3, true);
  dv.setUint16(0x3e, 2, true);
  elf.set(info, infoAt);
  elf.set(shstr, strAt);
  const sh = (i: number, name: number, off: number, size: number): void => {
    dv.setUint32(shoff + i * 64, name, true);
    dv.setBigUint64(shoff + i * 64 + 0x18, BigInt(off), true);
    dv.setBigUint64(shoff + i * 64 + 0x20, BigInt(size), true);
  };
  sh(1, 1, infoAt, info.length);
  sh(2, 10, strAt, shstr.length);
  assert.deepEqual(modinfo(elf), ['license=GPL', 'depends=virtio,virtio_ring', 'name=virtio_pci']);
  assert.deepEqual(modinfo(new Uint8Array(10)), []);

  const init = initScript('6.1.0-56-cloud-amd64', [
    'kernel/drivers/virtio/virtio.ko',
    'kernel/drivers/virtio/virtio_pci.ko',
  ]);
  assert.match(init, /^#!\/bin\/busybox sh\n/);
  assert.match(init, /mount -t devtmpfs devtmpfs \/dev/);
  assert.ok(init.indexOf('virtio.ko') < init.indexOf('virtio_pci.ko'), 'modules in dependency order');
  assert.match(init, /echo "Partita demo guest: Linux \$\(uname -r\), \$\(nproc\) CPUs"/);
  assert.match(init, /\/dev\/ttyS0/);
});
