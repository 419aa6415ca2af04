// The serial console on a UNIX socket (`partita run --serial unix:PATH --serial-log LOG`), served by the I/O
// thread, so a console outlives whoever watches it (the daemon may restart; clients come and go). The UART
// writes guest output into the log file synchronously on whichever thread took the exit; this hub follows the
// log and broadcasts what was appended to every client, and feeds what any client types to the UART. A client
// that connects first gets the recent output of this run (up to REPLAY_BYTES), then everything that follows.
import { closeSync, fstatSync, openSync, readSync, rmSync, watch, chmodSync, type FSWatcher } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { PassThrough } from 'node:stream';

/** Output of this run a new client sees first: enough for a screenful of boot messages. */
export const REPLAY_BYTES = 64 * 1024;
/** A client that does not read keeps at most this much queued; then it is dropped (the log keeps everything). */
const MAX_CLIENT_BACKLOG = 4 * 1024 * 1024;
/** Polling backs up the file watch (inotify may miss writes on some file systems). */
const POLL_MS = 200;

export interface SerialSocketOptions {
  readonly path: string;
  /** The file the UART appends to (the run's serialOutputFd), which the socket follows. */
  readonly logPath: string;
  /** The log's size when this run opened it: what a new client is replayed starts there. */
  readonly logStart: number;
}

export interface SerialSocketHub {
  /** Keyboard input from every client, for feedSerialInput. */
  readonly input: PassThrough;
  readonly server: Server;
  /** Sends what the log gained since the last look (also runs on a watch event and a timer). */
  flush(): void;
  close(): void;
}

/**
 * Serves `socketPath`; `logPath` is the file the UART appends to, `logStart` its size when this run opened it
 * (output before that belongs to earlier runs).
 */
export function serveSerialSocket(socketPath: string, logPath: string, logStart: number): SerialSocketHub {
  const input = new PassThrough();
  const clients = new Set<Socket>();
  const logFd = openSync(logPath, 'r');
  let offset = Math.max(0, Math.min(logStart, fstatSync(logFd).size));
  const runStart = offset;

  const readRange = (from: number, to: number): Buffer => {
    const bytes = Buffer.alloc(to - from);
    let done = 0;
    while (done < bytes.length) {
      const n = readSync(logFd, bytes, done, bytes.length - done, from + done);
      if (n === 0) break;
      done += n;
    }
    return bytes.subarray(0, done);
  };

  const send = (client: Socket, bytes: Buffer): void => {
    if (client.destroyed) return;
    if (client.writableLength > MAX_CLIENT_BACKLOG) {
      client.destroy();
      clients.delete(client);
      return;
    }
    client.write(bytes);
  };

  const flush = (): void => {
    let size: number;
    try {
      size = fstatSync(logFd).size;
    } catch {
      return;
    }
    if (size < offset) offset = size; // truncated by someone: follow from its new end
    while (offset < size) {
      const chunk = readRange(offset, Math.min(size, offset + 65536));
      if (chunk.length === 0) break;
      offset += chunk.length;
      for (const c of clients) send(c, chunk);
    }
  };

  rmSync(socketPath, { force: true });
  const server = createServer((client) => {
    flush();
    const from = Math.max(runStart, offset - REPLAY_BYTES);
    if (offset > from) send(client, readRange(from, offset));
    clients.add(client);
    client.on('data', (bytes: Buffer) => input.write(bytes));
    client.on('error', () => client.destroy());
    client.on('close', () => clients.delete(client));
  });
  server.listen(socketPath, () => chmodSync(socketPath, 0o600));

  let watcher: FSWatcher | undefined;
  try {
    watcher = watch(logPath, { persistent: false }, () => flush());
  } catch {
    // polling alone
  }
  const timer = setInterval(flush, POLL_MS);

  return {
    input,
    server,
    flush,
    close() {
      clearInterval(timer);
      watcher?.close();
      server.close();
      for (const c of clients) c.destroy();
      closeSync(logFd);
    },
  };
}
