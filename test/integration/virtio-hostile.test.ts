// A hostile guest driver against Partita's virtio devices, end to end from inside a VM (test/guests/virtio-hostile.c,
// virtio 1.2 §2.7 split virtqueues, §4.1.4.3 common configuration, §5.2.6 block requests, §2.1.2 and §2.4
// DEVICE_NEEDS_RESET and reset), and virtio-pci INTx with MSI-X off (test/guests/virtio-intx.c, §4.1.4.5 ISR
// status, through a level-triggered IOAPIC pin).
//
// Every hostile case is its own VM run (case=NAME on the guest's command line), so each meets a fresh device. The
// guest posts one malformed request or queue configuration, prints how the device reacted, then resets it,
// initialises it again and reads sector 0 the correct way. Here we check the lines it printed, its exit status
// (the VMM kept running: the guest finished and exited through the debug port), that the disk image is byte for
// byte what it was, and that Partita said on stderr why the device needed a reset.
//
// QEMU runs a case too when the spec defines the outcome and QEMU 7.2 (microvm, PCIe) meets it; there the lines
// must be the same. Where QEMU does something else the spec does not forbid, or something a driver cannot rely on,
// the case runs on Partita only and the comment says what QEMU does (observed with QEMU 7.2).
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { guest, haveKvm, isPvm, runPartita } from '../support/partita.js';
import { QEMU_MISSING, qemuAvailable, runOnQemu } from '../support/qemu.js';
import { SECTOR0, sectorChecksum, sha256File } from '../support/test-disk.js';

type Vmm = 'qemu' | 'partita';
const haveQemu = qemuAvailable();
const skipFor: Record<Vmm, string | false> = {
  qemu: !haveKvm ? 'no /dev/kvm' : !haveQemu ? QEMU_MISSING : false,
  partita: !haveKvm ? 'no /dev/kvm' : false,
};

const work = mkdtempSync(join(tmpdir(), 'partita-hostile-'));
after(() => rmSync(work, { recursive: true, force: true }));

const OK_STATUS = 1; // the guest's exit(0) through the debug port: (0 << 1) | 1
/** Both VMMs get the same RAM, so the guest's addresses (end of RAM) are the same. */
const MEMORY = '512M';

interface GuestRun {
  readonly output: string;
  readonly status: number | null;
  readonly stderr: string;
  /** sha256 of the disk image before and after the run (blk guests). */
  readonly imageBefore?: string;
  readonly imageAfter?: string;
}

const show = (r: GuestRun): string =>
  `status ${r.status}\n--- guest output ---\n${r.output}--- stderr ---\n${r.stderr}`;

/** Lines any VMM that behaves the same prints alike: "info:" lines carry addresses and BAR placement. */
const comparable = (output: string): string[] => output.split('\n').filter((l) => l !== '' && !l.startsWith('info: '));

// ---- the disk ---------------------------------------------------------------------------------------------

const checksum = sectorChecksum;
const sha256 = sha256File;

/** A fresh 1 MiB image (2048 sectors): sector 0 holds a known pattern, the rest is zero. */
function makeImage(dir: string): string {
  const image = join(dir, 'disk.img');
  const bytes = Buffer.alloc(1 << 20);
  SECTOR0.copy(bytes, 0);
  writeFileSync(image, bytes);
  return image;
}

async function runHostile(vmm: Vmm, name: string, memory = MEMORY): Promise<GuestRun> {
  const dir = mkdtempSync(join(work, `${name}-${vmm}-`));
  const image = makeImage(dir);
  const imageBefore = sha256(image);
  const cmdline = `case=${name}`;
  let r: Omit<GuestRun, 'imageBefore' | 'imageAfter'>;
  if (vmm === 'qemu') {
    const q = await runOnQemu(guest('virtio-hostile'), {
      cmdline,
      memory,
      extraArgs: [
        '-M',
        'pcie=on', // merged into runOnQemu's -M microvm,acpi=on
        '-device',
        'virtio-blk-pci,drive=d0,disable-legacy=on',
        '-drive',
        `if=none,id=d0,file=${image},format=raw`,
      ],
    });
    r = { output: q.output, status: q.status, stderr: '' };
  } else {
    const args = ['run', '--kernel', guest('virtio-hostile'), '--memory', memory, '--cmdline', cmdline];
    const o = await runPartita([...args, '--disk', image]);
    r = { output: o.stdout, status: o.status, stderr: o.stderr };
  }
  return { ...r, imageBefore, imageAfter: sha256(image) };
}

