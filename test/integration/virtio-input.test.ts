// The virtio-input tablet seen from a guest (test/guests/virtio-input.c, a small virtio-pci driver): on Partita,
// with the screen served over RFB (--vnc unix:PATH), a scripted RFB client's PointerEvents must reach the guest as
// EV_ABS events scaled to 0..32767 and a BTN_LEFT press; on QEMU (-device virtio-tablet-pci) the configuration the
// guest reads must match ours wherever our tablet claims to be QEMU's (IDs, axes, ABS_INFO, wheel, buttons).
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { guest, HANG_GUARD_MS, haveKvm, runPartita } from '../support/partita.js';
import { QEMU_MISSING, qemuAvailable, runOnQemu } from '../support/qemu.js';
import { RfbTestClient } from '../support/rfb-client.js';
import { scaleAxis } from '../../src/devices/virtio/input.js';

const OK_STATUS = 1; // guest exit(0)
const work = mkdtempSync(join(tmpdir(), 'partita-vinput-'));
after(() => rmSync(work, { recursive: true, force: true }));

const skipPartita = haveKvm ? false : 'SKIPPED: no /dev/kvm';
const skipQemu = !haveKvm ? 'SKIPPED: no /dev/kvm' : !qemuAvailable() ? QEMU_MISSING : false;

/** Where the pointer goes, in framebuffer pixels. */
const AT = { x: 300, y: 123 };

/** The guest's configuration lines ("input: …") without the name, which is each VMM's own. */
function configLines(output: string): Map<string, string> {
  const lines = new Map<string, string>();
  for (const line of output.split('\n')) {
    const m = /^input: (devids|prop_bits|ev_bits type=\d+|abs_info axis=\d+)\b ?(.*)$/.exec(line.trim());
    if (m) lines.set(m[1], m[2]);
  }
  return lines;
}

const bitsOf = (line: string | undefined): number[] =>
  /bits=([\d,]*)/
    .exec(line ?? '')?.[1]
    .split(',')
    .filter((b) => b !== '')
    .map(Number) ?? [];

let partitaOutput: string | undefined;

test(
  'Partita: RFB PointerEvents reach the guest as absolute EV_ABS (scaled) and a BTN_LEFT press',
  {
    skip: skipPartita,
  },
  async () => {
    const spec = join(work, 'vm.json');
    const socket = join(work, 'vnc.sock');
    writeFileSync(
      spec,
      JSON.stringify({
        version: 1,
        cpus: 1,
        memory: 128 * 1024 * 1024,
        boot: { kind: 'kernel', kernel: guest('virtio-input') },
        serial: { output: 'stdio' },
        // The tablet first: the guest drives the first virtio-input function. The keyboard is there so the routing
        // of a VM with both is what runs.
        devices: [{ kind: 'std-vga' }, { kind: 'virtio-tablet' }, { kind: 'virtio-keyboard' }],
      }),
    );
    let client: RfbTestClient | undefined;
    let size: { width: number; height: number } | undefined;
    let sending: Promise<void> | undefined;
    let done = false;
    let driveError: Error | undefined;
    // Once the guest's driver is up, move and click; again every 2 s until the guest reports the press (a click
    // that raced the device's activation on the I/O thread went to the absent PS/2 mouse and is repeated).
    const drive = async (): Promise<void> => {
      client = await RfbTestClient.connectRetrying(socket, HANG_GUARD_MS);
      await client.handshake();
      size = { width: client.fbWidth, height: client.fbHeight };
      while (!done) {
        client.pointer(0, AT.x, AT.y);
        client.pointer(1, AT.x, AT.y);
        client.pointer(0, AT.x, AT.y);
        await new Promise((r) => setTimeout(r, 2000));
      }
    };
    try {
      const r = await runPartita(['run', '--spec', spec, '--vnc', `unix:${socket}`], {
        onStdout: (text) => {
          // Its failure is reported after the run (never an unhandled rejection that ends the test file).
          if (!sending && text.includes('input: ready\n')) sending = drive().catch((e: Error) => void (driveError = e));
        },
      });
      done = true;
      await sending?.catch(() => undefined);
      partitaOutput = r.stdout;
      const show = `status ${r.status}\n--- guest ---\n${r.stdout}\n--- stderr ---\n${r.stderr}${driveError ? `\n--- RFB client ---\n${driveError.message}` : ''}`;
      assert.equal(r.status, OK_STATUS, show);
      assert.ok(size, 'the RFB client got the screen size');
      const lines = r.stdout.split('\n').map((l) => l.trim());
      assert.ok(lines.includes('input: name=Partita Virtio Tablet'), show);
      assert.ok(lines.includes('input: abs_info axis=0 size=20 min=0 max=32767 fuzz=0 flat=0 res=0'), show);
      const x = scaleAxis(AT.x, size.width);
      const y = scaleAxis(AT.y, size.height);
      const events = lines.filter((l) => l.startsWith('event '));
      const ix = events.indexOf(`event type=3 code=0 value=${x}`);
      const iy = events.indexOf(`event type=3 code=1 value=${y}`);
      const press = events.indexOf('event type=1 code=272 value=1');
      assert.ok(ix >= 0 && iy > ix, `X ${x} then Y ${y} (screen ${size.width}×${size.height})\n${show}`);
      assert.deepEqual(events[iy + 1], 'event type=0 code=0 value=0', `EV_SYN ends the motion report\n${show}`);
      assert.ok(press > iy, show);
      assert.ok(lines.includes('input: ok'), show);
    } finally {
      done = true;
      client?.close();
    }
  },
);

test('QEMU: virtio-tablet-pci reports the configuration our tablet claims to share', { skip: skipQemu }, async () => {
  const q = await runOnQemu(guest('virtio-input'), {
    cmdline: 'configonly=1',
    extraArgs: ['-M', 'pcie=on', '-device', 'virtio-tablet-pci'], // merged into runOnQemu's -M microvm,acpi=on
  });
  assert.equal(q.status, OK_STATUS, q.output);
  const theirs = configLines(q.output);
  let ours = partitaOutput;
  if (ours === undefined) {
    if (skipPartita) return;
    const r = await runPartita([
      'run',
      '--kernel',
      guest('virtio-input'),
      '--input',
      'tablet',
      '--cmdline',
      'configonly=1',
    ]);
    assert.equal(r.status, OK_STATUS, r.stdout + r.stderr);
    ours = r.stdout;
  }
  const mine = configLines(ours);
  for (const key of [
    'devids',
    'prop_bits',
    'ev_bits type=2',
    'ev_bits type=3',
    'ev_bits type=17',
    'ev_bits type=20',
    'abs_info axis=0',
    'abs_info axis=1',
  ])
    assert.equal(mine.get(key), theirs.get(key), `${key}\n--- QEMU ---\n${q.output}\n--- Partita ---\n${ours}`);
  // Buttons: QEMU's tablet also has side/extra/gear/touch buttons the RFB viewer cannot press; ours are a subset.
  const qemuButtons = bitsOf(theirs.get('ev_bits type=1'));
  for (const b of bitsOf(mine.get('ev_bits type=1'))) assert.ok(qemuButtons.includes(b), `button ${b} on QEMU's too`);
  assert.match(q.output, /^input: name=QEMU Virtio Tablet$/m);
});
