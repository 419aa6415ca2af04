// The MC146818A RTC and CMOS RAM (src/devices/legacy/cmos-rtc.ts), driven through ports 0x70/0x71 the way
// SeaBIOS (src/hw/rtc.c, src/fw/paravirt.c) and Linux (drivers/rtc/rtc-mc146818-lib.c) use them.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PortIoBus } from '../../src/devices/bus.js';
import {
  cmosRtcModel,
  CmosRtc,
  REG_B_24H,
  REG_B_AIE,
  REG_B_DM,
  REG_B_PIE,
  REG_B_SET,
  REG_B_UIE,
  REG_C_AF,
  REG_C_IRQF,
  REG_C_PF,
  REG_C_UF,
  startCmosRtcTimers,
} from '../../src/devices/legacy/cmos-rtc.js';
import { GIB, MIB } from '../../src/base/units.js';
import { DeviceStateError, type DeviceAttachContext } from '../../src/devices/model.js';
import type { IrqLine } from '../../src/base/irq-line.js';
import { buildDsdt } from '../../src/arch/x86_64/acpi/dsdt.js';

class RecordingIrq implements IrqLine {
  level = false;
  edges = 0;
  private waiters: (() => void)[] = [];
  set(level: boolean): void {
    if (level && !this.level) {
      this.edges++;
      for (const w of this.waiters.splice(0)) w();
    }
    this.level = level;
  }
  /** Resolves at the next rising edge. */
  nextEdge(): Promise<void> {
    return new Promise((resolve) => this.waiters.push(resolve));
  }
}

function makeRtc(machine = { cpus: 1, memory: 64 * MIB }, clock?: () => number) {
  const state = CmosRtc.createState(machine);
  const irq = new RecordingIrq();
  const rtc = new CmosRtc(state, { irq, clock });
  const pio = new PortIoBus();
  pio.register(0x70, 4, rtc);
  const read = (index: number): number => {
    pio.write(0x70, 1, index);
    return pio.read(0x71, 1);
  };
  const write = (index: number, value: number): void => {
    pio.write(0x70, 1, index);
    pio.write(0x71, 1, value);
  };
  return { state, rtc, irq, pio, read, write };
}

const fromBcd = (v: number): number => (v >> 4) * 10 + (v & 0x0f);

test('cmos: memory bytes for 64 MiB, 3.5 GiB and 8 GiB machines, CPU count and the checksum', () => {
  const word = (read: (i: number) => number, at: number): number => read(at) | (read(at + 1) << 8);
  const cases = [
    // memory, extended KiB (0x17/0x30), 64 KiB units 16 MiB..hole (0x34), 64 KiB units above 4 GiB (0x5B-0x5D)
    { memory: 64 * MIB, cpus: 1, ext: 63 * 1024, above16m: 48 * 16, above4g: 0 },
    { memory: 3.5 * GIB, cpus: 4, ext: 0xffff, above16m: (3 * 1024 - 16) * 16, above4g: 0.5 * 16384 },
    { memory: 8 * GIB, cpus: 16, ext: 0xffff, above16m: (3 * 1024 - 16) * 16, above4g: 5 * 16384 },
  ];
  for (const c of cases) {
    const { read } = makeRtc({ cpus: c.cpus, memory: c.memory });
    const what = `${c.memory / MIB} MiB`;
    assert.equal(word(read, 0x15), 640, `${what}: base memory`);
    assert.equal(word(read, 0x17), c.ext, `${what}: extended memory`);
    assert.equal(word(read, 0x30), c.ext, `${what}: extended memory (POST copy)`);
    assert.equal(word(read, 0x34), c.above16m, `${what}: memory above 16 MiB`);
    assert.equal(read(0x5b) | (read(0x5c) << 8) | (read(0x5d) << 16), c.above4g, `${what}: memory above 4 GiB`);
    assert.equal(read(0x5f), c.cpus - 1, `${what}: CPU count − 1`);
    assert.equal(read(0x10), 0, 'no floppy drives');
    assert.equal(read(0x14), 0x06, 'equipment: FPU and PS/2 mouse, no floppy, EGA/VGA display');
    let sum = 0;
    for (let i = 0x10; i <= 0x2d; i++) sum += read(i);
    assert.equal((read(0x2e) << 8) | read(0x2f), sum & 0xffff, `${what}: checksum over 0x10-0x2D`);
    // SeaBIOS's qemu_preinit arithmetic gives back the RAM below 4 GiB and above it.
    const rs = read(0x34) * 0x1_0000 + read(0x35) * 0x100_0000 + 16 * MIB; // SeaBIOS: u32 shifts
    assert.equal(rs, Math.min(c.memory, 3 * GIB), `${what}: SeaBIOS RamSize`);
    assert.equal(c.above4g * 65536, Math.max(0, c.memory - 3 * GIB), `${what}: SeaBIOS RamSizeOver4G`);
  }
});

