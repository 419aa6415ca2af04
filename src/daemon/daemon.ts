// `partita serve`: the library, the supervisor (reattached to VMMs a previous daemon started), the API on the
// user's UNIX socket and, if asked, on loopback TCP with a bearer token.
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { dirname, join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { VmLibrary } from './library.js';
import { Supervisor, type SupervisorOptions } from './supervisor.js';
import { buildApi } from './server.js';
import { writeFileAtomic } from './atomic-file.js';
import { MAX_SOCKET_PATH } from './paths.js';

export interface DaemonOptions {
  readonly dataDir: string;
  readonly socketPath: string;
  /** "HOST:PORT" on a loopback address; port 0 picks a free one. */
  readonly listen?: string;
  readonly version: string;
  readonly uiDir?: string;
  readonly supervisor?: SupervisorOptions;
}

export interface Daemon {
  readonly supervisor: Supervisor;
  readonly socketPath: string;
  /** The TCP address actually bound (with the port chosen), when --listen was given. */
  readonly tcp?: { host: string; port: number };
  readonly token: string;
  readonly reattached: string[];
  readonly refused: { name: string; why: string }[];
  close(): Promise<void>;
}

export class DaemonStartError extends Error {}

/** <data>/token: created once (mode 0600), the same across restarts so a browser tab keeps working. */
export function daemonToken(dataDir: string): string {
  const path = join(dataDir, 'token');
  try {
    const token = readFileSync(path, 'utf8').trim();
    if (token.length >= 32) return token;
  } catch {
    // first start
  }
  const token = randomBytes(32).toString('base64url');
  writeFileAtomic(path, token + '\n', 0o600);
  return token;
}

export function parseListen(text: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(text);
  if (!m) throw new DaemonStartError(`--listen '${text}' is not HOST:PORT (e.g. 127.0.0.1:8006)`);
  const host = m[1] ?? m[2];
  const port = Number(m[3]);
  if (port > 65535) throw new DaemonStartError(`--listen: port ${port} is out of range`);
  if (!['127.0.0.1', 'localhost', '::1'].includes(host) && !host.startsWith('127.'))
    throw new DaemonStartError(`--listen: '${host}' is not a loopback address (the API controls your VMs)`);
  return { host, port };
}

/** Is something answering on this UNIX socket? (a second daemon must not steal the first one's socket) */
function socketAnswers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(path);
    s.on('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.on('error', () => resolve(false));
  });
}

export async function startDaemon(options: DaemonOptions): Promise<Daemon> {
  const library = new VmLibrary(options.dataDir).init();
  if (Buffer.byteLength(options.socketPath) > MAX_SOCKET_PATH)
    throw new DaemonStartError(`the socket path '${options.socketPath}' is too long for a UNIX socket`);
  mkdirSync(dirname(options.socketPath), { recursive: true, mode: 0o700 });
  if (existsSync(options.socketPath)) {
    if (await socketAnswers(options.socketPath))
      throw new DaemonStartError(`a daemon is already serving ${options.socketPath}`);
    rmSync(options.socketPath, { force: true }); // stale: its daemon is gone
  }
  const tcpAddress = options.listen !== undefined ? parseListen(options.listen) : undefined;
  const token = daemonToken(options.dataDir);

  const supervisor = new Supervisor(library, options.supervisor);
  const { reattached, refused } = await supervisor.reattach();
  supervisor.keepWarm();
  const apps: FastifyInstance[] = [];
  try {
    const local = await buildApi({ supervisor, version: options.version, uiDir: options.uiDir });
    apps.push(local);
    await local.listen({ path: options.socketPath });
    chmodSync(options.socketPath, 0o600);
    let tcp: { host: string; port: number } | undefined;
    if (tcpAddress) {
      const remote = await buildApi({ supervisor, version: options.version, uiDir: options.uiDir, token });
      apps.push(remote);
      await remote.listen({ host: tcpAddress.host, port: tcpAddress.port });
      const address = remote.server.address();
      tcp = { host: tcpAddress.host, port: typeof address === 'object' && address ? address.port : tcpAddress.port };
    }
    return {
      supervisor,
      socketPath: options.socketPath,
      tcp,
      token,
      reattached,
      refused,
      async close() {
        await supervisor.close();
        await Promise.all(apps.map((a) => a.close()));
        rmSync(options.socketPath, { force: true });
      },
    };
  } catch (e) {
    await supervisor.close();
    await Promise.all(apps.map((a) => a.close()));
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EADDRINUSE') throw new DaemonStartError(`--listen ${options.listen}: the address is in use`);
    throw e;
  }
}
