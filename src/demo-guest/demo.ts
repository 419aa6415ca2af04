// The demo Linux guest: Debian's cloud kernel (a bzImage) and an initramfs with a static busybox and the virtio
// modules the kernel does not have built in. Everything comes from Debian packages fetched with the ordinary
// apt-get (`apt-get download` needs no root) and unpacked with dpkg-deb; the initramfs is written by cpio.ts.
// The result is cached under $XDG_CACHE_HOME/partita/demo/<kernel version>/ (default ~/.cache/partita/demo).
import { execFile, spawn } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { findExecutable } from '../host/executables.js';
import { chmod, mkdir, mkdtemp, readFile, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { homedir, tmpdir } from 'node:os';
import { basename, join, relative } from 'node:path';
import { gunzipSync, gzipSync } from 'node:zlib';
import { writeCpio, type CpioEntry } from './cpio.js';

export const KERNEL_METAPACKAGE = 'linux-image-cloud-amd64';
export const BUSYBOX_PACKAGE = 'busybox-static';
/** Suggested kernel command line for the demo guest. */
export const DEMO_CMDLINE = 'console=ttyS0 panic=-1';

/** The virtio drivers the demo guest wants, with the Kconfig symbol that says whether each is =y or =m. */
export const DEMO_DRIVERS: readonly { readonly module: string; readonly config: string }[] = [
  { module: 'virtio_pci', config: 'CONFIG_VIRTIO_PCI' },
  { module: 'virtio_blk', config: 'CONFIG_VIRTIO_BLK' },
  { module: 'virtio_net', config: 'CONFIG_VIRTIO_NET' },
  { module: 'virtio_console', config: 'CONFIG_VIRTIO_CONSOLE' },
  { module: 'virtio_rng', config: 'CONFIG_HW_RANDOM_VIRTIO' },
];

export type DemoStage = 'resolve' | 'download' | 'extract' | 'initramfs' | 'done';

export interface DemoImageOptions {
  /** Where to cache; default $XDG_CACHE_HOME/partita/demo or ~/.cache/partita/demo. */
  readonly cacheDir?: string;
  /** Called with the current stage and the fraction (0..1) of that stage done. */
  readonly onProgress?: (stage: DemoStage, fraction: number) => void;
  /** Rebuild even when the cache has this kernel version. */
  readonly refresh?: boolean;
}

export interface DemoImage {
  /** The bzImage (vmlinuz). */
  readonly kernel: string;
  /** The gzip-compressed cpio initramfs. */
  readonly initramfs: string;
  /** e.g. "6.1.0-56-cloud-amd64" (`uname -r` in the guest). */
  readonly kernelVersion: string;
  /** The Debian package the kernel came from, with its version. */
  readonly kernelPackage: string;
  /** Modules in the initramfs, in load order (names as in lsmod). */
  readonly modules: readonly string[];
  /** Drivers the kernel has built in (=y), so nothing was shipped for them. */
  readonly builtin: readonly string[];
  readonly cmdline: string;
  /** True when nothing was downloaded because the cache had this version. */
  readonly fromCache: boolean;
}

export type DemoImageErrorReason = 'missing-tool' | 'no-package-lists' | 'unreachable' | 'failed';

export class DemoImageError extends Error {
  constructor(
    readonly reason: DemoImageErrorReason,
    message: string,
  ) {
    super(message);
    this.name = 'DemoImageError';
  }
}

export function defaultDemoCacheDir(): string {
  const xdg = process.env.XDG_CACHE_HOME;
  return join(xdg && xdg.startsWith('/') ? xdg : join(homedir(), '.cache'), 'partita', 'demo');
}

function requireTools(): void {
  const tools: [string, string][] = [
    ['apt-get', 'apt'],
    ['apt-cache', 'apt'],
    ['dpkg-deb', 'dpkg'],
  ];
  for (const [tool, pkg] of tools) {
    if (!findExecutable(tool)) {
      throw new DemoImageError(
        'missing-tool',
        `${tool} not found: building the demo guest needs Debian's package tools (install the "${pkg}" package; on a non-Debian system use a Debian container)`,
      );
    }
  }
}

interface RunResult {
  readonly stdout: string;
  readonly stderr: string;
}

function run(
  cmd: string,
  args: readonly string[],
  opts: { cwd?: string; maxBuffer?: number; encoding?: 'buffer' } = {},
): Promise<RunResult & { code: number }> {
  return new Promise((resolve) => {
    execFile(
      cmd,
      args,
      { cwd: opts.cwd, maxBuffer: opts.maxBuffer ?? 64 * 1024 * 1024, env: { ...process.env, LC_ALL: 'C' } },
      (err, stdout, stderr) => {
        const code = err
          ? typeof (err as NodeJS.ErrnoException).code === 'number'
            ? Number((err as NodeJS.ErrnoException).code)
            : 1
          : 0;
        resolve({ stdout: String(stdout), stderr: String(stderr) + (err && !stderr ? err.message : ''), code });
      },
    );
  });
}

const UNREACHABLE =
  /Temporary failure resolving|Could not resolve|Failed to fetch|Unable to connect|Could not connect|Connection (?:failed|timed out|refused)|Network is unreachable|No route to host/i;

interface PackageInfo {
  readonly name: string;
  readonly version: string;
  readonly size: number;
  readonly depends: string;
}

async function aptShow(pkg: string): Promise<PackageInfo> {
  const r = await run('apt-cache', ['show', '--no-all-versions', pkg]);
  const text = r.stdout;
  if (r.code !== 0 || !/^Package:/m.test(text)) {
    throw new DemoImageError(
      'no-package-lists',
      `apt knows no package ${pkg} (${(r.stderr.trim().split('\n')[0] || 'no output').trim()}): run "sudo apt-get update" (and check that Debian's main archive is in the apt sources)`,
    );
  }
  const get = (k: string): string => new RegExp(`^${k}: (.*)$`, 'm').exec(text)?.[1]?.trim() ?? '';
  return {
    name: get('Package') || pkg,
    version: get('Version'),
    size: Number(get('Size')) || 0,
    depends: get('Depends'),
  };
}

/** linux-image-cloud-amd64 → the real kernel package it depends on (linux-image-6.1.0-56-cloud-amd64). */
async function resolveKernelPackage(): Promise<PackageInfo> {
  const meta = await aptShow(KERNEL_METAPACKAGE);
  const real = /(?:^|[,|]\s*)(linux-image-\d[^\s,|()]*)/.exec(meta.depends)?.[1];
  if (!real)
    throw new DemoImageError(
      'failed',
      `${KERNEL_METAPACKAGE} ${meta.version} depends on no linux-image-<version> package (Depends: ${meta.depends || 'none'})`,
    );
  return aptShow(real);
}

async function dirSize(dir: string): Promise<number> {
  let total = 0;
  for (const name of await readdir(dir)) {
    try {
      const s = await stat(join(dir, name));
      if (s.isFile()) total += s.size;
    } catch {
      // renamed meanwhile
    }
  }
  return total;
}

async function download(dir: string, packages: readonly PackageInfo[], progress: (f: number) => void): Promise<void> {
  const expected = packages.reduce((n, p) => n + p.size, 0);
  const child = spawn('apt-get', ['download', ...packages.map((p) => `${p.name}=${p.version}`)], {
    cwd: dir,
    env: { ...process.env, LC_ALL: 'C' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr.on('data', (d: Buffer) => (output += d.toString()));
  const timer = setInterval(() => {
    if (expected > 0)
      void dirSize(dir).then(
        (n) => progress(Math.min(0.99, n / expected)),
        () => undefined,
      );
  }, 250);
  const code = await new Promise<number>((resolve) => {
    child.on('error', () => resolve(127));
    child.on('close', (c) => resolve(c ?? 1));
  });
  clearInterval(timer);
  if (code !== 0) {
    const errors = [...new Set(output.split('\n').filter((l) => /^E:/.test(l)))];
    const detail = (errors.length ? errors.slice(0, 2) : output.trim().split('\n').slice(-2)).join('; ');
    const stale = /\b404\b|Unable to locate package|Can't select|has no installation candidate/.test(output);
    const reason: DemoImageErrorReason = stale
      ? 'no-package-lists'
      : UNREACHABLE.test(output)
        ? 'unreachable'
        : 'failed';
    const hint =
      reason === 'unreachable'
        ? ' (is the Debian archive reachable?)'
        : reason === 'no-package-lists'
          ? ' (the package lists are missing or stale: run "sudo apt-get update")'
          : '';
    throw new DemoImageError(
      reason,
      `apt-get download ${packages.map((p) => p.name).join(' ')} failed${hint}: ${detail}`,
    );
  }
  progress(1);
}

async function extract(deb: string, into: string): Promise<void> {
  const r = await run('dpkg-deb', ['-x', deb, into]);
  if (r.code !== 0) throw new DemoImageError('failed', `dpkg-deb -x ${basename(deb)} failed: ${r.stderr.trim()}`);
}

function firstExisting(...paths: string[]): string | undefined {
  return paths.find((p) => existsSync(p));
}

/** Kconfig values: CONFIG_X → "y" | "m" | value; absent (or "is not set") → undefined. */
export function parseKconfig(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of text.split('\n')) {
    const m = /^(CONFIG_[A-Za-z0-9_]+)=(.*)$/.exec(line);
    if (m) out.set(m[1], m[2]);
  }
  return out;
}

const moduleName = (file: string): string =>
  basename(file)
    .replace(/\.ko(\.(?:xz|gz|zst))?$/, '')
    .replace(/-/g, '_');

/** The strings of an ELF64 relocatable's .modinfo section ("depends=virtio,virtio_ring", "name=virtio_pci", …). */
export function modinfo(ko: Uint8Array): string[] {
  const dv = new DataView(ko.buffer, ko.byteOffset, ko.byteLength);
  if (ko.length < 64 || dv.getUint32(0, false) !== 0x7f454c46 || ko[4] !== 2 || ko[5] !== 1) return [];
  const shoff = Number(dv.getBigUint64(0x28, true));
  const shentsize = dv.getUint16(0x3a, true);
  const shnum = dv.getUint16(0x3c, true);
  const shstrndx = dv.getUint16(0x3e, true);
  if (shoff + shnum * shentsize > ko.length || shstrndx >= shnum) return [];
  const section = (i: number): { name: number; offset: number; size: number } => {
    const at = shoff + i * shentsize;
    return {
      name: dv.getUint32(at, true),
      offset: Number(dv.getBigUint64(at + 0x18, true)),
      size: Number(dv.getBigUint64(at + 0x20, true)),
    };
  };
  const strtab = section(shstrndx);
  for (let i = 0; i < shnum; i++) {
    const s = section(i);
    const nameAt = strtab.offset + s.name;
    const end = ko.indexOf(0, nameAt);
    if (Buffer.from(ko.subarray(nameAt, end)).toString('latin1') !== '.modinfo') continue;
    if (s.offset + s.size > ko.length) return [];
    return Buffer.from(ko.subarray(s.offset, s.offset + s.size))
      .toString('latin1')
      .split('\0')
      .filter(Boolean);
  }
  return [];
}

async function moduleBytes(path: string): Promise<Uint8Array> {
  if (path.endsWith('.ko')) return readFile(path);
  if (path.endsWith('.ko.gz')) return gunzipSync(await readFile(path));
  const tool = path.endsWith('.ko.xz') ? ['xz', 'xz-utils'] : ['zstd', 'zstd'];
  if (!findExecutable(tool[0]))
    throw new DemoImageError(
      'missing-tool',
      `${basename(path)} is compressed and ${tool[0]} is not installed (install the "${tool[1]}" package)`,
    );
  return new Promise((resolve, reject) => {
    execFile(tool[0], ['-dc', path], { encoding: 'buffer', maxBuffer: 256 * 1024 * 1024 }, (err, stdout) =>
      err ? reject(new DemoImageError('failed', `${tool[0]} -dc ${basename(path)}: ${err.message}`)) : resolve(stdout),
    );
  });
}

function walk(dir: string, out: string[] = []): string[] {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) walk(p, out);
    else if (/\.ko(\.(?:xz|gz|zst))?$/.test(e.name)) out.push(p);
  }
  return out;
}

interface ModulePlan {
  /** In load order: dependencies first. */
  readonly load: { readonly name: string; readonly file: string; readonly relative: string }[];
  readonly builtin: string[];
}

/** Which modules to ship: the wanted drivers that are =m, with their dependencies (modules.dep or .modinfo), ordered. */
async function planModules(moduleDir: string, config: Map<string, string>): Promise<ModulePlan> {
  const files = new Map<string, string>();
  for (const f of walk(moduleDir)) files.set(moduleName(f), f);
  const deps = new Map<string, string[]>();
  const depFile = join(moduleDir, 'modules.dep');
  if (existsSync(depFile)) {
    for (const line of (await readFile(depFile, 'utf8')).split('\n')) {
      const [mod, rest] = line.split(':');
      if (!mod || rest === undefined) continue;
      deps.set(moduleName(mod), rest.trim().split(/\s+/).filter(Boolean).map(moduleName));
    }
  }
  const dependsOf = async (name: string): Promise<string[]> => {
    const known = deps.get(name);
    if (known) return known;
    const file = files.get(name);
    if (!file) return [];
    const info = modinfo(await moduleBytes(file));
    const list = (info.find((s) => s.startsWith('depends=')) ?? 'depends=').slice('depends='.length);
    const out = list
      .split(',')
      .filter(Boolean)
      .map((s) => s.replace(/-/g, '_'));
    deps.set(name, out);
    return out;
  };
  const builtin: string[] = [];
  const order: string[] = [];
  const visiting = new Set<string>();
  const visit = async (name: string, wantedBy: string): Promise<void> => {
    if (order.includes(name)) return;
    if (visiting.has(name)) throw new DemoImageError('failed', `module dependency cycle through ${name}`);
    if (!files.has(name))
      throw new DemoImageError('failed', `module ${name} (needed by ${wantedBy}) is not in ${moduleDir}`);
    visiting.add(name);
    for (const d of await dependsOf(name)) await visit(d, name);
    visiting.delete(name);
    order.push(name);
  };
  for (const d of DEMO_DRIVERS) {
    const value = config.get(d.config);
    if (value === 'y') builtin.push(d.module);
    else if (value === 'm') await visit(d.module, `the demo (${d.config}=m)`);
    // not set: the kernel lacks the driver; nothing to ship
  }
  return {
    load: order.map((name) => {
      const file = files.get(name) as string;
      return { name, file, relative: relative(moduleDir, file).replace(/\.ko\.(?:xz|gz|zst)$/, '.ko') };
    }),
    builtin,
  };
}

/** The guest's /init: a busybox shell script. */
export function initScript(kernelVersion: string, modules: readonly string[]): string {
  const insmods = modules.map(
    (m) => `insmod /lib/modules/${kernelVersion}/${m} || echo "init: insmod ${basename(m)} failed"`,
  );
  return [
    '#!/bin/busybox sh',
    '# /init of the Partita demo guest (built by src/demo-guest/demo.ts)',
    'export PATH=/sbin:/bin:/usr/sbin:/usr/bin HOME=/root TERM=linux',
    '[ -x /bin/sh ] || /bin/busybox --install -s',
    'mount -t proc proc /proc',
    'mount -t sysfs sysfs /sys',
    'mount -t devtmpfs devtmpfs /dev',
    'mkdir -p /dev/pts && mount -t devpts devpts /dev/pts',
    'mount -t tmpfs tmpfs /tmp',
    ...insmods,
    'hostname partita',
    'echo "Partita demo guest: Linux $(uname -r), $(nproc) CPUs"',
    '# A login shell on the serial console, in a session of its own so that ttyS0 is its controlling terminal',
    '# (job control, ^C); when it exits, the guest powers off.',
    'if [ -c /dev/ttyS0 ]; then',
    "  setsid sh -c 'exec sh -l <>/dev/ttyS0 >&0 2>&1'",
    'else',
    '  sh -l',
    'fi',
    'echo "Partita demo guest: shell exited, powering off"',
    'poweroff -f',
    '',
  ].join('\n');
}

async function busyboxApplets(busybox: string): Promise<string[]> {
  const r = await run(busybox, ['--list-full']);
  if (r.code !== 0) return []; // not runnable here (another architecture): /init installs the links at boot
  return r.stdout
    .split('\n')
    .map((s) => s.trim())
    .filter((s) => s && s !== 'bin/busybox' && !s.includes('..'));
}

/** Builds the initramfs: directories, /dev/console, busybox and its applet links, the modules, /init. */
async function buildInitramfs(kernelVersion: string, busybox: string, plan: ModulePlan): Promise<Uint8Array> {
  const entries: CpioEntry[] = [];
  for (const d of ['bin', 'sbin', 'usr/bin', 'usr/sbin', 'dev', 'proc', 'sys', 'tmp', 'run', 'root', 'etc', 'mnt'])
    entries.push({ path: d, directory: true, mode: d === 'root' ? 0o700 : d === 'tmp' ? 0o1777 : 0o755 });
  entries.push({ path: 'dev/console', device: { type: 'char', major: 5, minor: 1 }, mode: 0o600 });
  entries.push({ path: 'bin/busybox', data: await readFile(busybox), mode: 0o755 });
  for (const applet of await busyboxApplets(busybox)) entries.push({ path: applet, symlink: '/bin/busybox' });
  for (const m of plan.load)
    entries.push({ path: `lib/modules/${kernelVersion}/${m.relative}`, data: await moduleBytes(m.file), mode: 0o644 });
  entries.push({ path: 'etc/hostname', data: 'partita\n' });
  entries.push({
    path: 'init',
    data: initScript(
      kernelVersion,
      plan.load.map((m) => m.relative),
    ),
    mode: 0o755,
  });
  return gzipSync(writeCpio(entries, { createParents: true }), { level: 9 });
}

interface CacheMeta {
  readonly kernelVersion: string;
  readonly kernelPackage: string;
  readonly modules: string[];
  readonly builtin: string[];
}

async function readCache(dir: string): Promise<CacheMeta | undefined> {
  try {
    const meta = JSON.parse(await readFile(join(dir, 'meta.json'), 'utf8')) as CacheMeta;
    if (existsSync(join(dir, 'vmlinuz')) && existsSync(join(dir, 'initramfs.cpio.gz')) && meta.kernelVersion)
      return meta;
  } catch {
    // no (complete) cache here
  }
  return undefined;
}

function result(dir: string, meta: CacheMeta, fromCache: boolean): DemoImage {
  return {
    kernel: join(dir, 'vmlinuz'),
    initramfs: join(dir, 'initramfs.cpio.gz'),
    kernelVersion: meta.kernelVersion,
    kernelPackage: meta.kernelPackage,
    modules: meta.modules,
    builtin: meta.builtin,
    cmdline: DEMO_CMDLINE,
    fromCache,
  };
}

/** The newest complete cached build, for when apt cannot say which kernel is current. */
async function newestCached(cacheDir: string): Promise<DemoImage | undefined> {
  if (!existsSync(cacheDir)) return undefined;
  const dirs = readdirSync(cacheDir)
    .map((d) => join(cacheDir, d))
    .filter((d) => statSync(d).isDirectory())
    .sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs);
  for (const d of dirs) {
    const meta = await readCache(d);
    if (meta) return result(d, meta, true);
  }
  return undefined;
}

