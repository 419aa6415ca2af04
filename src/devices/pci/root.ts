// The PCI root complex of the machine (registry kind "pci-root"): bus 0 behind the host bridge at 00:00.0,
// configuration mechanism #1 at ports 0xCF8/0xCFC (PCI Local Bus 3.0 §3.2.2.3.2) and ECAM (PCIe 5.0 §7.2.2),
// the 32-bit memory and I/O windows BARs live in. Described to the guest as ACPI \_SB_.PCI0 (PNP0A08, windows in
// _CRS, each slot's INTA# in _PRT per ACPI 6.5 §6.2.13), an MCFG table, and ECAM reserved in E820 and by a
// PNP0C02 device as PCI Firmware 3.2 §4.1.2 asks.
//
// Two chipsets: 'generic' (the default, direct kernel boot) has QEMU's generic PCIe host bridge and routes each
// slot's INTA# straight to an I/O APIC pin (_PRT here); 'i440fx' presents the Intel 82441FX host bridge that real
// firmware looks for (../pc/i440fx.ts), leaves port 0xCF9 to the PIIX3's reset control register, and leaves _PRT to
// the PIIX3 ('piix3-isa'), whose PIRQ registers route PCI interrupts there.
import { Type } from '@sinclair/typebox';
import {
  PCI_ECAM_BASE,
  PCI_ECAM_BUSES,
  PCI_ECAM_SIZE,
  PCI_IO_BASE,
  PCI_IO_END,
  PCI_MMIO32_BASE,
  PCI_MMIO32_END,
} from '../../arch/x86_64/layout.js';
import {
  device,
  dwordMemory,
  eisaId,
  fixedMemory,
  integer,
  ioPort,
  name,
  pkg,
  resourceTemplate,
  wordBusNumber,
  wordIo,
  type Aml,
} from '../../arch/x86_64/acpi/aml.js';
import { buildMcfg } from '../../arch/x86_64/acpi/mcfg.js';
import {
  bytesToJson,
  DeviceStateError,
  expectSnapshot,
  jsonToBytes,
  type DeviceModel,
  type PciInterrupt,
} from '../model.js';
import { devfn, PCI_CONFIG_ADDRESS_PORT } from './bus.js';
import { PciHostBridge } from './host-bridge.js';
import { I440fxHostBridge } from '../pc/i440fx.js';
import type { PortIoDevice } from '../bus.js';

export interface PciRootWindows {
  readonly ecam: { readonly base: number; readonly size: number; readonly endBus: number };
  /** The 32-bit memory window BARs are placed in: [base, end). */
  readonly mmio32: { readonly base: number; readonly end: number };
  /** The I/O port window for I/O BARs: [base, end). */
  readonly io: { readonly base: number; readonly end: number };
  /** A second 32-bit memory window above ECAM (the PC platform): [base, end). */
  readonly mmioHigh?: { readonly base: number; readonly end: number };
}

/** Where this machine's PCI windows are: QEMU microvm's places, so one test guest finds PCI alike on both. */
export const PCI_ROOT_WINDOWS: PciRootWindows = {
  ecam: { base: PCI_ECAM_BASE, size: PCI_ECAM_SIZE, endBus: PCI_ECAM_BUSES - 1 },
  mmio32: { base: PCI_MMIO32_BASE, end: PCI_MMIO32_END },
  io: { base: PCI_IO_BASE, end: PCI_IO_END },
};

/**
 * The PC platform (i440FX): firmware places BARs top-down from just below the I/O APIC (SeaBIOS's window ends at
 * 0xFEC00000, as on QEMU's pc machine), so the bus also decodes [0xF0000000, 0xFEC00000) above ECAM.
 */
export const PC_PCI_ROOT_WINDOWS: PciRootWindows = {
  ...PCI_ROOT_WINDOWS,
  mmioHigh: { base: 0xf000_0000, end: 0xfec0_0000 },
};

/** The windows of a chipset. */
export function pciRootWindows(chipset: PciChipset | undefined): PciRootWindows {
  return chipset === 'i440fx' ? PC_PCI_ROOT_WINDOWS : PCI_ROOT_WINDOWS;
}

/**
 * \_SB_.PCI0 and the motherboard resource device that claims ECAM. `intx` undefined: no _PRT (the i440FX's PIIX3
 * adds it).
 */
export function pciRootAml(p: PciRootWindows, intx: readonly PciInterrupt[] | undefined): Aml[] {
  const prt = (intx ?? []).map(({ slot, gsi }) =>
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
          ...(p.mmioHigh ? [dwordMemory(p.mmioHigh.base, p.mmioHigh.end - 1)] : []),
        ),
      ),
      ...(intx ? [name('_PRT', pkg(...prt))] : []),
    ),
    device(
      'MRES',
      name('_HID', eisaId('PNP0C02')), // motherboard resources
      name('_UID', integer(0)),
      name('_CRS', resourceTemplate(fixedMemory(p.ecam.base, p.ecam.size))),
    ),
  ];
}

