// The PC keyboard controller (Intel 8042 / "8042-compatible", as IBM's PC AT and PS/2 Technical References
// describe it) with a PS/2 keyboard on its first port and a PS/2 mouse (IntelliMouse-compatible) on its second:
// port 0x60 data, 0x64 status (read) / command (write), IRQ 1 for keyboard data, IRQ 12 for mouse data. Behaviour
// where a VMM must choose follows QEMU's hw/input/pckbd.c and ps2.c, and what SeaBIOS (src/hw/ps2port.c) and
// Linux (drivers/input/serio/i8042.c, keyboard/atkbd.c, mouse/psmouse-base.c) expect.
//
// Data path: the keyboard and the mouse each keep a queue of bytes they have sent; the controller moves one byte
// at a time into its output buffer when that is empty — its own replies first, then the keyboard's, then the
// mouse's, each only while that port is enabled — translating keyboard bytes to set 1 when XLATE is set.
// The status register's AUXB tells whose byte it is. IRQ 1 / IRQ 12 follow "output buffer full with a keyboard /
// mouse byte, and that port's interrupt enabled": a line rises when a byte is put into the buffer and falls when
// the guest reads it, so each byte is one edge on the PIC.
//
// Threads: port exits arrive on vCPU threads, host input (InputSink: the RFB server, the web UI) on whichever
// thread calls it. All state is in one SharedArrayBuffer guarded by a SharedLock; each thread builds its own
// I8042 over it, with its own IRQ lines (KVM_IRQ_LINE works from any thread), and drives them while holding the
// lock, so line changes happen in the order of the state changes that caused them.
//
// Simplifications: the keyboard answers at once (no BAT delay), typematic repeat is the host's (it sends repeated
// key-down events), scan code set 3 is accepted but keys are sent in set 2; the mouse ignores sample rate,
// resolution and 2:1 scaling for the motion it reports (they are stored and read back by E9).
import { device, eisaId, ioPort, irqNoFlags, name, resourceTemplate } from '../../arch/x86_64/acpi/aml.js';
import { SharedLock } from '../../base/shared-lock.js';
import type { IrqLine } from '../../base/irq-line.js';
import type { InputSink } from '../../display/source.js';
import type { PortIoDevice } from '../bus.js';
import {
  bytesToJson,
  DeviceStateError,
  expectSnapshot,
  jsonToBytes,
  type AttachedDevice,
  type DeviceModel,
  type DeviceSnapshot,
} from '../model.js';
import { modifierOf, set2Sequence, translateSet2, XLATE_TABLE } from './ps2-scancodes.js';

export const I8042_DATA_PORT = 0x60;
export const I8042_COMMAND_PORT = 0x64;
export const I8042_KBD_IRQ = 1;
export const I8042_AUX_IRQ = 12;

// Status register (port 0x64 read).
export const STATUS_OBF = 0x01;
export const STATUS_IBF = 0x02;
export const STATUS_SYS = 0x04;
export const STATUS_A2 = 0x08; // the last write was to the command port
export const STATUS_UNLOCKED = 0x10; // keyboard not inhibited by the keylock
export const STATUS_AUXB = 0x20; // the output buffer holds a mouse byte

// Controller command byte ("CTR").
export const CTR_KBDINT = 0x01;
export const CTR_AUXINT = 0x02;
export const CTR_SYS = 0x04;
export const CTR_KBDDIS = 0x10;
export const CTR_AUXDIS = 0x20;
export const CTR_XLATE = 0x40;

// Output port (commands 0xD0/0xD1).
export const OUTPORT_RESET = 0x01; // active low: writing 0 resets the processor
export const OUTPORT_A20 = 0x02;
const OUTPORT_KBD_OBF = 0x10;
const OUTPORT_AUX_OBF = 0x20;
const OUTPORT_POWER_ON = 0xcf; // reset high, A20 on, the unused lines high (QEMU's value)

const ACK = 0xfa;
const RESEND = 0xfe;
const BAT_OK = 0xaa;

const SRC_NONE = 0;
const SRC_KBD = 1;
const SRC_AUX = 2;

const KBD_QUEUE = 64;
const AUX_QUEUE = 256;
const CTRL_QUEUE = 16;
/** A mouse packet is at most 4 bytes; at most this many are built per call so one call stays short. */
const PACKETS_PER_FLUSH = 16;
/** Accumulated motion is held within ±this (a host flooding motion must not overflow anything). */
const MOTION_LIMIT = 1 << 20;

