// virtio 1.2 §5.8 Input Device (device ID 18, PCI 1af4:1052), in two flavours: `virtio-tablet`, an absolute pointer
// (EV_ABS ABS_X/ABS_Y 0..32767, EV_KEY BTN_LEFT/RIGHT/MIDDLE, EV_REL REL_WHEEL) so the guest's pointer sits where
// the viewer's is, and `virtio-keyboard` (EV_KEY, EV_LED NumL/CapsL/ScrollL, EV_REP). Codes are Linux evdev's
// (include/uapi/linux/input-event-codes.h). Config space, eventq and statusq follow §5.8.4-§5.8.6; the IDs and
// bitmaps a driver checks match QEMU's virtio-tablet-pci / virtio-keyboard-pci, the name is ours.
//
// Config space (§5.8.4) answers what the driver selects: a write of `select`/`subsel` rewrites `size` and the
// union in the shared config bytes on the vCPU thread that took the write, which is the thread that serves the
// driver's next read (virtioPciModel's configWritten). A selection the device does not have reads size 0.
//
// eventq (queue 0): host input becomes reports (events ended by EV_SYN/SYN_REPORT) in a bounded host-side buffer;
// each driver-posted buffer gets one 8-byte virtio_input_event. A guest that never reads loses the oldest whole
// reports beyond INPUT_PENDING_EVENTS (§5.8.6.2: drop whole sequences, not single events), never host memory.
// A buffer with less than 8 writable bytes (a driver error, §5.8.6.1) is given back with used length 0 and the
// event waits for the next one; a malformed chain (outside guest RAM, loops) is DEVICE_NEEDS_RESET (queue.ts).
// statusq (queue 1): the driver's events for the device; EV_LED updates set the LEDs the RFB server reports.
// Input arriving while no driver is set up (before DRIVER_OK, after a reset) is dropped, as QEMU does: stale
// clicks must not reach the next driver.
import { Type } from '@sinclair/typebox';
import type { JsonValue } from '../model.js';
import type { VirtioBackend, VirtioQueueContext } from './device.js';
import type { VirtioDeviceInfo } from './pci-transport.js';
import { VirtqueueError } from './queue.js';
import { virtioPciModel, AttachedVirtioFunction } from './pci-model.js';
import { linuxKeysOfScancodes } from './input-keycodes.js';
import type { AttachedDevice } from '../model.js';

export const VIRTIO_ID_INPUT = 18;
export const INPUT_EVENTQ = 0;
export const INPUT_STATUSQ = 1;
/** As QEMU: 64 buffers each way (Linux fills the eventq with one 8-byte buffer per entry). */
export const INPUT_QUEUE_SIZE = 64;
/** struct virtio_input_config: select, subsel, size, reserved[5], then a 128-byte union (§5.8.4). */
export const INPUT_CONFIG_SIZE = 8 + 128;
export const INPUT_CONFIG_UNION = 8;
export const INPUT_EVENT_SIZE = 8;
/** Undelivered events kept for a guest that is not reading (whole reports beyond this are dropped, oldest first). */
export const INPUT_PENDING_EVENTS = 512;
/** Buffers handled per queue in one turn of the I/O thread; the rest on setImmediate. */
export const INPUT_TURN_CHAINS = 256;

// §5.8.4 virtio_input_config_select
export const CFG_UNSET = 0x00;
export const CFG_ID_NAME = 0x01;
export const CFG_ID_SERIAL = 0x02;
export const CFG_ID_DEVIDS = 0x03;
export const CFG_PROP_BITS = 0x10;
export const CFG_EV_BITS = 0x11;
export const CFG_ABS_INFO = 0x12;

