// The `partita` command line.
import { fstatSync, openSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { isatty } from 'node:tty';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { ConfigError, prestartIoThread, runMachine, type RunOptions } from '../vmm/machine.js';
import { formatSize, parseSize } from '../base/units.js';
import { MAX_MEMORY, MIN_MEMORY } from '../arch/x86_64/layout.js';
import { parseTopology } from '../arch/x86_64/topology.js';
import { MACHINE_SPEC_VERSION, MAX_VCPUS, SpecError, type MachineSpec } from '../spec/machine-spec.js';
import { parseMachineSpec, validateMachineSpec } from '../spec/validate.js';
import type { DeviceOptions } from '../devices/model.js';
import { machineDiskImages } from '../vmm/device-set.js';
import { openOutputFile, OutputFileError } from '../host/output-file.js';
import { KvmUnavailableError } from '../kvm/system.js';
import { imageDemoCommand } from './image.js';
import { BootImageError } from '../boot/errors.js';
import {
  DeviceOptionError,
  parseBootOrder,
  parseConsole,
  parseInput,
  parseDisk,
  parseNet,
  type AhciDiskOption,
} from './device-options.js';
import { DAEMON_VERB_NAMES, VERB_USAGE } from './verb-names.js';
import { awaitHandOff, hasHandOffChannel } from './vmm-standby.js';

/** Debian's SeaBIOS (package seabios): what `--bios` without a path boots. */
export const DEFAULT_BIOS = '/usr/share/seabios/bios-256k.bin';

const USAGE_RUN = `Usage: partita run --kernel FILE [options]
       partita run --bios [FILE] [--cdrom ISO] [--disk …] [options]
       partita run --spec VM.json [--serial …] [--stats]

Boots a kernel (PVH ELF, multiboot or Linux bzImage) in a new VM; the guest's serial console is on this terminal.
'partita spec' with the same options prints the machine spec (JSON) they mean; --spec runs such a file.

Options:
  --spec FILE          run the VM a machine spec file describes (instead of the machine options below)
  --kernel FILE        kernel image (ELF with a PVH note, or a multiboot kernel)
  --initrd FILE        module handed to the kernel (PVH module list / multiboot module); repeatable
  --cmdline STR        kernel command line
  --cpus N             number of vCPUs (1-64, default 1)
  --topology T         sockets=S,cores=C,threads=T (product = --cpus; default: one socket of N cores)
  --memory SIZE        guest RAM, e.g. 512M, 4G, 128G (default 512M, at most 1T); allocated lazily
  --serial MODE        stdio (default), none, file:PATH (appended to, never truncated; not a disk image), or
                       unix:PATH: a UNIX socket any number of clients attach to (output to all, input from any),
                       with the output appended to --serial-log FILE
  --serial-log FILE    the log of --serial unix:PATH (required with it)
  --control PATH       serve the control channel (newline-delimited JSON: status, pause, resume, stop,
                       screenshot) on this UNIX socket; the daemon drives its VMs through it
  --cpu PROFILE        CPUID profile: host or compat (default: compat on emulated KVM, host otherwise)
  --disk PATH[,readonly][,serial=ID][,queues=N][,packed]
                       virtio-blk disk on a raw image (locked: one VM at a time); repeatable
  --net user|tap=NAME|socket=PATH[,mac=MAC][,packed]
                       virtio-net: user-mode NAT through passt, a TAP device, or a UNIX socket speaking
                       QEMU's stream protocol; repeatable. 'packed' offers packed virtqueues too
  --rng                virtio-rng fed from the host's getrandom
  --input tablet,keyboard
                       virtio-input devices for the screen (--vnc): an absolute pointer (the guest's pointer
                       sits where the viewer's is) and a keyboard; PS/2 serves until the guest's driver runs
  --console PATH       virtio-console port to a file (guest output, appended to, never truncated; not a
                       disk image) or a UNIX socket (both ways)
  --status-file FILE   when the VM stops, write why there ({"status","kind","message"} JSON): a daemon that
                       reattached to this VMM (not its parent) learns its outcome from it
  --stats              print the VM's exit counts when it stops
  -h, --help           this help

Firmware boot (a PC: i440FX/PIIX chipset, fw_cfg, CMOS, PS/2, std VGA, AHCI):
  --bios [FILE]        boot firmware from the reset vector (default: Debian's SeaBIOS,
                       ${DEFAULT_BIOS})
  --cdrom ISO          an ATAPI CD-ROM on the AHCI controller with this ISO 9660 image; repeatable
  --disk PATH,if=ahci  a SATA disk on the AHCI controller (if=virtio, the default, is virtio-blk)
  --boot order=LIST    boot order of device kinds: cd, disk, net (e.g. order=cd,disk)
  --display vga|none   the std VGA display (default vga with --bios)
  --screenshot FILE    write the screen as a PNG when the VM ends (guest exit, reset loop, Ctrl-A x, signal)
  --vnc unix:PATH      serve the screen, keyboard and mouse over RFB (VNC) on a UNIX socket
  --screen-text FILE   write a text-mode screen as text (UTF-8) when the VM ends
  --firmware-log FILE  the firmware's debug log (port 0x402: SeaBIOS's log), appended to FILE

On a terminal, Ctrl-A x quits and Ctrl-A h lists the console keys.
Exit status: the guest's debug-exit status ((v << 1) | 1), 0 when it powers off or you quit,
2 for bad input, 3 when the VM stops on a fault, 128+N on host signal N.`;

const USAGE = `Usage: partita <command> [options]

Commands:
  run          boot a kernel in a new VM (partita run --help)
  spec         print the machine spec (JSON) that 'partita run' options describe
  image demo   fetch and build the demo Linux guest (Debian cloud kernel + busybox initramfs) into the cache
${VERB_USAGE}

Options:
  -h, --help       this help
  -V, --version    print the version`;

class UsageError extends Error {}

function fail(message: string, status = 2): never {
  process.stderr.write(`partita: ${message}\n`);
  process.exit(status);
}

function parse(args: string[], options: ParseArgsConfig['options']): ReturnType<typeof parseArgs> {
  try {
    return parseArgs({ args, options, strict: true, allowPositionals: true });
  } catch (e) {
    const err = e as Error & { code?: string };
    if (err.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') {
      const m = /Unknown option '([^']+)'/.exec(err.message);
      throw new UsageError(`unknown option '${m ? m[1] : '?'}' (see --help)`);
    }
    if (err.code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE') {
      const m = /Option '([^']+)/.exec(err.message);
      throw new UsageError(`option '${m ? m[1].split(' ')[0] : '?'}' needs a value (see --help)`);
    }
    throw new UsageError(err.message.split('\n')[0]);
  }
}

