// The one contract every device implements — legacy port devices, PCI functions, virtio devices, later VFIO —
// and the contexts the builder gives it. A device is listed once in the registry (registry.ts); the machine
// spec, the builder, the guest's tables, the I/O thread and save/restore all derive from that one entry.
//
// Life of a device in a VM:
//   builder thread   create(options)  → State: host side opened (files, sockets), shared state allocated
//                    describe(state)  → what the guest's tables say about it (ACPI, MP table, E820)
//   every exit-handling thread (vCPU 0's thread, the I/O thread)
//                    attach(state)    → this thread's view, put on the port/MMIO/PCI buses
//   I/O thread       serve(state)     → host-side work (virtio backends, terminal input)
//   builder thread   settle(state)    → after the run: make host-side effects durable (flush written disks)
// State crosses threads by structured clone: SharedArrayBuffers, numbers, strings, plain objects; never
// class instances (their methods would not survive the copy).
import type { TProperties } from '@sinclair/typebox';
import type { Aml } from '../arch/x86_64/acpi/aml.js';
import type { FixedHardware } from '../arch/x86_64/acpi/fadt.js';
import type { InterruptOverride } from '../arch/x86_64/acpi/madt.js';
import type { GuestMemory } from '../base/guest-memory.js';
import type { GsiRouter } from '../base/gsi-routing.js';
import type { IrqLine } from '../base/irq-line.js';
import type { MmioBus, PortIoBus } from './bus.js';
import type { BarAllocator, PciBus } from './pci/bus.js';
import type { DeviceMemoryRegion } from '../base/device-memory.js';

/** Options of one device as the machine spec gives them: `kind` plus what the model's schema allows. */
export type DeviceOptions = { readonly kind: string } & Readonly<Record<string, unknown>>;

export interface DeviceModel<State = unknown> {
  /** The registry key and the machine spec's `kind` ("virtio-blk", "uart-16550a", …). */
  readonly kind: string;
  /** One line for help texts and errors. */
  readonly summary: string;
  /**
   * JSON Schema properties of its spec entry besides `kind` (TypeBox), checked before create(); unknown keys are
   * refused. Devices with no options have none.
   */
  readonly options: TProperties;
  /** 'pci': the builder gives it a slot on bus 0 and an INTA# line; 'platform': fixed ports and addresses. */
  readonly bus: 'platform' | 'pci';
  /** Builder thread, before any vCPU runs. Throws DeviceOpenError for host problems the user can fix. */
  create(options: DeviceOptions, ctx: DeviceCreateContext): State;
  /**
   * The host files this device uses as disk images (it locks them). The machine refuses two devices on one
   * image, and output files (serial log, console) that are one.
   */
  diskImages?(options: DeviceOptions): readonly string[];
  /** What the guest's platform tables say about the device. */
  describe?(state: State, platform: PlatformFacts): DeviceDescription;
  /** On each exit-handling thread: this thread's view of the device, registered on the buses. */
  attach(state: State, ctx: DeviceAttachContext): AttachedDevice;
  /** On the I/O thread, once: start the host side (virtio backends, input from the host). */
  serve?(state: State, device: AttachedDevice, ctx: DeviceServeContext): void;
  /** Builder thread, after the run: make what the guest wrote durable (nothing is closed: threads may still run). */
  settle?(state: State): void;
  /** Builder thread, when the VM does not start after all: release what create() opened. */
  close?(state: State): void;
}

