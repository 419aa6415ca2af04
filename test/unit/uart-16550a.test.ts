// The 16550A UART model: registers, FIFO, interrupts and the IRQ line, driven through its port interface as a
// guest driver would, plus a two-thread test where a worker feeds input while this thread reads RBR.
// The same file is the worker's body (it branches on isMainThread).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { COM1, COM2, COM3, COM4, Uart16550 } from '../../src/devices/legacy/uart-16550a.js';
import type { IrqLine } from '../../src/base/irq-line.js';

const RBR = 0;
const THR = 0;
const DLL = 0;
const IER = 1;
const DLM = 1;
const IIR = 2;
const FCR = 2;
const LCR = 3;
const MCR = 4;
const LSR = 5;
const MSR = 6;
const SCR = 7;

interface Harness {
  uart: Uart16550;
  state: SharedArrayBuffer;
  out: number[];
  irq: boolean[];
  r(reg: number): number;
  w(reg: number, value: number): void;
}

function harness(state = Uart16550.createState()): Harness {
  const out: number[] = [];
  const irq: boolean[] = [];
  const uart = new Uart16550(state, {
    irq: { set: (level) => void irq.push(level) },
    output: (b) => void out.push(...b),
  });
  return { uart, state, out, irq, r: (reg) => uart.pioRead(reg, 1), w: (reg, value) => uart.pioWrite(reg, 1, value) };
}

const bytes = (...values: number[]): Uint8Array => Uint8Array.from(values);
const range = (n: number, from = 0): Uint8Array => Uint8Array.from({ length: n }, (_, i) => (from + i) & 0xff);

// ---- worker side of the two-thread test ----

interface WorkerJob {
  state: SharedArrayBuffer;
  irqLog: SharedArrayBuffer;
  total: number;
}

/** An IrqLine that appends every set() to a log in shared memory, so both threads' calls land in one order. */
function sharedIrqLog(buffer: SharedArrayBuffer): IrqLine {
  const log = new Int32Array(buffer);
  return {
    set(level) {
      const i = Atomics.add(log, 0, 1) + 1;
      if (i < log.length) Atomics.store(log, i, level ? 1 : 0);
    },
  };
}

const pattern = (i: number): number => (i * 7 + (i >> 8)) % 251;

function workerMain(job: WorkerJob): void {
  const uart = new Uart16550(job.state, { irq: sharedIrqLog(job.irqLog), output: () => undefined });
  const data = Uint8Array.from({ length: job.total }, (_, i) => pattern(i));
  let sent = 0;
  let partial = 0;
  let chunk = 1;
  while (sent < data.length) {
    const seen = Atomics.load(uart.rxSpace, 0);
    chunk = (chunk % 23) + 1; // vary the offered size: 1..23 bytes, more or less than the FIFO holds
    const offered = data.subarray(sent, Math.min(data.length, sent + chunk));
    const taken = uart.receive(offered);
    if (taken < 0 || taken > offered.length) throw new Error(`receive() took ${taken} of ${offered.length}`);
    if (taken < offered.length) partial++;
    sent += taken;
    if (taken === 0) Atomics.wait(uart.rxSpace, 0, seen, 1000);
  }
  parentPort?.postMessage({ sent, partial });
}

if (!isMainThread) workerMain(workerData as WorkerJob);
else defineTests();

// ---- tests ----