// Shared state layout (byte offsets): the lock, three Int32 motion accumulators, then bytes.
const S_LOCK = 0;
const S_DX = 4; // Int32 × 3: dx, dy (positive up), dz (positive down), not yet sent
const S_CTR = 16;
const S_A2 = 17;
const S_OUTPORT = 18;
const S_PENDING = 19; // controller command waiting for its data byte (0: none)
const S_OBF_BYTE = 20;
const S_OBF_SRC = 21;
const S_KBD_IRQ = 22;
const S_AUX_IRQ = 23;
const S_XLATE_BREAK = 24; // an F0 was swallowed by translation: the next keyboard byte gets bit 7
const S_SYS = 25;
const S_K_SCAN = 26;
const S_K_SET = 27;
const S_K_LEDS = 28;
const S_K_TYPEMATIC = 29;
const S_K_PENDING = 30; // keyboard command waiting for its argument
const S_K_LAST = 31;
const S_K_MODS = 32;
const S_M_ENABLED = 33;
const S_M_REMOTE = 34;
const S_M_WRAP = 35;
const S_M_SCALING = 36;
const S_M_RESOLUTION = 37;
const S_M_RATE = 38;
const S_M_ID = 39;
const S_M_PENDING = 40;
const S_M_RATES = 41; // three bytes: the last sample rates set, oldest first (IntelliMouse detection)
const S_M_BUTTONS = 44; // PS/2 order: bit 0 left, 1 right, 2 middle
const S_M_DIRTY = 45; // buttons changed since the last packet
const S_M_LAST = 46;
const S_M_HOST_BUTTONS = 47; // the host's last button mask (wheel edges)
const S_CTRL_HEAD = 48;
const S_CTRL_COUNT = 49;
const S_KBD_HEAD = 50;
const S_KBD_COUNT = 51;
const S_AUX_HEAD = 52; // 16 bits
const S_AUX_COUNT = 54; // 16 bits
const S_CTRL_DATA = 64; // CTRL_QUEUE bytes
const S_CTRL_SRC = S_CTRL_DATA + CTRL_QUEUE;
const S_KBD_DATA = S_CTRL_SRC + CTRL_QUEUE;
const S_AUX_DATA = S_KBD_DATA + KBD_QUEUE;
const STATE_BYTES = S_AUX_DATA + AUX_QUEUE;

const KBD_DEFAULT_TYPEMATIC = 0x2b; // 10.9 characters/s after 500 ms
const MOUSE_DEFAULT_RATE = 100;
const MOUSE_DEFAULT_RESOLUTION = 2; // 4 counts/mm

function keyboardDefaults(s: Uint8Array): void {
  s[S_K_SET] = 2;
  s[S_K_LEDS] = 0;
  s[S_K_TYPEMATIC] = KBD_DEFAULT_TYPEMATIC;
  s[S_K_PENDING] = 0;
}

function mouseDefaults(s: Uint8Array, m: Int32Array): void {
  s[S_M_ENABLED] = 0;
  s[S_M_REMOTE] = 0;
  s[S_M_SCALING] = 0;
  s[S_M_RESOLUTION] = MOUSE_DEFAULT_RESOLUTION;
  s[S_M_RATE] = MOUSE_DEFAULT_RATE;
  s[S_M_PENDING] = 0;
  s[S_M_DIRTY] = 0;
  m[0] = m[1] = m[2] = 0;
}

/** Power-on state of controller, keyboard and mouse (queues empty; IRQ levels left alone). */
function powerOn(s: Uint8Array, motion: Int32Array): void {
  s[S_CTR] = CTR_KBDINT | CTR_AUXINT;
  s[S_A2] = 1;
  s[S_SYS] = 0;
  s[S_OUTPORT] = OUTPORT_POWER_ON;
  s[S_PENDING] = 0;
  s[S_OBF_SRC] = SRC_NONE;
  s[S_XLATE_BREAK] = 0;
  s[S_CTRL_HEAD] = s[S_CTRL_COUNT] = 0;
  s[S_KBD_HEAD] = s[S_KBD_COUNT] = 0;
  s[S_AUX_HEAD] = s[S_AUX_HEAD + 1] = s[S_AUX_COUNT] = s[S_AUX_COUNT + 1] = 0;
  keyboardDefaults(s);
  s[S_K_SCAN] = 1;
  s[S_K_MODS] = 0;
  s[S_K_LAST] = 0;
  mouseDefaults(s, motion);
  s[S_M_WRAP] = 0;
  s[S_M_ID] = 0;
  s[S_M_BUTTONS] = 0;
  s[S_M_HOST_BUTTONS] = 0;
  s[S_M_RATES] = s[S_M_RATES + 1] = s[S_M_RATES + 2] = 0;
  s[S_M_LAST] = 0;
}

