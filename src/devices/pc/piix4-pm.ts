// Intel 82371AB PIIX4 function 3, power management (PIIX4 datasheet, order no. 290562, §3.3 PCI configuration
// registers of function 3, §3.4-§3.5 system management and power management I/O registers; ACPI 6.5 §4.8 fixed
// hardware): device 8086:7113 at 00:01.3, class 06.80.00. Registry kind "piix4-pm". What it gives the machine:
//   - PMBA (0x40) and PMREGMISC (0x80) enabling the 64-port PM I/O block: PM1 status/enable (write 1 to clear),
//     PM1 control (SCI_EN; SUS_TYP + SUS_EN: soft-off powers the VM off), the 24-bit 3.579545 MHz PM timer from
//     the host's monotonic clock, GPE0 status/enable;
//   - the SCI on ISA IRQ 9, level, asserted while an enabled status bit is set and SCI_EN is on;
//   - the APM control/status ports 0xB2/0xB3: ACPI_ENABLE (0xF1) sets SCI_EN, ACPI_DISABLE (0xF0) clears it
//     (what the SMI handler does on a real board; there is no SMM here);
//   - config byte 0x5B reads 0x02 (DEVACTB APMC_EN): SeaBIOS's smm.c then takes SMM as set up already and never
//     waits for an SMI; SMBus base 0x90 and host configuration 0xD2 are stored (no SMBus controller behind them);
//   - its FADT fixed-hardware block (DeviceDescription.fadt) and the ports as motherboard resources.
//
// The PM block answers at the base the FADT names (option pmBase; SeaBIOS programs 0x600 when the VMM supplies the
// ACPI tables, OVMF 0xB000) once the guest has programmed PMBA to it and set PMIOSE: the port bus has no moving
// registrations, and an OS only ever uses the block where the FADT says it is.
//
// The timer overflow (TMROF_STS) is derived from the clock when read; no host timer raises an SCI for it on its own
// (an SCI for it comes with the next access to the block). OSes do not enable it (Linux reads the timer only).
import { Type } from '@sinclair/typebox';
import { device, eisaId, integer, ioPort, name, resourceTemplate, type Aml } from '../../arch/x86_64/acpi/aml.js';
import type { FixedHardware } from '../../arch/x86_64/acpi/fadt.js';
import { SharedLock } from '../../base/shared-lock.js';
import type { IrqLine } from '../../base/irq-line.js';
import type { PortIoDevice } from '../bus.js';
import {
  bytesToJson,
  DeviceStateError,
  expectSnapshot,
  jsonToBytes,
  type AttachedDevice,
  type DeviceHost,
  type DeviceModel,
  type DeviceSnapshot,
} from '../model.js';
import { devfn, type PciFunction } from '../pci/bus.js';
import { CONFIG_SPACE_SIZE, PciConfigSpace, QEMU_SUBSYSTEM_IDS } from '../pci/config-space.js';

export const PIIX4_PM_DEVICE_ID = 0x7113;
export const PIIX4_PM_REVISION = 0x03;
export const PIIX4_PM_DEVFN = devfn(1, 3);

// Function 3 configuration registers.
export const PIIX4_PMBA = 0x40; // PM base address: bit 0 hardwired 1 (I/O), bits 15:6 the base (64 ports)
export const PIIX4_DEVACTB = 0x58; // device activity B; byte 0x5B bit 1 = APMC_EN
export const PIIX4_PMREGMISC = 0x80; // bit 0 PMIOSE: the PM I/O block decodes
export const PIIX4_SMBBA = 0x90; // SMBus base address: bit 0 hardwired 1, bits 15:4 the base (16 ports)
export const PIIX4_SMBHSTCFG = 0xd2; // bit 0 SMBus host enable, bits 3:1 its interrupt select
const PMBA_MASK = 0xffc0;
const PMIOSE = 0x01;

/** The default PM base: where SeaBIOS puts it when the VMM provides the ACPI tables (QEMU does the same). */
export const DEFAULT_PM_BASE = 0x600;
export const PM_BLOCK_SIZE = 64;
/** The APM control (SMI command) and status ports. */
export const APM_CONTROL_PORT = 0xb2;
export const APM_STATUS_PORT = 0xb3;
export const ACPI_ENABLE = 0xf1;
export const ACPI_DISABLE = 0xf0;
/** The SCI is wired to ISA IRQ 9 (SeaBIOS: "acpi sci is hardwired to 9"). */
export const SCI_IRQ = 9;
/** SUS_TYP of soft-off (S5) in the PIIX4 (and what edk2's ResetSystemLib and QEMU use): 0. */
export const S5_SUS_TYP = 0;

