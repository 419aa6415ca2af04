// A 16550A UART as specified by the PC16550D datasheet (National Semiconductor, now Texas Instruments).
// Behaviour follows the datasheet, with QEMU's hw/char/serial.c as the reference where a VMM has to choose.
//
// The line is infinitely fast: a byte written to THR leaves at once, so THRE and TEMT are always set and the
// transmit FIFO is always empty. The receive side is a 16-byte FIFO (1 byte while FIFOs are disabled).
//
// Threads: the vCPU thread that took a port-I/O exit and the host I/O thread that delivers typed bytes both
// use the same UART. All of its state lives in one SharedArrayBuffer guarded by a SharedLock at its start;
// each thread builds its own Uart16550 over that buffer. Every public method takes the lock for its whole
// duration, and the IRQ line and the output callback are driven while it is held, so line changes and output
// bytes happen in the order of the state changes that caused them, whichever thread made them.
import type { PortIoDevice } from '../bus.js';
import { SharedLock } from '../../base/shared-lock.js';
import type { IrqLine } from '../../base/irq-line.js';
import { writeAll } from '../../base/write-all.js';
import { device, eisaId, integer, ioPort, irqNoFlags, name, resourceTemplate } from '../../arch/x86_64/acpi/aml.js';
import {
  bytesToJson,
  DeviceStateError,
  expectSnapshot,
  jsonToBytes,
  type DeviceModel,
  type DeviceSnapshot,
} from '../model.js';

/** Standard PC serial port resources (I/O base, 8 ports; ISA IRQ). */
export const COM1 = { base: 0x3f8, irq: 4 } as const;
export const COM2 = { base: 0x2f8, irq: 3 } as const;
export const COM3 = { base: 0x3e8, irq: 4 } as const;
export const COM4 = { base: 0x2e8, irq: 3 } as const;
/** Number of I/O ports a UART occupies. */
export const UART_PORT_COUNT = 8;

export interface Uart16550Options {
  /** The interrupt line; set() is called only when the level changes. */
  readonly irq: IrqLine;
  /** Receives transmitted bytes (called with the lock held, in transmission order). */
  readonly output: (bytes: Uint8Array) => void;
}

// Register offsets.
const REG_DATA = 0; // RBR (read), THR (write), DLL (DLAB)
const REG_IER = 1; // IER, DLM (DLAB)
const REG_IIR_FCR = 2; // IIR (read), FCR (write)
const REG_LCR = 3;
const REG_MCR = 4;
const REG_LSR = 5;
const REG_MSR = 6;
const REG_SCR = 7;

const LCR_DLAB = 0x80;

const IER_RDI = 0x01; // received data available (and character timeout)
const IER_THRI = 0x02; // transmitter holding register empty
const IER_RLSI = 0x04; // receiver line status
const IER_MSI = 0x08; // modem status
const IER_MASK = 0x0f;

const IIR_NO_INT = 0x01;
const IIR_MSI = 0x00;
const IIR_THRI = 0x02;
const IIR_RDI = 0x04;
const IIR_RLSI = 0x06;
const IIR_CTI = 0x0c;
const IIR_FIFO_ENABLED = 0xc0;

const FCR_ENABLE = 0x01;
const FCR_CLEAR_RX = 0x02;
const FCR_STORED = 0xc9; // enable, DMA mode select, trigger level (bits 1-2 self-clear)
const FCR_TRIGGER_SHIFT = 6;
const TRIGGER_LEVELS = [1, 4, 8, 14];

const LSR_DR = 0x01;
const LSR_OE = 0x02;
const LSR_PE = 0x04;
const LSR_FE = 0x08;
const LSR_BI = 0x10;
const LSR_THRE = 0x20;
const LSR_TEMT = 0x40;
const LSR_FIFO_ERROR = 0x80;
const LSR_ERRORS = LSR_OE | LSR_PE | LSR_FE | LSR_BI; // cleared by reading LSR; cause a line status interrupt
const CHAR_ERRORS = LSR_PE | LSR_FE | LSR_BI; // errors that travel with a character through the FIFO