// ---- the hostile cases ---------------------------------------------------------------------------------------

/** Partita's line for a driver error (src/devices/virtio/runner.ts). */
const RESET_LINE = /^partita: virtio-blk0: (.*); the device needs a reset$/;
const NEEDS_RESET = 'hostile: device set DEVICE_NEEDS_RESET (status 0x4f), ISR 0x3, used idx 0';
const completed = (status: number, name: string, usedLen: number): string =>
  `hostile: request completed: status ${status} (${name}), used len ${usedLen}, ISR 0x1`;

interface HostileCase {
  /** The guest's case=NAME. */
  readonly name: string;
  readonly memory?: string;
  /** What the guest prints about the case, between its "case" line and the recovery. */
  readonly lines: readonly string[];
  /** Partita's reason on stderr (NEEDS_RESET cases); without it, stderr must not mention a reset. */
  readonly reason?: RegExp;
  /** Run on QEMU too, expecting the same lines (true), other lines, or not at all (why). */
  readonly qemu: true | { readonly lines: readonly string[] } | { readonly skip: string };
}

const QEMU_BOUNCE =
  'QEMU maps a small buffer outside RAM through its one-page bounce buffer (address_space_map on memory that is ' +
  'not RAM) and completes the request with OK; with 4 GiB of RAM, a write from a buffer straddling the 3 GiB ' +
  "hole even put the device's own registers (its BAR, placed there) into sector 4 of the image";
const QEMU_RING =
  'QEMU\'s virtio_error ("Cannot map used") comes at queue_enable, before DRIVER_OK, and sets NEEDS_RESET then; ' +
  "the driver's DRIVER_OK status write replaces the whole status (virtio_set_status), so the queue is dead and " +
  'nothing tells the driver';
const QEMU_MMIO_RING =
  "QEMU reads an available ring placed in the device's own BAR through its MMIO path, finds no request there " +
  'and stays silent';
const QEMU_SIZE = 'QEMU takes any queue_size up to 1024 (virtio_queue_set_num), powers of two or not';

