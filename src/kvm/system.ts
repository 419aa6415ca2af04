// /dev/kvm: opening it with errors a person can act on, the API version and capability checks.
import { accessSync, constants as fsConstants, existsSync } from 'node:fs';
import { caps, ioctls, KVM_API_VERSION, type CapName } from './abi.js';
import { check, native, O_RDWR, SystemCallError } from '../native/index.js';

export class KvmUnavailableError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'KvmUnavailableError';
  }
}

/** Capabilities a Partita VM cannot run without. */
const REQUIRED_CAPS: readonly CapName[] = [
  'KVM_CAP_IRQCHIP',
  'KVM_CAP_USER_MEMORY',
  'KVM_CAP_SET_TSS_ADDR',
  'KVM_CAP_EXT_CPUID',
  'KVM_CAP_PIT2',
  'KVM_CAP_IRQ_ROUTING',
  'KVM_CAP_IRQFD',
  'KVM_CAP_IOEVENTFD',
  'KVM_CAP_MP_STATE',
  'KVM_CAP_IMMEDIATE_EXIT',
];

export class KvmSystem {
  private constructor(
    readonly fd: number,
    readonly path: string,
  ) {}

  static open(path = '/dev/kvm'): KvmSystem {
    if (!existsSync(path)) {
      throw new KvmUnavailableError(
        `${path} does not exist: this host has no KVM. Enable virtualization (VT-x/AMD-V) in the firmware and load ` +
          'the kvm_intel or kvm_amd module (sudo modprobe kvm_intel / kvm_amd).',
      );
    }
    try {
      accessSync(path, fsConstants.R_OK | fsConstants.W_OK);
    } catch {
      throw new KvmUnavailableError(
        `${path} is not accessible to this user: add yourself to the kvm group (sudo usermod -aG kvm $USER, then log in again).`,
      );
    }
    const fd = native.open(path, O_RDWR);
    if (fd < 0) throw new KvmUnavailableError(`cannot open ${path}: ${new SystemCallError('open', -fd).code}`);
    const sys = new KvmSystem(fd, path);
    const version = native.ioctl(fd, ioctls.KVM_GET_API_VERSION);
    if (version !== KVM_API_VERSION) {
      native.close(fd);
      throw new KvmUnavailableError(`${path} reports KVM API version ${version}; Partita needs ${KVM_API_VERSION}`);
    }
    const missing = REQUIRED_CAPS.filter((c) => !sys.hasCapability(c));
    if (missing.length) {
      native.close(fd);
      throw new KvmUnavailableError(`${path} lacks required capabilities: ${missing.join(', ')}`);
    }
    return sys;
  }

  /** KVM_CHECK_EXTENSION: 0 when absent, else a capability-specific value (often 1). */
  capability(cap: CapName): number {
    const r = native.ioctl(this.fd, ioctls.KVM_CHECK_EXTENSION, caps[cap]);
    return r < 0 ? 0 : r;
  }

  hasCapability(cap: CapName): boolean {
    return this.capability(cap) > 0;
  }

  /** Most vCPUs one VM may have (KVM_CAP_MAX_VCPUS, falling back to NR_VCPUS as the API says). */
  get maxVcpus(): number {
    return this.capability('KVM_CAP_MAX_VCPUS') || this.capability('KVM_CAP_NR_VCPUS') || 4;
  }

  get vcpuMmapSize(): number {
    return check(native.ioctl(this.fd, ioctls.KVM_GET_VCPU_MMAP_SIZE), 'KVM_GET_VCPU_MMAP_SIZE');
  }

  /** True on this workplace's nested PVM KVM, where non-PVM guests run in KVM's instruction emulator. */
  static isPvm(): boolean {
    return existsSync('/sys/module/kvm_pvm');
  }

  close(): void {
    native.close(this.fd);
  }
}
