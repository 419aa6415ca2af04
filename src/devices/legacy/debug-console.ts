// QEMU's isa-debugcon (hw/char/debugcon.c): a byte written to the port is output at once, a read returns the
// "readback" value 0xE9 so firmware can tell the port is there. SeaBIOS writes its log to port 0x402 when it
// reads 0xE9 back (SeaBIOS src/output.c, CONFIG_DEBUG_IO); Bochs and some OVMF builds use port 0xE9.
//
// Output goes to a file (`path`), opened by the rules of every guest-output file (src/host/output-file.ts):
// appended to, never truncated, never a disk image of this VM or one a running VM holds, locked while open. The
// fd is opened once on the builder thread; any thread that takes the port exit writes to it (O_APPEND makes each
// write land at the end whichever thread makes it).
import { closeSync, fstatSync, statSync, writeSync } from 'node:fs';
import { Type } from '@sinclair/typebox';
import { openOutputFile, OutputFileError } from '../../host/output-file.js';
import type { PortIoDevice } from '../bus.js';
import { DeviceOpenError, statelessDevice, type DeviceModel, type DeviceOptions } from '../model.js';

/** SeaBIOS's debug port on QEMU (CONFIG_DEBUG_IO_PORT); QEMU's own default iobase is 0xE9. */
export const DEBUG_CONSOLE_DEFAULT_PORT = 0x402;
/** What a read of the port returns (QEMU's default `readback`). */
export const DEBUG_CONSOLE_READBACK = 0xe9;

export interface DebugConsoleState {
  readonly port: number;
  readonly path: string;
  /** The output file, or -1 once closed. */
  readonly fd: number;
}

/** Opens the debug console's output file; problems the user can fix become DeviceOpenError. */
export function openDebugConsole(options: DeviceOptions, diskImages: readonly string[]): DebugConsoleState {
  const path = options.path;
  if (typeof path !== 'string' || path === '') throw new DeviceOpenError('debug-console: no output file given');
  const port = typeof options.port === 'number' ? options.port : DEBUG_CONSOLE_DEFAULT_PORT;
  try {
    // open(2) of a FIFO would wait for a reader: only files and terminals are outputs here.
    if (statSync(path).isFIFO()) throw new DeviceOpenError(`debug-console: ${path} is a FIFO, not a file`);
  } catch (e) {
    if (e instanceof DeviceOpenError) throw e; // a missing file is created below; other problems show there
  }
  let fd: number;
  try {
    fd = openOutputFile(path, { disks: diskImages });
  } catch (e) {
    if (e instanceof OutputFileError) throw new DeviceOpenError(`debug-console: ${e.message}`);
    const code = (e as { code?: unknown } | null)?.code;
    throw new DeviceOpenError(
      `debug-console: cannot open ${path}: ${typeof code === 'string' ? code : e instanceof Error ? e.message : String(e)}`,
    );
  }
  const opened = fstatSync(fd);
  if (!opened.isFile() && !opened.isCharacterDevice()) {
    closeSync(fd);
    throw new DeviceOpenError(`debug-console: ${path} is neither a regular file nor a terminal`);
  }
  return { port, path, fd };
}

export class DebugConsole implements PortIoDevice {
  readonly name = 'debug-console';
  private failed = false;
  private readonly byte = new Uint8Array(1);

  constructor(
    private readonly fd: number,
    /** Told once when the output cannot be written (disk full, …); later bytes are dropped. */
    private readonly onError: (message: string) => void = () => undefined,
  ) {}

  pioRead(): number {
    return DEBUG_CONSOLE_READBACK;
  }

  pioWrite(_offset: number, _size: number, value: number): void {
    // Only the low byte is output, as QEMU's debugcon does for wider accesses.
    if (this.failed) return;
    this.byte[0] = value & 0xff;
    try {
      writeSync(this.fd, this.byte);
    } catch (e) {
      // The guest must never see a host problem as a fault: stop writing, say so once.
      this.failed = true;
      this.onError(`debug-console: output stopped: ${e instanceof Error ? e.message : String(e)}`);
    }
  }
}

export const debugConsoleModel: DeviceModel<DebugConsoleState> = {
  kind: 'debug-console',
  summary: "QEMU isa-debugcon (port 0x402 by default; reads 0xE9): firmware's log to a file",
  options: {
    path: Type.String({ minLength: 1 }),
    port: Type.Optional(Type.Integer({ minimum: 0, maximum: 0xffff })),
  },
  bus: 'platform',
  create: (options, ctx) => openDebugConsole(options, ctx.diskImages),
  attach(state, ctx) {
    const dev = new DebugConsole(state.fd, (message) => {
      try {
        writeSync(2, `partita: ${message}\n`);
      } catch {
        // stderr gone too: nothing left to tell
      }
    });
    ctx.pio.register(state.port, 1, dev);
    return statelessDevice(dev.name, 'debug-console');
  },
  close(state) {
    if (state.fd >= 0) closeSync(state.fd);
  },
};
