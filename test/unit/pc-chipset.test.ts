// The PC chipset firmware recognises (i440FX host bridge, PIIX3 ISA bridge, PIIX4 power management), driven the
// way SeaBIOS's pciinit.c and the OS drive it, through ports 0xCF8/0xCFC and the chipset's I/O ports, without KVM.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { PortIoBus, MmioBus } from '../../src/devices/bus.js';
import { DeviceStateError, type DeviceSnapshot } from '../../src/devices/model.js';
import { PciBus } from '../../src/devices/pci/bus.js';
import { pciRootModel } from '../../src/devices/pci/root.js';
import { PIRQ_ROUTER_BYTES, PirqRouter, pciIntxLine, pirqOf } from '../../src/devices/pc/pirq-router.js';
import { findPiix3State } from '../../src/devices/pc/piix3.js';
import {
  ACPI_DISABLE,
  ACPI_ENABLE,
  createPmState,
  Piix4PowerManagement,
  PM_TIMER_HZ,
  PWRBTN_STS,
  SCI_EN,
  TMROF_STS,
} from '../../src/devices/pc/piix4-pm.js';
import { chipset, configRead, configWrite, createContext, IrqRecorder } from '../support/pc-chipset.js';

const PM = 0x600; // the PM base SeaBIOS programs when the VMM supplies the ACPI tables (the model's default)
const PM1_STS = PM;
const PM1_EN = PM + 2;
const PM1_CNT = PM + 4;
const PM_TMR = PM + 8;
const GPE0_STS = PM + 0x0c;
const GPE0_EN = PM + 0x0e;

/** What SeaBIOS's piix4_pm_config_setup writes, in its order and sizes. */
function seabiosPmSetup(pio: PortIoBus, base = PM): void {
  configWrite(pio, 1, 3, 0x3c, 1, 9);
  configWrite(pio, 1, 3, 0x40, 4, base | 1);
  configWrite(pio, 1, 3, 0x80, 1, 0x01);
  configWrite(pio, 1, 3, 0x90, 4, (base + 0x100) | 1);
  configWrite(pio, 1, 3, 0xd2, 1, 0x09);
}

// ---- i440FX ----

test('i440FX: 8086:1237 rev 02 class 06.00.00 at 00:00.0, as SeaBIOS and OVMF identify the PC', () => {
  const { pio } = chipset();
  assert.equal(configRead(pio, 0, 0, 0x00, 4), 0x1237_8086);
  assert.equal(configRead(pio, 0, 0, 0x08, 4), 0x0600_0002, 'class 06.00.00, revision 02');
  assert.equal(configRead(pio, 0, 0, 0x0e, 1), 0x00, 'single-function header');
  assert.equal(configRead(pio, 0, 0, 0x02, 2), 0x1237, 'word read at 0xCFE');
  assert.equal(configRead(pio, 0, 0, 0x72, 1), 0x02, 'SMRAM: C_BASE_SEG 010 (0xA0000), closed');
  assert.equal(configRead(pio, 0, 0, 0x57, 1), 0x01, 'DRAMC reset value');
});

