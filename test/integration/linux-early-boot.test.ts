// Linux's own early code as a client: Debian's cloud kernel (bzImage, from the `partita image demo` cache) booted
// by the Linux boot protocol with 16 vCPUs. Its log must show our command line, our memory map, our ACPI tables
// and all 16 CPUs. The run ends as soon as those lines are there: on this workplace's emulated (PVM) KVM the kernel
// would go on only to the INT3 of its alternatives self-test (reporting that stop is checked with a test guest in
// run-guests.test.ts), on hardware KVM it would boot on. The time it takes is never checked: a generous hang
// guard only bounds a run that would never get there, and then reports which lines were missing.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { buildDemoImage, DemoImageError, type DemoImage } from '../../src/demo-guest/demo.js';
import { guestMemoryMap, PCI_ECAM_BASE, PCI_ECAM_SIZE } from '../../src/arch/x86_64/layout.js';
import { HangError, haveKvm, isPvm, lastLines, runPartita, type RunResult } from '../support/partita.js';

const CPUS = 16;
const MEMORY = 1024 * 1024 * 1024;
const CMDLINE = 'console=ttyS0 earlyprintk=serial,ttyS0,115200 noxsave';
/** Only ends a boot that stopped making progress; a quiet machine has every checked line within ~2 minutes. */
const BOOT_HANG_GUARD_MS = 20 * 60_000;

async function demoImage(): Promise<DemoImage | string> {
  try {
    return await buildDemoImage();
  } catch (e) {
    if (e instanceof DemoImageError) return `SKIPPED: cannot get Debian's kernel (${e.message})`;
    throw e;
  }
}

/** What the kernel log must show, each as a check on the whole log so far. */
function earlyBootChecks(): { readonly what: string; readonly seen: (log: string) => boolean }[] {
  const line = (what: string, re: RegExp): { what: string; seen: (log: string) => boolean } => ({
    what,
    seen: (log) => re.test(log),
  });
  const e820 = guestMemoryMap(MEMORY, [{ base: PCI_ECAM_BASE, size: PCI_ECAM_SIZE }]).map((e) => {
    const end = (e.base + e.size - 1).toString(16).padStart(16, '0');
    const text = `BIOS-e820: [mem 0x${e.base.toString(16).padStart(16, '0')}-0x${end}] ${e.type === 1 ? 'usable' : 'reserved'}`;
    return { what: text, seen: (log: string) => log.includes(text) };
  });
  return [
    line('Linux version', /Linux version 6\.\d+\.\d+/),
    { what: `Command line: ${CMDLINE}`, seen: (log) => log.includes(`Command line: ${CMDLINE}`) },
    ...e820,
    ...['RSDP', 'XSDT', 'FACP', 'DSDT', 'APIC'].map((sig) =>
      line(`ACPI: ${sig} in 0xE0000-0xEFFFF`, new RegExp(`ACPI: ${sig} 0x00000000000E[0-9A-F]{4}`)),
    ),
    line(`smpboot: Allowing ${CPUS} CPUs`, new RegExp(`smpboot: Allowing ${CPUS} CPUs`)),
  ];
}

test(
  'Linux early boot: command line, e820 map, ACPI tables and 16 CPUs from the kernel log',
  // The kernel's early code runs in KVM's instruction emulator here (minutes on a busy machine).
  { skip: !haveKvm && 'no /dev/kvm', timeout: 2 * BOOT_HANG_GUARD_MS },
  async (t) => {
    const image = await demoImage();
    if (typeof image === 'string') {
      t.skip(image);
      return;
    }
    const checks = earlyBootChecks();
    const missing = (log: string): string[] => checks.filter((c) => !c.seen(log)).map((c) => c.what);
    let r: RunResult;
    try {
      r = await runPartita(
        [
          'run',
          '--kernel',
          image.kernel,
          '--initrd',
          image.initramfs,
          '--cpus',
          String(CPUS),
          '--memory',
          '1G',
          '--cpu',
          'compat',
          '--cmdline',
          CMDLINE,
        ],
        { timeoutMs: BOOT_HANG_GUARD_MS, stopWhen: (out) => missing(out).length === 0 },
      );
    } catch (e) {
      if (e instanceof HangError) assert.fail(`not seen: ${missing(e.stdout).join('; ')}\n${e.message}`);
      throw e;
    }
    t.diagnostic(
      `kernel printed ${r.stdout.split('\n').length - 1} lines in ${(r.ms / 1000).toFixed(1)} s` +
        (r.stoppedEarly ? ' (stopped once every checked line was there)' : `; partita: ${r.stderr.split('\n')[0]}`),
    );
    assert.deepEqual(
      missing(r.stdout),
      [],
      `the VM ended (status ${r.status}) before the kernel printed them:\n${lastLines(r.stdout, 40)}\n${r.stderr}`,
    );
    assert.equal(r.stoppedEarly, true);
  },
);

test('Linux to a shell prompt with all vCPUs (needs hardware KVM)', { timeout: 2 * BOOT_HANG_GUARD_MS }, async (t) => {
  if (isPvm) {
    t.skip(
      'SKIPPED: /sys/module/kvm_pvm exists: this KVM emulates guest instructions and cannot run a Linux kernel to userspace',
    );
    return;
  }
  if (!haveKvm) {
    t.skip('SKIPPED: no /dev/kvm');
    return;
  }
  const image = await demoImage();
  if (typeof image === 'string') {
    t.skip(image);
    return;
  }
  let sent = false;
  const r = await runPartita(
    [
      'run',
      '--kernel',
      image.kernel,
      '--initrd',
      image.initramfs,
      '--cpus',
      '4',
      '--memory',
      '1G',
      '--cmdline',
      image.cmdline,
    ],
    {
      keepStdinOpen: true,
      timeoutMs: BOOT_HANG_GUARD_MS,
      stopWhen: (out) => /NPROC=\d+\r?\n/.test(out),
      onStdout: (out, write) => {
        if (!sent && /Partita demo guest: Linux .*, 4 CPUs/.test(out)) {
          sent = true;
          write('echo NPROC=$(nproc); poweroff -f\n');
        }
      },
    },
  );
  assert.match(r.stdout, /NPROC=4/);
});
