// System Control Port A (port 0x92, src/devices/legacy/system-control-a.ts): fast A20 recorded, a rising edge on
// bit 0 resets the machine.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PortIoBus } from '../../src/devices/bus.js';
import { SystemControlA, systemControlAModel } from '../../src/devices/legacy/system-control-a.js';
import { DeviceStateError, type DeviceAttachContext } from '../../src/devices/model.js';

function attach() {
  const resets: string[] = [];
  const pio = new PortIoBus();
  const state = systemControlAModel.create({ kind: 'system-control-a' }, {} as never);
  const dev = systemControlAModel.attach(state, {
    pio,
    host: { reset: (why: string) => resets.push(why) },
  } as unknown as DeviceAttachContext) as SystemControlA;
  return { pio, dev, resets, state };
}

test('port 0x92: fast A20 is recorded and reads back; bit 0 rising resets the machine', () => {
  const { pio, dev, resets } = attach();
  assert.equal(pio.read(0x92, 1), 0x00);
  // Linux's and SeaBIOS's fast A20 enable: read, set bit 1, clear bit 0, write.
  pio.write(0x92, 1, (pio.read(0x92, 1) | 0x02) & ~0x01);
  assert.equal(dev.a20, true);
  assert.equal(pio.read(0x92, 1), 0x02);
  assert.deepEqual(resets, []);
  pio.write(0x92, 1, 0x03);
  assert.deepEqual(resets, ['port 0x92']);
  assert.equal(pio.read(0x92, 1), 0x02, 'the reset bit reads 0 again afterwards');
  pio.write(0x92, 1, 0x03);
  assert.deepEqual(resets, ['port 0x92', 'port 0x92'], 'each rising edge is a reset');
  pio.write(0x92, 1, 0x00);
  assert.equal(dev.a20, false);
});

test('port 0x92: save and restore; another thread view shares the register', () => {
  const a = attach();
  a.pio.write(0x92, 1, 0x02);
  const snap = JSON.parse(JSON.stringify(a.dev.saveState()));
  const b = attach();
  b.dev.restoreState(snap);
  assert.equal(b.pio.read(0x92, 1), 0x02);
  assert.throws(() => b.dev.restoreState({ ...snap, data: { value: 300 } }), DeviceStateError);
  const other = new SystemControlA(a.state, () => undefined);
  assert.equal(other.a20, true, 'the same shared register');
});