test('i440FX: PAM registers as SeaBIOS programs them (dword read-modify-write at 0x58/0x5C) are stored and read back', () => {
  const { pio } = chipset();
  const low = configRead(pio, 0, 0, 0x58, 4);
  const high = configRead(pio, 0, 0, 0x5c, 4);
  assert.equal(low, 0x0000_0010, 'DRAMT 0x10 at 0x58, PAM0-2 cleared');
  assert.equal(high, 0);
  // make_bios_writable: PAM0 = 0x30, PAM1-6 = 0x33, the other bytes of the dwords kept
  configWrite(pio, 0, 0, 0x58, 4, (low & 0xff) | (0x30 << 8) | (0x33 << 16) | (0x33 << 24));
  configWrite(pio, 0, 0, 0x5c, 4, 0x3333_3333);
  assert.equal(configRead(pio, 0, 0, 0x59, 1), 0x30);
  for (let pam = 0x5a; pam <= 0x5f; pam++)
    assert.equal(configRead(pio, 0, 0, pam, 1), 0x33, `PAM at 0x${pam.toString(16)}`);
  assert.equal(configRead(pio, 0, 0, 0x60, 4), 0x0202_0202, 'DRB0-3 after PAM6 untouched');
  // make_bios_readonly: 0x11; reserved bits 3:2 and 7:6 stay 0
  configWrite(pio, 0, 0, 0x5a, 1, 0xff);
  assert.equal(configRead(pio, 0, 0, 0x5a, 1), 0x33, 'PAM reserved bits read 0');
  configWrite(pio, 0, 0, 0x59, 1, 0x11);
  assert.equal(configRead(pio, 0, 0, 0x59, 1), 0x11);
  configWrite(pio, 0, 0, 0x00, 4, 0);
  assert.equal(configRead(pio, 0, 0, 0x00, 4), 0x1237_8086, 'IDs are read-only');
});

test('i440FX: SMRAM 0x72 stores G_SMRAME/D_OPEN/D_CLS; D_LCK stays set and keeps D_OPEN clear', () => {
  const { pio } = chipset();
  configWrite(pio, 0, 0, 0x72, 1, 0x4a); // D_OPEN | G_SMRAME | (C_BASE_SEG written as 010)
  assert.equal(configRead(pio, 0, 0, 0x72, 1), 0x4a);
  configWrite(pio, 0, 0, 0x72, 1, 0x07);
  assert.equal(configRead(pio, 0, 0, 0x72, 1), 0x02, 'C_BASE_SEG is hardwired 010');
  configWrite(pio, 0, 0, 0x72, 1, 0x1a); // D_LCK | G_SMRAME
  configWrite(pio, 0, 0, 0x72, 1, 0x4a); // try to open and unlock again
  assert.equal(configRead(pio, 0, 0, 0x72, 1), 0x1a, 'locked: D_OPEN cannot be set, D_LCK cannot be cleared');
});

test("pci-root: chipset 'generic' is unchanged (1b36:0008, 0xCF8-0xCFF one device); 'i440fx' frees 0xCF9, keeps ECAM", () => {
  const pio = new PortIoBus();
  const mmio = new MmioBus();
  const pci = new PciBus();
  const state = pciRootModel.create({ kind: 'pci-root' }, createContext);
  pciRootModel.attach(state, { pio, mmio, pci, irqLine: () => ({ set: () => undefined }) } as never);
  assert.equal(configRead(pio, 0, 0, 0, 4), 0x0008_1b36);
  assert.equal(pio.deviceAt(0xcf9)?.name, 'pci-config-io');
  const pc = chipset();
  assert.equal(pc.pio.deviceAt(0xcf9)?.name, 'piix3-reset-control');
  assert.equal(pc.pio.deviceAt(0xcf8)?.name, 'pci-config-io');
  assert.equal(pc.pio.deviceAt(0xcff)?.name, 'pci-config-io');
  const data = new Uint8Array(4);
  pc.mmio.read(0xe000_0000 + (1 << 15) + (3 << 12), data); // ECAM 00:01.3 vendor/device
  assert.deepEqual([...data], [0x86, 0x80, 0x13, 0x71]);
  pc.pio.write(0xcf8, 4, 0x8000_0000);
  assert.equal(pc.pio.read(0xcf8, 4), 0x8000_0000, 'CONFIG_ADDRESS reads back');
});

// ---- PIIX3 ----

