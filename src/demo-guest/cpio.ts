// cpio "newc" archives (the SVR4 portable format without checksums, magic 070701), the format of a Linux
// initramfs (Documentation/driver-api/early-userspace/buffer-format.rst): each member is a 110-byte ASCII
// header of thirteen 8-digit hex fields, the NUL-terminated name padded so header + name is a multiple of 4,
// then the data padded to 4; the archive ends with the member "TRAILER!!!".

export const CPIO_NEWC_MAGIC = '070701';
const HEADER_SIZE = 110;

export const S_IFMT = 0o170000;
export const S_IFDIR = 0o040000;
export const S_IFREG = 0o100000;
export const S_IFLNK = 0o120000;
export const S_IFCHR = 0o020000;
export const S_IFBLK = 0o060000;

interface CommonEntry {
  /** Path inside the archive; a leading "/" is dropped ("bin/sh"). */
  readonly path: string;
  /** Permission bits (0o755 …); the file-type bits are derived from the kind of entry. */
  readonly mode?: number;
  readonly uid?: number;
  readonly gid?: number;
  /** Seconds since the epoch; 0 by default, for reproducible archives. */
  readonly mtime?: number;
}
export interface CpioFile extends CommonEntry {
  readonly data: Uint8Array | string;
}
export interface CpioSymlink extends CommonEntry {
  readonly symlink: string;
}
export interface CpioDirectory extends CommonEntry {
  readonly directory: true;
}
export interface CpioDevice extends CommonEntry {
  readonly device: { readonly type: 'char' | 'block'; readonly major: number; readonly minor: number };
}
export type CpioEntry = CpioFile | CpioSymlink | CpioDirectory | CpioDevice;

export interface CpioOptions {
  /** Adds a directory entry (mode 0755) for every parent not listed before its first child. */
  readonly createParents?: boolean;
}

function normalize(path: string): string {
  const p = path
    .replace(/^\/+/, '')
    .replace(/\/+$/, '')
    .replace(/\/{2,}/g, '/');
  if (p === '' || p.split('/').some((c) => c === '..' || c === '.')) throw new Error(`cpio: bad member path "${path}"`);
  return p;
}

function field(value: number, what: string, path: string): string {
  if (!Number.isSafeInteger(value) || value < 0 || value > 0xffffffff)
    throw new Error(`cpio: ${what} ${value} of "${path}" does not fit in 32 bits`);
  return value.toString(16).padStart(8, '0');
}

const pad4 = (n: number): number => (4 - (n % 4)) % 4;

interface Member {
  name: string;
  mode: number;
  uid: number;
  gid: number;
  nlink: number;
  mtime: number;
  data: Uint8Array;
  rdevmajor: number;
  rdevminor: number;
}

function member(e: CpioEntry, name: string): Member {
  const kinds = ['data', 'symlink', 'directory', 'device'].filter((k) => k in e);
  if (kinds.length !== 1)
    throw new Error(
      `cpio: member "${e.path}" must have exactly one of data, symlink, directory, device (has ${kinds.join(', ') || 'none'})`,
    );
  const base = { name, uid: e.uid ?? 0, gid: e.gid ?? 0, mtime: e.mtime ?? 0, rdevmajor: 0, rdevminor: 0, nlink: 1 };
  const perm = (fallback: number): number => {
    const m = e.mode ?? fallback;
    if ((m & ~0o7777) !== 0)
      throw new Error(`cpio: mode 0o${m.toString(8)} of "${e.path}" has more than permission bits`);
    return m;
  };
  if ('data' in e) {
    const data = typeof e.data === 'string' ? new TextEncoder().encode(e.data) : e.data;
    return { ...base, mode: S_IFREG | perm(0o644), data };
  }
  if ('symlink' in e) {
    if (e.symlink === '') throw new Error(`cpio: symlink "${e.path}" has an empty target`);
    return { ...base, mode: S_IFLNK | perm(0o777), data: new TextEncoder().encode(e.symlink) };
  }
  if ('directory' in e) return { ...base, mode: S_IFDIR | perm(0o755), data: new Uint8Array(0), nlink: 2 };
  const d = e.device;
  return {
    ...base,
    mode: (d.type === 'char' ? S_IFCHR : S_IFBLK) | perm(0o600),
    data: new Uint8Array(0),
    rdevmajor: d.major,
    rdevminor: d.minor,
  };
}

