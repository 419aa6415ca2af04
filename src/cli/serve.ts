// `partita serve`: runs the daemon in the foreground until SIGINT/SIGTERM. VMs keep running when it ends (each
// is its own process group); the next `partita serve` reattaches to them.
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { defaultDataDir, defaultSocketPath } from '../daemon/paths.js';
import { DaemonStartError, startDaemon } from '../daemon/daemon.js';
import { VerbError } from './verbs.js';

const USAGE = `Usage: partita serve [--data DIR] [--socket PATH] [--listen 127.0.0.1:PORT]

Runs the Partita daemon: the VM library in DIR (default $XDG_DATA_HOME/partita), its REST + WebSocket API
(docs/api.md) on the UNIX socket PATH (default $XDG_RUNTIME_DIR/partita/partita.sock, mode 0600) and, with
--listen, on loopback TCP, where requests need the bearer token in DIR/token; the web UI is served there.
VMs keep running when the daemon stops; the next 'partita serve' takes them back.`;

/** The checkout (or installed package) root: where bin/partita.js is. */
function packageRoot(): string | undefined {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'bin', 'partita.js'))) return dir;
    const up = dirname(dir);
    if (up === dir) return undefined;
    dir = up;
  }
}

export async function serveCommand(args: string[], version: string): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      options: {
        data: { type: 'string' },
        socket: { type: 'string' },
        listen: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (e) {
    throw new VerbError((e as Error).message.split('\n')[0], 2);
  }
  if (values.help) {
    process.stdout.write(USAGE + '\n');
    return 0;
  }
  const root = packageRoot();
  const dataDir = resolve(values.data ?? defaultDataDir());
  let daemon;
  try {
    daemon = await startDaemon({
      dataDir,
      socketPath: resolve(values.socket ?? (values.data ? join(dataDir, 'partita.sock') : defaultSocketPath())),
      listen: values.listen,
      version,
      uiDir: root ? join(root, 'dist', 'ui') : undefined,
    });
  } catch (e) {
    if (e instanceof DaemonStartError) throw new VerbError(e.message, 2);
    throw e;
  }
  const say = (line: string): boolean => process.stderr.write(`partita serve: ${line}\n`);
  say(`library ${dataDir}`);
  say(`API on unix:${daemon.socketPath}`);
  for (const name of daemon.reattached) say(`reattached to the running VM '${name}'`);
  for (const { name, why } of daemon.refused) say(`'${name}': not reattached: ${why}`);
  if (daemon.tcp) {
    const host = daemon.tcp.host.includes(':') ? `[${daemon.tcp.host}]` : daemon.tcp.host;
    // The token travels in the fragment: it never reaches a server log or a Referer header.
    say(`web UI: http://${host}:${daemon.tcp.port}/#token=${daemon.token}`);
  }
  return new Promise<number>((done) => {
    const stop = (signal: string): void => {
      say(`${signal}: stopping (VMs keep running)`);
      void daemon.close().then(() => done(0));
    };
    process.once('SIGINT', () => stop('SIGINT'));
    process.once('SIGTERM', () => stop('SIGTERM'));
  });
}
