// The device set of a Partita VM, built identically on every thread that handles exits (the BSP's thread and
// the I/O thread that serves application processors). Device state lives in SharedArrayBuffers created once
// by the builder, so each thread's device objects are views of the same device.
//
// PCI: bus 0 behind a host bridge at 00:00.0, reachable through ports 0xCF8/0xCFC and the ECAM window; virtio
// devices take slots 1, 2, … in the order they were given. The builder places their BARs in the 32-bit window
// (as firmware would) so guests without PCI enumeration code find them ready; a guest may move them.
import { writeSync } from 'node:fs';
import { MmioBus, PortIoBus } from '../devices/bus.js';
import { BarAllocator, devfn, PciBus, PCI_CONFIG_ADDRESS_PORT } from '../devices/pci/bus.js';
import { PciHostBridge } from '../devices/pci/host-bridge.js';
import { PCI_COMMAND, PCI_COMMAND_MEMORY, PCI_INTERRUPT_LINE } from '../devices/pci/config-space.js';
import {
  MSIX_BAR,
  VIRTIO_BAR,
  VirtioPciDevice,
  type VirtioDeviceInfo,
  type VirtioPciShared,
} from '../devices/virtio/pci-transport.js';
import type { PciRootOptions } from '../arch/x86_64/acpi/dsdt.js';
import {
  PCI_ECAM_BASE,
  PCI_ECAM_BUSES,
  PCI_ECAM_SIZE,
  PCI_INTX_GSI_BASE,
  PCI_INTX_GSI_COUNT,
  PCI_IO_BASE,
  PCI_IO_END,
  PCI_MMIO32_BASE,
  PCI_MMIO32_END,
} from '../arch/x86_64/layout.js';
import { GsiRouter } from '../base/gsi-routing.js';
import { backendFor, type OpenedVirtioDevice } from './virtio-devices.js';
import { DEBUG_EXIT_PORT, DEBUG_EXIT_SIZE, DebugExit } from '../devices/legacy/debug-exit.js';
import { COM1, Uart16550 } from '../devices/legacy/uart-16550a.js';
import { Vm } from './vm.js';
import type { VmControl } from './control.js';

/** Serializable (postMessage-safe) shared state of all devices. */
export interface SharedDeviceState {
  readonly com1: SharedArrayBuffer;
  readonly pci: SharedPciState;
}

export interface SharedPciState {
  readonly address: SharedArrayBuffer;
  readonly hostBridge: SharedArrayBuffer;
  readonly router: SharedArrayBuffer;
  readonly virtio: readonly SharedVirtioFunction[];
}

export interface SharedVirtioFunction {
  readonly slot: number;
  /** The GSI its INTA# drives (see PCI_INTX_GSI_BASE). */
  readonly gsi: number;
  readonly device: OpenedVirtioDevice;
  readonly info: VirtioDeviceInfo;
  readonly shared: VirtioPciShared;
}

/** The PCI slot of the n-th virtio device (0-based) and the GSI of its INTA#. */
export function pciSlot(n: number): { slot: number; gsi: number } {
  const slot = n + 1;
  return { slot, gsi: PCI_INTX_GSI_BASE + ((slot - 1) % PCI_INTX_GSI_COUNT) };
}

/** The PCI root bridge as ACPI and the MP table describe it: the windows used here, and each slot's INTA#. */
export function pciRootDescription(devices: number): PciRootOptions {
  return {
    ecam: { base: PCI_ECAM_BASE, size: PCI_ECAM_SIZE, endBus: PCI_ECAM_BUSES - 1 },
    mmio32: { base: PCI_MMIO32_BASE, end: PCI_MMIO32_END },
    io: { base: PCI_IO_BASE, end: PCI_IO_END },
    intx: Array.from({ length: devices }, (_, n) => pciSlot(n)),
  };
}

/** Bus 0 has 32 slots; slot 0 is the host bridge. */
export const MAX_PCI_DEVICES = 31;

