// A PCI bus as a Partita VM has it, for device tests: the host bridge at 00:00.0 and virtio-pci transports at
// slots 1.., their BARs placed by the builder's allocator in the 32-bit window, decoding on, ioeventfds
// registered, the bus's memory and I/O windows and its two config mechanisms (ECAM, ports 0xCF8/0xCFC).
// Over a real KVM VM when /dev/kvm is there, else the model of test/support/vm-fd.ts.
import { BarAllocator, devfn, PciBus } from '../../src/devices/pci/bus.js';
import { PciHostBridge } from '../../src/devices/pci/host-bridge.js';
import { PCI_COMMAND, PCI_COMMAND_MEMORY } from '../../src/devices/pci/config-space.js';
import {
  MSIX_BAR,
  VIRTIO_BAR,
  VirtioPciDevice,
  type VirtioDeviceInfo,
} from '../../src/devices/virtio/pci-transport.js';
import { GsiRouter } from '../../src/base/gsi-routing.js';
import type { MmioDevice, PortIoDevice } from '../../src/devices/bus.js';
import { PCI_IO_BASE, PCI_IO_END, PCI_MMIO32_BASE, PCI_MMIO32_END } from '../../src/arch/x86_64/layout.js';
import { testVm, type TestVm } from './vm-fd.js';

export interface PciMachine {
  readonly vm: TestVm;
  readonly bus: PciBus;
  readonly hostBridge: PciHostBridge;
  /** The virtio functions; devices[n] is at slot n + 1. */
  readonly devices: readonly VirtioPciDevice[];
  /** The 32-bit memory window, as registered on the MMIO bus at PCI_MMIO32_BASE (offsets from there). */
  readonly window: MmioDevice;
  /** The I/O window, as registered on the port bus at PCI_IO_BASE. */
  readonly ioWindow: PortIoDevice;
  /** ECAM, as registered at PCI_ECAM_BASE (offsets bus << 20 | devfn << 12 | register). */
  readonly ecam: MmioDevice;
  /** Ports 0xCF8-0xCFF (offsets 0-7). */
  readonly ports: PortIoDevice;
  /** A guest config write through ECAM to bus 0, slot `slot`, function 0. */
  configWrite(slot: number, reg: number, size: 1 | 2 | 4, value: number): void;
}

export function pciMachine(infos: readonly VirtioDeviceInfo[]): PciMachine {
  const vm = testVm();
  const router = new GsiRouter(vm.fd);
  const bus = new PciBus();
  const hostBridge = new PciHostBridge();
  bus.add(devfn(0), hostBridge);
  const mem = { base: PCI_MMIO32_BASE, end: PCI_MMIO32_END };
  const bars = new BarAllocator(mem, mem, { base: PCI_IO_BASE, end: PCI_IO_END });
  const devices = infos.map((info, n) => {
    const dev = VirtioPciDevice.create(`virtio${n}`, info, vm.fd, router);
    for (const bar of [MSIX_BAR, VIRTIO_BAR])
      dev.config.setBarAddress(bar, bars.allocate('mem32', dev.config.bar(bar)!.size));
    dev.config.write(PCI_COMMAND, 2, PCI_COMMAND_MEMORY);
    dev.registerIoeventfds();
    bus.add(devfn(n + 1), dev);
    return dev;
  });
  const window = bus.memoryWindow(PCI_MMIO32_BASE, PCI_MMIO32_END - PCI_MMIO32_BASE);
  const ioWindow = bus.ioWindow(PCI_IO_BASE, PCI_IO_END - PCI_IO_BASE);
  const ecam = bus.ecam();
  const configWrite = (slot: number, reg: number, size: 1 | 2 | 4, value: number): void => {
    const data = new Uint8Array(size);
    for (let i = 0; i < size; i++) data[i] = (value >>> (8 * i)) & 0xff;
    ecam.mmioWrite((slot << 15) | reg, data);
  };
  return { vm, bus, hostBridge, devices, window, ioWindow, ecam, ports: bus.configPorts(), configWrite };
}
