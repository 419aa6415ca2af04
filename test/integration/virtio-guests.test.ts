// The virtio test guests (test/guests/virtio-*.c, a small virtio-pci driver in test/guests/lib) on QEMU (microvm
// with PCIe, BARs placed by the guest) and on Partita (BARs placed by the VMM): each must produce the same
// observable results on both, and what reached the host (disk image, console file, network frames) is checked.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { guest, haveKvm, runPartita } from '../support/partita.js';
import { QEMU_MISSING, qemuAvailable, runOnQemu } from '../support/qemu.js';
import { SECTOR0, sectorChecksum } from '../support/test-disk.js';

type Vmm = 'qemu' | 'partita';
const haveQemu = qemuAvailable();
const skipFor: Record<Vmm, string | false> = {
  qemu: !haveKvm ? 'no /dev/kvm' : !haveQemu ? QEMU_MISSING : false,
  partita: !haveKvm ? 'no /dev/kvm' : false,
};

const work = mkdtempSync(join(tmpdir(), 'partita-virtio-'));
after(() => rmSync(work, { recursive: true, force: true }));

interface GuestRun {
  readonly output: string;
  readonly status: number | null;
  readonly stderr: string;
}

/** Host side of one run: device arguments for each VMM, and what the host saw afterwards. */
interface Setup {
  readonly qemu: string[];
  readonly partita: string[];
  /** Called after the VM is gone: checks the host side (files, frames); returns nothing or throws. */
  readonly checkHost: (r: GuestRun) => void;
  readonly cleanup?: () => void;
}

interface Scenario {
  /** Test label (and key of the memoized runs). */
  readonly name: string;
  readonly guest: string;
  readonly setup: (dir: string) => Promise<Setup>;
  /** The lines (after `comparable`) a correct run prints, on either VMM. */
  readonly expected: readonly string[];
  readonly cmdline?: string;
}

const FAIL_STATUS = 0x41; // guest exit(0x20): a "FAIL: ..." line was printed
const OK_STATUS = 1; // guest exit(0)

/** The lines both VMMs must agree on: "info:" lines (BAR placement, offered features) are VMM-specific. */
function comparable(output: string): string[] {
  return output
    .split('\n')
    .filter((l) => l !== '' && !l.startsWith('info: '))
    .map((l) => l.replace(/^(rng: read \d):[0-9a-f]{128}$/, '$1:<64 bytes>'));
}

const show = (r: GuestRun): string =>
  `status ${r.status}\n--- guest output ---\n${r.output}--- stderr ---\n${r.stderr}`;

// ---- virtio-blk ------------------------------------------------------------------------------------------

const SERIAL = 'partita-test-01';
const blkPattern = (i: number, sector: number): number => (i * 7 + sector) & 0xff;