export interface I8042Options {
  readonly kbdIrq: IrqLine;
  readonly auxIrq: IrqLine;
  /** The guest asked for a reset (command 0xFE, a pulse of output line 0, output port bit 0 written as 0). */
  readonly reset: (why: string) => void;
}

export class I8042 implements PortIoDevice, AttachedDevice, InputSink {
  readonly name = 'i8042';
  private readonly lock: SharedLock;
  private readonly s: Uint8Array;
  private readonly motion: Int32Array;
  private readonly aux16: Uint16Array;
  private readonly kbdIrq: IrqLine;
  private readonly auxIrq: IrqLine;
  private readonly requestReset: (why: string) => void;
  /** A reset the guest asked for while the lock was held: made after it is released. */
  private resetReason: string | undefined;

  static createState(): SharedArrayBuffer {
    const state = new SharedArrayBuffer(STATE_BYTES);
    powerOn(new Uint8Array(state), new Int32Array(state, S_DX, 3));
    return state;
  }

  constructor(state: SharedArrayBuffer, options: I8042Options) {
    if (state.byteLength < STATE_BYTES)
      throw new RangeError(`i8042: the shared state has ${state.byteLength} bytes, needs ${STATE_BYTES}`);
    this.lock = new SharedLock(state, S_LOCK);
    this.s = new Uint8Array(state, 0, STATE_BYTES);
    this.motion = new Int32Array(state, S_DX, 3);
    this.aux16 = new Uint16Array(state, S_AUX_HEAD, 2);
    this.kbdIrq = options.kbdIrq;
    this.auxIrq = options.auxIrq;
    this.requestReset = options.reset;
  }

  // ---- the guest's side ----

  pioRead(offset: number): number {
    return this.locked(() => (offset === 0 ? this.readData() : this.status()));
  }

  pioWrite(offset: number, _size: number, value: number): void {
    this.locked(() => (offset === 0 ? this.writeData(value & 0xff) : this.writeCommand(value & 0xff)));
  }

  /** Fast A20 as the guest last set it through the output port (KVM has no A20 mask: recorded only). */
  get a20(): boolean {
    return (Atomics.load(this.s, S_OUTPORT) & OUTPORT_A20) !== 0;
  }

  // ---- the host's side (InputSink) ----

  key(scancode: number, down: boolean): void {
    this.locked(() => {
      const s = this.s;
      const mod = modifierOf(scancode);
      if (mod) s[S_K_MODS] = down ? s[S_K_MODS] | mod : s[S_K_MODS] & ~mod;
      if (!s[S_K_SCAN]) return; // a disabled keyboard does not scan
      let bytes = set2Sequence(scancode, down, s[S_K_MODS]);
      if (s[S_K_SET] === 1) bytes = translateSet2(bytes);
      if (bytes.length === 0 || KBD_QUEUE - s[S_KBD_COUNT] < bytes.length) return; // full: the key is lost
      for (const b of bytes) this.kbdPush(b);
      this.refill();
    });
  }

  pointer(dx: number, dy: number, buttons: number): void {
    this.locked(() => {
      const s = this.s;
      const m = this.motion;
      const rising = buttons & ~s[S_M_HOST_BUTTONS];
      s[S_M_HOST_BUTTONS] = buttons & 0xff;
      const ps2Buttons = (buttons & 1) | ((buttons & 4) >> 1) | ((buttons & 2) << 1);
      if (ps2Buttons !== s[S_M_BUTTONS]) {
        s[S_M_BUTTONS] = ps2Buttons;
        s[S_M_DIRTY] = 1;
      }
      // A stream-mode mouse that is not enabled discards motion; remote mode keeps it for "read data".
      if (!s[S_M_ENABLED] && !s[S_M_REMOTE]) {
        s[S_M_DIRTY] = 0;
        return;
      }
      const clamp = (v: number): number => Math.max(-MOTION_LIMIT, Math.min(MOTION_LIMIT, v));
      m[0] = clamp(m[0] + (Number.isFinite(dx) ? Math.trunc(dx) : 0));
      m[1] = clamp(m[1] - (Number.isFinite(dy) ? Math.trunc(dy) : 0)); // PS/2: positive is up
      // Wheel notches arrive as presses of buttons 4/5 (bits 3/4); PS/2 Z is positive downwards.
      m[2] = s[S_M_ID] === 0 ? 0 : clamp(m[2] + (rising & 0x10 ? 1 : 0) - (rising & 0x08 ? 1 : 0));
      this.flushMouse();
      this.refill();
    });
  }

