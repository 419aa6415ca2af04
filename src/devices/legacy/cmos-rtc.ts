// The PC's real-time clock and CMOS RAM: a Motorola MC146818A (datasheet, "Real-Time Clock Plus RAM", sections
// "Address Map", "Time, Calendar and Alarm Locations", "Control Registers" A-D, "Interrupts", "Update Cycle") at
// ports 0x70 (index; bit 7 masks NMI) and 0x71 (data), IRQ 8, with the 128-byte upper bank of later chipsets
// (PIIX4 datasheet §4.8) at 0x72/0x73. The bytes a PC BIOS reads for the memory size, CPU count and boot order
// are filled in as QEMU's pc_cmos_init does, so SeaBIOS (src/fw/paravirt.c qemu_preinit, src/boot.c) finds them.
//
// Time model: guest time = host clock + offset (ms, UTC; option base 'localtime' starts the offset at the host's
// UTC offset, for Windows). The time registers are computed from it whenever they
// are read while the clock runs; while SET (register B) is on, or the divider is held in reset (register A DV =
// 11x), they are frozen RAM the guest may rewrite, and when the clock runs again the offset is recomputed from
// them. A write to a time register while the clock runs moves the offset at once (keeping the fraction of the
// current second). The host clock is the wall clock at create() plus the monotonic clock since, the same on every
// thread and never jumping backwards with the host's time.
//
// Flags (register C) are evaluated lazily: whenever a thread looks (a read of C, a register write, the I/O
// thread's timer), the update-ended (UF, each second), alarm (AF) and periodic (PF, every rate-select period of
// the divider) events since the last look are added at once, so a guest that polls C sees what it would on the
// chip. The interrupt line is IRQF: (PF & PIE) | (AF & AIE) | (UF & UIE); it rises when IRQF is set and falls
// when C is read. Interrupts that must arrive without the guest looking are driven by startCmosRtcTimers()
// (serve() on the I/O thread): it sleeps until the next enabled event, or until a register write wakes it. Ticks
// a guest does not acknowledge in time are merged into one (QEMU's lost-tick policy "discard"); periodic rates
// above ~1 kHz are thus delivered at the host timer's granularity.
//
// Simplifications: DSE (daylight saving) is stored but does not move the clock (QEMU ignores it too); SQWE has no
// pin to drive; the UIP bit is set during the 244 µs before each update, the window the datasheet guarantees, the
// update itself taking no time.
import { Type } from '@sinclair/typebox';
import { KIB, MIB } from '../../base/units.js';
import { ramRanges } from '../../arch/x86_64/layout.js';
import { SharedLock } from '../../base/shared-lock.js';
import type { IrqLine } from '../../base/irq-line.js';
import { device, eisaId, ioPort, irqNoFlags, name, resourceTemplate } from '../../arch/x86_64/acpi/aml.js';
import type { PortIoDevice } from '../bus.js';
import {
  bytesToJson,
  DeviceStateError,
  expectSnapshot,
  jsonToBytes,
  type AttachedDevice,
  type DeviceModel,
  type DeviceSnapshot,
  type MachineFacts,
} from '../model.js';

export const RTC_INDEX_PORT = 0x70;
export const RTC_DATA_PORT = 0x71;
export const RTC_EXT_INDEX_PORT = 0x72;
export const RTC_EXT_DATA_PORT = 0x73;
export const RTC_IRQ = 8;

// Register indexes.
export const RTC_SECONDS = 0x00;
export const RTC_SECONDS_ALARM = 0x01;
export const RTC_MINUTES = 0x02;
export const RTC_MINUTES_ALARM = 0x03;
export const RTC_HOURS = 0x04;
export const RTC_HOURS_ALARM = 0x05;
export const RTC_DAY_OF_WEEK = 0x06;
export const RTC_DAY_OF_MONTH = 0x07;
export const RTC_MONTH = 0x08;
export const RTC_YEAR = 0x09;
export const RTC_REG_A = 0x0a;
export const RTC_REG_B = 0x0b;
export const RTC_REG_C = 0x0c;
export const RTC_REG_D = 0x0d;
/** IBM PS/2 century byte; the FADT's CENTURY field should name it. */
export const RTC_CENTURY = 0x32;

