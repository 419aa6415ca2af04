// The screen's keyboard end to end on a PC: keys sent by an RFB client reach the guest's PS/2 keyboard as the scan
// codes a real keyboard behind an i8042 would send. The guest is test/firmware/ps2-keys.S, a ROM that polls the
// i8042 and prints each byte it gets (no interrupts: it runs under any CPU emulator). QEMU's `pc` machine, fed the
// same keys through its monitor's sendkey, is the reference: both must print the same bytes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { haveKvm, HANG_GUARD_MS, runPartita, runProgram } from '../support/partita.js';
import { QEMU, QEMU_MISSING, qemuAvailable } from '../support/qemu.js';
import { RfbTestClient } from '../support/rfb-client.js';
import { buildTestRom, qemuRomArgs } from '../support/test-rom.js';

const READY = 'ps2-keys: ready';
/**
 * What the keys below make the keyboard send, in scan code set 1 (the i8042 translates): A, Enter, Shift+A, and
 * the ISO 102nd key ("<>" left of Z, only on non-US keyboards: XT code 0x56, which only its scan code names).
 */
const EXPECTED = ['1e', '9e', '1c', '9c', '2a', '1e', '9e', 'aa', '56', 'd6'];

/** The bytes of the complete "key XX" lines (output arrives in pieces: a line without its newline yet is left). */
const bytesPrinted = (out: string): string[] =>
  (out.split(READY)[1] ?? '')
    .split(/\r?\n/)
    .slice(0, -1)
    .filter((l) => l.startsWith('key '))
    .map((l) => l.slice(4).trim());
const allThere = (out: string): boolean => bytesPrinted(out).length >= EXPECTED.length;

const XK = { a: 0x61, A: 0x41, Return: 0xff0d, Shift_L: 0xffe1, less: 0x3c } as const;

test('RFB key events reach the PS/2 keyboard as set 1 scan codes: Partita', async (t) => {
  if (!haveKvm) return t.skip('no /dev/kvm on this machine: Partita cannot run a VM here (SKIPPED, not passed)');
  const dir = mkdtempSync(join(tmpdir(), 'partita-ps2-'));
  const socket = join(dir, 'vnc.sock');
  let client: RfbTestClient | undefined;
  let typing: Promise<void> | undefined;
  let clientError: Error | undefined;
  const type = async (): Promise<void> => {
    client = await RfbTestClient.connectRetrying(socket, HANG_GUARD_MS);
    await client.handshake();
    const press = (keysym: number): void => {
      client!.key(keysym, true);
      client!.key(keysym, false);
    };
    press(XK.a);
    press(XK.Return);
    client.key(XK.Shift_L, true);
    press(XK.A);
    client.key(XK.Shift_L, false);
    // QEMU's Extended Key Event names the key by its scan code, as noVNC sends every key.
    client.qemuKey(XK.less, 0x56, true);
    client.qemuKey(XK.less, 0x56, false);
  };
  try {
    const r = await runPartita(
      ['run', '--bios', buildTestRom('ps2-keys', dir), '--memory', '64M', '--vnc', `unix:${socket}`],
      {
        onStdout: (out) => {
          if (!typing && out.includes(READY)) typing = type().catch((e: Error) => void (clientError = e));
        },
        stopWhen: allThere,
      },
    );
    await typing;
    const show = `status ${r.status}\n--- guest ---\n${r.stdout}\n--- stderr ---\n${r.stderr}${clientError ? `\n--- RFB client ---\n${clientError.message}` : ''}`;
    assert.ok(r.stoppedEarly, show);
    assert.deepEqual(bytesPrinted(r.stdout), EXPECTED, show);
  } finally {
    client?.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('RFB key events reach the PS/2 keyboard as set 1 scan codes: reference on QEMU (sendkey)', async (t) => {
  if (!qemuAvailable()) return t.skip(QEMU_MISSING);
  const dir = mkdtempSync(join(tmpdir(), 'partita-ps2-'));
  const monitor = join(dir, 'monitor.sock');
  let sending: Promise<void> | undefined;
  let monitorError: Error | undefined;
  const sendKeys = (): Promise<void> =>
    new Promise((resolve, reject) => {
      const s = connect(monitor);
      s.on('error', reject);
      s.on('connect', () => {
        // One command per line; QEMU runs them in order, each a press and (after its hold time) a release.
        s.end('sendkey a\nsendkey ret\nsendkey shift-a\nsendkey less\n');
        resolve();
      });
    });
  try {
    const r = await runProgram(
      QEMU,
      [
        ...qemuRomArgs(buildTestRom('ps2-keys', dir), ['-accel', 'tcg']),
        '-serial',
        'stdio',
        '-monitor',
        `unix:${monitor},server=on,wait=off`,
      ],
      {
        onStdout: (out) => {
          if (!sending && out.includes(READY)) sending = sendKeys().catch((e: Error) => void (monitorError = e));
        },
        stopWhen: allThere,
      },
    );
    await sending;
    const show = `${r.stdout}\n${r.stderr}${monitorError ? `\nmonitor: ${monitorError.message}` : ''}`;
    assert.ok(r.stoppedEarly, show);
    assert.deepEqual(bytesPrinted(r.stdout), EXPECTED, show);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
