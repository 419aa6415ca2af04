// A virtual CPU: its fd, its shared kvm_run page, register access, and the exit loop.
//
// The exit loop is the hot path of the VMM: KVM_RUN returns, the exit is decoded straight out of the mapped
// kvm_run page (no copies, no allocation), dispatched to the bus, and KVM_RUN is entered again — all on the
// thread that owns the vCPU. See README, "Why the exit path is built this way".
import {
  exitReasonName,
  exitReasons,
  internalErrorSuberrors,
  ioctls,
  KVM_EXIT_IO_OUT,
  kvm_mp_state,
  kvm_regs,
  kvm_run,
  kvm_sregs,
  kvm_translation,
  systemEventTypes,
} from '../kvm/abi.js';
import { check, checkBig, EAGAIN, EINTR, MAP_SHARED, native, PROT_READ, PROT_WRITE } from '../native/index.js';
import {
  decodeRegs,
  decodeSregs,
  encodeRegs,
  encodeSregs,
  formatRegisterDump,
  type Regs,
  type Sregs,
} from '../arch/x86_64/registers.js';
import { encodeCpuid, type CpuidEntry } from '../arch/x86_64/cpuid.js';
import type { MmioBus, PortIoBus } from '../devices/bus.js';
import type { GuestMemory } from '../base/guest-memory.js';
import { EXIT_COUNT_MMIO, EXIT_COUNT_OTHER, EXIT_COUNT_PIO, VmControl, type StopReason } from './control.js';
import type { CoalescedMmioRing } from './coalesced-mmio.js';

const R = kvm_run.fields;
const EXIT_IO = exitReasons.KVM_EXIT_IO;
const EXIT_MMIO = exitReasons.KVM_EXIT_MMIO;

export interface VcpuExitContext {
  readonly pio: PortIoBus;
  readonly mmio: MmioBus;
  readonly control: VmControl;
  readonly memory: GuestMemory;
  /** Called on a kick (EINTR): returns a stop reason when this vCPU should leave its loop. */
  onKick?(vcpu: Vcpu): StopReason | undefined;
  /** KVM's coalesced MMIO ring, when zones are registered: drained before every exit and on every kick. */
  readonly coalesced?: CoalescedMmioRing;
}

export class Vcpu {
  readonly runAddress: bigint;
  readonly run: DataView;
  readonly runBytes: Uint8Array;
  /** kvm_run.immediate_exit, for kick(). */
  readonly immediateExitAddress: bigint;
  private readonly mmioData: Uint8Array[];

  private constructor(
    readonly id: number,
    readonly fd: number,
    mmapSize: number,
  ) {
    this.runAddress = checkBig(
      native.mmap(mmapSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0),
      'mmap',
      `kvm_run of vCPU ${id}`,
    );
    const buffer = native.view(this.runAddress, mmapSize);
    this.run = new DataView(buffer);
    this.runBytes = new Uint8Array(buffer);
    this.immediateExitAddress = this.runAddress + BigInt(R.immediate_exit.offset);
    // Views of kvm_run.mmio.data for each access length, made once so the MMIO path allocates nothing.
    this.mmioData = [0, 1, 2, 3, 4, 5, 6, 7, 8].map((n) => new Uint8Array(buffer, R['mmio.data'].offset, n));
  }

  static create(vmFd: number, id: number, mmapSize: number): Vcpu {
    const fd = check(native.ioctl(vmFd, ioctls.KVM_CREATE_VCPU, id), 'KVM_CREATE_VCPU', `vCPU ${id}`);
    return new Vcpu(id, fd, mmapSize);
  }

  /** A view of a vCPU created by another thread of this process (same fd, its own mapping of kvm_run). */
  static attach(id: number, fd: number, mmapSize: number): Vcpu {
    return new Vcpu(id, fd, mmapSize);
  }

  getRegs(): Regs {
    const buf = new DataView(new ArrayBuffer(kvm_regs.size));
    check(native.ioctl(this.fd, ioctls.KVM_GET_REGS, buf), 'KVM_GET_REGS');
    return decodeRegs(buf);
  }
  setRegs(regs: Regs): void {
    check(native.ioctl(this.fd, ioctls.KVM_SET_REGS, encodeRegs(regs)), 'KVM_SET_REGS');
  }
  getSregs(): Sregs {
    const buf = new DataView(new ArrayBuffer(kvm_sregs.size));
    check(native.ioctl(this.fd, ioctls.KVM_GET_SREGS, buf), 'KVM_GET_SREGS');
    return decodeSregs(buf);
  }
  setSregs(sregs: Sregs): void {
    check(native.ioctl(this.fd, ioctls.KVM_SET_SREGS, encodeSregs(sregs)), 'KVM_SET_SREGS');
  }
  setCpuid(entries: readonly CpuidEntry[]): void {
    check(native.ioctl(this.fd, ioctls.KVM_SET_CPUID2, encodeCpuid(entries)), 'KVM_SET_CPUID2');
  }
  getMpState(): number {
    const buf = new Uint32Array(kvm_mp_state.size / 4);
    check(native.ioctl(this.fd, ioctls.KVM_GET_MP_STATE, buf), 'KVM_GET_MP_STATE');
    return buf[0];
  }

