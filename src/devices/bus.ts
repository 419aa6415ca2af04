// The port-I/O and MMIO buses: where devices register address ranges and where a vCPU's exits are dispatched.
// Port lookup is one typed-array load (65536 ports), so dispatch costs the same for every device.

/** A device on the x86 I/O port space. `offset` is relative to the base the device was registered at. */
export interface PortIoDevice {
  readonly name: string;
  pioRead(offset: number, size: number): number;
  pioWrite(offset: number, size: number, value: number): void;
}

/** A device on the MMIO space. `data` is the access (1, 2, 4 or 8 bytes, little-endian) to fill or consume. */
export interface MmioDevice {
  readonly name: string;
  mmioRead(offset: number, data: Uint8Array): void;
  mmioWrite(offset: number, data: Uint8Array): void;
}

export class BusConflictError extends Error {}

export class PortIoBus {
  private readonly slot = new Uint16Array(65536); // port -> index + 1 into `devices`, 0 = nothing there
  private readonly devices: PortIoDevice[] = [];
  private readonly bases: number[] = [];
  private readonly lengths: number[] = [];
  /** Accesses no device claimed (reads return all ones, writes are dropped, as on a PC). */
  unclaimed = 0;

  register(base: number, length: number, device: PortIoDevice): void {
    if (!Number.isInteger(base) || !Number.isInteger(length) || base < 0 || length < 1 || base + length > 65536) {
      throw new RangeError(`${device.name}: port range 0x${base.toString(16)}+${length} is not inside 0..0xffff`);
    }
    // Range against range (not port by port: a 16 Ki-port PCI window would be a hot loop that wakes V8's
    // optimizing compiler during start-up, and pages in megabytes of its code).
    this.bases.forEach((b, i) => {
      if (base < b + this.lengths[i] && b < base + length) {
        const p = Math.max(base, b);
        throw new BusConflictError(
          `${device.name}: port 0x${p.toString(16)} already belongs to ${this.devices[i].name}`,
        );
      }
    });
    this.devices.push(device);
    this.bases.push(base);
    this.lengths.push(length);
    this.slot.fill(this.devices.length, base, base + length);
  }

  read(port: number, size: number): number {
    const i = this.slot[port];
    if (i === 0) {
      this.unclaimed++;
      return size === 4 ? 0xffffffff : (1 << (size * 8)) - 1;
    }
    return this.devices[i - 1].pioRead(port - this.bases[i - 1], size);
  }

  write(port: number, size: number, value: number): void {
    const i = this.slot[port];
    if (i === 0) {
      this.unclaimed++;
      return;
    }
    this.devices[i - 1].pioWrite(port - this.bases[i - 1], size, value);
  }

  deviceAt(port: number): PortIoDevice | undefined {
    const i = this.slot[port];
    return i ? this.devices[i - 1] : undefined;
  }
}

interface MmioRange {
  readonly base: number;
  readonly end: number; // exclusive
  readonly device: MmioDevice;
}

export class MmioBus {
  private ranges: MmioRange[] = [];
  unclaimed = 0;

  register(base: number, length: number, device: MmioDevice): void {
    if (!Number.isSafeInteger(base) || !Number.isSafeInteger(length) || base < 0 || length < 1) {
      throw new RangeError(`${device.name}: bad MMIO range 0x${base.toString(16)}+${length}`);
    }
    const end = base + length;
    for (const r of this.ranges) {
      if (base < r.end && r.base < end) {
        throw new BusConflictError(`${device.name}: MMIO 0x${base.toString(16)}+${length} overlaps ${r.device.name}`);
      }
    }
    this.ranges.push({ base, end, device });
    this.ranges.sort((a, b) => a.base - b.base);
  }

  unregister(device: MmioDevice): void {
    this.ranges = this.ranges.filter((r) => r.device !== device);
  }

  private find(address: number, length: number): MmioRange | undefined {
    let lo = 0;
    let hi = this.ranges.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const r = this.ranges[mid];
      if (address < r.base) hi = mid - 1;
      else if (address >= r.end) lo = mid + 1;
      else return address + length <= r.end ? r : undefined;
    }
    return undefined;
  }

  read(address: number, data: Uint8Array): void {
    const r = this.find(address, data.length);
    if (!r) {
      this.unclaimed++;
      data.fill(0xff);
      return;
    }
    r.device.mmioRead(address - r.base, data);
  }

  write(address: number, data: Uint8Array): void {
    const r = this.find(address, data.length);
    if (!r) {
      this.unclaimed++;
      return;
    }
    r.device.mmioWrite(address - r.base, data);
  }
}