export const REG_A_UIP = 0x80;
const REG_A_DV_MASK = 0x70;
/** DV = 010: 32.768 kHz time base, running (what firmware writes: A = 0x26). */
const REG_A_DV_RUNNING_MAX = 0x20;
const REG_A_RS_MASK = 0x0f;

export const REG_B_SET = 0x80;
export const REG_B_PIE = 0x40;
export const REG_B_AIE = 0x20;
export const REG_B_UIE = 0x10;
export const REG_B_SQWE = 0x08;
export const REG_B_DM = 0x04; // 1: binary, 0: BCD
export const REG_B_24H = 0x02;
export const REG_B_DSE = 0x01;

export const REG_C_IRQF = 0x80;
export const REG_C_PF = 0x40;
export const REG_C_AF = 0x20;
export const REG_C_UF = 0x10;

export const REG_D_VRT = 0x80;

/** UIP is set this long before each update (datasheet: t_BUC = 244 µs). */
const UIP_LEAD_MS = 0.244;
/** With no interrupt due, the timer thread still looks this often (a timer keeps its event loop alive). */
const IDLE_RECHECK_MS = 60_000;
const ALARM_DONT_CARE = 0xc0;

// CMOS RAM locations a PC BIOS reads (QEMU hw/i386/pc.c pc_cmos_init, SeaBIOS src/hw/rtc.h).
export const CMOS_SHUTDOWN_STATUS = 0x0f;
export const CMOS_FLOPPY_TYPES = 0x10;
export const CMOS_EQUIPMENT = 0x14;
export const CMOS_BASE_MEMORY = 0x15; // and 0x16: KiB below 640 KiB
export const CMOS_EXTENDED_MEMORY = 0x17; // and 0x18: KiB above 1 MiB, at most 0xFFFF
export const CMOS_CHECKSUM = 0x2e; // 0x2E high byte, 0x2F low byte: sum of 0x10-0x2D
export const CMOS_EXTENDED_MEMORY_POST = 0x30; // and 0x31: the same as 0x17/0x18
export const CMOS_MEMORY_ABOVE_16M = 0x34; // and 0x35: 64 KiB units between 16 MiB and the PCI hole
export const CMOS_BOOT_FLAG1 = 0x38;
export const CMOS_BOOT_FLAG2 = 0x3d;
export const CMOS_MEMORY_ABOVE_4G = 0x5b; // 0x5B-0x5D: 64 KiB units above 4 GiB
export const CMOS_CPU_COUNT = 0x5f; // CPUs − 1
const CHECKSUM_FIRST = 0x10;
const CHECKSUM_LAST = 0x2d;
/** Equipment byte: bit 1 math coprocessor, bit 2 PS/2 pointing device; display bits 0 (EGA/VGA), no floppies. */
const EQUIPMENT = 0x06;

const BANK_SIZE = 128;

// Shared state (byte offsets).
const S_LOCK = 0;
const S_WAKE = 4; // Int32: bumped (and notified) when the timer thread must recompute its deadline
const S_OFFSET = 8; // Float64: guest ms − host ms
const S_LAST_EVAL = 16; // Float64: host ms up to which the flags of register C are evaluated
const S_ANCHOR_WALL = 24; // Float64: wall-clock ms at create()
const S_ANCHOR_MONO = 32; // Float64: monotonic ms at create()
const S_INDEX = 40; // index register bits 0-6
const S_NMI_MASK = 41; // index register bit 7 as last written
const S_EXT_INDEX = 42;
const S_IRQ_LEVEL = 43;
const S_BANK0 = 64;
const S_BANK1 = S_BANK0 + BANK_SIZE;
const STATE_BYTES = S_BANK1 + BANK_SIZE;
/** The guest-visible part a snapshot holds (the floats are saved as numbers, besides). */
const SAVED_FROM = S_INDEX;

function monotonicMs(): number {
  const [s, ns] = process.hrtime();
  return s * 1000 + ns / 1e6;
}