test('cmos: the registers after power-on; RAM bytes and the upper bank keep what is written; D reads VRT', () => {
  const { read, write, pio } = makeRtc();
  assert.equal(read(0x0a), 0x26);
  assert.equal(read(0x0b), REG_B_24H);
  assert.equal(read(0x0d), 0x80);
  write(0x0d, 0);
  assert.equal(read(0x0d), 0x80, 'D is read-only');
  write(0x40, 0x5a);
  assert.equal(read(0x40), 0x5a);
  pio.write(0x70, 1, 0x80 | 0x40); // NMI masked, same register
  assert.equal(pio.read(0x71, 1), 0x5a, 'bit 7 of the index masks NMI and does not select a register');
  pio.write(0x72, 1, 0x10);
  pio.write(0x73, 1, 0xa5);
  assert.equal(pio.read(0x73, 1), 0xa5, 'upper bank at 0x72/0x73');
  assert.equal(read(0x10), 0, 'the upper bank is separate from the lower one');
});

test('cmos: BCD and binary, 24 and 12 hours: the time matches the host clock', () => {
  const { read, write } = makeRtc();
  const readTime = (): { t: number; hour12?: number; pm?: boolean } => {
    const b = read(0x0b);
    const dec = b & REG_B_DM ? (v: number) => v : fromBcd;
    const hourByte = read(0x04);
    let hour = dec(hourByte & 0x7f);
    if (!(b & REG_B_24H)) hour = (hour % 12) + (hourByte & 0x80 ? 12 : 0);
    const year = dec(read(0x32)) * 100 + dec(read(0x09));
    const t = Date.UTC(year, dec(read(0x08)) - 1, dec(read(0x07)), hour, dec(read(0x02)), dec(read(0x00)));
    const wday = dec(read(0x06));
    assert.equal(wday, new Date(t).getUTCDay() + 1, 'day of week, Sunday = 1');
    return { t };
  };
  for (const b of [REG_B_24H, REG_B_24H | REG_B_DM, 0, REG_B_DM]) {
    write(0x0b, b);
    const { t } = readTime();
    assert.ok(Math.abs(t - Date.now()) < 3000, `mode B=0x${b.toString(16)}: ${new Date(t).toISOString()} is now`);
  }
  // The encodings themselves, at a known time: 12-hour BCD 1 PM is 0x81, binary 0x81 too; 11 PM BCD is 0x91.
  const fixed = makeRtc(undefined, () => Date.UTC(2031, 11, 31, 23, 59, 58, 500));
  fixed.write(0x0b, 0); // BCD, 12 hours
  assert.equal(fixed.read(0x04), 0x91, '11 PM in 12-hour BCD');
  assert.equal(fixed.read(0x02), 0x59);
  assert.equal(fixed.read(0x09), 0x31);
  assert.equal(fixed.read(0x32), 0x20, 'century byte');
  fixed.write(0x0b, REG_B_DM | REG_B_24H);
  assert.equal(fixed.read(0x04), 23, '23 in 24-hour binary');
  assert.equal(fixed.read(0x08), 12);
});

test("cmos: base 'localtime' starts the clock at the host's local time (Windows)", () => {
  const saved = process.env.TZ;
  process.env.TZ = 'Asia/Kolkata'; // UTC+5:30 all year
  try {
    const state = CmosRtc.createState({ cpus: 1, memory: 64 * MIB }, { base: 'localtime' });
    const rtc = new CmosRtc(state, { irq: { set: () => undefined } });
    const skew = rtc.guestTime() - Date.now() - 5.5 * 3600_000;
    assert.ok(Math.abs(skew) < 2000, `local time is UTC+5:30 (skew ${skew} ms)`);
    const utc = new CmosRtc(CmosRtc.createState({ cpus: 1, memory: 64 * MIB }), { irq: { set: () => undefined } });
    assert.ok(Math.abs(utc.guestTime() - Date.now()) < 2000, 'the default is UTC');
  } finally {
    if (saved === undefined) delete process.env.TZ;
    else process.env.TZ = saved;
  }
});

