// The screen's input path: RFB PointerEvents reach an absolute device (virtio tablet) when one is in use and the
// PS/2 mouse otherwise; keys go to the virtio keyboard (as Linux KEY_* codes) once its driver runs, else to PS/2.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { startRfbServer } from '../../src/display/rfb/server.js';
import { routedInputSink, type VirtioInputTarget } from '../../src/vmm/input-routing.js';
import { FakeInput, FakeScreen, RfbTestClient } from '../support/rfb-client.js';

class FakeVirtio implements VirtioInputTarget {
  ready = false;
  ledState = 0;
  readonly pointers: number[][] = [];
  readonly keys: [number, boolean][] = [];
  pointerAbsolute(x: number, y: number, width: number, height: number, buttons: number): boolean {
    if (!this.ready) return false;
    this.pointers.push([x, y, width, height, buttons]);
    return true;
  }
  key(code: number, down: boolean): boolean {
    if (!this.ready) return false;
    this.keys.push([code, down]);
    return true;
  }
  leds(): number {
    return this.ledState;
  }
}

async function until(cond: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 1000 && !cond(); i++) await new Promise((r) => setTimeout(r, 10));
  assert.ok(cond(), `timed out waiting for ${what}`);
}

test('keys: PS/2 until the virtio keyboard is ready, then KEY_* codes there; a release follows its press', () => {
  const ps2 = new FakeInput();
  const kbd = new FakeVirtio();
  const sink = routedInputSink(ps2, undefined, kbd)!;
  sink.key(0x1e, true); // A, pressed while no driver runs
  kbd.ready = true;
  sink.key(0x1e, false); // released after the driver came up: still PS/2
  sink.key(0xe048, true); // Up
  sink.key(0xe048, false);
  sink.key(0x55, true); // no KEY_* code: PS/2 keeps it
  sink.key(0x55, false);
  assert.deepEqual(ps2.keys, [
    [0x1e, true],
    [0x1e, false],
    [0x55, true],
    [0x55, false],
  ]);
  assert.deepEqual(kbd.keys, [
    [103, true],
    [103, false],
  ]);
  sink.key(0x1d, true); // Ctrl held while the driver goes away (guest reset): its release goes to PS/2
  kbd.ready = false;
  sink.key(0x1d, false);
  assert.deepEqual(kbd.keys.at(-1), [29, true]);
  assert.deepEqual(ps2.keys.at(-1), [0x1d, false]);
});

test('LEDs come from the keyboard the guest drives; a VM without input devices has no sink', () => {
  const ps2 = new FakeInput();
  ps2.ledState = 1;
  const kbd = new FakeVirtio();
  kbd.ledState = 4;
  const sink = routedInputSink(ps2, undefined, kbd)!;
  assert.equal(sink.leds(), 1);
  kbd.ready = true;
  assert.equal(sink.leds(), 4);
  assert.equal(routedInputSink(undefined, undefined, undefined), undefined);
  const tabletOnly = routedInputSink(undefined, new FakeVirtio(), undefined)!;
  assert.doesNotThrow(() => tabletOnly.key(0x1e, true));
  assert.equal(tabletOnly.leds(), 0);
});

test('RFB PointerEvent: absolute to the tablet once ready (no relative motion), relative PS/2 before', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rfb-abs-'));
  const socketPath = path.join(dir, 'vnc.sock');
  const ps2 = new FakeInput();
  const tablet = new FakeVirtio();
  const handle = await startRfbServer({
    source: new FakeScreen(640, 480),
    input: routedInputSink(ps2, tablet, undefined)!,
    name: 'abs',
    listen: { unix: socketPath },
    log: () => undefined,
  });
  const c = await RfbTestClient.connect(socketPath);
  try {
    await c.handshake();
    c.pointer(0, 100, 100);
    c.pointer(1, 110, 95);
    await until(() => ps2.moves.length >= 2, 'relative motion');
    tablet.ready = true;
    c.pointer(1, 320, 240);
    c.pointer(0, 639, 479);
    await until(() => tablet.pointers.length >= 2, 'absolute events');
    assert.deepEqual(ps2.moves, [
      [0, 0, 0],
      [10, -5, 1],
    ]);
    assert.deepEqual(tablet.pointers, [
      [320, 240, 640, 480, 1],
      [639, 479, 640, 480, 0],
    ]);
    c.pointer(4, 10, 10); // right button held when the viewer leaves: released on the tablet
    await until(() => tablet.pointers.length >= 3, 'press');
    c.close();
    await until(() => tablet.pointers.length >= 4, 'release on disconnect');
    assert.deepEqual(tablet.pointers[3], [10, 10, 640, 480, 0]);
    assert.equal(ps2.moves.length, 2, 'nothing more went to PS/2');
  } finally {
    c.close();
    await handle.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