  /** Guest-physical address of a linear address under the vCPU's current paging mode, or undefined. */
  translate(linear: bigint): number | undefined {
    const buf = new DataView(new ArrayBuffer(kvm_translation.size));
    buf.setBigUint64(0, linear, true);
    if (native.ioctl(this.fd, ioctls.KVM_TRANSLATE, buf) < 0) return undefined;
    if (!buf.getUint8(kvm_translation.fields.valid.offset)) return undefined;
    return Number(buf.getBigUint64(kvm_translation.fields.physical_address.offset, true));
  }

  /** Register dump plus the bytes at CS:RIP, for error reports. Never throws. */
  describeState(memory: GuestMemory): string {
    try {
      const regs = this.getRegs();
      const sregs = this.getSregs();
      let text = formatRegisterDump(regs, sregs);
      const linear = BigInt.asUintN(64, sregs.cs.base + regs.rip);
      const gpa = this.translate(linear);
      if (gpa !== undefined && memory.contains(gpa, 16)) {
        const bytes = Array.from(memory.read(gpa, 16), (b) => b.toString(16).padStart(2, '0')).join(' ');
        text += `\nCode at RIP (guest-physical 0x${gpa.toString(16)}): ${bytes}`;
      }
      return text;
    } catch (e) {
      return `(registers unavailable: ${(e as Error).message})`;
    }
  }

  /**
   * Runs the vCPU on the calling thread until something stops it. Port and MMIO exits are handled inline;
   * everything that ends the VM comes back as a StopReason.
   */
  runLoop(ctx: VcpuExitContext): StopReason {
    const fd = this.fd;
    const control = ctx.control;
    for (;;) {
      const r = native.run(fd);
      if (r !== 0) {
        const stop = this.handleRunError(r, ctx);
        if (stop) return stop;
        continue;
      }
      const stop = this.handleExit(ctx);
      if (stop) return stop;
      if (control.stopping) return control.reason();
    }
  }

  /** KVM_RUN returned -errno: a kick (EINTR/EAGAIN) goes to ctx.onKick, anything else stops the VM. */
  handleRunError(r: number, ctx: VcpuExitContext): StopReason | undefined {
    if (r === -EINTR || r === -EAGAIN) {
      this.runBytes[R.immediate_exit.offset] = 0;
      ctx.coalesced?.drain(ctx.mmio, ctx.pio);
      if (ctx.control.stopping) return ctx.control.reason();
      return ctx.onKick?.(this);
    }
    return ctx.control.fault(`vCPU ${this.id}: KVM_RUN failed: ${-r}`, 3);
  }

  /** Handles the exit described in kvm_run; returns a stop reason when the VM must stop. */
  handleExit(ctx: VcpuExitContext): StopReason | undefined {
    const run = this.run;
    const reason = run.getUint32(R.exit_reason.offset, true);
    const counters = ctx.control.exitCounters;
    // Writes KVM queued before this exit reach their devices first: a read of a coalesced zone, or a register
    // write that changes how it decodes, must see them.
    ctx.coalesced?.drain(ctx.mmio, ctx.pio);
    if (reason === EXIT_IO) {
      Atomics.add(counters, EXIT_COUNT_PIO, 1);
      const bytes = this.runBytes;
      const size = bytes[R['io.size'].offset];
      const port = run.getUint16(R['io.port'].offset, true);
      const count = run.getUint32(R['io.count'].offset, true);
      let at = run.getUint32(R['io.data_offset'].offset, true);
      if (bytes[R['io.direction'].offset] === KVM_EXIT_IO_OUT) {
        for (let i = 0; i < count; i++, at += size) {
          const v = size === 1 ? bytes[at] : size === 2 ? run.getUint16(at, true) : run.getUint32(at, true);
          ctx.pio.write(port, size, v);
        }
      } else {
        for (let i = 0; i < count; i++, at += size) {
          const v = ctx.pio.read(port, size);
          if (size === 1) bytes[at] = v;
          else if (size === 2) run.setUint16(at, v, true);
          else run.setUint32(at, v >>> 0, true);
        }
      }
      return undefined;
    }
    if (reason === EXIT_MMIO) {
      Atomics.add(counters, EXIT_COUNT_MMIO, 1);
      const address = Number(run.getBigUint64(R['mmio.phys_addr'].offset, true));
      const len = run.getUint32(R['mmio.len'].offset, true);
      const data = this.mmioData[len > 8 ? 8 : len];
      if (this.runBytes[R['mmio.is_write'].offset]) ctx.mmio.write(address, data);
      else ctx.mmio.read(address, data);
      return undefined;
    }
    Atomics.add(counters, EXIT_COUNT_OTHER, 1);
    return this.handleRareExit(reason, ctx);
  }

