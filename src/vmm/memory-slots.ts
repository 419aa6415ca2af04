// The VM's guest-physical address space as KVM memory slots (KVM_SET_USER_MEMORY_REGION): RAM below and above
// the PCI hole, read-only ROM (KVM_MEM_READONLY: guest writes exit as MMIO, as to a real flash/ROM), and device
// memory such as a framebuffer with dirty-page logging (KVM_MEM_LOG_DIRTY_PAGES). Slot numbers are handed out
// here, overlaps are refused, and every slot's host memory is owned here.
import {
  ioctls,
  kvm_dirty_log,
  kvm_userspace_memory_region,
  KVM_MEM_LOG_DIRTY_PAGES,
  KVM_MEM_READONLY,
} from '../kvm/abi.js';
import { check, native } from '../native/index.js';
import { GuestMemory, mapGuestMemory, type RamRange } from '../base/guest-memory.js';
import { newDeviceMemoryRegion, type DeviceMemoryRegion } from '../base/device-memory.js';

export type SlotKind = 'ram' | 'rom' | 'device';

export interface MemorySlot {
  readonly slot: number;
  readonly kind: SlotKind;
  readonly gpa: number;
  readonly size: number;
  readonly hostAddress: bigint;
  readonly readOnly: boolean;
  readonly dirtyLog: boolean;
  /** A name for messages ("RAM below 4 GiB", "SeaBIOS ROM", "VGA framebuffer"). */
  readonly name: string;
}

const PAGE = 4096;

export class MemorySlots {
  private readonly slots: MemorySlot[] = [];
  private nextSlot = 0;

  constructor(private readonly vmFd: number) {}

  get all(): readonly MemorySlot[] {
    return this.slots;
  }

  /** Maps guest RAM (anonymous, MAP_NORESERVE: untouched pages cost nothing) and registers a slot per range. */
  addRam(ranges: readonly RamRange[]): GuestMemory {
    for (const r of ranges) this.checkFree(r.gpa, r.size, 'RAM');
    const memory = GuestMemory.allocateRanges(ranges);
    try {
      memory.regions.forEach((r) =>
        this.register({
          kind: 'ram',
          gpa: r.gpa,
          size: r.size,
          hostAddress: r.hostAddress,
          readOnly: false,
          dirtyLog: false,
          name: `RAM at 0x${r.gpa.toString(16)}`,
        }),
      );
    } catch (e) {
      memory.release();
      throw e;
    }
    return memory;
  }

  /**
   * A read-only slot holding `bytes` (padded with zeros to whole pages): firmware ROM. The guest reads it at
   * memory speed; its writes exit to userspace as MMIO (where the bus can ignore them, as ROM does).
   */
  addRom(gpa: number, bytes: Uint8Array, name: string): MemorySlot {
    const size = Math.ceil(bytes.length / PAGE) * PAGE;
    const host = this.map(size, name);
    new Uint8Array(native.view(host, size)).set(bytes);
    return this.register({ kind: 'rom', gpa, size, hostAddress: host, readOnly: true, dirtyLog: false, name });
  }

  /** Device memory the guest maps directly (a framebuffer); with `dirtyLog`, KVM records the pages it writes. */
  addDeviceMemory(gpa: number, size: number, name: string, opts: { dirtyLog?: boolean } = {}): MemorySlot {
    const host = this.map(size, name);
    return this.register({
      kind: 'device',
      gpa,
      size,
      hostAddress: host,
      readOnly: false,
      dirtyLog: opts.dirtyLog === true,
      name,
    });
  }

  /**
   * Device memory placed later, by its device, wherever the guest wants it (base/device-memory.ts): host memory
   * and a slot number now, the KVM registration when the guest programs its address.
   */
  reserveDeviceMemory(size: number, name: string, opts: { dirtyLog?: boolean } = {}): DeviceMemoryRegion {
    const hostAddress = this.map(size, name);
    return newDeviceMemoryRegion({ name, slot: this.nextSlot++, size, hostAddress, dirtyLog: opts.dirtyLog === true });
  }

  /**
   * The pages of a dirty-logged slot written since the last call (KVM_GET_DIRTY_LOG clears the log): a bitmap,
   * one bit per 4 KiB page, least significant bit first.
   */
  dirtyPages(slot: MemorySlot): Uint8Array {
    if (!slot.dirtyLog) throw new RangeError(`${slot.name}: dirty logging is off for this slot`);
    const pages = slot.size / PAGE;
    const bitmap = new BigUint64Array(Math.ceil(pages / 64));
    const arg = new DataView(new ArrayBuffer(kvm_dirty_log.size));
    arg.setUint32(kvm_dirty_log.fields.slot.offset, slot.slot, true);
    arg.setBigUint64(kvm_dirty_log.fields.dirty_bitmap.offset, native.addressOf(bitmap), true);
    check(native.ioctl(this.vmFd, ioctls.KVM_GET_DIRTY_LOG, arg), 'KVM_GET_DIRTY_LOG', slot.name);
    return new Uint8Array(bitmap.buffer);
  }

  private map(size: number, name: string): bigint {
    if (!Number.isSafeInteger(size) || size <= 0 || size % PAGE !== 0)
      throw new RangeError(`${name}: ${size} bytes is not a whole number of pages`);
    return mapGuestMemory(size, name);
  }

  private checkFree(gpa: number, size: number, name: string): void {
    if (gpa % PAGE !== 0 || size % PAGE !== 0 || size <= 0)
      throw new RangeError(`${name} at 0x${gpa.toString(16)} (+0x${size.toString(16)}) is not page-aligned`);
    const clash = this.slots.find((s) => gpa < s.gpa + s.size && s.gpa < gpa + size);
    if (clash)
      throw new RangeError(
        `${name} at 0x${gpa.toString(16)} (+0x${size.toString(16)}) overlaps ${clash.name} at 0x${clash.gpa.toString(16)}`,
      );
  }

  private register(s: Omit<MemorySlot, 'slot'>): MemorySlot {
    this.checkFree(s.gpa, s.size, s.name);
    const slot: MemorySlot = { ...s, slot: this.nextSlot };
    const f = kvm_userspace_memory_region.fields;
    const buf = new DataView(new ArrayBuffer(kvm_userspace_memory_region.size));
    buf.setUint32(f.slot.offset, slot.slot, true);
    buf.setUint32(
      f.flags.offset,
      (s.readOnly ? KVM_MEM_READONLY : 0) | (s.dirtyLog ? KVM_MEM_LOG_DIRTY_PAGES : 0),
      true,
    );
    buf.setBigUint64(f.guest_phys_addr.offset, BigInt(s.gpa), true);
    buf.setBigUint64(f.memory_size.offset, BigInt(s.size), true);
    buf.setBigUint64(f.userspace_addr.offset, s.hostAddress, true);
    check(
      native.ioctl(this.vmFd, ioctls.KVM_SET_USER_MEMORY_REGION, buf),
      'KVM_SET_USER_MEMORY_REGION',
      `slot ${slot.slot} (${s.name}) at 0x${s.gpa.toString(16)}`,
    );
    this.nextSlot++;
    this.slots.push(slot);
    return slot;
  }
}
