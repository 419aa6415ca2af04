// The loaders on images from the real toolchain: the test guests built by scripts/build-guests.mjs (gcc + ld +
// objcopy), as PVH ELF32, multiboot ELF32 and their ELF64 intermediates. Skipped when the guests are not built.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseElf, loadSegments } from '../../src/boot/elf.js';
import { MIB } from '../../src/base/units.js';
import { bootHarness } from '../support/elf-builder.js';

// dist/test/unit/ → the repository root.
const root = join(dirname(fileURLToPath(import.meta.url)), '../../..');
const guests = join(root, 'build/guests');
const skip = existsSync(join(guests, 'hello.pvh.elf'))
  ? false
  : 'test guests not built (node scripts/build-guests.mjs)';
const h = bootHarness(64 * MIB);
after(() => h.release());

function checkSegments(name: string, image: Uint8Array): void {
  for (const s of loadSegments(parseElf(image, name))) {
    assert.deepEqual(
      h.memory.read(s.paddr, s.filesz),
      image.subarray(s.offset, s.offset + s.filesz),
      `${name} segment ${s.index}`,
    );
    assert.ok(
      h.memory.read(s.paddr + s.filesz, s.memsz - s.filesz).every((b) => b === 0),
      `${name} segment ${s.index} bss`,
    );
  }
}

test('real guests: hello.pvh.elf boots by PVH, hello.mb.elf by multiboot', { skip }, () => {
  const pvh = new Uint8Array(readFileSync(join(guests, 'hello.pvh.elf')));
  const e1 = h.load(pvh, { name: 'hello.pvh.elf', cmdline: 'exit=0' });
  assert.equal(e1.protocol, 'pvh');
  assert.equal(e1.kernelRange.start, 0x100000);
  checkSegments('hello.pvh.elf', pvh);

  const mb = new Uint8Array(readFileSync(join(guests, 'hello.mb.elf')));
  const e2 = h.load(mb, { name: 'hello.mb.elf', cmdline: 'exit=0' });
  assert.equal(e2.protocol, 'multiboot');
  assert.equal(e2.eax, 0x2badb002);
  assert.equal(h.memory.readCString(h.memory.readU32(e2.ebx + 16)), 'hello.mb.elf exit=0');
  checkSegments('hello.mb.elf', mb);
});

test('real guests: the ELF64 intermediates: PVH loads, multiboot is refused with the objcopy hint', { skip }, (t) => {
  const pvh64 = join(guests, 'obj/hello.pvh.elf64');
  const mb64 = join(guests, 'obj/hello.mb.elf64');
  const missing = [pvh64, mb64].filter((p) => !existsSync(p));
  if (missing.length > 0) {
    t.skip(
      `SKIPPED: ${missing.join(', ')} missing: run node scripts/build-guests.mjs (it keeps them in build/guests/obj)`,
    );
    return;
  }
  const image = new Uint8Array(readFileSync(pvh64));
  assert.equal(h.load(image, { name: 'hello.pvh.elf64' }).protocol, 'pvh');
  checkSegments('hello.pvh.elf64', image);
  h.rejects(new Uint8Array(readFileSync(mb64)), /objcopy -O elf32-i386/, { name: 'hello.mb.elf64' });
});
