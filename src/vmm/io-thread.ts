// The I/O thread of a VM (a worker_thread): reads the host terminal into the UART and serves the application
// processors. Each AP runs KVM_RUN on a native thread of its own; when it exits, the native thread hands the
// exit to this thread (a thread-safe function call), which handles it on its own view of the shared devices
// and lets the AP continue. The BSP never waits for this thread.
import { createReadStream, fstatSync, writeSync } from 'node:fs';
import { Socket } from 'node:net';
import { ReadStream as TtyReadStream } from 'node:tty';
import { isMainThread, parentPort } from 'node:worker_threads';
import type { Readable } from 'node:stream';
import { native } from '../native/index.js';
import { VmControl } from './control.js';
import { screenshotPng, stdVgaDisplay } from '../devices/display/vga-renderer.js';
import { i8042InputSink } from '../devices/legacy/i8042.js';
import { virtioInputOf } from '../devices/virtio/input.js';
import { routedInputSink } from './input-routing.js';
import { startRfbServer } from '../display/rfb/server.js';
import { attachDevices, serveDevices, type SharedDeviceState } from './device-set.js';
import { GuestMemory, type MemoryRegionDescriptor } from '../base/guest-memory.js';
import { CoalescedMmioRing } from './coalesced-mmio.js';
import { Vcpu, type VcpuExitContext } from './vcpu.js';
import { ConsoleEscape, ESCAPE_HELP } from './console-escape.js';
import type { Uart16550 } from '../devices/legacy/uart-16550a.js';
import type { AttachedDevice } from '../devices/model.js';
import { EventFdDispatcher } from '../devices/virtio/runner.js';
import { serveControl, setScreenshotHook, setScreenTextHook } from './control-server.js';
import { serveSerialSocket, type SerialSocketOptions } from './serial-socket.js';

export interface IoThreadData {
  readonly control: SharedArrayBuffer;
  readonly devices: SharedDeviceState;
  readonly vmFd: number;
  readonly memory: readonly MemoryRegionDescriptor[];
  readonly mmapSize: number;
  readonly aps: readonly { readonly id: number; readonly fd: number }[];
  /** KVM's coalesced MMIO ring (machine.ts coalescedRing): its page in a vCPU mapping and the drain lock. */
  readonly coalesced?: { readonly pageOffset: number; readonly lock: SharedArrayBuffer };
  readonly serialOutputFd: number;
  readonly serialInput: 'tty' | 'stream' | 'none';
  /** `--control PATH`: the control channel's socket (control-server.ts). */
  readonly controlSocket?: string;
  /** `--serial unix:PATH`: the serial console on a socket, following the log the UART writes. */
  readonly serialSocket?: SerialSocketOptions;
  readonly vncSocket?: string;
}

function startApplicationProcessors(data: IoThreadData, baseCtx: VcpuExitContext): void {
  let ctx = baseCtx;
  for (const ap of data.aps) {
    const vcpu = Vcpu.attach(ap.id, ap.fd, data.mmapSize);
    // The ring page is the VM's, seen through any vCPU's mapping: this thread's view comes with its first AP.
    if (data.coalesced && !ctx.coalesced) {
      const page = new DataView(vcpu.run.buffer, vcpu.run.byteOffset + data.coalesced.pageOffset * 4096, 4096);
      ctx = { ...ctx, coalesced: new CoalescedMmioRing(page, data.coalesced.lock) };
    }
    const apCtx = ctx;
    let handle = 0n;
    const onExit = (_id: number, result: number): void => {
      const stop = result !== 0 ? vcpu.handleRunError(result, apCtx) : vcpu.handleExit(apCtx);
      if (stop || apCtx.control.stopping) {
        native.completeVcpuExit(handle, false);
        return;
      }
      if (apCtx.control.paused) {
        void apCtx.control.whenResumed().then(() => native.completeVcpuExit(handle, !apCtx.control.stopping));
        return;
      }
      native.completeVcpuExit(handle, true);
    };
    const started = native.startVcpuThread(ap.fd, ap.id, onExit, vcpu.immediateExitAddress);
    if (typeof started === 'number') {
      apCtx.control.fault(`cannot start the thread of vCPU ${ap.id}: errno ${-started}`, 3);
      return;
    }
    handle = started.handle;
    apCtx.control.addKickTarget(started.thread, vcpu.immediateExitAddress);
  }
}

/** Feeds host input into the UART, waiting for FIFO space instead of dropping bytes. */
function feedSerialInput(input: Readable, uart: Uart16550, control: VmControl, interactive: boolean): void {
  const escape = interactive ? new ConsoleEscape() : undefined;
  const pending: Uint8Array[] = [];
  let pumping = false;

  const pump = async (): Promise<void> => {
    if (pumping) return;
    pumping = true;
    try {
      while (pending.length && !control.stopping) {
        const chunk = pending[0];
        const seen = Atomics.load(uart.rxSpace, 0);
        const taken = uart.receive(chunk);
        if (taken === chunk.length) pending.shift();
        else pending[0] = chunk.subarray(taken);
        if (taken === 0) {
          // FIFO full: wait until the guest reads a byte (the UART bumps rxSpace), or recheck after a while.
          const w = Atomics.waitAsync(uart.rxSpace, 0, seen, 200);
          if (w.async) await w.value;
        }
      }
      if (pending.length === 0) input.resume();
    } finally {
      pumping = false;
    }
  };

  input.on('data', (data: Buffer) => {
    let bytes: Uint8Array = data;
    if (escape) {
      const { forward, commands } = escape.feed(data);
      bytes = forward;
      for (const command of commands) {
        if (command === 'quit')
          control.stop({ kind: 'user-quit', status: 0, message: 'quit from the console (Ctrl-A x)' });
        else if (command === 'help') writeSync(2, `\r\n${ESCAPE_HELP.replace(/\n/g, '\r\n')}\r\n`);
        else if (command === 'break') uart.sendBreak();
      }
    }
    if (bytes.length === 0) return;
    pending.push(bytes);
    if (pending.length > 64) input.pause(); // back-pressure: stop reading the terminal until the guest catches up
    void pump();
  });
  // A worker's process.stderr is relayed through the main thread, which is busy running vCPU 0: write fd 2.
  input.on('error', (e: Error) => writeSync(2, `partita: serial input: ${e.message}\n`));
}

