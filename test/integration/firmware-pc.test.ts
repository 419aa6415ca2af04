// Real firmware on Partita's PC: Debian's SeaBIOS boots Debian's GRUB (build/images/grub.iso, made by
// scripts/build-images.mjs with grub-mkrescue) from the three boot paths — ATAPI CD on AHCI, SATA disk on AHCI,
// virtio-blk — and GRUB's menu appears on the serial port *and* on the VGA screen (the text read from VGA memory,
// and a PNG screenshot kept as an artifact a person can look at). Each path also on QEMU's `pc` machine with the
// same image, the reference. SeaBIOS's log (port 0x402) shows what it found. Runs end as soon as the menu is
// there; timeouts are hang guards only (SeaBIOS POST takes ~25 s under an emulating KVM).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { join } from 'node:path';
import { artifactsDir, haveKvm, isPvm, repoRoot, runPartita, runProgram } from '../support/partita.js';
import { QEMU, QEMU_MISSING, qemuAvailable } from '../support/qemu.js';
import { until } from '../support/daemon.js';
import { buildTestRom, partitaRomArgs, QEMU_DEBUG_EXIT, qemuRomArgs } from '../support/test-rom.js';
import { controlRequest } from '../../src/daemon/vmm-client.js';

const NO_KVM = 'no /dev/kvm on this machine: Partita cannot run a VM here (SKIPPED, not passed)';
const SEABIOS = '/usr/share/seabios/bios-256k.bin';
const GRUB_ISO = join(repoRoot, 'build/images/grub.iso');
const NO_IMAGE = `no GRUB test image (${GRUB_ISO}): apt-get install grub-pc-bin xorriso mtools, then node scripts/build-images.mjs (SKIPPED)`;
const NO_SEABIOS = `no SeaBIOS (${SEABIOS}): apt-get install seabios (SKIPPED)`;
const ARTIFACTS = artifactsDir();
const GUARD_MS = 15 * 60_000;

/** GRUB's menu has been drawn completely on the serial console. */
const menuShown = (out: string): boolean => out.includes('Partita test: second entry');

function skipReason(): string | undefined {
  if (!existsSync(SEABIOS)) return NO_SEABIOS;
  if (!existsSync(GRUB_ISO)) return NO_IMAGE;
  return undefined;
}

interface BootPath {
  readonly name: string;
  readonly partita: (image: string) => string[];
  readonly qemu: (image: string) => string[];
}

const BOOT_PATHS: readonly BootPath[] = [
  {
    name: 'atapi-cd',
    partita: (image) => ['--cdrom', image, '--boot', 'order=cd'],
    qemu: (image) => [
      '-device',
      'ahci,id=ahci',
      '-drive',
      `if=none,id=cd,media=cdrom,readonly=on,file=${image}`,
      '-device',
      'ide-cd,drive=cd,bus=ahci.0',
      '-boot',
      'order=d',
    ],
  },
  {
    name: 'ahci-disk',
    partita: (image) => ['--disk', `${image},if=ahci,readonly`, '--boot', 'order=disk'],
    qemu: (image) => [
      '-device',
      'ahci,id=ahci',
      '-drive',
      `if=none,id=hd,format=raw,file=${image}`,
      '-device',
      'ide-hd,drive=hd,bus=ahci.0',
      '-boot',
      'order=c',
    ],
  },
  {
    name: 'virtio-blk',
    partita: (image) => ['--disk', `${image},readonly`, '--boot', 'order=disk'],
    qemu: (image) => ['-drive', `if=virtio,format=raw,readonly=on,file=${image}`, '-boot', 'order=c'],
  },
];

