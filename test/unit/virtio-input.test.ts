// virtio-input (virtio 1.2 §5.8) driven by a fake guest driver: config space for every select, events in the
// posted buffers byte for byte with EV_SYN framing, the bounded host-side buffer, statusq LEDs, hostile buffers,
// reset, save/restore; and the XT scancode → Linux KEY_* table.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GuestMemory } from '../../src/base/guest-memory.js';
import { MIB } from '../../src/base/units.js';
import { SplitQueue } from '../../src/devices/virtio/queue.js';
import type { VirtioQueueContext } from '../../src/devices/virtio/device.js';
import {
  ABS_MAX,
  CFG_ABS_INFO,
  CFG_EV_BITS,
  CFG_ID_DEVIDS,
  CFG_ID_NAME,
  CFG_ID_SERIAL,
  CFG_PROP_BITS,
  CFG_UNSET,
  INPUT_CONFIG_SIZE,
  INPUT_PENDING_EVENTS,
  inputConfigWritten,
  openInput,
  scaleAxis,
  VirtioInput,
  virtioInputOf,
  virtioKeyboardModel,
  virtioTabletModel,
  type InputHandle,
} from '../../src/devices/virtio/input.js';
import { linuxKeysOfScancodes, scancodeToLinuxKey } from '../../src/devices/virtio/input-keycodes.js';
import { deviceRegistry } from '../../src/devices/registry.js';
import { EventFdDispatcher } from '../../src/devices/virtio/runner.js';
import { VirtioPciDevice } from '../../src/devices/virtio/pci-transport.js';
import { AttachedVirtioFunction } from '../../src/devices/virtio/pci-model.js';
import { RecordingRouter } from '../support/ahci-driver.js';
import { FakeDriver } from '../support/virtq-driver.js';

const memory = GuestMemory.allocateRanges([{ gpa: 0, size: 16 * MIB }]);
const SENTINEL = 0xa5;

// ---- config space ----------------------------------------------------------------------------------------

/** What a driver reads after writing select and subsel (§5.8.5.1): size and the union's first `size` bytes. */
function select(handle: InputHandle, sel: number, subsel: number): Uint8Array {
  const config = new VirtioInput(handle).configBytes();
  assert.equal(config.length, INPUT_CONFIG_SIZE);
  inputConfigWritten(handle, config, 0, Uint8Array.of(sel));
  inputConfigWritten(handle, config, 1, Uint8Array.of(subsel));
  assert.equal(config[0], sel);
  assert.equal(config[1], subsel);
  assert.ok(
    config.subarray(8 + config[2]).every((b) => b === 0),
    'the union is zero past size',
  );
  return config.slice(8, 8 + config[2]);
}

const bits = (bytes: Uint8Array): number[] => {
  const out: number[] = [];
  bytes.forEach((b, i) => {
    for (let bit = 0; bit < 8; bit++) if (b & (1 << bit)) out.push(i * 8 + bit);
  });
  return out;
};

const u16 = (b: Uint8Array, at: number): number => b[at] | (b[at + 1] << 8);
const u32 = (b: Uint8Array, at: number): number => new DataView(b.buffer, b.byteOffset).getUint32(at, true);

test('device identity: type 18 (PCI 1af4:1052), input class, two queues, 136 config bytes, no features', () => {
  const device = new VirtioInput(openInput('tablet'));
  assert.equal(device.info.deviceType, 18);
  assert.equal(0x1040 + device.info.deviceType, 0x1052);
  assert.equal(device.info.classCode, 0x098000);
  assert.deepEqual(device.info.queueSizes, [64, 64]);
  assert.equal(device.info.configSize, 136);
  assert.equal(device.info.features, 0n);
  const handle = openInput('keyboard', 'K1');
  assert.deepEqual(structuredClone(handle), handle, 'the handle crosses to the I/O worker by postMessage');
  assert.ok(deviceRegistry.get('virtio-tablet') && deviceRegistry.get('virtio-keyboard'), 'both kinds registered');
});

