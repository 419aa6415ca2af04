// The 8042 keyboard controller with its PS/2 keyboard and mouse (src/devices/legacy/i8042.ts), driven through
// ports 0x60/0x64 the way SeaBIOS (src/hw/ps2port.c) and Linux (i8042.c, atkbd.c, psmouse-base.c) drive them,
// with keys and motion injected through its InputSink, also from another thread.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import { PortIoBus } from '../../src/devices/bus.js';
import {
  CTR_AUXDIS,
  CTR_AUXINT,
  CTR_KBDDIS,
  CTR_KBDINT,
  CTR_SYS,
  CTR_XLATE,
  I8042,
  i8042InputSink,
  i8042Model,
  STATUS_AUXB,
  STATUS_OBF,
} from '../../src/devices/legacy/i8042.js';
import { set2Sequence, translateSet2, XLATE_TABLE } from '../../src/devices/legacy/ps2-scancodes.js';
import { DeviceStateError, type DeviceAttachContext } from '../../src/devices/model.js';
import type { IrqLine } from '../../src/base/irq-line.js';
import { buildDsdt } from '../../src/arch/x86_64/acpi/dsdt.js';

class RecordingIrq implements IrqLine {
  level = false;
  edges = 0;
  set(level: boolean): void {
    if (level && !this.level) this.edges++;
    this.level = level;
  }
}

function makeController() {
  const state = I8042.createState();
  const kbdIrq = new RecordingIrq();
  const auxIrq = new RecordingIrq();
  const resets: string[] = [];
  const pio = new PortIoBus();
  const dev = i8042Model.attach(state, {
    pio,
    irqLine: (irq: number) => (irq === 1 ? kbdIrq : irq === 12 ? auxIrq : assert.fail(`IRQ ${irq}`)),
    host: { reset: (why: string) => resets.push(why) },
  } as unknown as DeviceAttachContext);
  const sink = i8042InputSink(dev)!;
  assert.ok(sink, 'the attached device is an InputSink');
  const status = (): number => pio.read(0x64, 1);
  /** Like Linux's i8042_wait_read + read: the next byte and whether it came from the mouse. */
  const next = (): { value: number; aux: boolean } => {
    const st = status();
    assert.ok(st & STATUS_OBF, 'a byte is waiting');
    return { value: pio.read(0x60, 1), aux: (st & STATUS_AUXB) !== 0 };
  };
  /** Every byte waiting, as [value, aux] pairs. */
  const drain = (): [number, boolean][] => {
    const out: [number, boolean][] = [];
    for (let i = 0; i < 1000 && status() & STATUS_OBF; i++) {
      const b = next();
      out.push([b.value, b.aux]);
    }
    return out;
  };
  const bytes = (): number[] => drain().map(([v]) => v);
  const command = (cmd: number, param?: number): void => {
    pio.write(0x64, 1, cmd);
    if (param !== undefined) pio.write(0x60, 1, param);
  };
  const ctr = (): number => {
    command(0x20);
    return next().value;
  };
  const kbd = (...data: number[]): number[] => {
    for (const d of data) pio.write(0x60, 1, d);
    return bytes();
  };
  const aux = (...data: number[]): [number, boolean][] => {
    for (const d of data) command(0xd4, d);
    return drain();
  };
  return { state, dev, sink, pio, kbdIrq, auxIrq, resets, status, next, drain, bytes, command, ctr, kbd, aux };
}