const MCR_DTR = 0x01;
const MCR_RTS = 0x02;
const MCR_OUT1 = 0x04;
const MCR_OUT2 = 0x08;
const MCR_LOOP = 0x10;
const MCR_MASK = 0x1f;

const MSR_DCTS = 0x01;
const MSR_DDSR = 0x02;
const MSR_TERI = 0x04;
const MSR_DDCD = 0x08;
const MSR_DELTAS = 0x0f;
const MSR_CTS = 0x10;
const MSR_DSR = 0x20;
const MSR_RI = 0x40;
const MSR_DCD = 0x80;
/** Outside loopback the port looks connected to a ready terminal: CTS, DSR and DCD asserted, RI not. */
const MSR_CONNECTED = MSR_CTS | MSR_DSR | MSR_DCD;

const FIFO_SIZE = 16;
const RESET_DIVISOR = 0x0c; // 115200 / 12 = 9600 baud (stored only)

// Layout of the shared state (byte offsets). Registers and flags are bytes; the two 32-bit words come first.
const S_LOCK = 0; // SharedLock word
const S_RX_SPACE = 4; // Int32 counter, bumped whenever receive space may have appeared
const S_IER = 8;
const S_LCR = 9;
const S_MCR = 10;
const S_LSR = 11; // only the sticky bits: OE, PE, FE, BI, FIFO error (DR, THRE, TEMT are derived)
const S_MSR = 12; // status bits 4-7 and delta bits 0-3
const S_SCR = 13;
const S_DLL = 14;
const S_DLM = 15;
const S_FCR = 16;
const S_THR_PENDING = 17; // THRE interrupt pending (cleared by an IIR read reporting it or by a THR write)
const S_IRQ_LEVEL = 18; // the level last driven on the IRQ line
const S_RX_HEAD = 19;
const S_RX_COUNT = 20;
const S_RX_DATA = 24; // FIFO_SIZE bytes
const S_RX_FLAGS = S_RX_DATA + FIFO_SIZE; // FIFO_SIZE bytes: PE/FE/BI of each character
const STATE_BYTES = S_RX_FLAGS + FIFO_SIZE;

/** Puts the registers in their master-reset state. Leaves the lock, rxSpace and the IRQ level alone. */
function resetRegisters(s: Uint8Array): void {
  s[S_IER] = 0;
  s[S_LCR] = 0;
  s[S_MCR] = 0;
  s[S_LSR] = 0;
  s[S_MSR] = MSR_CONNECTED;
  s[S_SCR] = 0;
  s[S_DLL] = RESET_DIVISOR;
  s[S_DLM] = 0;
  s[S_FCR] = 0;
  s[S_THR_PENDING] = 0;
  s[S_RX_HEAD] = 0;
  s[S_RX_COUNT] = 0;
  s.fill(0, S_RX_DATA, S_RX_FLAGS + FIFO_SIZE);
}

export class Uart16550 implements PortIoDevice {
  readonly name = 'uart-16550a';
  /**
   * Incremented (and notified) whenever receive space may have appeared: the guest popped a byte, the receive
   * FIFO was cleared, the UART left loopback mode or was reset. The input thread waits on it with
   * Atomics.wait/waitAsync(rxSpace, 0, valueSeenBeforeReceive) when receive() took fewer bytes than offered.
   */
  readonly rxSpace: Int32Array;
  private readonly lock: SharedLock;
  private readonly s: Uint8Array;
  private readonly irq: IrqLine;
  private readonly output: (bytes: Uint8Array) => void;

  /** A fresh shared state, in the reset state with the IRQ line low. Pass it to every thread's Uart16550. */
  static createState(): SharedArrayBuffer {
    const state = new SharedArrayBuffer(STATE_BYTES);
    resetRegisters(new Uint8Array(state));
    return state;
  }