test('tablet config: name, no serial, IDs, no properties, EV_KEY/EV_REL/EV_ABS bits, ABS_INFO of X and Y', () => {
  const tablet = openInput('tablet');
  assert.equal(new TextDecoder().decode(select(tablet, CFG_ID_NAME, 0)), 'Partita Virtio Tablet');
  assert.equal(select(tablet, CFG_ID_SERIAL, 0).length, 0, 'no serial unless one is given');
  const ids = select(tablet, CFG_ID_DEVIDS, 0);
  assert.deepEqual([u16(ids, 0), u16(ids, 2), u16(ids, 4), u16(ids, 6)], [6, 0x0627, 3, 2], "QEMU's tablet IDs");
  assert.equal(select(tablet, CFG_PROP_BITS, 0).length, 0, 'no INPUT_PROP_DIRECT');
  assert.deepEqual(bits(select(tablet, CFG_EV_BITS, 1)), [0x110, 0x111, 0x112], 'EV_KEY: BTN_LEFT/RIGHT/MIDDLE');
  assert.deepEqual(bits(select(tablet, CFG_EV_BITS, 2)), [8], 'EV_REL: REL_WHEEL');
  assert.deepEqual(select(tablet, CFG_EV_BITS, 3), Uint8Array.of(3), 'EV_ABS: ABS_X, ABS_Y in one byte');
  for (const axis of [0, 1]) {
    const abs = select(tablet, CFG_ABS_INFO, axis);
    assert.equal(abs.length, 20);
    assert.deepEqual(
      [0, 4, 8, 12, 16].map((at) => u32(abs, at)),
      [0, 32767, 0, 0, 0],
      `axis ${axis}`,
    );
  }
  for (const [sel, sub] of [
    [CFG_UNSET, 0],
    [CFG_EV_BITS, 0], // EV_SYN
    [CFG_EV_BITS, 0x11], // EV_LED: a tablet has none
    [CFG_EV_BITS, 0x14],
    [CFG_ABS_INFO, 2],
    [CFG_ID_NAME, 1],
    [0x13, 0],
    [0xff, 0xff],
  ])
    assert.equal(select(tablet, sel, sub).length, 0, `select 0x${sel.toString(16)} subsel ${sub}: size 0`);
});

test('keyboard config: name, serial when given, IDs, EV_KEY for every key of the table, EV_LED, EV_REP', () => {
  const keyboard = openInput('keyboard', 'kbd-7');
  assert.equal(new TextDecoder().decode(select(keyboard, CFG_ID_NAME, 0)), 'Partita Virtio Keyboard');
  assert.equal(new TextDecoder().decode(select(keyboard, CFG_ID_SERIAL, 0)), 'kbd-7');
  const ids = select(keyboard, CFG_ID_DEVIDS, 0);
  assert.deepEqual([u16(ids, 0), u16(ids, 2), u16(ids, 4), u16(ids, 6)], [6, 0x0627, 1, 1]);
  assert.deepEqual(bits(select(keyboard, CFG_EV_BITS, 1)), linuxKeysOfScancodes());
  assert.deepEqual(select(keyboard, CFG_EV_BITS, 0x11), Uint8Array.of(7), 'NumL, CapsL, ScrollL');
  assert.deepEqual(select(keyboard, CFG_EV_BITS, 0x14), Uint8Array.of(0), 'EV_REP: size 1, empty');
  assert.equal(select(keyboard, CFG_EV_BITS, 3).length, 0, 'no axes');
  assert.equal(select(keyboard, CFG_ABS_INFO, 0).length, 0);
});

test('config: a 16-bit write sets select and subsel together; writes elsewhere are ignored', () => {
  const tablet = openInput('tablet');
  const config = new VirtioInput(tablet).configBytes();
  inputConfigWritten(tablet, config, 0, Uint8Array.of(CFG_ABS_INFO, 0));
  assert.equal(config[2], 20);
  inputConfigWritten(tablet, config, 2, Uint8Array.of(99, 1, 2, 3)); // size and reserved are read-only
  inputConfigWritten(tablet, config, 8, Uint8Array.of(1, 2, 3, 4)); // so is the union
  assert.equal(config[2], 20);
  assert.equal(u32(config, 12), 32767);
  assert.equal(u32(config, 8), 0);
});

// ---- queues ----------------------------------------------------------------------------------------------