test('PIIX3: 8086:7000 class 06.01.00 at 00:01.0, multi-function; PIRQ routes reset to 0x80; reserved bits read 0', () => {
  const { pio } = chipset();
  assert.equal(configRead(pio, 1, 0, 0x00, 4), 0x7000_8086);
  assert.equal(configRead(pio, 1, 0, 0x0a, 2), 0x0601);
  assert.equal(configRead(pio, 1, 0, 0x0e, 1), 0x80, 'multi-function: firmware looks at 00:01.1-7');
  assert.equal(configRead(pio, 1, 0, 0x04, 2), 0x0007);
  assert.equal(configRead(pio, 1, 0, 0x60, 4), 0x8080_8080, 'every PIRQ disabled at reset');
  assert.equal(configRead(pio, 1, 0, 0x4c, 1), 0x4d);
  assert.equal(configRead(pio, 1, 0, 0x69, 1), 0x02);
  assert.equal(configRead(pio, 1, 1, 0x00, 2), 0xffff, '00:01.1 (IDE) is absent');
  assert.equal(configRead(pio, 1, 3, 0x00, 2), 0x8086, '00:01.3 (PM) is present');
  // SeaBIOS piix_isa_bridge_setup: one byte per PIRQ (10, 10, 11, 11)
  [10, 10, 11, 11].forEach((irq, i) => configWrite(pio, 1, 0, 0x60 + i, 1, irq));
  assert.equal(configRead(pio, 1, 0, 0x60, 4), 0x0b0b_0a0a);
  configWrite(pio, 1, 0, 0x61, 1, 0xff);
  assert.equal(configRead(pio, 1, 0, 0x61, 1), 0x8f, 'bits 6:4 are reserved');
});

test('PIRQ swizzle: (slot − 1 + pin − 1) mod 4, as QEMU pci_slot_get_pirq and SeaBIOS piix_pci_slot_get_irq', () => {
  assert.equal(pirqOf(1, 1), 0);
  assert.equal(pirqOf(2, 1), 1);
  assert.equal(pirqOf(3, 1), 2);
  assert.equal(pirqOf(4, 1), 3);
  assert.equal(pirqOf(5, 1), 0);
  assert.equal(pirqOf(3, 2), 3);
  assert.equal(pirqOf(3, 4), 1);
});

test('PIRQ routing: route, assert, deassert, reroute while asserted, share, disable, reserved IRQs', () => {
  const pc = chipset();
  const { pio, irqs } = pc;
  const router = new PirqRouter(pc.states.piix3, irqs.line);
  const slot3a = router.intxLine(3, 1); // PIRQC
  const slot2b = router.intxLine(2, 2); // PIRQC too
  const slot4a = router.intxLine(4, 1); // PIRQD

  slot3a.set(true);
  assert.equal(irqs.changes.length, 0, 'PIRQC is not routed yet: no ISA IRQ moves');
  configWrite(pio, 1, 0, 0x62, 1, 11);
  assert.equal(irqs.level(11), true, 'routing an asserted PIRQ raises its new IRQ');
  slot3a.set(false);
  assert.equal(irqs.level(11), false);
  slot3a.set(true);
  assert.equal(irqs.level(11), true);

  // reroute while asserted: the level moves, lowered on the old IRQ before it rises on the new one
  irqs.changes.length = 0;
  configWrite(pio, 1, 0, 0x62, 1, 10);
  assert.deepEqual(irqs.changes, [
    [11, false],
    [10, true],
  ]);

  // two sources on one PIRQ, and two PIRQs on one IRQ: wired OR
  slot2b.set(true);
  slot3a.set(false);
  assert.equal(irqs.level(10), true, 'slot 2 INTB# still holds PIRQC');
  configWrite(pio, 1, 0, 0x63, 1, 10);
  slot4a.set(true);
  slot2b.set(false);
  assert.equal(irqs.level(10), true, 'PIRQD holds IRQ 10');
  irqs.changes.length = 0;
  slot4a.set(true);
  assert.deepEqual(irqs.changes, [], 'setting a line to its level again changes nothing');
  slot4a.set(false);
  assert.equal(irqs.level(10), false);

  // disable: IRQEN# set drops the IRQ; enabling again brings it back
  slot4a.set(true);
  configWrite(pio, 1, 0, 0x63, 1, 0x8a);
  assert.equal(irqs.level(10), false);
  configWrite(pio, 1, 0, 0x63, 1, 0x0a);
  assert.equal(irqs.level(10), true);
  // reserved IRQs (0-2, 8, 13) drive nothing
  for (const reserved of [0, 2, 8, 13]) {
    configWrite(pio, 1, 0, 0x63, 1, reserved);
    assert.equal(irqs.level(reserved), false, `IRQ ${reserved}`);
    assert.equal(irqs.level(10), false);
  }
  // a dword write over all four routes (as some firmware does) moves it too
  configWrite(pio, 1, 0, 0x60, 4, 0x05_80_80_80);
  assert.equal(irqs.level(5), true, 'PIRQD → IRQ 5');
});

