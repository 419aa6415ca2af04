// System Control Port A at I/O port 0x92 (IBM PS/2 Model 50/60 Technical Reference; Intel 82371AB PIIX4
// datasheet §4.1.12 "PORT 92h"): bit 1 is the fast A20 gate, bit 0 a fast reset (a 0→1 transition resets the
// processor). QEMU's hw/i386/port92.c behaves the same way.
//
// KVM has no A20 mask (the guest always sees every address line), so the A20 bit is only recorded for the guest
// to read back; a rising edge on bit 0 asks the host for a platform reset. The byte lives in a SharedArrayBuffer
// so every exit-handling thread sees the same register.
import { device, eisaId, integer, ioPort, name, resourceTemplate } from '../../arch/x86_64/acpi/aml.js';
import type { PortIoDevice } from '../bus.js';
import {
  DeviceStateError,
  expectSnapshot,
  type AttachedDevice,
  type DeviceModel,
  type DeviceSnapshot,
} from '../model.js';

export const SYSTEM_CONTROL_A_PORT = 0x92;
export const PORT92_FAST_RESET = 0x01;
export const PORT92_A20 = 0x02;
/** Bits the guest can set and read back (QEMU keeps bits 1-7; bit 0 reads as written too, and self-clears on reset). */
const PORT92_WRITABLE = 0xff;

const SNAPSHOT_VERSION = 1;

export class SystemControlA implements PortIoDevice, AttachedDevice {
  readonly name = 'system-control-a';
  private readonly reg: Uint8Array;

  constructor(
    state: SharedArrayBuffer,
    private readonly onReset: (why: string) => void,
  ) {
    this.reg = new Uint8Array(state, 0, 1);
  }

  static createState(): SharedArrayBuffer {
    return new SharedArrayBuffer(4);
  }

  /** Fast A20 as the guest last set it. */
  get a20(): boolean {
    return (Atomics.load(this.reg, 0) & PORT92_A20) !== 0;
  }

  pioRead(): number {
    return Atomics.load(this.reg, 0);
  }

  pioWrite(_offset: number, _size: number, value: number): void {
    const next = value & PORT92_WRITABLE;
    const old = Atomics.exchange(this.reg, 0, next);
    if (!(old & PORT92_FAST_RESET) && next & PORT92_FAST_RESET) {
      // The reset is a pulse: after it, the bit reads 0 again, so the next rising edge resets once more.
      Atomics.and(this.reg, 0, ~PORT92_FAST_RESET);
      this.onReset('port 0x92');
    }
  }

  /** Platform reset: the register's power-on value. */
  reset(): void {
    Atomics.store(this.reg, 0, 0);
  }

  saveState(): DeviceSnapshot {
    return { kind: 'system-control-a', version: SNAPSHOT_VERSION, data: { value: Atomics.load(this.reg, 0) } };
  }

  restoreState(snapshot: DeviceSnapshot): void {
    expectSnapshot(this.name, snapshot, 'system-control-a', SNAPSHOT_VERSION);
    const value = snapshot.data.value;
    if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > 0xff)
      throw new DeviceStateError(this.name, `has port 0x92 value ${JSON.stringify(value)}, not a byte`);
    Atomics.store(this.reg, 0, value & ~PORT92_FAST_RESET);
  }
}

export const systemControlAModel: DeviceModel<SharedArrayBuffer> = {
  kind: 'system-control-a',
  summary: 'System Control Port A at 0x92: fast A20 (recorded) and fast reset',
  options: {},
  bus: 'platform',
  create: () => SystemControlA.createState(),
  describe: () => ({
    // A motherboard resource (PNP0C02) so the OS knows the port is taken, as QEMU's DSDT does for 0x92.
    acpi: [
      device(
        'PX92',
        name('_HID', eisaId('PNP0C02')),
        name('_UID', integer(0x92)),
        name('_CRS', resourceTemplate(ioPort(SYSTEM_CONTROL_A_PORT, SYSTEM_CONTROL_A_PORT, 0x01, 1))),
      ),
    ],
  }),
  attach(state, ctx) {
    const dev = new SystemControlA(state, (why) => ctx.host.reset(why));
    ctx.pio.register(SYSTEM_CONTROL_A_PORT, 1, dev);
    return dev;
  },
};
