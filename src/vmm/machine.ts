// The builder: turns a validated MachineConfig into a running VM (KVM, RAM, kernel, vCPUs, devices), runs it
// to the end and reports why it stopped. Threads: the calling thread runs vCPU 0 (the BSP) with exits handled
// inline; an I/O worker thread (started only when needed) feeds host input to the UART and serves the
// application processors, whose native threads hand it their exits.
import { fdatasyncSync, statSync } from 'node:fs';
import { basename } from 'node:path';
import { Worker } from 'node:worker_threads';
import { KvmSystem } from '../kvm/system.js';
import { mpStates } from '../kvm/abi.js';
import { native } from '../native/index.js';
import { supportedCpuid, vcpuCpuid, type CpuProfile } from '../arch/x86_64/cpuid.js';
import { apicIdLayout, defaultTopology, parseTopology, type CpuTopology } from '../arch/x86_64/topology.js';
import { msrIndexList, setupMsrs } from '../arch/x86_64/msrs.js';
import {
  BOOT_GDT_ADDRESS,
  guestMemoryMap,
  IOAPIC_ADDRESS,
  LAPIC_ADDRESS,
  MAX_MEMORY,
  MIN_MEMORY,
} from '../arch/x86_64/layout.js';
import { buildAcpiTables } from '../arch/x86_64/acpi/index.js';
import { defaultIoapicId, MP_MAX_APIC_ID, writeMpTable } from '../arch/x86_64/mptable.js';
import { bootGdt, longModeEntry, protectedModeEntry } from '../arch/x86_64/registers.js';
import { loadKernel } from '../boot/index.js';
import type { BootEntry } from '../boot/index.js';
import type { LinuxBootEntry } from '../boot/linux.js';
import { formatSize } from '../base/units.js';
import { MAX_INPUT_FILE_BYTES, readWholeFile } from '../host/input-file.js';
import { Vm } from './vm.js';
import { Vcpu } from './vcpu.js';
import { VmControl, type StopReason } from './control.js';
import { buildDevices, createSharedDeviceState, MAX_PCI_DEVICES, pciRootDescription } from './devices.js';
import type { IoThreadData } from './io-thread.js';
import { openVirtioDevices, type OpenedVirtioDevice, type VirtioDeviceSpec } from './virtio-devices.js';
import { DeviceOpenError } from '../devices/virtio/device.js';
import type { VirtioPciDevice } from '../devices/virtio/pci-transport.js';

export const MAX_VCPUS = 64;

export interface MachineConfig {
  readonly kernel: string;
  readonly initrd: readonly string[];
  readonly cmdline: string;
  readonly cpus: number;
  readonly memory: number;
  /** --memory as the user typed it, for messages (the byte count otherwise). */
  readonly memoryText?: string;
  readonly cpuProfile?: CpuProfile;
  /** "sockets=S,cores=C,threads=T" (product = cpus); default: one socket of `cpus` cores. */
  readonly topology?: string;
  /** Guest serial output goes to this fd; input comes from stdin when `serialInput` is set. */
  readonly serialOutputFd: number;
  readonly serialInput: 'tty' | 'stream' | 'none';
  /** Print exit counts and virtio notification counts to stderr when the VM stops. */
  readonly stats?: boolean;
  /** Virtio devices on PCI, in slot order (--disk, --net, --rng, --console). */
  readonly virtio?: readonly VirtioDeviceSpec[];
}

/** A configuration or input problem the user can fix: one clear line, exit status 2. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

/** A kernel or initrd, whole; refused with one line when it is larger than guest RAM or than a buffer holds. */
function readInputFile(path: string, what: string, guestRam: number): Uint8Array {
  let size: number;
  try {
    const st = statSync(path);
    if (!st.isFile()) throw new ConfigError(`${what} '${path}' is not a regular file`);
    size = st.size;
  } catch (e) {
    if (e instanceof ConfigError) throw e;
    throw readError(path, what, e);
  }
  if (size === 0) throw new ConfigError(`${what} '${path}' is empty`);
  if (size > guestRam)
    throw new ConfigError(
      `${what} '${path}' is ${formatSize(size)}, larger than the guest's ${formatSize(guestRam)} of RAM (--memory): it cannot be loaded`,
    );
  if (size > MAX_INPUT_FILE_BYTES)
    throw new ConfigError(
      `${what} '${path}' is ${formatSize(size)}, more than the ${formatSize(MAX_INPUT_FILE_BYTES)} limit`,
    );
  try {
    return readWholeFile(path, size);
  } catch (e) {
    throw readError(path, what, e); // e.g. readable by stat but not by open: permission denied
  }
}