test('i8042: controller self-test, port tests, command byte and port enables as Linux probes them', () => {
  const c = makeController();
  assert.deepEqual(c.drain(), [], 'i8042_flush: nothing waiting after power-on');
  c.command(0xaa);
  assert.equal(c.next().value, 0x55, 'self-test passed');
  assert.ok(c.status() & 0x04, 'SYS flag after the self-test');
  c.command(0xab);
  assert.equal(c.next().value, 0x00, 'keyboard port test');
  c.command(0xa9);
  assert.equal(c.next().value, 0x00, 'mouse port test');
  assert.equal(c.ctr(), CTR_KBDINT | CTR_AUXINT, "QEMU's power-on command byte");
  c.command(0x60, CTR_KBDDIS | CTR_AUXDIS | CTR_SYS);
  assert.equal(c.ctr(), CTR_KBDDIS | CTR_AUXDIS | CTR_SYS);
  // i8042_check_aux: A8 clears AUXDIS, A7 sets it; AD/AE the same for the keyboard.
  c.command(0xa8);
  assert.equal(c.ctr() & CTR_AUXDIS, 0);
  c.command(0xa7);
  assert.equal(c.ctr() & CTR_AUXDIS, CTR_AUXDIS);
  c.command(0xae);
  assert.equal(c.ctr() & CTR_KBDDIS, 0);
  c.command(0xad);
  assert.equal(c.ctr() & CTR_KBDDIS, CTR_KBDDIS);
  // The AUX loopback (D3) comes back as mouse data, on IRQ 12 once AUXINT is set (Linux's IRQ test).
  c.command(0x60, CTR_AUXINT | CTR_SYS);
  const edges = c.auxIrq.edges;
  c.command(0xd3, 0xa5);
  assert.equal(c.status() & (STATUS_OBF | STATUS_AUXB), STATUS_OBF | STATUS_AUXB);
  assert.equal(c.auxIrq.level, true);
  assert.deepEqual(c.next(), { value: 0xa5, aux: true });
  assert.equal(c.auxIrq.edges, edges + 1);
  assert.equal(c.auxIrq.level, false, 'reading the byte lowers IRQ 12');
  // D2 writes the keyboard's output buffer.
  c.command(0xd2, 0x77);
  assert.deepEqual(c.next(), { value: 0x77, aux: false });
  assert.equal(c.status() & 0x08, 0, 'A2: the last write went to the data port');
  c.command(0xad);
  assert.equal(c.status() & 0x08, 0x08, 'A2: the last write went to the command port');
});

test('i8042: keyboard reset, identify, scan code set, LEDs, echo, resend, as atkbd and SeaBIOS do them', () => {
  const c = makeController();
  c.command(0x60, CTR_KBDINT | CTR_SYS); // no XLATE
  assert.deepEqual(c.kbd(0xff), [0xfa, 0xaa], 'reset: ACK, BAT passed');
  assert.deepEqual(c.kbd(0xf5), [0xfa], 'disable');
  assert.deepEqual(c.kbd(0xf2), [0xfa, 0xab, 0x83], 'MF2 keyboard ID');
  assert.deepEqual(c.kbd(0xf0, 0x02), [0xfa, 0xfa], 'select set 2');
  assert.deepEqual(c.kbd(0xf0, 0x00), [0xfa, 0xfa, 0x02], 'get set: ACK, ACK, 2');
  assert.deepEqual(c.kbd(0xf3, 0x00), [0xfa, 0xfa], 'typematic');
  assert.deepEqual(c.kbd(0xed, 0x07), [0xfa, 0xfa], 'LEDs');
  assert.equal(c.sink.leds(), 7, 'the host sees Scroll, Num and Caps Lock');
  c.kbd(0xed, 0x02);
  assert.equal(c.sink.leds(), 2, 'Num Lock only');
  assert.deepEqual(c.kbd(0xee), [0xee], 'echo');
  assert.deepEqual(c.kbd(0xfe), [0xee], 'resend repeats the last byte');
  assert.deepEqual(c.kbd(0x12), [0xfe], 'not a command: resend request');
  assert.deepEqual(c.kbd(0xf4), [0xfa], 'enable');
  // With XLATE (what SeaBIOS and Linux set), the ID and the set number come translated.
  c.command(0x60, CTR_KBDINT | CTR_SYS | CTR_XLATE);
  assert.deepEqual(c.kbd(0xf2), [0xfa, 0xab, 0x41], 'translated ID (atkbd knows 0xAB 0x41)');
  assert.deepEqual(c.kbd(0xf0, 0x00), [0xfa, 0xfa, 0x41], 'translated set 2');
  // Each byte is an edge on IRQ 1.
  const edges = c.kbdIrq.edges;
  c.pio.write(0x60, 1, 0xf2);
  assert.equal(c.kbdIrq.level, true);
  c.bytes();
  assert.equal(c.kbdIrq.edges, edges + 3, 'three bytes, three edges');
  assert.equal(c.kbdIrq.level, false);
});

