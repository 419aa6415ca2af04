// Device memory: host memory the guest maps directly at an address a device chooses at run time (a VGA
// framebuffer behind a BAR the guest programs, later VFIO BARs). Each region owns one KVM memory slot number,
// reserved when it is made; placing it registers that slot at a guest-physical address (or removes it), from
// any thread, and its dirty-page log (KVM_GET_DIRTY_LOG) can be read from any thread. The region descriptor is
// structured-clone safe; where it is placed lives in a SharedArrayBuffer every thread sees.
import { ioctls, kvm_dirty_log, kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES } from '../kvm/abi.js';
import { native } from '../native/index.js';

export interface DeviceMemoryRegion {
  readonly name: string;
  /** The KVM slot number reserved for it. */
  readonly slot: number;
  readonly size: number;
  readonly hostAddress: bigint;
  readonly dirtyLog: boolean;
  /** Float64 [0]: the guest-physical address it is placed at, or -1 when it is not mapped. */
  readonly placement: SharedArrayBuffer;
}

const PAGE = 4096;

export function newDeviceMemoryRegion(r: Omit<DeviceMemoryRegion, 'placement'>): DeviceMemoryRegion {
  const placement = new SharedArrayBuffer(8);
  new Float64Array(placement)[0] = -1;
  return { ...r, placement };
}

/** Where the region is mapped in the guest, or undefined. */
export function deviceMemoryAddress(region: DeviceMemoryRegion): number | undefined {
  const gpa = new Float64Array(region.placement)[0];
  return gpa < 0 ? undefined : gpa;
}

/** The host's view of the region's bytes (what the guest sees through it, wherever it is placed). */
export function deviceMemoryBytes(region: DeviceMemoryRegion): Uint8Array {
  return new Uint8Array(native.view(region.hostAddress, region.size));
}

function setSlot(vmFd: number, region: DeviceMemoryRegion, gpa: number, size: number): number {
  const f = kvm_userspace_memory_region.fields;
  const buf = new DataView(new ArrayBuffer(kvm_userspace_memory_region.size));
  buf.setUint32(f.slot.offset, region.slot, true);
  buf.setUint32(f.flags.offset, region.dirtyLog ? KVM_MEM_LOG_DIRTY_PAGES : 0, true);
  buf.setBigUint64(f.guest_phys_addr.offset, BigInt(gpa), true);
  buf.setBigUint64(f.memory_size.offset, BigInt(size), true);
  buf.setBigUint64(f.userspace_addr.offset, region.hostAddress, true);
  return native.ioctl(vmFd, ioctls.KVM_SET_USER_MEMORY_REGION, buf);
}

/**
 * Maps the region at `gpa` (undefined: unmaps it). Returns false when KVM refuses the address (it overlaps RAM or
 * another slot, or is not page-aligned: a guest may program a BAR anywhere); the region then stays unmapped and
 * guest accesses to it exit to userspace as MMIO, where the device can still serve them from deviceMemoryBytes().
 * The caller serializes placements of one region (the PCI bus's placement lock does for BARs).
 */
export function placeDeviceMemory(vmFd: number, region: DeviceMemoryRegion, gpa: number | undefined): boolean {
  const cell = new Float64Array(region.placement);
  const current = cell[0] < 0 ? undefined : cell[0];
  if (current === gpa) return true;
  if (current !== undefined) {
    // KVM moves a slot only by deleting it (size 0) and registering it again.
    setSlot(vmFd, region, current, 0);
    cell[0] = -1;
  }
  if (gpa === undefined) return true;
  if (gpa % PAGE !== 0 || !Number.isSafeInteger(gpa) || gpa < 0) return false;
  if (setSlot(vmFd, region, gpa, region.size) < 0) return false;
  cell[0] = gpa;
  return true;
}

/**
 * The pages written since the last call (KVM_GET_DIRTY_LOG clears the log), one bit per 4 KiB page, least
 * significant bit first. While the region is not mapped the guest cannot write it through KVM: every page is
 * reported dirty, so a consumer redraws rather than misses a change made through MMIO exits.
 */
export function readDirtyLog(vmFd: number, region: DeviceMemoryRegion): Uint8Array {
  const pages = Math.ceil(region.size / PAGE);
  const bitmap = new BigUint64Array(Math.ceil(pages / 64));
  if (!region.dirtyLog || deviceMemoryAddress(region) === undefined) {
    const all = new Uint8Array(bitmap.buffer);
    all.fill(0xff);
    return all;
  }
  const arg = new DataView(new ArrayBuffer(kvm_dirty_log.size));
  arg.setUint32(kvm_dirty_log.fields.slot.offset, region.slot, true);
  arg.setBigUint64(kvm_dirty_log.fields.dirty_bitmap.offset, native.addressOf(bitmap), true);
  if (native.ioctl(vmFd, ioctls.KVM_GET_DIRTY_LOG, arg) < 0) new Uint8Array(bitmap.buffer).fill(0xff);
  return new Uint8Array(bitmap.buffer);
}