interface Harness {
  readonly events: FakeDriver;
  readonly status: FakeDriver;
  readonly device: VirtioInput;
  readonly interrupts: number[];
  readonly resets: string[];
  readonly queues: SplitQueue[];
}

let nextBase = 0x10000;

function harness(flavour: 'tablet' | 'keyboard', size = 64): Harness {
  const base = nextBase;
  nextBase += 0x40000;
  const events = FakeDriver.at(memory, size, base, 0x10000);
  const status = FakeDriver.at(memory, size, base + 0x20000, 0x10000);
  const device = new VirtioInput(openInput(flavour));
  const interrupts: number[] = [];
  const resets: string[] = [];
  const queues = activate(device, events, status, interrupts, resets);
  return { events, status, device, interrupts, resets, queues };
}

function activate(
  device: VirtioInput,
  events: FakeDriver,
  status: FakeDriver,
  interrupts: number[],
  resets: string[],
  from?: readonly SplitQueue[],
): SplitQueue[] {
  const q0 = from
    ? SplitQueue.restore(memory, events.config(), from[0].saveState())
    : SplitQueue.create(memory, events.config());
  const q1 = from
    ? SplitQueue.restore(memory, status.config(), from[1].saveState())
    : SplitQueue.create(memory, status.config());
  if (!(q0 instanceof SplitQueue)) throw q0;
  if (!(q1 instanceof SplitQueue)) throw q1;
  const ctx: VirtioQueueContext = {
    memory,
    queues: [q0, q1],
    features: 0n,
    interrupt: (queue) => void interrupts.push(queue),
    needsReset: (reason) => {
      resets.push(reason); // as VirtioRunner.needsReset: the backend is reset before the transport is told
      device.reset();
    },
  };
  device.activate(ctx);
  return [q0, q1];
}

/** Posts `n` 8-byte device-writable buffers, as Linux's driver fills the eventq; returns their addresses by head. */
function post(driver: FakeDriver, n: number, len = 8): Map<number, number> {
  const at = new Map<number, number>();
  for (let i = 0; i < n; i++) {
    const gpa = driver.alloc(Math.max(len, 1));
    memory.fill(gpa, Math.max(len, 1), SENTINEL);
    at.set(driver.addChain([{ gpa, len, writable: true }]), gpa);
  }
  return at;
}

/** The events the device put in used buffers: [type, code, value]. */
function received(driver: FakeDriver, buffers: Map<number, number>): [number, number, number][] {
  return driver.takeUsed().map(({ id, len }) => {
    assert.equal(len, 8, 'used length 8');
    const b = memory.read(buffers.get(id)!, 8);
    return [u16(b, 0), u16(b, 2), new DataView(b.buffer, b.byteOffset).getInt32(4, true)];
  });
}

const SYN: [number, number, number] = [0, 0, 0];

test('tablet: absolute position scaled to 0..32767, buttons, wheel, each report ended by EV_SYN', () => {
  const h = harness('tablet');
  const buffers = post(h.events, 32);
  assert.equal(h.device.ready, true);
  assert.equal(h.device.pointerAbsolute(100, 50, 800, 600, 0), true);
  assert.deepEqual(received(h.events, buffers), [
    [3, 0, Math.floor((100 * 32767) / 799)],
    [3, 1, Math.floor((50 * 32767) / 599)],
    SYN,
  ]);
  assert.deepEqual(h.interrupts, [0]);
  h.device.pointerAbsolute(100, 50, 800, 600, 1); // left press, no motion
  h.device.pointerAbsolute(799, 599, 800, 600, 1 | 4); // corner, right press
  h.device.pointerAbsolute(799, 599, 800, 600, 8); // wheel up; left and right released
  h.device.pointerAbsolute(799, 599, 800, 600, 0);
  h.device.pointerAbsolute(799, 599, 800, 600, 16); // wheel down
  h.device.pointerAbsolute(799, 599, 800, 600, 16); // no change: no report
  assert.deepEqual(received(h.events, buffers), [
    [1, 0x110, 1],
    SYN,
    [3, 0, 32767],
    [3, 1, 32767],
    [1, 0x111, 1],
    SYN,
    [1, 0x110, 0],
    [1, 0x111, 0],
    [2, 8, 1],
    SYN,
    [2, 8, -1],
    SYN,
  ]);
  // The raw bytes of one event: le16 type, le16 code, le32 value.
  h.device.pointerAbsolute(799, 599, 800, 600, 16 | 2); // middle press
  const used = h.events.takeUsed();
  assert.deepEqual(memory.read(buffers.get(used[0].id)!, 8), Uint8Array.of(1, 0, 0x12, 0x01, 1, 0, 0, 0));
});