  constructor(state: SharedArrayBuffer, options: Uart16550Options) {
    if (state.byteLength < STATE_BYTES) {
      throw new RangeError(`uart-16550a: the shared state has ${state.byteLength} bytes, needs ${STATE_BYTES}`);
    }
    this.lock = new SharedLock(state, S_LOCK);
    this.rxSpace = new Int32Array(state, S_RX_SPACE, 1);
    this.s = new Uint8Array(state);
    this.irq = options.irq;
    this.output = options.output;
  }

  /** Port read. Only the low byte of wider accesses is a register; it is returned zero-extended. */
  pioRead(offset: number, _size: number): number {
    this.lock.lock();
    try {
      return this.readRegister(offset & 7);
    } finally {
      this.lock.unlock();
    }
  }

  /** Port write. Only the low byte of wider accesses is used. */
  pioWrite(offset: number, _size: number, value: number): void {
    this.lock.lock();
    try {
      this.writeRegister(offset & 7, value & 0xff);
    } finally {
      this.lock.unlock();
    }
  }

  /**
   * Delivers bytes from the host into the receive FIFO. Takes as many as fit (16 minus the count, or 1 while
   * FIFOs are disabled; none in loopback mode, where the serial input is disconnected) and returns how many it
   * took: the caller keeps the rest and retries after rxSpace changes. Never drops a byte.
   */
  receive(bytes: Uint8Array): number {
    if (bytes.length === 0) return 0;
    this.lock.lock();
    try {
      const n = Math.min(this.freeSlots(), bytes.length);
      for (let i = 0; i < n; i++) this.pushRx(bytes[i], 0);
      if (n > 0) this.updateIrq();
      return n;
    } finally {
      this.lock.unlock();
    }
  }

  /** Free receive FIFO slots: how many bytes receive() would take now. */
  canReceive(): number {
    this.lock.lock();
    try {
      return this.freeSlots();
    } finally {
      this.lock.unlock();
    }
  }

  /**
   * A break condition on the line: a 0x00 character with LSR.BI enters the FIFO (as on hardware, where a break
   * is received as a zero character with the break flag). Returns false, doing nothing, when the FIFO has no
   * room or the UART is in loopback mode; the caller may retry like receive().
   */
  sendBreak(): boolean {
    this.lock.lock();
    try {
      if (this.freeSlots() === 0) return false;
      this.pushRx(0, LSR_BI);
      this.updateIrq();
      return true;
    } finally {
      this.lock.unlock();
    }
  }

  /** Master reset: registers to their reset values, FIFOs emptied, IRQ line low. */
  reset(): void {
    this.lock.lock();
    try {
      resetRegisters(this.s);
      this.bumpRxSpace();
      this.updateIrq();
    } finally {
      this.lock.unlock();
    }
  }

  /** The guest-visible registers and FIFO contents (not the lock or the input thread's wake-up counter). */
  saveRegisters(): Uint8Array {
    return this.lock.with(() => this.s.slice(S_RX_SPACE + 4, STATE_BYTES));
  }

  /** Loads saveRegisters()'s bytes and drives the IRQ line to the level they imply. */
  restoreRegisters(bytes: Uint8Array): void {
    if (bytes.length !== STATE_BYTES - S_RX_SPACE - 4)
      throw new RangeError(
        `uart-16550a: saved registers have ${bytes.length} bytes, expected ${STATE_BYTES - S_RX_SPACE - 4}`,
      );
    this.lock.with(() => {
      this.s.set(bytes, S_RX_SPACE + 4);
      const level = this.s[S_IRQ_LEVEL];
      this.s[S_IRQ_LEVEL] = level ? 0 : 1; // force updateIrq to drive the new VM's line
      this.updateIrq();
      this.bumpRxSpace();
    });
  }

  // ---- everything below runs with the lock held ----

  private get dlab(): boolean {
    return (this.s[S_LCR] & LCR_DLAB) !== 0;
  }

  private get fifoEnabled(): boolean {
    return (this.s[S_FCR] & FCR_ENABLE) !== 0;
  }

  private get loopback(): boolean {
    return (this.s[S_MCR] & MCR_LOOP) !== 0;
  }

  private get rxCapacity(): number {
    return this.fifoEnabled ? FIFO_SIZE : 1;
  }