/** PM timer: 3.579545 MHz, 24 bits (ACPI 6.5 §4.8.3.3; FADT TMR_VAL_EXT = 0). */
export const PM_TIMER_HZ = 3_579_545;
const TIMER_BITS = 24;
const TIMER_STATUS_PERIOD = 2 ** (TIMER_BITS - 1); // TMROF_STS sets when bit 23 changes

// PM I/O register offsets and bits.
const PM1_STS = 0x00;
const PM1_EN = 0x02;
const PM1_CNT = 0x04;
const PM_TMR = 0x08;
const GPE0_STS = 0x0c;
const GPE0_EN = 0x0e;
export const TMROF_STS = 1 << 0;
export const BM_STS = 1 << 4;
export const GBL_STS = 1 << 5;
export const PWRBTN_STS = 1 << 8;
export const RTC_STS = 1 << 10;
export const WAK_STS = 1 << 15;
const PM1_STS_CLEARABLE = TMROF_STS | BM_STS | GBL_STS | PWRBTN_STS | RTC_STS | (1 << 11) | WAK_STS;
const PM1_EN_WRITABLE = TMROF_STS | GBL_STS | PWRBTN_STS | RTC_STS; // the enables sit at their status bits
export const SCI_EN = 1 << 0;
const SUS_TYP_SHIFT = 10;
const SUS_EN = 1 << 13;
const PM1_CNT_STORED = SCI_EN | (1 << 1) | (7 << SUS_TYP_SHIFT); // GBL_RLS and SUS_EN are write-only

// Shared state: Int32 words, then two Float64s.
const W_LOCK = 0;
const W_PM1_STS = 1; // status bits other than TMROF_STS (derived from the clock)
const W_PM1_EN = 2;
const W_PM1_CNT = 3;
const W_GPE_STS = 4;
const W_GPE_EN = 5;
const W_APMC = 6;
const W_APMS = 7;
const W_SCI = 8; // the level last driven on the SCI
const F_TIMER_ORIGIN = 5; // Float64 index (byte 40): host tick count at which the timer read 0
const F_TMR_CLEARED = 6; // Float64 index (byte 48): timer period (ticks / 2^23) when TMROF_STS was last cleared
const STATE_BYTES = 56;

/** Host monotonic clock in PM timer ticks (CLOCK_MONOTONIC: the same on every thread). */
export function hostTimerTicks(): number {
  const [seconds, nanoseconds] = process.hrtime();
  return seconds * PM_TIMER_HZ + (nanoseconds * PM_TIMER_HZ) / 1e9;
}

export function createPmState(clock: () => number = hostTimerTicks): SharedArrayBuffer {
  const state = new SharedArrayBuffer(STATE_BYTES);
  const f = new Float64Array(state);
  f[F_TIMER_ORIGIN] = clock();
  f[F_TMR_CLEARED] = 0;
  return state;
}

export interface PiixPmOptions {
  /** The PM I/O base the FADT names: the block answers there once PMBA holds it and PMIOSE is set. */
  readonly pmBase: number;
  readonly sci: IrqLine;
  readonly host: Pick<DeviceHost, 'stop'>;
  /** PM timer ticks of a monotonic clock (tests substitute their own); default the host's. */
  readonly clock?: () => number;
}

/** The PM function's registers (config space and PM I/O), one view per thread over shared state. */
export class Piix4PowerManagement implements PciFunction {
  readonly name = 'piix4-pm';
  readonly config: PciConfigSpace;
  private readonly lock: SharedLock;
  private readonly w: Int32Array;
  private readonly f: Float64Array;
  private readonly clock: () => number;