/** Read-write: the full exchange; read-only (`--disk …,readonly` / `readonly=on`): the write must be refused. */
function blkScenario(readonly: boolean): Scenario {
  const sector0Line = `blk: sector 0: ${[...SECTOR0.subarray(0, 16)].map((b) => b.toString(16).padStart(2, '0')).join(' ')} checksum ${sectorChecksum(SECTOR0)}`;
  const common = [
    'blk: capacity 2048 sectors',
    'blk: read sector 0: 3 descriptors, status 0',
    sector0Line,
    'msix: delivered',
    'blk: get id: 3 descriptors, status 0',
    `blk: serial '${SERIAL}'`,
  ];
  return {
    name: readonly ? 'virtio-blk (read-only disk)' : 'virtio-blk',
    guest: 'virtio-blk',
    cmdline: readonly ? 'readonly=1' : undefined,
    setup: async (dir) => {
      const image = join(dir, 'disk.img');
      const bytes = Buffer.alloc(1 << 20);
      SECTOR0.copy(bytes, 0);
      writeFileSync(image, bytes);
      return {
        qemu: [
          '-device',
          `virtio-blk-pci,drive=d0,disable-legacy=on,serial=${SERIAL}`,
          '-drive',
          `if=none,id=d0,file=${image},format=raw${readonly ? ',readonly=on' : ''}`,
        ],
        partita: ['--disk', `${image}${readonly ? ',readonly' : ''},serial=${SERIAL}`],
        checkHost: () => {
          const after = readFileSync(image);
          assert.equal(after.length, 1 << 20, 'image size unchanged');
          assert.deepEqual(after.subarray(0, 512), SECTOR0, 'sector 0 unchanged');
          for (let s = 1; s <= 8 && !readonly; s++)
            for (let i = 0; i < 512; i++)
              if (after[s * 512 + i] !== blkPattern(i, s))
                assert.fail(
                  `image sector ${s} byte ${i} is ${after[s * 512 + i]}, the guest wrote ${blkPattern(i, s)}`,
                );
          const untouched = after.subarray(readonly ? 512 : 9 * 512);
          assert.ok(
            untouched.every((b) => b === 0),
            readonly ? 'read-only image unchanged' : 'nothing written beyond sector 8',
          );
        },
      };
    },
    expected: readonly
      ? [
          'virtio: features accepted 0x110000220', // VERSION_1 | INDIRECT_DESC | FLUSH | RO
          ...common,
          'blk: write sectors 1-8: 4 descriptors (indirect), status 1',
          'blk: write refused: IOERR',
          'blk: ok',
        ]
      : [
          'virtio: features accepted 0x110000200', // VERSION_1 | INDIRECT_DESC | FLUSH
          ...common,
          'blk: write sectors 1-8: 4 descriptors (indirect), status 0',
          'blk: flush: 2 descriptors, status 0',
          'blk: read sectors 1-8: 3 descriptors, status 0',
          'blk: read past the end: 3 descriptors, status 1',
          'blk: read past the end: IOERR',
          'blk: ok',
        ],
  };
}

// ---- virtio-rng ------------------------------------------------------------------------------------------

const rngHex = (r: GuestRun, n: number): string => {
  const m = new RegExp(`^rng: read ${n}:([0-9a-f]{128})$`, 'm').exec(r.output);
  assert.ok(m, `rng read ${n} printed 64 bytes\n${show(r)}`);
  return m[1];
};

const rng: Scenario = {
  name: 'virtio-rng',
  guest: 'virtio-rng',
  setup: async () => ({
    qemu: ['-device', 'virtio-rng-pci,disable-legacy=on'],
    partita: ['--rng'],
    checkHost: (r) => {
      const [a, b] = [rngHex(r, 1), rngHex(r, 2)];
      assert.notEqual(a, b, 'two reads differ');
      assert.notEqual(a, '0'.repeat(128));
    },
  }),
  expected: ['virtio: features accepted 0x100000000', 'rng: read 1:<64 bytes>', 'rng: read 2:<64 bytes>', 'rng: ok'],
};

// ---- virtio-console --------------------------------------------------------------------------------------

const consoleText =
  'hello from virtio-console\n' +
  Array.from({ length: 8 }, (_, i) => `console line ${i}: the quick brown fox jumps over the lazy dog\n`).join('');

const console_: Scenario = {
  name: 'virtio-console',
  guest: 'virtio-console',
  setup: async (dir) => {
    const file = join(dir, 'console.out');
    return {
      qemu: [
        '-device',
        'virtio-serial-pci,max_ports=1,disable-legacy=on',
        '-device',
        'virtconsole,chardev=c0',
        '-chardev',
        `file,id=c0,path=${file}`,
      ],
      partita: ['--console', file],
      checkHost: () => assert.equal(readFileSync(file, 'latin1'), consoleText, 'host console file'),
    };
  },
  expected: [
    'virtio: features accepted 0x100000000',
    'console: greeting sent',
    `console: sent ${consoleText.length} bytes in 3 chains`,
    'console: ok',
  ],
};

// ---- virtio-net ------------------------------------------------------------------------------------------

const GUEST_MAC = '52:54:00:12:34:56';
const HOST_MAC = '52:54:00:ab:cd:ef';
const macBytes = (m: string): Buffer => Buffer.from(m.split(':').map((h) => parseInt(h, 16)));

