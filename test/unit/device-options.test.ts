// The device options of `partita run` (--disk, --net, --console): QEMU-style "value,key=value" parsing.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  DeviceOptionError,
  parseBootOrder,
  parseConsole,
  parseDisk,
  parseInput,
  parseNet,
  splitOption,
} from '../../src/cli/device-options.js';

test('splitOption: commas separate, a doubled comma is a literal comma', () => {
  assert.deepEqual(splitOption('a,b=c,d'), ['a', 'b=c', 'd']);
  assert.deepEqual(splitOption('dir,,x/disk.img,readonly'), ['dir,x/disk.img', 'readonly']);
  assert.deepEqual(splitOption(''), ['']);
});

test('--disk: path, readonly, serial, queues', () => {
  assert.deepEqual(parseDisk('/tmp/a.img'), { kind: 'virtio-blk', path: '/tmp/a.img' });
  assert.deepEqual(parseDisk('a.img,readonly,serial=DISK-1,queues=4'), {
    kind: 'virtio-blk',
    path: 'a.img',
    readOnly: true,
    serial: 'DISK-1',
    queues: 4,
  });
  assert.deepEqual(parseDisk('a.img,packed'), { kind: 'virtio-blk', path: 'a.img', packed: true });
  assert.throws(() => parseDisk(',readonly'), /image path is missing/);
  assert.throws(
    () => parseDisk('a.img,bogus'),
    (e) => e instanceof DeviceOptionError && /'bogus'/.test(e.message),
  );
  assert.throws(() => parseDisk('a.img,queues=x'), /queues=x/);
});

test('--net: user, tap=NAME, socket=PATH, mac=', () => {
  assert.deepEqual(parseNet('user'), { kind: 'virtio-net', backend: { kind: 'user' } });
  assert.deepEqual(parseNet('tap=tap0,mac=52:54:00:12:34:56'), {
    kind: 'virtio-net',
    backend: { kind: 'tap', name: 'tap0' },
    mac: '52:54:00:12:34:56',
  });
  assert.deepEqual(parseNet('socket=/run/x.sock'), {
    kind: 'virtio-net',
    backend: { kind: 'socket', path: '/run/x.sock' },
  });
  assert.deepEqual(parseNet('user,packed'), { kind: 'virtio-net', backend: { kind: 'user' }, packed: true });
  assert.throws(() => parseNet('tap'), /expected user, tap=NAME or socket=PATH/);
  assert.throws(() => parseNet('bridge=br0'), /expected user/);
  assert.throws(() => parseNet('user,speed=10'), /'speed=10'/);
});

test('--input: tablet and/or keyboard, each once', () => {
  assert.deepEqual(parseInput('tablet,keyboard'), [{ kind: 'virtio-tablet' }, { kind: 'virtio-keyboard' }]);
  assert.deepEqual(parseInput('keyboard'), [{ kind: 'virtio-keyboard' }]);
  assert.throws(() => parseInput('mouse'), /'mouse' is not tablet or keyboard/);
  assert.throws(() => parseInput('tablet,tablet'), /named twice/);
  assert.throws(() => parseInput(''), DeviceOptionError);
});

test('--console: a path is required', () => {
  assert.deepEqual(parseConsole('/tmp/out'), { kind: 'virtio-console', path: '/tmp/out' });
  assert.throws(() => parseConsole(''), /needs a path/);
});

test('--disk …,if=ahci: a SATA drive entry for the AHCI controller; virtio-only options refused there', () => {
  assert.deepEqual(parseDisk('d.img,if=ahci,readonly,serial=S1'), {
    type: 'disk',
    path: 'd.img',
    readonly: true,
    serial: 'S1',
  });
  assert.deepEqual(parseDisk('d.img,if=virtio'), { kind: 'virtio-blk', path: 'd.img' });
  assert.throws(() => parseDisk('d.img,if=ahci,queues=2'), /virtio options, not AHCI's/);
  assert.throws(() => parseDisk('d.img,if=scsi'), /unknown or malformed option 'if=scsi'/);
});

test('--boot order=…: cd, disk, net in order; anything else named', () => {
  assert.deepEqual(parseBootOrder('order=cd,disk'), ['cdrom', 'disk']);
  assert.deepEqual(parseBootOrder('order=net'), ['net']);
  assert.throws(() => parseBootOrder('order=cd,floppy'), /'floppy' is not cd, disk or net/);
  assert.throws(() => parseBootOrder('order=cd,cd'), /named twice/);
  assert.throws(() => parseBootOrder('cd'), /expected order=/);
});