  constructor(
    configShared: SharedArrayBuffer | undefined,
    readonly state: SharedArrayBuffer,
    private readonly opts: PiixPmOptions,
  ) {
    const initialize = configShared === undefined;
    this.config = new PciConfigSpace(configShared);
    const id = {
      vendorId: 0x8086,
      deviceId: PIIX4_PM_DEVICE_ID,
      revision: PIIX4_PM_REVISION,
      classCode: 0x068000,
      ...QEMU_SUBSYSTEM_IDS,
      interruptPin: 1,
    };
    if (initialize) {
      this.config.initialize(id);
      this.config.setU16(0x06, 0x0280); // PCISTS: fast back-to-back, DEVSEL medium
      this.config.bytes[PIIX4_PMBA] = 0x01;
      this.config.bytes[PIIX4_DEVACTB + 3] = 0x02; // APMC_EN: "SMM already set up", read-only here
      this.config.bytes[PIIX4_SMBBA] = 0x01;
    } else this.config.defineMasks(id);
    this.config.setWritableMask(PIIX4_PMBA, 4, PMBA_MASK);
    this.config.setWritableMask(PIIX4_PMREGMISC, 1, PMIOSE);
    this.config.setWritableMask(PIIX4_SMBBA, 4, 0xfff0);
    this.config.setWritableMask(PIIX4_SMBHSTCFG, 1, 0x0f);
    this.lock = new SharedLock(state, W_LOCK * 4);
    this.w = new Int32Array(state, 0, 10);
    this.f = new Float64Array(state, 0, STATE_BYTES / 8);
    this.clock = opts.clock ?? hostTimerTicks;
  }

  barRead(_bar: number, _offset: number, data: Uint8Array): void {
    data.fill(0xff);
  }
  barWrite(): void {}

  /** Whether the PM block decodes at the FADT's base: PMBA holds it and PMIOSE is set. */
  get pmDecoding(): boolean {
    const base = this.config.u32(PIIX4_PMBA) & PMBA_MASK;
    return base === this.opts.pmBase && (this.config.bytes[PIIX4_PMREGMISC] & PMIOSE) !== 0;
  }

  /** The PM I/O block: registered at pmBase, answering only while it decodes there. */
  pmBlock(): PortIoDevice {
    return {
      name: 'piix4-pm-io',
      pioRead: (offset, size) => (this.pmDecoding ? this.pmRead(offset, size) : ones(size)),
      pioWrite: (offset, size, value) => {
        if (this.pmDecoding) this.pmWrite(offset, size, value);
      },
    };
  }

  /** Ports 0xB2 (APM control: the SMI command port) and 0xB3 (APM status, a scratch byte). */
  apmPorts(): PortIoDevice {
    return {
      name: 'piix4-apm',
      pioRead: (offset) => this.lock.with(() => Atomics.load(this.w, offset === 0 ? W_APMC : W_APMS) & 0xff),
      pioWrite: (offset, _size, value) =>
        this.lock.with(() => {
          const v = value & 0xff;
          if (offset !== 0) return void Atomics.store(this.w, W_APMS, v);
          Atomics.store(this.w, W_APMC, v);
          const cnt = Atomics.load(this.w, W_PM1_CNT);
          if (v === ACPI_ENABLE) Atomics.store(this.w, W_PM1_CNT, cnt | SCI_EN);
          else if (v === ACPI_DISABLE) Atomics.store(this.w, W_PM1_CNT, cnt & ~SCI_EN);
          this.updateSci();
        }),
    };
  }

  /** The host's power button (a daemon "shutdown" request): PWRBTN_STS, an SCI if the OS enabled it. */
  pressPowerButton(): void {
    this.lock.with(() => {
      Atomics.or(this.w, W_PM1_STS, PWRBTN_STS);
      this.updateSci();
    });
  }

  /** A general-purpose event (bit of GPE0 status): an SCI if the OS enabled it. */
  raiseGpe(bit: number): void {
    if (!Number.isInteger(bit) || bit < 0 || bit > 15) throw new RangeError(`GPE0 bit ${bit}`);
    this.lock.with(() => {
      Atomics.or(this.w, W_GPE_STS, 1 << bit);
      this.updateSci();
    });
  }

  /** The PM timer now: 24 bits. */
  timer(): number {
    return Math.floor(this.ticks()) % 2 ** TIMER_BITS;
  }

  /** PM timer ticks since the timer read 0 (not wrapped). */
  private ticks(): number {
    return Math.max(0, this.clock() - this.f[F_TIMER_ORIGIN]);
  }

