#!/usr/bin/env node
// Builds the test guests (test/guests/*.c + the runtime) into build/guests/<name>.pvh.elf and <name>.mb.elf
// with the system gcc and binutils: 64-bit freestanding C (general registers only), a 32-bit entry stub, linked
// at 1 MiB, converted to ELF32 (what PVH and multiboot v1 loaders take). Rebuilds only what is out of date.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const src = join(root, 'test/guests');
const out = join(root, 'build/guests');
const force = process.argv.includes('--force');

for (const tool of ['gcc', 'ld', 'objcopy']) {
  if (spawnSync(tool, ['--version'], { stdio: 'ignore' }).status !== 0) {
    console.error(
      `partita: ${tool} is missing; the test guests need it.\n  Install with:  sudo apt-get install gcc binutils libc6-dev`,
    );
    process.exit(1);
  }
}

const CFLAGS = [
  '-O2',
  '-m64',
  '-march=x86-64',
  '-mgeneral-regs-only',
  '-mno-red-zone',
  '-ffreestanding',
  '-fno-pic',
  '-fno-pie',
  '-fno-stack-protector',
  '-fno-asynchronous-unwind-tables',
  '-fcf-protection=none',
  '-nostdlib',
  '-mcmodel=small',
  '-Wall',
  '-Wextra',
  '-Werror',
];
const runtimeDir = join(src, 'runtime');
const runtimeSources = readdirSync(runtimeDir).map((f) => join(runtimeDir, f));
// Shared driver code (test/guests/lib/*.c, e.g. the mini virtio-pci driver) is linked into every guest.
const libDir = join(src, 'lib');
const libSources = existsSync(libDir) ? readdirSync(libDir).map((f) => join(libDir, f)) : [];
const libC = libSources.filter((f) => f.endsWith('.c'));
const guests = readdirSync(src)
  .filter((f) => f.endsWith('.c'))
  .map((f) => f.slice(0, -2));
const newest = (files) => Math.max(...files.map((f) => statSync(f).mtimeMs));
const tmp = join(out, 'obj');
mkdirSync(tmp, { recursive: true });

const run = (cmd, args) => execFileSync(cmd, args, { stdio: ['ignore', 'inherit', 'inherit'] });
let built = 0;
for (const format of ['pvh', 'mb']) {
  const define = format === 'pvh' ? '-DPVH' : '-DMULTIBOOT';
  const entryObj = join(tmp, `entry-${format}.o`);
  const runtimeObj = join(tmp, 'runtime.o');
  for (const name of guests) {
    const target = join(out, `${name}.${format}.elf`);
    const inputs = [join(src, `${name}.c`), ...runtimeSources, ...libSources, fileURLToPath(import.meta.url)];
    // Guests that start application processors also link the real-mode trampoline.
    const extra = name.startsWith('smp') ? [join(tmp, 'trampoline.o')] : [];
    if (!force && existsSync(target) && statSync(target).mtimeMs >= newest(inputs)) continue;
    run('gcc', [...CFLAGS, define, '-c', join(runtimeDir, 'entry.S'), '-o', entryObj]);
    run('gcc', [...CFLAGS, '-c', join(runtimeDir, 'runtime.c'), '-o', runtimeObj]);
    if (extra.length) run('gcc', [...CFLAGS, '-c', join(runtimeDir, 'trampoline.S'), '-o', extra[0]]);
    const libObjs = libC.map((c) => join(tmp, `lib-${c.slice(libDir.length + 1, -2)}.o`));
    libC.forEach((c, i) => run('gcc', [...CFLAGS, '-c', c, '-o', libObjs[i]]));
    const obj = join(tmp, `${name}.o`);
    const elf64 = join(tmp, `${name}.${format}.elf64`);
    run('gcc', [...CFLAGS, '-c', join(src, `${name}.c`), '-o', obj]);
    run('ld', [
      '-m',
      'elf_x86_64',
      '-nostdlib',
      '-z',
      'max-page-size=0x1000',
      '-z',
      'noexecstack',
      '--no-warn-rwx-segments',
      '-T',
      join(runtimeDir, 'link.ld'),
      '-o',
      elf64,
      entryObj,
      runtimeObj,
      ...extra,
      obj,
      ...libObjs,
    ]);
    run('objcopy', ['-O', 'elf32-i386', elf64, target]);
    built++;
  }
}
if (built) console.log(`partita: built ${built} test guest images in build/guests`);