test('cmos: SET freezes the time, writes while SET move the clock, and it runs on from there', () => {
  let now = Date.UTC(2024, 1, 28, 10, 0, 0, 250);
  const { read, write, rtc } = makeRtc(undefined, () => now);
  write(0x0b, REG_B_24H | REG_B_SET);
  now += 5000;
  assert.equal(read(0x00), 0x00, 'frozen while SET');
  // Set 2024-02-29 23:59:59 (BCD), then release SET.
  write(0x09, 0x24);
  write(0x08, 0x02);
  write(0x07, 0x29);
  write(0x04, 0x23);
  write(0x02, 0x59);
  write(0x00, 0x59);
  now += 3000;
  assert.equal(read(0x00), 0x59, 'still frozen');
  write(0x0b, REG_B_24H);
  assert.equal(rtc.guestTime(), Date.UTC(2024, 1, 29, 23, 59, 59), 'the clock starts at the written time');
  now += 1000;
  assert.deepEqual(
    [read(0x08), read(0x07), read(0x04), read(0x02), read(0x00)],
    [0x03, 0x01, 0x00, 0x00, 0x00],
    'one second later it is 1 March (leap year)',
  );
  // A write while running moves the clock at once and keeps the fraction of the second.
  now += 400;
  write(0x04, 0x12);
  assert.equal(rtc.guestTime(), Date.UTC(2024, 2, 1, 12, 0, 0, 400));
  assert.equal(read(0x04), 0x12);
});

test('cmos: UIP shows in the 244 µs before an update', () => {
  let now = Date.UTC(2025, 0, 1, 0, 0, 0, 500);
  const { read } = makeRtc(undefined, () => now);
  assert.equal(read(0x0a) & 0x80, 0);
  now = Date.UTC(2025, 0, 1, 0, 0, 0, 999) + 0.9;
  assert.equal(read(0x0a) & 0x80, 0x80, 'update in progress');
  assert.equal(read(0x0a) & 0x7f, 0x26, 'the rest of A reads back');
  now = Date.UTC(2025, 0, 1, 0, 0, 1) + 0.1;
  assert.equal(read(0x0a) & 0x80, 0);
});

test('cmos: register C: update-ended, alarm and periodic flags; reading C clears them and lowers IRQ 8', () => {
  let now = Date.UTC(2025, 5, 1, 8, 30, 10, 100);
  const { read, write, irq } = makeRtc(undefined, () => now);
  read(0x0c);
  write(0x01, 0x15); // alarm at 08:30:15 (BCD)
  write(0x03, 0x30);
  write(0x05, 0x08);
  write(0x0b, REG_B_24H | REG_B_UIE);
  now += 1000;
  // Nobody polled: the timer thread would; here the next C read or poll evaluates.
  assert.equal(irq.level, false, 'lazy: nothing evaluated yet');
  const c1 = read(0x0c);
  assert.equal(c1 & (REG_C_UF | REG_C_IRQF), REG_C_UF | REG_C_IRQF, 'update-ended with UIE: IRQF');
  assert.equal(c1 & REG_C_AF, 0, 'the alarm is still 4 s away');
  assert.equal(read(0x0c), 0, 'reading C cleared it');
  write(0x0b, REG_B_24H);
  now += 4000; // 08:30:15.100
  write(0x0b, REG_B_24H | REG_B_AIE);
  assert.equal(irq.level, true, 'enabling AIE with AF pending raises IRQ 8 at once');
  const c2 = read(0x0c);
  assert.equal(c2, REG_C_IRQF | REG_C_AF | REG_C_UF | REG_C_PF, 'AF, UF, PF; IRQF from AF');
  assert.equal(irq.level, false, 'reading C lowered IRQ 8');
  // Don't-care alarm bytes (0xC0-0xFF) match every value: alarm every second.
  write(0x01, 0xff);
  write(0x03, 0xff);
  write(0x05, 0xff);
  now += 1000;
  assert.ok(read(0x0c) & REG_C_AF, 'alarm with all bytes "don\'t care" fires each second');
  // Periodic flag without PIE: set, but no interrupt.
  write(0x0b, REG_B_24H);
  read(0x0c);
  now += 2;
  assert.equal(read(0x0c), REG_C_PF, 'PF set every period, IRQF only with PIE');
  assert.equal(irq.level, false);
  write(0x0b, REG_B_24H | REG_B_PIE);
  now += 2;
  assert.equal(irq.level, false, 'still lazy');
  assert.equal(read(0x0c), REG_C_IRQF | REG_C_PF);
});

