// The device set of a Partita VM, built identically on every thread that handles exits (the BSP's thread and
// the I/O thread that serves application processors). Device state lives in SharedArrayBuffers created once
// by the builder, so each thread's device objects are views of the same device.
import { writeSync } from 'node:fs';
import { MmioBus, PortIoBus } from '../devices/bus.js';
import { DEBUG_EXIT_PORT, DEBUG_EXIT_SIZE, DebugExit } from '../devices/legacy/debug-exit.js';
import { COM1, Uart16550 } from '../devices/legacy/uart-16550a.js';
import { Vm } from './vm.js';
import type { VmControl } from './control.js';

/** Serializable (postMessage-safe) shared state of all devices. */
export interface SharedDeviceState {
  readonly com1: SharedArrayBuffer;
}

export function createSharedDeviceState(): SharedDeviceState {
  return { com1: Uart16550.createState() };
}

export interface DeviceSet {
  readonly pio: PortIoBus;
  readonly mmio: MmioBus;
  readonly com1: Uart16550;
}

export interface DeviceHost {
  readonly vmFd: number;
  readonly control: VmControl;
  /** Where COM1's output goes (a file descriptor: the terminal or a log file). */
  readonly serialOutputFd: number;
}

/** Port 0x80 (POST codes) and 0xED: written by firmware and Linux as an I/O delay; accepted and ignored. */
const NOOP_PORTS = [0x80, 0xed];

export function buildDevices(state: SharedDeviceState, host: DeviceHost): DeviceSet {
  const pio = new PortIoBus();
  const mmio = new MmioBus();
  const com1 = new Uart16550(state.com1, {
    irq: Vm.irqLine(host.vmFd, COM1.irq),
    output: (bytes) => writeAll(host.serialOutputFd, bytes),
  });
  pio.register(COM1.base, 8, com1);
  pio.register(
    DEBUG_EXIT_PORT,
    DEBUG_EXIT_SIZE,
    new DebugExit((status, value) => {
      host.control.stop({ kind: 'guest-exit', status, message: `the guest wrote ${value} to the debug-exit port` });
    }),
  );
  const noop = { name: 'io-delay', pioRead: () => 0xff, pioWrite: () => undefined };
  for (const port of NOOP_PORTS) pio.register(port, 1, noop);
  return { pio, mmio, com1 };
}

function writeAll(fd: number, bytes: Uint8Array): void {
  let done = 0;
  while (done < bytes.length) {
    try {
      done += writeSync(fd, bytes, done, bytes.length - done);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EAGAIN') continue; // a non-blocking terminal that is momentarily full
      if (code === 'EPIPE') return; // nobody reads the serial output any more: drop it, keep the guest running
      throw e;
    }
  }
}