test('scaling: as QEMU, clamped to the screen; a 1-pixel screen maps to 0', () => {
  assert.equal(scaleAxis(0, 1024), 0);
  assert.equal(scaleAxis(1023, 1024), ABS_MAX);
  assert.equal(scaleAxis(5000, 1024), ABS_MAX);
  assert.equal(scaleAxis(-3, 1024), 0);
  assert.equal(scaleAxis(512, 1024), Math.floor((512 * 32767) / 1023));
  assert.equal(scaleAxis(0, 1), 0);
  assert.equal(scaleAxis(10, 0), 0);
});

test('keyboard: KEY_* press and release with EV_SYN; a held key repeated by the viewer is sent once', () => {
  const h = harness('keyboard');
  const buffers = post(h.events, 16);
  assert.equal(h.device.key(30, true), true); // KEY_A
  assert.equal(h.device.key(30, true), true);
  assert.equal(h.device.key(30, false), true);
  assert.deepEqual(received(h.events, buffers), [[1, 30, 1], SYN, [1, 30, 0], SYN]);
  assert.equal(h.device.pointerAbsolute(1, 1, 10, 10, 1), false, 'a keyboard is no pointer');
});

test('events wait for buffers: delivered in order when the driver posts them, whole reports kept', () => {
  const h = harness('tablet');
  h.device.pointerAbsolute(10, 10, 100, 100, 0);
  h.device.pointerAbsolute(20, 20, 100, 100, 1);
  assert.equal(h.device.pending, 7);
  assert.deepEqual(h.interrupts, []);
  const first = post(h.events, 4);
  h.device.queueNotified(0);
  const part = received(h.events, first);
  assert.equal(part.length, 4);
  assert.equal(h.device.pending, 3);
  const rest = post(h.events, 8);
  h.device.queueNotified(0);
  assert.deepEqual(
    [...part, ...received(h.events, rest)],
    [
      [3, 0, scaleAxis(10, 100)],
      [3, 1, scaleAxis(10, 100)],
      SYN,
      [3, 0, scaleAxis(20, 100)],
      [3, 1, scaleAxis(20, 100)],
      [1, 0x110, 1],
      SYN,
    ],
  );
  assert.deepEqual(h.interrupts, [0, 0]);
});

test('a guest that never reads: the oldest whole reports are dropped at the limit, host memory stays bounded', () => {
  const h = harness('tablet');
  for (let i = 0; i < 10_000; i++) h.device.pointerAbsolute(i % 1000, 5, 1000, 1000, 0);
  assert.ok(h.device.pending <= INPUT_PENDING_EVENTS, `${h.device.pending} events pending`);
  assert.ok(h.device.dropped > 0);
  const buffers = post(h.events, 64);
  h.device.queueNotified(0);
  const got = received(h.events, buffers);
  // Every report that comes out is whole: X (changed each time; Y only in the first report ever) then SYN.
  assert.equal(got.length % 2, 0);
  for (let i = 0; i < got.length; i += 2) {
    assert.equal(got[i][0], 3, 'starts with an axis');
    assert.deepEqual(got[i + 1], SYN, 'ends with EV_SYN');
  }
  // The newest report survived: the last X sent was 999 (scaled), and it is still waiting.
  assert.ok(h.device.pending > 0);
});

test('overflow never drops the report whose first events are already in the guest', () => {
  const h = harness('tablet');
  h.device.pointerAbsolute(1, 1, 100, 100, 1); // X, Y, BTN_LEFT, SYN
  const two = post(h.events, 2);
  h.device.queueNotified(0);
  assert.equal(received(h.events, two).length, 2);
  for (let i = 0; i < 2000; i++) h.device.pointerAbsolute(2 + (i % 50), 1, 100, 100, 1);
  const more = post(h.events, 2);
  h.device.queueNotified(0);
  assert.deepEqual(received(h.events, more), [[1, 0x110, 1], SYN], 'the started report is finished first');
});

