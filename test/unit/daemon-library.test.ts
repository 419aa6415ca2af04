// The VM library (src/daemon/library.ts): names, atomic vm.json, sparse disks, where a VM's files may be, no
// image shared by two VMs, and a refused change leaving every file as it was.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VmLibrary, nameProblem, insideDir, newVmDevices } from '../../src/daemon/library.js';
import { writeFileAtomic } from '../../src/daemon/atomic-file.js';
import { DaemonError } from '../../src/daemon/errors.js';
import { processStartTime } from '../../src/daemon/proc.js';

function tempLibrary(): { lib: VmLibrary; dir: string; kernel: string } {
  const dir = mkdtempSync(join(tmpdir(), 'partita-lib-'));
  const kernel = join(dir, 'kernel.elf');
  writeFileSync(kernel, 'not really a kernel, but a file');
  return { lib: new VmLibrary(join(dir, 'data')).init(), dir, kernel };
}

/** Every file under `dir` with its bytes: "nothing changed on disk" is this snapshot being equal. */
function snapshot(dir: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (d: string): void => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) {
        out.set(p + '/', '');
        walk(p);
      } else out.set(p, readFileSync(p).toString('base64'));
    }
  };
  walk(dir);
  return out;
}

function refused(fn: () => unknown, status: number, path?: string | RegExp): DaemonError {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof DaemonError, `expected a DaemonError, got ${String(e)}`);
    assert.equal(e.status, status, e.message);
    if (typeof path === 'string') assert.equal(e.path, path, e.message);
    else if (path) assert.match(e.path ?? '', path, e.message);
    return e;
  }
  assert.fail('expected a refusal');
}

test('VM names: no slash, no "..", the documented pattern, at most 64 characters', () => {
  for (const bad of ['a/b', '..', 'a..b', '.hidden', '-x', '', 'x'.repeat(65), 'sp ace', 'é'])
    assert.ok(nameProblem(bad), `'${bad}' must be refused`);
  for (const good of ['a', 'web-1', 'Ubuntu_24.04', 'x'.repeat(64)]) assert.equal(nameProblem(good), undefined, good);
  assert.match(nameProblem('a/b')!, /'\/'/);
  assert.match(nameProblem('a..b')!, /'\.\.'/);
});