const cases: readonly HostileCase[] = [
  // a: buffers outside guest RAM
  {
    name: 'a1',
    lines: ['hostile: read into a buffer at 0xf000000000000000, far outside RAM', NEEDS_RESET],
    reason: /descriptor 1: buffer 0xf000000000000000 \(\+0x200\) is not inside guest RAM/,
    qemu: { skip: QEMU_BOUNCE },
  },
  {
    name: 'a2',
    lines: ['hostile: write from a buffer just past the end of RAM', NEEDS_RESET],
    reason: /descriptor 1: buffer 0x20000000 \(\+0x200\) is not inside guest RAM/,
    qemu: { skip: QEMU_BOUNCE },
  },
  {
    name: 'a3',
    lines: ['hostile: write from a buffer straddling the end of RAM', NEEDS_RESET],
    reason: /descriptor 1: buffer 0x1fffff00 \(\+0x200\) is not inside guest RAM/,
    qemu: { skip: QEMU_BOUNCE },
  },
  {
    name: 'a3',
    memory: '4G', // RAM below the hole ends at 3 GiB, the rest is above 4 GiB
    lines: ['hostile: write from a buffer straddling the end of low RAM (the 32-bit hole)', NEEDS_RESET],
    reason: /descriptor 1: buffer 0xbfffff00 \(\+0x200\) is not inside guest RAM/,
    qemu: { skip: QEMU_BOUNCE },
  },
  {
    name: 'a4',
    lines: ['hostile: read into a buffer at 2^64 - 256 (+512 wraps past 2^64)', NEEDS_RESET],
    reason: /descriptor 1: buffer 0xffffffffffffff00 \+ 0x200 wraps past 2\^64/,
    qemu: { skip: QEMU_BOUNCE },
  },
  {
    name: 'a5',
    lines: ['hostile: read with its status byte outside RAM', NEEDS_RESET, 'hostile: data buffer untouched'],
    reason: /descriptor 2: buffer 0x20001000 \(\+0x1\) is not inside guest RAM/,
    qemu: { skip: `${QEMU_BOUNCE} (the status byte is lost: the guest reads it unwritten)` },
  },
  // b: NEXT loops
  {
    name: 'b1',
    lines: ['hostile: chain 0 -> 1 -> 2 -> 1 -> ...', NEEDS_RESET],
    reason: /chain 0: more than 8 descriptors \(the queue size\)/,
    qemu: true, // "Looped descriptor"
  },
  {
    name: 'b2',
    lines: ['hostile: chain 0 -> 1 -> 1 -> ...', NEEDS_RESET],
    reason: /chain 0: more than 8 descriptors \(the queue size\)/,
    qemu: true,
  },
  // c: long chains through indirect tables
  {
    // §2.7.5.3.1 forbids the driver a chain longer than the queue size but leaves the device free: both serve it.
    name: 'c1',
    lines: [
      'hostile: read of 38 sectors in a 40-descriptor indirect chain on a queue of 8',
      completed(0, 'OK', 38 * 512 + 1),
      `hostile: data: sector 0 checksum ${checksum(SECTOR0)}, sectors 1-37 zero`,
    ],
    qemu: true,
  },
  {
    name: 'c2',
    lines: ['hostile: indirect table 0 -> 1 -> 2 -> 1 -> ...', NEEDS_RESET],
    reason: /indirect descriptor 1 of the table at 0x[0-9a-f]+ \(descriptor 0\): more than the table's 3 descriptors/,
    qemu: true,
  },
  // d: nested indirect
  {
    name: 'd1',
    lines: ['hostile: indirect table inside an indirect table', NEEDS_RESET],
    reason: /indirect descriptor 1 of the table at 0x[0-9a-f]+ \(descriptor 0\): INDIRECT inside an indirect table/,
    // QEMU ignores INDIRECT inside a table and takes the inner table for a readable buffer: then the request has
    // nothing device-writable ("virtio-blk missing headers"), which needs a reset all the same.
    qemu: true,
  },
  // e: indices out of range
  {
    name: 'e1',
    lines: ['hostile: descriptor 0 continues to descriptor 200 of 8', NEEDS_RESET],
    reason: /descriptor 0 continues to descriptor 200, outside the queue of size 8/,
    qemu: true, // "Desc next is 200"
  },
  {
    name: 'e2',
    lines: ['hostile: available ring entry names descriptor 9 of 8', NEEDS_RESET],
    reason: /available ring entry 0 names descriptor 9, outside the queue of size 8/,
    qemu: true, // "Guest says index 9 is available"
  },
  {
    name: 'e3',
    lines: ['hostile: avail idx moves 100 ahead on a queue of 8', NEEDS_RESET],
    reason: /avail idx 100 is 100 entries ahead of the device's 0, more than the queue size 8/,
    qemu: true,
  },
  {
    name: 'e4',
    lines: ['hostile: indirect entry 1 continues to entry 7 of 3', NEEDS_RESET],
    reason: /continues to 7, outside the table's 3 descriptors/,
    qemu: true, // "Desc next is 7"
  },
  // f: buffers in the wrong direction
  {
    // No device-readable data: an empty write, nothing reaches the disk (the image check).
    name: 'f1',
    lines: [
      'hostile: write of sector 4 with its data in a device-writable buffer',
      completed(0, 'OK', 513),
      'hostile: data buffer untouched',
    ],
    qemu: true,
  },
  {
    name: 'f2',
    lines: [
      'hostile: write of sector 4 with its status byte in a device-readable buffer',
      NEEDS_RESET,
      'hostile: status byte untouched',
    ],
    reason: /request 0 has no device-writable status byte/,
    qemu: true, // "virtio-blk missing headers"
  },
  {
    name: 'f3',
    lines: [
      'hostile: read of sector 0 into a device-readable buffer',
      completed(0, 'OK', 1),
      'hostile: data buffer untouched',
    ],
    qemu: true,
  },
  {
    name: 'f4',
    lines: ['hostile: read whose header is device-writable', NEEDS_RESET],
    reason: /request 0 has a 0-byte header; 16 needed/,
    qemu: true,
  },
  // g: sectors and lengths that overflow
  {
    name: 'g1',
    lines: ['hostile: read of sector 2^63', completed(1, 'IOERR', 513), 'hostile: data buffer untouched'],
    qemu: true,
  },
  {
    name: 'g2',
    lines: [
      'hostile: read of sector 2^55 (byte offset 2^64 wraps to 0)',
      completed(1, 'IOERR', 513),
      'hostile: data buffer untouched',
    ],
    qemu: true,
  },
  {
    name: 'g3',
    lines: ['hostile: write of 2 sectors from the last sector (crosses the end)', completed(1, 'IOERR', 1)],
    qemu: true,
  },
  {
    name: 'g4',
    lines: ['hostile: write of 2 sectors from sector 2^64 - 1 (sector + count wraps)', completed(1, 'IOERR', 1)],
    qemu: true,
  },
  {
    // Both reactions are allowed: Partita refuses the chain (its used length could not be expressed), QEMU maps
    // it and then refuses the request by its size.
    name: 'g5',
    lines: ['hostile: write of sector 0 from 17 buffers of 256 MiB (4.25 GiB in all)', NEEDS_RESET],
    reason: /the chain's buffers add up to more than 2\^32 - 1 bytes/,
    qemu: {
      lines: ['hostile: write of sector 0 from 17 buffers of 256 MiB (4.25 GiB in all)', completed(1, 'IOERR', 1)],
    },
  },
  // h: rings outside RAM, configured before DRIVER_OK
  {
    name: 'h1',
    lines: ['hostile: descriptor table at 0xf000000000000000', NEEDS_RESET],
    reason: /queue 0: descriptor table at \S+ \(128 bytes for queue size 8\) is not inside guest RAM/,
    qemu: true, // at the first kick: "zero sized buffers are not allowed"
  },
  {
    name: 'h2',
    lines: ['hostile: used ring straddling the end of RAM', NEEDS_RESET],
    reason: /queue 0: used ring at 0x1fffffc0 \(70 bytes for queue size 8\) is not inside guest RAM/,
    qemu: { skip: QEMU_RING },
  },
  {
    name: 'h3',
    lines: ["hostile: available ring inside the device's BAR", NEEDS_RESET],
    reason: /queue 0: available ring at 0x[0-9a-f]+ \(22 bytes for queue size 8\) is not inside guest RAM/,
    qemu: { skip: QEMU_MMIO_RING },
  },
  // i: queue sizes no split queue can have
  {
    name: 'i1',
    lines: ['hostile: queue_size 3 (not a power of two): refused (the offered maximum stays)'],
    qemu: { skip: QEMU_SIZE },
  },
  {
    name: 'i2',
    lines: ['hostile: queue_size twice the maximum: refused (the offered maximum stays)'],
    qemu: { skip: QEMU_SIZE },
  },
  // j: queues that do not exist
  {
    name: 'j1',
    lines: [
      'hostile: queue_size of queue 5: 0, of queue 65535: 0',
      completed(0, 'OK', 513),
      `hostile: queue 0 after that: sector 0 checksum ${checksum(SECTOR0)}`,
    ],
    qemu: true,
  },
  // r: reset with I/O in flight (§2.4.1: nothing touches the queues once device_status reads 0)
  {
    name: 'r1',
    lines: ['hostile: after the reset completed: no used entries, no buffer writes'],
    qemu: true, // QEMU drains the requests inside the status write
  },
];

