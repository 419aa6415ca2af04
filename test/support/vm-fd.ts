// A VM file descriptor for device tests: a real KVM VM when /dev/kvm is there, otherwise a model of the few VM
// ioctls the PCI and virtio-pci code issues (KVM_IOEVENTFD, KVM_IRQFD, KVM_SET_GSI_ROUTING), so the device logic
// runs on hosts without KVM too. The model keeps KVM's rules where they decide what a device sees: ioeventfd
// collisions and deassignment (virt/kvm/eventfd.c, kvm_assign_ioeventfd_idx / ioeventfd_check_collision /
// kvm_deassign_ioeventfd_idx) and the 1000-device limit of a KVM I/O bus (NR_IOBUS_DEVS).
import { existsSync } from 'node:fs';
import { KvmSystem } from '../../src/kvm/system.js';
import { Vm } from '../../src/vmm/vm.js';
import { MIB } from '../../src/base/units.js';
import {
  ioctls,
  kvm_ioeventfd,
  KVM_IOEVENTFD_FLAG_DATAMATCH,
  KVM_IOEVENTFD_FLAG_DEASSIGN,
  KVM_IOEVENTFD_FLAG_PIO,
} from '../../src/kvm/abi.js';
import { native, O_RDONLY } from '../../src/native/index.js';

const EEXIST = 17;
const ENOENT = 2;
const EINVAL = 22;
const ENOSPC = 28;
const NR_IOBUS_DEVS = 1000;

export interface Ioeventfd {
  readonly pio: boolean;
  readonly addr: bigint;
  readonly len: number;
  readonly fd: number;
  readonly datamatch?: bigint;
}

export interface TestVm {
  readonly fd: number;
  /** Whether this is the model (no /dev/kvm) rather than a real KVM VM. */
  readonly modelled: boolean;
  /** The model's registered ioeventfds (empty for a real VM: KVM does not list them). */
  readonly ioeventfds: readonly Ioeventfd[];
}

let wrapped = false;
const models = new Map<number, Ioeventfd[]>();

function ioeventfdIoctl(table: Ioeventfd[], arg: DataView): number {
  const f = kvm_ioeventfd.fields;
  const flags = arg.getUint32(f.flags.offset, true);
  const p: Ioeventfd = {
    pio: (flags & KVM_IOEVENTFD_FLAG_PIO) !== 0,
    addr: arg.getBigUint64(f.addr.offset, true),
    len: arg.getUint32(f.len.offset, true),
    fd: arg.getInt32(f.fd.offset, true),
    datamatch: flags & KVM_IOEVENTFD_FLAG_DATAMATCH ? arg.getBigUint64(f.datamatch.offset, true) : undefined,
  };
  if (![0, 1, 2, 4, 8].includes(p.len) || p.addr + BigInt(p.len) >= 1n << 64n) return -EINVAL;
  const same = (q: Ioeventfd): boolean => q.pio === p.pio && q.addr === p.addr;
  if (flags & KVM_IOEVENTFD_FLAG_DEASSIGN) {
    const i = table.findIndex((q) => same(q) && q.fd === p.fd && q.len === p.len && q.datamatch === p.datamatch);
    if (i < 0) return -ENOENT;
    table.splice(i, 1);
    return 0;
  }
  const collides = (q: Ioeventfd): boolean =>
    same(q) &&
    (!q.len ||
      !p.len ||
      (q.len === p.len && (q.datamatch === undefined || p.datamatch === undefined || q.datamatch === p.datamatch)));
  if (table.some(collides)) return -EEXIST;
  if (table.filter((q) => q.pio === p.pio).length >= NR_IOBUS_DEVS) return -ENOSPC;
  table.push(p);
  return 0;
}

function installModel(): void {
  if (wrapped) return;
  wrapped = true;
  const real = native.ioctl.bind(native);
  native.ioctl = (fd, request, arg) => {
    const table = models.get(fd);
    if (!table) return real(fd, request, arg);
    if (request === ioctls.KVM_IOEVENTFD && arg instanceof DataView) return ioeventfdIoctl(table, arg);
    if (request === ioctls.KVM_IRQFD || request === ioctls.KVM_SET_GSI_ROUTING) return 0;
    return -EINVAL;
  };
}

export const haveKvmDevice = existsSync('/dev/kvm');

/** A VM for a device test: real KVM if available, else the model (its fd is a real fd, /dev/null). */
export function testVm(): TestVm {
  if (haveKvmDevice) {
    const vm = Vm.create(KvmSystem.open(), 16 * MIB);
    return { fd: vm.fd, modelled: false, ioeventfds: [] };
  }
  installModel();
  const fd = native.open('/dev/null', O_RDONLY);
  if (fd < 0) throw new Error(`open /dev/null: ${-fd}`);
  const table: Ioeventfd[] = [];
  models.set(fd, table);
  return { fd, modelled: true, ioeventfds: table };
}