/**
 * Downloads (once) Debian's cloud kernel and busybox-static and builds the demo guest's initramfs; returns the
 * cached kernel and initramfs. Needs apt-get, apt-cache and dpkg-deb (not root) and current apt package lists.
 */
export async function buildDemoImage(options: DemoImageOptions = {}): Promise<DemoImage> {
  const cacheDir = options.cacheDir ?? defaultDemoCacheDir();
  const progress = options.onProgress ?? (() => undefined);
  progress('resolve', 0);
  let kernelPkg: PackageInfo;
  let busyboxPkg: PackageInfo;
  try {
    requireTools();
    kernelPkg = await resolveKernelPackage();
    busyboxPkg = await aptShow(BUSYBOX_PACKAGE);
  } catch (e) {
    // Offline or not Debian, but built before: use that.
    const cached = e instanceof DemoImageError && !options.refresh ? await newestCached(cacheDir) : undefined;
    if (cached) {
      progress('done', 1);
      return cached;
    }
    throw e;
  }
  const kernelVersion = kernelPkg.name.replace(/^linux-image-/, '').replace(/-unsigned$/, '');
  if (!/^[A-Za-z0-9._+-]+$/.test(kernelVersion))
    throw new DemoImageError('failed', `unexpected kernel package name ${kernelPkg.name}`);
  const dir = join(cacheDir, kernelVersion);
  progress('resolve', 1);
  if (!options.refresh) {
    const meta = await readCache(dir);
    if (meta) {
      progress('done', 1);
      return result(dir, meta, true);
    }
  }

  const work = await mkdtemp(join(tmpdir(), 'partita-demo-'));
  try {
    progress('download', 0);
    await download(work, [kernelPkg, busyboxPkg], (f) => progress('download', f));
    const debs = (await readdir(work)).filter((f) => f.endsWith('.deb'));
    const kernelDeb = debs.find((f) => f.startsWith(`${kernelPkg.name}_`));
    const busyboxDeb = debs.find((f) => f.startsWith(`${BUSYBOX_PACKAGE}_`));
    if (!kernelDeb || !busyboxDeb)
      throw new DemoImageError('failed', `apt-get download left ${debs.join(', ') || 'no .deb files'} in ${work}`);

    progress('extract', 0);
    const kroot = join(work, 'kernel');
    const broot = join(work, 'busybox');
    await extract(join(work, kernelDeb), kroot);
    progress('extract', 0.8);
    await extract(join(work, busyboxDeb), broot);
    progress('extract', 1);

    const vmlinuz = readdirSync(join(kroot, 'boot')).filter((f) => f.startsWith('vmlinuz-'));
    if (vmlinuz.length !== 1)
      throw new DemoImageError('failed', `${kernelDeb} has ${vmlinuz.length} /boot/vmlinuz-* files (expected one)`);
    const realVersion = vmlinuz[0].slice('vmlinuz-'.length);
    const configFile = join(kroot, 'boot', `config-${realVersion}`);
    if (!existsSync(configFile)) throw new DemoImageError('failed', `${kernelDeb} has no /boot/config-${realVersion}`);
    const moduleDir = firstExisting(
      join(kroot, 'lib/modules', realVersion),
      join(kroot, 'usr/lib/modules', realVersion),
    );
    if (!moduleDir) throw new DemoImageError('failed', `${kernelDeb} has no /lib/modules/${realVersion}`);
    const busybox = firstExisting(join(broot, 'bin/busybox'), join(broot, 'usr/bin/busybox'));
    if (!busybox) throw new DemoImageError('failed', `${busyboxDeb} has no /bin/busybox`);

    progress('initramfs', 0);
    const plan = await planModules(moduleDir, parseKconfig(await readFile(configFile, 'utf8')));
    progress('initramfs', 0.3);
    const initramfs = await buildInitramfs(realVersion, busybox, plan);
    progress('initramfs', 0.9);

    // Write to a temporary directory beside the final one, then rename: a cache entry is complete or absent.
    const outDir = join(cacheDir, realVersion);
    await mkdir(cacheDir, { recursive: true });
    const staging = await mkdtemp(join(cacheDir, `.${realVersion}-`));
    await chmod(staging, 0o755);
    const meta: CacheMeta = {
      kernelVersion: realVersion,
      kernelPackage: `${kernelPkg.name} ${kernelPkg.version}`,
      modules: plan.load.map((m) => m.name),
      builtin: plan.builtin,
    };
    await writeFile(join(staging, 'vmlinuz'), await readFile(join(kroot, 'boot', vmlinuz[0])));
    await writeFile(join(staging, 'initramfs.cpio.gz'), initramfs);
    await writeFile(
      join(staging, 'meta.json'),
      JSON.stringify({ ...meta, busybox: `${BUSYBOX_PACKAGE} ${busyboxPkg.version}` }, null, 2) + '\n',
    );
    await rm(outDir, { recursive: true, force: true });
    await rename(staging, outDir);
    progress('initramfs', 1);
    progress('done', 1);
    return result(outDir, meta, false);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}
