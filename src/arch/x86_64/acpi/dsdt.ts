// ACPI 6.5 §5.2.11.1 Differentiated System Description Table (DSDT): Partita's namespace: \_SB_ with one
// processor device per vCPU (§8.4, ACPI0007), COM1 (PNP0501), the PCI root bridge (PNP0A08, with its windows
// in _CRS and INTx routing in _PRT, §6.2.13) and the \_S5_ soft-off package (§7.4.2).
import { buildSdt } from './sdt.js';
import {
  concat,
  device,
  dwordMemory,
  eisaId,
  fixedMemory,
  integer,
  ioPort,
  irqNoFlags,
  name,
  pkg,
  resourceTemplate,
  scope,
  string,
  wordBusNumber,
  wordIo,
  type Aml,
} from './aml.js';

/** DSDT revision 2: AML integers are 64 bits wide. */
export const DSDT_REVISION = 2;

/** SLP_TYP value the \_S5_ package gives for soft-off (written into the sleep control register, if any). */
export const S5_SLEEP_TYPE = 5;

export interface DsdtOptions {
  /** Number of vCPUs: one processor device each, _UID 0..n-1 (the ACPI Processor UIDs of the MADT). */
  readonly processorCount: number;
  /** The PCI root bridge, when the machine has PCI. */
  readonly pci?: PciRootOptions;
}

export interface PciRootOptions {
  readonly ecam: { readonly base: number; readonly size: number; readonly endBus: number };
  /** The 32-bit memory window BARs are placed in: [base, end). */
  readonly mmio32: { readonly base: number; readonly end: number };
  /** The I/O port window for I/O BARs: [base, end). */
  readonly io: { readonly base: number; readonly end: number };
  /** INTA# of each device slot goes to this GSI (level, active-low by PCI convention). */
  readonly intx: readonly { readonly slot: number; readonly gsi: number }[];
}

/** Namespace name of the processor device with `uid`: C000, C001, … (hex). */
export function processorDeviceName(uid: number): string {
  return `C${uid.toString(16).toUpperCase().padStart(3, '0')}`;
}

function com1(): Aml {
  return device(
    'COM1',
    name('_HID', eisaId('PNP0501')), // 16550A-compatible serial port
    name('_UID', integer(1)),
    name('_CRS', resourceTemplate(ioPort(0x3f8, 0x3f8, 0x01, 0x08), irqNoFlags(4))),
  );
}

/**
 * \_SB_.PCI0: a PCI Express root bridge for segment 0, buses 0..endBus. _CRS lists what it forwards (config
 * ports, the I/O window, the 32-bit memory window); _PRT maps each slot's INTA# straight to an I/O APIC GSI
 * (source 0, §6.2.13 "the interrupt is a GSI"). The ECAM window is claimed by a motherboard resource device
 * (PNP0C02) as PCI Firmware 3.2 §4.1.2 asks, and is also reserved in the E820 map.
 */
function pciRoot(p: PciRootOptions): Aml[] {
  const prt = p.intx.map(({ slot, gsi }) =>
    // Address: device in the high word, 0xFFFF = any function; pin 0 = INTA#; source 0; source index = GSI
    pkg(integer(slot * 0x10000 + 0xffff), integer(0), integer(0), integer(gsi)),
  );
  return [
    device(
      'PCI0',
      name('_HID', eisaId('PNP0A08')), // PCI Express root bridge
      name('_CID', eisaId('PNP0A03')), // compatible: PCI root bridge
      name('_SEG', integer(0)),
      name('_BBN', integer(0)),
      name('_UID', integer(0)),
      name(
        '_CRS',
        resourceTemplate(
          wordBusNumber(0, p.ecam.endBus),
          ioPort(0xcf8, 0xcf8, 0x01, 0x08),
          wordIo(0x0000, 0x0cf7),
          wordIo(p.io.base, p.io.end - 1),
          dwordMemory(p.mmio32.base, p.mmio32.end - 1),
        ),
      ),
      name('_PRT', pkg(...prt)),
    ),
    device(
      'MRES',
      name('_HID', eisaId('PNP0C02')), // motherboard resources
      name('_UID', integer(0)),
      name('_CRS', resourceTemplate(fixedMemory(p.ecam.base, p.ecam.size))),
    ),
  ];
}

export function buildDsdt(opts: DsdtOptions): Uint8Array {
  const n = opts.processorCount;
  if (!Number.isInteger(n) || n < 1 || n > 0xfff) throw new RangeError(`processor count ${n} out of range`);
  const processors: Aml[] = [];
  for (let uid = 0; uid < n; uid++) {
    processors.push(device(processorDeviceName(uid), name('_HID', string('ACPI0007')), name('_UID', integer(uid))));
  }
  const body = [
    scope('\\_SB_', ...processors, com1(), ...(opts.pci ? pciRoot(opts.pci) : [])),
    // SLP_TYPa, SLP_TYPb, reserved, reserved
    name('\\_S5_', pkg(integer(S5_SLEEP_TYPE), integer(S5_SLEEP_TYPE), integer(0), integer(0))),
  ];
  return buildSdt('DSDT', DSDT_REVISION, concat(...body));
}