function defineTests(): void {
  test('COM port resources', () => {
    assert.deepEqual(COM1, { base: 0x3f8, irq: 4 });
    assert.deepEqual(COM2, { base: 0x2f8, irq: 3 });
    assert.deepEqual(COM3, { base: 0x3e8, irq: 4 });
    assert.deepEqual(COM4, { base: 0x2e8, irq: 3 });
  });

  test('reset values of every register, and reset() restores them with the line low', () => {
    const h = harness();
    const resetValues = (): number[] => [RBR, IER, IIR, LCR, MCR, LSR, MSR, SCR].map((reg) => h.r(reg));
    assert.deepEqual(resetValues(), [0x00, 0x00, 0x01, 0x00, 0x00, 0x60, 0xb0, 0x00]);
    h.w(LCR, 0x80);
    assert.equal(h.r(DLL), 0x0c);
    assert.equal(h.r(DLM), 0x00);
    h.w(LCR, 0x00);
    assert.deepEqual(h.irq, []);

    h.w(FCR, 0xc1);
    h.w(IER, 0x0f);
    h.w(MCR, 0x1f);
    h.w(SCR, 0x5a);
    h.w(LCR, 0x1b);
    h.uart.sendBreak();
    assert.deepEqual(h.irq, [true]);
    h.w(THR, 0x41);
    assert.deepEqual(h.irq, [true, false, true]);
    h.uart.reset();
    assert.deepEqual(h.irq, [true, false, true, false]);
    assert.deepEqual(resetValues(), [0x00, 0x00, 0x01, 0x00, 0x00, 0x60, 0xb0, 0x00]);
    assert.equal(h.uart.canReceive(), 1, 'FIFOs disabled after reset');
  });

  test('DLAB switches offsets 0 and 1 between data/IER and the divisor latch', () => {
    const h = harness();
    h.w(LCR, 0x83);
    h.w(DLL, 0x01);
    h.w(DLM, 0x02);
    assert.deepEqual(h.out, [], 'a DLL write is not transmitted');
    assert.deepEqual(h.irq, [], 'a DLM write does not touch IER');
    assert.equal(h.r(DLL), 0x01);
    assert.equal(h.r(DLM), 0x02);
    assert.equal(h.r(LCR), 0x83);
    h.w(LCR, 0x03);
    assert.equal(h.r(IER), 0x00);
    h.w(IER, 0xff);
    assert.equal(h.r(IER), 0x0f, 'only IER bits 0-3 exist');
    h.w(THR, 0x42);
    assert.deepEqual(h.out, [0x42]);
    h.uart.receive(bytes(0x99));
    h.w(LCR, 0x83);
    assert.equal(h.r(DLL), 0x01, 'DLAB reads DLL, not RBR');
    assert.equal(h.r(DLM), 0x02);
    h.w(LCR, 0x03);
    assert.equal(h.r(RBR), 0x99);
    assert.equal(h.r(IER), 0x0f);
  });

  test('THR bytes go to output at once; THRE and TEMT stay set; wide accesses use the low byte', () => {
    const h = harness();
    for (const c of 'hi\n') h.w(THR, c.charCodeAt(0));
    assert.equal(h.r(LSR), 0x60);
    h.uart.pioWrite(THR, 2, 0x1234);
    h.uart.pioWrite(SCR, 4, 0xdeadbeef);
    assert.deepEqual(h.out, [0x68, 0x69, 0x0a, 0x34]);
    assert.equal(h.uart.pioRead(SCR, 4), 0xef);
    assert.equal(h.uart.pioRead(LSR, 2), 0x60);
    h.w(SCR, 0x5a);
    assert.equal(h.r(SCR), 0x5a, 'scratch register is plain storage');
  });

  test('loopback: THR goes to the receive FIFO, not to output; host input waits; overrun sets OE', () => {
    const h = harness();
    h.w(FCR, 0x01);
    h.w(MCR, 0x10);
    assert.equal(h.uart.canReceive(), 0, 'the serial input is disconnected in loopback');
    assert.equal(h.uart.receive(bytes(1, 2, 3)), 0);
    h.w(THR, 0x55);
    assert.deepEqual(h.out, []);
    assert.equal(h.r(LSR), 0x61);
    assert.equal(h.r(RBR), 0x55);
    assert.equal(h.r(LSR), 0x60);

    for (let i = 0; i < 17; i++) h.w(THR, 0x30 + i);
    assert.equal(h.r(LSR), 0x63, 'the 17th byte overruns');
    assert.equal(h.r(LSR), 0x61, 'reading LSR cleared OE');
    const got = Array.from({ length: 16 }, () => h.r(RBR));
    assert.deepEqual(got, Array.from(range(16, 0x30)), 'FIFO kept the first 16, dropped the 17th');

    // Without FIFOs an overrun replaces the unread character (the datasheet's non-FIFO overrun).
    h.w(FCR, 0x00);
    h.w(THR, 0x61);
    h.w(THR, 0x62);
    assert.equal(h.r(LSR), 0x63);
    assert.equal(h.r(RBR), 0x62);
    assert.equal(h.r(LSR), 0x60);

    const before = Atomics.load(h.uart.rxSpace, 0);
    h.w(MCR, 0x00);
    assert.ok(Atomics.load(h.uart.rxSpace, 0) > before, 'leaving loopback signals input space');
    assert.equal(h.uart.receive(bytes(7)), 1);
    assert.equal(h.r(RBR), 7);
    assert.deepEqual(h.out, []);
  });

  test('receive FIFO: fills to 16, receive() returns partial counts, order kept; 1 byte without FIFOs', () => {
    const h = harness();
    assert.equal(h.uart.canReceive(), 1);
    assert.equal(h.uart.receive(bytes(1, 2, 3)), 1, 'FIFOs disabled: one holding register');
    assert.equal(h.uart.receive(bytes(4)), 0);
    assert.equal(h.r(RBR), 1);
    assert.equal(h.r(LSR), 0x60);
    assert.equal(h.r(RBR), 0, 'empty RBR reads 0');

    h.w(FCR, 0x07);
    assert.equal(h.uart.canReceive(), 16);
    assert.equal(h.uart.receive(range(20, 100)), 16);
    assert.equal(h.uart.canReceive(), 0);
    assert.equal(h.uart.receive(bytes(1)), 0);
    assert.equal(h.uart.receive(new Uint8Array(0)), 0);
    assert.deepEqual([h.r(RBR), h.r(RBR), h.r(RBR)], [100, 101, 102]);
    assert.equal(h.uart.canReceive(), 3);
    assert.equal(h.uart.receive(range(5, 116)), 3, 'FIFO wraps around its ring');
    const rest: number[] = [];
    while (h.r(LSR) & 0x01) rest.push(h.r(RBR));
    assert.deepEqual(rest, Array.from(range(16, 103)));

    h.uart.receive(range(5));
    h.w(FCR, 0x03);
    assert.equal(h.r(LSR), 0x60, 'FCR bit 1 clears the receive FIFO');
    h.uart.receive(range(5));
    h.w(FCR, 0x00);
    assert.equal(h.r(LSR), 0x60, 'disabling the FIFOs clears them');
    h.w(FCR, 0x02);
    assert.equal(h.uart.canReceive(), 1, 'other FCR bits need FCR0 set');
  });

  test('IIR reports FIFO mode in bits 6-7', () => {
    const h = harness();
    assert.equal(h.r(IIR), 0x01);
    h.w(FCR, 0x01);
    assert.equal(h.r(IIR), 0xc1);
    h.w(FCR, 0xc9);
    assert.equal(h.r(IIR), 0xc1);
    h.w(FCR, 0x00);
    assert.equal(h.r(IIR), 0x01);
  });

  test('trigger levels 1/4/8/14: data below the level is a character timeout (0x0C), at it data available (0x04)', () => {
    for (const [fcr, level] of [
      [0x01, 1],
      [0x41, 4],
      [0x81, 8],
      [0xc1, 14],
    ]) {
      const h = harness();
      h.w(FCR, fcr);
      h.w(IER, 0x01);
      assert.equal(h.r(IIR), 0xc1);
      if (level > 1) {
        h.uart.receive(range(level - 1));
        assert.equal(h.r(IIR), 0xcc, `level ${level}: ${level - 1} bytes`);
      }
      h.uart.receive(bytes(0xee));
      assert.equal(h.r(IIR), 0xc4, `level ${level}: ${level} bytes`);
      assert.equal(h.r(IIR), 0xc4, 'reading IIR does not acknowledge received data');
      h.r(RBR);
      assert.equal(h.r(IIR), level > 1 ? 0xcc : 0xc1, `level ${level}: one byte read`);
      for (let i = 1; i < level; i++) h.r(RBR);
      assert.equal(h.r(IIR), 0xc1, `level ${level}: drained`);
      assert.deepEqual(h.irq, [true, false], 'one rise (timeout or data), one fall when drained');
    }
    const h = harness(); // FIFOs off: one byte is "data available"
    h.w(IER, 0x01);
    h.uart.receive(bytes(1));
    assert.equal(h.r(IIR), 0x04);
  });

  test('IIR priorities: line status > received data > THR empty > modem status; each cleared by its own rule', () => {
    const h = harness();
    h.w(FCR, 0x01);
    h.w(MCR, 0x10); // loopback: modem status inputs 0xB0 -> 0x00 sets deltas
    h.w(IER, 0x08);
    assert.equal(h.r(IIR), 0xc0, 'modem status');
    h.w(IER, 0x0a);
    assert.equal(h.r(IIR), 0xc2, 'THR empty outranks modem status');
    assert.equal(h.r(IIR), 0xc0, 'reading IIR that reported THRE acknowledged it');
    for (let i = 0; i < 17; i++) h.w(THR, i);
    h.w(IER, 0x0b);
    assert.equal(h.r(IIR), 0xc4, 'data available outranks THR empty');
    h.w(IER, 0x0f);
    assert.equal(h.r(IIR), 0xc6, 'line status (overrun) outranks everything');
    assert.equal(h.r(IIR), 0xc6, 'reading IIR does not clear line status');
    assert.equal(h.r(LSR) & 0x02, 0x02);
    assert.equal(h.r(IIR), 0xc4, 'reading LSR cleared it');
    for (let i = 0; i < 16; i++) assert.equal(h.r(RBR), i);
    assert.equal(h.r(IIR), 0xc2, 'THRE still pending: reading IIR reporting another source did not clear it');
    assert.equal(h.r(IIR), 0xc0);
    assert.equal(h.r(MSR) & 0x0f, 0x0b);
    assert.equal(h.r(IIR), 0xc1, 'reading MSR cleared the deltas');
    assert.deepEqual(h.irq, [true, false]);
  });

  test('THRE interrupt: pending when IER bit 1 goes 0->1, after each THR write; cleared by IIR read or THR write', () => {
    const h = harness();
    h.w(IER, 0x02);
    assert.deepEqual(h.irq, [true], 'enabling THRI while THR is empty');
    h.w(IER, 0x02);
    assert.deepEqual(h.irq, [true], 'rewriting the same IER is no change');
    assert.equal(h.r(IIR), 0x02);
    assert.deepEqual(h.irq, [true, false]);
    assert.equal(h.r(IIR), 0x01);
    h.w(IER, 0x02);
    assert.equal(h.r(IIR), 0x01, 'IER bit 1 staying 1 does not re-arm');

    h.w(THR, 0x41);
    assert.deepEqual(h.irq, [true, false, true], 'THR emptied again after the write');
    h.w(THR, 0x42);
    assert.deepEqual(h.irq, [true, false, true, false, true], 'the write acknowledged it, the next empty re-raised');
    h.w(IER, 0x00);
    assert.deepEqual(h.irq, [true, false, true, false, true, false]);
    assert.equal(h.r(IIR), 0x01);
    h.w(IER, 0x02);
    assert.equal(h.r(IIR), 0x02, 'disable then enable re-arms');

    // With THRI disabled, writes do not make it pending later: enabling is what arms it.
    const g = harness();
    g.w(THR, 0x41);
    assert.deepEqual(g.irq, []);
    assert.equal(g.r(IIR), 0x01);
    assert.deepEqual(g.out, [0x41]);
  });

  test('LSR: reading it clears OE/PE/FE/BI and the FIFO error bit; a break arrives as 0x00 with BI', () => {
    const h = harness();
    h.w(FCR, 0x01);
    h.w(IER, 0x04);
    h.uart.receive(bytes(0x41));
    assert.equal(h.uart.sendBreak(), true);
    assert.equal(h.r(LSR), 0xe1, 'BI not shown until the break character reaches the FIFO top; bit 7 already set');
    assert.deepEqual(h.irq, []);
    assert.equal(h.r(RBR), 0x41);
    assert.equal(h.r(IIR), 0xc6, 'line status interrupt once BI shows');
    assert.deepEqual(h.irq, [true]);
    assert.equal(h.r(LSR), 0xf1, 'DR, BI, FIFO error');
    assert.deepEqual(h.irq, [true, false]);
    assert.equal(h.r(LSR), 0xe1, 'BI cleared by the read; bit 7 stays while the break character is in the FIFO');
    assert.equal(h.r(RBR), 0x00);
    assert.equal(h.r(LSR), 0xe0, 'bit 7 is cleared by the next LSR read once no error is left in the FIFO');
    assert.equal(h.r(LSR), 0x60);

    // Without FIFOs bit 7 stays 0; BI shows at once.
    const g = harness();
    assert.equal(g.uart.sendBreak(), true);
    assert.equal(g.uart.sendBreak(), false, 'no room');
    assert.equal(g.r(LSR), 0x71);
    assert.equal(g.r(LSR), 0x61);
    g.w(MCR, 0x10);
    g.r(RBR);
    assert.equal(g.uart.sendBreak(), false, 'loopback disconnects the line');
  });

  test('MSR: 0xB0 outside loopback; in loopback mirrors RTS/DTR/OUT1/OUT2 with delta bits cleared on read', () => {
    const h = harness();
    h.w(MCR, 0x0f);
    assert.equal(h.r(MSR), 0xb0, 'outside loopback MCR does not reach MSR');
    h.w(MCR, 0x10);
    assert.equal(h.r(MSR), 0x0b, 'CTS, DSR, DCD dropped: DCTS, DDSR, DDCD; RI did not fall');
    assert.equal(h.r(MSR), 0x00, 'deltas cleared by the read');
    h.w(MCR, 0x12);
    assert.equal(h.r(MSR), 0x11, 'RTS -> CTS');
    h.w(MCR, 0x13);
    assert.equal(h.r(MSR), 0x32, 'DTR -> DSR');
    h.w(MCR, 0x17);
    assert.equal(h.r(MSR), 0x70, 'OUT1 -> RI; a rising RI sets no delta');
    h.w(MCR, 0x1f);
    assert.equal(h.r(MSR), 0xf8, 'OUT2 -> DCD');
    h.w(MCR, 0x1b);
    assert.equal(h.r(MSR), 0xb4, 'falling RI: TERI');
    h.w(MCR, 0x1f);
    h.w(MCR, 0x10);
    assert.equal(h.r(MSR), 0x0f, 'deltas accumulate until read');
    assert.equal(h.r(MCR), 0x10);
    h.w(MCR, 0xff);
    assert.equal(h.r(MCR), 0x1f, 'only MCR bits 0-4 exist');

    const g = harness();
    g.w(IER, 0x08);
    g.w(MCR, 0x10);
    assert.deepEqual(g.irq, [true], 'modem status interrupt on delta');
    assert.equal(g.r(IIR), 0x00);
    g.r(MSR);
    assert.deepEqual(g.irq, [true, false]);
  });

  test('IRQ line: set() only on level changes, not gated by OUT2', () => {
    const h = harness();
    h.w(FCR, 0x01);
    h.w(IER, 0x01);
    assert.deepEqual(h.irq, []);
    h.uart.receive(bytes(1, 2));
    h.uart.receive(bytes(3));
    assert.deepEqual(h.irq, [true]);
    h.r(RBR);
    h.r(RBR);
    assert.deepEqual(h.irq, [true]);
    h.r(RBR);
    assert.deepEqual(h.irq, [true, false]);
    h.w(IER, 0x00);
    h.w(IER, 0x01);
    assert.deepEqual(h.irq, [true, false]);
    assert.equal(h.r(MCR) & 0x08, 0, 'OUT2 is clear, the line was still driven');
  });

  test('two Uart16550 objects over one state are the same device', () => {
    const a = harness();
    const b = harness(a.state);
    a.w(FCR, 0x01);
    a.w(IER, 0x01);
    assert.equal(b.uart.receive(bytes(9, 8)), 2);
    assert.deepEqual(b.irq, [true], 'the line is raised by the object that made the change');
    assert.equal(a.r(RBR), 9);
    assert.equal(a.r(RBR), 8);
    assert.deepEqual(a.irq, [false], 'and lowered by the one that cleared it');
    assert.equal(b.uart.canReceive(), 16);
    assert.throws(
      () => new Uart16550(new SharedArrayBuffer(8), { irq: { set: () => undefined }, output: () => undefined }),
      RangeError,
    );
  });

  test('rxSpace counts popped bytes and wakes a waiter', async () => {
    const h = harness();
    const start = Atomics.load(h.uart.rxSpace, 0);
    h.r(RBR);
    assert.equal(Atomics.load(h.uart.rxSpace, 0), start, 'reading an empty RBR pops nothing');
    h.w(FCR, 0x01); // enabling FIFOs clears them: may bump
    const base = Atomics.load(h.uart.rxSpace, 0);
    h.uart.receive(range(16));
    assert.equal(Atomics.load(h.uart.rxSpace, 0), base, 'receiving does not bump');
    for (let i = 1; i <= 3; i++) {
      h.r(RBR);
      assert.equal(Atomics.load(h.uart.rxSpace, 0), base + i);
    }
    h.w(LCR, 0x80);
    h.r(DLL);
    assert.equal(Atomics.load(h.uart.rxSpace, 0), base + 3, 'a DLL read pops nothing');
    h.w(LCR, 0x00);

    const seen = Atomics.load(h.uart.rxSpace, 0);
    const wait = Atomics.waitAsync(h.uart.rxSpace, 0, seen, 60_000);
    assert.equal(wait.async, true);
    setTimeout(() => h.r(RBR), 10);
    assert.equal(await wait.value, 'ok');
  });

  test('two threads: a worker pushes bytes with receive() while this thread reads RBR; nothing lost or repeated', async () => {
    const total = 20000;
    const state = Uart16550.createState();
    const irqLog = new SharedArrayBuffer(4 * (1 + 4 * total));
    const log = sharedIrqLog(irqLog);
    const uart = new Uart16550(state, { irq: log, output: () => undefined });
    uart.pioWrite(FCR, 1, 0x81); // FIFOs on, trigger 8
    uart.pioWrite(IER, 1, 0x01);

    const worker = new Worker(new URL(import.meta.url), { workerData: { state, irqLog, total } satisfies WorkerJob });
    const exited = new Promise<number>((resolve) => worker.once('exit', resolve));
    const reported = new Promise<{ sent: number; partial: number }>((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
    });
    await new Promise((resolve) => worker.once('online', resolve));

    const got = new Uint8Array(total);
    let n = 0;
    const deadline = Date.now() + 300_000; // a hang guard: the bytes, not the time, decide
    while (n < total && Date.now() < deadline) {
      if (uart.pioRead(LSR, 1) & 0x01) {
        got[n++] = uart.pioRead(RBR, 1);
      } else if ((n & 0xff) === 0) {
        // Sometimes yield the CPU briefly so the worker also fills the FIFO completely.
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1);
      }
    }
    if (n < total) await worker.terminate(); // do not hang on a worker that can no longer finish
    assert.equal(n, total, 'received every byte before the deadline');
    const { sent, partial } = await reported;
    assert.equal(sent, total);
    assert.ok(partial > 0, 'the worker found the FIFO full (offers of 17..23 bytes cannot fit)');
    assert.equal(await exited, 0);
    let mismatch = -1;
    for (let i = 0; i < total && mismatch < 0; i++) if (got[i] !== pattern(i)) mismatch = i;
    assert.equal(mismatch, -1, `byte ${mismatch} is ${got[mismatch]}, expected ${pattern(mismatch)}`);
    assert.equal(uart.pioRead(LSR, 1), 0x60, 'nothing left over, no overrun');

    // The line's changes, made by both threads under the lock, strictly alternate, starting with a rise.
    const entries = new Int32Array(irqLog);
    const count = entries[0];
    assert.ok(count >= 2 && count < entries.length, `${count} line changes`);
    for (let i = 1; i <= count; i++) assert.equal(entries[i], i % 2, `line change ${i}`);
    assert.equal(count % 2, 0, 'the line ends low');
  });
}