test('i8042: injected keys in set 2, translated to set 1 with XLATE: make, break, extended, special', () => {
  const c = makeController();
  c.command(0x60, CTR_KBDINT | CTR_SYS);
  c.sink.key(0x1e, true); // A
  c.sink.key(0x1e, false);
  assert.deepEqual(c.bytes(), [0x1c, 0xf0, 0x1c], 'set 2 A make and break');
  c.sink.key(0xe048, true); // cursor up
  c.sink.key(0xe048, false);
  assert.deepEqual(c.bytes(), [0xe0, 0x75, 0xe0, 0xf0, 0x75], 'set 2 cursor up');
  c.command(0x60, CTR_KBDINT | CTR_SYS | CTR_XLATE);
  const cases: [number, boolean, number[]][] = [
    [0x1e, true, [0x1e]],
    [0x1e, false, [0x9e]],
    [0xe048, true, [0xe0, 0x48]],
    [0xe048, false, [0xe0, 0xc8]],
    [0xe01d, true, [0xe0, 0x1d]], // right Ctrl
    [0xe01d, false, [0xe0, 0x9d]],
    [0x41, true, [0x41]], // F7: 0x83 in set 2
    [0x41, false, [0xc1]],
    [0xe037, true, [0xe0, 0x2a, 0xe0, 0x37]], // Print Screen with its fake shift
    [0xe037, false, [0xe0, 0xb7, 0xe0, 0xaa]],
    [0xe046, true, [0xe1, 0x1d, 0x45, 0xe1, 0x9d, 0xc5]], // Pause: no break code
    [0xe046, false, []],
  ];
  for (const [code, down, expected] of cases) {
    c.sink.key(code, down);
    assert.deepEqual(c.bytes(), expected, `0x${code.toString(16)} ${down ? 'down' : 'up'}`);
  }
  // Every set 1 key comes back as itself through set 2 and the 8042's translation.
  for (let code = 1; code < 0x80; code++) {
    for (const prefix of [0, 0xe000]) {
      if (prefix && code === 0x37) continue; // Print Screen, above
      if (prefix && code === 0x46) continue; // Pause, above
      const make = (prefix ? [0xe0] : []).concat([code]);
      const brk = (prefix ? [0xe0] : []).concat([code | 0x80]);
      assert.deepEqual(
        translateSet2(set2Sequence(prefix | code, true, 0)),
        make,
        `make 0x${(prefix | code).toString(16)}`,
      );
      assert.deepEqual(
        translateSet2(set2Sequence(prefix | code, false, 0)),
        brk,
        `break 0x${(prefix | code).toString(16)}`,
      );
    }
  }
  assert.deepEqual([XLATE_TABLE[0x01], XLATE_TABLE[0x02], XLATE_TABLE[0x03]], [0x43, 0x41, 0x3f]);
  // Scanning off (F5) drops keys; the port disabled (AD) holds them until AE.
  c.kbd(0xf5);
  c.sink.key(0x1e, true);
  assert.deepEqual(c.bytes(), []);
  c.kbd(0xf4);
  c.command(0xad);
  c.sink.key(0x1e, true);
  assert.deepEqual(c.bytes(), [], 'held while the keyboard port is disabled');
  c.command(0xae);
  assert.deepEqual(c.bytes(), [0x1e]);
  // A key arriving while the output buffer is empty raises IRQ 1 at once.
  const edges = c.kbdIrq.edges;
  c.sink.key(0x10, true);
  assert.equal(c.kbdIrq.level, true);
  assert.equal(c.kbdIrq.edges, edges + 1);
  assert.deepEqual(c.bytes(), [0x10]);
});