export interface DeviceCreateContext {
  readonly vmFd: number;
  readonly router: GsiRouter;
  /** The platform's interrupt lines (ISA IRQs and GSIs of the in-kernel PIC/IOAPIC). */
  irqLine(gsi: number): IrqLine;
  /** Every disk image of this VM (DeviceModel.diskImages of all its devices). */
  readonly diskImages: readonly string[];
  /** Unique per VM: "virtio-blk0", "virtio-blk1", … for a prefix. */
  name(prefix: string): string;
  /** PCI devices: the slot on bus 0 and the GSI its INTA# drives. */
  readonly pci?: { readonly slot: number; readonly gsi: number };
  /**
   * Direct kernel boot: BARs are placed here, as firmware would, so guests without PCI enumeration find them.
   * Firmware boot: undefined, the firmware places them.
   */
  readonly bars?: BarAllocator;
  /** The machine this device is part of (fw_cfg reports the CPU count, CMOS the memory size, …). */
  readonly machine: MachineFacts;
  /**
   * Memory the guest maps directly (a framebuffer, later VFIO BARs): host memory plus a reserved KVM slot, not
   * mapped into the guest until placeDeviceMemory() (base/device-memory.ts) puts it at an address (e.g. where
   * the guest programmed the BAR). Structured-clone safe: attach() on any thread can place it and read its log.
   */
  deviceMemory(size: number, name: string, opts?: { readonly dirtyLog?: boolean }): DeviceMemoryRegion;
}

/** What a device may know about the machine it is built into. */
export interface MachineFacts {
  readonly cpus: number;
  /** Guest RAM in bytes. */
  readonly memory: number;
  /** 'firmware': real firmware runs from the reset vector (it places BARs, reads fw_cfg); 'kernel': direct boot. */
  readonly boot: 'kernel' | 'firmware';
}

/** Facts about the whole machine a device may need to describe itself (e.g. the PCI root lists every INTA#). */
export interface PlatformFacts {
  readonly pciInterrupts: readonly PciInterrupt[];
}

export interface PciInterrupt {
  readonly slot: number;
  readonly gsi: number;
}

export interface DeviceDescription {
  /** AML objects placed in the DSDT under \_SB_ (ACPI 6.5 §6.1 device identification, §6.4 resources). */
  readonly acpi?: readonly Aml[];
  /** Further ACPI tables (e.g. MCFG), pointed to by the XSDT. */
  readonly acpiTables?: readonly Uint8Array[];
  /** Its PCI INTA# route (ACPI _PRT, MP table I/O interrupt entries). */
  readonly pciInterrupt?: PciInterrupt;
  /** Guest-physical ranges the OS must not use as RAM (E820 type 2). */
  readonly reserved?: readonly { readonly base: number; readonly size: number }[];
  /**
   * Files it hands to firmware through fw_cfg (QEMU's fw_cfg file directory): an option ROM
   * ("pci1234,1111.rom"), "etc/…" settings. Only firmware boot reads them.
   */
  readonly firmwareFiles?: readonly { readonly name: string; readonly data: Uint8Array }[];
  /** FADT IAPC_BOOT_ARCH flags this device asks for. */
  readonly legacy?: { readonly i8042?: boolean; readonly rtc?: boolean; readonly vga?: boolean };
  /**
   * The fixed ACPI hardware this device implements (PM1 event/control, PM timer, GPE0, SCI, SMI command port,
   * reset register): with it the FADT is fixed-hardware instead of HW-reduced. At most one device provides it.
   */
  readonly fadt?: FixedHardware;
  /** MADT interrupt source overrides its ISA IRQs need (e.g. PCI interrupts routed to ISA IRQs: level, high). */
  readonly interruptOverrides?: readonly InterruptOverride[];
  /**
   * Guest-physical MMIO ranges whose writes may reach the device batched, through KVM's coalesced MMIO ring
   * (src/vmm/coalesced-mmio.ts): writes that need no immediate answer, such as VGA memory. They arrive in order,
   * before any other exit of the VM is handled; reads still exit.
   */
  readonly coalescedMmio?: readonly { readonly base: number; readonly size: number }[];
}

export interface DeviceAttachContext {
  readonly vmFd: number;
  readonly router: GsiRouter;
  readonly pio: PortIoBus;
  readonly mmio: MmioBus;
  readonly pci: PciBus;
  /** Guest RAM (bounds-checked): what DMA-capable devices (fw_cfg DMA, AHCI) read and write. */
  readonly memory: GuestMemory;
  /** The platform's interrupt lines (ISA IRQs and GSIs of the in-kernel PIC/IOAPIC). */
  irqLine(gsi: number): IrqLine;
  /** Host facts of this run (where COM1 writes, how the VM is told to stop). */
  readonly host: DeviceHost;
}