const toBcd = (v: number): number => ((Math.floor(v / 10) % 10) << 4) | (v % 10);
const fromBcd = (v: number): number => (v >> 4) * 10 + (v & 0x0f);

/** The CMOS bytes describing a machine's memory and CPUs, as a PC BIOS reads them (index → value). */
export function cmosMachineBytes(machine: Pick<MachineFacts, 'cpus' | 'memory'>): Map<number, number> {
  const [low, high] = ramRanges(machine.memory);
  const below4g = low.size;
  const above4g = high?.size ?? 0;
  const bytes = new Map<number, number>();
  const word = (at: number, value: number): void => {
    bytes.set(at, value & 0xff);
    bytes.set(at + 1, (value >> 8) & 0xff);
  };
  word(CMOS_BASE_MEMORY, Math.min(Math.floor(below4g / KIB), 640));
  const extended = Math.min(below4g > MIB ? Math.floor((below4g - MIB) / KIB) : 0, 0xffff);
  word(CMOS_EXTENDED_MEMORY, extended);
  word(CMOS_EXTENDED_MEMORY_POST, extended);
  word(CMOS_MEMORY_ABOVE_16M, Math.min(below4g > 16 * MIB ? Math.floor((below4g - 16 * MIB) / (64 * KIB)) : 0, 0xffff));
  const high64k = Math.min(Math.floor(above4g / (64 * KIB)), 0xff_ffff);
  bytes.set(CMOS_MEMORY_ABOVE_4G, high64k & 0xff);
  bytes.set(CMOS_MEMORY_ABOVE_4G + 1, (high64k >> 8) & 0xff);
  bytes.set(CMOS_MEMORY_ABOVE_4G + 2, (high64k >> 16) & 0xff);
  bytes.set(CMOS_CPU_COUNT, Math.min(machine.cpus - 1, 0xff));
  bytes.set(CMOS_FLOPPY_TYPES, 0);
  bytes.set(CMOS_EQUIPMENT, EQUIPMENT);
  // SeaBIOS boot_init (CONFIG_QEMU): boot devices by priority in nibbles, 1 floppy 2 disk 3 CD-ROM 4 network;
  // 0x3D holds the first two, 0x38 bits 4-7 the third; 0x38 bit 0 skips the floppy boot-signature check.
  bytes.set(CMOS_BOOT_FLAG2, 0x32); // disk, then CD-ROM
  bytes.set(CMOS_BOOT_FLAG1, 0x41); // then network; no floppy signature check
  return bytes;
}

/** The standard checksum of bytes 0x10-0x2D (stored big-endian at 0x2E/0x2F). */
export function cmosChecksum(bank0: Uint8Array): number {
  let sum = 0;
  for (let i = CHECKSUM_FIRST; i <= CHECKSUM_LAST; i++) sum += bank0[i];
  return sum & 0xffff;
}

/** What the clock starts at: the host's UTC time (default, as QEMU's) or its local time. */
export type RtcBase = 'utc' | 'localtime';

export interface CmosRtcOptions {
  readonly irq: IrqLine;
  /** Host time in ms since the epoch (tests); default: the wall clock at create() plus monotonic time since. */
  readonly clock?: () => number;
}

export class CmosRtc implements PortIoDevice, AttachedDevice {
  readonly name = 'cmos-rtc';
  /** Bumped and notified when the timer thread must look again (startCmosRtcTimers waits on it). */
  readonly wake: Int32Array;
  private readonly lock: SharedLock;
  private readonly s: Uint8Array;
  private readonly bank0: Uint8Array;
  private readonly bank1: Uint8Array;
  private readonly floats: Float64Array;
  private readonly irq: IrqLine;
  private readonly clock: () => number;