  private freeSlots(): number {
    return this.loopback ? 0 : this.rxCapacity - this.s[S_RX_COUNT];
  }

  private readRegister(reg: number): number {
    const s = this.s;
    switch (reg) {
      case REG_DATA:
        if (this.dlab) return s[S_DLL];
        return this.popRx();
      case REG_IER:
        return this.dlab ? s[S_DLM] : s[S_IER];
      case REG_IIR_FCR: {
        const id = this.interruptId();
        if (id === IIR_THRI) {
          // Reading IIR while it reports THRE is the acknowledgement of that interrupt.
          s[S_THR_PENDING] = 0;
          this.updateIrq();
        }
        return id | (this.fifoEnabled ? IIR_FIFO_ENABLED : 0);
      }
      case REG_LCR:
        return s[S_LCR];
      case REG_MCR:
        return s[S_MCR];
      case REG_LSR: {
        const value = this.lsr();
        s[S_LSR] &= ~LSR_ERRORS;
        if (!this.errorInFifo()) s[S_LSR] &= ~LSR_FIFO_ERROR;
        if (value & LSR_ERRORS) this.updateIrq();
        return value;
      }
      case REG_MSR: {
        const value = s[S_MSR];
        if (value & MSR_DELTAS) {
          s[S_MSR] = value & ~MSR_DELTAS;
          this.updateIrq();
        }
        return value;
      }
      default:
        return s[S_SCR];
    }
  }

  private writeRegister(reg: number, value: number): void {
    const s = this.s;
    switch (reg) {
      case REG_DATA:
        if (this.dlab) s[S_DLL] = value;
        else this.transmit(value);
        return;
      case REG_IER:
        if (this.dlab) s[S_DLM] = value;
        else this.writeIer(value & IER_MASK);
        return;
      case REG_IIR_FCR:
        this.writeFcr(value);
        return;
      case REG_LCR:
        s[S_LCR] = value;
        return;
      case REG_MCR:
        this.writeMcr(value & MCR_MASK);
        return;
      case REG_SCR:
        s[S_SCR] = value;
        return;
      default:
        return; // LSR and MSR are read-only (LSR writes are a factory test mode on the real part)
    }
  }

  private transmit(value: number): void {
    // THR is loaded: THRE drops, which acknowledges a pending THRE interrupt. The line is infinitely fast, so
    // the byte moves on at once and THR is empty again; the line is updated at both steps, so a guest that
    // writes THR while the THRE interrupt is asserted sees a fresh edge, as on hardware.
    this.s[S_THR_PENDING] = 0;
    this.updateIrq();
    try {
      if (this.loopback) this.loopbackReceive(value);
      else this.output(Uint8Array.of(value));
    } finally {
      this.s[S_THR_PENDING] = 1;
      this.updateIrq();
    }
  }

  private loopbackReceive(value: number): void {
    const s = this.s;
    if (s[S_RX_COUNT] < this.rxCapacity) {
      this.pushRx(value, 0);
    } else if (this.fifoEnabled) {
      // FIFO full: the character in the shift register is overwritten; the FIFO keeps its contents.
      s[S_LSR] |= LSR_OE;
    } else {
      // No FIFO: the new character overwrites the unread one in RBR.
      s[S_RX_DATA + s[S_RX_HEAD]] = value;
      s[S_RX_FLAGS + s[S_RX_HEAD]] = 0;
      s[S_LSR] |= LSR_OE;
    }
  }

  private writeIer(value: number): void {
    const s = this.s;
    const changed = s[S_IER] ^ value;
    s[S_IER] = value;
    if (changed & IER_THRI) {
      // Enabling the THRE interrupt while THR is empty (always, here) makes it pending at once; disabling it
      // drops it. This is what the 16550A does and what Linux's THRE test at port startup expects.
      s[S_THR_PENDING] = value & IER_THRI ? 1 : 0;
    }
    this.updateIrq();
  }