  /** Whether bit 23 of the timer changed since TMROF_STS was last cleared. */
  private timerOverflowed(): boolean {
    return Math.floor(this.ticks() / TIMER_STATUS_PERIOD) > this.f[F_TMR_CLEARED];
  }

  private pm1Status(): number {
    return Atomics.load(this.w, W_PM1_STS) | (this.timerOverflowed() ? TMROF_STS : 0);
  }

  /** The value of the register holding byte `offset` of the block, and where that register starts. */
  private register(offset: number, timer = this.timer()): { start: number; value: number } {
    if (offset < PM1_EN) return { start: PM1_STS, value: this.pm1Status() };
    if (offset < PM1_CNT) return { start: PM1_EN, value: Atomics.load(this.w, W_PM1_EN) };
    if (offset < PM1_CNT + 2) return { start: PM1_CNT, value: Atomics.load(this.w, W_PM1_CNT) };
    if (offset >= PM_TMR && offset < PM_TMR + 4) return { start: PM_TMR, value: timer };
    if (offset >= GPE0_STS && offset < GPE0_EN) return { start: GPE0_STS, value: Atomics.load(this.w, W_GPE_STS) };
    if (offset >= GPE0_EN && offset < GPE0_EN + 2) return { start: GPE0_EN, value: Atomics.load(this.w, W_GPE_EN) };
    // Processor control, C-state entry, global/device status and control: none of it exists here; reads are 0.
    return { start: offset, value: 0 };
  }

  pmRead(offset: number, size: number): number {
    return this.lock.with(() => {
      // The timer is read once per access: bytes taken at different instants would tear across a carry (a
      // 32-bit read could then run backwards).
      const timer = this.timer();
      let v = 0;
      for (let i = size - 1; i >= 0; i--) {
        const at = offset + i;
        const r = this.register(at, timer);
        v = v * 256 + (Math.floor(r.value / 2 ** (8 * (at - r.start))) & 0xff);
      }
      this.updateSci(); // a timer overflow seen now raises its SCI now
      return v >>> 0;
    });
  }

  pmWrite(offset: number, size: number, value: number): void {
    // Split the access into the registers it touches: each gets its bytes of `value` and a mask of them.
    const touched = new Map<number, { value: number; mask: number }>();
    for (let i = 0; i < size; i++) {
      const at = offset + i;
      const start = this.register(at).start;
      const shift = 8 * (at - start);
      const t = touched.get(start) ?? { value: 0, mask: 0 };
      t.value |= ((value >>> (8 * i)) & 0xff) << shift;
      t.mask |= 0xff << shift;
      touched.set(start, t);
    }
    let powerOff = false;
    this.lock.with(() => {
      for (const [start, { value: v, mask }] of touched) {
        if (start === PM1_STS) {
          const clear = v & mask & PM1_STS_CLEARABLE;
          Atomics.and(this.w, W_PM1_STS, ~clear);
          if (clear & TMROF_STS) this.f[F_TMR_CLEARED] = Math.floor(this.ticks() / TIMER_STATUS_PERIOD);
        } else if (start === PM1_EN) {
          const old = Atomics.load(this.w, W_PM1_EN);
          Atomics.store(this.w, W_PM1_EN, ((old & ~mask) | (v & mask)) & PM1_EN_WRITABLE);
        } else if (start === PM1_CNT) {
          const old = Atomics.load(this.w, W_PM1_CNT);
          const next = (old & ~mask) | (v & mask);
          Atomics.store(this.w, W_PM1_CNT, next & PM1_CNT_STORED);
          // Sleep: SUS_EN written as 1 enters the state SUS_TYP names. Only soft-off exists here (the DSDT offers
          // \_S5_ alone); other types are ignored, as a board without that state would.
          if (mask & SUS_EN && v & SUS_EN && ((next >> SUS_TYP_SHIFT) & 7) === S5_SUS_TYP) powerOff = true;
        } else if (start === GPE0_STS) {
          Atomics.and(this.w, W_GPE_STS, ~(v & mask));
        } else if (start === GPE0_EN) {
          const old = Atomics.load(this.w, W_GPE_EN);
          Atomics.store(this.w, W_GPE_EN, ((old & ~mask) | (v & mask)) & 0xffff);
        }
      }
      this.updateSci();
    });
    if (powerOff) this.opts.host.stop({ kind: 'guest-exit', status: 0, message: 'the guest powered off (ACPI S5)' });
  }

