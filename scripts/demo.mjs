#!/usr/bin/env node
// `npm run demo`: on hardware KVM, boots the demo Linux guest (Debian cloud kernel + busybox) to a shell on
// this terminal; on emulated KVM (this workplace's PVM), where Linux cannot run, boots the hello test guest.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const partita = (args, opts = {}) =>
  spawnSync(process.execPath, [join(root, 'bin/partita.js'), ...args], { stdio: 'inherit', ...opts }).status ?? 1;

if (existsSync('/sys/module/kvm_pvm')) {
  console.error(
    'partita demo: this KVM is emulated (PVM), which cannot run Linux; booting the hello test guest instead.',
  );
  process.exit(
    partita(['run', '--kernel', join(root, 'build/guests/hello.pvh.elf'), '--cmdline', 'demo=yes']) === 1 ? 0 : 1,
  );
}
const built = spawnSync(process.execPath, [join(root, 'bin/partita.js'), 'image', 'demo'], {
  stdio: ['inherit', 'pipe', 'inherit'],
  encoding: 'utf8',
});
if (built.status !== 0) process.exit(built.status ?? 1);
const field = (name) => new RegExp(`^${name}\\s+(\\S+)`, 'm').exec(built.stdout)?.[1];
console.error('partita demo: booting Debian Linux with 2 vCPUs; Ctrl-A x quits.');
process.exit(
  partita([
    'run',
    '--kernel',
    field('kernel'),
    '--initrd',
    field('initramfs'),
    '--cmdline',
    'console=ttyS0 panic=-1',
    '--cpus',
    '2',
    '--memory',
    '1G',
  ]),
);