test('PIRQ routing: views on two threads share one state (pciIntxLine on one, config writes on the other)', () => {
  const a = chipset();
  const b = chipset({ states: a.states });
  const line = pciIntxLine(a.states.piix3, 5, 1, a.irqs.line); // PIRQA
  line.set(true);
  configWrite(b.pio, 1, 0, 0x60, 1, 11);
  assert.equal(b.irqs.level(11), true, 'the thread that rerouted drives the line');
  line.set(false);
  assert.equal(a.irqs.level(11), false, 'and the other thread lowers it');
  assert.throws(() => new PirqRouter({ config: a.states.piix3.config, router: new SharedArrayBuffer(8) }, a.irqs.line));
  assert.ok(PIRQ_ROUTER_BYTES > 8);
  assert.throws(() => pciIntxLine(a.states.piix3, 32, 1, a.irqs.line), RangeError);
  assert.throws(() => pciIntxLine(a.states.piix3, 1, 0, a.irqs.line), RangeError);
});

test('findPiix3State finds the router state among created devices, pciIntxLine routes through it', () => {
  const pc = chipset();
  const devices = [
    { kind: 'pci-root', state: pc.states.root },
    { kind: 'piix3-isa', state: pc.states.piix3 },
  ];
  const state = findPiix3State(devices);
  assert.equal(state, pc.states.piix3);
  assert.equal(findPiix3State(devices.slice(0, 1)), undefined);
  configWrite(pc.pio, 1, 0, 0x61, 1, 5);
  pciIntxLine(state!, 3, 4, pc.irqs.line).set(true); // (3 − 1 + 4 − 1) mod 4 = 1: PIRQB
  assert.equal(pc.irqs.level(5), true);
});

test('PIIX3 reset control 0xCF9: SRST alone is stored, RCPU resets the machine (0x06: the FADT reset value)', () => {
  const { pio, resets } = chipset();
  pio.write(0xcf9, 1, 0x02);
  assert.deepEqual(resets, []);
  assert.equal(pio.read(0xcf9, 1), 0x02, 'SRST reads back; RCPU does not');
  pio.write(0xcf9, 1, 0x06);
  assert.deepEqual(resets, ['0xCF9']);
});

test('PIIX3 save/restore: routes and asserted sources come back, and the restored router drives the line', () => {
  const a = chipset();
  const router = new PirqRouter(a.states.piix3, a.irqs.line);
  configWrite(a.pio, 1, 0, 0x61, 1, 11);
  router.intxLine(2, 1).set(true); // PIRQB → 11
  a.pio.write(0xcf9, 1, 0x02);
  const snapshot = JSON.parse(JSON.stringify(a.piix3.saveState())) as DeviceSnapshot;
  const b = chipset();
  b.piix3.restoreState(snapshot);
  assert.equal(configRead(b.pio, 1, 0, 0x60, 4), 0x8080_0b80);
  assert.equal(b.irqs.level(11), true, 'the restored asserted source is driven');
  assert.equal(b.pio.read(0xcf9, 1), 0x02);
  new PirqRouter(b.states.piix3, b.irqs.line).intxLine(2, 1).set(false);
  assert.equal(b.irqs.level(11), false);
  const c = chipset();
  for (const bad of [
    { ...snapshot, kind: 'piix4-pm' },
    { ...snapshot, version: 2 },
    { ...snapshot, data: { ...snapshot.data, sources: [1] } },
    { ...snapshot, data: { ...snapshot.data, rcr: 'x' } },
    { ...snapshot, data: { ...snapshot.data, config: Buffer.alloc(4096, 0xaa).toString('base64') } },
  ])
    assert.throws(() => c.piix3.restoreState(bad), DeviceStateError);
  assert.equal(configRead(c.pio, 1, 0, 0x60, 4), 0x8080_8080, 'refused snapshots change nothing');
});

