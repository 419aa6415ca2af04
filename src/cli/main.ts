// The `partita` command line.
import { fstatSync, readFileSync, statSync } from 'node:fs';
import { isatty } from 'node:tty';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { ConfigError, runMachine, type MachineConfig } from '../vmm/machine.js';
import { parseSize } from '../base/units.js';
import { KvmUnavailableError } from '../kvm/system.js';
import { imageDemoCommand } from './image.js';
import { BootImageError } from '../boot/errors.js';
import { DeviceOptionError, parseConsole, parseDisk, parseNet } from './device-options.js';
import type { VirtioDeviceSpec } from '../vmm/virtio-devices.js';
import { openOutputFile, OutputFileError } from '../host/output-file.js';

const USAGE_RUN = `Usage: partita run --kernel FILE [options]

Boots a kernel (PVH ELF, multiboot or Linux bzImage) in a new VM; the guest's serial console is on this terminal.

Options:
  --kernel FILE        kernel image (ELF with a PVH note, or a multiboot kernel)
  --initrd FILE        module handed to the kernel (PVH module list / multiboot module); repeatable
  --cmdline STR        kernel command line
  --cpus N             number of vCPUs (1-64, default 1)
  --topology T         sockets=S,cores=C,threads=T (product = --cpus; default: one socket of N cores)
  --memory SIZE        guest RAM, e.g. 512M, 4G, 128G (default 512M, at most 1T); allocated lazily
  --serial MODE        stdio (default) or file:PATH (appended to, never truncated; not a disk image)
  --cpu PROFILE        CPUID profile: host or compat (default: compat on emulated KVM, host otherwise)
  --disk PATH[,readonly][,serial=ID][,queues=N][,packed]
                       virtio-blk disk on a raw image (locked: one VM at a time); repeatable
  --net user|tap=NAME|socket=PATH[,mac=MAC][,packed]
                       virtio-net: user-mode NAT through passt, a TAP device, or a UNIX socket speaking
                       QEMU's stream protocol; repeatable. 'packed' offers packed virtqueues too
  --rng                virtio-rng fed from the host's getrandom
  --console PATH       virtio-console port to a file (guest output, appended to, never truncated; not a
                       disk image) or a UNIX socket (both ways)
  --stats              print the VM's exit counts when it stops
  -h, --help           this help

On a terminal, Ctrl-A x quits and Ctrl-A h lists the console keys.
Exit status: the guest's debug-exit status ((v << 1) | 1), 0 when it powers off or you quit,
2 for bad input, 3 when the VM stops on a fault, 128+N on host signal N.`;

const USAGE = `Usage: partita <command> [options]

Commands:
  run          boot a kernel in a new VM (partita run --help)
  image demo   fetch and build the demo Linux guest (Debian cloud kernel + busybox initramfs) into the cache

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
function serialInputMode(): MachineConfig['serialInput'] {
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

/** --serial file:PATH: appended to, never truncated, and never a disk image (src/host/output-file.ts). */
function openSerialFile(path: string, virtio: readonly VirtioDeviceSpec[]): number {
  const disks = virtio.flatMap((s) => (s.kind === 'block' ? [s.options.path] : []));
  try {
    return openOutputFile(path, { disks });
  } catch (e) {
    if (e instanceof OutputFileError) throw new UsageError(`--serial: ${e.message}`);
    throw new UsageError(
      `--serial: cannot open '${path}' for writing: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`,
    );
  }
}

function runCommand(args: string[]): number {
  const { values, positionals } = parse(args, {
    kernel: { type: 'string' },
    initrd: { type: 'string', multiple: true },
    cmdline: { type: 'string' },
    cpus: { type: 'string' },
    topology: { type: 'string' },
    memory: { type: 'string' },
    serial: { type: 'string' },
    cpu: { type: 'string' },
    disk: { type: 'string', multiple: true },
    net: { type: 'string', multiple: true },
    rng: { type: 'boolean' },
    console: { type: 'string' },
    stats: { type: 'boolean' },
    help: { type: 'boolean', short: 'h' },
  });
  if (values.help) {
    process.stdout.write(USAGE_RUN + '\n');
    return 0;
  }
  if (positionals.length) throw new UsageError(`unexpected argument '${positionals[0]}' (see partita run --help)`);
  const kernel = values.kernel as string | undefined;
  if (!kernel) throw new UsageError('run: --kernel FILE is required (see partita run --help)');

  const cpusText = (values.cpus as string | undefined) ?? '1';
  if (!/^\d+$/.test(cpusText)) throw new UsageError(`--cpus '${cpusText}' is not a whole number`);
  const cpus = Number(cpusText);

  let memory: number;
  const memoryText = values.memory as string | undefined;
  try {
    memory = parseSize(memoryText ?? '512M');
  } catch (e) {
    throw new UsageError(`--memory: ${(e as Error).message}`);
  }

  const cpu = values.cpu as string | undefined;
  if (cpu !== undefined && cpu !== 'host' && cpu !== 'compat')
    throw new UsageError(`--cpu '${cpu}' is not a profile (host or compat)`);

  const serial = (values.serial as string | undefined) ?? 'stdio';
  let serialOutputFd = 1;
  let serialInput: MachineConfig['serialInput'] = 'none';
  let serialFile: string | undefined; // opened below, once the disks it must not be are known
  if (serial === 'stdio') {
    serialInput = serialInputMode();
  } else if (serial.startsWith('file:') && serial.length > 5) {
    serialFile = serial.slice(5);
  } else {
    throw new UsageError(`--serial '${serial}' is not stdio or file:PATH`);
  }

  const virtio: VirtioDeviceSpec[] = [];
  try {
    for (const d of (values.disk as string[] | undefined) ?? []) virtio.push(parseDisk(d));
    for (const n of (values.net as string[] | undefined) ?? []) virtio.push(parseNet(n));
    if (values.rng) virtio.push({ kind: 'entropy' });
    if (values.console !== undefined) virtio.push(parseConsole(values.console as string));
  } catch (e) {
    if (e instanceof DeviceOptionError) throw new UsageError(e.message);
    throw e;
  }
  if (serialFile !== undefined) serialOutputFd = openSerialFile(serialFile, virtio);

  const config: MachineConfig = {
    kernel,
    virtio,
    stats: values.stats === true,
    initrd: (values.initrd as string[] | undefined) ?? [],
    cmdline: (values.cmdline as string | undefined) ?? '',
    cpus,
    memory,
    memoryText,
    cpuProfile: cpu as MachineConfig['cpuProfile'],
    topology: values.topology as string | undefined,
    serialOutputFd,
    serialInput,
  };

  const raw = serialInput === 'tty';
  if (raw) {
    process.stderr.write('partita: serial console on this terminal; Ctrl-A x quits, Ctrl-A h for help\r\n');
    process.stdin.setRawMode(true);
  }
  try {
    const { reason } = runMachine(config);
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

export function main(argv: string[]): number | Promise<number> {
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
    if (command === 'image') {
      const { values, positionals } = parse(rest, { refresh: { type: 'boolean' } });
      if (positionals[0] !== 'demo' || positionals.length !== 1)
        throw new UsageError(`image: the only image is 'demo' (partita image demo [--refresh])`);
      return imageDemoCommand({ refresh: values.refresh === true });
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