/** The whole output a case prints (comparable lines) around its own lines. */
function expectedLines(c: HostileCase, lines: readonly string[]): string[] {
  const features = 'virtio: features accepted 0x110000000'; // VERSION_1 | INDIRECT_DESC
  return [
    features,
    `hostile: case ${c.name}, capacity 2048 sectors`,
    ...lines,
    features,
    `hostile: recovery: read sector 0: status 0, checksum ${checksum(SECTOR0)}, starts 'PARTITA-BLK-TEST'`,
    'hostile: ok',
  ];
}

function checkHostileRun(c: HostileCase, r: GuestRun, lines: readonly string[]): void {
  assert.doesNotMatch(r.output, /FAIL/, show(r));
  assert.equal(r.status, OK_STATUS, `the guest finished its recovery and exited 0\n${show(r)}`);
  assert.deepEqual(comparable(r.output), expectedLines(c, lines), show(r));
  assert.equal(r.imageAfter, r.imageBefore, 'the disk image is byte for byte unchanged');
}

const label = (c: HostileCase): string => `${c.name}${c.memory ? ` (--memory ${c.memory})` : ''}`;
const partitaRuns = new Map<HostileCase, Promise<GuestRun>>();
const partitaRun = (c: HostileCase): Promise<GuestRun> => {
  let p = partitaRuns.get(c);
  if (!p) partitaRuns.set(c, (p = runHostile('partita', c.name, c.memory)));
  return p;
};

