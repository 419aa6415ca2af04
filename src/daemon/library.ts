// The VM library: one folder per VM under <data>/vms/<name>/ holding vm.json (the VmRecord of docs/api.md),
// its disks (raw, sparse), vmm.log and serial.log. vm.json is only ever replaced atomically (atomic-file.ts), a
// new VM appears by one rename of a fully built folder, a deleted one disappears by one rename before its files
// are removed: a crash at any point leaves every VM either whole or absent.
//
// What the API may put in a VM is confined: a disk the VM writes lives in its own folder; a file outside the
// library (an ISO, a kernel, firmware) is only ever read, and must exist when it is given. No two VMs share a
// writable image.
import {
  closeSync,
  existsSync,
  ftruncateSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  realpathSync,
  renameSync,
  rmSync,
  statSync,
} from 'node:fs';
import { isAbsolute, join, relative, resolve, sep } from 'node:path';
import { validateMachineSpec } from '../spec/validate.js';
import { MACHINE_SPEC_VERSION, SpecError, type MachineSpec } from '../spec/machine-spec.js';
import { deviceRegistry, type DeviceRegistry } from '../devices/registry.js';
import type { DeviceOptions } from '../devices/model.js';
import { GIB, MIB } from '../base/units.js';
import { writeFileAtomic, fsyncDir } from './atomic-file.js';
import { badRequest, conflict, notFound } from './errors.js';
import { VM_NAME_PATTERN, type CreateBody, type GuestOs, type PatchBody, type VmRecord } from './api-schemas.js';

const NAME_RE = new RegExp(VM_NAME_PATTERN);

/** Why a name cannot be a VM's, or undefined when it can. */
export function nameProblem(name: string): string | undefined {
  if (name.includes('/')) return `'${name}' contains '/'`;
  if (name.includes('..')) return `'${name}' contains '..'`;
  if (!NAME_RE.test(name))
    return `'${name}' is not a VM name (letters, digits, '.', '_', '-'; at most 64; not starting with '.', '_' or '-')`;
  return undefined;
}

export function checkName(name: string, path = '/name'): void {
  const problem = nameProblem(name);
  if (problem) throw badRequest(problem, path);
}

/** Firmware images by the names the API accepts (Debian's packages seabios and ovmf). */
export const FIRMWARE_IMAGES: Readonly<Record<string, string>> = {
  bios: '/usr/share/seabios/bios-256k.bin',
  uefi: '/usr/share/OVMF/OVMF_CODE.fd',
};

/** Device kinds that give a VM a screen (RFB, screenshots). */
export const DISPLAY_KINDS: ReadonlySet<string> = new Set(['std-vga']);

/**
 * The devices of a new VM. Firmware-booted VMs are PCs with a screen (std VGA), a virtio tablet and keyboard
 * (an absolute pointer once the guest's driver runs), and an AHCI controller for the installer CD; their new disk is SATA for Windows (which has no virtio driver on its installer) and virtio-blk
 * otherwise. Kernel-booted VMs get virtio-blk only (their console is the serial port).
 */
export function newVmDevices(opts: {
  readonly firmware: boolean;
  readonly os: GuestOs;
  readonly disk?: string;
  readonly cdrom?: string;
}): DeviceOptions[] {
  if (!opts.firmware) {
    const devices: DeviceOptions[] = [];
    if (opts.disk) devices.push({ kind: 'virtio-blk', path: opts.disk });
    if (opts.cdrom) devices.push({ kind: 'virtio-blk', path: opts.cdrom, readOnly: true });
    return devices;
  }
  const devices: DeviceOptions[] = [{ kind: 'std-vga' }];
  const drives: { type: 'disk' | 'cdrom'; path: string }[] = [];
  if (opts.disk) {
    if (opts.os === 'windows') drives.push({ type: 'disk', path: opts.disk });
    else devices.push({ kind: 'virtio-blk', path: opts.disk });
  }
  if (opts.cdrom) drives.push({ type: 'cdrom', path: opts.cdrom });
  if (drives.length) devices.push({ kind: 'ahci', drives });
  // The screen's pointer is absolute on guests with virtio-input drivers (Linux); PS/2 serves the rest.
  devices.push({ kind: 'virtio-tablet' }, { kind: 'virtio-keyboard' });
  return devices;
}