// Linux input-event-codes.h
export const EV_SYN = 0x00;
export const EV_KEY = 0x01;
export const EV_REL = 0x02;
export const EV_ABS = 0x03;
export const EV_LED = 0x11;
export const EV_REP = 0x14;
export const SYN_REPORT = 0;
export const BTN_LEFT = 0x110;
export const BTN_RIGHT = 0x111;
export const BTN_MIDDLE = 0x112;
export const REL_WHEEL = 0x08;
export const ABS_X = 0x00;
export const ABS_Y = 0x01;
export const LED_NUML = 0x00;
export const LED_CAPSL = 0x01;
export const LED_SCROLLL = 0x02;
/** BUS_VIRTUAL, and QEMU's vendor for its HID devices: guests see the IDs they know from QEMU's devices. */
export const BUS_VIRTUAL = 0x06;
export const INPUT_VENDOR = 0x0627;
/** The absolute axes' range, as QEMU's tablet (INPUT_EVENT_ABS_MAX). */
export const ABS_MAX = 0x7fff;

export type InputFlavour = 'tablet' | 'keyboard';

/** The opened host side: nothing but plain values (it crosses to the I/O thread by structured clone). */
export interface InputHandle {
  readonly kind: 'input';
  readonly flavour: InputFlavour;
  readonly serial?: string;
}

export function openInput(flavour: InputFlavour, serial?: string): InputHandle {
  return { kind: 'input', flavour, ...(serial !== undefined ? { serial } : {}) };
}

const NAMES: Record<InputFlavour, string> = {
  tablet: 'Partita Virtio Tablet',
  keyboard: 'Partita Virtio Keyboard',
};

function bitmap(bits: readonly number[]): Uint8Array {
  const bytes = new Uint8Array(Math.max(...bits.map((b) => (b >> 3) + 1), 0));
  for (const b of bits) bytes[b >> 3] |= 1 << (b & 7);
  return bytes;
}

function le(values: readonly number[], width: 2 | 4): Uint8Array {
  const out = new Uint8Array(values.length * width);
  const view = new DataView(out.buffer);
  values.forEach((v, i) => (width === 2 ? view.setUint16(i * 2, v, true) : view.setUint32(i * 4, v >>> 0, true)));
  return out;
}

/** The config entries of a flavour, keyed by select << 8 | subsel: the union's bytes (size = their length). */
export function inputConfigEntries(handle: InputHandle): Map<number, Uint8Array> {
  const entries = new Map<number, Uint8Array>();
  const set = (select: number, subsel: number, bytes: Uint8Array): void => {
    if (bytes.length > 0) entries.set((select << 8) | subsel, bytes.subarray(0, 128));
  };
  // ID_NAME: the string without a terminating NUL (the union is zero-filled after it).
  set(CFG_ID_NAME, 0, new TextEncoder().encode(NAMES[handle.flavour]));
  if (handle.serial !== undefined) set(CFG_ID_SERIAL, 0, new TextEncoder().encode(handle.serial));
  if (handle.flavour === 'tablet') {
    set(CFG_ID_DEVIDS, 0, le([BUS_VIRTUAL, INPUT_VENDOR, 0x0003, 0x0002], 2)); // QEMU's tablet with wheel axis
    set(CFG_EV_BITS, EV_KEY, bitmap([BTN_LEFT, BTN_RIGHT, BTN_MIDDLE]));
    set(CFG_EV_BITS, EV_REL, bitmap([REL_WHEEL]));
    set(CFG_EV_BITS, EV_ABS, bitmap([ABS_X, ABS_Y]));
    // virtio_input_absinfo: min, max, fuzz, flat, res. PROP_BITS stays empty: no INPUT_PROP_DIRECT (not a
    // touchscreen; Linux treats the device as a pointer that moves the cursor to where it says).
    for (const axis of [ABS_X, ABS_Y]) set(CFG_ABS_INFO, axis, le([0, ABS_MAX, 0, 0, 0], 4));
  } else {
    set(CFG_ID_DEVIDS, 0, le([BUS_VIRTUAL, INPUT_VENDOR, 0x0001, 0x0001], 2));
    set(CFG_EV_BITS, EV_KEY, bitmap(linuxKeysOfScancodes()));
    set(CFG_EV_BITS, EV_LED, bitmap([LED_NUML, LED_CAPSL, LED_SCROLLL]));
    // EV_REP with an empty bitmap of size 1 (as QEMU): Linux then turns on its own autorepeat for the device.
    entries.set((CFG_EV_BITS << 8) | EV_REP, new Uint8Array(1));
  }
  return entries;
}