export type PciChipset = 'generic' | 'i440fx';

interface PciRootState {
  readonly hostBridge: SharedArrayBuffer;
  /** Absent: 'generic'. */
  readonly chipset?: PciChipset;
}

/** Ports 0xCFC-0xCFF of configuration mechanism #1 alone, for the config-port handler registered at 0xCF8. */
function dataPorts(config: PortIoDevice): PortIoDevice {
  return {
    name: config.name,
    pioRead: (offset, size) => config.pioRead(offset + 4, size),
    pioWrite: (offset, size, value) => config.pioWrite(offset + 4, size, value),
  };
}

export const pciRootModel: DeviceModel<PciRootState> = {
  kind: 'pci-root',
  summary: 'PCI bus 0: host bridge 00:00.0, ports 0xCF8/0xCFC, ECAM at 0xE0000000, BAR windows',
  options: {
    chipset: Type.Optional(
      Type.Union([Type.Literal('generic'), Type.Literal('i440fx')], {
        description: "host bridge: 'generic' (default) or 'i440fx' (Intel 82441FX, for firmware; add piix3-isa)",
      }),
    ),
  },
  bus: 'platform',
  create: (options) => {
    const chipset: PciChipset = options.chipset === 'i440fx' ? 'i440fx' : 'generic';
    const bridge = chipset === 'i440fx' ? new I440fxHostBridge() : new PciHostBridge();
    return { hostBridge: bridge.config.shared, chipset };
  },
  describe: (state, platform) => {
    const w = pciRootWindows(state.chipset);
    return {
      acpi: pciRootAml(w, state.chipset === 'i440fx' ? undefined : platform.pciInterrupts),
      acpiTables: [buildMcfg([{ base: w.ecam.base, segment: 0, startBus: 0, endBus: w.ecam.endBus }])],
      reserved: [{ base: w.ecam.base, size: w.ecam.size }],
    };
  },
  attach(state, ctx) {
    const w = pciRootWindows(state.chipset);
    const bridge =
      state.chipset === 'i440fx' ? new I440fxHostBridge(state.hostBridge) : new PciHostBridge(state.hostBridge);
    ctx.pci.add(devfn(0), bridge);
    const configPorts = ctx.pci.configPorts();
    if (state.chipset === 'i440fx') {
      // 0xCF8 (only dword accesses reach CONFIG_ADDRESS) and 0xCFC-0xCFF; 0xCF9 is the PIIX3's reset control.
      ctx.pio.register(PCI_CONFIG_ADDRESS_PORT, 1, configPorts);
      ctx.pio.register(PCI_CONFIG_ADDRESS_PORT + 4, 4, dataPorts(configPorts));
    } else ctx.pio.register(PCI_CONFIG_ADDRESS_PORT, 8, configPorts);
    ctx.mmio.register(w.ecam.base, w.ecam.size, ctx.pci.ecam());
    ctx.mmio.register(
      w.mmio32.base,
      w.mmio32.end - w.mmio32.base,
      ctx.pci.memoryWindow(w.mmio32.base, w.mmio32.end - w.mmio32.base),
    );
    if (w.mmioHigh) {
      const { base, end } = w.mmioHigh;
      ctx.mmio.register(base, end - base, ctx.pci.memoryWindow(base, end - base));
    }
    ctx.pio.register(w.io.base, w.io.end - w.io.base, ctx.pci.ioWindow(w.io.base, w.io.end - w.io.base));
    const config = new Uint8Array(state.hostBridge);
    return {
      name: bridge.name,
      // The CONFIG_ADDRESS latch is the bus's; the host bridge's config space is ours.
      saveState: () => ({
        kind: 'pci-root',
        version: 1,
        data: { hostBridge: bytesToJson(config), configAddress: ctx.pci.configAddress },
      }),
      restoreState(snapshot) {
        expectSnapshot(bridge.name, snapshot, 'pci-root', 1);
        // Both fields are checked before either is loaded: a refused snapshot changes nothing.
        const bytes = new Uint8Array(config.length);
        jsonToBytes(bridge.name, 'hostBridge', snapshot.data.hostBridge, bytes);
        const address = snapshot.data.configAddress;
        if (typeof address !== 'number' || !Number.isInteger(address) || address < 0 || address > 0xffffffff)
          throw new DeviceStateError(bridge.name, `'configAddress' is ${JSON.stringify(address)}, not a 32-bit value`);
        config.set(bytes);
        ctx.pci.configAddress = address;
      },
    };
  },
};