// Decided from fstat, without touching process.stdin: creating it would switch a pipe to non-blocking mode
// under the I/O thread that reads it.
function serialInputMode(): RunOptions['serialInput'] {
  if (isatty(0)) return 'tty';
  try {
    const st = fstatSync(0);
    if (st.isCharacterDevice()) {
      const devNull = statSync('/dev/null');
      if (st.rdev === devNull.rdev) return 'none';
    }
    return 'stream';
  } catch {
    return 'none'; // stdin closed
  }
}

const RUN_OPTIONS = {
  spec: { type: 'string' },
  kernel: { type: 'string' },
  initrd: { type: 'string', multiple: true },
  cmdline: { type: 'string' },
  cpus: { type: 'string' },
  topology: { type: 'string' },
  memory: { type: 'string' },
  serial: { type: 'string' },
  'serial-log': { type: 'string' },
  control: { type: 'string' },
  vnc: { type: 'string' },
  'status-file': { type: 'string' },
  cpu: { type: 'string' },
  disk: { type: 'string', multiple: true },
  net: { type: 'string', multiple: true },
  rng: { type: 'boolean' },
  input: { type: 'string' },
  console: { type: 'string' },
  stats: { type: 'boolean' },
  bios: { type: 'string' },
  cdrom: { type: 'string', multiple: true },
  boot: { type: 'string' },
  display: { type: 'string' },
  screenshot: { type: 'string' },
  'screen-text': { type: 'string' },
  'firmware-log': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const satisfies ParseArgsConfig['options'];

/**
 * `--bios` takes an optional path (`--bios` alone means Debian's SeaBIOS). parseArgs has no optional values, so
 * a bare `--bios` (last, or followed by another option) is given the default here.
 */
function withBiosDefault(args: readonly string[]): string[] {
  const out: string[] = [];
  args.forEach((a, i) => {
    out.push(a);
    if (a === '--bios' && (i + 1 >= args.length || args[i + 1].startsWith('-'))) out.push(DEFAULT_BIOS);
  });
  return out;
}

type RunValues = ReturnType<typeof parse>['values'];

/** The flags of a machine ('partita run' without --spec) → the machine spec they mean. */
function specFromFlags(values: RunValues): { spec: MachineSpec; flagOf: (path: string) => string | undefined } {
  const kernel = values.kernel as string | undefined;
  const bios = values.bios as string | undefined;
  if (!kernel && !bios)
    throw new UsageError('run: --kernel FILE, --bios [FILE] or --spec FILE is required (see partita run --help)');
  if (kernel && bios) throw new UsageError('--kernel and --bios are two ways to boot: give one');
  if (!bios)
    for (const flag of ['cdrom', 'boot', 'display', 'firmware-log'] as const)
      if (values[flag] !== undefined) throw new UsageError(`--${flag} needs firmware boot (--bios)`);
  if (bios && (values.initrd !== undefined || values.cmdline !== undefined))
    throw new UsageError('--initrd and --cmdline go with --kernel; with --bios the boot loader chooses');

  const cpusText = (values.cpus as string | undefined) ?? '1';
  if (!/^\d+$/.test(cpusText)) throw new UsageError(`--cpus '${cpusText}' is not a whole number`);
  const cpus = Number(cpusText);
  if (cpus < 1) throw new UsageError(`--cpus must be a whole number from 1 to ${MAX_VCPUS}`);
  if (cpus > MAX_VCPUS)
    throw new UsageError(`--cpus ${cpus} is more than Partita's limit of ${MAX_VCPUS} vCPUs per VM`);

  const memoryText = (values.memory as string | undefined) ?? '512M';
  let memory: number;
  try {
    memory = parseSize(memoryText);
  } catch (e) {
    throw new UsageError(`--memory: ${(e as Error).message}`);
  }
  if (memory > MAX_MEMORY)
    throw new UsageError(`--memory ${memoryText} is larger than the ${formatSize(MAX_MEMORY)} limit`);
  if (memory < MIN_MEMORY)
    throw new UsageError(`--memory ${memoryText} is smaller than the ${formatSize(MIN_MEMORY)} minimum`);
  if (memory % 4096 !== 0) throw new UsageError(`--memory ${memoryText} is not a whole number of 4 KiB pages`);

  let topology: MachineSpec['topology'];
  if (values.topology !== undefined) {
    try {
      topology = parseTopology(values.topology as string, cpus);
    } catch (e) {
      throw new UsageError((e as Error).message);
    }
  }

  const cpu = values.cpu as string | undefined;
  if (cpu !== undefined && cpu !== 'host' && cpu !== 'compat')
    throw new UsageError(`--cpu '${cpu}' is not a profile (host or compat)`);

  const devices: DeviceOptions[] = [];
  /** The flag each device came from, for errors the spec finds in it. */
  const flags: string[] = [];
  const add = (device: DeviceOptions, flag: string): void => {
    devices.push(device);
    flags.push(flag);
  };
  const ahciDrives: (AhciDiskOption | { type: 'cdrom'; path: string })[] = [];
  const ahciFlags: string[] = [];
  let bootOrder: ('cdrom' | 'disk' | 'net')[] | undefined;
  const display = (values.display as string | undefined) ?? (bios ? 'vga' : 'none');
  if (display !== 'vga' && display !== 'none') throw new UsageError(`--display '${display}' is not vga or none`);
  // The display is the first PCI device, as on QEMU's pc machine (00:02.0), so firmware finds it first.
  if (display === 'vga') add({ kind: 'std-vga' }, '--display vga');
  try {
    for (const d of (values.disk as string[] | undefined) ?? []) {
      const disk = parseDisk(d);
      if (disk.kind === undefined) {
        if (!bios) throw new UsageError(`--disk '${d}': if=ahci needs firmware boot (--bios)`);
        ahciDrives.push(disk);
        ahciFlags.push(`--disk '${d}'`);
      } else add(disk as DeviceOptions, `--disk '${d}'`);
    }
    for (const c of (values.cdrom as string[] | undefined) ?? []) {
      if (!c) throw new UsageError('--cdrom needs an ISO image path');
      ahciDrives.push({ type: 'cdrom', path: c });
      ahciFlags.push(`--cdrom '${c}'`);
    }
    if (ahciDrives.length) add({ kind: 'ahci', drives: ahciDrives }, ahciFlags.join(' '));
    if (values.boot !== undefined) bootOrder = parseBootOrder(values.boot as string);
    for (const n of (values.net as string[] | undefined) ?? []) add(parseNet(n), `--net '${n}'`);
    if (values.rng) add({ kind: 'virtio-rng' }, '--rng');
    if (values.input !== undefined)
      for (const d of parseInput(values.input as string)) add(d, `--input '${String(values.input)}'`);
    if (values.console !== undefined)
      add(parseConsole(values.console as string), `--console '${String(values.console)}'`);
  } catch (e) {
    if (e instanceof DeviceOptionError) throw new UsageError(e.message);
    throw e;
  }
  const initrd = (values.initrd as string[] | undefined) ?? [];
  const cmdline = values.cmdline as string | undefined;
  const spec: MachineSpec = {
    version: MACHINE_SPEC_VERSION,
    cpus,
    ...(topology ? { topology } : {}),
    ...(cpu ? { cpuProfile: cpu as 'host' | 'compat' } : {}),
    memory,
    boot: bios
      ? {
          kind: 'firmware',
          firmware: bios,
          ...(bootOrder ? { bootOrder } : {}),
          ...(values['firmware-log'] !== undefined ? { log: values['firmware-log'] as string } : {}),
        }
      : {
          kind: 'kernel',
          kernel: kernel!,
          ...(initrd.length ? { initrd } : {}),
          ...(cmdline !== undefined ? { cmdline } : {}),
        },
    devices,
  };
  const flagOf = (path: string): string | undefined => {
    const m = /^\/devices\/(\d+)/.exec(path);
    return m ? flags[Number(m[1])] : undefined;
  };
  return { spec, flagOf };
}

/** The VM the command line describes: a spec file, or the flags' spec; either way checked against the schema. */
function checkedSpec(values: RunValues): MachineSpec {
  if (values.spec !== undefined) {
    for (const flag of [
      'kernel',
      'initrd',
      'cmdline',
      'cpus',
      'topology',
      'memory',
      'cpu',
      'disk',
      'net',
      'rng',
      'input',
      'console',
      'bios',
      'cdrom',
      'boot',
      'display',
      'firmware-log',
    ])
      if (values[flag] !== undefined)
        throw new UsageError(`--${flag} cannot be combined with --spec (the spec file describes the machine)`);
    const path = values.spec as string;
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (e) {
      throw new UsageError(
        `--spec: cannot read '${path}': ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`,
      );
    }
    try {
      return parseMachineSpec(text);
    } catch (e) {
      if (e instanceof SpecError) throw new UsageError(`spec '${path}': ${e.message}`);
      throw e;
    }
  }
  const { spec, flagOf } = specFromFlags(values);
  try {
    return validateMachineSpec(spec);
  } catch (e) {
    if (!(e instanceof SpecError)) throw e;
    // Said in the flags' words: "/devices/1/queues: …" is "--disk 'x,queues=99': queues: …", and a JSON path
    // inside the message names the flag it came from.
    const flag = flagOf(e.path);
    const text = e.message
      .replace(/^\/devices\/\d+\/?/, '')
      .replace(/\/devices\/\d+(\/\w+)?/g, (path) => flagOf(path) ?? path);
    throw new UsageError(flag ? `${flag}: ${text}` : text);
  }
}

/** Where the guest's serial console goes: this terminal (with input), a file, a socket, or nowhere. */
function serialOutput(
  serial: string,
  spec: MachineSpec,
  log: string | undefined,
): Pick<RunOptions, 'serialOutputFd' | 'serialInput' | 'serialSocket'> {
  if (log !== undefined && !serial.startsWith('unix:'))
    throw new UsageError('--serial-log FILE goes with --serial unix:PATH only');
  if (serial.startsWith('unix:') && serial.length > 5) {
    if (log === undefined)
      throw new UsageError('--serial unix:PATH needs --serial-log FILE (the output is kept there)');
    const fd = openOutput('--serial-log', log, spec);
    return {
      serialOutputFd: fd,
      serialInput: 'none',
      serialSocket: { path: serial.slice(5), logPath: log, logStart: fstatSync(fd).size },
    };
  }
  if (serial === 'stdio') return { serialOutputFd: 1, serialInput: serialInputMode() };
  if (serial === 'none') return { serialOutputFd: openSync('/dev/null', 'w'), serialInput: 'none' };
  if (serial.startsWith('file:') && serial.length > 5) {
    // Appended to, never truncated, and never a disk image of this or another VM (src/host/output-file.ts).
    return { serialOutputFd: openOutput('--serial', serial.slice(5), spec), serialInput: 'none' };
  }
  throw new UsageError(`--serial '${serial}' is not stdio, none, file:PATH or unix:PATH`);
}

/**
 * --screenshot / --screen-text FILE: opened (and checked: never a disk image, never a file a VM holds) before the
 * VM starts, so a bad path costs no run; rewritten when the VM ends.
 */
function screenOutput(flag: string, path: string, spec: MachineSpec): number {
  if (!spec.devices.some((d) => d.kind === 'std-vga'))
    throw new UsageError(`${flag} needs a display: the machine has no std-vga (--display vga)`);
  return openOutput(flag, path, spec);
}

/**
 * A file the VMM writes for `flag` (src/host/output-file.ts: appended to, never a disk image of this VM or one a
 * running VM holds, locked while open); a refusal is one line in the flag's words.
 */
function openOutput(flag: string, path: string, spec: MachineSpec): number {
  try {
    return openOutputFile(path, { disks: machineDiskImages(spec.devices) });
  } catch (e) {
    if (e instanceof OutputFileError) throw new UsageError(`${flag}: ${e.message}`);
    throw new UsageError(
      `${flag}: cannot open '${path}' for writing: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`,
    );
  }
}

/** --vnc unix:PATH: the RFB server's socket (local only: it offers no password). */
function vncSocketPath(text: string, spec: MachineSpec): string {
  if (!text.startsWith('unix:') || text.length <= 5) throw new UsageError(`--vnc '${text}' is not unix:PATH`);
  if (!spec.devices.some((d) => d.kind === 'std-vga'))
    throw new UsageError('--vnc needs a display: the machine has no std-vga (--display vga)');
  return text.slice(5);
}

function specCommand(args: string[]): number {
  const { values, positionals } = parse(withBiosDefault(args), RUN_OPTIONS);
  if (values.help) {
    process.stdout.write(
      'Usage: partita spec [partita run options]\nPrints the machine spec (JSON) the options describe.\n',
    );
    return 0;
  }
  if (positionals.length) throw new UsageError(`unexpected argument '${positionals[0]}' (see partita spec --help)`);
  const spec = checkedSpec(values);
  const serial = values.serial as string | undefined;
  const withSerial: MachineSpec =
    serial === undefined || serial === 'stdio' || serial.startsWith('unix:')
      ? spec
      : { ...spec, serial: serial === 'none' ? { output: 'none' } : { output: 'file', path: serial.slice(5) } };
  process.stdout.write(JSON.stringify(withSerial, null, 2) + '\n');
  return 0;
}

function runCommand(args: string[]): number {
  const { values, positionals } = parse(withBiosDefault(args), RUN_OPTIONS);
  if (values.help) {
    process.stdout.write(USAGE_RUN + '\n');
    return 0;
  }
  if (positionals.length) throw new UsageError(`unexpected argument '${positionals[0]}' (see partita run --help)`);
  const spec = checkedSpec(values);
  // --serial on the command line wins over the spec's: it is how this run is connected, not what the VM is.
  const specSerial = spec.serial;
  const serialFlag =
    (values.serial as string | undefined) ??
    (specSerial === undefined || specSerial.output === 'stdio'
      ? 'stdio'
      : specSerial.output === 'none'
        ? 'none'
        : `file:${specSerial.path}`);
  const control = values.control as string | undefined;
  if (control === '') throw new UsageError('--control needs a socket path');
  const run: RunOptions = {
    ...serialOutput(serialFlag, spec, values['serial-log'] as string | undefined),
    stats: values.stats === true,
    ...(control !== undefined ? { controlSocket: control } : {}),
    ...(values.vnc !== undefined ? { vncSocket: vncSocketPath(values.vnc as string, spec) } : {}),
    ...(values.screenshot !== undefined
      ? { screenshotFd: screenOutput('--screenshot', values.screenshot as string, spec) }
      : {}),
    ...(values['screen-text'] !== undefined
      ? { screenTextFd: screenOutput('--screen-text', values['screen-text'] as string, spec) }
      : {}),
  };

  const raw = run.serialInput === 'tty';
  if (raw) {
    process.stderr.write('partita: serial console on this terminal; Ctrl-A x quits, Ctrl-A h for help\r\n');
    process.stdin.setRawMode(true);
  }
  try {
    const { reason } = runMachine(spec, run);
    const statusFile = values['status-file'] as string | undefined;
    if (statusFile !== undefined) {
      const { status, kind, message } = reason;
      writeFileSync(statusFile, JSON.stringify({ status, kind, message: message.split('\n')[0] }) + '\n');
    }
    if (reason.kind !== 'guest-exit')
      process.stderr.write(`${raw ? '\r\n' : ''}partita: ${reason.message.replace(/\n/g, raw ? '\r\n' : '\n')}\n`);
    return reason.status;
  } finally {
    if (raw) process.stdin.setRawMode(false);
  }
}

function version(): string {
  // package.json is one level up from the bundle (dist/main.js), three from the tsc output (dist/src/cli/).
  for (const rel of ['../package.json', '../../../package.json']) {
    try {
      return (JSON.parse(readFileSync(new URL(rel, import.meta.url), 'utf8')) as { name: string; version: string })
        .version;
    } catch {
      continue;
    }
  }
  return 'unknown';
}

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  try {
    if (command === undefined || command === '-h' || command === '--help') {
      process.stdout.write(USAGE + '\n');
      return command === undefined ? 2 : 0;
    }
    if (command === '-V' || command === '--version') {
      process.stdout.write(`partita ${version()}\n`);
      return 0;
    }
    if (command === 'run') return runCommand(rest);
    // Hidden: the daemon's warm VMM (src/cli/vmm-standby.ts). Its `--standby-id ID` is only an identity mark on
    // the command line, which the daemon checks before reattaching to it.
    if (command === 'vmm-standby') {
      if (!hasHandOffChannel()) {
        process.stderr.write("partita: vmm-standby is the daemon's warm VMM: 'partita serve' starts it\n");
        return 2;
      }
      prestartIoThread(); // the I/O worker's isolate is part of what a warm VMM has ready
      return runCommand(await awaitHandOff());
    }
    if (command === 'spec') return specCommand(rest);
    // The daemon and its client are loaded only for their commands: `partita run` starts without them.
    if (command === 'serve') {
      const [{ serveCommand }, { VerbError }] = await Promise.all([import('./serve.js'), import('./verbs.js')]);
      try {
        return await serveCommand(rest, version());
      } catch (e) {
        if (e instanceof VerbError) fail(e.message, e.status);
        throw e;
      }
    }
    if (DAEMON_VERB_NAMES.includes(command)) return await (await import('./verbs.js')).runVerb(command, rest);
    if (command === 'image') {
      const { values, positionals } = parse(rest, { refresh: { type: 'boolean' } });
      if (positionals[0] !== 'demo' || positionals.length !== 1)
        throw new UsageError(`image: the only image is 'demo' (partita image demo [--refresh])`);
      return await imageDemoCommand({ refresh: values.refresh === true });
    }
    throw new UsageError(`unknown command '${command}' (see partita --help)`);
  } catch (e) {
    if (
      e instanceof UsageError ||
      e instanceof ConfigError ||
      e instanceof BootImageError ||
      e instanceof KvmUnavailableError
    ) {
      fail(e.message);
    }
    throw e;
  }
}

void Promise.resolve(main(process.argv.slice(2))).then((status) => process.exit(status));