  leds(): number {
    return Atomics.load(this.s, S_K_LEDS) & 7;
  }

  // ---- platform ----

  /** Platform reset: controller, keyboard and mouse in their power-on state, both lines low. */
  reset(): void {
    this.locked(() => {
      powerOn(this.s, this.motion);
      this.updateIrqs();
    });
  }

  saveState(): DeviceSnapshot {
    return this.lock.with(() => ({
      kind: 'i8042',
      version: 1,
      data: { state: bytesToJson(this.s.slice(S_DX, STATE_BYTES)) },
    }));
  }

  restoreState(snapshot: DeviceSnapshot): void {
    expectSnapshot(this.name, snapshot, 'i8042', 1);
    const bytes = new Uint8Array(STATE_BYTES - S_DX);
    jsonToBytes(this.name, 'state', snapshot.data.state, bytes);
    const at = (offset: number): number => bytes[offset - S_DX];
    const at16 = (offset: number): number => at(offset) | (at(offset + 1) << 8);
    const problems: string[] = [];
    if (at(S_CTRL_HEAD) >= CTRL_QUEUE || at(S_CTRL_COUNT) > CTRL_QUEUE) problems.push('controller queue');
    if (at(S_KBD_HEAD) >= KBD_QUEUE || at(S_KBD_COUNT) > KBD_QUEUE) problems.push('keyboard queue');
    if (at16(S_AUX_HEAD) >= AUX_QUEUE || at16(S_AUX_COUNT) > AUX_QUEUE) problems.push('mouse queue');
    if (at(S_OBF_SRC) > SRC_AUX) problems.push('output buffer source');
    for (let i = 0; i < CTRL_QUEUE; i++) if (at(S_CTRL_SRC + i) > SRC_AUX) problems.push('controller queue source');
    if (problems.length) throw new DeviceStateError(this.name, `has an inconsistent ${problems[0]}`);
    this.locked(() => {
      const kbd = this.s[S_KBD_IRQ];
      const aux = this.s[S_AUX_IRQ];
      this.s.set(bytes, S_DX);
      // Drive this VM's lines to what the restored state implies, whatever they were here.
      this.s[S_KBD_IRQ] = kbd;
      this.s[S_AUX_IRQ] = aux;
      this.updateIrqs();
    });
  }

  // ---- everything below runs with the lock held ----

  private locked<T>(fn: () => T): T {
    let result: T;
    this.lock.lock();
    try {
      result = fn();
    } finally {
      this.lock.unlock();
    }
    const why = this.resetReason;
    if (why !== undefined) {
      this.resetReason = undefined;
      this.requestReset(why);
    }
    return result;
  }

  private status(): number {
    const s = this.s;
    const src = s[S_OBF_SRC];
    return (
      (src !== SRC_NONE ? STATUS_OBF : 0) |
      (src === SRC_AUX ? STATUS_AUXB : 0) |
      (s[S_SYS] ? STATUS_SYS : 0) |
      (s[S_A2] ? STATUS_A2 : 0) |
      STATUS_UNLOCKED
    );
  }

  private readData(): number {
    const s = this.s;
    const value = s[S_OBF_BYTE]; // an empty buffer reads its last byte again, as on the chip
    if (s[S_OBF_SRC] !== SRC_NONE) {
      s[S_OBF_SRC] = SRC_NONE;
      this.updateIrqs(); // the line falls…
      this.flushMouse(); // (room for motion held back)
      this.refill(); // …and rises again for the next byte
    }
    return value;
  }