test('statusq: EV_LED events from the driver set leds(); other events are ignored; buffers come back', () => {
  const h = harness('keyboard');
  const led = (code: number, value: number): Uint8Array => {
    const b = new Uint8Array(8);
    const v = new DataView(b.buffer);
    v.setUint16(0, 0x11, true);
    v.setUint16(2, code, true);
    v.setInt32(4, value, true);
    return b;
  };
  h.status.addChain([{ len: 8, data: led(0, 1) }]); // NumL on
  h.status.addChain([{ len: 8, data: led(1, 1) }]); // CapsL on
  h.status.addChain([{ len: 8, data: Uint8Array.of(0x14, 0, 0, 0, 250, 0, 0, 0) }]); // EV_REP: ignored
  h.status.addChain([{ len: 4, data: Uint8Array.of(0x11, 0, 2, 0) }]); // too short: ignored
  h.device.queueNotified(1);
  assert.equal(h.device.leds(), 2 | 4, 'Num Lock (bit 1) and Caps Lock (bit 2)');
  assert.deepEqual(
    h.status.takeUsed().map((u) => u.len),
    [0, 0, 0, 0],
  );
  assert.deepEqual(h.interrupts, [1]);
  h.status.addChain([{ len: 8, data: led(1, 0) }]);
  h.status.addChain([{ len: 8, data: led(2, 1) }]);
  h.device.queueNotified(1);
  assert.equal(h.device.leds(), 2 | 1, 'Caps off, Scroll (bit 0) on');
  assert.deepEqual(h.resets, []);
  h.device.reset();
  assert.equal(h.device.leds(), 0, 'a reset forgets them');
});

test('hostile eventq buffers: zero-length and device-readable ones are given back unused, the event waits', () => {
  const h = harness('tablet');
  const zero = h.events.addChain([{ len: 0, writable: true }]);
  const readable = h.events.alloc(8);
  memory.fill(readable, 8, SENTINEL);
  const ro = h.events.addChain([{ gpa: readable, len: 8 }]);
  const small = post(h.events, 1, 4);
  h.device.pointerAbsolute(0, 0, 10, 10, 0);
  assert.deepEqual(
    h.events.takeUsed().map((u) => [u.id, u.len]),
    [
      [zero, 0],
      [ro, 0],
      [[...small.keys()][0], 0],
    ],
  );
  assert.ok(
    memory.read(readable, 8).every((b) => b === SENTINEL),
    'a device-readable buffer is never written',
  );
  assert.ok(memory.read(small.values().next().value!, 4).every((b) => b === SENTINEL));
  assert.equal(h.device.refused, 3);
  assert.deepEqual(h.resets, [], 'not worth a device reset');
  const good = post(h.events, 3);
  h.device.queueNotified(0);
  assert.deepEqual(received(h.events, good), [[3, 0, 0], [3, 1, 0], SYN]);
});

test('hostile eventq/statusq chains outside guest RAM: needsReset, no exception, nothing written; then quiet', () => {
  const h = harness('tablet');
  h.events.addChain([{ gpa: 64 * MIB, len: 8, writable: true }]);
  assert.doesNotThrow(() => h.device.pointerAbsolute(3, 3, 10, 10, 0));
  assert.equal(h.resets.length, 1);
  assert.match(h.resets[0], /^eventq: .*not inside guest RAM/);
  assert.equal(h.device.ready, false);
  assert.equal(h.device.pointerAbsolute(3, 3, 10, 10, 1), false, 'after the reset, input goes elsewhere');
  const k = harness('keyboard');
  k.status.addChain([{ gpa: 2n ** 63n, len: 8 }]);
  assert.doesNotThrow(() => k.device.queueNotified(1));
  assert.equal(k.resets.length, 1);
  assert.match(k.resets[0], /^statusq: /);
});

test('an avail idx past the queue size is a needsReset, not an exception', () => {
  const h = harness('tablet', 8);
  h.events.setAvailIdx(100);
  assert.doesNotThrow(() => h.device.pointerAbsolute(1, 1, 10, 10, 0));
  assert.equal(h.resets.length, 1);
  assert.match(h.resets[0], /avail idx 100/);
});