test('PIIX3 restore over a live state (a platform reset loading the power-on snapshot) lowers what it drove', () => {
  const pc = chipset();
  const powerOn = JSON.parse(JSON.stringify(pc.piix3.saveState())) as DeviceSnapshot;
  configWrite(pc.pio, 1, 0, 0x60, 1, 10);
  new PirqRouter(pc.states.piix3, pc.irqs.line).intxLine(1, 1).set(true);
  assert.equal(pc.irqs.level(10), true);
  pc.piix3.restoreState(powerOn);
  assert.equal(pc.irqs.level(10), false);
  assert.equal(configRead(pc.pio, 1, 0, 0x60, 4), 0x8080_8080);
});

// ---- PIIX4 PM ----

test('PIIX4 PM: 8086:7113 class 06.80 at 00:01.3; 0x5B reads 0x02 (no SMM setup); SeaBIOS config setup reads back', () => {
  const { pio } = chipset();
  assert.equal(configRead(pio, 1, 3, 0x00, 4), 0x7113_8086);
  assert.equal(configRead(pio, 1, 3, 0x08, 4), 0x0680_0003);
  assert.equal(configRead(pio, 1, 3, 0x0e, 1), 0x00);
  assert.equal(configRead(pio, 1, 3, 0x5b, 1), 0x02, 'DEVACTB APMC_EN: SeaBIOS smm.c skips its SMI handshake');
  configWrite(pio, 1, 3, 0x58, 4, 0);
  assert.equal(configRead(pio, 1, 3, 0x58, 4), 0x0200_0000, 'and it stays so');
  assert.equal(configRead(pio, 1, 3, 0x40, 4), 0x0000_0001, 'PMBA: I/O space indicator only');
  assert.equal(configRead(pio, 1, 3, 0x90, 4), 0x0000_0001);
  seabiosPmSetup(pio);
  assert.equal(configRead(pio, 1, 3, 0x3c, 1), 9);
  assert.equal(configRead(pio, 1, 3, 0x40, 4), 0x0601);
  assert.equal(configRead(pio, 1, 3, 0x80, 1), 0x01);
  assert.equal(configRead(pio, 1, 3, 0x90, 4), 0x0701);
  assert.equal(configRead(pio, 1, 3, 0xd2, 1), 0x09);
  configWrite(pio, 1, 3, 0x40, 4, 0xffff_ffff);
  assert.equal(configRead(pio, 1, 3, 0x40, 4), 0xffc1, 'PMBA: 64-port aligned base in bits 15:6');
});

test('PIIX4 PM: the PM block answers at its base only once PMBA holds it and PMIOSE is set', () => {
  const { pio } = chipset();
  assert.equal(pio.read(PM_TMR, 4), 0xffff_ffff, 'not enabled');
  configWrite(pio, 1, 3, 0x40, 4, PM | 1);
  assert.equal(pio.read(PM_TMR, 4), 0xffff_ffff, 'PMIOSE still clear');
  configWrite(pio, 1, 3, 0x80, 1, 1);
  assert.ok(pio.read(PM_TMR, 4) <= 0xff_ffff, 'the 24-bit timer');
  configWrite(pio, 1, 3, 0x40, 4, 0xb001);
  assert.equal(pio.read(PM_TMR, 4), 0xffff_ffff, 'moved away from the FADT base');
  const ovmf = chipset({ pm: { pmBase: 0xb000 } });
  seabiosPmSetup(ovmf.pio, 0xb000);
  assert.ok(ovmf.pio.read(0xb008, 4) <= 0xff_ffff, 'pmBase 0xB000 (OVMF) works the same');
});

