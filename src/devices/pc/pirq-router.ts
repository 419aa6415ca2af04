// PCI interrupt routing of the PIIX3 (Intel 82371SB datasheet, order no. 290550, §2.2.9 PIRQRC[A:D] PIRQ route
// control, §3.4 PCI interrupt routing): the four PCI interrupt request lines PIRQA#-PIRQD# are each steered to an
// ISA IRQ of the interrupt controllers by config registers 0x60-0x63 of the ISA bridge (bit 7 IRQEN# = 1: not
// routed; bits 3:0 the IRQ). Which PIRQ a device's INTx# drives is board wiring; Partita wires it as QEMU's i440FX
// board (hw/pci-host/i440fx.c pci_slot_get_pirq) and SeaBIOS (pciinit.c piix_pci_slot_get_irq) assume:
//   PIRQ = (slot − 1 + pin − 1) mod 4, pin 1 = INTA#.
// The ACPI _PRT (piix3.ts) says the same, so the OS and the hardware agree.
//
// PCI interrupts are level-triggered and shareable: an ISA IRQ is asserted while any source routed to it is (wired
// OR), and re-programming a route moves an asserted level from the old IRQ to the new one. The state lives in a
// SharedArrayBuffer under a SharedLock, so every exit-handling thread's router is one device; the ISA IRQ lines
// (KVM_IRQ_LINE on the in-kernel PIC/IOAPIC) are driven with the lock held, in the order of the changes.
import { SharedLock } from '../../base/shared-lock.js';
import type { IrqLine } from '../../base/irq-line.js';

/** Config offset of PIRQRCA in the PIIX3 ISA bridge; PIRQRCB-D follow. */
export const PIIX_PIRQRC = 0x60;
export const PIRQ_COUNT = 4;
/** IRQEN#: set = the PIRQ is not routed to any ISA IRQ (the reset value of each route register is 0x80). */
export const PIRQ_DISABLED = 0x80;
/** ISA IRQs a PIRQ may be routed to (datasheet: 0-2, 8 and 13 are reserved: such a route drives nothing). */
const ROUTABLE_IRQS = 0b1101_1110_1111_1000; // 3-7, 9-12, 14, 15

const SLOTS = 32;
const PINS = 4;

// Layout of the router's shared buffer.
const S_LOCK = 0;
const S_DRIVEN = 4; // Int32: bit n = ISA IRQ n is asserted by the router
const S_COUNTS = 8; // Int32 × 4: asserted sources per PIRQ
const S_LEVELS = S_COUNTS + 4 * PIRQ_COUNT; // Uint8 × 128: level of each (slot, pin)
export const PIRQ_ROUTER_BYTES = S_LEVELS + SLOTS * PINS;

/** What the router shares between threads: the ISA bridge's config space (the route registers) and its own state. */
export interface PirqRouterState {
  /** The PIIX3's PciConfigSpace buffer: bytes 0x60-0x63 are the route registers. */
  readonly config: SharedArrayBuffer;
  /** PIRQ_ROUTER_BYTES: lock, driven ISA IRQs, per-PIRQ counts, per-source levels. */
  readonly router: SharedArrayBuffer;
}

export function createPirqRouterBuffer(): SharedArrayBuffer {
  return new SharedArrayBuffer(PIRQ_ROUTER_BYTES);
}

/** The PIRQ (0 = A … 3 = D) that INTx pin `pin` (1 = INTA#) of bus-0 device `slot` drives. */
export function pirqOf(slot: number, pin: number): number {
  return (slot - 1 + pin - 1) & 3;
}

/** The ISA IRQ a route register value sends its PIRQ to, or undefined (disabled or a reserved IRQ). */
export function routedIrq(route: number): number | undefined {
  if (route & PIRQ_DISABLED) return undefined;
  const irq = route & 0x0f;
  return ROUTABLE_IRQS & (1 << irq) ? irq : undefined;
}

export class PirqRouter {
  private readonly lock: SharedLock;
  private readonly config: Uint8Array;
  private readonly driven: Int32Array;
  private readonly counts: Int32Array;
  private readonly levels: Uint8Array;
  private readonly lines = new Map<number, IrqLine>();

  /** `irqLine(n)`: ISA IRQ n of the platform (DeviceAttachContext.irqLine). */
  constructor(
    state: PirqRouterState,
    private readonly irqLine: (isaIrq: number) => IrqLine,
  ) {
    if (state.router.byteLength < PIRQ_ROUTER_BYTES)
      throw new RangeError(`PIRQ router state has ${state.router.byteLength} bytes, needs ${PIRQ_ROUTER_BYTES}`);
    this.lock = new SharedLock(state.router, S_LOCK);
    this.config = new Uint8Array(state.config);
    this.driven = new Int32Array(state.router, S_DRIVEN, 1);
    this.counts = new Int32Array(state.router, S_COUNTS, PIRQ_COUNT);
    this.levels = new Uint8Array(state.router, S_LEVELS, SLOTS * PINS);
  }