const entryCache = new Map<string, Map<number, Uint8Array>>();

function cachedEntries(handle: InputHandle): Map<number, Uint8Array> {
  const key = `${handle.flavour}\0${handle.serial ?? ''}`;
  let entries = entryCache.get(key);
  if (!entries) entryCache.set(key, (entries = inputConfigEntries(handle)));
  return entries;
}

/**
 * The driver wrote config bytes (§5.8.5.1: it writes select and subsel, then reads size and the union): record the
 * selection and put its answer in place. Writes to the read-only fields are ignored.
 */
export function inputConfigWritten(handle: InputHandle, config: Uint8Array, offset: number, data: Uint8Array): void {
  let touched = false;
  for (let i = 0; i < data.length; i++) {
    const at = offset + i;
    if (at === 0 || at === 1) {
      config[at] = data[i];
      touched = true;
    }
  }
  if (touched) selectConfig(handle, config);
}

/** Fills size and the union for the selection in config[0..1]. */
export function selectConfig(handle: InputHandle, config: Uint8Array): void {
  const entry = cachedEntries(handle).get((config[0] << 8) | config[1]);
  config.fill(0, 2);
  if (!entry) return; // size 0: no such selection (CFG_UNSET included)
  config[2] = entry.length;
  config.set(entry, INPUT_CONFIG_UNION);
}

/** One event as the eventq carries it: le16 type, le16 code, le32 value (§5.8.6). */
export function encodeEvent(type: number, code: number, value: number): Uint8Array {
  const out = new Uint8Array(INPUT_EVENT_SIZE);
  const view = new DataView(out.buffer);
  view.setUint16(0, type, true);
  view.setUint16(2, code, true);
  view.setInt32(4, value | 0, true);
  return out;
}

/** Viewer (RFB) button bits: 0 left, 1 middle, 2 right, 3/4 wheel up/down. */
const BUTTON_KEYS: readonly (readonly [number, number])[] = [
  [1, BTN_LEFT],
  [2, BTN_MIDDLE],
  [4, BTN_RIGHT],
];

export class VirtioInput implements VirtioBackend {
  readonly info: VirtioDeviceInfo = {
    deviceType: VIRTIO_ID_INPUT,
    classCode: 0x098000, // what QEMU's virtio-input-pci reports: "input device, other"
    features: 0n, // §5.8.3: none defined
    queueSizes: [INPUT_QUEUE_SIZE, INPUT_QUEUE_SIZE],
    configSize: INPUT_CONFIG_SIZE,
  };

  private ctx: VirtioQueueContext | undefined;
  /** Whole reports not yet in the guest's buffers; `headSent` events of the first are already there. */
  private reports: Uint8Array[] = [];
  private headSent = 0;
  private pendingEvents = 0;
  /** Reports dropped because the guest did not read (for the log and tests). */
  dropped = 0;
  /** Buffers given back unused because they could not hold an event. */
  refused = 0;
  private ledState = 0; // InputSink's bits: 0 Scroll Lock, 1 Num Lock, 2 Caps Lock
  private lastX = -1;
  private lastY = -1;
  private lastButtons = 0;
  private readonly keysDown = new Set<number>();
  private quiesced = false;
  private generation = 0;
  private continuation: NodeJS.Immediate | undefined;

  constructor(
    readonly handle: InputHandle,
    private readonly log: (message: string) => void = () => undefined,
  ) {}

  configBytes(): Uint8Array {
    const config = new Uint8Array(INPUT_CONFIG_SIZE);
    selectConfig(this.handle, config);
    return config;
  }