test('i8042: mouse reset, enable, packets, IntelliMouse and Explorer IDs, status, remote mode', () => {
  const c = makeController();
  c.command(0x60, CTR_KBDINT | CTR_AUXINT | CTR_SYS | CTR_XLATE);
  const vals = (pairs: [number, boolean][]): number[] => {
    for (const [, aux] of pairs) assert.equal(aux, true, 'mouse bytes carry AUXB');
    return pairs.map(([v]) => v);
  };
  assert.deepEqual(vals(c.aux(0xff)), [0xfa, 0xaa, 0x00], 'reset: ACK, BAT, ID 0');
  assert.deepEqual(vals(c.aux(0xf2)), [0xfa, 0x00], 'standard PS/2 mouse');
  c.sink.pointer(5, 3, 1);
  assert.deepEqual(c.drain(), [], 'not enabled yet: nothing sent');
  assert.deepEqual(vals(c.aux(0xf4)), [0xfa]);
  const edges = c.auxIrq.edges;
  c.sink.pointer(5, 3, 1); // right 5, down 3, left button
  assert.equal(c.auxIrq.level, true);
  assert.deepEqual(vals(c.drain()), [0x08 | 0x01 | 0x20, 5, 0xfd], 'left button, dy −3 (PS/2 up is positive)');
  assert.equal(c.auxIrq.edges, edges + 3, 'one IRQ 12 edge per byte');
  c.sink.pointer(-300, 0, 4); // right button, more than one packet of motion
  assert.deepEqual(vals(c.drain()), [0x08 | 0x02 | 0x10, 0x01, 0x00, 0x08 | 0x02 | 0x10, 0xd3, 0x00]);
  // IntelliMouse: rates 200, 100, 80 → ID 3 and 4-byte packets with the wheel.
  vals(c.aux(0xf3, 200, 0xf3, 100, 0xf3, 80));
  assert.deepEqual(vals(c.aux(0xf2)), [0xfa, 0x03], 'IntelliMouse');
  c.sink.pointer(0, 0, 0x08); // wheel up (button 4 press; the right button released)
  c.sink.pointer(0, 0, 0); // button 4 released: nothing to report
  assert.deepEqual(vals(c.drain()), [0x08, 0, 0, 0xff], 'wheel up is Z −1');
  vals(c.aux(0xf3, 200, 0xf3, 200, 0xf3, 80));
  assert.deepEqual(vals(c.aux(0xf2)), [0xfa, 0x04], 'IntelliMouse Explorer');
  c.sink.pointer(1, 0, 0x10); // wheel down
  assert.deepEqual(vals(c.drain()), [0x08, 1, 0, 0x01]);
  // Status, resolution, scaling.
  vals(c.aux(0xe8, 3, 0xe7, 0xf3, 40));
  c.sink.pointer(0, 0, 1);
  c.drain();
  assert.deepEqual(vals(c.aux(0xe9)), [0xfa, 0x20 | 0x10 | 0x04, 3, 40], 'enabled, 2:1, left; resolution; rate');
  vals(c.aux(0xe6));
  // Remote mode: motion waits for "read data".
  vals(c.aux(0xf0));
  c.sink.pointer(7, 0, 1);
  assert.deepEqual(c.drain(), []);
  assert.deepEqual(vals(c.aux(0xeb)), [0xfa, 0x09, 7, 0, 0]);
  vals(c.aux(0xea));
  assert.deepEqual(vals(c.aux(0x12)), [0xfe], 'unknown command');
  // Reset brings the ID back to 0.
  assert.deepEqual(vals(c.aux(0xff)), [0xfa, 0xaa, 0x00]);
  assert.deepEqual(vals(c.aux(0xf2)), [0xfa, 0x00]);
});

test('i8042: keyboard and mouse bytes interleave in the output buffer, each with its AUXB and IRQ', () => {
  const c = makeController();
  c.command(0x60, CTR_KBDINT | CTR_AUXINT | CTR_SYS | CTR_XLATE);
  c.aux(0xf4);
  c.sink.pointer(1, 0, 0);
  c.sink.key(0x1e, true);
  c.sink.key(0x1e, false);
  const got = c.drain();
  assert.deepEqual(
    got.filter(([, aux]) => aux).map(([v]) => v),
    [0x08, 1, 0],
    'the mouse packet, in order',
  );
  assert.deepEqual(
    got.filter(([, aux]) => !aux).map(([v]) => v),
    [0x1e, 0x9e],
    'the keys, in order',
  );
  assert.equal(c.kbdIrq.level || c.auxIrq.level, false);
  // The mouse byte first in the buffer: IRQ 12, not IRQ 1.
  c.sink.pointer(2, 0, 0);
  assert.equal(c.auxIrq.level, true);
  assert.equal(c.kbdIrq.level, false);
  c.sink.key(0x1e, true);
  assert.equal(c.kbdIrq.level, false, 'the keyboard byte waits behind the mouse byte');
  assert.deepEqual(c.next(), { value: 0x08, aux: true });
  assert.deepEqual(c.next(), { value: 0x1e, aux: false }, 'the keyboard comes first once the buffer is free');
  assert.equal(c.kbdIrq.level, false);
  assert.deepEqual(c.next(), { value: 2, aux: true });
});

test('i8042: reset through 0xFE, the other pulse commands, the output port; A20', () => {
  const c = makeController();
  c.command(0xff);
  c.command(0xf1);
  assert.deepEqual(c.resets, [], 'pulses that leave line 0 alone');
  c.command(0xfe);
  assert.deepEqual(c.resets, ['i8042']);
  c.command(0xd0);
  const out = c.next().value;
  assert.equal(out & 0x03, 0x03, 'output port: reset line high, A20 on');
  c.command(0xd1, 0xcd); // A20 off, reset high
  assert.equal((c.dev as I8042).a20, false);
  c.command(0xd1, 0xcf);
  assert.equal((c.dev as I8042).a20, true);
  assert.deepEqual(c.resets, ['i8042']);
  c.command(0xd1, 0xce); // reset line low
  assert.deepEqual(c.resets, ['i8042', 'i8042']);
});

