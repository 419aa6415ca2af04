import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BusConflictError, MmioBus, PortIoBus, type MmioDevice, type PortIoDevice } from '../../src/devices/bus.js';
import { DebugExit } from '../../src/devices/legacy/debug-exit.js';

function recorder(name: string): PortIoDevice & { log: string[] } {
  const log: string[] = [];
  return {
    name,
    log,
    pioRead: (offset, size) => {
      log.push(`r${offset}/${size}`);
      return 0x40 + offset;
    },
    pioWrite: (offset, size, value) => void log.push(`w${offset}/${size}=${value}`),
  };
}

test('port bus: dispatch by range with offsets, conflicts refused, misses read as all ones', () => {
  const bus = new PortIoBus();
  const a = recorder('a');
  bus.register(0x3f8, 8, a);
  assert.throws(() => bus.register(0x3ff, 2, recorder('b')), BusConflictError);
  assert.throws(() => bus.register(0xffff, 2, recorder('c')), RangeError);
  assert.equal(bus.read(0x3fd, 1), 0x45);
  bus.write(0x3f8, 1, 65);
  assert.deepEqual(a.log, ['r5/1', 'w0/1=65']);
  assert.equal(bus.read(0x80, 1), 0xff);
  assert.equal(bus.read(0x80, 2), 0xffff);
  assert.equal(bus.read(0x80, 4), 0xffffffff);
  bus.write(0x81, 1, 1);
  assert.equal(bus.unclaimed, 4);
});

test('MMIO bus: binary search, accesses straddling a range end are misses', () => {
  const bus = new MmioBus();
  const seen: string[] = [];
  const dev = (name: string): MmioDevice => ({
    name,
    mmioRead: (offset, data) => {
      seen.push(`${name} r${offset}`);
      data.fill(0x11);
    },
    mmioWrite: (offset, data) => void seen.push(`${name} w${offset}:${data.length}`),
  });
  bus.register(0xfec00000, 0x1000, dev('ioapic'));
  bus.register(0xd0000000, 0x100, dev('x'));
  assert.throws(() => bus.register(0xd00000f0, 0x20, dev('y')), BusConflictError);
  const data = new Uint8Array(4);
  bus.read(0xfec00010, data);
  assert.deepEqual([...data], [0x11, 0x11, 0x11, 0x11]);
  bus.write(0xd0000004, new Uint8Array(8));
  bus.read(0xd00000fe, data); // crosses the end of x
  assert.deepEqual([...data], [0xff, 0xff, 0xff, 0xff]);
  assert.deepEqual(seen, ['ioapic r16', 'x w4:8']);
  assert.equal(bus.unclaimed, 1);
});

test('debug exit: status is (v << 1) | 1 for every access size', () => {
  const got: number[] = [];
  const d = new DebugExit((status) => got.push(status));
  d.pioWrite(0, 1, 0);
  d.pioWrite(0, 1, 5);
  d.pioWrite(0, 4, 0x10);
  d.pioWrite(0, 2, 0x7f);
  assert.deepEqual(got, [1, 11, 33, 255]);
  assert.equal(d.pioRead(), 0);
});