  /** A driver has set the device up (DRIVER_OK) and it is serving: input goes here rather than to PS/2. */
  get ready(): boolean {
    return this.ctx !== undefined;
  }

  activate(ctx: VirtioQueueContext): void {
    this.stop();
    this.ctx = ctx;
  }

  queueNotified(index: number): void {
    if (this.continuation) return; // a pending continuation serves both queues
    if (index === INPUT_EVENTQ) this.deliver();
    else if (index === INPUT_STATUSQ) this.readStatus();
  }

  reset(): void {
    this.stop();
    this.ledState = 0;
  }

  quiesce(): void {
    this.quiesced = true;
    if (this.continuation) clearImmediate(this.continuation);
    this.continuation = undefined;
  }

  resume(): void {
    this.quiesced = false;
    this.deliver();
    this.readStatus();
  }

  close(): void {
    this.stop();
  }

  /** Keyboard LEDs the driver set, in InputSink's bits (0 Scroll Lock, 1 Num Lock, 2 Caps Lock). */
  leds(): number {
    return this.ledState;
  }

  /** Events waiting for guest buffers (tests, the log). */
  get pending(): number {
    return this.pendingEvents - this.headSent;
  }

  /**
   * Tablet: the viewer's pointer at (x, y) on a width × height screen, scaled to 0..ABS_MAX as QEMU scales it
   * (x · ABS_MAX / (width − 1)), and its buttons. False when no driver is serving the device (the caller then
   * moves the PS/2 mouse instead).
   */
  pointerAbsolute(x: number, y: number, width: number, height: number, buttons: number): boolean {
    if (this.handle.flavour !== 'tablet' || !this.ctx) return false;
    const events: [number, number, number][] = [];
    const ax = scaleAxis(x, width);
    const ay = scaleAxis(y, height);
    if (ax !== this.lastX) events.push([EV_ABS, ABS_X, ax]);
    if (ay !== this.lastY) events.push([EV_ABS, ABS_Y, ay]);
    this.lastX = ax;
    this.lastY = ay;
    for (const [bit, code] of BUTTON_KEYS)
      if ((buttons ^ this.lastButtons) & bit) events.push([EV_KEY, code, buttons & bit ? 1 : 0]);
    // The wheel is a press of button 4 (up) or 5 (down) in RFB: one notch per press.
    if (buttons & ~this.lastButtons & 8) events.push([EV_REL, REL_WHEEL, 1]);
    if (buttons & ~this.lastButtons & 16) events.push([EV_REL, REL_WHEEL, -1]);
    this.lastButtons = buttons & 0x1f;
    if (events.length) this.send(events);
    return true;
  }

  /**
   * Keyboard: a key (Linux KEY_* code) went down or up. A repeated down of a held key is not sent (the guest's
   * own autorepeat, EV_REP, does that). False when no driver is serving the device.
   */
  key(code: number, down: boolean): boolean {
    if (this.handle.flavour !== 'keyboard' || !this.ctx) return false;
    if (down === this.keysDown.has(code)) return true;
    if (down) this.keysDown.add(code);
    else this.keysDown.delete(code);
    this.send([[EV_KEY, code, down ? 1 : 0]]);
    return true;
  }

  saveState(): JsonValue {
    const rest = this.reports.map((r, i) =>
      Buffer.from(i === 0 ? r.subarray(this.headSent * 8) : r).toString('base64'),
    );
    return { leds: this.ledState, reports: rest };
  }