function readError(path: string, what: string, e: unknown): ConfigError {
  const code = (e as NodeJS.ErrnoException).code;
  return new ConfigError(
    `cannot read ${what} '${path}': ${code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : (e as Error).message}`,
  );
}

export function validateConfig(config: MachineConfig, kvm?: KvmSystem): void {
  if (!Number.isInteger(config.cpus) || config.cpus < 1)
    throw new ConfigError(`--cpus must be a whole number from 1 to ${MAX_VCPUS}`);
  if (config.cpus > MAX_VCPUS)
    throw new ConfigError(`--cpus ${config.cpus} is more than Partita's limit of ${MAX_VCPUS} vCPUs per VM`);
  if (kvm && config.cpus > kvm.maxVcpus)
    throw new ConfigError(`--cpus ${config.cpus} is more than this host's KVM allows (${kvm.maxVcpus})`);
  const memory = config.memoryText ?? formatSize(config.memory);
  if (config.memory > MAX_MEMORY)
    throw new ConfigError(`--memory ${memory} is larger than the ${formatSize(MAX_MEMORY)} limit`);
  if (config.memory < MIN_MEMORY)
    throw new ConfigError(`--memory ${memory} is smaller than the ${formatSize(MIN_MEMORY)} minimum`);
  if (config.memory % 4096 !== 0) throw new ConfigError(`--memory ${memory} is not a whole number of 4 KiB pages`);
  machineTopology(config);
  if ((config.virtio?.length ?? 0) > MAX_PCI_DEVICES)
    throw new ConfigError(`${config.virtio?.length} devices: the PCI bus has room for ${MAX_PCI_DEVICES}`);
}

export function machineTopology(config: Pick<MachineConfig, 'cpus' | 'topology'>): CpuTopology {
  if (config.topology === undefined) return defaultTopology(config.cpus);
  try {
    return parseTopology(config.topology, config.cpus);
  } catch (e) {
    // parseTopology's messages already begin with "--topology '<spec>'".
    throw new ConfigError((e as Error).message);
  }
}

export interface RunResult {
  readonly reason: StopReason;
  readonly boot: BootEntry | LinuxBootEntry;
}

/** PARTITA_TRACE=1 prints start-up phases (ms since process start) to stderr: for measuring, not for users. */
const tracing = process.env.PARTITA_TRACE === '1';
function trace(phase: string): void {
  if (tracing) process.stderr.write(`partita: ${performance.now().toFixed(1)} ms ${phase}\n`);
}

/**
 * Builds and runs the VM on the calling thread (which becomes vCPU 0's thread) until it stops. `control` lets
 * another thread pause, resume or stop it (the daemon does; the CLI uses console keys and signals).
 */
export function runMachine(config: MachineConfig, control: VmControl = new VmControl()): RunResult {
  trace('builder start');
  // The I/O worker boots (a V8 isolate: tens of ms) while the VM is being built; it gets the VM by message.
  const worker =
    config.cpus > 1 || config.serialInput !== 'none' || (config.virtio?.length ?? 0) > 0
      ? new Worker(new URL('./io-thread.js', import.meta.url), { stdin: false })
      : undefined;
  worker?.unref();
  try {
    return buildAndRun(config, control, worker);
  } catch (e) {
    void worker?.terminate();
    throw e;
  }
}