  /** The interrupt line of INTx pin `pin` (1 = INTA# … 4 = INTD#) of bus-0 device `slot`, through the PIRQs. */
  intxLine(slot: number, pin: number): IrqLine {
    if (!Number.isInteger(slot) || slot < 0 || slot >= SLOTS) throw new RangeError(`PCI slot ${slot}`);
    if (!Number.isInteger(pin) || pin < 1 || pin > PINS) throw new RangeError(`PCI interrupt pin ${pin}`);
    return { set: (level) => this.setSource(slot, pin, level) };
  }

  /** The route registers changed (a config write to 0x60-0x63): asserted levels follow their PIRQs. */
  routesChanged(): void {
    this.lock.with(() => this.drive());
  }

  /**
   * After load(): lines follow the loaded state. Those the router drove before and no longer asserts are lowered;
   * every asserted one is set again (KVM line levels are idempotent), since a freshly built machine's lines start
   * low whatever `driven` says.
   */
  resync(): void {
    this.lock.with(() => {
      this.drive();
      const wanted = Atomics.load(this.driven, 0);
      for (let irq = 0; irq < 16; irq++) if (wanted & (1 << irq)) this.line(irq).set(true);
    });
  }

  /** Whether ISA IRQ `irq` is asserted by the router (for tests and debugging). */
  asserted(irq: number): boolean {
    return (Atomics.load(this.driven, 0) & (1 << irq)) !== 0;
  }

  /** The level of every (slot, pin) source, for saveState (the per-PIRQ counts follow from them). */
  snapshot(): number[] {
    return this.lock.with(() => [...this.levels]);
  }

  /** Loads snapshot()'s levels (before resync()); the counts are derived from them. */
  load(levels: readonly number[]): void {
    if (levels.length !== SLOTS * PINS || levels.some((l) => l !== 0 && l !== 1))
      throw new RangeError(`PIRQ source levels must be ${SLOTS * PINS} zeros and ones`);
    this.lock.with(() => {
      this.counts.fill(0);
      levels.forEach((level, i) => {
        this.levels[i] = level;
        if (level) this.counts[pirqOf(i >> 2, (i & 3) + 1)]++;
      });
    });
  }

  private setSource(slot: number, pin: number, level: boolean): void {
    const index = slot * PINS + (pin - 1);
    this.lock.with(() => {
      if ((this.levels[index] === 1) === level) return;
      this.levels[index] = level ? 1 : 0;
      this.counts[pirqOf(slot, pin)] += level ? 1 : -1;
      this.drive();
    });
  }

  /** Wired OR: each routed PIRQ with an asserted source asserts its ISA IRQ; lines are driven only on change. */
  private drive(): void {
    let wanted = 0;
    for (let p = 0; p < PIRQ_COUNT; p++) {
      if (this.counts[p] === 0) continue;
      const irq = routedIrq(Atomics.load(this.config, PIIX_PIRQRC + p));
      if (irq !== undefined) wanted |= 1 << irq;
    }
    const before = Atomics.load(this.driven, 0);
    const changed = wanted ^ before;
    if (changed === 0) return;
    Atomics.store(this.driven, 0, wanted);
    // Lower first, then raise: a level moving between IRQs is never seen on both at once.
    for (const raise of [false, true])
      for (let irq = 0; irq < 16; irq++)
        if (changed & (1 << irq) && ((wanted & (1 << irq)) !== 0) === raise) this.line(irq).set(raise);
  }

  private line(irq: number): IrqLine {
    let l = this.lines.get(irq);
    if (!l) {
      l = this.irqLine(irq);
      this.lines.set(irq, l);
    }
    return l;
  }
}

/**
 * The interrupt line of INTx `pin` (1 = INTA#) of bus-0 device `slot`, routed through the PIIX3's PIRQ registers
 * to the ISA IRQ the guest programmed. `state` is the 'piix3-isa' device's state; `irqLine` the thread's
 * DeviceAttachContext.irqLine (or DeviceCreateContext.irqLine).
 */
export function pciIntxLine(
  state: PirqRouterState,
  slot: number,
  pin: number,
  irqLine: (isaIrq: number) => IrqLine,
): IrqLine {
  return new PirqRouter(state, irqLine).intxLine(slot, pin);
}
