// The debug console (QEMU isa-debugcon semantics, src/devices/legacy/debug-console.ts): SeaBIOS's log port. Bytes
// written to the port go to the output file as they come; a read returns 0xE9; the file follows the rules of every
// guest-output file (appended to; never a disk image of this VM or one a running VM holds).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PortIoBus } from '../../src/devices/bus.js';
import { debugConsoleModel, DEBUG_CONSOLE_DEFAULT_PORT } from '../../src/devices/legacy/debug-console.js';
import {
  DeviceOpenError,
  statelessDevice,
  type DeviceAttachContext,
  type DeviceModel,
} from '../../src/devices/model.js';
import { deviceRegistry } from '../../src/devices/registry.js';
import { createDevices } from '../../src/vmm/device-set.js';
import { holdFileLock } from '../support/file-lock.js';

const dir = mkdtempSync(join(tmpdir(), 'partita-debugcon-'));
test.after(() => rmSync(dir, { recursive: true, force: true }));

function attach(options: { path: string; port?: number }, diskImages: string[] = []) {
  const state = debugConsoleModel.create({ kind: 'debug-console', ...options }, { diskImages } as never);
  const pio = new PortIoBus();
  debugConsoleModel.attach(state, { pio } as unknown as DeviceAttachContext);
  return { state, pio };
}

test('debug-console: bytes written to port 0x402 are appended to the file; reads return 0xE9', () => {
  const path = join(dir, 'seabios.log');
  writeFileSync(path, 'earlier run\n');
  const { state, pio } = attach({ path });
  assert.equal(DEBUG_CONSOLE_DEFAULT_PORT, 0x402);
  assert.equal(pio.read(0x402, 1), 0xe9, 'SeaBIOS checks the readback before it logs');
  for (const b of Buffer.from('SeaBIOS (version 1.16.2)\n')) pio.write(0x402, 1, b);
  pio.write(0x402, 2, 0x0a21); // a wider access outputs its low byte
  assert.equal(readFileSync(path, 'utf8'), 'earlier run\nSeaBIOS (version 1.16.2)\n!');
  debugConsoleModel.close!(state);
});

test('debug-console: the port option moves it (0xE9 as Bochs and QEMU default to)', () => {
  const path = join(dir, 'e9.log');
  const { state, pio } = attach({ path, port: 0xe9 });
  pio.write(0xe9, 1, 0x41);
  assert.equal(pio.read(0x402, 1), 0xff, 'nothing at 0x402 then');
  assert.equal(readFileSync(path, 'utf8'), 'A');
  debugConsoleModel.close!(state);
});

test('debug-console: a disk image of this VM, or one a running VM holds, is refused and left as it was', async () => {
  const disk = join(dir, 'disk.img');
  const bytes = Buffer.alloc(4096, 0x5a);
  writeFileSync(disk, bytes);
  // Through the device set, as --disk A --firmware-log A would build it: the image comes from another device.
  const fakeDisk: DeviceModel<null> = {
    kind: 'fake-disk',
    summary: 'a device that declares a disk image without opening it',
    options: {},
    bus: 'platform',
    diskImages: (o) => [o.path as string],
    create: () => null,
    attach: () => statelessDevice('fake-disk', 'fake-disk'),
  };
  const registry = deviceRegistry.with(fakeDisk as DeviceModel);
  assert.throws(
    () =>
      createDevices(
        [
          { kind: 'fake-disk', path: disk },
          { kind: 'debug-console', path: disk },
        ],
        { vmFd: -1, placeBars: false, platform: [], registry },
      ),
    (e: unknown) =>
      e instanceof DeviceOpenError && /^debug-console: '.*disk\.img' is a disk image of this VM/.test(e.message),
  );
  assert.deepEqual(readFileSync(disk), bytes);
  const holder = await holdFileLock(disk);
  try {
    assert.throws(
      () => attach({ path: disk }),
      (e: unknown) => e instanceof DeviceOpenError && /is locked by a running VM/.test(e.message),
    );
  } finally {
    await holder.release();
  }
  assert.deepEqual(readFileSync(disk), bytes);
  assert.throws(() => attach({ path: join(dir, 'missing-dir', 'log') }), DeviceOpenError);
});