test('PIIX4 PM timer: 24 bits at 3.579545 MHz of the host monotonic clock (generous tolerance)', async () => {
  const { pio } = chipset();
  seabiosPmSetup(pio);
  const h0 = process.hrtime.bigint();
  const t0 = pio.read(PM_TMR, 4);
  await sleep(200);
  const t1 = pio.read(PM_TMR, 4);
  const h1 = process.hrtime.bigint();
  const ticks = (t1 - t0 + 2 ** 24) % 2 ** 24;
  const expected = (Number(h1 - h0) * PM_TIMER_HZ) / 1e9;
  assert.ok(ticks > 0 && ticks <= expected, `${ticks} ticks in a window worth ${expected.toFixed(0)}`);
  assert.ok(ticks >= expected * 0.5, `${ticks} ticks: at least half the rate (${expected.toFixed(0)})`);
  assert.ok(t1 < 2 ** 24 && t0 < 2 ** 24, 'bits 31:24 read 0 (TMR_VAL_EXT = 0)');
  const lowWord = pio.read(PM_TMR, 2);
  assert.ok(lowWord <= 0xffff);
});

/** A PM function over a clock the test moves, for the timer overflow status. */
function fakeClockPm() {
  let now = 1_000_000;
  const irqs = new IrqRecorder();
  const stops: unknown[] = [];
  const clock = (): number => now;
  const pm = new Piix4PowerManagement(undefined, createPmState(clock), {
    pmBase: PM,
    sci: irqs.line(9),
    host: { stop: (r) => void stops.push(r) },
    clock,
  });
  pm.config.write(0x40, 4, PM | 1);
  pm.config.write(0x80, 1, 1);
  return { pm, irqs, advance: (ticks: number) => (now += ticks) };
}

test('PIIX4 PM timer: counts from 0, wraps at 2^24; TMROF_STS sets when bit 23 flips, write 1 clears, SCI if enabled', () => {
  const { pm, irqs, advance } = fakeClockPm();
  assert.equal(pm.pmRead(8, 4), 0);
  advance(1234.7);
  assert.equal(pm.pmRead(8, 4), 1234);
  assert.equal(pm.pmRead(0, 2) & TMROF_STS, 0);
  advance(2 ** 23);
  assert.equal(pm.pmRead(0, 2) & TMROF_STS, TMROF_STS, 'bit 23 changed');
  pm.pmWrite(0, 2, TMROF_STS);
  assert.equal(pm.pmRead(0, 2) & TMROF_STS, 0, 'cleared by writing 1');
  advance(2 ** 23);
  assert.equal(pm.pmRead(8, 4), 1234, 'wrapped at 2^24');
  pm.pmWrite(2, 2, TMROF_STS); // TMROF_EN
  assert.equal(irqs.level(9), false, 'SCI_EN is still clear');
  pm.pmWrite(4, 2, SCI_EN);
  assert.equal(irqs.level(9), true, 'overflow pending, enabled, SCI_EN: SCI');
  pm.pmWrite(0, 1, TMROF_STS);
  assert.equal(irqs.level(9), false);
});