  private writeFcr(value: number): void {
    const s = this.s;
    const enable = value & FCR_ENABLE;
    // Changing FCR0 clears both FIFOs; the other bits are only programmed while FCR0 is written as 1.
    // The transmit FIFO is always empty (infinitely fast line), so only the receive side needs clearing.
    if (enable !== (s[S_FCR] & FCR_ENABLE) || (enable && value & FCR_CLEAR_RX)) this.clearRx();
    s[S_FCR] = enable ? value & FCR_STORED : 0;
    this.updateIrq();
  }

  private writeMcr(value: number): void {
    const s = this.s;
    const wasLoopback = this.loopback;
    s[S_MCR] = value;
    if (wasLoopback && !this.loopback) this.bumpRxSpace(); // the serial input is connected again
    this.updateMsr();
    // Interrupt output: as in QEMU, the IRQ is not gated by OUT2 (on a PC board OUT2 enables the ISA IRQ driver).
    // Guests set OUT2 anyway; not gating it keeps guests that poll-then-enable working as they do on QEMU.
    this.updateIrq();
  }

  /** Recomputes the MSR status bits from the modem inputs, setting delta bits for the ones that changed. */
  private updateMsr(): void {
    const s = this.s;
    const mcr = s[S_MCR];
    let status = MSR_CONNECTED;
    if (mcr & MCR_LOOP) {
      // Loopback: the modem control outputs are wired to the modem status inputs.
      status =
        (mcr & MCR_RTS ? MSR_CTS : 0) |
        (mcr & MCR_DTR ? MSR_DSR : 0) |
        (mcr & MCR_OUT1 ? MSR_RI : 0) |
        (mcr & MCR_OUT2 ? MSR_DCD : 0);
    }
    const old = s[S_MSR];
    const changed = (old ^ status) & 0xf0;
    let deltas = 0;
    if (changed & MSR_CTS) deltas |= MSR_DCTS;
    if (changed & MSR_DSR) deltas |= MSR_DDSR;
    if (changed & MSR_DCD) deltas |= MSR_DDCD;
    if (changed & MSR_RI && !(status & MSR_RI)) deltas |= MSR_TERI; // trailing edge of RI only
    s[S_MSR] = status | (old & MSR_DELTAS) | deltas;
  }

  private lsr(): number {
    const s = this.s;
    return (s[S_LSR] & (LSR_ERRORS | LSR_FIFO_ERROR)) | (s[S_RX_COUNT] ? LSR_DR : 0) | LSR_THRE | LSR_TEMT;
  }

  private pushRx(value: number, flags: number): void {
    const s = this.s;
    const count = s[S_RX_COUNT];
    const slot = (s[S_RX_HEAD] + count) % FIFO_SIZE;
    s[S_RX_DATA + slot] = value;
    s[S_RX_FLAGS + slot] = flags;
    s[S_RX_COUNT] = count + 1;
    if (flags && this.fifoEnabled) s[S_LSR] |= LSR_FIFO_ERROR;
    if (count === 0) s[S_LSR] |= flags; // a character's errors show in LSR when it reaches the top of the FIFO
  }

  /** Reads RBR: pops the oldest character (0 when empty). */
  private popRx(): number {
    const s = this.s;
    const count = s[S_RX_COUNT];
    if (count === 0) return 0;
    const head = s[S_RX_HEAD];
    const value = s[S_RX_DATA + head];
    s[S_RX_FLAGS + head] = 0;
    const next = (head + 1) % FIFO_SIZE;
    s[S_RX_HEAD] = next;
    s[S_RX_COUNT] = count - 1;
    if (count > 1) s[S_LSR] |= s[S_RX_FLAGS + next];
    this.bumpRxSpace();
    this.updateIrq();
    return value;
  }

  private clearRx(): void {
    const s = this.s;
    s[S_RX_HEAD] = 0;
    s[S_RX_COUNT] = 0;
    s.fill(0, S_RX_FLAGS, S_RX_FLAGS + FIFO_SIZE);
    s[S_LSR] &= ~LSR_FIFO_ERROR;
    this.bumpRxSpace();
  }

