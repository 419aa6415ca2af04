// The machine spec end to end, and the two boot strategies. Flags → spec → VM must be the same VM as flags → VM
// (same guest output, same status). Firmware boot: a 64 KiB ROM whose reset vector reads a ROM byte, tries to
// overwrite it (a ROM ignores writes), reads it again and reports it through isa-debug-exit — on Partita and,
// as the reference, on QEMU's PC with the same image as its BIOS.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { guest, haveKvm, runPartita } from '../support/partita.js';
import { QEMU, QEMU_MISSING, qemuAvailable } from '../support/qemu.js';

const NO_KVM = 'no /dev/kvm on this machine: Partita cannot run a VM here (SKIPPED, not passed)';

/** 64 KiB: at 0xFF00 the byte 0x21; the reset vector (0xFFF0) jumps to a probe at 0xFF10. */
function probeRom(): Uint8Array {
  const rom = new Uint8Array(64 * 1024).fill(0xff);
  rom[0xff00] = 0x21;
  const code = [
    0x2e,
    0xc6,
    0x06,
    0x00,
    0xff,
    0x33, // mov byte [cs:0xff00], 0x33  — a write to ROM: must be dropped
    0x2e,
    0xa0,
    0x00,
    0xff, //             mov al, [cs:0xff00]
    0xe6,
    0xf4, //                         out 0xf4, al                 — isa-debug-exit: status (al << 1) | 1
    0xf4, //                               hlt
  ];
  rom.set(code, 0xff10);
  // jmp near 0xff10 from 0xfff0 (E9 rel16, relative to the next instruction at 0xfff3)
  const rel = (0xff10 - 0xfff3) & 0xffff;
  rom.set([0xe9, rel & 0xff, rel >> 8], 0xfff0);
  return rom;
}
const ROM_UNCHANGED_STATUS = (0x21 << 1) | 1;

test('firmware boot: the probe ROM reference on QEMU (ROM at the reset vector ignores writes)', (t) => {
  if (!qemuAvailable()) return t.skip(QEMU_MISSING);
  const dir = mkdtempSync(join(tmpdir(), 'partita-rom-'));
  try {
    const rom = join(dir, 'probe.rom');
    writeFileSync(rom, probeRom());
    const accel = haveKvm ? [] : ['-accel', 'tcg'];
    const r = spawnSync(
      QEMU,
      [
        '-M',
        'pc',
        ...accel,
        '-nodefaults',
        '-display',
        'none',
        '-bios',
        rom,
        '-device',
        'isa-debug-exit,iobase=0xf4,iosize=4',
      ],
      { timeout: 120_000 },
    );
    assert.equal(r.status, ROM_UNCHANGED_STATUS, `QEMU exit status ${r.status}: ${r.stderr}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('firmware boot: Partita maps the ROM read-only below 4 GiB and starts at the reset vector', async (t) => {
  if (!haveKvm) return t.skip(NO_KVM);
  const dir = mkdtempSync(join(tmpdir(), 'partita-rom-'));
  try {
    const rom = join(dir, 'probe.rom');
    writeFileSync(rom, probeRom());
    const spec = join(dir, 'vm.json');
    writeFileSync(
      spec,
      JSON.stringify({ version: 1, cpus: 1, memory: 64 << 20, boot: { kind: 'firmware', firmware: rom }, devices: [] }),
    );
    const r = await runPartita(['run', '--spec', spec], { timeoutMs: 120_000 });
    assert.equal(r.status, ROM_UNCHANGED_STATUS, r.stderr);
    writeFileSync(join(dir, 'odd.rom'), new Uint8Array(1000));
    writeFileSync(
      spec,
      JSON.stringify({
        version: 1,
        cpus: 1,
        memory: 64 << 20,
        boot: { kind: 'firmware', firmware: join(dir, 'odd.rom') },
        devices: [],
      }),
    );
    const bad = await runPartita(['run', '--spec', spec]);
    assert.equal(bad.status, 2);
    assert.match(bad.stderr, /^partita: firmware '.*odd\.rom' is 1000 bytes: a firmware image is whole 4 KiB pages/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('machine spec round trip: flags → spec → VM is the VM the flags make', async (t) => {
  if (!haveKvm) return t.skip(NO_KVM);
  const dir = mkdtempSync(join(tmpdir(), 'partita-spec-'));
  try {
    const cases: string[][] = [
      ['--kernel', guest('hello'), '--cmdline', 'exit=5'],
      ['--kernel', guest('virtio-rng'), '--rng', '--cpus', '2', '--memory', '256M'],
      ['--kernel', guest('smp'), '--cpus', '4', '--topology', 'sockets=2,cores=2,threads=1'],
    ];
    for (const flags of cases) {
      const printed = await runPartita(['spec', ...flags]);
      assert.equal(printed.status, 0, printed.stderr);
      const file = join(dir, 'vm.json');
      writeFileSync(file, printed.stdout);
      const direct = await runPartita(['run', ...flags], { timeoutMs: 300_000 });
      const viaSpec = await runPartita(['run', '--spec', file], { timeoutMs: 300_000 });
      assert.equal(viaSpec.status, direct.status, `${flags.join(' ')}: ${viaSpec.stderr}`);
      // The rng guest prints the random bytes it got: those differ by design, the rest must not.
      const same = (out: string): string => out.replace(/^(rng: [^:\n]*:)[0-9a-f]+$/gm, '$1<random>');
      assert.equal(same(viaSpec.stdout), same(direct.stdout), `${flags.join(' ')}: the guest saw the same machine`);
      assert.ok(direct.stdout.length > 0, 'the guest printed something');
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