  /** Drives the SCI: asserted while SCI_EN and an enabled PM1 or GPE0 status bit is set. Lock held. */
  private updateSci(): void {
    const cnt = Atomics.load(this.w, W_PM1_CNT);
    const pm1 = this.pm1Status() & Atomics.load(this.w, W_PM1_EN);
    const gpe = Atomics.load(this.w, W_GPE_STS) & Atomics.load(this.w, W_GPE_EN);
    const level = cnt & SCI_EN && (pm1 || gpe) ? 1 : 0;
    if (Atomics.exchange(this.w, W_SCI, level) !== level) this.opts.sci.set(level === 1);
  }

  /** Guest-visible PM state for a snapshot (the timer as its current value). */
  saveRegisters(): { [key: string]: number | boolean } {
    return this.lock.with(() => ({
      pm1Status: Atomics.load(this.w, W_PM1_STS),
      pm1Enable: Atomics.load(this.w, W_PM1_EN),
      pm1Control: Atomics.load(this.w, W_PM1_CNT),
      gpeStatus: Atomics.load(this.w, W_GPE_STS),
      gpeEnable: Atomics.load(this.w, W_GPE_EN),
      apmControl: Atomics.load(this.w, W_APMC),
      apmStatus: Atomics.load(this.w, W_APMS),
      timer: this.timer(),
      timerOverflow: this.timerOverflowed(),
    }));
  }

  /** Loads saveRegisters()'s values (checked by the caller); the timer continues from its saved value. */
  loadRegisters(r: PmRegisters): void {
    this.lock.with(() => {
      Atomics.store(this.w, W_PM1_STS, r.pm1Status & PM1_STS_CLEARABLE & ~TMROF_STS);
      Atomics.store(this.w, W_PM1_EN, r.pm1Enable & PM1_EN_WRITABLE);
      Atomics.store(this.w, W_PM1_CNT, r.pm1Control & PM1_CNT_STORED);
      Atomics.store(this.w, W_GPE_STS, r.gpeStatus & 0xffff);
      Atomics.store(this.w, W_GPE_EN, r.gpeEnable & 0xffff);
      Atomics.store(this.w, W_APMC, r.apmControl & 0xff);
      Atomics.store(this.w, W_APMS, r.apmStatus & 0xff);
      this.f[F_TIMER_ORIGIN] = this.clock() - r.timer;
      this.f[F_TMR_CLEARED] = Math.floor(r.timer / TIMER_STATUS_PERIOD) - (r.timerOverflow ? 1 : 0);
      this.updateSci();
      this.opts.sci.set(Atomics.load(this.w, W_SCI) === 1); // also when unchanged: a fresh machine's line is low
    });
  }
}

export interface PmRegisters {
  readonly pm1Status: number;
  readonly pm1Enable: number;
  readonly pm1Control: number;
  readonly gpeStatus: number;
  readonly gpeEnable: number;
  readonly apmControl: number;
  readonly apmStatus: number;
  readonly timer: number;
  readonly timerOverflow: boolean;
}

const ones = (size: number): number => (size === 4 ? 0xffffffff : (1 << (8 * size)) - 1);

/** The fixed-hardware block of a PIIX4 PM function whose PM I/O base is `pmBase`. */
export function piix4FixedHardware(pmBase: number): FixedHardware {
  return {
    pm1aEvent: pmBase + PM1_STS,
    pm1aControl: pmBase + PM1_CNT,
    pmTimer: pmBase + PM_TMR,
    gpe0: pmBase + GPE0_STS,
    gpe0Length: 4,
    sciInterrupt: SCI_IRQ,
    smiCommand: APM_CONTROL_PORT,
    acpiEnable: ACPI_ENABLE,
    acpiDisable: ACPI_DISABLE,
    resetRegister: { port: 0xcf9, value: 0x06 },
    sleepTypeS5: S5_SUS_TYP,
  };
}

