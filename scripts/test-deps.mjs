// Optional system tools the test suite uses for side-by-side checks, and the Debian package of each. `npm test`
// runs this first: a missing tool is installed with apt-get when that is possible without a password (root, as
// on CI machines, or passwordless sudo); otherwise it prints the apt-get line and the tests that need the tool
// say SKIP. PARTITA_NO_INSTALL=1 turns installing off.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';

const TOOLS = [
  { command: 'qemu-system-x86_64', args: ['--version'], pkg: 'qemu-system-x86', use: 'QEMU comparisons' },
  { command: 'iasl', args: ['-v'], pkg: 'acpica-tools', use: 'ACPI table checks' },
  { command: 'acpiexec', args: ['-v'], pkg: 'acpica-tools', use: 'the ACPI namespace check' },
  { command: 'passt', args: ['--version'], pkg: 'passt', use: 'virtio-net user-mode networking tests' },
  { command: 'cpio', args: ['--version'], pkg: 'cpio', use: 'the initramfs writer checked by GNU cpio' },
  { file: '/usr/share/seabios/bios-256k.bin', pkg: 'seabios', use: 'firmware boot tests (SeaBIOS)' },
  { file: '/usr/lib/grub/i386-pc/modinfo.sh', pkg: 'grub-pc-bin', use: 'the GRUB test images' },
  { command: 'xorriso', args: ['--version'], pkg: 'xorriso', use: 'the GRUB test images (grub-mkrescue)' },
  { command: 'mformat', args: ['--version'], pkg: 'mtools', use: 'the GRUB test images (grub-mkrescue)' },
  { file: '/usr/lib/ipxe/qemu/pxe-virtio.rom', pkg: 'ipxe-qemu', use: 'the network boot test (iPXE)' },
  { command: 'vncsnapshot', args: ['-help'], pkg: 'vncsnapshot', use: 'the native RFB viewer test' },
  { file: '/usr/bin/chromium', pkg: 'chromium', use: 'the web UI and noVNC browser tests' },
];

const present = (t) =>
  t.file ? existsSync(t.file) : spawnSync(t.command, t.args, { stdio: 'ignore' }).error === undefined;
const missing = TOOLS.filter((t) => !present(t));
if (missing.length === 0) process.exit(0);

const pkgs = [...new Set(missing.map((t) => t.pkg))];
const line = `sudo apt-get install ${pkgs.join(' ')}`;
const canInstall =
  process.env.PARTITA_NO_INSTALL !== '1' &&
  spawnSync('apt-get', ['--version'], { stdio: 'ignore' }).error === undefined &&
  (process.getuid?.() === 0 || spawnSync('sudo', ['-n', 'true'], { stdio: 'ignore' }).status === 0);

if (canInstall) {
  const sudo = process.getuid?.() === 0 ? [] : ['sudo', '-n'];
  const run = (args) =>
    spawnSync(sudo[0] ?? args[0], sudo.length ? [...sudo.slice(1), ...args] : args.slice(1), {
      stdio: ['ignore', 'ignore', 'inherit'],
      env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
    }).status === 0;
  process.stderr.write(`partita: installing test tools: ${pkgs.join(' ')} (apt-get)\n`);
  const install = ['apt-get', 'install', '-y', '--no-install-recommends', ...pkgs];
  if (!run(install) && !(run(['apt-get', 'update']) && run(install)))
    process.stderr.write(`partita: could not install them; the tests that need them will say SKIP\n`);
}
for (const t of missing.filter((t) => !present(t)))
  process.stderr.write(`partita: ${t.command ?? t.file} not found: ${t.use} will be skipped (${line})\n`);
