// The builder: turns a validated machine spec into a running VM (KVM, memory slots, devices from the
// registry, vCPUs, a boot strategy), runs it to the end and reports why it stopped. Threads: the calling thread
// runs vCPU 0 (the BSP) with exits handled inline; an I/O worker thread (started only when needed) feeds host
// input to the UART, serves the application processors, whose native threads hand it their exits, and runs the
// devices' host sides.
//
// One VM per process: the native layer keeps per-process state (signal handlers, the AP thread registry, the
// kick target), and the daemon runs one VMM process per VM so a crash loses one VM. A second runMachine() in the
// same process is refused with a clear error rather than half-working.
import { existsSync, ftruncateSync, statSync, writeSync } from 'node:fs';
import { screenshotPng, stdVgaDisplay } from '../devices/display/vga-renderer.js';
import { basename } from 'node:path';
import { constants as osConstants } from 'node:os';
import { Worker } from 'node:worker_threads';
import { KvmSystem } from '../kvm/system.js';
import { mpStates } from '../kvm/abi.js';
import { native } from '../native/index.js';
import { supportedCpuid, vcpuCpuid, type CpuProfile } from '../arch/x86_64/cpuid.js';
import { apicIdLayout, defaultTopology, type CpuTopology } from '../arch/x86_64/topology.js';
import { msrIndexList, setupMsrs } from '../arch/x86_64/msrs.js';
import { firmwareRamRanges, ramRanges } from '../arch/x86_64/layout.js';
import { DeviceOpenError } from '../devices/model.js';
import { AttachedVirtioFunction } from '../devices/virtio/pci-model.js';
import type { MachineSpec } from '../spec/machine-spec.js';
import { Vm } from './vm.js';
import { Vcpu } from './vcpu.js';
import { VmControl, type StopReason } from './control.js';
import {
  attachDevices,
  createDevices,
  describeDevices,
  pcPlatformDevices,
  settleDevices,
  type DeviceSet,
} from './device-set.js';
import {
  directKernelBoot,
  firmwareBoot,
  MAX_FIRMWARE_SIZE,
  checkFirmware,
  type BootResult,
  type BootStrategy,
} from './boot-strategy.js';
import type { IoThreadData } from './io-thread.js';
import { ExitRing } from './exit-ring.js';
import { CoalescedMmioRing, registerCoalescedZone } from './coalesced-mmio.js';
import { describeInterruptState } from './interrupt-state.js';
import { PowerOnState } from './machine-reset.js';
import type { SerialSocketOptions } from './serial-socket.js';
import { formatSize } from '../base/units.js';
import { MAX_INPUT_FILE_BYTES, readWholeFile } from '../host/input-file.js';

/** How this run connects to the host: not part of the VM's description (the spec), but of this process. */
export interface RunOptions {
  /** Guest serial output goes to this fd; input comes from stdin when `serialInput` is not 'none'. */
  readonly serialOutputFd: number;
  readonly serialInput: 'tty' | 'stream' | 'none';
  /** Print exit counts and virtio notification counts to stderr when the VM stops. */
  readonly stats?: boolean;
  /**
   * Write the screen (std VGA) as a PNG into this file descriptor when the VM ends, however it ends (the file is
   * truncated first: open it with host/output-file.ts, which refuses disk images and locks it).
   */
  readonly screenshotFd?: number;
  /** Likewise a text-mode screen as UTF-8 text (what a test or a script reads). */
  readonly screenTextFd?: number;
  /** Lets another thread pause, resume or stop the VM (the daemon does; the CLI uses console keys and signals). */
  readonly control?: VmControl;
  /** `--control PATH`: serve the control channel (status/pause/resume/stop/screenshot) on this UNIX socket. */
  readonly controlSocket?: string;
  /** `--serial unix:PATH`: serve the serial console on a UNIX socket; `serialOutputFd` is then the log's fd. */
  readonly serialSocket?: SerialSocketOptions;
  /** `--vnc unix:PATH`: serve the screen (std VGA) and keyboard/mouse (i8042) over RFB on this UNIX socket. */
  readonly vncSocket?: string;
}