function header(m: Member, ino: number): string {
  const f = (v: number, what: string): string => field(v, what, m.name);
  return (
    CPIO_NEWC_MAGIC +
    f(ino, 'inode') +
    f(m.mode, 'mode') +
    f(m.uid, 'uid') +
    f(m.gid, 'gid') +
    f(m.nlink, 'nlink') +
    f(m.mtime, 'mtime') +
    f(m.data.length, 'size') +
    f(0, 'devmajor') +
    f(0, 'devminor') +
    f(m.rdevmajor, 'rdevmajor') +
    f(m.rdevminor, 'rdevminor') +
    f(Buffer.byteLength(m.name) + 1, 'name size') +
    f(0, 'check')
  );
}

/** Writes a newc archive of `entries`, in order, followed by the trailer. Paths must be unique. */
export function writeCpio(entries: readonly CpioEntry[], options: CpioOptions = {}): Uint8Array {
  const members: Member[] = [];
  const seen = new Set<string>();
  for (const e of entries) {
    const name = normalize(e.path);
    if (options.createParents) {
      const parts = name.split('/');
      for (let i = 1; i < parts.length; i++) {
        const dir = parts.slice(0, i).join('/');
        if (!seen.has(dir)) {
          seen.add(dir);
          members.push(member({ path: dir, directory: true }, dir));
        }
      }
    }
    if (seen.has(name)) throw new Error(`cpio: "${name}" is in the archive twice`);
    seen.add(name);
    members.push(member(e, name));
  }
  members.push({
    name: 'TRAILER!!!',
    mode: 0,
    uid: 0,
    gid: 0,
    nlink: 1,
    mtime: 0,
    data: new Uint8Array(0),
    rdevmajor: 0,
    rdevminor: 0,
  });

  const chunks: Uint8Array[] = [];
  let total = 0;
  const push = (b: Uint8Array): void => {
    chunks.push(b);
    total += b.length;
  };
  members.forEach((m, i) => {
    const isTrailer = i === members.length - 1;
    const head = Buffer.from(header(m, isTrailer ? 0 : i + 1) + m.name + '\0', 'utf8');
    push(head);
    push(new Uint8Array(pad4(head.length)));
    if (m.data.length) {
      push(m.data);
      push(new Uint8Array(pad4(m.data.length)));
    }
  });
  const out = new Uint8Array(total);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

export interface CpioMember {
  readonly name: string;
  readonly mode: number;
  readonly uid: number;
  readonly gid: number;
  readonly nlink: number;
  readonly mtime: number;
  readonly ino: number;
  readonly rdevmajor: number;
  readonly rdevminor: number;
  readonly data: Uint8Array;
}

/** Reads a newc archive up to its trailer (no checksums, "070702" is refused); throws on malformed input. */
export function readCpio(archive: Uint8Array): CpioMember[] {
  const out: CpioMember[] = [];
  let at = 0;
  const text = (start: number, len: number): string =>
    Buffer.from(archive.subarray(start, start + len)).toString('latin1');
  for (;;) {
    if (at + HEADER_SIZE > archive.length) throw new Error(`cpio: truncated header at offset ${at}`);
    const magic = text(at, 6);
    if (magic !== CPIO_NEWC_MAGIC)
      throw new Error(`cpio: bad magic "${magic}" at offset ${at} (expected ${CPIO_NEWC_MAGIC})`);
    const f = (i: number): number => {
      const s = text(at + 6 + i * 8, 8);
      if (!/^[0-9a-fA-F]{8}$/.test(s)) throw new Error(`cpio: bad hex field "${s}" at offset ${at + 6 + i * 8}`);
      return parseInt(s, 16);
    };
    const [ino, mode, uid, gid, nlink, mtime, size, , , rdevmajor, rdevminor, namesize] = Array.from(
      { length: 13 },
      (_, i) => f(i),
    );
    const nameStart = at + HEADER_SIZE;
    if (namesize === 0 || nameStart + namesize > archive.length)
      throw new Error(`cpio: bad name size ${namesize} at offset ${at}`);
    if (archive[nameStart + namesize - 1] !== 0)
      throw new Error(`cpio: name at offset ${nameStart} is not NUL-terminated`);
    const name = Buffer.from(archive.subarray(nameStart, nameStart + namesize - 1)).toString('utf8');
    const dataStart = nameStart + namesize + pad4(HEADER_SIZE + namesize);
    if (dataStart + size > archive.length)
      throw new Error(`cpio: data of "${name}" (${size} bytes) runs past the end of the archive`);
    if (name === 'TRAILER!!!') return out;
    out.push({
      name,
      mode,
      uid,
      gid,
      nlink,
      mtime,
      ino,
      rdevmajor,
      rdevminor,
      data: archive.subarray(dataStart, dataStart + size),
    });
    at = dataStart + size + pad4(size);
  }
}