test('writeFileAtomic: replaces whole, leaves no temporary file, and a failed replace keeps the old file', () => {
  const dir = mkdtempSync(join(tmpdir(), 'partita-atomic-'));
  try {
    const file = join(dir, 'vm.json');
    writeFileAtomic(file, 'one');
    writeFileAtomic(file, 'two, longer');
    assert.equal(readFileSync(file, 'utf8'), 'two, longer');
    assert.deepEqual(readdirSync(dir), ['vm.json']);
    // A rename that cannot happen (the target is a non-empty directory): the write fails, nothing is left over.
    const blocked = join(dir, 'blocked');
    mkdirSync(join(blocked, 'inside'), { recursive: true });
    assert.throws(() => writeFileAtomic(blocked, 'new'));
    assert.deepEqual(readdirSync(dir).sort(), ['blocked', 'vm.json']);
    assert.ok(statSync(blocked).isDirectory());
    assert.equal((statSync(file).mode & 0o777).toString(8), '644');
    writeFileAtomic(join(dir, 'secret'), 'x', 0o600);
    assert.equal((statSync(join(dir, 'secret')).mode & 0o777).toString(8), '600');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('create: a record in <data>/vms/<name>/vm.json, a sparse raw disk of the size asked, defaults by OS', () => {
  const { lib, dir, kernel } = tempLibrary();
  try {
    const size = 8 * 1024 ** 3;
    const r = lib.create({ name: 'deb', disk: size, kernel, cmdline: 'console=ttyS0' });
    assert.equal(r.state, 'stopped');
    assert.equal(r.os, 'linux');
    assert.equal(r.display, false);
    assert.deepEqual(r.spec.boot, { kind: 'kernel', kernel, cmdline: 'console=ttyS0' });
    const disk = join(lib.vmsDir, 'deb', 'disk0.img');
    assert.deepEqual(r.spec.devices, [{ kind: 'virtio-blk', path: disk }]);
    const st = statSync(disk);
    assert.equal(st.size, size);
    assert.ok(st.blocks * 512 < 1024 * 1024, `the disk must be sparse (${st.blocks} blocks allocated)`);
    assert.deepEqual(JSON.parse(readFileSync(join(lib.vmsDir, 'deb', 'vm.json'), 'utf8')), r);
    assert.deepEqual(lib.names(), ['deb']);
    // No leftovers of the build under a temporary name.
    assert.deepEqual(readdirSync(lib.vmsDir), ['deb']);
    const w = lib.create({ name: 'win', os: 'windows', kernel });
    assert.equal(w.spec.memory, 4 * 1024 ** 3);
    refused(() => lib.create({ name: 'deb', kernel }), 409);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a refused create leaves nothing behind; half-made and half-deleted folders are not VMs', () => {
  const { lib, dir, kernel } = tempLibrary();
  try {
    const before = snapshot(lib.dataDir);
    refused(() => lib.create({ name: 'a/b', kernel }), 400, '/name');
    refused(() => lib.create({ name: '..', kernel }), 400, '/name');
    refused(() => lib.create({ name: 'x', kernel: join(dir, 'missing.elf') }), 400, '/kernel');
    refused(() => lib.create({ name: 'x', kernel: 'relative.elf' }), 400, '/kernel');
    refused(() => lib.create({ name: 'x', cdrom: join(dir, 'none.iso'), kernel }), 400, '/cdrom');
    refused(() => lib.create({ name: 'x', cmdline: 'quiet' }), 400, '/cmdline');
    refused(() => lib.create({ name: 'x', kernel, cpus: 4, memory: 4096 * 3 }), 400, /^\/spec\/memory/);
    assert.deepEqual(snapshot(lib.dataDir), before);
    // A crash while creating or deleting leaves dot-named folders: never listed.
    mkdirSync(join(lib.vmsDir, '.y.creating-1'));
    writeFileSync(join(lib.vmsDir, '.y.creating-1', 'vm.json'), '{}');
    assert.deepEqual(lib.names(), []);
    assert.equal(lib.has('.y.creating-1'), false);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('paths: a disk the VM writes must be in its folder; outside files only read-only and existing', () => {
  const { lib, dir, kernel } = tempLibrary();
  try {
    lib.create({ name: 'vm', kernel, disk: 1 << 20 });
    const record = join(lib.vmsDir, 'vm', 'vm.json');
    const before = snapshot(lib.dataDir);
    const outside = join(dir, 'outside.img');
    writeFileSync(outside, Buffer.alloc(4096));
    refused(() => lib.patch('vm', { addDevices: [{ kind: 'virtio-blk', path: outside }] }), 400, '/addDevices/0/path');
    // '..' and symlinks out of the folder are outside too.
    const sneaky = join(lib.vmsDir, 'vm', '..', '..', '..', 'outside.img');
    refused(() => lib.patch('vm', { addDevices: [{ kind: 'virtio-blk', path: sneaky }] }), 400, '/addDevices/0/path');
    symlinkSync(outside, join(lib.vmsDir, 'vm', 'link.img'));
    const afterLink = snapshot(lib.dataDir);
    refused(
      () => lib.patch('vm', { addDevices: [{ kind: 'virtio-blk', path: join(lib.vmsDir, 'vm', 'link.img') }] }),
      400,
      '/addDevices/0/path',
    );
    refused(
      () => lib.patch('vm', { addDevices: [{ kind: 'virtio-blk', path: join(dir, 'none.iso'), readOnly: true }] }),
      400,
      '/addDevices/0/path',
    );
    refused(() => lib.patch('vm', { addDevices: [{ kind: 'no-such-device' }] }), 400, '/addDevices/0/kind');
    refused(() => lib.patch('vm', { removeDevices: [5] }), 400, '/removeDevices/0');
    assert.deepEqual(snapshot(lib.dataDir), afterLink);
    rmSync(join(lib.vmsDir, 'vm', 'link.img'));
    assert.deepEqual(snapshot(lib.dataDir), before);
    // Read-only and existing: accepted.
    const r = lib.patch('vm', { addDevices: [{ kind: 'virtio-blk', path: outside, readOnly: true }], cpus: 2 });
    assert.equal(r.spec.devices.length, 2);
    assert.equal(r.spec.cpus, 2);
    assert.deepEqual(JSON.parse(readFileSync(record, 'utf8')).spec, r.spec);
    assert.equal(lib.patch('vm', { removeDevices: [1] }).spec.devices.length, 1);
    assert.equal(insideDir(join(lib.vmsDir, 'vm', 'new.img'), join(lib.vmsDir, 'vm')), true);
    assert.equal(insideDir(join(lib.vmsDir, 'vm'), join(lib.vmsDir, 'vm')), false);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('two VMs on one image are refused; two readers of one ISO are not', () => {
  const { lib, dir, kernel } = tempLibrary();
  try {
    lib.create({ name: 'a', kernel, disk: 1 << 20 });
    const disk = join(lib.vmsDir, 'a', 'disk0.img');
    lib.create({ name: 'b', kernel });
    const before = snapshot(lib.dataDir);
    // b's own folder would be the only place it may write; a's disk is both outside it and a's.
    const e = refused(() => lib.patch('b', { addDevices: [{ kind: 'virtio-blk', path: disk, readOnly: true }] }), 409);
    assert.match(e.message, /belongs to the VM 'a'/);
    assert.deepEqual(snapshot(lib.dataDir), before);
    const iso = join(dir, 'install.iso');
    writeFileSync(iso, Buffer.alloc(2048));
    lib.create({ name: 'c', kernel, cdrom: iso });
    lib.create({ name: 'd', kernel, cdrom: iso });
    assert.deepEqual(lib.names(), ['a', 'b', 'c', 'd']);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('delete removes the folder; --keep-disks moves the disks to <data>/kept-disks/<name>/', () => {
  const { lib, dir, kernel } = tempLibrary();
  try {
    lib.create({ name: 'gone', kernel, disk: 1 << 20 });
    lib.create({ name: 'kept', kernel, disk: 2 << 20 });
    lib.delete('gone', false);
    lib.delete('kept', true);
    assert.deepEqual(lib.names(), []);
    assert.deepEqual(readdirSync(lib.vmsDir), []);
    assert.equal(statSync(join(lib.dataDir, 'kept-disks', 'kept', 'disk0.img')).size, 2 << 20);
    assert.equal(existsSync(join(lib.dataDir, 'kept-disks', 'gone')), false);
    refused(() => lib.delete('gone', false), 404);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('/proc start time: this process has one, a PID that does not exist has none', () => {
  const mine = processStartTime(process.pid);
  assert.match(mine ?? '', /^\d+$/);
  assert.equal(processStartTime(process.pid), mine);
  assert.equal(processStartTime(2 ** 22 + 7), undefined);
});

test('new firmware VMs with a screen get a virtio tablet and keyboard; kernel-booted VMs do not', () => {
  const pc = newVmDevices({ firmware: true, os: 'linux', disk: 'disk.img' });
  assert.deepEqual(
    pc.map((d) => d.kind),
    ['std-vga', 'virtio-blk', 'virtio-tablet', 'virtio-keyboard'],
  );
  assert.deepEqual(
    newVmDevices({ firmware: false, os: 'linux' }).map((d) => d.kind),
    [],
  );
});