  restoreState(saved: JsonValue | undefined): void {
    if (typeof saved !== 'object' || saved === null || Array.isArray(saved)) return; // an older snapshot: nothing
    const s = saved as { readonly [key: string]: JsonValue };
    if (typeof s.leds === 'number') this.ledState = s.leds & 7;
    if (!Array.isArray(s.reports)) return;
    this.reports = [];
    this.headSent = 0;
    this.pendingEvents = 0;
    for (const r of s.reports as readonly JsonValue[]) {
      if (typeof r !== 'string') continue;
      const bytes = Buffer.from(r, 'base64');
      if (bytes.length === 0 || bytes.length % INPUT_EVENT_SIZE !== 0) continue;
      this.reports.push(new Uint8Array(bytes));
      this.pendingEvents += bytes.length / INPUT_EVENT_SIZE;
    }
    this.trim();
    this.deliver();
  }

  private stop(): void {
    this.generation++;
    this.ctx = undefined;
    this.reports = [];
    this.headSent = 0;
    this.pendingEvents = 0;
    this.lastX = -1;
    this.lastY = -1;
    this.lastButtons = 0;
    this.keysDown.clear();
    if (this.continuation) clearImmediate(this.continuation);
    this.continuation = undefined;
  }

  /** Queues one report (the events plus EV_SYN) and delivers what fits. */
  private send(events: readonly (readonly [number, number, number])[]): void {
    const report = new Uint8Array((events.length + 1) * INPUT_EVENT_SIZE);
    events.forEach(([type, code, value], i) => report.set(encodeEvent(type, code, value), i * INPUT_EVENT_SIZE));
    report.set(encodeEvent(EV_SYN, SYN_REPORT, 0), events.length * INPUT_EVENT_SIZE);
    this.reports.push(report);
    this.pendingEvents += events.length + 1;
    this.trim();
    this.deliver();
  }

  /** Drops the oldest whole reports over the limit (never the one partly in the guest's buffers already). */
  private trim(): void {
    const before = this.dropped;
    while (this.pendingEvents > INPUT_PENDING_EVENTS) {
      const at = this.headSent > 0 ? 1 : 0;
      if (at >= this.reports.length) break;
      const [gone] = this.reports.splice(at, 1);
      this.pendingEvents -= gone.length / INPUT_EVENT_SIZE;
      this.dropped++;
    }
    // Once, then every thousand: a guest that stopped reading must not flood the log either.
    if (this.dropped !== before && (before === 0 || Math.floor(before / 1000) !== Math.floor(this.dropped / 1000)))
      this.log(`virtio-${this.handle.flavour}: the guest is not reading input; ${this.dropped} reports dropped`);
  }

  /** Puts waiting events into the buffers the driver posted (one event per buffer). */
  private deliver(): void {
    const ctx = this.ctx;
    const queue = ctx?.queues[INPUT_EVENTQ];
    if (!ctx || !queue || this.quiesced) return;
    let used = 0;
    let chains = 0;
    try {
      while (this.reports.length > 0 && chains < INPUT_TURN_CHAINS) {
        const chain = queue.popAvailable();
        if (chain === undefined) break;
        if (chain instanceof VirtqueueError) return this.fail(ctx, INPUT_EVENTQ, used > 0, `eventq: ${chain.message}`);
        chains++;
        if (chain.writableLength < INPUT_EVENT_SIZE) {
          // Too small or device-readable only: given back untouched; the event waits for a proper buffer.
          queue.pushUsed(chain, 0);
          this.refused++;
          used++;
          continue;
        }
        const report = this.reports[0];
        const at = this.headSent * INPUT_EVENT_SIZE;
        chain.writeBytes(report.subarray(at, at + INPUT_EVENT_SIZE));
        queue.pushUsed(chain, INPUT_EVENT_SIZE);
        used++;
        if (++this.headSent * INPUT_EVENT_SIZE === report.length) {
          this.reports.shift();
          this.pendingEvents -= this.headSent;
          this.headSent = 0;
        }
      }
    } catch (e) {
      return this.fail(ctx, INPUT_EVENTQ, used > 0, `eventq: internal error: ${(e as Error).message}`);
    }
    if (used > 0) ctx.interrupt(INPUT_EVENTQ);
    if (chains === INPUT_TURN_CHAINS) this.continueLater();
  }