  private errorInFifo(): boolean {
    const s = this.s;
    for (let i = 0, slot = s[S_RX_HEAD]; i < s[S_RX_COUNT]; i++, slot = (slot + 1) % FIFO_SIZE) {
      if (s[S_RX_FLAGS + slot] & CHAR_ERRORS) return true;
    }
    return false;
  }

  private bumpRxSpace(): void {
    Atomics.add(this.rxSpace, 0, 1);
    Atomics.notify(this.rxSpace, 0);
  }

  /**
   * The highest-priority pending interrupt, as IIR bits 0-3. The character timeout is emulated without time:
   * it is pending whenever data sits in the FIFO below the trigger level (on hardware it fires after four
   * character times without FIFO activity). A guest thus gets an interrupt for every byte that arrives
   * and never waits for a timeout; the trigger level still decides between IIR 0x04 and 0x0C.
   */
  private interruptId(): number {
    const s = this.s;
    const ier = s[S_IER];
    if (ier & IER_RLSI && s[S_LSR] & LSR_ERRORS) return IIR_RLSI;
    const count = s[S_RX_COUNT];
    if (ier & IER_RDI && count > 0) {
      const trigger = this.fifoEnabled ? TRIGGER_LEVELS[s[S_FCR] >> FCR_TRIGGER_SHIFT] : 1;
      return count >= trigger ? IIR_RDI : IIR_CTI;
    }
    if (ier & IER_THRI && s[S_THR_PENDING]) return IIR_THRI;
    if (ier & IER_MSI && s[S_MSR] & MSR_DELTAS) return IIR_MSI;
    return IIR_NO_INT;
  }

  /** Drives the IRQ line to the current interrupt condition, calling irq.set() only on a change. */
  private updateIrq(): void {
    const level = this.interruptId() !== IIR_NO_INT ? 1 : 0;
    if (level === this.s[S_IRQ_LEVEL]) return;
    this.irq.set(level === 1);
    this.s[S_IRQ_LEVEL] = level;
  }
}

/** COM1 as a device of the machine: the serial console (registry kind "uart-16550a"). */
export const serialPortModel: DeviceModel<SharedArrayBuffer> = {
  kind: 'uart-16550a',
  summary: 'COM1: 16550A UART at 0x3F8, IRQ 4; the serial console',
  options: {},
  bus: 'platform',
  create: () => Uart16550.createState(),
  describe: () => ({
    acpi: [
      device(
        'COM1',
        name('_HID', eisaId('PNP0501')), // 16550A-compatible serial port
        name('_UID', integer(1)),
        name('_CRS', resourceTemplate(ioPort(COM1.base, COM1.base, 0x01, UART_PORT_COUNT), irqNoFlags(COM1.irq))),
      ),
    ],
  }),
  attach(state, ctx) {
    const fd = ctx.host.serialOutputFd;
    const uart = new Uart16550(state, { irq: ctx.irqLine(COM1.irq), output: (bytes) => writeAll(fd, bytes) });
    ctx.pio.register(COM1.base, UART_PORT_COUNT, uart);
    return Object.assign(uart, {
      saveState: () => ({ kind: 'uart-16550a', version: 1, data: { registers: bytesToJson(uart.saveRegisters()) } }),
      restoreState(snapshot: DeviceSnapshot) {
        expectSnapshot('uart-16550a', snapshot, 'uart-16550a', 1);
        const bytes = new Uint8Array(STATE_BYTES - S_RX_SPACE - 4);
        jsonToBytes('uart-16550a', 'registers', snapshot.data.registers, bytes);
        // The FIFO indices must stay inside the FIFO (the saved bytes start at S_RX_SPACE + 4).
        const head = bytes[S_RX_HEAD - S_RX_SPACE - 4];
        const count = bytes[S_RX_COUNT - S_RX_SPACE - 4];
        if (head >= FIFO_SIZE || count > FIFO_SIZE)
          throw new DeviceStateError(
            'uart-16550a',
            `has receive FIFO head ${head} and count ${count} (FIFO of ${FIFO_SIZE})`,
          );
        uart.restoreRegisters(bytes);
      },
    });
  },
};