test('cmos: the periodic interrupt fires on IRQ 8 from the timer thread until C is read each time', async () => {
  const { read, write, irq, rtc } = makeRtc();
  const timers = startCmosRtcTimers(rtc);
  try {
    write(0x0a, 0x2f); // 2 Hz: RS = 15 → 500 ms
    read(0x0c);
    write(0x0b, REG_B_24H | REG_B_PIE);
    for (let i = 0; i < 3; i++) {
      await irq.nextEdge(); // the event, not elapsed time
      assert.equal(read(0x0c) & (REG_C_IRQF | REG_C_PF), REG_C_IRQF | REG_C_PF, `tick ${i}`);
      assert.equal(irq.level, false);
    }
    assert.equal(irq.edges, 3);
    // SeaBIOS's rate: 1024 Hz. The ticks keep coming (merged when the host timer is coarser).
    write(0x0a, 0x26);
    await irq.nextEdge();
    read(0x0c);
    await irq.nextEdge();
    assert.ok(read(0x0c) & REG_C_PF);
  } finally {
    timers.stop();
  }
});

test('cmos: the update-ended interrupt arrives from the timer thread', async () => {
  const { read, write, irq, rtc } = makeRtc();
  const timers = startCmosRtcTimers(rtc);
  try {
    read(0x0c);
    const edge = irq.nextEdge();
    write(0x0b, REG_B_24H | REG_B_UIE);
    await edge;
    assert.ok(read(0x0c) & REG_C_UF);
  } finally {
    timers.stop();
  }
});

test('cmos: save and restore keep CMOS RAM, registers and the clock offset; bad snapshots are refused', () => {
  let now = Date.UTC(2025, 0, 1, 0, 0, 0);
  const a = makeRtc({ cpus: 2, memory: 128 * MIB }, () => now);
  a.write(0x40, 0x77);
  a.write(0x0b, REG_B_24H | REG_B_SET);
  a.write(0x09, 0x30); // year 2030
  a.write(0x0b, REG_B_24H | REG_B_UIE);
  now += 1000;
  a.rtc.poll();
  assert.equal(a.irq.level, true);
  const snap = JSON.parse(JSON.stringify(a.rtc.saveState()));
  const b = makeRtc(undefined, () => now);
  b.rtc.restoreState(snap);
  assert.equal(b.irq.level, true, 'IRQ 8 driven to the saved level');
  assert.equal(b.read(0x40), 0x77);
  assert.equal(b.read(0x5f), 1, 'the CMOS RAM of the saved machine');
  assert.equal(b.read(0x09), 0x30, 'the clock offset');
  assert.ok(b.read(0x0c) & REG_C_UF);
  assert.throws(() => b.rtc.restoreState({ ...snap, version: 9 }), DeviceStateError);
  assert.throws(() => b.rtc.restoreState({ ...snap, data: { ...snap.data, offsetMs: 'x' } }), DeviceStateError);
  assert.throws(() => b.rtc.restoreState({ ...snap, data: { ...snap.data, registers: 'AAAA' } }), DeviceStateError);
});

test('cmos: the model registers 0x70-0x73, describes PNP0B00 with IRQ 8 and asks for the FADT RTC flag', () => {
  const state = cmosRtcModel.create({ kind: 'cmos-rtc' }, {
    machine: { cpus: 3, memory: 256 * MIB, boot: 'firmware' },
  } as never);
  const pio = new PortIoBus();
  const lines: number[] = [];
  cmosRtcModel.attach(state, {
    pio,
    irqLine: (gsi: number) => {
      lines.push(gsi);
      return { set: () => undefined };
    },
  } as unknown as DeviceAttachContext);
  assert.deepEqual(lines, [8]);
  pio.write(0x70, 1, 0x5f);
  assert.equal(pio.read(0x71, 1), 2);
  const desc = cmosRtcModel.describe!(state, { pciInterrupts: [] });
  assert.deepEqual(desc.legacy, { rtc: true });
  const dsdt = Buffer.from(buildDsdt({ processorCount: 1, devices: desc.acpi }));
  assert.ok(dsdt.includes(Buffer.from('RTC_')));
  // EISA ID PNP0B00 compressed: 0x41D00B00 → bytes 41 D0 0B 00.
  assert.ok(dsdt.includes(Buffer.from([0x0c, 0x41, 0xd0, 0x0b, 0x00])), 'PNP0B00');
  assert.ok(dsdt.includes(Buffer.from([0x47, 0x01, 0x70, 0x00, 0x70, 0x00, 0x01, 0x02])), 'IO 0x70, 2 ports');
  assert.ok(dsdt.includes(Buffer.from([0x22, 0x00, 0x01])), 'IRQNoFlags {8}');
});