const DEFAULT_MEMORY: Record<GuestOs, number> = { linux: 2 * GIB, windows: 4 * GIB, other: 512 * MIB };

export const RECORD_FILE = 'vm.json';

export class VmLibrary {
  readonly vmsDir: string;

  constructor(
    readonly dataDir: string,
    private readonly registry: DeviceRegistry = deviceRegistry,
  ) {
    this.vmsDir = join(dataDir, 'vms');
  }

  /** Creates the library's folders (private to the user) if needed. */
  init(): this {
    mkdirSync(this.vmsDir, { recursive: true, mode: 0o700 });
    mkdirSync(join(this.dataDir, 'isos'), { recursive: true, mode: 0o700 });
    return this;
  }

  vmDir(name: string): string {
    checkName(name);
    return join(this.vmsDir, name);
  }

  has(name: string): boolean {
    return nameProblem(name) === undefined && existsSync(join(this.vmsDir, name, RECORD_FILE));
  }

  /** Every VM's name, sorted; half-made and half-deleted folders (dot names) are not VMs. */
  names(): string[] {
    let entries: string[];
    try {
      entries = readdirSync(this.vmsDir);
    } catch {
      return [];
    }
    return entries.filter((n) => nameProblem(n) === undefined && existsSync(join(this.vmsDir, n, RECORD_FILE))).sort();
  }

  get(name: string): VmRecord {
    if (nameProblem(name) !== undefined || !this.has(name)) throw notFound(name);
    return JSON.parse(readFileSync(join(this.vmsDir, name, RECORD_FILE), 'utf8')) as VmRecord;
  }

  list(): VmRecord[] {
    const out: VmRecord[] = [];
    for (const name of this.names()) {
      try {
        out.push(this.get(name));
      } catch {
        // unreadable record: not listed (the file is left for the user to look at)
      }
    }
    return out;
  }

  /** Replaces the VM's vm.json atomically. */
  save(record: VmRecord): void {
    writeFileAtomic(join(this.vmDir(record.name), RECORD_FILE), JSON.stringify(record, null, 2) + '\n', 0o600);
  }

  /** Builds a VM from a create request; nothing is left on disk when any check fails. */
  create(body: CreateBody): VmRecord {
    checkName(body.name);
    const dir = join(this.vmsDir, body.name);
    if (existsSync(dir)) throw conflict(`a VM named '${body.name}' exists already`);
    const os: GuestOs = body.os ?? 'linux';
    const diskPath = join(dir, 'disk0.img');
    const devices = newVmDevices({
      firmware: body.kernel === undefined,
      os,
      ...(body.disk !== undefined ? { disk: diskPath } : {}),
      ...(body.cdrom !== undefined ? { cdrom: existingFile(body.cdrom, '/cdrom', 'ISO image') } : {}),
    });
    let boot: MachineSpec['boot'];
    if (body.kernel !== undefined) {
      boot = {
        kind: 'kernel',
        kernel: existingFile(body.kernel, '/kernel', 'kernel'),
        ...(body.initrd !== undefined ? { initrd: [existingFile(body.initrd, '/initrd', 'initrd')] } : {}),
        ...(body.cmdline !== undefined ? { cmdline: body.cmdline } : {}),
      };
    } else {
      if (body.initrd !== undefined || body.cmdline !== undefined)
        throw badRequest('initrd and cmdline go with a kernel', body.initrd !== undefined ? '/initrd' : '/cmdline');
      const firmware = body.firmware ?? 'bios';
      boot = {
        kind: 'firmware',
        firmware: existingFile(FIRMWARE_IMAGES[firmware] ?? firmware, '/firmware', 'firmware'),
        // An installer CD boots first; once installed (or if it does not boot) the disk does.
        ...(body.cdrom !== undefined ? { bootOrder: ['cdrom', 'disk'] as ('cdrom' | 'disk')[] } : {}),
      };
    }
    const spec: MachineSpec = {
      version: MACHINE_SPEC_VERSION,
      cpus: body.cpus ?? 1,
      memory: body.memory ?? DEFAULT_MEMORY[os],
      boot,
      devices,
    };
    this.checkSpec(body.name, spec, (p) => '/spec' + p);
    const record: VmRecord = {
      name: body.name,
      os,
      state: 'stopped',
      spec,
      display: hasDisplay(spec),
      createdAt: new Date().toISOString(),
    };

    // Built under a dot name (not a VM), then renamed into place in one step.
    const temp = join(this.vmsDir, `.${body.name}.creating-${process.pid}`);
    rmSync(temp, { recursive: true, force: true });
    mkdirSync(temp, { mode: 0o700 });
    try {
      if (body.disk !== undefined) createSparseDisk(join(temp, 'disk0.img'), body.disk);
      writeFileAtomic(join(temp, RECORD_FILE), JSON.stringify(record, null, 2) + '\n', 0o600);
      renameSync(temp, dir);
      fsyncDir(this.vmsDir);
    } catch (e) {
      rmSync(temp, { recursive: true, force: true });
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EEXIST' || code === 'ENOTEMPTY') throw conflict(`a VM named '${body.name}' exists already`);
      throw e;
    }
    return record;
  }