function buildAndRun(config: MachineConfig, control: VmControl, worker: Worker | undefined): RunResult {
  validateConfig(config); // first: the file checks below measure against a valid --memory
  const image = readInputFile(config.kernel, 'kernel', config.memory);
  const modules = config.initrd.map((path) => ({
    name: basename(path),
    data: readInputFile(path, 'initrd', config.memory),
    cmdline: basename(path),
  }));
  const kvm = KvmSystem.open();
  validateConfig(config, kvm);
  let opened: OpenedVirtioDevice[];
  try {
    opened = openVirtioDevices(config.virtio ?? []);
  } catch (e) {
    if (e instanceof DeviceOpenError) throw new ConfigError(e.message);
    throw e;
  }
  try {
    return buildAndRunWithDevices(config, control, worker, kvm, image, modules, opened);
  } finally {
    settleHostSide(opened);
  }
}

/**
 * After the run, on the builder thread: make what the guest wrote to its disks durable (QEMU flushes at exit
 * too). Nothing is closed here: the backends' fds are shared with the I/O thread, which may still be ending;
 * the process exit closes them (releasing image locks), and passt is ended by the hook that started it.
 */
function settleHostSide(opened: readonly OpenedVirtioDevice[]): void {
  for (const d of opened) {
    if (d.kind !== 'block' || d.handle.readOnly) continue;
    try {
      fdatasyncSync(d.handle.fd);
    } catch {
      // the guest's own FLUSH requests are where write errors are reported
    }
  }
}

function buildAndRunWithDevices(
  config: MachineConfig,
  control: VmControl,
  worker: Worker | undefined,
  kvm: KvmSystem,
  image: Uint8Array,
  modules: { name: string; data: Uint8Array; cmdline: string }[],
  opened: readonly OpenedVirtioDevice[],
): RunResult {
  const mmapSize = kvm.vcpuMmapSize;
  const vm = Vm.create(kvm, config.memory);
  trace('VM created');
  // The process exits right after the run; KVM tears the VM down with its fds, so nothing is unmapped by hand.
  vm.memory.write(BOOT_GDT_ADDRESS, new Uint8Array(bootGdt().buffer));
  const topology = machineTopology(config);
  const layout = apicIdLayout(topology);
  const apicIds = [...layout.apicIds];
  const rsdpAddress = writePlatformTables(vm, apicIds, opened.length);
  trace('ACPI and MP tables written');
  const boot = loadKernel({
    imageName: config.kernel,
    image,
    cmdline: config.cmdline,
    modules,
    memory: vm.memory,
    memoryMap: guestMemoryMap(config.memory),
    rsdpAddress,
  });

  trace('kernel loaded');
  const profile: CpuProfile = config.cpuProfile ?? (KvmSystem.isPvm() ? 'compat' : 'host');
  const cpuid = supportedCpuid(kvm.fd);
  const indexList = msrIndexList(kvm.fd);
  const vcpus: Vcpu[] = [];
  for (let index = 0; index < config.cpus; index++) {
    // KVM makes the vCPU id the local APIC ID, so vCPUs are created with their topology's APIC IDs.
    const vcpu = Vcpu.create(vm.fd, layout.apicIds[index], mmapSize);
    const table = vcpuCpuid(cpuid, { topology, index, profile, layout });
    vcpu.setCpuid(table);
    setupMsrs(vcpu.fd, kvm.fd, { indexList, cpuid: table });
    vcpus.push(vcpu);
  }
  const bsp = vcpus[0];
  const regs = bsp.getRegs();
  for (const k of Object.keys(regs) as (keyof typeof regs)[]) regs[k] = 0n;
  regs.rip = BigInt(boot.entryPoint);
  regs.rflags = 0x2n;
  if (boot.protocol === 'linux') {
    // Linux boot protocol, 64-bit entry: long mode with the loader's identity map, rsi = boot_params.
    bsp.setSregs(longModeEntry(bsp.getSregs(), { gdtBase: boot.gdtAddress, gdtLimit: boot.gdtLimit, cr3: boot.cr3 }));
    regs.rsi = BigInt(boot.rsi);
  } else {
    bsp.setSregs(protectedModeEntry(bsp.getSregs()));
    regs.rax = BigInt(boot.eax);
    regs.rbx = BigInt(boot.ebx);
  }
  bsp.setRegs(regs);

  const shared = createSharedDeviceState(vm.fd, opened);
  const devices = buildDevices(shared, { vmFd: vm.fd, control, serialOutputFd: config.serialOutputFd });

  control.addKickTarget(native.threadSelf(), bsp.immediateExitAddress);
  native.watchTerminationSignals(bsp.immediateExitAddress);
  const tick = native.startTick(250);

  if (worker) {
    const data: IoThreadData = {
      control: control.buffer,
      devices: shared,
      vmFd: vm.fd,
      memory: vm.memory.describe(),
      mmapSize,
      aps: vcpus.slice(1).map((v) => ({ id: v.id, fd: v.fd })),
      serialOutputFd: config.serialOutputFd,
      serialInput: config.serialInput,
    };
    worker.postMessage(data);
  }

  trace('vCPUs ready, entering the guest');
  const reason = bsp.runLoop({
    pio: devices.pio,
    mmio: devices.mmio,
    control,
    memory: vm.memory,
    onKick: (vcpu) => {
      const sig = native.pendingSignal();
      if (sig) return control.stop({ kind: 'signal', status: 128 + sig, message: `stopped by host signal ${sig}` });
      if (control.paused) control.waitWhilePaused();
      if (control.stopping) return control.reason();
      if (config.cpus === 1) return deadHaltCheck(vcpu, control, vm);
      return undefined;
    },
  });
  trace(`guest stopped (${reason.kind})`);
  if (config.stats) printStats(control, devices.virtio);
  if (typeof tick === 'bigint') native.stopTick(tick);
  native.restoreTerminationSignals();
  // Application processors end natively, releasing their hand-off to the I/O thread while it still exists.
  // (No kicks after this: pthread_kill on a finished thread is undefined behaviour.)
  if (config.cpus > 1 && native.stopVcpuThreads(2000) > 0)
    process.stderr.write('partita: some vCPU threads did not stop\n');
  void worker?.terminate();
  return { reason, boot };
}

