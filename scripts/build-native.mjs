#!/usr/bin/env node
// Builds the native layer (src/native/partita_native.c) into build/partita_native.node with the system C
// compiler. Node-API headers come from the node-api-headers npm package, so neither node-gyp, python nor a
// download of Node's headers is needed: only gcc. Run by `npm install`/`npm ci` and again whenever the source
// is newer than the binary.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const source = join(root, 'src/native/partita_native.c');
const output = join(root, 'build/partita_native.node');

if (process.platform !== 'linux' || process.arch !== 'x64') {
  console.error(`partita: KVM on x86-64 Linux is required (this is ${process.platform}/${process.arch}).`);
  process.exit(1);
}
const cc = process.env.CC || 'gcc';
if (spawnSync(cc, ['--version'], { stdio: 'ignore' }).status !== 0) {
  console.error(
    `partita: no C compiler (${cc}) found; it builds the native layer and the test guests.\n` +
      '  Install it with:  sudo apt-get install gcc libc6-dev',
  );
  process.exit(1);
}
if (existsSync(output) && statSync(output).mtimeMs >= statSync(source).mtimeMs && !process.argv.includes('--force')) {
  process.exit(0);
}
const require = createRequire(import.meta.url);
const headers = join(dirname(require.resolve('node-api-headers/package.json')), 'include');
mkdirSync(dirname(output), { recursive: true });
execFileSync(
  cc,
  [
    '-O2',
    '-Wall',
    '-Wextra',
    '-Wno-unused-parameter',
    '-fPIC',
    '-shared',
    '-DNAPI_VERSION=8',
    '-I',
    headers,
    '-o',
    output,
    source,
    '-lpthread',
    '-lrt',
  ],
  { stdio: 'inherit' },
);
