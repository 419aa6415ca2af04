// Finding host programs Partita runs (apt-get for the demo image, passt for user-mode networking) on PATH.
import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';

/** The full path of executable `name` in PATH (then in `alsoIn`), or undefined. */
export function findExecutable(name: string, alsoIn: readonly string[] = []): string | undefined {
  const dirs = (process.env.PATH ?? '/usr/bin:/bin').split(delimiter).filter(Boolean);
  for (const dir of [...dirs, ...alsoIn]) {
    const candidate = join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}
