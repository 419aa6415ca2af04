// Ports 0x80 (POST codes) and 0xED: written by firmware and Linux as an I/O delay (Linux io_delay_type);
// accepted and ignored, reads float high as on an ISA bus with nothing behind the port.
import { statelessDevice, type DeviceModel } from '../model.js';

export const IO_DELAY_PORTS = [0x80, 0xed] as const;

export const ioDelayModel: DeviceModel<null> = {
  kind: 'io-delay',
  summary: 'ports 0x80 and 0xED: I/O delay writes, ignored',
  options: {},
  bus: 'platform',
  create: () => null,
  attach(_state, ctx) {
    const port = { name: 'io-delay', pioRead: () => 0xff, pioWrite: () => undefined };
    for (const p of IO_DELAY_PORTS) ctx.pio.register(p, 1, port);
    return statelessDevice('io-delay', 'io-delay');
  },
};
