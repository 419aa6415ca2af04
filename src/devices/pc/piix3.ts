// Intel 82371SB PIIX3 function 0, the PCI-to-ISA bridge (82371FB/SB datasheet, order no. 290550, §2.2 PCI
// configuration registers, function 0): device 8086:7000 at 00:01.0, class 06.01.00, a multi-function header (the
// PIIX4 power management function sits at 00:01.3). Registry kind "piix3-isa". What it gives the machine:
//   - PIRQ route control 0x60-0x63 and the PCI INTx routing behind them (pirq-router.ts);
//   - the reset control register at port 0xCF9 (§2.4.6 RC): writing RCPU (bit 2) resets the machine;
//   - the ACPI description of that routing: PCI0._PRT through the link devices LNKA-LNKD (PNP0C0F, ACPI 6.5
//     §6.2.13), whose _CRS/_SRS/_DIS read and write the route registers through a PCI_Config OperationRegion;
//   - MADT interrupt source overrides making the IRQs the links offer level-triggered, active-high (as PCI
//     interrupts arrive at the interrupt controllers once the PIIX has inverted them).
// The ELCR (ports 0x4D0/0x4D1) belongs to KVM's in-kernel PIC, so it is not registered here. The IDE/USB
// functions and the ISA DMA/timer blocks of the real chip are not part of this model.
import {
  and,
  arg,
  call,
  createDWordField,
  device,
  eisaId,
  extendedInterrupt,
  field,
  FIELD_BYTE_ACC,
  ifThen,
  integer,
  lLess,
  method,
  name,
  operationRegion,
  or,
  pkg,
  ref,
  REGION_PCI_CONFIG,
  resourceTemplate,
  returnValue,
  scope,
  store,
  type Aml,
  type InterruptFlags,
} from '../../arch/x86_64/acpi/aml.js';
import { MPS_INTI_POLARITY_HIGH, MPS_INTI_TRIGGER_LEVEL } from '../../arch/x86_64/acpi/madt.js';
import type { PortIoDevice } from '../bus.js';
import {
  bytesToJson,
  DeviceStateError,
  expectSnapshot,
  jsonToBytes,
  type DeviceHost,
  type DeviceModel,
  type JsonValue,
} from '../model.js';
import { devfn, type PciFunction } from '../pci/bus.js';
import { CONFIG_SPACE_SIZE, PciConfigSpace, QEMU_SUBSYSTEM_IDS } from '../pci/config-space.js';
import {
  createPirqRouterBuffer,
  PIIX_PIRQRC,
  PIRQ_COUNT,
  PIRQ_DISABLED,
  pirqOf,
  PirqRouter,
  type PirqRouterState,
} from './pirq-router.js';

export const PIIX3_VENDOR_ID = 0x8086;
export const PIIX3_DEVICE_ID = 0x7000;
/** Where the PIIX3 sits on bus 0: device 1, function 0. */
export const PIIX3_DEVFN = devfn(1, 0);
/** The reset control register (datasheet §2.4.6, "RC"): bit 1 SRST (hard reset), bit 2 RCPU (reset now). */
export const PIIX_RCR_PORT = 0xcf9;
const RCR_SRST = 0x02;
const RCR_RCPU = 0x04;
/** The ISA IRQs the link devices offer the OS (and that SeaBIOS programs: 10, 10, 11, 11). */
export const PIRQ_IRQS: readonly number[] = [5, 10, 11];

/** Reset values (QEMU's piix3_reset follows the same datasheet table) and writable masks of function 0. */
const REGISTERS: readonly (readonly [number, number, number])[] = [
  [0x4c, 0x4d, 0xff], // IORT ISA I/O recovery timer
  [0x4e, 0x03, 0xff], // XBCS X-bus chip select
  [0x4f, 0x00, 0xff],
  ...Array.from({ length: PIRQ_COUNT }, (_, i) => [PIIX_PIRQRC + i, PIRQ_DISABLED, 0x8f] as const),
  [0x69, 0x02, 0xfe], // TOM top of memory
  [0x6a, 0x00, 0xff], // MSTAT misc status
  [0x6b, 0x00, 0xff],
  [0x70, 0x80, 0xcf], // MBIRQ0 motherboard IRQ route
  [0x76, 0x0c, 0x8f], // MBDMA0/1 motherboard DMA
  [0x77, 0x0c, 0x8f],
  [0x78, 0x02, 0xff], // PCSC programmable chip select
  [0x79, 0x00, 0xff],
  [0x80, 0x00, 0x7f], // APICBASE
  [0x82, 0x00, 0x0f], // DLC deterministic latency
  [0xa0, 0x08, 0x1f], // SMICNTL
  [0xa2, 0x00, 0xff], // SMIEN
  [0xa3, 0x00, 0x01],
  [0xa4, 0x00, 0xff], // SEE system event enable
  [0xa5, 0x00, 0xff],
  [0xa6, 0x00, 0xff],
  [0xa7, 0x00, 0xe0],
  [0xa8, 0x0f, 0xff], // FTMR fast off timer
  [0xaa, 0x00, 0xff], // SMIREQ
  [0xab, 0x00, 0x0f],
  [0xac, 0x00, 0xff], // CTLTMR
  [0xae, 0x00, 0xff], // CTHTMR
];

