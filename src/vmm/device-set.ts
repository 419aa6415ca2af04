// The devices of one VM, made from the registry: created once on the builder thread (host side opened, shared
// state allocated), attached on every thread that handles exits (vCPU 0's thread and the I/O thread) as views
// of the same SharedArrayBuffers, served on the I/O thread, and described to the guest's tables.
//
// PCI devices take slots 1, 2, … of bus 0 in spec order; INTA# of slot s goes to GSI 16 + (s − 1) mod 8.
import { MmioBus, PortIoBus } from '../devices/bus.js';
import { BarAllocator, PciBus } from '../devices/pci/bus.js';
import { PCI_INTX_GSI_BASE, PCI_INTX_GSI_COUNT } from '../arch/x86_64/layout.js';
import type { Aml } from '../arch/x86_64/acpi/aml.js';
import type { FixedHardware } from '../arch/x86_64/acpi/fadt.js';
import type { InterruptOverride } from '../arch/x86_64/acpi/madt.js';
import { GsiRouter } from '../base/gsi-routing.js';
import type { GuestMemory } from '../base/guest-memory.js';
import {
  DeviceOpenError,
  type AttachedDevice,
  type DeviceCreateContext,
  type DeviceDescription,
  type DeviceHost,
  type DeviceModel,
  type MachineFacts,
  type DeviceOptions,
  type DeviceSnapshot,
  type PciInterrupt,
} from '../devices/model.js';
import { deviceRegistry, type DeviceRegistry } from '../devices/registry.js';
import { PCI_ROOT_WINDOWS } from '../devices/pci/root.js';
import { Vm } from './vm.js';
import type { IrqLine } from '../base/irq-line.js';
import { findPiix3State } from '../devices/pc/piix3.js';
import { pciIntxLine } from '../devices/pc/pirq-router.js';

/** The devices every VM of this machine type has, before the spec's own (which are all PCI today). */
export const PLATFORM_DEVICES: readonly DeviceOptions[] = [
  { kind: 'pci-root' },
  { kind: 'uart-16550a' },
  { kind: 'isa-debug-exit' },
  { kind: 'io-delay' },
];

/**
 * The platform of a PC booted by firmware, what SeaBIOS and OVMF expect of QEMU's `pc` machine: the i440FX host
 * bridge and the PIIX3 ISA bridge + PIIX4 power management at 00:01.x, COM1, fw_cfg, the CMOS clock, the PS/2
 * controller, port 0x92, and the firmware's debug console when its log is wanted.
 */
export function pcPlatformDevices(opts: { readonly firmwareLog?: string }): DeviceOptions[] {
  return [
    { kind: 'pci-root', chipset: 'i440fx' },
    { kind: 'piix3-isa' },
    { kind: 'piix4-pm' },
    { kind: 'uart-16550a' },
    { kind: 'isa-debug-exit' },
    { kind: 'io-delay' },
    { kind: 'fw-cfg' },
    { kind: 'cmos-rtc' },
    { kind: 'i8042' },
    { kind: 'system-control-a' },
    ...(opts.firmwareLog !== undefined ? [{ kind: 'debug-console', path: opts.firmwareLog }] : []),
  ];
}

/** Bus 0 has 32 slots; slot 0 is the host bridge. */
export const MAX_PCI_DEVICES = 31;

/** One device's shared state: structured-clone-safe, posted to the I/O thread as is. */
export interface CreatedDevice {
  readonly kind: string;
  readonly state: unknown;
  /** Its spec entry (for the firmware's boot order: which drives an AHCI controller has). */
  readonly options: DeviceOptions;
  /** PCI devices: the slot on bus 0. */
  readonly pciSlot?: number;
}

/** Serializable (postMessage-safe) shared state of all devices. */
export interface SharedDeviceState {
  readonly pciAddress: SharedArrayBuffer;
  readonly router: SharedArrayBuffer;
  readonly devices: readonly CreatedDevice[];
}

/** What the devices tell the guest's platform tables, gathered. */
export interface PlatformDescription {
  readonly acpi: readonly Aml[];
  readonly acpiTables: readonly Uint8Array[];
  readonly pciInterrupts: readonly PciInterrupt[];
  readonly reserved: readonly { readonly base: number; readonly size: number }[];
  readonly firmwareFiles: readonly { readonly name: string; readonly data: Uint8Array }[];
  readonly legacy: { readonly i8042?: boolean; readonly rtc?: boolean; readonly vga?: boolean };
  /** Fixed-hardware ACPI (buildAcpiTables' fixedHardware), when a device provides it. */
  readonly fadt?: FixedHardware;
  /** MADT overrides the devices ask for (buildAcpiTables' interruptOverrides). */
  readonly interruptOverrides: readonly InterruptOverride[];
  /** MMIO zones whose writes go through KVM's coalesced MMIO ring (DeviceDescription.coalescedMmio). */
  readonly coalescedMmio: readonly { readonly base: number; readonly size: number }[];
}