  private writeCommand(cmd: number): void {
    const s = this.s;
    s[S_A2] = 1;
    s[S_PENDING] = 0; // a command cancels one still waiting for its data byte
    if (cmd >= 0x20 && cmd < 0x40) {
      this.reply(cmd === 0x20 ? s[S_CTR] : 0); // controller RAM: only byte 0, the command byte, is kept
    } else if (cmd >= 0x60 && cmd < 0x80) {
      s[S_PENDING] = cmd;
    } else if (cmd >= 0xf0) {
      // Pulse output lines 0-3 low for those bits that are 0; line 0 is the processor reset.
      if (!(cmd & 1)) this.resetReason = 'i8042';
    } else {
      switch (cmd) {
        case 0xa7:
          s[S_CTR] |= CTR_AUXDIS;
          break;
        case 0xa8:
          s[S_CTR] &= ~CTR_AUXDIS;
          break;
        case 0xa9: // mouse port test: 0 = no error
        case 0xab: // keyboard port test
          this.reply(0x00);
          break;
        case 0xaa: // controller self-test
          s[S_SYS] = 1;
          this.reply(0x55);
          break;
        case 0xad:
          s[S_CTR] |= CTR_KBDDIS;
          break;
        case 0xae:
          s[S_CTR] &= ~CTR_KBDDIS;
          break;
        case 0xc0: // input port: keyboard not inhibited
          this.reply(0x80);
          break;
        case 0xd0: {
          const src = s[S_OBF_SRC];
          this.reply(
            (s[S_OUTPORT] & ~(OUTPORT_KBD_OBF | OUTPORT_AUX_OBF)) |
              (src === SRC_KBD ? OUTPORT_KBD_OBF : 0) |
              (src === SRC_AUX ? OUTPORT_AUX_OBF : 0),
          );
          break;
        }
        case 0xd1:
        case 0xd2:
        case 0xd3:
        case 0xd4:
          s[S_PENDING] = cmd;
          break;
        case 0xdd: // HP Vectra A20 off / on
          s[S_OUTPORT] &= ~OUTPORT_A20;
          break;
        case 0xdf:
          s[S_OUTPORT] |= OUTPORT_A20;
          break;
        case 0xe0: // test inputs
          this.reply(0x00);
          break;
        default:
          break; // unknown commands are ignored
      }
    }
    this.refill();
  }

  private writeData(value: number): void {
    const s = this.s;
    s[S_A2] = 0;
    const pending = s[S_PENDING];
    s[S_PENDING] = 0;
    switch (pending) {
      case 0x60:
        s[S_CTR] = value;
        s[S_SYS] = value & CTR_SYS ? 1 : 0;
        this.updateIrqs(); // the interrupt enables may have changed
        break;
      case 0xd1:
        s[S_OUTPORT] = value;
        if (!(value & OUTPORT_RESET)) this.resetReason = 'i8042';
        break;
      case 0xd2: // as if the keyboard had sent it (not translated)
        this.reply(value, SRC_KBD);
        break;
      case 0xd3: // as if the mouse had sent it
        this.reply(value, SRC_AUX);
        break;
      case 0xd4:
        s[S_CTR] &= ~CTR_AUXDIS; // talking to the mouse enables its port (QEMU; what Linux's i8042 expects)
        this.mouseCommand(value);
        break;
      case 0:
        s[S_CTR] &= ~CTR_KBDDIS; // likewise for the keyboard
        this.keyboardCommand(value);
        break;
      default:
        break; // controller RAM bytes 1-31: not kept
    }
    this.refill();
  }

  private reply(value: number, src = SRC_KBD): void {
    const s = this.s;
    if (s[S_CTRL_COUNT] === CTRL_QUEUE) return; // a guest that never reads: the oldest replies stay
    const slot = (s[S_CTRL_HEAD] + s[S_CTRL_COUNT]) % CTRL_QUEUE;
    s[S_CTRL_DATA + slot] = value;
    s[S_CTRL_SRC + slot] = src;
    s[S_CTRL_COUNT]++;
  }

  // -- keyboard --

  private kbdPush(value: number): void {
    const s = this.s;
    if (s[S_KBD_COUNT] === KBD_QUEUE) return;
    s[S_KBD_DATA + ((s[S_KBD_HEAD] + s[S_KBD_COUNT]) % KBD_QUEUE)] = value;
    s[S_KBD_COUNT]++;
  }

  private kbdSend(...bytes: number[]): void {
    for (const b of bytes) this.kbdPush(b);
    this.s[S_K_LAST] = bytes[bytes.length - 1];
  }

