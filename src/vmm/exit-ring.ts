// A developer aid (PARTITA_TRACE=exits): the last exits a vCPU took, kept in a ring and printed when the VM
// stops, so a guest that hangs in a loop of port or MMIO accesses shows which ones. Numbers only on the hot path
// (typed arrays, formatted at dump time) so the trace changes the guest's timing as little as it can.
import type { MmioBus, PortIoBus } from '../devices/bus.js';

const PIO_IN = 0;
const PIO_OUT = 1;
const MMIO_READ = 2;
const MMIO_WRITE = 3;
const KIND_NAMES = ['in  port', 'out port', 'rd  mmio', 'wr  mmio'];

export class ExitRing {
  private readonly kind: Uint8Array;
  private readonly size: Uint8Array;
  private readonly address: Float64Array;
  private readonly value: Float64Array;
  private next = 0;
  private total = 0;

  constructor(private readonly capacity: number) {
    this.kind = new Uint8Array(capacity);
    this.size = new Uint8Array(capacity);
    this.address = new Float64Array(capacity);
    this.value = new Float64Array(capacity);
  }

  private record(kind: number, address: number, size: number, value: number): void {
    const i = this.next;
    this.kind[i] = kind;
    this.address[i] = address;
    this.size[i] = size;
    this.value[i] = value;
    this.next = i + 1 === this.capacity ? 0 : i + 1;
    this.total++;
  }

  wrapPio(bus: PortIoBus): PortIoBus {
    const record = this.record.bind(this);
    return Object.assign(Object.create(bus) as PortIoBus, {
      read(port: number, size: number): number {
        const v = bus.read(port, size);
        record(PIO_IN, port, size, v);
        return v;
      },
      write(port: number, size: number, value: number): void {
        record(PIO_OUT, port, size, value);
        bus.write(port, size, value);
      },
    });
  }

  wrapMmio(bus: MmioBus): MmioBus {
    const record = this.record.bind(this);
    // The first (up to) 6 bytes of the data as a number: enough to recognise an access.
    const first = (d: Uint8Array): number => {
      let v = 0;
      for (let i = Math.min(d.length, 6) - 1; i >= 0; i--) v = v * 256 + d[i];
      return v;
    };
    return Object.assign(Object.create(bus) as MmioBus, {
      read(address: number, data: Uint8Array): void {
        bus.read(address, data);
        record(MMIO_READ, address, data.length, first(data));
      },
      write(address: number, data: Uint8Array): void {
        record(MMIO_WRITE, address, data.length, first(data));
        bus.write(address, data);
      },
    });
  }

  dump(): string {
    const n = Math.min(this.total, this.capacity);
    const start = this.total > this.capacity ? this.next : 0;
    const lines = [`partita: the last ${n} of ${this.total} exits:`];
    for (let k = 0; k < n; k++) {
      const i = (start + k) % this.capacity;
      const arrow = this.kind[i] === PIO_IN || this.kind[i] === MMIO_READ ? '->' : '<-';
      lines.push(
        `  ${KIND_NAMES[this.kind[i]]} 0x${this.address[i].toString(16)}/${this.size[i]} ${arrow} 0x${this.value[i].toString(16)}`,
      );
    }
    return lines.join('\n');
  }
}
