// Where the daemon keeps things (docs/api.md): the VM library under $XDG_DATA_HOME/partita, the API socket under
// $XDG_RUNTIME_DIR/partita (else in the data directory).
import { homedir } from 'node:os';
import { join } from 'node:path';

export function defaultDataDir(env: NodeJS.ProcessEnv = process.env): string {
  const base = env.XDG_DATA_HOME || join(homedir(), '.local', 'share');
  return join(base, 'partita');
}

/** The API socket: per-user runtime dir when there is one (a tmpfs that goes with the session). */
export function defaultSocketPath(env: NodeJS.ProcessEnv = process.env): string {
  if (env.XDG_RUNTIME_DIR) return join(env.XDG_RUNTIME_DIR, 'partita', 'partita.sock');
  return join(defaultDataDir(env), 'partita.sock');
}

/** sun_path is 108 bytes including the NUL: a longer socket path cannot be bound. */
export const MAX_SOCKET_PATH = 107;