  private keyboardCommand(value: number): void {
    const s = this.s;
    const pending = s[S_K_PENDING];
    if (pending) {
      s[S_K_PENDING] = 0;
      switch (pending) {
        case 0xed:
          s[S_K_LEDS] = value & 7;
          this.kbdSend(ACK);
          return;
        case 0xf3:
          s[S_K_TYPEMATIC] = value & 0x7f;
          this.kbdSend(ACK);
          return;
        default: // 0xF0
          if (value === 0) this.kbdSend(ACK, s[S_K_SET]);
          else {
            if (value <= 3) s[S_K_SET] = value;
            this.kbdSend(ACK);
          }
          return;
      }
    }
    switch (value) {
      case 0xff: // reset and self-test
        s[S_KBD_HEAD] = s[S_KBD_COUNT] = 0;
        s[S_XLATE_BREAK] = 0;
        keyboardDefaults(s);
        s[S_K_SCAN] = 1;
        this.kbdSend(ACK, BAT_OK);
        return;
      case 0xfe: // resend the last byte
        this.kbdPush(s[S_K_LAST]);
        return;
      case 0xf6: // set defaults and scan (QEMU's "reset and enable")
        keyboardDefaults(s);
        s[S_K_SCAN] = 1;
        this.kbdSend(ACK);
        return;
      case 0xf5: // set defaults and stop scanning
        keyboardDefaults(s);
        s[S_K_SCAN] = 0;
        this.kbdSend(ACK);
        return;
      case 0xf4:
        s[S_K_SCAN] = 1;
        this.kbdSend(ACK);
        return;
      case 0xed:
      case 0xf0:
      case 0xf3:
        s[S_K_PENDING] = value;
        this.kbdSend(ACK);
        return;
      case 0xf2: // identify: MF2 keyboard
        this.kbdSend(ACK, 0xab, 0x83);
        return;
      case 0xee:
        this.kbdSend(0xee);
        return;
      default:
        // 0xF7-0xFD: set 3 key types, accepted and ignored; anything else is not a command.
        this.kbdSend(value >= 0xf7 && value <= 0xfd ? ACK : RESEND);
    }
  }

  // -- mouse --

  private auxFree(): number {
    return AUX_QUEUE - this.aux16[1];
  }

  private auxPush(value: number): void {
    const q = this.aux16;
    if (q[1] === AUX_QUEUE) return;
    this.s[S_AUX_DATA + ((q[0] + q[1]) % AUX_QUEUE)] = value;
    q[1]++;
  }

  private auxSend(...bytes: number[]): void {
    for (const b of bytes) this.auxPush(b);
    this.s[S_M_LAST] = bytes[bytes.length - 1];
  }

  private mouseCommand(value: number): void {
    const s = this.s;
    if (s[S_M_WRAP] && value !== 0xec && value !== 0xff) {
      this.auxSend(value); // wrap (echo) mode
      return;
    }
    const pending = s[S_M_PENDING];
    if (pending) {
      s[S_M_PENDING] = 0;
      if (pending === 0xe8) s[S_M_RESOLUTION] = value & 3;
      else this.sampleRate(value);
      this.auxSend(ACK);
      return;
    }
    switch (value) {
      case 0xff: // reset: self-test passed, device ID 0
        this.aux16[0] = this.aux16[1] = 0;
        mouseDefaults(s, this.motion);
        s[S_M_WRAP] = 0;
        s[S_M_ID] = 0;
        this.auxSend(ACK, BAT_OK, 0x00);
        return;
      case 0xfe:
        this.auxPush(s[S_M_LAST]);
        return;
      case 0xf6: {
        const id = s[S_M_ID];
        mouseDefaults(s, this.motion);
        s[S_M_ID] = id;
        this.auxSend(ACK);
        return;
      }
      case 0xf5:
        s[S_M_ENABLED] = 0;
        this.auxSend(ACK);
        return;
      case 0xf4:
        s[S_M_ENABLED] = 1;
        this.auxSend(ACK);
        return;
      case 0xf3:
      case 0xe8:
        s[S_M_PENDING] = value;
        this.auxSend(ACK);
        return;
      case 0xf2:
        this.auxSend(ACK, s[S_M_ID]);
        return;
      case 0xf0:
        s[S_M_REMOTE] = 1;
        this.auxSend(ACK);
        return;
      case 0xea:
        s[S_M_REMOTE] = 0;
        this.auxSend(ACK);
        return;
      case 0xee:
        s[S_M_WRAP] = 1;
        this.auxSend(ACK);
        return;
      case 0xec:
        s[S_M_WRAP] = 0;
        this.auxSend(ACK);
        return;
      case 0xeb: // read data: one packet, even without motion
        this.auxSend(ACK);
        this.sendPacket();
        return;
      case 0xe9: {
        const b = s[S_M_BUTTONS]; // PS/2 order; the status byte has left in bit 2, middle 1, right 0
        const buttons = ((b & 1) << 2) | ((b & 4) >> 1) | ((b & 2) >> 1);
        this.auxSend(
          ACK,
          (s[S_M_REMOTE] << 6) | (s[S_M_ENABLED] << 5) | (s[S_M_SCALING] << 4) | buttons,
          s[S_M_RESOLUTION],
          s[S_M_RATE],
        );
        return;
      }
      case 0xe7:
        s[S_M_SCALING] = 1;
        this.auxSend(ACK);
        return;
      case 0xe6:
        s[S_M_SCALING] = 0;
        this.auxSend(ACK);
        return;
      default:
        this.auxSend(RESEND);
    }
  }