/**
 * The network on the other end of the VMM's socket: QEMU's stream netdev framing (each frame preceded by its
 * length, 4 bytes big-endian). Records every frame; answers the guest's first 0x88b5 frame with one of its own.
 */
class FakeNetwork {
  readonly frames: Buffer[] = [];
  connections = 0;
  private readonly sockets = new Set<Socket>();
  private constructor(private readonly server: Server) {}

  static listen(path: string): Promise<FakeNetwork> {
    return new Promise((resolve, reject) => {
      const server = createServer();
      const net = new FakeNetwork(server);
      server.on('connection', (s) => net.accept(s));
      server.once('error', reject);
      server.listen(path, () => resolve(net));
    });
  }

  private accept(s: Socket): void {
    this.connections++;
    this.sockets.add(s);
    s.on('close', () => this.sockets.delete(s));
    s.on('error', () => undefined);
    let pending = Buffer.alloc(0);
    let replied = false;
    s.on('data', (d: Buffer) => {
      pending = Buffer.concat([pending, d]);
      while (pending.length >= 4 && pending.length >= 4 + pending.readUInt32BE(0)) {
        const frame = Buffer.from(pending.subarray(4, 4 + pending.readUInt32BE(0)));
        pending = pending.subarray(4 + frame.length);
        this.frames.push(frame);
        if (!replied && frame.length >= 14 && frame.readUInt16BE(12) === 0x88b5) {
          replied = true;
          const reply = Buffer.alloc(60);
          frame.copy(reply, 0, 6, 12); // to the sender
          macBytes(HOST_MAC).copy(reply, 6);
          reply.writeUInt16BE(0x88b5, 12);
          reply.write('reply-from-host', 14, 'latin1');
          const len = Buffer.alloc(4);
          len.writeUInt32BE(reply.length);
          s.write(Buffer.concat([len, reply]));
        }
      }
    });
  }

  close(): void {
    for (const s of this.sockets) s.destroy();
    this.server.close();
  }
}

const net: Scenario = {
  name: 'virtio-net',
  guest: 'virtio-net',
  setup: async (dir) => {
    const sock = join(dir, 'net.sock');
    const network = await FakeNetwork.listen(sock);
    return {
      qemu: [
        '-device',
        `virtio-net-pci,netdev=n0,disable-legacy=on,mac=${GUEST_MAC}`,
        '-netdev',
        `stream,id=n0,server=off,addr.type=unix,addr.path=${sock}`,
      ],
      partita: ['--net', `socket=${sock},mac=${GUEST_MAC}`],
      checkHost: (r) => {
        assert.equal(network.connections, 1, 'the VMM connected to the network socket once');
        assert.equal(network.frames.length, 1, `exactly one frame from the guest\n${show(r)}`);
        const f = network.frames[0];
        assert.equal(f.length, 60, 'frame length (no virtio-net header on the wire)');
        assert.deepEqual(f.subarray(0, 6), Buffer.alloc(6, 0xff), 'broadcast destination');
        assert.deepEqual(f.subarray(6, 12), macBytes(GUEST_MAC), 'source is the guest MAC');
        assert.equal(f.readUInt16BE(12), 0x88b5);
        assert.equal(f.subarray(14, 30).toString('latin1'), 'partita-net-test');
        assert.ok(
          f.subarray(30).every((b) => b === 0),
          'zero padding',
        );
      },
      cleanup: () => network.close(),
    };
  },
  expected: [
    'virtio: features accepted 0x100000020', // VERSION_1 | MAC
    `net: mac ${GUEST_MAC}`,
    'net: sent 60-byte frame',
    `net: received 60-byte frame from ${HOST_MAC}: 'reply-from-host'`,
    'net: ok',
  ],
};

// ---- running -----------------------------------------------------------------------------------------------

const scenarios = [blkScenario(false), blkScenario(true), rng, console_, net];

/** A finished run plus the check of what its host side saw (bound to that run's files and sockets). */
interface HostedRun extends GuestRun {
  readonly checkHost: () => void;
}
const runs = new Map<string, Promise<HostedRun>>();