/** A configuration or input problem the user can fix: one clear line, exit status 2. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

/**
 * A kernel, initrd or firmware image, whole; refused with one line when it is larger than `limit` (guest RAM
 * for what is loaded into it) or than a buffer holds.
 */
function readInputFile(
  path: string,
  what: string,
  limit: { readonly bytes: number; readonly why: string },
): Uint8Array {
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
  if (size > limit.bytes) throw new ConfigError(`${what} '${path}' is ${formatSize(size)}, ${limit.why}`);
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

/** The vCPU topology the spec asks for (default: one socket of `cpus` cores); validateMachineSpec checked it. */
export function machineTopology(spec: Pick<MachineSpec, 'cpus' | 'topology'>): CpuTopology {
  return spec.topology ?? defaultTopology(spec.cpus);
}

export interface RunResult {
  readonly reason: StopReason;
  readonly boot: BootResult;
}

/** PARTITA_TRACE=1 prints start-up phases (ms since process start) to stderr: for measuring, not for users. */
const tracing = process.env.PARTITA_TRACE === '1';
const SIGQUIT = osConstants.signals.SIGQUIT;
/**
 * PARTITA_TRACE=exits prints the last exits and the BSP's registers when the VM stops, =state only the registers
 * (no cost while the guest runs): for finding where a guest hangs.
 */
const tracingExits = process.env.PARTITA_TRACE === 'exits';
const tracingState = tracingExits || process.env.PARTITA_TRACE === 'state';
function trace(phase: string): void {
  if (tracing) process.stderr.write(`partita: ${performance.now().toFixed(1)} ms ${phase}\n`);
}

let machineRan = false;

/**
 * Builds and runs the VM on the calling thread (which becomes vCPU 0's thread) until it stops. The spec must
 * have passed validateMachineSpec.
 */
function newIoThread(): Worker {
  return new Worker(new URL('./io-thread.js', import.meta.url), { stdin: false });
}

let prestarted: Worker | undefined;

/**
 * Boots the I/O worker before there is a VM (the daemon's warm VMM, src/cli/vmm-standby.ts): a VM start then
 * finds its isolate loaded. It waits for the VM's message like one started by runMachine.
 */
export function prestartIoThread(): void {
  prestarted ??= newIoThread();
  prestarted.unref();
}

export function runMachine(spec: MachineSpec, run: RunOptions): RunResult {
  if (machineRan)
    throw new Error('one VM per process: runMachine() was already called in this process (start another process)');
  machineRan = true;
  trace('builder start');
  const control = run.control ?? new VmControl();
  // The I/O worker boots (a V8 isolate: tens of ms) while the VM is being built; it gets the VM by message. A warm
  // VMM started it ahead of time (prestartIoThread).
  const needsWorker =
    spec.cpus > 1 ||
    run.serialInput !== 'none' ||
    spec.devices.length > 0 ||
    spec.boot.kind === 'firmware' || // the PC platform has host sides too: the CMOS clock's interrupts
    run.controlSocket !== undefined ||
    run.serialSocket !== undefined ||
    run.vncSocket !== undefined;
  const early = prestarted;
  prestarted = undefined;
  if (early && !needsWorker) void early.terminate();
  const worker = needsWorker ? (early ?? newIoThread()) : undefined;
  worker?.unref();
  try {
    return buildAndRun(spec, run, control, worker);
  } catch (e) {
    void worker?.terminate();
    throw e;
  }
}

/** Reads the boot files first: a missing or bad file costs no VM. */
function bootStrategy(spec: MachineSpec): BootStrategy {
  const boot = spec.boot;
  if (boot.kind === 'firmware') {
    let image: Uint8Array;
    try {
      image = readInputFile(boot.firmware, 'firmware', {
        bytes: MAX_FIRMWARE_SIZE,
        why: `larger than the ${formatSize(MAX_FIRMWARE_SIZE)} flash window below 4 GiB`,
      });
    } catch (e) {
      // Debian's firmware packages: say which one provides the missing default.
      const pkg = boot.firmware.startsWith('/usr/share/seabios/')
        ? 'seabios'
        : boot.firmware.startsWith('/usr/share/OVMF/')
          ? 'ovmf'
          : undefined;
      if (pkg && e instanceof ConfigError && !existsSync(boot.firmware))
        throw new ConfigError(`${e.message} (it comes with Debian's ${pkg}: apt-get install ${pkg})`);
      throw e;
    }
    try {
      return firmwareBoot(boot, checkFirmware(boot.firmware, image));
    } catch (e) {
      throw new ConfigError((e as Error).message);
    }
  }
  const ram = {
    bytes: spec.memory,
    why: `larger than the guest's ${formatSize(spec.memory)} of RAM (memory): it cannot be loaded`,
  };
  const kernel = readInputFile(boot.kernel, 'kernel', ram);
  const modules = (boot.initrd ?? []).map((path) => ({
    name: basename(path),
    data: readInputFile(path, 'initrd', ram),
    cmdline: basename(path),
  }));
  return directKernelBoot(boot, { kernel, modules });
}

function buildAndRun(spec: MachineSpec, run: RunOptions, control: VmControl, worker: Worker | undefined): RunResult {
  const strategy = bootStrategy(spec);
  const kvm = KvmSystem.open();
  if (spec.cpus > kvm.maxVcpus)
    throw new ConfigError(`cpus ${spec.cpus} is more than this host's KVM allows (${kvm.maxVcpus})`);
  const topology = machineTopology(spec);
  const firmware = spec.boot.kind === 'firmware' ? spec.boot : undefined;
  const vm = Vm.create(kvm, firmware ? firmwareRamRanges(spec.memory) : ramRanges(spec.memory));
  trace('VM created');
  let shared;
  try {
    shared = createDevices(spec.devices, {
      vmFd: vm.fd,
      placeBars: strategy.placesBars,
      ...(firmware
        ? { platform: pcPlatformDevices({ firmwareLog: firmware.log }), firstPciSlot: 2, pirqRouting: true }
        : {}),
      machine: { cpus: spec.cpus, memory: spec.memory, boot: spec.boot.kind },
      deviceMemory: (size, name, opts) => vm.slots.reserveDeviceMemory(size, name, opts),
    });
  } catch (e) {
    if (e instanceof DeviceOpenError) throw new ConfigError(e.message);
    throw e;
  }
  try {
    return runBuilt(spec, run, control, worker, kvm, vm, topology, strategy, shared);
  } finally {
    settleDevices(shared);
  }
}

function runBuilt(
  spec: MachineSpec,
  run: RunOptions,
  control: VmControl,
  worker: Worker | undefined,
  kvm: KvmSystem,
  vm: Vm,
  topology: CpuTopology,
  strategy: BootStrategy,
  shared: ReturnType<typeof createDevices>,
): RunResult {
  const mmapSize = kvm.vcpuMmapSize;
  const layout = apicIdLayout(topology);
  const profile: CpuProfile = spec.cpuProfile ?? (KvmSystem.isPvm() ? 'compat' : 'host');
  const cpuid = supportedCpuid(kvm.fd);
  const indexList = msrIndexList(kvm.fd);
  const vcpus: Vcpu[] = [];
  for (let index = 0; index < spec.cpus; index++) {
    // KVM makes the vCPU id the local APIC ID, so vCPUs are created with their topology's APIC IDs.
    const vcpu = Vcpu.create(vm.fd, layout.apicIds[index], mmapSize);
    const table = vcpuCpuid(cpuid, { topology, index, profile, layout });
    vcpu.setCpuid(table);
    setupMsrs(vcpu.fd, kvm.fd, { indexList, cpuid: table });
    vcpus.push(vcpu);
  }
  const bsp = vcpus[0];
  const platform = describeDevices(shared);
  const boot = strategy.prepare({
    vm,
    bsp,
    memorySize: spec.memory,
    apicIds: layout.apicIds,
    platform,
    devices: shared,
  });
  trace('boot prepared (tables, kernel or firmware)');

  const host = {
    vmFd: vm.fd,
    serialOutputFd: run.serialOutputFd,
    stop: (reason: { kind: 'guest-exit'; status: number; message: string }) => control.stop(reason),
    reset: (why: string) => control.stop({ kind: 'reset', status: 0, message: `the guest reset the machine (${why})` }),
  };
  const devices = attachDevices(shared, host, vm.memory);
  const coalesced = coalescedRing(kvm, vm, bsp, platform.coalescedMmio);

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
      serialOutputFd: run.serialOutputFd,
      serialInput: run.serialInput,
      controlSocket: run.controlSocket,
      serialSocket: run.serialSocket,
      vncSocket: run.vncSocket,
      coalesced: coalesced && { pageOffset: coalesced.pageOffset, lock: coalesced.lock },
    };
    worker.postMessage(data);
  }

  // Firmware boot reboots on a guest reset as a PC does; the power-on state is what a reset goes back to.
  const powerOn = spec.boot.kind === 'firmware' ? PowerOnState.capture(vm, bsp, devices) : undefined;
  trace('vCPUs ready, entering the guest');
  const exitRing = tracingExits ? new ExitRing(400) : undefined;
  const exitContext = {
    pio: exitRing ? exitRing.wrapPio(devices.pio) : devices.pio,
    mmio: exitRing ? exitRing.wrapMmio(devices.mmio) : devices.mmio,
    control,
    memory: vm.memory,
    coalesced: coalesced?.ring,
    onKick: (vcpu: Vcpu) => {
      const sig = native.pendingSignal();
      // SIGQUIT, as a JVM's thread dump: where the guest is (a hung guest's registers), then the VM stops.
      if (sig === SIGQUIT) {
        process.stderr.write(
          `partita: SIGQUIT: vCPU ${vcpu.id}\n${vcpu.describeState(vm.memory)}\n${describeInterruptState(vm.fd, vcpu)}\n`,
        );
      }
      if (sig) return control.stop({ kind: 'signal', status: 128 + sig, message: `stopped by host signal ${sig}` });
      if (control.paused) control.waitWhilePaused();
      if (control.stopping) return control.reason();
      if (spec.cpus === 1) return deadHaltCheck(vcpu, control, vm);
      return undefined;
    },
  };
  let reason = bsp.runLoop(exitContext);
  const resets = new ResetLoopGuard();
  while (powerOn && (reason.kind === 'reset' || reason.kind === 'triple-fault')) {
    if (spec.cpus > 1) {
      reason = {
        ...reason,
        message: `${reason.message}; a reboot with several vCPUs is not supported yet: the VM stops`,
      };
      break;
    }
    trace(`guest reset: ${reason.message}`);
    const loop = resets.record();
    if (loop) {
      reason = control.fault(`${reason.message}; ${loop}`, 3, 'reset');
      break;
    }
    if (!control.restart()) break; // a stop for another reason (signal, quit) won the race
    try {
      powerOn.apply(vm, bsp, devices);
      strategy.reset?.(vm);
    } catch (e) {
      reason = control.fault(`the machine could not be reset: ${(e as Error).message}`, 3, 'error');
      break;
    }
    trace('guest reset: running again from the reset vector');
    reason = bsp.runLoop(exitContext);
  }
  trace(`guest stopped (${reason.kind})`);
  coalesced?.ring.drain(devices.mmio, devices.pio); // the screen as the guest last wrote it
  if (exitRing) process.stderr.write(`${exitRing.dump()}\n`);
  if (tracingState) process.stderr.write(`BSP mp_state ${bsp.getMpState()}\n${bsp.describeState(vm.memory)}\n`);
  if (run.screenshotFd !== undefined || run.screenTextFd !== undefined) saveScreen(devices, run);
  if (run.stats) printStats(control, devices, coalesced?.ring);
  if (typeof tick === 'bigint') native.stopTick(tick);
  native.restoreTerminationSignals();
  // Application processors end natively, releasing their hand-off to the I/O thread while it still exists.
  // (No kicks after this: pthread_kill on a finished thread is undefined behaviour.)
  if (spec.cpus > 1 && native.stopVcpuThreads(2000) > 0)
    process.stderr.write('partita: some vCPU threads did not stop\n');
  void worker?.terminate();
  return { reason, boot };
}