  /** Fresh state: CMOS RAM with the machine's bytes and checksum, registers as QEMU's reset leaves them. */
  static createState(
    machine: Pick<MachineFacts, 'cpus' | 'memory'>,
    options: { readonly base?: RtcBase } = {},
  ): SharedArrayBuffer {
    const state = new SharedArrayBuffer(STATE_BYTES);
    const s = new Uint8Array(state);
    const floats = new Float64Array(state, 0, S_ANCHOR_MONO / 8 + 1);
    floats[S_ANCHOR_WALL / 8] = Date.now();
    floats[S_ANCHOR_MONO / 8] = monotonicMs();
    // 'localtime' (what Windows expects; QEMU's -rtc base=localtime): the host's UTC offset now, kept from then on.
    if (options.base === 'localtime') floats[S_OFFSET / 8] = -new Date().getTimezoneOffset() * 60_000;
    const bank0 = s.subarray(S_BANK0, S_BANK0 + BANK_SIZE);
    for (const [at, value] of cmosMachineBytes(machine)) bank0[at] = value;
    const sum = cmosChecksum(bank0);
    bank0[CMOS_CHECKSUM] = sum >> 8;
    bank0[CMOS_CHECKSUM + 1] = sum & 0xff;
    bank0[RTC_REG_A] = 0x26; // 32.768 kHz, 1024 Hz periodic rate
    bank0[RTC_REG_B] = REG_B_24H;
    bank0[RTC_REG_D] = REG_D_VRT;
    return state;
  }

  constructor(state: SharedArrayBuffer, options: CmosRtcOptions) {
    if (state.byteLength < STATE_BYTES)
      throw new RangeError(`cmos-rtc: the shared state has ${state.byteLength} bytes, needs ${STATE_BYTES}`);
    this.lock = new SharedLock(state, S_LOCK);
    this.wake = new Int32Array(state, S_WAKE, 1);
    this.s = new Uint8Array(state, 0, STATE_BYTES);
    this.bank0 = this.s.subarray(S_BANK0, S_BANK0 + BANK_SIZE);
    this.bank1 = this.s.subarray(S_BANK1, S_BANK1 + BANK_SIZE);
    this.floats = new Float64Array(state, 0, S_ANCHOR_MONO / 8 + 1);
    this.irq = options.irq;
    const anchorWall = this.floats[S_ANCHOR_WALL / 8];
    const anchorMono = this.floats[S_ANCHOR_MONO / 8];
    this.clock = options.clock ?? (() => anchorWall + (monotonicMs() - anchorMono));
  }

  pioRead(offset: number): number {
    this.lock.lock();
    try {
      switch (offset) {
        case 1:
          return this.readRegister(this.s[S_INDEX]);
        case 3:
          return this.bank1[this.s[S_EXT_INDEX]];
        default:
          // The index registers are write-only on the chipsets that have them; QEMU reads 0xFF.
          return 0xff;
      }
    } finally {
      this.lock.unlock();
    }
  }

  pioWrite(offset: number, _size: number, value: number): void {
    value &= 0xff;
    this.lock.lock();
    try {
      switch (offset) {
        case 0:
          this.s[S_INDEX] = value & 0x7f;
          this.s[S_NMI_MASK] = value >> 7;
          return;
        case 1:
          this.writeRegister(this.s[S_INDEX], value);
          return;
        case 2:
          this.s[S_EXT_INDEX] = value & 0x7f;
          return;
        default:
          this.bank1[this.s[S_EXT_INDEX]] = value;
      }
    } finally {
      this.lock.unlock();
    }
  }

  /** Whether the guest has NMIs masked (index register bit 7); NMIs are not delivered through here. */
  get nmiMasked(): boolean {
    return Atomics.load(this.s, S_NMI_MASK) !== 0;
  }

  /** The guest's current time in ms since the epoch (UTC), as the running clock would show it. */
  guestTime(): number {
    return this.clock() + this.offset;
  }