  /** Sets the sample rate; the magic sequences 200, 100, 80 (IntelliMouse) and 200, 200, 80 (Explorer) change the ID. */
  private sampleRate(rate: number): void {
    const s = this.s;
    s[S_M_RATE] = rate;
    s[S_M_RATES] = s[S_M_RATES + 1];
    s[S_M_RATES + 1] = s[S_M_RATES + 2];
    s[S_M_RATES + 2] = rate;
    const [a, b, c] = [s[S_M_RATES], s[S_M_RATES + 1], s[S_M_RATES + 2]];
    if (a === 200 && b === 100 && c === 80 && s[S_M_ID] === 0) s[S_M_ID] = 3;
    else if (a === 200 && b === 200 && c === 80 && s[S_M_ID] === 3) s[S_M_ID] = 4;
  }

  private packetSize(): number {
    return this.s[S_M_ID] === 0 ? 3 : 4;
  }

  /** Builds one packet from the accumulated motion (what fits in it) and the buttons. */
  private sendPacket(): void {
    const s = this.s;
    const m = this.motion;
    const dx = Math.max(-255, Math.min(255, m[0]));
    const dy = Math.max(-255, Math.min(255, m[1]));
    const id = s[S_M_ID];
    const dz = id === 4 ? Math.max(-8, Math.min(7, m[2])) : id === 3 ? Math.max(-127, Math.min(127, m[2])) : 0;
    m[0] -= dx;
    m[1] -= dy;
    m[2] -= dz;
    s[S_M_DIRTY] = 0;
    const bytes = [0x08 | (s[S_M_BUTTONS] & 7) | (dx < 0 ? 0x10 : 0) | (dy < 0 ? 0x20 : 0), dx & 0xff, dy & 0xff];
    if (id === 3) bytes.push(dz & 0xff);
    else if (id === 4) bytes.push(dz & 0x0f);
    this.auxSend(...bytes);
  }

  /** Stream mode: turns accumulated motion and button changes into packets while the mouse queue has room. */
  private flushMouse(): void {
    const s = this.s;
    if (!s[S_M_ENABLED] || s[S_M_REMOTE] || s[S_M_WRAP]) return;
    const m = this.motion;
    for (let i = 0; i < PACKETS_PER_FLUSH; i++) {
      if (!s[S_M_DIRTY] && m[0] === 0 && m[1] === 0 && (m[2] === 0 || s[S_M_ID] === 0)) return;
      if (this.auxFree() < this.packetSize()) return;
      this.sendPacket();
    }
  }

  // -- the controller's output buffer --

  /** Loads the next byte into an empty output buffer: replies, then keyboard, then mouse (enabled ports only). */
  private refill(): void {
    const s = this.s;
    if (s[S_OBF_SRC] === SRC_NONE) {
      if (s[S_CTRL_COUNT] > 0) {
        const head = s[S_CTRL_HEAD];
        this.load(s[S_CTRL_DATA + head], s[S_CTRL_SRC + head] === SRC_AUX ? SRC_AUX : SRC_KBD);
        s[S_CTRL_HEAD] = (head + 1) % CTRL_QUEUE;
        s[S_CTRL_COUNT]--;
      } else if (!(s[S_CTR] & CTR_KBDDIS) && s[S_KBD_COUNT] > 0) {
        this.loadKeyboardByte();
      }
      if (s[S_OBF_SRC] === SRC_NONE && !(s[S_CTR] & CTR_AUXDIS) && this.aux16[1] > 0) {
        const q = this.aux16;
        this.load(s[S_AUX_DATA + q[0]], SRC_AUX);
        q[0] = (q[0] + 1) % AUX_QUEUE;
        q[1]--;
      }
    }
    this.updateIrqs();
  }