for (const c of cases) {
  test(`hostile ${label(c)} on Partita`, { skip: skipFor.partita }, async () => {
    const r = await partitaRun(c);
    checkHostileRun(c, r, c.lines);
    // The VMM tells its user why the device stopped, once, and says nothing else (no I/O-thread error, no dump).
    const stderr = r.stderr.split('\n').filter((l) => l !== '');
    if (c.reason) {
      assert.equal(stderr.length, 1, `one line on stderr\n${show(r)}`);
      const m = RESET_LINE.exec(stderr[0]);
      assert.ok(m, `a "needs a reset" line\n${show(r)}`);
      assert.match(m[1], c.reason);
    } else {
      assert.deepEqual(stderr, [], `nothing on stderr\n${show(r)}`);
    }
  });
  const q = c.qemu;
  if (q !== true && 'skip' in q) {
    test(`hostile ${label(c)} on QEMU`, { skip: `not compared: ${q.skip}` }, () => undefined);
    continue;
  }
  test(
    `hostile ${label(c)} on QEMU${q === true ? ': same lines as Partita' : ''}`,
    { skip: skipFor.qemu || (q === true && skipFor.partita) },
    async () => {
      const r = await runHostile('qemu', c.name, c.memory);
      checkHostileRun(c, r, q === true ? c.lines : q.lines);
      if (q === true) assert.deepEqual(comparable(r.output), comparable((await partitaRun(c)).output));
    },
  );
}

// ---- virtio-intx ------------------------------------------------------------------------------------------

/**
 * INTA# of the rng device (slot 1): Partita routes slot s to GSI 16 + (s - 1) % 8 and writes it into Interrupt
 * Line; QEMU's microvm leaves Interrupt Line 0 and its GPEX host bridge swizzles INTA# of slot s to GSI
 * 16 + s % 4 (found with intx_gsi=scan, checked below).
 */
const QEMU_RNG_GSI = 17;
/**
 * The in-service state between taking the interrupt and its EOI (LAPIC ISR bit set, IOAPIC Remote IRR still set)
 * is checked only off the development machines: their nested PVM KVM shows both as 0 even inside the handler, on
 * QEMU as on Partita.
 */
const strictLapic = isPvm ? '' : ' lapic_isr=1';