/** The PM function's ports as motherboard resources, so no OS hands them to a PCI device. */
export function piix4PmAml(pmBase: number): Aml[] {
  return [
    device(
      'PMRS',
      name('_HID', eisaId('PNP0C02')), // motherboard resources
      name('_UID', integer(1)),
      name(
        '_CRS',
        resourceTemplate(
          ioPort(pmBase, pmBase, 0x01, PM_BLOCK_SIZE),
          ioPort(APM_CONTROL_PORT, APM_CONTROL_PORT, 0x01, 2),
        ),
      ),
    ),
  ];
}

interface PiixPmState {
  readonly config: SharedArrayBuffer;
  readonly pm: SharedArrayBuffer;
  readonly pmBase: number;
}

const PM_REGISTER_KEYS = [
  'pm1Status',
  'pm1Enable',
  'pm1Control',
  'gpeStatus',
  'gpeEnable',
  'apmControl',
  'apmStatus',
  'timer',
] as const;

export const piix4PmModel: DeviceModel<PiixPmState> = {
  kind: 'piix4-pm',
  summary: 'PIIX4 power management 8086:7113 at 00:01.3: ACPI PM1/GPE0 registers, PM timer, SCI on IRQ 9, APM 0xB2',
  options: {
    pmBase: Type.Optional(
      Type.Integer({
        minimum: 0x40,
        maximum: 0xffc0,
        multipleOf: 64,
        description: 'PM I/O base the FADT names (0x600: SeaBIOS with VMM tables; 0xB000: OVMF)',
      }),
    ),
  },
  bus: 'platform',
  create: (options) => {
    const pmBase = typeof options.pmBase === 'number' ? options.pmBase : DEFAULT_PM_BASE;
    const pm = createPmState();
    const fn = new Piix4PowerManagement(undefined, pm, { pmBase, sci: { set: () => undefined }, host: noHost });
    return { config: fn.config.shared, pm, pmBase };
  },
  describe: (state) => ({ fadt: piix4FixedHardware(state.pmBase), acpi: piix4PmAml(state.pmBase) }),
  attach(state, ctx) {
    const fn = new Piix4PowerManagement(state.config, state.pm, {
      pmBase: state.pmBase,
      sci: ctx.irqLine(SCI_IRQ),
      host: ctx.host,
    });
    ctx.pci.add(PIIX4_PM_DEVFN, fn);
    ctx.pio.register(state.pmBase, PM_BLOCK_SIZE, fn.pmBlock());
    ctx.pio.register(APM_CONTROL_PORT, 2, fn.apmPorts());
    const config = fn.config.bytes;
    const attached: AttachedPiix4Pm = {
      name: fn.name,
      pressPowerButton: () => fn.pressPowerButton(),
      raiseGpe: (bit) => fn.raiseGpe(bit),
      saveState: () => ({
        kind: 'piix4-pm',
        version: 1,
        data: { config: bytesToJson(config), ...fn.saveRegisters() },
      }),
      restoreState(snapshot: DeviceSnapshot) {
        expectSnapshot(fn.name, snapshot, 'piix4-pm', 1);
        const bytes = new Uint8Array(CONFIG_SPACE_SIZE);
        jsonToBytes(fn.name, 'config', snapshot.data.config, bytes);
        const differs = fn.config.fixedBitsDiffer(bytes);
        if (differs >= 0)
          throw new DeviceStateError(fn.name, `'config' differs in read-only byte 0x${differs.toString(16)}`);
        const r: Record<string, number | boolean> = {};
        for (const key of PM_REGISTER_KEYS) {
          const v = snapshot.data[key];
          if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > 0xffffff)
            throw new DeviceStateError(fn.name, `'${key}' is ${JSON.stringify(v)}, not a register value`);
          r[key] = v;
        }
        const overflow = snapshot.data.timerOverflow;
        if (typeof overflow !== 'boolean')
          throw new DeviceStateError(fn.name, `'timerOverflow' is ${JSON.stringify(overflow)}, not a boolean`);
        config.set(bytes);
        fn.loadRegisters({ ...(r as unknown as Omit<PmRegisters, 'timerOverflow'>), timerOverflow: overflow });
      },
    };
    return attached;
  },
};

/** The attached PM function: also the host's way to press the power button or signal a GPE. */
export interface AttachedPiix4Pm extends AttachedDevice {
  pressPowerButton(): void;
  raiseGpe(bit: number): void;
}

const noHost: Pick<DeviceHost, 'stop'> = { stop: () => undefined };
