// Output files (--serial file:PATH, --console PATH) are appended to, never truncated, and never a disk image:
// neither one of this VM's (same file) nor one a running VM holds (flock, as openBlock takes it).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, linkSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openOutputFile, OutputFileError } from '../../src/host/output-file.js';
import { openConsole } from '../../src/devices/virtio/console.js';
import { DeviceOpenError } from '../../src/devices/model.js';
import { holdFileLock } from '../support/file-lock.js';
import { createDevices } from '../../src/vmm/device-set.js';
import { Vm } from '../../src/vmm/vm.js';
import { KvmSystem } from '../../src/kvm/system.js';
import { haveKvm } from '../support/partita.js';

const dir = mkdtempSync(join(tmpdir(), 'partita-output-file-'));
test.after(() => rmSync(dir, { recursive: true, force: true }));

function image(name: string): { path: string; bytes: Buffer } {
  const path = join(dir, name);
  const bytes = Buffer.alloc(4096, 0xa5);
  writeFileSync(path, bytes);
  return { path, bytes };
}

test('an existing file is appended to, never truncated', () => {
  const path = join(dir, 'log');
  writeFileSync(path, 'earlier run\n');
  const fd = openOutputFile(path, { disks: [] });
  writeSync(fd, 'this run\n');
  closeSync(fd);
  assert.equal(readFileSync(path, 'utf8'), 'earlier run\nthis run\n');
  // A missing file is created.
  const fresh = join(dir, 'fresh');
  closeSync(openOutputFile(fresh, { disks: [] }));
  assert.equal(readFileSync(fresh).length, 0);
});

test("this VM's disk image, by any name, is refused and left as it was", () => {
  const disk = image('disk.img');
  const hard = join(dir, 'hard-link.img');
  linkSync(disk.path, hard);
  const soft = join(dir, 'symlink.img');
  symlinkSync(disk.path, soft);
  for (const [path, message] of [
    [disk.path, /^'.*disk\.img' is a disk image of this VM: guest output must not go into it$/],
    [hard, /^'.*hard-link\.img' is the disk image '.*disk\.img' of this VM/],
    [soft, /^'.*symlink\.img' is the disk image '.*disk\.img' of this VM/],
  ] as const) {
    assert.throws(
      () => openOutputFile(path, { disks: [join(dir, 'other.img'), disk.path] }),
      (e: unknown) => {
        assert.ok(e instanceof OutputFileError, String(e));
        assert.match(e.message, message);
        return true;
      },
    );
  }
  assert.deepEqual(readFileSync(disk.path), disk.bytes);
});

test('a file a running VM holds (its disk lock) is refused and left as it was', async () => {
  for (const shared of [false, true]) {
    const disk = image(`held-${shared ? 'ro' : 'rw'}.img`);
    const holder = await holdFileLock(disk.path, shared);
    try {
      assert.throws(
        () => openOutputFile(disk.path, { disks: [] }),
        (e: unknown) => {
          assert.ok(e instanceof OutputFileError, String(e));
          assert.match(e.message, /^'.*held-r[ow]\.img' is locked by a running VM/);
          return true;
        },
        shared ? 'a read-only disk (LOCK_SH)' : 'a read-write disk (LOCK_EX)',
      );
      assert.deepEqual(readFileSync(disk.path), disk.bytes);
    } finally {
      await holder.release();
    }
  }
});

test('an output file is locked while open: a VM cannot take it as its disk meanwhile', async () => {
  const path = join(dir, 'busy.log');
  const fd = openOutputFile(path, { disks: [] });
  try {
    await assert.rejects(holdFileLock(path), /could not lock/);
  } finally {
    closeSync(fd);
  }
  await (await holdFileLock(path)).release();
});

test('openConsole: appends, and refuses a disk of this VM or one a VM holds', async () => {
  const log = join(dir, 'console.log');
  writeFileSync(log, 'kept\n');
  const handle = openConsole({ path: log, disks: [] });
  assert.equal(handle.sink, 'file');
  if (handle.sink === 'file') closeSync(handle.fd);
  assert.equal(readFileSync(log, 'utf8'), 'kept\n');

  const disk = image('console-disk.img');
  assert.throws(
    () => openConsole({ path: disk.path, disks: [disk.path] }),
    (e: unknown) => e instanceof DeviceOpenError && /^console: '.*' is a disk image of this VM/.test(e.message),
  );
  const holder = await holdFileLock(disk.path);
  try {
    assert.throws(
      () => openConsole({ path: disk.path }),
      (e: unknown) => e instanceof DeviceOpenError && /^console: '.*' is locked by a running VM/.test(e.message),
    );
  } finally {
    await holder.release();
  }
  assert.deepEqual(readFileSync(disk.path), disk.bytes);
});

test("--disk A --console A: the VM's device set refuses the console (A is its disk), A untouched", (t) => {
  if (!haveKvm) return t.skip('no /dev/kvm: the device set needs a VM to create virtio devices in (SKIPPED)');
  const vm = Vm.create(KvmSystem.open(), 16 << 20);
  const disk = image('vm-disk.img');
  assert.throws(
    () =>
      createDevices(
        [
          { kind: 'virtio-blk', path: disk.path },
          { kind: 'virtio-console', path: disk.path },
        ],
        { vmFd: vm.fd, placeBars: true },
      ),
    (e: unknown) =>
      e instanceof DeviceOpenError && /^console: '.*vm-disk\.img' is a disk image of this VM/.test(e.message),
  );
  assert.deepEqual(readFileSync(disk.path), disk.bytes);
  // The disk opened first was closed again: its lock is gone.
  assert.doesNotThrow(() => closeSync(openOutputFile(disk.path, { disks: [] })), 'the image is no longer locked');
});
