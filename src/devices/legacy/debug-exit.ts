// Test exit device with the semantics of QEMU's isa-debug-exit (hw/misc/debugexit.c): a write of v to the port
// makes the VMM exit with status (v << 1) | 1. Reads return 0. Lets test guests report a result.
import type { PortIoDevice } from '../bus.js';
import { statelessDevice, type DeviceModel } from '../model.js';

export const DEBUG_EXIT_PORT = 0xf4;
export const DEBUG_EXIT_SIZE = 4;

export class DebugExit implements PortIoDevice {
  readonly name = 'isa-debug-exit';
  constructor(private readonly onExit: (status: number, value: number) => void) {}

  pioRead(): number {
    return 0;
  }

  pioWrite(_offset: number, size: number, value: number): void {
    const v = size === 4 ? value >>> 0 : value & ((1 << (size * 8)) - 1);
    // The status is what the process exit code carries: only its low 8 bits survive exit(), as with QEMU.
    this.onExit(((v << 1) | 1) & 0xff, v);
  }
}

export const debugExitModel: DeviceModel<null> = {
  kind: 'isa-debug-exit',
  summary: 'isa-debug-exit at port 0xF4: a guest write of v ends the VM with status (v << 1) | 1',
  options: {},
  bus: 'platform',
  create: () => null,
  attach(_state, ctx) {
    const dev = new DebugExit((status, value) =>
      ctx.host.stop({ kind: 'guest-exit', status, message: `the guest wrote ${value} to the debug-exit port` }),
    );
    ctx.pio.register(DEBUG_EXIT_PORT, DEBUG_EXIT_SIZE, dev);
    return statelessDevice(dev.name, 'isa-debug-exit');
  },
};