test('i8042: save and restore mid-stream: the same bytes, the same lines; bad snapshots refused', () => {
  const a = makeController();
  a.command(0x60, CTR_KBDINT | CTR_AUXINT | CTR_SYS | CTR_XLATE);
  a.aux(0xf3, 200, 0xf3, 100, 0xf3, 80, 0xf4);
  a.kbd(0xed, 0x04);
  a.sink.key(0x1e, true);
  a.sink.pointer(3, 0, 0);
  a.sink.key(0x1e, false);
  const snap = JSON.parse(JSON.stringify(a.dev.saveState()));
  const b = makeController();
  b.dev.restoreState(snap);
  assert.equal(b.kbdIrq.level, a.kbdIrq.level);
  assert.equal(b.auxIrq.level, a.auxIrq.level);
  assert.equal(b.sink.leds(), 4);
  assert.deepEqual(b.drain(), a.drain());
  assert.deepEqual(b.aux(0xf2), [
    [0xfa, true],
    [0x03, true],
  ]);
  const bad = JSON.parse(JSON.stringify(snap));
  const raw = Buffer.from(bad.data.state, 'base64');
  raw[51 - 4] = 200; // keyboard queue count beyond its size
  bad.data.state = raw.toString('base64');
  assert.throws(() => b.dev.restoreState(bad), DeviceStateError);
  assert.throws(() => b.dev.restoreState({ ...snap, kind: 'uart-16550a' }), DeviceStateError);
});

test('i8042: keys injected from another thread reach the guest, with IRQ 1', async () => {
  const c = makeController();
  c.command(0x60, CTR_KBDINT | CTR_SYS | CTR_XLATE);
  const irqCount = new Int32Array(new SharedArrayBuffer(4));
  const moduleUrl = new URL('../../src/devices/legacy/i8042.js', import.meta.url).href;
  const worker = new Worker(
    `const { workerData } = require('node:worker_threads');
     import(workerData.moduleUrl).then(({ i8042InputSinkFor }) => {
       const counter = new Int32Array(workerData.counter);
       const sink = i8042InputSinkFor(workerData.state, () => ({ set: (up) => { if (up) Atomics.add(counter, 0, 1); } }));
       for (const code of [0x23, 0x12, 0x26, 0x26, 0x18]) { sink.key(code, true); sink.key(code, false); }
     });`,
    { eval: true, workerData: { moduleUrl, state: c.state, counter: irqCount.buffer } },
  );
  await new Promise((resolve, reject) => worker.on('exit', resolve).on('error', reject));
  // The worker's first key found the output buffer empty and raised IRQ 1 on its own line.
  assert.equal(Atomics.load(irqCount, 0), 1);
  assert.deepEqual(c.bytes(), [0x23, 0xa3, 0x12, 0x92, 0x26, 0xa6, 0x26, 0xa6, 0x18, 0x98], 'h e l l o');
});

test('i8042: the DSDT describes PNP0303 (0x60, 0x64, IRQ 1) and PNP0F13 (IRQ 12); the FADT 8042 flag', () => {
  const desc = i8042Model.describe!(I8042.createState(), { pciInterrupts: [] });
  assert.deepEqual(desc.legacy, { i8042: true });
  const dsdt = Buffer.from(buildDsdt({ processorCount: 1, devices: desc.acpi }));
  assert.ok(dsdt.includes(Buffer.from([0x0c, 0x41, 0xd0, 0x03, 0x03])), 'PNP0303');
  assert.ok(dsdt.includes(Buffer.from([0x0c, 0x41, 0xd0, 0x0f, 0x13])), 'PNP0F13');
  assert.ok(dsdt.includes(Buffer.from([0x47, 0x01, 0x60, 0x00, 0x60, 0x00, 0x01, 0x01])), 'IO 0x60');
  assert.ok(dsdt.includes(Buffer.from([0x47, 0x01, 0x64, 0x00, 0x64, 0x00, 0x01, 0x01])), 'IO 0x64');
  assert.ok(dsdt.includes(Buffer.from([0x22, 0x02, 0x00])), 'IRQNoFlags {1}');
  assert.ok(dsdt.includes(Buffer.from([0x22, 0x00, 0x10])), 'IRQNoFlags {12}');
});