  private loadKeyboardByte(): void {
    const s = this.s;
    while (s[S_KBD_COUNT] > 0) {
      const head = s[S_KBD_HEAD];
      let value = s[S_KBD_DATA + head];
      s[S_KBD_HEAD] = (head + 1) % KBD_QUEUE;
      s[S_KBD_COUNT]--;
      if (s[S_CTR] & CTR_XLATE) {
        if (value === 0xf0) {
          s[S_XLATE_BREAK] = 1; // becomes bit 7 of the next code
          continue;
        }
        value = XLATE_TABLE[value] | (s[S_XLATE_BREAK] ? 0x80 : 0);
        s[S_XLATE_BREAK] = 0;
      }
      this.load(value, SRC_KBD);
      return;
    }
  }

  private load(value: number, src: number): void {
    this.s[S_OBF_BYTE] = value;
    this.s[S_OBF_SRC] = src;
  }

  private updateIrqs(): void {
    const s = this.s;
    const src = s[S_OBF_SRC];
    const kbd = src === SRC_KBD && s[S_CTR] & CTR_KBDINT ? 1 : 0;
    const aux = src === SRC_AUX && s[S_CTR] & CTR_AUXINT ? 1 : 0;
    if (kbd !== s[S_KBD_IRQ]) {
      s[S_KBD_IRQ] = kbd;
      this.kbdIrq.set(kbd === 1);
    }
    if (aux !== s[S_AUX_IRQ]) {
      s[S_AUX_IRQ] = aux;
      this.auxIrq.set(aux === 1);
    }
  }
}

/**
 * The host's way into the PS/2 keyboard and mouse of an attached i8042 (on the thread that attached it, e.g. the
 * I/O thread's device set: `i8042InputSink(set.find('i8042'))`); undefined for anything else.
 */
export function i8042InputSink(device: AttachedDevice | undefined): InputSink | undefined {
  return device instanceof I8042 ? device : undefined;
}

/**
 * An InputSink over the i8042's shared state for a thread that has no device set (a worker of its own): it
 * drives IRQ 1 and 12 through `irqLine` (Vm.irqLine on the VM's fd works from any thread).
 */
export function i8042InputSinkFor(
  state: SharedArrayBuffer,
  irqLine: (irq: number) => IrqLine,
  reset: (why: string) => void = () => undefined,
): InputSink {
  return new I8042(state, { kbdIrq: irqLine(I8042_KBD_IRQ), auxIrq: irqLine(I8042_AUX_IRQ), reset });
}

/** The PS/2 keyboard and mouse controller of a PC (registry kind "i8042"). */
export const i8042Model: DeviceModel<SharedArrayBuffer> = {
  kind: 'i8042',
  summary: '8042 keyboard controller at 0x60/0x64 with a PS/2 keyboard (IRQ 1) and mouse (IRQ 12)',
  options: {},
  bus: 'platform',
  create: () => I8042.createState(),
  describe: () => ({
    acpi: [
      device(
        'KBD_',
        name('_HID', eisaId('PNP0303')), // IBM Enhanced (101/102-key) keyboard: SeaBIOS sets up PS/2 only with it
        name(
          '_CRS',
          resourceTemplate(
            ioPort(I8042_DATA_PORT, I8042_DATA_PORT, 0x01, 1),
            ioPort(I8042_COMMAND_PORT, I8042_COMMAND_PORT, 0x01, 1),
            irqNoFlags(I8042_KBD_IRQ),
          ),
        ),
      ),
      device(
        'MOU_',
        name('_HID', eisaId('PNP0F13')), // PS/2 mouse
        name('_CRS', resourceTemplate(irqNoFlags(I8042_AUX_IRQ))),
      ),
    ],
    legacy: { i8042: true },
  }),
  attach(state, ctx) {
    const dev = new I8042(state, {
      kbdIrq: ctx.irqLine(I8042_KBD_IRQ),
      auxIrq: ctx.irqLine(I8042_AUX_IRQ),
      reset: (why) => ctx.host.reset(why),
    });
    ctx.pio.register(I8042_DATA_PORT, 1, dev);
    ctx.pio.register(I8042_COMMAND_PORT, 1, {
      name: 'i8042',
      pioRead: () => dev.pioRead(4),
      pioWrite: (_offset, size, value) => dev.pioWrite(4, size, value),
    });
    return dev;
  },
};
