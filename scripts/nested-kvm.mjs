#!/usr/bin/env node
// `npm run test:nested [-- COMMAND…]`: runs a command of this checkout inside a QEMU VM whose CPU QEMU emulates in
// software (TCG) with AMD-V, so the VM's Linux loads kvm_amd and has a /dev/kvm of its own. For a machine without
// a usable /dev/kvm (the host kernel is itself a KVM guest that cannot nest): Partita's VM tests then run on a
// real, hardware-style KVM, slowly (every guest instruction and VM exit is emulated), instead of being skipped.
//
// The VM sees the host's whole file system read-only over virtio-9p (so node, gcc-built guests and dist/ are the
// host's own), with a fresh /tmp; the kernel and busybox come from Debian's archive (apt-get download), cached in
// ~/.cache/partita/nested. Default command: the integration tests that need KVM, without the QEMU comparisons
// (PARTITA_NO_QEMU=0 keeps them; QEMU under emulated nesting is very slow). A full run takes about 20 minutes;
// `npm test` runs a shorter lane of them this way (scripts/test-vm-lane.mjs). The VM has a user-mode NIC (for
// passt) and loopback up; the host's test-artifacts/ folder is mounted writable at its own path, so screenshots
// taken inside land there.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import {
  chmodSync,
  existsSync,
  mkdirSync,
  readdirSync,
  rmSync,
  symlinkSync,
  writeFileSync,
  copyFileSync,
} from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const cache = join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'partita', 'nested');
const INITRAMFS = 'init-v5.cpio.gz';
const MODULES = [
  'virtio',
  'virtio_ring',
  'virtio_pci_modern_dev',
  'virtio_pci_legacy_dev',
  'virtio_pci',
  '9pnet',
  '9pnet_virtio',
  'netfs',
  'fscache',
  '9p',
  'irqbypass',
  'ccp',
  'kvm',
  'kvm-amd',
  'failover',
  'net_failover',
  'virtio_net',
];

/** A machine that cannot host the nested VM: one line, status 75 (scripts/test-vm-lane.mjs says SKIPPED). */
const CANNOT_NEST = 75;
function fail(why) {
  console.error(`nested-kvm: ${why}`);
  process.exit(CANNOT_NEST);
}

function need(tool, pkg) {
  if (spawnSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' }).status !== 0) {
    fail(`${tool} is missing: sudo apt-get install ${pkg}`);
  }
}

