// One DeviceModel for every virtio-pci device (virtio 1.2 §4.1): a device file supplies only what differs —
// its options, how its host side opens, and its backend — and this file does the PCI function, BAR placement,
// the I/O-thread runner and save/restore of the transport and its queues.
import { readFileSync } from 'node:fs';
import { Type, type TProperties } from '@sinclair/typebox';
import {
  DeviceStateError,
  expectSnapshot,
  type AttachedDevice,
  type DeviceModel,
  type DeviceOptions,
  type DeviceSnapshot,
  type JsonValue,
} from '../model.js';
import { devfn } from '../pci/bus.js';
import { PCI_COMMAND, PCI_COMMAND_MEMORY, PCI_INTERRUPT_LINE } from '../pci/config-space.js';
import type { VirtioBackend } from './device.js';
import { MSIX_BAR, VIRTIO_BAR, VirtioPciDevice, type VirtioDeviceInfo, type VirtioPciShared } from './pci-transport.js';
import { VirtioRunner } from './runner.js';

/** What a virtio device file tells the model. `Handle` is its opened host side: plain values only (fds, paths). */
export interface VirtioDeviceDefinition<Handle> {
  readonly kind: string;
  readonly summary: string;
  /** Its spec options (besides kind and the common `packed`). */
  readonly options: TProperties;
  /** Builder thread: open files/sockets; throws DeviceOpenError. */
  open(options: DeviceOptions, ctx: { readonly diskImages: readonly string[] }): Handle;
  /** The host files it uses as disk images (they are locked, and no output may go into them). */
  diskImages?(options: DeviceOptions): readonly string[];
  /** A backend over an opened handle (cheap: work starts at activate()); `log` gets host-side problems. */
  backend(handle: Handle, log?: (message: string) => void): VirtioBackend;
  /** After the run, on the builder thread: make the guest's writes durable. */
  settle?(handle: Handle): void;
  /**
   * The driver wrote the device-specific configuration at `offset` (on the vCPU thread that took the exit, which
   * also serves the driver's next read): a device whose config space answers what is written to it (virtio-input's
   * select/subsel) rewrites `config`, the shared bytes every thread reads. Without it such writes are ignored.
   */
  configWritten?(handle: Handle, config: Uint8Array, offset: number, data: Uint8Array): void;
  /**
   * Firmware boot: an option ROM the firmware runs for this function (iPXE for virtio-net), handed over through
   * fw_cfg as "pciVVVV,DDDD.rom" (the IDs from the ROM's own PCI data structure). Optional: when the file is
   * missing the device works, only without the ROM.
   */
  readonly optionRom?: string;
}

export interface VirtioFunctionState<Handle> {
  readonly name: string;
  readonly slot: number;
  readonly gsi: number;
  readonly handle: Handle;
  readonly info: VirtioDeviceInfo;
  readonly shared: VirtioPciShared;
  readonly optionRom?: { readonly name: string; readonly data: Uint8Array };
}

/** An option ROM file as fw_cfg names it for SeaBIOS ("pci1af4,1041.rom"), or undefined if it is not one. */
export function readOptionRom(path: string): { name: string; data: Uint8Array } | undefined {
  let data: Uint8Array;
  try {
    data = readFileSync(path);
  } catch {
    return undefined;
  }
  // PCI Firmware 3.2 §5.1: 55 AA, then at 0x18 the offset of the "PCIR" structure with vendor and device IDs.
  if (data.length < 0x1a || data[0] !== 0x55 || data[1] !== 0xaa) return undefined;
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const pcir = view.getUint16(0x18, true);
  if (pcir + 8 > data.length || new TextDecoder().decode(data.subarray(pcir, pcir + 4)) !== 'PCIR') return undefined;
  const hex = (v: number): string => v.toString(16).padStart(4, '0');
  return { name: `pci${hex(view.getUint16(pcir + 4, true))},${hex(view.getUint16(pcir + 6, true))}.rom`, data };
}

/** Common to every virtio device: offer packed virtqueues too (VIRTIO_F_RING_PACKED); split only by default. */
const COMMON_OPTIONS = {
  packed: Type.Optional(Type.Boolean({ description: 'offer packed virtqueues (VIRTIO_F_RING_PACKED)' })),
};

export const VIRTIO_SNAPSHOT_VERSION = 1;

/** This thread's view of a virtio function; on the I/O thread it also has the runner (queues, backend). */
export class AttachedVirtioFunction implements AttachedDevice {
  runner: VirtioRunner | undefined;
  /** On the I/O thread: the backend the runner drives (host-side input reaches virtio-input through it). */
  backend: VirtioBackend | undefined;

  constructor(
    readonly kind: string,
    readonly transport: VirtioPciDevice,
  ) {}

  get name(): string {
    return this.transport.name;
  }

