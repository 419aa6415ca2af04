// Files that receive guest output: `--serial file:PATH` and `--console PATH`. Such a path may name something
// precious, above all a disk image, so opening one never truncates and never touches a disk:
// - the file is opened for appending (as QEMU's `-serial file:` does): earlier contents stay, output follows;
// - a disk image of this VM (same device and inode as a --disk path) is refused;
// - a file locked by a running VM is refused: disk images are flock(2)ed by openBlock (block.ts), so a
//   non-blocking LOCK_EX attempt fails on any image a VM holds, read-write or read-only. The lock taken here is
//   kept while the output is open, so no VM can take the file as its disk meanwhile either.
// Errors are OutputFileError (a check refused the path) or the fs error of open(2); both leave the file as it was.
import { closeSync, constants, fstatSync, statSync, openSync, type Stats } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { native } from '../native/index.js';

const LOCK_EX = 2;
const LOCK_NB = 4;
const EWOULDBLOCK = osConstants.errno.EWOULDBLOCK;

/** A path refused as an output: the message is one line, without the option's name. */
export class OutputFileError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'OutputFileError';
  }
}

export interface OutputFileOptions {
  /** This VM's disk image paths (--disk): output must never go into one of them. */
  readonly disks: readonly string[];
  /** More open(2) flags, e.g. O_NONBLOCK. */
  readonly flags?: number;
}

/** Opens (creating it if needed) `path` for appending guest output; returns the fd. */
export function openOutputFile(path: string, options: OutputFileOptions): number {
  if (path.includes('\0')) throw new OutputFileError(`the path ${JSON.stringify(path)} contains a NUL byte`);
  // No O_TRUNC, ever: the checks below run on the opened file (no race with a rename in between), and an
  // open without O_TRUNC leaves the file's bytes alone whatever the checks decide.
  const flags = constants.O_WRONLY | constants.O_CREAT | constants.O_APPEND | (options.flags ?? 0);
  const fd = openSync(path, flags, 0o644);
  try {
    const st = fstatSync(fd);
    if (st.isFile() || st.isBlockDevice()) {
      const disk = options.disks.find((d) => sameFile(st, d));
      if (disk !== undefined) {
        const which = disk === path ? 'a disk image of this VM' : `the disk image '${disk}' of this VM`;
        throw new OutputFileError(`'${path}' is ${which}: guest output must not go into it`);
      }
      if (native.flock(fd, LOCK_EX | LOCK_NB) === -EWOULDBLOCK) {
        throw new OutputFileError(
          `'${path}' is locked by a running VM (as a disk image or an output file): guest output must not go into it`,
        );
      }
      // Any other flock result (a file system without locks) leaves the file unlocked: appending is still safe.
    }
    return fd;
  } catch (e) {
    closeSync(fd);
    throw e;
  }
}

function sameFile(st: Stats, path: string): boolean {
  let other: Stats;
  try {
    other = statSync(path);
  } catch {
    return false; // the disk's own open names that problem
  }
  if (st.isBlockDevice() && other.isBlockDevice()) return st.rdev === other.rdev;
  return st.dev === other.dev && st.ino === other.ino;
}