  /**
   * For the timer thread: adds the events due by now to register C (raising IRQ 8 if enabled) and returns the
   * time in ms until the next enabled interrupt, or Infinity when none is due (nothing enabled, or IRQ 8 still
   * asserted: a new event cannot make a new edge until the guest reads C).
   */
  poll(): number {
    return this.lock.with(() => {
      const now = this.clock();
      this.evaluate(now);
      if (this.s[S_IRQ_LEVEL]) return Infinity;
      const b = this.bank0[RTC_REG_B];
      let next = Infinity;
      const period = this.periodMs();
      if (b & REG_B_PIE && period > 0) next = Math.min(next, (Math.floor(now / period) + 1) * period);
      if (this.running && b & (REG_B_UIE | REG_B_AIE)) {
        const offset = this.offset;
        const second = Math.floor((now + offset) / 1000);
        if (b & REG_B_UIE) next = Math.min(next, (second + 1) * 1000 - offset);
        if (b & REG_B_AIE) {
          const alarm = this.nextAlarmSecond(second);
          if (alarm !== undefined) next = Math.min(next, alarm * 1000 - offset);
        }
      }
      return next - now;
    });
  }

  /** Platform reset: register B loses its interrupt enables and C its flags (the datasheet's RESET pin). */
  reset(): void {
    this.lock.with(() => {
      this.evaluate(this.clock());
      this.bank0[RTC_REG_B] &= ~(REG_B_PIE | REG_B_AIE | REG_B_UIE | REG_B_SQWE);
      this.bank0[RTC_REG_C] = 0;
      this.updateIrq();
      this.bumpWake();
    });
  }

  saveState(): DeviceSnapshot {
    return this.lock.with(() => {
      this.evaluate(this.clock());
      return {
        kind: 'cmos-rtc',
        version: 1,
        data: { registers: bytesToJson(this.s.slice(SAVED_FROM, STATE_BYTES)), offsetMs: this.offset },
      };
    });
  }

  restoreState(snapshot: DeviceSnapshot): void {
    expectSnapshot(this.name, snapshot, 'cmos-rtc', 1);
    const bytes = new Uint8Array(STATE_BYTES - SAVED_FROM);
    jsonToBytes(this.name, 'registers', snapshot.data.registers, bytes);
    const offset = snapshot.data.offsetMs;
    if (typeof offset !== 'number' || !Number.isFinite(offset))
      throw new DeviceStateError(this.name, `has clock offset ${JSON.stringify(offset)}, not a number`);
    if (bytes[S_INDEX - SAVED_FROM] > 0x7f || bytes[S_EXT_INDEX - SAVED_FROM] > 0x7f)
      throw new DeviceStateError(this.name, 'has an index register above 0x7F');
    this.lock.with(() => {
      const level = this.s[S_IRQ_LEVEL];
      this.s.set(bytes, SAVED_FROM);
      this.offset = offset;
      this.floats[S_LAST_EVAL / 8] = this.clock();
      // Drive this VM's line to the saved level, whatever it was here.
      this.s[S_IRQ_LEVEL] = level;
      this.updateIrq();
      this.bumpWake();
    });
  }

  // ---- everything below runs with the lock held ----

  private get offset(): number {
    return this.floats[S_OFFSET / 8];
  }

  private set offset(value: number) {
    this.floats[S_OFFSET / 8] = value;
  }

  /** The clock advances: SET is off and the divider is not held in reset (QEMU's rtc_running). */
  private get running(): boolean {
    return !(this.bank0[RTC_REG_B] & REG_B_SET) && (this.bank0[RTC_REG_A] & REG_A_DV_MASK) <= REG_A_DV_RUNNING_MAX;
  }

  /** The periodic interrupt's period in ms (0: off), from rate select RS3-0 with the 32.768 kHz time base. */
  private periodMs(): number {
    const a = this.bank0[RTC_REG_A];
    if ((a & REG_A_DV_MASK) > REG_A_DV_RUNNING_MAX) return 0; // divider chain in reset: no periodic output
    let rs = a & REG_A_RS_MASK;
    if (rs === 0) return 0;
    if (rs <= 2) rs += 7; // 256 Hz and 128 Hz, as RS = 8 and 9
    return ((1 << (rs - 1)) / 32768) * 1000;
  }