/** Creates the shared state of every device; runs once, on the builder thread, before any vCPU runs. */
export function createSharedDeviceState(vmFd: number, virtio: readonly OpenedVirtioDevice[] = []): SharedDeviceState {
  if (virtio.length > MAX_PCI_DEVICES)
    throw new RangeError(`${virtio.length} PCI devices: bus 0 has room for ${MAX_PCI_DEVICES}`);
  const router = new GsiRouter(vmFd);
  // One cursor for all memory BARs: small 64-bit BARs go below 4 GiB too, as SeaBIOS places them, so 32-bit
  // guests can reach every device.
  const mem = { base: PCI_MMIO32_BASE, end: PCI_MMIO32_END };
  const bars = new BarAllocator(mem, mem, { base: PCI_IO_BASE, end: PCI_IO_END });
  const functions = virtio.map((device, n): SharedVirtioFunction => {
    const { slot, gsi } = pciSlot(n);
    const backend = backendFor(device);
    const info = { ...backend.info, packedRing: device.packed };
    const transport = VirtioPciDevice.create(device.name, info, vmFd, router, Vm.irqLine(vmFd, gsi));
    transport.deviceConfig.set(backend.configBytes().subarray(0, transport.deviceConfig.length));
    for (const bar of [MSIX_BAR, VIRTIO_BAR]) {
      const def = transport.config.bar(bar);
      if (def) transport.config.setBarAddress(bar, bars.allocate(def.kind === 'io' ? 'io' : 'mem32', def.size));
    }
    transport.config.write(PCI_INTERRUPT_LINE, 1, gsi);
    transport.config.write(PCI_COMMAND, 2, PCI_COMMAND_MEMORY);
    transport.registerIoeventfds();
    return { slot, gsi, device, info, shared: transport.shared };
  });
  return {
    com1: Uart16550.createState(),
    pci: {
      address: new SharedArrayBuffer(PciBus.SHARED_BYTES),
      hostBridge: new PciHostBridge().config.shared,
      router: router.buffer,
      virtio: functions,
    },
  };
}

export interface DeviceSet {
  readonly pio: PortIoBus;
  readonly mmio: MmioBus;
  readonly com1: Uart16550;
  readonly pci: PciBus;
  /** This thread's view of each virtio function, in slot order (same order as SharedPciState.virtio). */
  readonly virtio: readonly VirtioPciDevice[];
}

export interface DeviceHost {
  readonly vmFd: number;
  readonly control: VmControl;
  /** Where COM1's output goes (a file descriptor: the terminal or a log file). */
  readonly serialOutputFd: number;
}

/** Port 0x80 (POST codes) and 0xED: written by firmware and Linux as an I/O delay; accepted and ignored. */
const NOOP_PORTS = [0x80, 0xed];

export function buildDevices(state: SharedDeviceState, host: DeviceHost): DeviceSet {
  const pio = new PortIoBus();
  const mmio = new MmioBus();
  const com1 = new Uart16550(state.com1, {
    irq: Vm.irqLine(host.vmFd, COM1.irq),
    output: (bytes) => writeAll(host.serialOutputFd, bytes),
  });
  pio.register(COM1.base, 8, com1);
  pio.register(
    DEBUG_EXIT_PORT,
    DEBUG_EXIT_SIZE,
    new DebugExit((status, value) => {
      host.control.stop({ kind: 'guest-exit', status, message: `the guest wrote ${value} to the debug-exit port` });
    }),
  );
  const noop = { name: 'io-delay', pioRead: () => 0xff, pioWrite: () => undefined };
  for (const port of NOOP_PORTS) pio.register(port, 1, noop);

  const pci = new PciBus(state.pci.address);
  pci.add(devfn(0), new PciHostBridge(state.pci.hostBridge));
  const router = new GsiRouter(host.vmFd, state.pci.router);
  const virtio = state.pci.virtio.map((f) => {
    const intx = Vm.irqLine(host.vmFd, f.gsi);
    const dev = VirtioPciDevice.attach(f.device.name, f.info, f.shared, host.vmFd, router, intx);
    pci.add(devfn(f.slot), dev);
    return dev;
  });
  pio.register(PCI_CONFIG_ADDRESS_PORT, 8, pci.configPorts());
  mmio.register(PCI_ECAM_BASE, PCI_ECAM_SIZE, pci.ecam());
  mmio.register(
    PCI_MMIO32_BASE,
    PCI_MMIO32_END - PCI_MMIO32_BASE,
    pci.memoryWindow(PCI_MMIO32_BASE, PCI_MMIO32_END - PCI_MMIO32_BASE),
  );
  pio.register(PCI_IO_BASE, PCI_IO_END - PCI_IO_BASE, pci.ioWindow(PCI_IO_BASE, PCI_IO_END - PCI_IO_BASE));
  return { pio, mmio, com1, pci, virtio };
}

function writeAll(fd: number, bytes: Uint8Array): void {
  let done = 0;
  while (done < bytes.length) {
    try {
      done += writeSync(fd, bytes, done, bytes.length - done);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EAGAIN') continue; // a non-blocking terminal that is momentarily full
      if (code === 'EPIPE') return; // nobody reads the serial output any more: drop it, keep the guest running
      throw e;
    }
  }
}
