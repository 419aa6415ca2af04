// The VMM's two sockets without a VM: the control channel (src/vmm/control-server.ts) driving a real VmControl,
// and the serial console hub (src/vmm/serial-socket.ts) following a log file like the one the UART appends to.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { appendFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VmControl } from '../../src/vmm/control.js';
import { serveControl, setScreenshotHook, setScreenTextHook } from '../../src/vmm/control-server.js';
import { serveSerialSocket, REPLAY_BYTES } from '../../src/vmm/serial-socket.js';
import { controlRequest } from '../../src/daemon/vmm-client.js';
import { until } from '../support/daemon.js';

function client(path: string): Promise<{ socket: Socket; text: () => string }> {
  return new Promise((resolve, reject) => {
    const socket = connect(path);
    let text = '';
    socket.on('data', (b: Buffer) => (text += b.toString('latin1')));
    socket.once('connect', () => resolve({ socket, text: () => text }));
    socket.once('error', reject);
  });
}

test('control channel: status, pause, resume, screenshot and screen-text hooks, stop; bad lines answered, not fatal', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'partita-ctl-'));
  const control = new VmControl();
  const path = join(dir, 'control.sock');
  const server = serveControl(path, control);
  try {
    await until('listening', () => server.listening);
    assert.deepEqual(await controlRequest(path, 'status'), { ok: true, state: 'running', pid: process.pid });
    assert.equal((await controlRequest(path, 'pause')).ok, true);
    assert.equal(control.paused, true);
    assert.deepEqual(await controlRequest(path, 'status'), { ok: true, state: 'paused', pid: process.pid });
    await controlRequest(path, 'resume');
    assert.equal(control.paused, false);
    assert.deepEqual(await controlRequest(path, 'screenshot'), { ok: false, error: 'no display' });
    setScreenshotHook(() => new Uint8Array([0x89, 0x50, 0x4e, 0x47]));
    const shot = await controlRequest(path, 'screenshot');
    assert.ok(shot.ok && shot.png);
    assert.deepEqual([...Buffer.from(shot.png, 'base64')], [0x89, 0x50, 0x4e, 0x47]);
    setScreenshotHook(undefined);
    assert.deepEqual(await controlRequest(path, 'screen-text'), { ok: false, error: 'no display' });
    let mode: 'text' | 'graphics' = 'text';
    setScreenTextHook(() => (mode === 'text' ? 'GNU GRUB\n' : undefined));
    const text = await controlRequest(path, 'screen-text');
    assert.ok(text.ok && text.text === 'GNU GRUB\n', JSON.stringify(text));
    mode = 'graphics';
    assert.deepEqual(await controlRequest(path, 'screen-text'), {
      ok: false,
      error: 'the display is in a graphics mode',
    });
    setScreenTextHook(undefined);

    // Several requests on one connection, garbage among them: one answer per line, in order.
    const c = await client(path);
    c.socket.write('not json\n{"op":"reboot"}\n[1]\n{"op":"status"}\n');
    await until('four answers', () => c.text().split('\n').length > 4);
    const answers = c
      .text()
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { ok: boolean; error?: string });
    assert.deepEqual(
      answers.map((a) => a.ok),
      [false, false, false, true],
    );
    assert.match(answers[1].error!, /unknown op "reboot"/);
    c.socket.destroy();

    assert.equal((await controlRequest(path, 'stop')).ok, true);
    assert.equal(control.stopping, true);
    assert.equal(control.reason().kind, 'user-quit');
    assert.equal(control.reason().status, 0);
    assert.deepEqual(await controlRequest(path, 'pause'), { ok: false, error: 'the VM is stopping' });
  } finally {
    server.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('serial socket: output broadcast to every client, this run replayed to late ones, input from any', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'partita-serial-'));
  const log = join(dir, 'serial.log');
  writeFileSync(log, 'output of an earlier run\n');
  const hub = serveSerialSocket(join(dir, 'serial.sock'), log, 25);
  try {
    await until('listening', () => hub.server.listening);
    appendFileSync(log, 'boot line 1\n');
    const a = await client(join(dir, 'serial.sock'));
    await until('replay to a', () => a.text().includes('boot line 1'));
    assert.equal(a.text().includes('earlier run'), false);
    const b = await client(join(dir, 'serial.sock'));
    await until('replay to b', () => b.text() === 'boot line 1\n');
    appendFileSync(log, 'line 2\n');
    await until('broadcast', () => a.text().endsWith('line 2\n') && b.text().endsWith('line 2\n'));
    assert.equal(a.text(), 'boot line 1\nline 2\n');

    let typed = '';
    hub.input.on('data', (bytes: Buffer) => (typed += bytes.toString()));
    a.socket.write('from a;');
    await until('a typed', () => typed === 'from a;');
    b.socket.write('from b');
    await until('b typed', () => typed === 'from a;from b');

    // A late client gets at most REPLAY_BYTES of this run.
    appendFileSync(log, 'x'.repeat(REPLAY_BYTES + 1000));
    await until('a got it all', () => a.text().length >= REPLAY_BYTES + 1000);
    const c = await client(join(dir, 'serial.sock'));
    await until('c replay', () => c.text().length >= REPLAY_BYTES);
    assert.equal(c.text(), 'x'.repeat(REPLAY_BYTES));
    for (const s of [a, b, c]) s.socket.destroy();
  } finally {
    hub.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