  private readRegister(index: number): number {
    const bank0 = this.bank0;
    switch (index) {
      case RTC_SECONDS:
      case RTC_MINUTES:
      case RTC_HOURS:
      case RTC_DAY_OF_WEEK:
      case RTC_DAY_OF_MONTH:
      case RTC_MONTH:
      case RTC_YEAR:
      case RTC_CENTURY:
        if (this.running) this.latchTime(this.clock() + this.offset);
        return bank0[index];
      case RTC_REG_A: {
        let uip = 0;
        if (this.running) {
          const t = this.clock() + this.offset;
          if (t - Math.floor(t / 1000) * 1000 >= 1000 - UIP_LEAD_MS) uip = REG_A_UIP;
        }
        return (bank0[RTC_REG_A] & ~REG_A_UIP) | uip;
      }
      case RTC_REG_C: {
        this.evaluate(this.clock());
        const value = bank0[RTC_REG_C];
        bank0[RTC_REG_C] = 0;
        if (this.s[S_IRQ_LEVEL]) {
          this.updateIrq();
          this.bumpWake(); // the timer waits for this before it arms the next interrupt
        }
        return value;
      }
      case RTC_REG_D:
        return REG_D_VRT;
      default:
        return bank0[index];
    }
  }

  private writeRegister(index: number, value: number): void {
    const bank0 = this.bank0;
    switch (index) {
      case RTC_SECONDS:
      case RTC_MINUTES:
      case RTC_HOURS:
      case RTC_DAY_OF_WEEK:
      case RTC_DAY_OF_MONTH:
      case RTC_MONTH:
      case RTC_YEAR:
      case RTC_CENTURY:
        if (!this.running) {
          bank0[index] = value; // frozen: the new time takes effect when the clock runs again
          return;
        }
        {
          // Running: the clock continues from the new value, within the same fraction of a second.
          const now = this.clock();
          this.evaluate(now);
          const t = now + this.offset;
          this.latchTime(t);
          bank0[index] = value;
          this.offset = this.latchedTime() + (t - Math.floor(t / 1000) * 1000) - now;
          this.floats[S_LAST_EVAL / 8] = now;
          this.bumpWake();
        }
        return;
      case RTC_REG_A:
        this.changeControl(value & ~REG_A_UIP, bank0[RTC_REG_B]);
        return;
      case RTC_REG_B:
        // Setting SET clears UIE (datasheet: "UIE is cleared … when the SET bit goes high").
        this.changeControl(bank0[RTC_REG_A], value & REG_B_SET ? value & ~REG_B_UIE : value);
        return;
      case RTC_REG_C:
      case RTC_REG_D:
        return; // read-only
      default:
        bank0[index] = value;
    }
  }

  /** Register A or B changes: the clock may stop (time latched) or start (offset from the latched time). */
  private changeControl(a: number, b: number): void {
    const now = this.clock();
    this.evaluate(now);
    const wasRunning = this.running;
    const wasInReset = (this.bank0[RTC_REG_A] & REG_A_DV_MASK) > REG_A_DV_RUNNING_MAX;
    if (wasRunning) this.latchTime(now + this.offset);
    this.bank0[RTC_REG_A] = a;
    this.bank0[RTC_REG_B] = b;
    if (!wasRunning && this.running) {
      // Leaving divider reset, the first update comes 500 ms later (datasheet "Divider Stages"); leaving SET, a
      // full second later.
      const fraction = wasInReset && (a & REG_A_DV_MASK) <= REG_A_DV_RUNNING_MAX ? 500 : 0;
      this.offset = this.latchedTime() + fraction - now;
    }
    this.floats[S_LAST_EVAL / 8] = now;
    this.updateIrq();
    this.bumpWake();
  }

  private encode(v: number): number {
    return this.bank0[RTC_REG_B] & REG_B_DM ? v : toBcd(v);
  }

  private decode(v: number): number {
    return this.bank0[RTC_REG_B] & REG_B_DM ? v : fromBcd(v);
  }

  private encodeHour(hour: number): number {
    if (this.bank0[RTC_REG_B] & REG_B_24H) return this.encode(hour);
    return this.encode(hour % 12 || 12) | (hour >= 12 ? 0x80 : 0);
  }