/** Runs a scenario once per VMM (memoized: the per-VMM and the comparison tests share the run). */
function runOn(s: Scenario, vmm: Vmm, key = `${s.name}/${vmm}`, cmdline = s.cmdline): Promise<HostedRun> {
  let p = runs.get(key);
  if (!p) {
    p = (async () => {
      const dir = mkdtempSync(join(work, `${s.guest}-${vmm}-`));
      const setup = await s.setup(dir);
      let r: GuestRun;
      try {
        if (vmm === 'qemu') {
          const q = await runOnQemu(guest(s.guest), {
            cmdline,
            extraArgs: ['-M', 'pcie=on', ...setup.qemu], // merged into runOnQemu's -M microvm,acpi=on
          });
          r = { output: q.output, status: q.status, stderr: '' };
        } else {
          const args = ['run', '--kernel', guest(s.guest), ...setup.partita];
          if (cmdline) args.push('--cmdline', cmdline);
          const o = await runPartita(args);
          r = { output: o.stdout, status: o.status, stderr: o.stderr };
        }
      } finally {
        setup.cleanup?.();
      }
      const run = r;
      return { ...run, checkHost: () => setup.checkHost(run) };
    })();
    runs.set(key, p);
  }
  return p;
}

function checkRun(s: Scenario, r: HostedRun): void {
  assert.doesNotMatch(r.output, /FAIL/, show(r));
  assert.equal(r.status, OK_STATUS, show(r));
  assert.deepEqual(comparable(r.output), s.expected, show(r));
  r.checkHost();
}

/**
 * The platform each VMM gives the guest: ECAM at 0xE0000000 on both; the BARs (virtio BAR 4, MSI-X BAR 1) in
 * the 32-bit window, placed by Partita before boot, left unassigned by QEMU's qboot (the guest places them).
 */
function checkPlatform(vmm: Vmm, r: GuestRun): void {
  assert.match(r.output, /^info: pci config through ECAM at 0xe0000000$/m, show(r));
  const bars = [
    ...r.output.matchAll(/^info: ..\.. BAR(\d) at 0x([0-9a-f]+) size 0x([0-9a-f]+) \(placed by (\w+)\)$/gm),
  ];
  assert.ok(bars.length >= 1, `BAR lines\n${show(r)}`);
  for (const [line, , at, size, who] of bars) {
    assert.equal(who, vmm === 'partita' ? 'vmm' : 'guest', line);
    const base = parseInt(at, 16);
    assert.ok(base >= 0xc0000000 && base + parseInt(size, 16) <= 0xe0000000, `${line}: inside the 32-bit window`);
  }
}

for (const s of scenarios) {
  for (const vmm of ['qemu', 'partita'] as const) {
    test(`${s.name} on ${vmm === 'qemu' ? 'QEMU' : 'Partita'}`, { skip: skipFor[vmm] }, async () => {
      const r = await runOn(s, vmm);
      checkRun(s, r);
      checkPlatform(vmm, r);
    });
  }
  test(`${s.name}: same lines and status on QEMU and Partita`, { skip: skipFor.qemu || skipFor.partita }, async () => {
    const [theirs, ours] = [await runOn(s, 'qemu'), await runOn(s, 'partita')];
    assert.equal(ours.status, theirs.status, `partita: ${show(ours)}\nqemu: ${show(theirs)}`);
    assert.deepEqual(comparable(ours.output), comparable(theirs.output));
  });
}

test(
  'virtio-rng on Partita through configuration mechanism #1 (ports 0xCF8/0xCFC)',
  { skip: skipFor.partita },
  async () => {
    const r = await runOn(rng, 'partita', 'virtio-rng/partita/pci=io', 'pci=io');
    assert.match(r.output, /^info: pci config through ports 0xcf8\/0xcfc$/m, show(r));
    checkRun(rng, r);
  },
);

test(
  'a guest whose device is missing fails with a clear line (the driver can fail)',
  { skip: skipFor.qemu },
  async () => {
    const r = await runOnQemu(guest('virtio-rng'), { extraArgs: ['-M', 'pcie=on'] });
    assert.match(r.output, /^FAIL: no virtio device 1af4:1044 on PCI bus 0$/m);
    assert.equal(r.status, FAIL_STATUS);
  },
);
