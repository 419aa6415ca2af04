// KVM's coalesced MMIO ring (Documentation/virt/kvm/api.rst, KVM_REGISTER_COALESCED_MMIO): writes to a registered
// guest-physical zone do not exit to userspace; KVM appends them to a ring in a page of the vCPU mapping (page
// KVM_CAP_COALESCED_MMIO of the kvm_run mmap, one ring per VM) and userspace replays them on the device. For
// memory whose writes need no immediate answer — the VGA window, written a character cell at a time by text-mode
// firmware and boot loaders — that turns tens of thousands of exits per boot into a few ring drains.
//
// Ordering is kept by draining before every exit is handled (so a read of the zone, or a register write that
// changes how the zone decodes, sees every earlier write) and on every kick (the 250 ms tick: a guest idle in HLT
// still gets its last writes to the screen). Any exit-handling thread may drain: a shared lock makes one consume
// at a time, in ring order.
import { kvm_coalesced_mmio, kvm_coalesced_mmio_ring, kvm_coalesced_mmio_zone, ioctls } from '../kvm/abi.js';
import { check, native } from '../native/index.js';
import type { MmioBus, PortIoBus } from '../devices/bus.js';

const PAGE = 4096;
const ENTRY = kvm_coalesced_mmio.size;
const HEAD = kvm_coalesced_mmio_ring.size;
/** KVM_COALESCED_MMIO_MAX: the entries that fit the page after the head. */
export const COALESCED_MMIO_MAX = Math.floor((PAGE - HEAD) / ENTRY);
const FIRST = kvm_coalesced_mmio_ring.fields.first.offset;
const LAST = kvm_coalesced_mmio_ring.fields.last.offset;
const F = kvm_coalesced_mmio.fields;

export interface Zone {
  readonly base: number;
  readonly size: number;
}

/** Registers `zone` with the VM: its writes go to the ring from now on. */
export function registerCoalescedZone(vmFd: number, zone: Zone): void {
  const buf = new DataView(new ArrayBuffer(kvm_coalesced_mmio_zone.size));
  buf.setBigUint64(kvm_coalesced_mmio_zone.fields.addr.offset, BigInt(zone.base), true);
  buf.setUint32(kvm_coalesced_mmio_zone.fields.size.offset, zone.size, true);
  check(
    native.ioctl(vmFd, ioctls.KVM_REGISTER_COALESCED_MMIO, buf),
    'KVM_REGISTER_COALESCED_MMIO',
    `0x${zone.base.toString(16)}+0x${zone.size.toString(16)}`,
  );
}

export class CoalescedMmioRing {
  private readonly bytes: Uint8Array;
  private readonly lock: Int32Array;
  private replayed = 0;

  /**
   * `ring`: the ring's page as this thread maps it (a vCPU's kvm_run mapping, page `pageOffset`); `lock`: one
   * Int32 in a SharedArrayBuffer shared by every thread that drains.
   */
  constructor(
    private readonly ring: DataView,
    lock: SharedArrayBuffer,
  ) {
    if (ring.byteLength < PAGE) throw new RangeError(`the coalesced MMIO ring is a ${PAGE}-byte page`);
    this.bytes = new Uint8Array(ring.buffer, ring.byteOffset, PAGE);
    this.lock = new Int32Array(lock, 0, 1);
  }

  static createLock(): SharedArrayBuffer {
    return new SharedArrayBuffer(4);
  }

  /** Writes replayed so far by this thread's ring view (for --stats). */
  get count(): number {
    return this.replayed;
  }

  /** Replays every queued write on the buses, oldest first; returns how many. */
  drain(mmio: MmioBus, pio: PortIoBus): number {
    const ring = this.ring;
    // Cheap test first: nothing queued is the common case on every exit.
    if (ring.getUint32(FIRST, true) === ring.getUint32(LAST, true)) return 0;
    while (Atomics.compareExchange(this.lock, 0, 0, 1) !== 0) Atomics.wait(this.lock, 0, 1, 1);
    let n = 0;
    try {
      let first = ring.getUint32(FIRST, true);
      // KVM fills the entry, then (after a write barrier) moves `last`: on x86 our loads are not reordered, so an
      // entry before `last` is complete. Indexes beyond the ring would be a KVM bug: treated as empty.
      const last = ring.getUint32(LAST, true);
      if (first >= COALESCED_MMIO_MAX || last >= COALESCED_MMIO_MAX) return 0;
      while (first !== last) {
        const at = HEAD + first * ENTRY;
        const address = Number(ring.getBigUint64(at + F.phys_addr.offset, true));
        const len = Math.min(ring.getUint32(at + F.len.offset, true), 8);
        const data = this.bytes.subarray(at + F.data.offset, at + F.data.offset + len);
        if (ring.getUint32(at + F.pio.offset, true)) {
          const value =
            len === 1
              ? data[0]
              : len === 2
                ? ring.getUint16(at + F.data.offset, true)
                : ring.getUint32(at + F.data.offset, true);
          pio.write(address, len, value);
        } else mmio.write(address, data);
        first = (first + 1) % COALESCED_MMIO_MAX;
        // Each slot is handed back as soon as it is replayed: KVM can queue again while we work.
        ring.setUint32(FIRST, first, true);
        n++;
      }
    } finally {
      Atomics.store(this.lock, 0, 0);
      Atomics.notify(this.lock, 0);
    }
    this.replayed += n;
    return n;
  }
}