/**
 * The tables a guest OS reads to find its CPUs and interrupt controllers: ACPI (RSDP found by scanning the BIOS
 * area, or through the boot protocol) and, for guests that predate ACPI, an MP table. Returns the RSDP address.
 */
function writePlatformTables(vm: Vm, apicIds: readonly number[], pciDevices: number): number {
  const ioapicId = defaultIoapicId(apicIds);
  const pci = pciRootDescription(pciDevices);
  const acpi = buildAcpiTables(
    { apicIds, ioapicId, ioapicAddress: IOAPIC_ADDRESS, lapicAddress: LAPIC_ADDRESS, legacy: {}, pci },
    vm.memory,
  );
  // The MP table cannot describe x2APIC IDs; such guests use ACPI.
  if (apicIds.every((id) => id <= MP_MAX_APIC_ID))
    writeMpTable(vm.memory, { apicIds, ioapicId, ioapicAddress: IOAPIC_ADDRESS, pci: { intx: pci.intx } });
  return acpi.rsdpAddress;
}

function printStats(control: VmControl, virtio: readonly VirtioPciDevice[]): void {
  const e = control.exitCounts();
  const lines = [`partita: exits to userspace: ${e.pio} port I/O, ${e.mmio} MMIO, ${e.other} other`];
  for (const dev of virtio) {
    const n = dev.notificationCounts();
    lines.push(`partita: ${dev.name}: ${n.kicks} ioeventfd wake-ups, ${n.notifyExits} queue notifications by exit`);
  }
  process.stderr.write(lines.join('\n') + '\n');
}

/** A lone vCPU halted with interrupts disabled can never run again: stop instead of hanging forever. */
function deadHaltCheck(vcpu: Vcpu, control: VmControl, vm: Vm): StopReason | undefined {
  if (vcpu.getMpState() !== mpStates.KVM_MP_STATE_HALTED) return undefined;
  const regs = vcpu.getRegs();
  if ((regs.rflags & 0x200n) !== 0n) return undefined; // IF set: waiting for an interrupt is legitimate idling
  return control.fault(
    `vCPU ${vcpu.id}: the guest halted with interrupts disabled (HLT with IF=0): it can never continue\n${vcpu.describeState(vm.memory)}`,
    3,
    'halted',
  );
}