/**
 * KVM's coalesced MMIO ring for the zones the devices ask for (the VGA window), when KVM has it: the ring page
 * is page KVM_CAP_COALESCED_MMIO of every vCPU's mapping; the BSP's view drains here, the I/O thread maps its own
 * through an AP's mapping (only with several vCPUs). Without the capability the zones simply exit as before.
 */
function coalescedRing(
  kvm: KvmSystem,
  vm: Vm,
  bsp: Vcpu,
  zones: readonly { readonly base: number; readonly size: number }[],
): { ring: CoalescedMmioRing; pageOffset: number; lock: SharedArrayBuffer } | undefined {
  const pageOffset = kvm.capability('KVM_CAP_COALESCED_MMIO');
  if (zones.length === 0 || pageOffset <= 0 || (pageOffset + 1) * 4096 > bsp.run.byteLength) return undefined;
  for (const zone of zones) registerCoalescedZone(vm.fd, zone);
  const lock = CoalescedMmioRing.createLock();
  const ring = new CoalescedMmioRing(new DataView(bsp.run.buffer, bsp.run.byteOffset + pageOffset * 4096, 4096), lock);
  return { ring, pageOffset, lock };
}

/** --screenshot / --screen-text: the screen as the VM left it. */
function saveScreen(devices: DeviceSet, run: RunOptions): void {
  const vga = devices.find('std-vga');
  const display = stdVgaDisplay(vga);
  if (!display) {
    process.stderr.write('partita: no screenshot: the machine has no display (--display vga)\n');
    return;
  }
  const write = (fd: number, bytes: Uint8Array): void => {
    ftruncateSync(fd, 0);
    writeSync(fd, bytes, 0, bytes.length, 0);
  };
  try {
    if (run.screenshotFd !== undefined) write(run.screenshotFd, screenshotPng(vga));
    if (run.screenTextFd !== undefined) {
      const text = display.screenText();
      if (text === undefined) process.stderr.write('partita: no screen text: the display is in a graphics mode\n');
      write(run.screenTextFd, Buffer.from(text ?? '', 'utf8'));
    }
  } catch (e) {
    process.stderr.write(`partita: could not save the screen: ${(e as Error).message}\n`);
  }
}