  private decodeHour(v: number): number {
    if (this.bank0[RTC_REG_B] & REG_B_24H) return this.decode(v);
    return (this.decode(v & 0x7f) % 12) + (v & 0x80 ? 12 : 0);
  }

  /** Writes guest time `t` (ms since the epoch) into the time registers and the century byte. */
  private latchTime(t: number): void {
    const d = new Date(t);
    const b = this.bank0;
    b[RTC_SECONDS] = this.encode(d.getUTCSeconds());
    b[RTC_MINUTES] = this.encode(d.getUTCMinutes());
    b[RTC_HOURS] = this.encodeHour(d.getUTCHours());
    b[RTC_DAY_OF_WEEK] = this.encode(d.getUTCDay() + 1);
    b[RTC_DAY_OF_MONTH] = this.encode(d.getUTCDate());
    b[RTC_MONTH] = this.encode(d.getUTCMonth() + 1);
    const year = d.getUTCFullYear();
    b[RTC_YEAR] = this.encode(year % 100);
    b[RTC_CENTURY] = this.encode(Math.floor(year / 100) % 100);
  }

  /** The time the registers hold, in ms since the epoch (whole seconds); out-of-range fields roll over. */
  private latchedTime(): number {
    const b = this.bank0;
    let century = this.decode(b[RTC_CENTURY]);
    if (century < 19 || century > 99) century = 20; // a guest that never wrote the century byte
    const t = Date.UTC(
      century * 100 + this.decode(b[RTC_YEAR]),
      this.decode(b[RTC_MONTH]) - 1,
      this.decode(b[RTC_DAY_OF_MONTH]),
      this.decodeHour(b[RTC_HOURS]),
      this.decode(b[RTC_MINUTES]),
      this.decode(b[RTC_SECONDS]),
    );
    return Number.isFinite(t) ? t : Date.UTC(2000, 0, 1);
  }

  /** One alarm byte: undefined for "don't care" (0xC0-0xFF), else its value (possibly out of range). */
  private alarmField(index: number, hour = false): number | undefined {
    const v = this.bank0[index];
    if ((v & ALARM_DONT_CARE) === ALARM_DONT_CARE) return undefined;
    return hour ? this.decodeHour(v) : this.decode(v);
  }

  /** The first second (since the epoch, guest time) after `afterSecond` at which the alarm matches. */
  private nextAlarmSecond(afterSecond: number): number | undefined {
    const h = this.alarmField(RTC_HOURS_ALARM, true);
    const m = this.alarmField(RTC_MINUTES_ALARM);
    const s = this.alarmField(RTC_SECONDS_ALARM);
    if ((h !== undefined && h > 23) || (m !== undefined && m > 59) || (s !== undefined && s > 59)) return undefined;
    const dayStart = Math.floor(afterSecond / 86400) * 86400;
    const from = afterSecond - dayStart + 1; // second of the day to start looking at
    const find = (start: number): number | undefined => {
      // Smallest second of the day ≥ start that matches; at most 24 × 60 steps.
      for (let hh = h ?? Math.floor(start / 3600); hh < 24 && (h === undefined || hh === h); hh++) {
        for (let mm = m ?? 0; mm < 60 && (m === undefined || mm === m); mm++) {
          const minute = hh * 3600 + mm * 60;
          if (minute + 59 < start) continue;
          if (s === undefined) return Math.max(minute, start);
          if (minute + s >= start) return minute + s;
        }
      }
      return undefined;
    };
    const today = from < 86400 ? find(from) : undefined;
    if (today !== undefined) return dayStart + today;
    const tomorrow = find(0);
    return tomorrow === undefined ? undefined : dayStart + 86400 + tomorrow;
  }