/** Debian's kernel (the package linux-image-amd64 depends on) and busybox, unpacked once into the cache. */
function prepare() {
  // The file name carries the init's version: a cache made by an older init is rebuilt.
  const done = join(cache, INITRAMFS);
  if (existsSync(done)) return;
  need('qemu-system-x86_64', 'qemu-system-x86');
  need('cpio', 'cpio');
  rmSync(cache, { recursive: true, force: true });
  mkdirSync(cache, { recursive: true });
  const kernelPackage = () =>
    /Depends: (linux-image-\S+)/.exec(
      spawnSync('apt-cache', ['depends', 'linux-image-amd64'], { encoding: 'utf8' }).stdout ?? '',
    )?.[1];
  // A fresh machine may have no package lists yet: fetch them when allowed to (root), as the test setup does.
  if (!kernelPackage() && process.getuid?.() === 0)
    spawnSync('apt-get', ['update'], { stdio: ['ignore', 'ignore', 'inherit'] });
  const image = kernelPackage();
  if (!image) fail('cannot tell which kernel linux-image-amd64 is: no package lists (sudo apt-get update)');
  const download = spawnSync('apt-get', ['download', image, 'busybox-static'], {
    cwd: cache,
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  if (download.status !== 0) fail(`could not download ${image} and busybox-static from Debian's archive`);
  for (const deb of readdirSync(cache).filter((f) => f.endsWith('.deb')))
    execFileSync('dpkg-deb', ['-x', join(cache, deb), join(cache, 'root')]);
  const boot = join(cache, 'root', 'boot');
  copyFileSync(
    join(
      boot,
      readdirSync(boot).find((f) => f.startsWith('vmlinuz-')),
    ),
    join(cache, 'vmlinuz'),
  );
  const ir = join(cache, 'initramfs');
  for (const d of ['bin', 'mods', 'proc', 'sys', 'dev', 'mnt']) mkdirSync(join(ir, d), { recursive: true });
  copyFileSync(join(cache, 'root', 'bin', 'busybox'), join(ir, 'bin', 'busybox'));
  for (const l of ['sh', 'mount', 'insmod', 'switch_root', 'cat', 'ip']) symlinkSync('busybox', join(ir, 'bin', l));
  const moduleDir = join(cache, 'root', 'lib', 'modules');
  const kernel = join(moduleDir, readdirSync(moduleDir)[0], 'kernel');
  const found = execFileSync('find', [kernel, '-name', '*.ko*'], { encoding: 'utf8' }).trim().split('\n');
  for (const m of MODULES) {
    const file = found.find((f) => f.endsWith(`/${m}.ko`) || f.endsWith(`/${m}.ko.xz`));
    if (!file) throw new Error(`nested-kvm: module ${m} is not in ${image}`);
    copyFileSync(file, join(ir, 'mods', `${m}.ko`));
  }
  writeFileSync(
    join(ir, 'init'),
    [
      '#!/bin/sh',
      'mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev',
      `for m in ${MODULES.join(' ')}; do insmod /mods/$m.ko || echo "nested-kvm: insmod $m failed"; done`,
      'mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,ro host /mnt',
      'mount -t devtmpfs dev /mnt/dev; mount -t proc proc /mnt/proc; mount -t sysfs sys /mnt/sys',
      'mount -t tmpfs tmp /mnt/tmp',
      'mkdir -p /mnt/dev/shm && mount -t tmpfs shm /mnt/dev/shm', // Chromium's shared memory
      // The checkout at its own path, also when it lies under /tmp (a CI clone), which the VM's own /tmp hides.
      '[ -n "$checkout" ] && mkdir -p "/mnt$checkout" && mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,ro checkout "/mnt$checkout"',
      // The one writable host folder: test artifacts (screenshots, firmware logs), for a person to look at.
      '[ -n "$artifacts" ] && mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 artifacts "/mnt$artifacts"',
      // Loopback (the daemon's TCP API, the browser) and QEMU's user-mode network (passt needs an interface
      // with a default route): QEMU's slirp is the gateway, 10.0.2.2.
      'ip link set lo up',
      'ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2',
      // The kernel hands unknown name=value parameters to init as environment variables: $script is ours.
      // switch_root, not chroot: a chrooted process may not create user namespaces, and passt sandboxes itself in
      // one. Busybox is gone after it, so the VM powers off through sysrq.
      'exec switch_root /mnt /bin/sh -c \'sh "$script"; echo "nested-kvm: status $(cat /tmp/status 2>/dev/null)"; ' +
        "echo o > /proc/sysrq-trigger; sleep 60'",
      '',
    ].join('\n'),
  );
  chmodSync(join(ir, 'init'), 0o755);
  execFileSync('sh', [
    '-c',
    `cd '${ir}' && find . | cpio -o -H newc 2>/dev/null | gzip > '${done}.part' && mv '${done}.part' '${done}'`,
  ]);
}

const command = process.argv.slice(2);
const tests = readdirSync(join(root, 'dist', 'test', 'integration'))
  .filter((f) => f.endsWith('.test.js') && !f.startsWith('linux-early-boot'))
  .map((f) => `dist/test/integration/${f}`);
const inner = command.length
  ? command.map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ')
  : `node --test --test-concurrency=1 ${tests.join(' ')}`;
prepare();
// The script the VM runs: on the host's (read-only) file system, where the VM finds it by path.
const script = join(cache, `run-${process.pid}.sh`);
const noQemu = process.env.PARTITA_NO_QEMU ?? '1';
const artifacts = join(root, 'test-artifacts');
mkdirSync(artifacts, { recursive: true });
writeFileSync(
  script,
  `cd '${root}'\nexport HOME=/tmp PARTITA_NO_INSTALL=1 PARTITA_NO_QEMU=${noQemu}\n${inner}\necho $? > /tmp/status\n`,
);
const qemu = spawn(
  'qemu-system-x86_64',
  [
    '-accel',
    'tcg,thread=multi',
    '-cpu',
    'max', // TCG's "max" CPU has SVM: the VM's kvm_amd finds AMD-V
    '-m',
    '6G',
    '-smp',
    '2',
    '-kernel',
    join(cache, 'vmlinuz'),
    '-initrd',
    join(cache, INITRAMFS),
    '-append',
    `console=ttyS0 quiet script=${script} checkout=${root} artifacts=${artifacts}`,
    '-nographic',
    '-no-reboot',
    '-nic',
    'user,model=virtio-net-pci',
    '-virtfs',
    'local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap',
    '-virtfs',
    `local,path=${root},mount_tag=checkout,security_model=none,readonly=on,multidevs=remap`,
    '-virtfs',
    `local,path=${artifacts},mount_tag=artifacts,security_model=none`,
  ],
  { stdio: ['ignore', 'pipe', 'inherit'] },
);
// The guest's status line is read once the VM has ended, from the output's tail: read by read, it can arrive split
// over two reads, or with a kernel message right after its digits.
let tail = '';
qemu.stdout.on('data', (d) => {
  const text = d.toString('latin1');
  tail = (tail + text).slice(-4096);
  // SeaBIOS clears the screen with escape sequences: keep the log plain.
  // eslint-disable-next-line no-control-regex
  process.stdout.write(text.replace(/\x1bc|\x1b\[[0-9;?]*[a-zA-Z]/g, ''));
});
// Stopped from outside (a hang guard, Ctrl-C): the VM goes too.
for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP'])
  process.on(signal, () => {
    qemu.kill('SIGKILL');
    rmSync(script, { force: true });
    process.exit(128 + 15);
  });
qemu.on('close', () => {
  const lines = [...tail.matchAll(/nested-kvm: status (\d+)/g)];
  const status = lines.length ? Number(lines[lines.length - 1][1]) : 1;
  rmSync(script, { force: true });
  process.exit(status);
});