const INTX_LINES = [
  'virtio: features accepted 0x100000000',
  'intx: MSI-X present, disabled',
  'intx: before any request: ISR 0, IRR 0',
  'intx: request 1: IRR set, TMR 1 (level), IOAPIC remote IRR 1',
  'intx: ISR read 1, read again 0',
  'intx: interrupt 1 taken: IRR 0',
  'intx: after EOI: IRR 0, in service 0, remote IRR 0',
  'intx: request 2: interrupt taken, EOI without reading the ISR: delivered again 1',
  'intx: ISR read 1, then interrupt taken and EOI: IRR 0, remote IRR 0',
  'intx: ok',
];

const intxRuns = new Map<string, Promise<GuestRun>>();
function runIntx(vmm: Vmm, cmdline: string): Promise<GuestRun> {
  const key = `${vmm}/${cmdline}`;
  let p = intxRuns.get(key);
  if (!p) {
    p = (async (): Promise<GuestRun> => {
      if (vmm === 'qemu') {
        const q = await runOnQemu(guest('virtio-intx'), {
          cmdline,
          extraArgs: ['-M', 'pcie=on', '-device', 'virtio-rng-pci,disable-legacy=on'],
        });
        return { output: q.output, status: q.status, stderr: '' };
      }
      const args = ['run', '--kernel', guest('virtio-intx'), '--rng'];
      const o = await runPartita(cmdline ? [...args, '--cmdline', cmdline] : args);
      return { output: o.stdout, status: o.status, stderr: o.stderr };
    })();
    intxRuns.set(key, p);
  }
  return p;
}

const intxCmdline = (vmm: Vmm): string => (vmm === 'qemu' ? `intx_gsi=${QEMU_RNG_GSI}` : '').concat(strictLapic).trim();

for (const vmm of ['partita', 'qemu'] as const) {
  const name = vmm === 'qemu' ? 'QEMU' : 'Partita';
  test(`virtio-intx on ${name}: level-triggered INTx through the IOAPIC`, { skip: skipFor[vmm] }, async () => {
    const r = await runIntx(vmm, intxCmdline(vmm));
    assert.doesNotMatch(r.output, /FAIL/, show(r));
    assert.equal(r.status, OK_STATUS, show(r));
    assert.deepEqual(comparable(r.output), INTX_LINES, show(r));
    assert.equal(r.stderr, '', show(r));
    if (vmm === 'partita') {
      // The GSI came from the Interrupt Line register, which Partita writes as its ACPI _PRT says.
      assert.match(r.output, /^info: interrupt pin 1, interrupt line 16$/m, show(r));
      assert.match(r.output, /^info: routing GSI 16 \(IOAPIC pins 0-23\) to vector 0x42$/m, show(r));
    }
  });
  test(
    `virtio-intx on ${name}: INTA# of slot 1 raises GSI ${vmm === 'qemu' ? QEMU_RNG_GSI : 16} and no other (intx_gsi=scan)`,
    { skip: skipFor[vmm] },
    async () => {
      const r = await runIntx(vmm, 'intx_gsi=scan');
      assert.equal(r.status, OK_STATUS, show(r));
      const gsi = vmm === 'qemu' ? QEMU_RNG_GSI : 16;
      const scan = comparable(r.output).filter((l) => l.startsWith('intx: scan:'));
      assert.deepEqual(scan, [`intx: scan: GSI ${gsi} raised`, 'intx: scan: ISR 0x1'], show(r));
    },
  );
}

test('virtio-intx: same lines and status on QEMU and Partita', { skip: skipFor.qemu || skipFor.partita }, async () => {
  const [theirs, ours] = [await runIntx('qemu', intxCmdline('qemu')), await runIntx('partita', intxCmdline('partita'))];
  assert.equal(ours.status, theirs.status, `partita: ${show(ours)}\nqemu: ${show(theirs)}`);
  assert.deepEqual(comparable(ours.output), comparable(theirs.output));
});
