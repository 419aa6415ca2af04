// A PC chipset on its buses without KVM, for tests: the PCI root with chipset 'i440fx', the PIIX3 ISA bridge and
// the PIIX4 PM function, attached through their models with recording interrupt lines and host callbacks, and
// configuration space reached through ports 0xCF8/0xCFC the way firmware reaches it.
import { GuestMemory } from '../../src/base/guest-memory.js';
import { GsiRouter } from '../../src/base/gsi-routing.js';
import type { IrqLine } from '../../src/base/irq-line.js';
import { MIB } from '../../src/base/units.js';
import { MmioBus, PortIoBus } from '../../src/devices/bus.js';
import type {
  AttachedDevice,
  DeviceAttachContext,
  DeviceCreateContext,
  DeviceModel,
  DeviceOptions,
} from '../../src/devices/model.js';
import { PciBus } from '../../src/devices/pci/bus.js';
import { pciRootModel } from '../../src/devices/pci/root.js';
import { piix3IsaModel, type Piix3State } from '../../src/devices/pc/piix3.js';
import { piix4PmModel, type AttachedPiix4Pm } from '../../src/devices/pc/piix4-pm.js';

export interface StopRequest {
  readonly kind: 'guest-exit';
  readonly status: number;
  readonly message: string;
}

/** Interrupt lines that remember their level and every change. */
export class IrqRecorder {
  readonly levels = new Map<number, boolean>();
  readonly changes: [number, boolean][] = [];
  line = (irq: number): IrqLine => ({
    set: (level: boolean) => {
      this.levels.set(irq, level);
      this.changes.push([irq, level]);
    },
  });
  level(irq: number): boolean {
    return this.levels.get(irq) ?? false;
  }
}

/** create() of these models needs no VM: a context whose VM parts are refused if used. */
export const createContext = {
  vmFd: -1,
  machine: { cpus: 1, memory: 64 * MIB, boot: 'firmware' },
  diskImages: [],
  name: (prefix: string) => `${prefix}0`,
} as unknown as DeviceCreateContext;

export interface Chipset {
  readonly pio: PortIoBus;
  readonly mmio: MmioBus;
  readonly pci: PciBus;
  readonly irqs: IrqRecorder;
  readonly stops: StopRequest[];
  readonly resets: string[];
  readonly states: { readonly root: unknown; readonly piix3: Piix3State; readonly pm: unknown };
  readonly root: AttachedDevice;
  readonly piix3: AttachedDevice;
  readonly pm: AttachedPiix4Pm;
}

export interface ChipsetOptions {
  readonly pm?: Omit<DeviceOptions, 'kind'>;
  /** Shared states of an existing chipset: this one is another thread's view of it. */
  readonly states?: Chipset['states'];
}

export function chipset(opts: ChipsetOptions = {}): Chipset {
  const pio = new PortIoBus();
  const mmio = new MmioBus();
  const pci = new PciBus();
  const irqs = new IrqRecorder();
  const stops: StopRequest[] = [];
  const resets: string[] = [];
  const ctx: DeviceAttachContext = {
    vmFd: -1,
    router: new GsiRouter(-1),
    pio,
    mmio,
    pci,
    memory: GuestMemory.allocateRanges([{ gpa: 0, size: MIB }]),
    irqLine: irqs.line,
    host: { serialOutputFd: 1, stop: (r) => void stops.push(r), reset: (why) => void resets.push(why) },
  };
  const make = <S>(model: DeviceModel<S>, options: Omit<DeviceOptions, 'kind'> = {}): S =>
    model.create({ kind: model.kind, ...options }, createContext);
  const states = opts.states ?? {
    root: make(pciRootModel, { chipset: 'i440fx' }),
    piix3: make(piix3IsaModel),
    pm: make(piix4PmModel as DeviceModel, opts.pm),
  };
  return {
    pio,
    mmio,
    pci,
    irqs,
    stops,
    resets,
    states,
    root: pciRootModel.attach(states.root as Parameters<typeof pciRootModel.attach>[0], ctx),
    piix3: piix3IsaModel.attach(states.piix3, ctx),
    pm: (piix4PmModel as DeviceModel).attach(states.pm, ctx) as AttachedPiix4Pm,
  };
}

const address = (dev: number, fn: number, offset: number): number =>
  (0x8000_0000 | (dev << 11) | (fn << 8) | (offset & 0xfc)) >>> 0;

/** Configuration mechanism #1 as firmware uses it: dword address to 0xCF8, data at 0xCFC + (offset & 3). */
export function configRead(pio: PortIoBus, dev: number, fn: number, offset: number, size: 1 | 2 | 4): number {
  pio.write(0xcf8, 4, address(dev, fn, offset));
  return pio.read(0xcfc + (offset & 3), size);
}

export function configWrite(
  pio: PortIoBus,
  dev: number,
  fn: number,
  offset: number,
  size: 1 | 2 | 4,
  value: number,
): void {
  pio.write(0xcf8, 4, address(dev, fn, offset));
  pio.write(0xcfc + (offset & 3), size, value);
}