/**
 * On the PC platform a PCI device's INTA# is not wired to a fixed GSI: it goes through the PIIX3's PIRQ routing to
 * whichever ISA IRQ the firmware or OS programs. Such devices are given this number + slot as their "GSI", and
 * the irqLine of their contexts turns it into the routed line.
 */
export const PIRQ_ROUTED_INTX = 0x1000;

/** The PCI slot of the n-th PCI device (0-based; slots from `first`) and the GSI of its INTA#. */
export function pciSlot(n: number, first = 1, routed = false): PciInterrupt {
  const slot = n + first;
  return { slot, gsi: routed ? PIRQ_ROUTED_INTX + slot : PCI_INTX_GSI_BASE + ((slot - 1) % PCI_INTX_GSI_COUNT) };
}

/** A platform interrupt line by GSI; PIRQ_ROUTED_INTX + slot is that slot's INTA# through the PIIX3's routing. */
function platformIrqLine(vmFd: number, devices: readonly { readonly kind: string; readonly state: unknown }[]) {
  return (gsi: number): IrqLine => {
    if (gsi < PIRQ_ROUTED_INTX) return Vm.irqLine(vmFd, gsi);
    const piix3 = findPiix3State(devices);
    if (!piix3) throw new Error(`PCI slot ${gsi - PIRQ_ROUTED_INTX}: routed INTx needs the PIIX3 ISA bridge`);
    return pciIntxLine(piix3, gsi - PIRQ_ROUTED_INTX, 1, (irq) => Vm.irqLine(vmFd, irq));
  };
}

function modelOf(registry: DeviceRegistry, kind: string): DeviceModel {
  const model = registry.get(kind);
  if (!model) throw new DeviceOpenError(`unknown device kind '${kind}'`);
  return model;
}

export interface CreateDevicesOptions {
  readonly vmFd: number;
  /** Direct kernel boot places BARs as firmware would; firmware boot leaves them to the firmware. */
  readonly placeBars: boolean;
  /** Default (unit tests): one CPU, 64 MiB, direct kernel boot. */
  readonly machine?: MachineFacts;
  /** Reserves device memory (framebuffers): MemorySlots.reserveDeviceMemory of the VM. Default: refused. */
  readonly deviceMemory?: DeviceCreateContext['deviceMemory'];
  /** The platform devices before the spec's (default PLATFORM_DEVICES). */
  readonly platform?: readonly DeviceOptions[];
  /** The slot of the first PCI device of the spec (default 1; the PC platform has its ISA bridge at 1). */
  readonly firstPciSlot?: number;
  /** PCI INTx goes through the PIIX3's PIRQ routing (the PC platform) instead of fixed GSIs 16-23. */
  readonly pirqRouting?: boolean;
  readonly registry?: DeviceRegistry;
}

/**
 * Creates every device (platform devices first, then the spec's, in order) on the builder thread. On failure,
 * what was already opened is closed again and the error is rethrown.
 */
export function createDevices(specDevices: readonly DeviceOptions[], opts: CreateDevicesOptions): SharedDeviceState {
  const registry = opts.registry ?? deviceRegistry;
  const all = [...(opts.platform ?? PLATFORM_DEVICES), ...specDevices];
  const firstSlot = opts.firstPciSlot ?? 1;
  const pciCount = all.filter((d) => modelOf(registry, d.kind).bus === 'pci').length;
  if (pciCount > 32 - firstSlot)
    throw new DeviceOpenError(`${pciCount} PCI devices: bus 0 has room for ${32 - firstSlot}`);
  const router = new GsiRouter(opts.vmFd);
  const w = PCI_ROOT_WINDOWS;
  // One cursor for all memory BARs: small 64-bit BARs go below 4 GiB too, as SeaBIOS places them, so 32-bit
  // guests can reach every device.
  const bars = opts.placeBars ? new BarAllocator(w.mmio32, w.mmio32, w.io) : undefined;
  const counts = new Map<string, number>();
  const name = (prefix: string): string => {
    const n = counts.get(prefix) ?? 0;
    counts.set(prefix, n + 1);
    return `${prefix}${n}`;
  };
  const diskImages = machineDiskImages(all, registry);
  const created: { model: DeviceModel; device: CreatedDevice }[] = [];
  let pciIndex = 0;
  try {
    for (const options of all) {
      const model = modelOf(registry, options.kind);
      const pci = model.bus === 'pci' ? pciSlot(pciIndex++, firstSlot, opts.pirqRouting === true) : undefined;
      const state = model.create(options, {
        vmFd: opts.vmFd,
        router,
        irqLine: platformIrqLine(
          opts.vmFd,
          created.map((c) => c.device),
        ),
        name,
        pci,
        bars,
        diskImages,
        machine: opts.machine ?? { cpus: 1, memory: 64 << 20, boot: 'kernel' },
        deviceMemory:
          opts.deviceMemory ??
          ((_size, what) => {
            throw new DeviceOpenError(`${what}: this device set has no VM to map device memory into`);
          }),
      });
      created.push({ model, device: { kind: model.kind, state, options, ...(pci ? { pciSlot: pci.slot } : {}) } });
    }
  } catch (e) {
    for (const c of created) c.model.close?.(c.device.state);
    throw e;
  }
  return {
    pciAddress: new SharedArrayBuffer(PciBus.SHARED_BYTES),
    router: router.buffer,
    devices: created.map((c) => c.device),
  };
}