/** PARTITA_TRACE=1: the I/O thread's start-up phases on fd 2, as machine.ts traces the builder's. */
const tracing = process.env.PARTITA_TRACE === '1';
function trace(phase: string): void {
  if (tracing) writeSync(2, `partita: ${performance.now().toFixed(1)} ms I/O thread: ${phase}\n`);
}

function main(data: IoThreadData): void {
  trace('VM received');
  const control = new VmControl(data.control);
  const host = {
    vmFd: data.vmFd,
    serialOutputFd: data.serialOutputFd,
    stop: (reason: { kind: 'guest-exit'; status: number; message: string }) => control.stop(reason),
    reset: (why: string) => control.stop({ kind: 'reset', status: 0, message: `the guest reset the machine (${why})` }),
  };
  const memory = GuestMemory.attach(data.memory);
  const devices = attachDevices(data.devices, host, memory);
  startDeviceHostSides(devices, memory);
  trace('device host sides started');
  startApplicationProcessors(data, { pio: devices.pio, mmio: devices.mmio, control, memory });
  const uart = devices.find<Uart16550 & AttachedDevice>('uart-16550a');
  if (data.serialInput !== 'none' && uart) {
    feedSerialInput(openInput(data.serialInput), uart, control, data.serialInput === 'tty');
  }
  if (data.serialSocket) {
    const hub = serveSerialSocket(data.serialSocket.path, data.serialSocket.logPath, data.serialSocket.logStart);
    if (uart) feedSerialInput(hub.input, uart, control, false);
  }
  // The control channel's screenshot (the std VGA's screen as a PNG) and screen text.
  const vga = devices.find('std-vga');
  const display = stdVgaDisplay(vga);
  if (display) {
    setScreenshotHook(() => screenshotPng(vga));
    setScreenTextHook(() => display.screenText());
  }
  // The screen over RFB: this thread's renderer is the one consumer of the framebuffer's dirty log.
  // Keys and pointer: the PS/2 controller, and the virtio tablet and keyboard once the guest's driver runs them.
  const input = routedInputSink(
    i8042InputSink(devices.find('i8042')),
    virtioInputOf(devices.find('virtio-tablet')),
    virtioInputOf(devices.find('virtio-keyboard')),
  );
  trace(`display ${display ? 'yes' : 'no'}, input ${input ? 'yes' : 'no'}, RFB ${data.vncSocket ?? 'off'}`);
  if (data.vncSocket && display && input)
    void startRfbServer({
      source: display,
      input,
      name: 'Partita',
      listen: { unix: data.vncSocket },
      log: (line) => void writeSync(2, `partita: rfb: ${line}\n`),
    }).then(
      () => trace('RFB listening'),
      (e: Error) => writeSync(2, `partita: rfb: cannot listen on ${data.vncSocket}: ${e.message}\n`),
    );
  // Last: once the control channel answers, the VM is up (the daemon's 'starting' ends there).
  if (data.controlSocket) serveControl(data.controlSocket, control);
}

/** Devices' host sides (virtio backends) run here, woken by their eventfds through one epoll watcher. */
function startDeviceHostSides(devices: ReturnType<typeof attachDevices>, memory: GuestMemory): void {
  let dispatcher: EventFdDispatcher | undefined;
  const log = (message: string): void => void writeSync(2, `partita: ${message}\n`);
  serveDevices(devices, {
    memory,
    log,
    onEventFd(fd, handler) {
      if (!dispatcher) {
        dispatcher = new EventFdDispatcher();
        // The watcher does not keep an event loop alive by itself (tests use it on their main thread), but this
        // thread must live as long as the VM: it ends when the builder terminates it.
        setInterval(() => undefined, 2 ** 30);
      }
      dispatcher.on(fd, handler);
    },
  });
}

/** stdin as an event-driven stream: a terminal, a pipe or socket (libuv handles), or a file (threadpool reads). */
function openInput(mode: 'tty' | 'stream'): Readable {
  if (mode === 'tty') return new TtyReadStream(0);
  const st = fstatSync(0);
  if (st.isFIFO() || st.isSocket()) return new Socket({ fd: 0, readable: true, writable: false });
  return createReadStream('', { fd: 0, autoClose: false });
}

/**
 * An error on this thread would otherwise go to the main thread's 'error' event, which never runs while vCPU 0
 * holds the main thread: report it on fd 2 and stop the VM instead of leaving it without its devices.
 */
function fatal(control: VmControl | undefined, e: unknown): void {
  const text = e instanceof Error ? (e.stack ?? e.message) : String(e);
  writeSync(2, `partita: I/O thread error: ${text}\n`);
  control?.fault(`the I/O thread failed: ${e instanceof Error ? e.message : String(e)}`, 3, 'error');
}

// The VM arrives as one message once it is built (the worker starts while the builder runs).
if (!isMainThread && parentPort) {
  let control: VmControl | undefined;
  process.on('uncaughtException', (e) => fatal(control, e));
  parentPort.once('message', (data: IoThreadData) => {
    control = new VmControl(data.control);
    try {
      main(data);
    } catch (e) {
      fatal(control, e);
    }
  });
}