export interface DeviceHost {
  /** Where the serial console's output goes (a file descriptor: the terminal or a log file). */
  readonly serialOutputFd: number;
  /** Ends the VM with a status (debug-exit and the like). */
  stop(reason: { readonly kind: 'guest-exit'; readonly status: number; readonly message: string }): void;
  /**
   * The guest asked for a platform reset (i8042 command 0xFE, port 0x92 bit 0, port 0xCF9): the machine restarts
   * from the reset vector with its devices reset (firmware boot), or stops with kind 'reset' (direct kernel boot).
   */
  reset(why: string): void;
}

export interface DeviceServeContext {
  readonly memory: GuestMemory;
  /** Host-side problems go here (one line each, prefixed by the caller). */
  log(message: string): void;
  /** Registers a handler for an eventfd on the I/O thread's one epoll watcher. */
  onEventFd(fd: number, handler: () => void): void;
}

/** One thread's view of a device. */
export interface AttachedDevice {
  readonly name: string;
  /**
   * Brings the device to rest: nothing new is taken from the guest, and the returned promise settles when no
   * host I/O is in flight. Only then is saveState() a complete picture.
   */
  quiesce?(): Promise<void> | void;
  /** Ends quiesce(): the device serves the guest again. */
  resume?(): void;
  /** Guest-visible state (registers, queue positions), versioned, with no host resources (fds) in it. */
  saveState(): DeviceSnapshot;
  /** Loads saveState()'s result into a freshly created device of the same kind and options. */
  restoreState(snapshot: DeviceSnapshot): void;
  /**
   * A platform reset (the reset line, not power): the state the device has after RESET#, where that differs from
   * power-on (CMOS RAM and the clock survive it: SeaBIOS reads the shutdown byte after a reset). Devices without
   * it are reset by loading their power-on snapshot.
   */
  reset?(): void;
}

/** A device's saved state: JSON-safe (byte arrays as base64), with an explicit layout version. */
export interface DeviceSnapshot {
  readonly kind: string;
  readonly version: number;
  readonly data: { readonly [key: string]: JsonValue };
}

export type JsonValue = string | number | boolean | null | readonly JsonValue[] | { readonly [key: string]: JsonValue };

/** A saved state that does not fit the device it is loaded into: the snapshot is refused, nothing changes. */
export class DeviceStateError extends Error {
  constructor(device: string, problem: string) {
    super(`${device}: saved state ${problem}`);
    this.name = 'DeviceStateError';
  }
}

/** A device's host side cannot be opened (missing image, image in use, bad option): one clear line for the user. */
export class DeviceOpenError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'DeviceOpenError';
  }
}

/** Checks a snapshot's kind and version before a device loads it. */
export function expectSnapshot(device: string, snapshot: DeviceSnapshot, kind: string, version: number): void {
  if (snapshot.kind !== kind) throw new DeviceStateError(device, `is of a '${snapshot.kind}', not a '${kind}'`);
  if (snapshot.version !== version)
    throw new DeviceStateError(device, `has layout version ${snapshot.version}; this Partita reads ${version}`);
}

/** Bytes ⇄ base64 for snapshots. */
export function bytesToJson(bytes: Uint8Array | SharedArrayBuffer): string {
  const view = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  return Buffer.from(view.buffer, view.byteOffset, view.byteLength).toString('base64');
}

/** Copies base64 `text` into `target`, which must be exactly as long as the saved bytes. */
export function jsonToBytes(device: string, field: string, text: JsonValue | undefined, target: Uint8Array): void {
  if (typeof text !== 'string') throw new DeviceStateError(device, `lacks '${field}'`);
  const bytes = Buffer.from(text, 'base64');
  if (bytes.length !== target.length)
    throw new DeviceStateError(device, `'${field}' has ${bytes.length} bytes, the device ${target.length}`);
  target.set(bytes);
}

/** The attached form of a device without guest-visible state: its snapshot is just its kind. */
export function statelessDevice(name: string, kind: string): AttachedDevice {
  return {
    name,
    saveState: () => ({ kind, version: 1, data: {} }),
    restoreState: (snapshot) => expectSnapshot(name, snapshot, kind, 1),
  };
}