test('PIIX4 PM: ACPI enable through 0xB2, power button status and SCI on IRQ 9, GPE0, ACPI disable', () => {
  const pc = chipset();
  const { pio, irqs } = pc;
  seabiosPmSetup(pio);
  assert.equal(pio.read(PM1_CNT, 2) & SCI_EN, 0);
  pio.write(0xb2, 1, ACPI_ENABLE); // what Linux does when SCI_EN is clear and SMI_CMD is set
  assert.equal(pio.read(PM1_CNT, 2) & SCI_EN, SCI_EN, 'ACPI_ENABLE sets SCI_EN');
  assert.equal(pio.read(0xb2, 1), ACPI_ENABLE);
  pio.write(0xb3, 1, 0x5a);
  assert.equal(pio.read(0xb3, 1), 0x5a, 'APM status is a scratch byte');

  pc.pm.pressPowerButton();
  assert.equal(pio.read(PM1_STS, 2) & PWRBTN_STS, PWRBTN_STS);
  assert.equal(irqs.level(9), false, 'not enabled yet');
  pio.write(PM1_EN, 2, PWRBTN_STS);
  assert.equal(pio.read(PM1_EN, 2), PWRBTN_STS);
  assert.equal(irqs.level(9), true, 'SCI while an enabled status bit is set');
  pio.write(PM1_STS, 2, 0); // writing 0 clears nothing
  assert.equal(irqs.level(9), true);
  pio.write(PM1_STS + 1, 1, PWRBTN_STS >> 8); // byte write to the high half
  assert.equal(pio.read(PM1_STS, 2) & PWRBTN_STS, 0);
  assert.equal(irqs.level(9), false);

  pc.pm.raiseGpe(3);
  assert.equal(pio.read(GPE0_STS, 2), 0x0008);
  assert.equal(irqs.level(9), false);
  pio.write(GPE0_EN, 2, 0x0008);
  assert.equal(irqs.level(9), true, 'an enabled GPE raises the SCI');
  pio.write(0xb2, 1, ACPI_DISABLE);
  assert.equal(pio.read(PM1_CNT, 2) & SCI_EN, 0, 'ACPI_DISABLE clears SCI_EN');
  assert.equal(irqs.level(9), false, 'no SCI without SCI_EN');
  pio.write(0xb2, 1, ACPI_ENABLE);
  assert.equal(irqs.level(9), true);
  pio.write(GPE0_STS, 4, 0x0008_0008); // one dword over status (write 1: clear) and enable (kept)
  assert.equal(pio.read(GPE0_STS, 4), 0x0008_0000);
  assert.equal(irqs.level(9), false);
  assert.equal(pio.read(PM + 0x10, 4), 0, 'processor control and the rest read 0');
});

test('PIIX4 PM: SLP_TYP 0 + SLP_EN powers off (status 0); other sleep types are ignored; SLP_EN reads 0', () => {
  const pc = chipset();
  seabiosPmSetup(pc.pio);
  pc.pio.write(PM1_CNT, 2, (1 << 10) | (1 << 13) | SCI_EN); // S3-like type: no such state here
  assert.equal(pc.stops.length, 0);
  assert.equal(pc.pio.read(PM1_CNT, 2), (1 << 10) | SCI_EN, 'SLP_EN is write-only');
  pc.pio.write(PM1_CNT, 2, (0 << 10) | SCI_EN); // type 0 first (edk2 ResetShutdown sets the type, then SLP_EN)
  assert.equal(pc.stops.length, 0);
  pc.pio.write(PM1_CNT + 1, 1, 0x20); // SLP_EN in the high byte only
  assert.equal(pc.stops.length, 1);
  assert.equal(pc.stops[0].status, 0);
  assert.match(pc.stops[0].message, /powered off/);
});