/** Every host file the machine's devices use as a disk image. */
export function machineDiskImages(
  devices: readonly DeviceOptions[],
  registry: DeviceRegistry = deviceRegistry,
): string[] {
  return devices.flatMap((d) => registry.get(d.kind)?.diskImages?.(d) ?? []);
}

/** Gathers what each device says about itself for ACPI, the MP table and the memory map. */
export function describeDevices(
  shared: SharedDeviceState,
  registry: DeviceRegistry = deviceRegistry,
): PlatformDescription {
  const models = shared.devices.map((d) => modelOf(registry, d.kind));
  const pciInterrupts = shared.devices.flatMap(
    (d, i) => models[i].describe?.(d.state, { pciInterrupts: [] }).pciInterrupt ?? [],
  );
  const facts = { pciInterrupts };
  const descriptions = shared.devices.map((d, i) => models[i].describe?.(d.state, facts) ?? {});
  return {
    acpi: descriptions.flatMap((d) => d.acpi ?? []),
    acpiTables: descriptions.flatMap((d) => d.acpiTables ?? []),
    pciInterrupts,
    reserved: descriptions.flatMap((d) => d.reserved ?? []),
    firmwareFiles: descriptions.flatMap((d) => d.firmwareFiles ?? []),
    legacy: Object.assign({}, ...descriptions.map((d) => d.legacy ?? {})) as PlatformDescription['legacy'],
    fadt: fixedHardwareOf(descriptions),
    interruptOverrides: descriptions.flatMap((d) => d.interruptOverrides ?? []),
    coalescedMmio: descriptions.flatMap((d) => d.coalescedMmio ?? []),
  };
}

/** The one device's fixed ACPI hardware, if any: two would be two PM1 blocks, which a FADT cannot describe. */
function fixedHardwareOf(descriptions: readonly DeviceDescription[]): FixedHardware | undefined {
  const blocks = descriptions.flatMap((d) => (d.fadt ? [d.fadt] : []));
  if (blocks.length > 1) throw new DeviceOpenError(`${blocks.length} devices provide the ACPI fixed hardware`);
  return blocks[0];
}

export interface AttachedDeviceEntry {
  readonly kind: string;
  readonly state: unknown;
  readonly device: AttachedDevice;
}

/** One thread's view of all devices, on its own buses. */
export interface DeviceSet {
  readonly pio: PortIoBus;
  readonly mmio: MmioBus;
  readonly pci: PciBus;
  readonly devices: readonly AttachedDeviceEntry[];
  /** The first device of a kind (e.g. the serial console's UART). */
  find<T extends AttachedDevice>(kind: string): T | undefined;
}

export function attachDevices(
  shared: SharedDeviceState,
  host: DeviceHost & { readonly vmFd: number },
  memory: GuestMemory,
  registry: DeviceRegistry = deviceRegistry,
): DeviceSet {
  const pio = new PortIoBus();
  const mmio = new MmioBus();
  const pci = new PciBus(shared.pciAddress);
  const router = new GsiRouter(host.vmFd, shared.router);
  const ctx = {
    vmFd: host.vmFd,
    router,
    pio,
    mmio,
    pci,
    memory,
    host,
    irqLine: platformIrqLine(host.vmFd, shared.devices),
  };
  const devices = shared.devices.map((d) => ({
    kind: d.kind,
    state: d.state,
    device: modelOf(registry, d.kind).attach(d.state, ctx),
  }));
  return {
    pio,
    mmio,
    pci,
    devices,
    find: <T extends AttachedDevice>(kind: string) => devices.find((d) => d.kind === kind)?.device as T | undefined,
  };
}

/** On the I/O thread: start each device's host side. */
export function serveDevices(
  set: DeviceSet,
  ctx: { memory: GuestMemory; log(message: string): void; onEventFd(fd: number, handler: () => void): void },
  registry: DeviceRegistry = deviceRegistry,
): void {
  for (const d of set.devices) modelOf(registry, d.kind).serve?.(d.state, d.device, ctx);
}

/** After the run, on the builder thread: make what the guest wrote durable. */
export function settleDevices(shared: SharedDeviceState, registry: DeviceRegistry = deviceRegistry): void {
  for (const d of shared.devices) modelOf(registry, d.kind).settle?.(d.state);
}

/** Every device's saved state, in device order (quiesce first for a consistent picture). */
export function saveDevices(set: DeviceSet): DeviceSnapshot[] {
  return set.devices.map((d) => d.device.saveState());
}

/** Loads saveDevices()'s result into a fresh device set of the same spec. */
export function restoreDevices(set: DeviceSet, snapshots: readonly DeviceSnapshot[]): void {
  if (snapshots.length !== set.devices.length)
    throw new RangeError(`saved state has ${snapshots.length} devices, the machine ${set.devices.length}`);
  set.devices.forEach((d, i) => d.device.restoreState(snapshots[i]));
}