test('not ready before activation and after reset: input is refused (the caller uses PS/2) and not kept', () => {
  const device = new VirtioInput(openInput('tablet'));
  assert.equal(device.ready, false);
  assert.equal(device.pointerAbsolute(5, 5, 10, 10, 1), false);
  assert.equal(device.pending, 0);
  const h = harness('tablet');
  h.device.pointerAbsolute(5, 5, 10, 10, 1);
  assert.equal(h.device.pending, 4);
  h.device.reset();
  assert.equal(h.device.pending, 0, 'a reset drops undelivered input');
  assert.equal(h.device.ready, false);
});

test('save/restore: undelivered events and LEDs survive into a fresh device, delivered after restore', () => {
  const h = harness('keyboard');
  h.status.addChain([{ len: 8, data: Uint8Array.of(0x11, 0, 1, 0, 1, 0, 0, 0) }]); // CapsL on
  h.device.queueNotified(1);
  h.device.key(30, true);
  h.device.key(30, false);
  const one = post(h.events, 1);
  h.device.queueNotified(0);
  assert.deepEqual(received(h.events, one), [[1, 30, 1]]);
  h.device.quiesce();
  const saved = h.device.saveState();
  assert.deepEqual(JSON.parse(JSON.stringify(saved)), saved, 'JSON-safe');
  // A fresh device on the same guest memory (the restored VM), activated by the runner at the saved queue
  // positions, then its own state loaded.
  const twin = new VirtioInput(openInput('keyboard'));
  const interrupts: number[] = [];
  activate(twin, h.events, h.status, interrupts, [], h.queues);
  twin.restoreState(saved);
  assert.equal(twin.leds(), 4);
  assert.equal(twin.pending, 3);
  const buffers = post(h.events, 4);
  twin.queueNotified(0);
  assert.deepEqual(received(h.events, buffers), [SYN, [1, 30, 0], SYN], 'continues where the original stopped');
  assert.doesNotThrow(() => twin.restoreState(undefined), 'a snapshot without backend state is fine');
  assert.doesNotThrow(() => twin.restoreState({ reports: ['!!', 5, 'AAAA'] }), 'junk is skipped');
});

// ---- scancodes → Linux key codes -------------------------------------------------------------------------

test('scancode table: set 1 main block is KEY_* itself; extended and high keys as input-event-codes.h', () => {
  // Identity range: KEY_ESC 1, KEY_1 2, KEY_Q 16, KEY_ENTER 28, KEY_LEFTCTRL 29, KEY_A 30, KEY_LEFTSHIFT 42,
  // KEY_Z 44, KEY_SPACE 57, KEY_CAPSLOCK 58, KEY_F1 59, KEY_F10 68, KEY_NUMLOCK 69, KEY_KP7 71, KEY_KPDOT 83.
  for (const code of [1, 2, 16, 28, 29, 30, 42, 44, 57, 58, 59, 68, 69, 71, 83])
    assert.equal(scancodeToLinuxKey(code), code);
  const expected: [number, number, string][] = [
    [0x57, 87, 'KEY_F11'],
    [0x58, 88, 'KEY_F12'],
    [0x56, 86, 'KEY_102ND'],
    [0x54, 99, 'KEY_SYSRQ'],
    [0xe01c, 96, 'KEY_KPENTER'],
    [0xe01d, 97, 'KEY_RIGHTCTRL'],
    [0xe035, 98, 'KEY_KPSLASH'],
    [0xe037, 99, 'KEY_SYSRQ'],
    [0xe038, 100, 'KEY_RIGHTALT'],
    [0xe047, 102, 'KEY_HOME'],
    [0xe048, 103, 'KEY_UP'],
    [0xe049, 104, 'KEY_PAGEUP'],
    [0xe04b, 105, 'KEY_LEFT'],
    [0xe04d, 106, 'KEY_RIGHT'],
    [0xe04f, 107, 'KEY_END'],
    [0xe050, 108, 'KEY_DOWN'],
    [0xe051, 109, 'KEY_PAGEDOWN'],
    [0xe052, 110, 'KEY_INSERT'],
    [0xe053, 111, 'KEY_DELETE'],
    [0xe05b, 125, 'KEY_LEFTMETA'],
    [0xe05c, 126, 'KEY_RIGHTMETA'],
    [0xe05d, 127, 'KEY_COMPOSE'],
    [0xe046, 119, 'KEY_PAUSE'],
    [0xe020, 113, 'KEY_MUTE'],
  ];
  for (const [scancode, key, name] of expected)
    assert.equal(scancodeToLinuxKey(scancode), key, `0x${scancode.toString(16)} → ${name}`);
  for (const none of [0, 0x55, 0x80, 0xe000, 0xe001, 0xe0ff, 0x1e0]) assert.equal(scancodeToLinuxKey(none), undefined);
});