test('PIIX4 PM save/restore: registers, config and the timer carry over; bad snapshots are refused', () => {
  const a = chipset();
  seabiosPmSetup(a.pio);
  a.pio.write(0xb2, 1, ACPI_ENABLE);
  a.pio.write(PM1_EN, 2, PWRBTN_STS);
  a.pm.pressPowerButton();
  assert.equal(a.irqs.level(9), true);
  const before = a.pio.read(PM_TMR, 4);
  const snapshot = JSON.parse(JSON.stringify(a.pm.saveState())) as DeviceSnapshot;
  const b = chipset();
  b.pm.restoreState(snapshot);
  assert.equal(configRead(b.pio, 1, 3, 0x40, 4), 0x0601);
  assert.equal(b.pio.read(PM1_CNT, 2) & SCI_EN, SCI_EN);
  assert.equal(b.pio.read(PM1_STS, 2) & PWRBTN_STS, PWRBTN_STS);
  assert.equal(b.irqs.level(9), true, 'the restored SCI is driven');
  const after = b.pio.read(PM_TMR, 4);
  assert.ok((after - before + 2 ** 24) % 2 ** 24 < PM_TIMER_HZ * 60, 'the timer continues from its saved value');
  const c = chipset();
  for (const bad of [
    { ...snapshot, version: 9 },
    { ...snapshot, data: { ...snapshot.data, pm1Enable: -1 } },
    { ...snapshot, data: { ...snapshot.data, timer: 'soon' } },
    { ...snapshot, data: { ...snapshot.data, timerOverflow: 1 } },
    { ...snapshot, data: { ...snapshot.data, config: Buffer.alloc(4096).toString('base64') } },
  ])
    assert.throws(() => c.pm.restoreState(bad), DeviceStateError);
  assert.equal(configRead(c.pio, 1, 3, 0x40, 4), 0x0001, 'refused snapshots change nothing');
  const powerOn = JSON.parse(JSON.stringify(c.pm.saveState())) as DeviceSnapshot;
  b.pm.restoreState(powerOn);
  assert.equal(b.irqs.level(9), false, 'loading a quiet state over a live one lowers the SCI');
  assert.equal(b.pio.read(PM_TMR, 4), 0xffff_ffff, 'and the PM block is off again');
});

test('bad guest input never throws: odd sizes and offsets over every chipset port and config register', () => {
  const pc = chipset();
  seabiosPmSetup(pc.pio);
  let seed = 12345;
  const rand = (n: number): number => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed % n;
  };
  const ports = [0xcf9, 0xb2, 0xb3, ...Array.from({ length: 64 }, (_, i) => PM + i)];
  for (let i = 0; i < 20000; i++) {
    const size = ([1, 2, 4] as const)[rand(3)];
    const port = ports[rand(ports.length)];
    if (rand(2)) pc.pio.read(port, size);
    else if (port !== 0xcf9) pc.pio.write(port, size, rand(0x7fffffff) * 2 + rand(2));
    const fn = [0, 0, 3][rand(3)];
    const dev = fn === 3 ? 1 : rand(2);
    if (rand(2)) configWrite(pc.pio, dev, fn, rand(256), size, rand(0x7fffffff));
    else configRead(pc.pio, dev, fn, rand(256), size);
  }
  assert.equal(configRead(pc.pio, 1, 0, 0, 4), 0x7000_8086, 'identity survives');
  assert.equal(configRead(pc.pio, 1, 3, 0x5b, 1), 0x02);
});

test('PIIX4 PM timer: a 32-bit read takes every byte from one instant (no tear across a carry)', () => {
  // A clock that moves one tick at every look: a read that looked once per byte would mix 0xFF with later bytes.
  let now = 0;
  const clock = (): number => now++;
  const pm = new Piix4PowerManagement(undefined, createPmState(clock), {
    pmBase: PM,
    sci: new IrqRecorder().line(9),
    host: { stop: () => undefined },
    clock,
  });
  pm.config.write(0x40, 4, PM | 1);
  pm.config.write(0x80, 1, 1);
  now = 0xff; // origin 0: the timer reads 0xFE at its first look
  const first = pm.pmRead(8, 4);
  assert.equal(first & 0xff, first, `one instant: ${first.toString(16)} has no bytes from after the carry`);
  const second = pm.pmRead(8, 4);
  assert.ok(second > first, `the timer runs forward: ${first.toString(16)} then ${second.toString(16)}`);
});
