// Checks every ioctl number, constant, struct size and field offset in src/kvm/abi.ts against the kernel
// headers installed on this machine, by compiling and running a C program that prints them.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  allLayouts,
  caps,
  exitReasons,
  ioctls,
  mpStates,
  internalErrorSuberrors,
  systemEventTypes,
} from '../../src/kvm/abi.js';

const HEADER = '/usr/include/linux/kvm.h';

function headerValues(): Map<string, number> {
  const lines: string[] = [];
  const emit = (key: string, expr: string): void => {
    lines.push(`  printf("%s %llu\\n", "${key}", (unsigned long long)(${expr}));`);
  };
  // Constants newer than the installed header (e.g. KVM_EXIT_MEMORY_FAULT, Linux 6.8) are reported as absent.
  const emitMacro = (name: string): void => {
    lines.push(`#ifdef ${name}`);
    emit(name, name);
    lines.push('#else', `  printf("%s absent\\n", "${name}");`, '#endif');
  };
  for (const name of Object.keys(ioctls)) emitMacro(name);
  for (const table of [caps, exitReasons, mpStates, internalErrorSuberrors, systemEventTypes]) {
    for (const name of Object.keys(table)) emitMacro(name);
  }
  for (const l of allLayouts) {
    emit(`sizeof ${l.name}`, `sizeof(struct ${l.name})`);
    for (const [field, f] of Object.entries(l.fields)) {
      emit(`offsetof ${l.name}.${field}`, `offsetof(struct ${l.name}, ${field})`);
      emit(`sizeof ${l.name}.${field}`, `sizeof(((struct ${l.name} *)0)->${field})`);
      void f;
    }
  }
  const dir = mkdtempSync(join(tmpdir(), 'partita-abi-'));
  try {
    const src = join(dir, 'abi.c');
    writeFileSync(
      src,
      `#include <stdio.h>\n#include <stddef.h>\n#include <linux/kvm.h>\nint main(void) {\n${lines.join('\n')}\n  return 0;\n}\n`,
    );
    execFileSync('gcc', ['-o', join(dir, 'abi'), src]);
    const out = execFileSync(join(dir, 'abi'), { encoding: 'utf8' });
    return new Map(
      out
        .trim()
        .split('\n')
        .map((line) => {
          const i = line.lastIndexOf(' ');
          return [line.slice(0, i), line.slice(i + 1) === 'absent' ? NaN : Number(line.slice(i + 1))] as [
            string,
            number,
          ];
        }),
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('KVM ABI matches <linux/kvm.h>', (t) => {
  if (!existsSync(HEADER)) {
    t.skip(`${HEADER} missing: sudo apt-get install linux-libc-dev`);
    return;
  }
  const values = headerValues();
  const mismatches: string[] = [];
  const absent: string[] = [];
  const expect = (key: string, ours: number): void => {
    const theirs = values.get(key);
    if (Number.isNaN(theirs)) absent.push(key);
    else if (theirs !== ours) mismatches.push(`${key}: ours ${ours}, header ${theirs}`);
  };
  for (const [name, value] of Object.entries(ioctls)) expect(name, value);
  for (const table of [caps, exitReasons, mpStates, internalErrorSuberrors, systemEventTypes]) {
    for (const [name, value] of Object.entries(table)) expect(name, value);
  }
  let checked = 0;
  for (const l of allLayouts) {
    expect(`sizeof ${l.name}`, l.size);
    for (const [field, f] of Object.entries(l.fields)) {
      expect(`offsetof ${l.name}.${field}`, f.offset);
      expect(`sizeof ${l.name}.${field}`, f.size);
      checked++;
    }
  }
  assert.deepEqual(mismatches, []);
  if (absent.length) t.diagnostic(`newer than ${HEADER}, not checked: ${absent.join(', ')}`);
  assert.ok(absent.length < 5, `too many constants missing from the header: ${absent.join(', ')}`);
  assert.ok(checked > 100, `checked ${checked} fields`);
});