for (const path of BOOT_PATHS) {
  test(`SeaBIOS boots GRUB from ${path.name}: menu on serial and on the VGA screen`, async (t) => {
    if (!haveKvm) return t.skip(NO_KVM);
    const skip = skipReason();
    if (skip) return t.skip(skip);
    const dir = mkdtempSync(join(tmpdir(), 'partita-fw-'));
    try {
      // A private copy: the image is locked while a VM uses it, and tests run side by side.
      const image = join(dir, 'grub.iso');
      copyFileSync(GRUB_ISO, image);
      const png = join(ARTIFACTS, `firmware-${path.name}.png`);
      const text = join(dir, 'screen.txt');
      const log = join(dir, 'seabios.log');
      rmSync(png, { force: true });
      // GRUB draws its menu on serial first, then on the VGA console: once serial has it, the screen's text is
      // read over the control channel until the menu is there too, and the VM is stopped the same way.
      const control = join(dir, 'control.sock');
      let screenChecked: Promise<string> | undefined;
      const r = await runPartita(
        [
          'run',
          '--bios',
          '--memory',
          '256M',
          ...path.partita(image),
          '--control',
          control,
          '--screenshot',
          png,
          '--screen-text',
          text,
          '--firmware-log',
          log,
        ],
        {
          timeoutMs: GUARD_MS,
          onStdout: (out) => {
            if (screenChecked || !menuShown(out)) return;
            screenChecked = (async () => {
              const text = await until(
                'the menu on the VGA text screen',
                async () => {
                  const a = await controlRequest(control, 'screen-text').catch(() => undefined);
                  return a?.ok && a.text && /Partita test: second entry/.test(a.text) ? a.text : undefined;
                },
                GUARD_MS,
              );
              // GRUB is still padding the entries' coloured rows: the PNG is taken once the screen has settled
              // (two screenshots in a row alike; GRUB then waits for a key).
              let last = '';
              await until(
                'the screen to settle',
                async () => {
                  const a = await controlRequest(control, 'screenshot').catch(() => undefined);
                  const png = a?.ok ? a.png : undefined;
                  const same = png !== undefined && png === last;
                  last = png ?? '';
                  if (!same) await sleep(250);
                  return same;
                },
                GUARD_MS,
              );
              return text;
            })().finally(() => controlRequest(control, 'stop').catch(() => undefined));
            screenChecked.catch(() => undefined); // awaited below, once the VM has ended
          },
        },
      );
      assert.ok(menuShown(r.stdout), `GRUB's menu on serial; stderr: ${r.stderr}`);
      assert.equal(r.status, 0, `stopped through the control channel; stderr: ${r.stderr}`);
      assert.match(await screenChecked!, /Partita test: first entry/, 'the menu on screen, read while it ran');
      copyFileSync(log, join(ARTIFACTS, `firmware-${path.name}.seabios.log`));
      // The same menu on the VGA text screen (read from VGA memory when the VM ended) and in the PNG.
      const screen = readFileSync(text, 'utf8');
      assert.match(screen, /Partita test: first entry/, `VGA text screen:\n${screen}`);
      assert.match(screen, /Partita test: second entry/);
      const bytes = readFileSync(png);
      assert.deepEqual([...bytes.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], 'a PNG');
      assert.ok(bytes.readUInt32BE(16) >= 640 && bytes.readUInt32BE(20) >= 350, 'a text-mode sized screen');
      // SeaBIOS's own account of the machine.
      const seabios = readFileSync(log, 'latin1');
      assert.match(seabios, /Found QEMU fw_cfg/);
      assert.match(seabios, /Running on QEMU \(i440fx\)/);
      assert.match(seabios, /PCI: init bdf=00:00\.0 id=8086:1237/);
      assert.match(seabios, /Running option rom at c000/, 'the VGA option ROM ran');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test(`reference: QEMU's pc machine boots the same image from ${path.name}`, async (t) => {
    if (!qemuAvailable()) return t.skip(QEMU_MISSING);
    const skip = skipReason();
    if (skip) return t.skip(skip);
    const dir = mkdtempSync(join(tmpdir(), 'partita-fw-qemu-'));
    try {
      const image = join(dir, 'grub.iso');
      copyFileSync(GRUB_ISO, image);
      const accel = haveKvm ? ['-enable-kvm'] : ['-accel', 'tcg'];
      const r = await runProgram(
        QEMU,
        [
          '-M',
          'pc',
          ...accel,
          '-m',
          '256',
          '-nodefaults',
          '-vga',
          'std',
          '-display',
          'none',
          '-serial',
          'stdio',
          '-bios',
          SEABIOS,
          ...path.qemu(image),
        ],
        { stopWhen: menuShown, timeoutMs: GUARD_MS },
      );
      assert.ok(menuShown(r.stdout), `QEMU: GRUB's menu on serial; ${r.stderr}`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
}

test('firmware inputs: a missing or corrupt BIOS, a CD that is not ISO 9660, a tiny disk, a writable CD: one line, status 2, nothing written', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'partita-fw-bad-'));
  try {
    const zeros = join(dir, 'zeros.bin');
    writeFileSync(zeros, new Uint8Array(256 * 1024));
    const notIso = join(dir, 'not.iso');
    writeFileSync(notIso, new Uint8Array(64 * 1024).fill(0x41));
    const tiny = join(dir, 'tiny.img');
    writeFileSync(tiny, new Uint8Array(100).fill(7));
    const cases: { args: string[]; error: RegExp; unchanged?: string }[] = [
      {
        args: ['--bios', join(dir, 'missing.bin')],
        error: /^partita: cannot read firmware '.*missing\.bin': no such file$/m,
      },
      { args: ['--bios', zeros], error: /^partita: firmware '.*zeros\.bin' is not a firmware image/m },
      { args: ['--bios', '--cdrom', notIso], error: /not an ISO 9660 image/, unchanged: notIso },
      { args: ['--bios', '--disk', `${tiny},if=ahci`], error: /smaller than a sector|512/, unchanged: tiny },
    ];
    for (const c of cases) {
      const before = c.unchanged ? readFileSync(c.unchanged) : undefined;
      const r = await runPartita(['run', ...c.args, '--serial', 'none']);
      if (!haveKvm && /\/dev\/kvm/.test(r.stderr)) continue; // checked only after KVM opened: nothing to see here
      assert.equal(r.status, 2, `${c.args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, c.error);
      assert.equal(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`);
      if (c.unchanged) assert.deepEqual(readFileSync(c.unchanged), before, 'nothing written');
    }
    // A CD is read-only: a spec that says otherwise is refused before anything opens.
    const spec = join(dir, 'vm.json');
    writeFileSync(
      spec,
      JSON.stringify({
        version: 1,
        cpus: 1,
        memory: 64 << 20,
        boot: { kind: 'firmware', firmware: SEABIOS },
        devices: [{ kind: 'ahci', drives: [{ type: 'cdrom', path: notIso, readonly: false }] }],
      }),
    );
    const r = await runPartita(['run', '--spec', spec, '--serial', 'none']);
    assert.equal(r.status, 2, r.stderr);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('--bios without seabios installed names the package', (t) => {
  if (existsSync(SEABIOS)) return t.skip('seabios is installed: the message for a missing one cannot be seen here');
  const r = spawnSync(process.execPath, [join(repoRoot, 'bin/partita.js'), 'run', '--bios'], { encoding: 'utf8' });
  assert.equal(r.status, 2);
  assert.match(r.stderr, /apt-get install seabios/);
});

/** Runs test/firmware/NAME.S alone on QEMU's `pc` machine: the status it reported through isa-debug-exit. */
function romOnQemu(name: string, accel: readonly string[]): { status: number | null; stderr: string } {
  const dir = mkdtempSync(join(tmpdir(), `partita-${name}-`));
  try {
    const r = spawnSync(QEMU, [...qemuRomArgs(buildTestRom(name, dir), accel), ...QEMU_DEBUG_EXIT], {
      encoding: 'utf8',
      timeout: GUARD_MS,
    });
    return { status: r.status, stderr: r.stderr };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

// test/firmware/pm-interrupt.S: a 32-bit protected-mode INT n and its handler's IRET, which iPXE's timer interrupt
// needs. PVM's instruction emulator cannot run them (the developers' guide lists "32-bit protected-mode IRET";
// QEMU -enable-kvm stops at the same instruction), so there the probe tells why the network boot cannot be seen.
const PM_INTERRUPT_OK = (0x21 << 1) | 1;

let pmProbe: Promise<string | undefined> | undefined;

/**
 * Runs the probe on Partita (once per file: the probe test and the network-boot test share its answer): undefined
 * when the interrupt round trip works, else what happened instead.
 */
function protectedModeInterruptFailure(): Promise<string | undefined> {
  pmProbe ??= (async () => {
    const dir = mkdtempSync(join(tmpdir(), 'partita-pm-'));
    try {
      // A probe of a few hundred instructions: the default hang guard is plenty, and a probe that never answers
      // is a result too (the caller decides whether that is a failure).
      const r = await runPartita(partitaRomArgs(buildTestRom('pm-interrupt', dir))).catch((e: Error) => e);
      if (r instanceof Error) return `no answer: ${r.message.split('\n')[0]}`;
      if (r.status === PM_INTERRUPT_OK) return undefined;
      return `status ${r.status}: ${r.stderr.split('\n').find((l) => l.trim()) ?? '(nothing on stderr)'}`;
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  })();
  return pmProbe;
}

const pmInterruptSkip = (failure: string): string =>
  `SKIPPED, not passed: this KVM cannot run a 32-bit protected-mode interrupt (PVM's instruction emulator; ` +
  `QEMU -enable-kvm stops at the same IRET), which iPXE's timer needs: test/firmware/pm-interrupt.S on Partita ended with ${failure}`;

test('protected-mode interrupt probe (INT n, IRET): reference on QEMU (TCG)', (t) => {
  if (!qemuAvailable()) return t.skip(QEMU_MISSING);
  const r = romOnQemu('pm-interrupt', ['-accel', 'tcg']);
  assert.equal(r.status, PM_INTERRUPT_OK, `QEMU: ${r.stderr}`);
});

test('protected-mode interrupt probe (INT n, IRET): Partita', async (t) => {
  if (!haveKvm) return t.skip(NO_KVM);
  const failure = await protectedModeInterruptFailure();
  // Only PVM's emulator is known not to run it; anywhere else a failure is Partita's.
  if (failure && isPvm) return t.skip(pmInterruptSkip(failure));
  assert.equal(failure, undefined, 'the probe reports the interrupt handled and returned from');
});

test('network boot: iPXE (virtio-net option ROM) gets a DHCP lease from passt', async (t) => {
  if (!haveKvm) return t.skip(NO_KVM);
  if (!existsSync(SEABIOS)) return t.skip(NO_SEABIOS);
  if (!existsSync('/usr/lib/ipxe/qemu/pxe-virtio.rom'))
    return t.skip('no iPXE ROM (/usr/lib/ipxe/qemu/pxe-virtio.rom): apt-get install ipxe-qemu (SKIPPED)');
  if (spawnSync('passt', ['--version'], { stdio: 'ignore' }).error)
    return t.skip('no passt: apt-get install passt (SKIPPED)');
  if (isPvm) {
    const failure = await protectedModeInterruptFailure();
    if (failure) return t.skip(pmInterruptSkip(failure));
  }
  // Without a display SeaBIOS mirrors the BIOS console (and so iPXE's messages) to COM1.
  const leased = (out: string): boolean => /Configuring \(net0 [0-9a-f:]+\)[. ]*ok/.test(out);
  const r = await runPartita(
    ['run', '--bios', '--display', 'none', '--memory', '256M', '--net', 'user', '--boot', 'order=net'],
    {
      stopWhen: leased,
      timeoutMs: GUARD_MS,
    },
  );
  assert.ok(leased(r.stdout), `iPXE's DHCP on the serial console:\n${r.stdout.slice(-2000)}\n${r.stderr}`);
  assert.match(r.stdout, /iPXE/);
});

const RESET_WAYS_STATUS = (4 << 1) | 1;

test('guest reset reboots the PC (port 0x92, 0xCF9, i8042 0xFE), CMOS RAM survives: reference on QEMU', (t) => {
  if (!qemuAvailable()) return t.skip(QEMU_MISSING);
  const r = romOnQemu('reset-ways', haveKvm ? ['-enable-kvm'] : ['-accel', 'tcg']);
  assert.equal(r.status, RESET_WAYS_STATUS, `QEMU: ${r.stderr}`);
});

test('guest reset reboots the PC (port 0x92, 0xCF9, i8042 0xFE), CMOS RAM survives: Partita', async (t) => {
  if (!haveKvm) return t.skip(NO_KVM);
  const dir = mkdtempSync(join(tmpdir(), 'partita-reset-'));
  try {
    const r = await runPartita(partitaRomArgs(buildTestRom('reset-ways', dir)), { timeoutMs: GUARD_MS });
    assert.equal(r.status, RESET_WAYS_STATUS, r.stderr);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