  /** Applies a settings change (the caller checked the VM is not running); vm.json changes or nothing does. */
  patch(name: string, body: PatchBody): VmRecord {
    const record = this.get(name);
    const old = record.spec;
    const devices = [...old.devices];
    const remove = [...new Set(body.removeDevices ?? [])].sort((a, b) => b - a);
    remove.forEach((index) => {
      if (index >= old.devices.length)
        throw badRequest(
          `there is no device ${index} (the VM has ${old.devices.length})`,
          `/removeDevices/${(body.removeDevices ?? []).indexOf(index)}`,
        );
      devices.splice(index, 1);
    });
    const kept = devices.length;
    devices.push(...(body.addDevices ?? []));
    const cpus = body.cpus ?? old.cpus;
    const spec: MachineSpec = {
      ...old,
      cpus,
      memory: body.memory ?? old.memory,
      devices,
    };
    // A topology is for one vCPU count: a new count goes back to the default (one socket of N cores).
    if (cpus !== old.cpus) delete (spec as { topology?: unknown }).topology;
    this.checkSpec(name, spec, (p) => {
      const m = /^\/devices\/(\d+)(.*)$/.exec(p);
      if (m && Number(m[1]) >= kept) return `/addDevices/${Number(m[1]) - kept}${m[2]}`;
      return '/spec' + p;
    });
    const updated: VmRecord = { ...record, spec, display: hasDisplay(spec) };
    this.save(updated);
    return updated;
  }

  /** Removes a VM (the caller checked it is not running); kept disks move to <data>/kept-disks/<name>/. */
  delete(name: string, keepDisks: boolean): void {
    const record = this.get(name);
    const dir = this.vmDir(name);
    const trash = join(this.vmsDir, `.${name}.deleting-${process.pid}-${Date.now()}`);
    renameSync(dir, trash);
    fsyncDir(this.vmsDir);
    if (keepDisks) {
      const keep = join(this.dataDir, 'kept-disks', name);
      for (const image of this.imagesOf(record.spec)) {
        const rel = relative(dir, image);
        if (rel.startsWith('..') || isAbsolute(rel)) continue; // outside the VM folder: never ours to move
        mkdirSync(keep, { recursive: true, mode: 0o700 });
        renameSync(join(trash, rel), join(keep, rel.split(sep).join('_')));
      }
    }
    rmSync(trash, { recursive: true, force: true });
  }

  /** ISO images offered by the create wizard: <data>/isos/*.iso. */
  isos(): { path: string; size: number }[] {
    const dir = join(this.dataDir, 'isos');
    let names: string[];
    try {
      names = readdirSync(dir);
    } catch {
      return [];
    }
    return names
      .filter((n) => n.toLowerCase().endsWith('.iso'))
      .sort()
      .flatMap((n) => {
        try {
          const st = statSync(join(dir, n));
          return st.isFile() ? [{ path: join(dir, n), size: st.size }] : [];
        } catch {
          return [];
        }
      });
  }

  private imagesOf(spec: MachineSpec): string[] {
    return spec.devices.flatMap((d) => this.registry.get(d.kind)?.diskImages?.(d) ?? []);
  }