function printStats(control: VmControl, devices: DeviceSet, coalesced: CoalescedMmioRing | undefined): void {
  const e = control.exitCounts();
  const lines = [`partita: exits to userspace: ${e.pio} port I/O, ${e.mmio} MMIO, ${e.other} other`];
  if (coalesced) lines.push(`partita: coalesced MMIO: ${coalesced.count} writes replayed from KVM's ring (no exit)`);
  for (const { device } of devices.devices) {
    if (!(device instanceof AttachedVirtioFunction)) continue;
    const n = device.transport.notificationCounts();
    lines.push(`partita: ${device.name}: ${n.kicks} ioeventfd wake-ups, ${n.notifyExits} queue notifications by exit`);
  }
  process.stderr.write(lines.join('\n') + '\n');
}

/**
 * A guest that resets again and again without getting anywhere (a firmware that cannot find what it needs, a boot
 * loader that triple-faults at once) would spin for ever: eight resets each within two seconds of the previous one
 * end the VM. Time is only the guard here: a guest that takes longer between resets is simply rebooting.
 */
class ResetLoopGuard {
  private quick = 0;
  private last = performance.now();

  record(): string | undefined {
    const now = performance.now();
    this.quick = now - this.last < 2000 ? this.quick + 1 : 0;
    this.last = now;
    return this.quick >= 8 ? `the guest reset ${this.quick + 1} times in quick succession (a reset loop)` : undefined;
  }
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