test('scancode table: every key the RFB server can produce (keysyms, QEMU extended keys) has a KEY_* code', async () => {
  const { keysymToScancode, qemuKeycodeToScancode } = await import('../../src/display/rfb/keysyms.js');
  const keysyms = [0x20, 0x61, 0x7a, 0x31, 0xff08, 0xff09, 0xff0d, 0xff1b, 0xffff, 0xff50, 0xff51, 0xff52, 0xff53];
  for (const k of [...keysyms, 0xff54, 0xff55, 0xff56, 0xff57, 0xff63, 0xff61, 0xff15, 0xff14, 0xff7f, 0xffe5]) {
    const sc = keysymToScancode(k);
    assert.ok(sc !== undefined && scancodeToLinuxKey(sc) !== undefined, `keysym 0x${k.toString(16)}`);
  }
  for (let k = 0xffbe; k <= 0xffc9; k++) assert.notEqual(scancodeToLinuxKey(keysymToScancode(k)!), undefined);
  for (let k = 0xffe1; k <= 0xffec; k++) {
    const sc = keysymToScancode(k);
    if (sc !== undefined) assert.notEqual(scancodeToLinuxKey(sc), undefined, `keysym 0x${k.toString(16)}`);
  }
  // QEMU extended key codes 1..0x53 and the usual 0xE0 keys.
  for (let q = 1; q <= 0x53; q++) assert.equal(scancodeToLinuxKey(qemuKeycodeToScancode(q)!), q);
  assert.equal(scancodeToLinuxKey(qemuKeycodeToScancode(0xc8)!), 103, 'QEMU 0xC8 (Up) → KEY_UP');
  const keys = linuxKeysOfScancodes();
  assert.ok(keys.length > 100 && keys.every((k, i) => i === 0 || k > keys[i - 1]), 'sorted, distinct');
});

test("the I/O thread's path: the model's serve() keeps the backend where routing finds it (virtioInputOf)", () => {
  // The I/O thread finds where the screen's input goes with virtioInputOf(set.find(kind)); a backend built for
  // the runner but not kept on the attached device made the RFB server see no input device at all.
  for (const model of [virtioTabletModel, virtioKeyboardModel]) {
    const flavour = model.kind === 'virtio-tablet' ? 'tablet' : 'keyboard';
    const handle = openInput(flavour);
    const info = { ...new VirtioInput(handle).info, packedRing: false };
    const transport = VirtioPciDevice.create(model.kind, info, -1, new RecordingRouter(), { set: () => undefined });
    const attached = new AttachedVirtioFunction(model.kind, transport);
    assert.equal(virtioInputOf(attached), undefined, 'nothing to route to before the host side starts');
    const state = { name: model.kind, slot: 2, gsi: 10, handle, info, shared: transport.shared };
    const dispatcher = new EventFdDispatcher();
    model.serve!(state, attached, {
      memory: GuestMemory.allocateRanges([{ gpa: 0, size: 1 << 20 }]),
      log: () => undefined,
      onEventFd: (fd, handler) => dispatcher.on(fd, handler),
    });
    const input = virtioInputOf(attached);
    assert.ok(input, `${model.kind}: found after serve()`);
    assert.equal(input.ready, false, 'not ready until the driver sets DRIVER_OK');
    assert.deepEqual(attached.saveState().data.backend, input.saveState(), 'its state is saved with the device');
  }
});
