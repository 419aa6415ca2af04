// A developer aid (PARTITA_TRACE=exits): the last exits a vCPU took, kept in a ring and printed when the VM
// stops, so a guest that hangs in a loop of port or MMIO accesses shows which ones. Not for production runs: it
// wraps the buses on the hot path.
import type { MmioBus, PortIoBus } from '../devices/bus.js';

export class ExitRing {
  private readonly entries: string[] = [];
  private next = 0;
  private total = 0;

  constructor(private readonly size: number) {}

  private record(entry: string): void {
    this.entries[this.next] = entry;
    this.next = (this.next + 1) % this.size;
    this.total++;
  }

  wrapPio(bus: PortIoBus): PortIoBus {
    const ring = this;
    return Object.assign(Object.create(bus) as PortIoBus, {
      read(port: number, size: number): number {
        const v = bus.read(port, size);
        ring.record(`in  port 0x${port.toString(16)}/${size} -> 0x${v.toString(16)}`);
        return v;
      },
      write(port: number, size: number, value: number): void {
        ring.record(`out port 0x${port.toString(16)}/${size} <- 0x${value.toString(16)}`);
        bus.write(port, size, value);
      },
    });
  }

  wrapMmio(bus: MmioBus): MmioBus {
    const ring = this;
    const hex = (d: Uint8Array): string => Buffer.from(d).toString('hex');
    return Object.assign(Object.create(bus) as MmioBus, {
      read(address: number, data: Uint8Array): void {
        bus.read(address, data);
        ring.record(`rd  mmio 0x${address.toString(16)}/${data.length} -> ${hex(data)}`);
      },
      write(address: number, data: Uint8Array): void {
        ring.record(`wr  mmio 0x${address.toString(16)}/${data.length} <- ${hex(data)}`);
        bus.write(address, data);
      },
    });
  }

  dump(): string {
    const n = Math.min(this.total, this.size);
    const start = this.total > this.size ? this.next : 0;
    const lines = [`partita: the last ${n} of ${this.total} exits:`];
    for (let i = 0; i < n; i++) lines.push(`  ${this.entries[(start + i) % this.size]}`);
    return lines.join('\n');
  }
}