/** Function 0 of the PIIX3 on the PCI bus: its config space; PIRQ route writes go to the router. */
export class Piix3IsaBridge implements PciFunction {
  readonly name = 'piix3-isa';
  readonly config: PciConfigSpace;

  constructor(
    shared: SharedArrayBuffer | undefined,
    private readonly router?: PirqRouter,
  ) {
    const initialize = shared === undefined;
    this.config = new PciConfigSpace(shared);
    const id = {
      vendorId: PIIX3_VENDOR_ID,
      deviceId: PIIX3_DEVICE_ID,
      classCode: 0x060100,
      ...QEMU_SUBSYSTEM_IDS,
      headerType: 0x80, // multi-function: firmware looks for functions 1-7 (the PM function at 3)
    };
    if (initialize) {
      this.config.initialize(id);
      this.config.setU16(0x04, 0x0007); // PCICMD: I/O, memory, bus master
      this.config.setU16(0x06, 0x0200); // PCISTS: DEVSEL medium
    } else this.config.defineMasks(id);
    for (const [offset, reset, mask] of REGISTERS) {
      if (initialize) this.config.bytes[offset] = reset;
      this.config.setWritableMask(offset, 1, mask);
    }
  }

  barRead(_bar: number, _offset: number, data: Uint8Array): void {
    data.fill(0xff);
  }
  barWrite(): void {}

  configWritten(offset: number, size: number): void {
    if (offset < PIIX_PIRQRC + PIRQ_COUNT && offset + size > PIIX_PIRQRC) this.router?.routesChanged();
  }
}

/** Port 0xCF9: the reset control register. */
export class ResetControl implements PortIoDevice {
  readonly name = 'piix3-reset-control';
  constructor(
    private readonly rcr: Int32Array,
    private readonly host: Pick<DeviceHost, 'reset'>,
  ) {}

  pioRead(): number {
    return Atomics.load(this.rcr, 0) & RCR_SRST;
  }

  pioWrite(_offset: number, _size: number, value: number): void {
    Atomics.store(this.rcr, 0, value & RCR_SRST);
    // RCPU with SRST is a hard reset (what Linux's reboot=pci and the FADT reset value 0x06 write); RCPU alone is
    // a soft reset (INIT) on hardware. Partita has no separate INIT path, so both restart the machine (QEMU does
    // the same).
    if (value & RCR_RCPU) this.host.reset('0xCF9');
  }
}

const LINKS = ['LNKA', 'LNKB', 'LNKC', 'LNKD'];
const FIELD_UNITS = ['PRQA', 'PRQB', 'PRQC', 'PRQD'];
const ISA_PATH = '\\_SB_.PCI0.ISA_';
const LINK_IRQ: InterruptFlags = { level: true, activeHigh: true, shared: true };

/**
 * \_SB_ objects of the PCI interrupt routing: PCI0.ISA_ (the PIIX3, with its route registers as field units),
 * PCI0._PRT naming a link device for each slot and pin, the link devices, and two helper methods.
 */