  quiesce(): Promise<void> | void {
    return this.runner?.quiesce();
  }

  resume(): void {
    this.runner?.resume();
  }

  saveState(): DeviceSnapshot {
    const data: Record<string, JsonValue> = { transport: this.transport.saveState() };
    if (this.runner) data.queues = this.runner.saveQueues();
    const backend = this.backend?.saveState?.();
    if (backend !== undefined) data.backend = backend;
    return { kind: this.kind, version: VIRTIO_SNAPSHOT_VERSION, data };
  }

  /**
   * Transport first (the queues are rebuilt from its registers), then the queues. The transport checks its part
   * before changing anything; should the queues then be refused, the transport goes back to what it was, so a
   * refused snapshot leaves the device as it found it.
   */
  restoreState(snapshot: DeviceSnapshot): void {
    expectSnapshot(this.name, snapshot, this.kind, VIRTIO_SNAPSHOT_VERSION);
    const runner = this.runner;
    if (runner && snapshot.data.queues === undefined) throw new DeviceStateError(this.name, "lacks 'queues'");
    const before = runner ? this.transport.saveState() : undefined;
    this.transport.restoreState(snapshot.data.transport);
    if (!runner) return;
    try {
      runner.restoreQueues(snapshot.data.queues);
    } catch (e) {
      this.transport.restoreState(before);
      throw e;
    }
    // Host-side state of the backend (virtio-input's undelivered events): optional, after the queues restarted it.
    this.backend?.restoreState?.(snapshot.data.backend);
  }
}

export function virtioPciModel<Handle>(def: VirtioDeviceDefinition<Handle>): DeviceModel<VirtioFunctionState<Handle>> {
  const prefix = def.kind;
  return {
    kind: def.kind,
    summary: def.summary,
    options: { ...def.options, ...COMMON_OPTIONS },
    bus: 'pci',
    diskImages: def.diskImages,
    create(options, ctx) {
      if (!ctx.pci) throw new Error(`${def.kind} is a PCI device: the builder must give it a slot`);
      const { slot, gsi } = ctx.pci;
      const handle = def.open(options, ctx);
      try {
        const backend = def.backend(handle);
        const info: VirtioDeviceInfo = { ...backend.info, packedRing: options.packed === true };
        const name = ctx.name(prefix);
        const transport = VirtioPciDevice.create(name, info, ctx.vmFd, ctx.router, ctx.irqLine(gsi));
        transport.deviceConfig.set(backend.configBytes().subarray(0, transport.deviceConfig.length));
        if (ctx.bars) {
          for (const bar of [MSIX_BAR, VIRTIO_BAR]) {
            const b = transport.config.bar(bar);
            if (b) transport.config.setBarAddress(bar, ctx.bars.allocate(b.kind === 'io' ? 'io' : 'mem32', b.size));
          }
          transport.config.write(PCI_COMMAND, 2, PCI_COMMAND_MEMORY);
        }
        transport.config.write(PCI_INTERRUPT_LINE, 1, gsi);
        transport.registerIoeventfds();
        const rom = ctx.machine.boot === 'firmware' && def.optionRom ? readOptionRom(def.optionRom) : undefined;
        return { name, slot, gsi, handle, info, shared: transport.shared, ...(rom ? { optionRom: rom } : {}) };
      } catch (e) {
        def.backend(handle).close();
        throw e;
      }
    },
    describe: (state) => ({
      pciInterrupt: { slot: state.slot, gsi: state.gsi },
      ...(state.optionRom ? { firmwareFiles: [state.optionRom] } : {}),
    }),
    attach(state, ctx) {
      const transport = VirtioPciDevice.attach(
        state.name,
        state.info,
        state.shared,
        ctx.vmFd,
        ctx.router,
        ctx.irqLine(state.gsi),
      );
      ctx.pci.add(devfn(state.slot), transport);
      const configWritten = def.configWritten;
      if (configWritten)
        transport.deviceConfigWritten = (offset, data) =>
          configWritten(state.handle, transport.deviceConfig, offset, data);
      return new AttachedVirtioFunction(def.kind, transport);
    },
    serve(state, device, ctx) {
      const attached = device as AttachedVirtioFunction;
      const events = { on: (fd: number, handler: () => void) => ctx.onEventFd(fd, handler) };
      // Kept on the attached device too: host-side input (virtio-input) and save/restore reach the backend there.
      attached.backend = def.backend(state.handle, ctx.log);
      attached.runner = new VirtioRunner(
        attached.transport,
        attached.backend,
        ctx.memory,
        events,
        ctx.log, // the runner's messages name the device already
      );
    },
    settle: def.settle ? (state) => def.settle!(state.handle) : undefined,
    close: (state) => def.backend(state.handle).close(),
  };
}