  /** Takes the driver's status events (§5.8.6: EV_LED for the keyboard's LEDs); the rest are ignored. */
  private readStatus(): void {
    const ctx = this.ctx;
    const queue = ctx?.queues[INPUT_STATUSQ];
    if (!ctx || !queue || this.quiesced) return;
    let used = 0;
    try {
      while (used < INPUT_TURN_CHAINS) {
        const chain = queue.popAvailable();
        if (chain === undefined) break;
        if (chain instanceof VirtqueueError)
          return this.fail(ctx, INPUT_STATUSQ, used > 0, `statusq: ${chain.message}`);
        if (chain.readableLength >= INPUT_EVENT_SIZE) {
          const bytes = chain.readBytes(INPUT_EVENT_SIZE);
          const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
          this.statusEvent(view.getUint16(0, true), view.getUint16(2, true), view.getInt32(4, true));
        }
        queue.pushUsed(chain, 0);
        used++;
      }
    } catch (e) {
      return this.fail(ctx, INPUT_STATUSQ, used > 0, `statusq: internal error: ${(e as Error).message}`);
    }
    if (used > 0) ctx.interrupt(INPUT_STATUSQ);
    if (used === INPUT_TURN_CHAINS) this.continueLater();
  }

  private statusEvent(type: number, code: number, value: number): void {
    if (type !== EV_LED || this.handle.flavour !== 'keyboard') return;
    const bit = code === LED_SCROLLL ? 1 : code === LED_NUML ? 2 : code === LED_CAPSL ? 4 : 0;
    if (value) this.ledState |= bit;
    else this.ledState &= ~bit;
  }

  private continueLater(): void {
    if (this.continuation) return;
    const generation = this.generation;
    this.continuation = setImmediate(() => {
      this.continuation = undefined;
      if (generation !== this.generation) return;
      this.deliver();
      this.readStatus();
    });
  }

  private fail(ctx: VirtioQueueContext, queue: number, pushed: boolean, reason: string): void {
    if (pushed) ctx.interrupt(queue); // the buffers already used are the driver's: tell it
    ctx.needsReset(reason); // the runner resets this backend from inside this call
  }
}

/** value on a screen `size` pixels wide → 0..ABS_MAX, as QEMU's qemu_input_scale_axis (clamped to the screen). */
export function scaleAxis(value: number, size: number): number {
  if (!(size > 1)) return 0;
  const v = Math.min(Math.max(Math.floor(value), 0), size - 1);
  return Math.floor((v * ABS_MAX) / (size - 1));
}

/** The virtio-input backend of an attached device on the I/O thread (for the RFB input path), if it is one. */
export function virtioInputOf(device: AttachedDevice | undefined): VirtioInput | undefined {
  const backend = device instanceof AttachedVirtioFunction ? device.backend : undefined;
  return backend instanceof VirtioInput ? backend : undefined;
}

const OPTIONS = {
  serial: Type.Optional(Type.String({ maxLength: 128, description: 'ID_SERIAL the guest reads (none by default)' })),
};

function inputModel(flavour: InputFlavour, summary: string) {
  return virtioPciModel<InputHandle>({
    kind: `virtio-${flavour}`,
    summary,
    options: OPTIONS,
    open: (options) => openInput(flavour, typeof options.serial === 'string' ? options.serial : undefined),
    backend: (handle, log) => new VirtioInput(handle, log),
    configWritten: inputConfigWritten,
  });
}

/** virtio-input tablet (virtio 1.2 §5.8): an absolute pointer the screen's viewers drive. */
export const virtioTabletModel = inputModel('tablet', 'virtio-input tablet: absolute pointer for the screen');
/** virtio-input keyboard (virtio 1.2 §5.8): the screen's keys once the guest's driver is up. */
export const virtioKeyboardModel = inputModel('keyboard', "virtio-input keyboard: the screen's keys (LEDs back)");