export function piix3Aml(): Aml[] {
  const prt: Aml[] = [];
  for (let slot = 1; slot < 32; slot++)
    for (let pin = 1; pin <= 4; pin++)
      // Address (device in the high word, any function), pin (0 = INTA#), source (the link), source index 0
      prt.push(pkg(integer(slot * 0x10000 + 0xffff), integer(pin - 1), ref(LINKS[pirqOf(slot, pin)]), integer(0)));
  const links = LINKS.map((link, i) => {
    const prq = ref(`${ISA_PATH}.${FIELD_UNITS[i]}`);
    return device(
      link,
      name('_HID', eisaId('PNP0C0F')), // PCI interrupt link device
      name('_UID', integer(i)),
      name('_PRS', resourceTemplate(extendedInterrupt(LINK_IRQ, ...PIRQ_IRQS))),
      method('_STA', 0, false, returnValue(call('IQST', prq))),
      method('_DIS', 0, false, or(prq, integer(PIRQ_DISABLED), prq)),
      method('_CRS', 0, false, returnValue(call('IQCR', prq))),
      // The OS hands back one of _PRS's descriptors: its interrupt number is the DWord at byte 5.
      method('_SRS', 1, false, createDWordField(arg(0), 5, 'PRRI'), store(ref('PRRI'), prq)),
    );
  });
  return [
    scope(
      'PCI0',
      device(
        'ISA_',
        name('_ADR', integer(0x0001_0000)), // device 1, function 0
        operationRegion('PIRQ', REGION_PCI_CONFIG, PIIX_PIRQRC, PIRQ_COUNT),
        field(
          'PIRQ',
          FIELD_BYTE_ACC,
          FIELD_UNITS.map((n) => ({ name: n, bits: 8 })),
        ),
      ),
      name('_PRT', pkg(...prt)),
    ),
    // _STA of a link from its route register: present and functioning, enabled unless IRQEN# is set.
    method(
      'IQST',
      1,
      false,
      ifThen(and(arg(0), integer(PIRQ_DISABLED)), returnValue(integer(0x09))),
      returnValue(integer(0x0b)),
    ),
    // _CRS of a link: one interrupt, the routed IRQ (none, 0, while disabled).
    method(
      'IQCR',
      1,
      true,
      name('PRR0', resourceTemplate(extendedInterrupt(LINK_IRQ, 0))),
      createDWordField(ref('PRR0'), 5, 'PRRI'),
      ifThen(lLess(arg(0), integer(PIRQ_DISABLED)), store(and(arg(0), integer(0x0f)), ref('PRRI'))),
      returnValue(ref('PRR0')),
    ),
    ...links,
  ];
}

export interface Piix3State extends PirqRouterState {
  /** Int32: the reset control register's stored bits. */
  readonly rcr: SharedArrayBuffer;
}

/**
 * The PIIX3's state among a machine's created devices (SharedDeviceState.devices), for pciIntxLine(): undefined
 * when the machine has no PIIX3 (the generic chipset routes INTx straight to GSIs).
 */
export function findPiix3State(
  devices: readonly { readonly kind: string; readonly state: unknown }[],
): Piix3State | undefined {
  return devices.find((d) => d.kind === 'piix3-isa')?.state as Piix3State | undefined;
}

export const piix3IsaModel: DeviceModel<Piix3State> = {
  kind: 'piix3-isa',
  summary: 'PIIX3 PCI-to-ISA bridge 8086:7000 at 00:01.0: PIRQ routing of PCI INTx, reset control at port 0xCF9',
  options: {},
  bus: 'platform',
  create: () => ({
    config: new Piix3IsaBridge(undefined).config.shared,
    router: createPirqRouterBuffer(),
    rcr: new SharedArrayBuffer(4),
  }),
  describe: () => ({
    acpi: piix3Aml(),
    interruptOverrides: PIRQ_IRQS.map((irq) => ({
      irq,
      gsi: irq,
      flags: MPS_INTI_POLARITY_HIGH | MPS_INTI_TRIGGER_LEVEL,
    })),
  }),
  attach(state, ctx) {
    const router = new PirqRouter(state, (irq) => ctx.irqLine(irq));
    const bridge = new Piix3IsaBridge(state.config, router);
    const rcr = new Int32Array(state.rcr);
    ctx.pci.add(PIIX3_DEVFN, bridge);
    ctx.pio.register(PIIX_RCR_PORT, 1, new ResetControl(rcr, ctx.host));
    const config = bridge.config.bytes;
    return {
      name: bridge.name,
      saveState: () => ({
        kind: 'piix3-isa',
        version: 1,
        data: { config: bytesToJson(config), rcr: Atomics.load(rcr, 0), sources: router.snapshot() },
      }),
      restoreState(snapshot) {
        expectSnapshot(bridge.name, snapshot, 'piix3-isa', 1);
        // Everything is checked before anything is loaded: a refused snapshot changes nothing.
        const bytes = new Uint8Array(CONFIG_SPACE_SIZE);
        jsonToBytes(bridge.name, 'config', snapshot.data.config, bytes);
        const differs = bridge.config.fixedBitsDiffer(bytes);
        if (differs >= 0)
          throw new DeviceStateError(bridge.name, `'config' differs in read-only byte 0x${differs.toString(16)}`);
        const saved = snapshot.data.rcr;
        if (typeof saved !== 'number' || !Number.isInteger(saved) || saved < 0 || saved > 0xff)
          throw new DeviceStateError(bridge.name, `'rcr' is ${JSON.stringify(saved)}, not a byte`);
        const sources = snapshot.data.sources;
        if (!isLevelList(sources)) throw new DeviceStateError(bridge.name, `'sources' is not a list of 128 levels`);
        config.set(bytes);
        Atomics.store(rcr, 0, saved & RCR_SRST);
        router.load(sources);
        router.resync();
      },
    };
  },
};

function isLevelList(v: JsonValue | undefined): v is readonly number[] {
  return Array.isArray(v) && v.length === 128 && v.every((x) => x === 0 || x === 1);
}