  private handleRareExit(reason: number, ctx: VcpuExitContext): StopReason | undefined {
    const run = this.run;
    const name = exitReasonName(reason);
    const dump = (): string => this.describeState(ctx.memory);
    switch (reason) {
      case exitReasons.KVM_EXIT_HLT:
        // Only without an in-kernel LAPIC; Partita always has one, but a HLT here still means "idle forever".
        return ctx.control.fault(`vCPU ${this.id}: the guest halted (KVM_EXIT_HLT)\n${dump()}`, 3, 'halted');
      case exitReasons.KVM_EXIT_SHUTDOWN:
        return ctx.control.fault(
          `vCPU ${this.id}: the guest triple-faulted (KVM_EXIT_SHUTDOWN)\n${dump()}`,
          3,
          'triple-fault',
        );
      case exitReasons.KVM_EXIT_FAIL_ENTRY: {
        const hw = run.getBigUint64(R['fail_entry.hardware_entry_failure_reason'].offset, true);
        const cpu = run.getUint32(R['fail_entry.cpu'].offset, true);
        return ctx.control.fault(
          `vCPU ${this.id}: the CPU refused to enter the guest (KVM_EXIT_FAIL_ENTRY, hardware reason 0x${hw.toString(16)}, host CPU ${cpu})\n${dump()}`,
          3,
          'fail-entry',
        );
      }
      case exitReasons.KVM_EXIT_INTERNAL_ERROR: {
        const sub = run.getUint32(R['internal.suberror'].offset, true);
        const ndata = Math.min(run.getUint32(R['internal.ndata'].offset, true), 16);
        const data = Array.from(
          { length: ndata },
          (_, i) => '0x' + run.getBigUint64(R['internal.data'].offset + 8 * i, true).toString(16),
        );
        const what =
          sub === internalErrorSuberrors.KVM_INTERNAL_ERROR_EMULATION
            ? "KVM's instruction emulator could not run a guest instruction (emulation failure)"
            : sub === internalErrorSuberrors.KVM_INTERNAL_ERROR_SIMUL_EX
              ? 'an exception occurred while delivering another (simultaneous exceptions)'
              : sub === internalErrorSuberrors.KVM_INTERNAL_ERROR_DELIVERY_EV
                ? 'an event could not be delivered to the guest'
                : `suberror ${sub}`;
        return ctx.control.fault(
          `vCPU ${this.id}: KVM internal error: ${what}${data.length ? ` [data ${data.join(' ')}]` : ''}\n${dump()}`,
          3,
          sub === internalErrorSuberrors.KVM_INTERNAL_ERROR_EMULATION ? 'emulation-failure' : 'internal-error',
        );
      }
      case exitReasons.KVM_EXIT_SYSTEM_EVENT: {
        const type = run.getUint32(R['system_event.type'].offset, true);
        if (type === systemEventTypes.KVM_SYSTEM_EVENT_SHUTDOWN)
          return ctx.control.stop({ kind: 'poweroff', status: 0, message: 'the guest powered off' });
        if (type === systemEventTypes.KVM_SYSTEM_EVENT_RESET)
          return ctx.control.stop({
            kind: 'reset',
            status: 0,
            message: 'the guest requested a reset; Partita stops the VM (no reboot)',
          });
        return ctx.control.fault(
          `vCPU ${this.id}: the guest reported a crash or system event ${type}\n${dump()}`,
          3,
          'system-event',
        );
      }
      case exitReasons.KVM_EXIT_IRQ_WINDOW_OPEN:
      case exitReasons.KVM_EXIT_INTR:
        return undefined;
      default:
        return ctx.control.fault(`vCPU ${this.id}: unexpected exit ${name} (${reason})\n${dump()}`, 3, 'unknown-exit');
    }
  }

  close(): void {
    native.close(this.fd);
  }
}