  /**
   * The spec as a whole (schema, device kinds), then the library's own rules: where a device's files may be,
   * and no image shared with another VM. `where` turns a spec path into the request's path.
   */
  private checkSpec(name: string, spec: MachineSpec, where: (specPath: string) => string): void {
    try {
      validateMachineSpec(spec, this.registry);
    } catch (e) {
      if (e instanceof SpecError) throw badRequest(e.message.replace(/^\S*: /, ''), where(e.path));
      throw e;
    }
    const dir = join(this.vmsDir, name);
    spec.devices.forEach((d, i) => {
      // Which of the device's files it only reads: an AHCI controller's CDs and read-only drives, else all or none.
      const readOnlyFiles = new Set<string>();
      if (d.kind === 'ahci' && Array.isArray(d.drives))
        for (const drive of d.drives as { type?: string; path?: string; readonly?: boolean }[])
          if (typeof drive.path === 'string' && (drive.type === 'cdrom' || drive.readonly === true))
            readOnlyFiles.add(drive.path);
      const files = new Set([...(this.registry.get(d.kind)?.diskImages?.(d) ?? [])]);
      if (typeof d.path === 'string') files.add(d.path);
      for (const file of files) {
        const readonly = d.readOnly === true || readOnlyFiles.has(file);
        const at = where(`/devices/${i}/path`);
        if (!isAbsolute(file)) throw badRequest(`'${file}' is not an absolute path`, at);
        if (insideDir(file, dir)) continue;
        if (!readonly)
          throw badRequest(
            `'${file}' is outside the VM's folder ${dir}: a disk the VM writes must live there (outside files are attached read-only)`,
            at,
          );
        existingFile(file, at, 'image');
      }
    });
    this.refuseSharedImages(name, spec, where);
  }

  private refuseSharedImages(name: string, spec: MachineSpec, where: (specPath: string) => string): void {
    const others = new Map<string, { vm: string; readOnly: boolean }>();
    for (const other of this.list()) {
      if (other.name === name) continue;
      for (const d of other.spec.devices)
        for (const image of this.registry.get(d.kind)?.diskImages?.(d) ?? [])
          others.set(fileKey(image), { vm: other.name, readOnly: d.readOnly === true });
    }
    spec.devices.forEach((d, i) => {
      for (const image of this.registry.get(d.kind)?.diskImages?.(d) ?? []) {
        const holder = others.get(fileKey(image));
        // Two readers of one ISO may coexist in the library (they still cannot run at once: the VMM locks it).
        if (holder && !(holder.readOnly && d.readOnly === true))
          throw conflict(`the image '${image}' (${where(`/devices/${i}/path`)}) belongs to the VM '${holder.vm}'`);
      }
    });
  }
}

export function hasDisplay(spec: MachineSpec): boolean {
  return spec.devices.some((d) => DISPLAY_KINDS.has(d.kind));
}

/** A path's identity: device and inode when it exists (hard links, symlinks), else its resolved text. */
function fileKey(path: string): string {
  try {
    const st = statSync(path);
    return `${st.dev}:${st.ino}`;
  } catch {
    return `path:${resolve(path)}`;
  }
}

/** True when `path`, with symlinks and '..' resolved as far as it exists, lies inside `dir`. */
export function insideDir(path: string, dir: string): boolean {
  const real = (p: string): string => {
    // Resolve the longest existing prefix (a file about to be created has none of its own).
    let head = resolve(p);
    const tail: string[] = [];
    for (;;) {
      try {
        return join(realpathSync(head), ...tail.reverse());
      } catch {
        const parent = resolve(head, '..');
        if (parent === head) return resolve(p);
        tail.push(head.slice(parent.length).replace(/^\//, ''));
        head = parent;
      }
    }
  };
  const rel = relative(real(dir), real(path));
  return rel !== '' && !rel.startsWith('..') && !isAbsolute(rel);
}

/** An input file given by the user: absolute, existing, a regular file (or a block device). */
function existingFile(path: string, at: string, what: string): string {
  if (!isAbsolute(path)) throw badRequest(`the ${what} '${path}' is not an absolute path`, at);
  let st;
  try {
    st = statSync(path);
  } catch {
    throw badRequest(`the ${what} '${path}' does not exist`, at);
  }
  if (!st.isFile() && !st.isBlockDevice()) throw badRequest(`the ${what} '${path}' is not a file`, at);
  return path;
}

/** A raw disk of `size` bytes holding no blocks yet (a hole: sparse). */
function createSparseDisk(path: string, size: number): void {
  const fd = openSync(path, 'wx', 0o600);
  try {
    ftruncateSync(fd, size);
  } finally {
    closeSync(fd);
  }
}