  /** Adds the events between the last evaluation and `now` (host ms) to register C. */
  private evaluate(now: number): void {
    const last = this.floats[S_LAST_EVAL / 8];
    if (!(now > last)) return;
    let flags = 0;
    const period = this.periodMs();
    // The divider keeps running while SET is on: periodic flags continue.
    if (period > 0 && Math.floor(now / period) > Math.floor(last / period)) flags |= REG_C_PF;
    if (this.running) {
      const offset = this.offset;
      const from = Math.floor((last + offset) / 1000);
      const to = Math.floor((now + offset) / 1000);
      if (to > from) {
        flags |= REG_C_UF;
        const alarm = this.nextAlarmSecond(from);
        if (alarm !== undefined && alarm <= to) flags |= REG_C_AF;
      }
    }
    this.floats[S_LAST_EVAL / 8] = now;
    if (flags) {
      this.bank0[RTC_REG_C] |= flags;
      this.updateIrq();
    }
  }

  /** IRQF from the flags and enables; the line follows IRQF (it falls only when C is read and cleared). */
  private updateIrq(): void {
    const b = this.bank0[RTC_REG_B];
    let c = this.bank0[RTC_REG_C] & ~REG_C_IRQF;
    if (c & b & (REG_C_PF | REG_C_AF | REG_C_UF)) c |= REG_C_IRQF;
    // PIE/AIE/UIE are bits 6/5/4 of B, the same positions as PF/AF/UF in C.
    this.bank0[RTC_REG_C] = c;
    const level = c & REG_C_IRQF ? 1 : 0;
    if (level === this.s[S_IRQ_LEVEL]) return;
    this.s[S_IRQ_LEVEL] = level;
    this.irq.set(level === 1);
  }

  private bumpWake(): void {
    Atomics.add(this.wake, 0, 1);
    Atomics.notify(this.wake, 0);
  }
}

/**
 * Drives the RTC's interrupts without the guest polling: on the I/O thread, sleeps until the next enabled event
 * or until a register write (any thread) wakes it, then lets the RTC add the events and raise IRQ 8.
 */
export function startCmosRtcTimers(rtc: CmosRtc): { stop(): void } {
  let stopped = false;
  const loop = async (): Promise<void> => {
    while (!stopped) {
      const seen = Atomics.load(rtc.wake, 0);
      const delay = rtc.poll();
      const w = Atomics.waitAsync(rtc.wake, 0, seen);
      if (!w.async) continue; // woken between poll() and here: look again
      // A pending waitAsync does not keep the event loop alive; a timer does (also the deadline when there is none).
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        w.value,
        new Promise((resolve) => {
          timer = setTimeout(resolve, Math.min(Math.max(0, Math.ceil(delay)), IDLE_RECHECK_MS));
        }),
      ]);
      clearTimeout(timer);
    }
  };
  void loop();
  return {
    stop() {
      stopped = true;
      Atomics.add(rtc.wake, 0, 1);
      Atomics.notify(rtc.wake, 0);
    },
  };
}

/** The MC146818A RTC and CMOS RAM of a PC (registry kind "cmos-rtc"). */
export const cmosRtcModel: DeviceModel<SharedArrayBuffer> = {
  kind: 'cmos-rtc',
  summary: 'MC146818A real-time clock and CMOS RAM at 0x70-0x73, IRQ 8',
  options: { base: Type.Optional(Type.Union([Type.Literal('utc'), Type.Literal('localtime')])) },
  bus: 'platform',
  create: (options, ctx) =>
    CmosRtc.createState(ctx.machine, { base: options.base === 'localtime' ? 'localtime' : 'utc' }),
  describe: () => ({
    acpi: [
      device(
        'RTC_',
        name('_HID', eisaId('PNP0B00')), // AT real-time clock
        name(
          '_CRS',
          resourceTemplate(
            ioPort(RTC_INDEX_PORT, RTC_INDEX_PORT, 0x01, 2),
            ioPort(RTC_EXT_INDEX_PORT, RTC_EXT_INDEX_PORT, 0x01, 2),
            irqNoFlags(RTC_IRQ),
          ),
        ),
      ),
    ],
    legacy: { rtc: true },
  }),
  attach(state, ctx) {
    const rtc = new CmosRtc(state, { irq: ctx.irqLine(RTC_IRQ) });
    ctx.pio.register(RTC_INDEX_PORT, 4, rtc);
    return rtc;
  },
  serve(_state, device) {
    if (device instanceof CmosRtc) startCmosRtcTimers(device);
  },
};
