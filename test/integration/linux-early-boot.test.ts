// Linux's own early code as a client: Debian's cloud kernel (bzImage) booted by the Linux boot protocol with
// 16 vCPUs. Its log must show our command line, our memory map, our ACPI tables and all 16 CPUs. On this
// workplace's emulated (PVM) KVM the kernel then stops at an instruction KVM's emulator cannot run; that stop
// must be reported as such (exit reason and instruction bytes) and come in bounded time. On hardware KVM the
// kernel boots on, and the test stops it once the checked lines are there.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { buildDemoImage, DemoImageError, type DemoImage } from '../../src/demo-guest/demo.js';
import { guestMemoryMap, PCI_ECAM_BASE, PCI_ECAM_SIZE } from '../../src/arch/x86_64/layout.js';
import { haveKvm, isPvm, runPartita } from '../support/partita.js';

const CPUS = 16;
const MEMORY = 1024 * 1024 * 1024;
const CMDLINE = 'console=ttyS0 earlyprintk=serial,ttyS0,115200 noxsave';

async function demoImage(): Promise<DemoImage | string> {
  try {
    return await buildDemoImage();
  } catch (e) {
    if (e instanceof DemoImageError) return `SKIPPED: cannot get Debian's kernel (${e.message})`;
    throw e;
  }
}

test(
  'Linux early boot: command line, e820 map, ACPI tables and 16 CPUs from the kernel log',
  { skip: !haveKvm && 'no /dev/kvm', timeout: 240_000 },
  async (t) => {
    const image = await demoImage();
    if (typeof image === 'string') {
      t.skip(image);
      return;
    }
    const wanted = /smpboot: Allowing 16 CPUs/;
    const r = await runPartita(
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
      {
        timeoutMs: 200_000,
        keepStdinOpen: true,
        // On hardware KVM the kernel boots on into the demo initramfs: power it off from its shell.
        onStdout: (out, write) => {
          if (!isPvm && /Partita demo guest/.test(out)) write('poweroff -f\n');
        },
      },
    );
    const log = r.stdout;
    t.diagnostic(
      `kernel printed ${log.split('\n').length} lines in ${(r.ms / 1000).toFixed(1)} s; partita: ${r.stderr.split('\n')[0]}`,
    );
    assert.match(log, /Linux version 6\.\d+\.\d+/);
    assert.match(log, new RegExp(`Command line: ${CMDLINE}`));
    for (const e of guestMemoryMap(MEMORY, [{ base: PCI_ECAM_BASE, size: PCI_ECAM_SIZE }])) {
      const end = (e.base + e.size - 1).toString(16).padStart(16, '0');
      const line = `BIOS-e820: [mem 0x${e.base.toString(16).padStart(16, '0')}-0x${end}] ${e.type === 1 ? 'usable' : 'reserved'}`;
      assert.ok(log.includes(line), `missing: ${line}`);
    }
    for (const sig of ['RSDP', 'XSDT', 'FACP', 'DSDT', 'APIC'])
      assert.match(log, new RegExp(`ACPI: ${sig} 0x00000000000E[0-9A-F]{4}`), sig);
    assert.match(log, wanted);
    assert.equal(r.timedOut, false, 'the run ends in bounded time');
    if (isPvm) {
      assert.equal(r.status, 3, r.stderr);
      assert.match(
        r.stderr,
        /KVM internal error: KVM's instruction emulator could not run a guest instruction \(emulation failure\)/,
      );
      assert.match(r.stderr, /Code at RIP \(guest-physical 0x[0-9a-f]+\): ([0-9a-f]{2} ){15}[0-9a-f]{2}/);
    }
  },
);

test('Linux to a shell prompt with all vCPUs (needs hardware KVM)', { timeout: 300_000 }, async (t) => {
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
      timeoutMs: 240_000,
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
