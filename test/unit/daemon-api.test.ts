// The daemon's API (src/daemon/server.ts) over a real UNIX socket and loopback TCP, with the fake VMM
// (test/support/fake-vmm.ts) standing in for `partita run`: bad bodies are 4xx and change nothing on disk, state
// rules are 409, TCP needs the token, events and the console arrive over WebSockets, OpenAPI is served.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { WebSocket } from 'ws';
import { startTestDaemon, until, type TestDaemon } from '../support/daemon.js';
import { DaemonClient } from '../../src/cli/daemon-client.js';
import type { DaemonEvent, VmRecord } from '../../src/daemon/api-schemas.js';

/** Every file under the data directory with its bytes (logs excluded: they are not the library's state). */
function libraryFiles(d: TestDaemon): string {
  const out: string[] = [];
  const walk = (dir: string): void => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (!e.name.endsWith('.sock')) out.push(`${p}=${readFileSync(p).toString('base64')}`);
    }
  };
  walk(join(d.dataDir, 'vms'));
  return out.sort().join('\n');
}

function kernelFile(d: TestDaemon): string {
  const path = join(d.dataDir, 'kernel.elf');
  writeFileSync(path, 'a kernel');
  return path;
}

function wsUrl(d: TestDaemon, path: string): string {
  return `ws+unix://${d.daemon.socketPath}:${path}`;
}

function openWs(url: string, headers?: Record<string, string>): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { headers });
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
    ws.once('unexpected-response', (req, res) => {
      req.destroy();
      reject(new Error(`HTTP ${res.statusCode}`));
    });
  });
}

test('bad bodies are 400 with the JSON path, and leave the library as it was', async () => {
  const d = await startTestDaemon();
  try {
    const kernel = kernelFile(d);
    assert.equal((await d.client.request('POST', '/api/vms', { name: 'base', kernel, disk: 1 << 20 })).status, 201);
    const before = libraryFiles(d);
    const cases: [string, string, unknown, number, string | undefined][] = [
      ['POST', '/api/vms', '{"name": "x", ', 400, ''],
      ['POST', '/api/vms', { name: 'x', kernel, bogus: 1 }, 400, '/bogus'],
      ['POST', '/api/vms', { name: 'a/b', kernel }, 400, '/name'],
      ['POST', '/api/vms', { name: '..', kernel }, 400, '/name'],
      ['POST', '/api/vms', { name: 'x..y', kernel }, 400, '/name'],
      ['POST', '/api/vms', { kernel }, 400, '/name'],
      ['POST', '/api/vms', { name: 'x', kernel, cpus: '2' }, 400, '/cpus'],
      ['POST', '/api/vms', { name: 'x', kernel, memory: 1000 }, 400, '/memory'],
      ['POST', '/api/vms', { name: 'x', kernel: '/nonexistent/kernel' }, 400, '/kernel'],
      ['POST', '/api/vms', { name: 'base', kernel }, 409, undefined],
      ['PATCH', '/api/vms/base', { cpus: 2, extra: true }, 400, '/extra'],
      [
        'PATCH',
        '/api/vms/base',
        { addDevices: [{ kind: 'virtio-blk', path: '/etc/passwd' }] },
        400,
        '/addDevices/0/path',
      ],
      [
        'PATCH',
        '/api/vms/base',
        { addDevices: [{ kind: 'virtio-blk', path: join(d.dataDir, 'vms', 'base', '..', 'x.img') }] },
        400,
        '/addDevices/0/path',
      ],
      ['PATCH', '/api/vms/nope', { cpus: 2 }, 404, undefined],
      ['POST', '/api/vms/base/start', { headless: 'yes' }, 400, '/headless'],
      ['POST', '/api/vms/base/stop', { kill: true, now: 1 }, 400, '/now'],
      ['POST', '/api/vms/base/stop', {}, 409, undefined],
      ['POST', '/api/vms/base/pause', {}, 409, undefined],
      ['GET', '/api/vms/base/screenshot', undefined, 409, undefined],
      ['DELETE', '/api/vms/base?keepDisks=1&x=2', undefined, 400, undefined],
    ];
    for (const [method, url, body, status, path] of cases) {
      const r = await d.client.request<{ error: string; path?: string }>(method, url, body);
      assert.equal(r.status, status, `${method} ${url} ${JSON.stringify(body)}: ${JSON.stringify(r.body)}`);
      assert.equal(typeof r.body.error, 'string');
      if (path !== undefined) assert.equal(r.body.path, path, `${method} ${url}: ${JSON.stringify(r.body)}`);
    }
    assert.equal(libraryFiles(d), before);
    const list = await d.client.request<VmRecord[]>('GET', '/api/vms');
    assert.deepEqual(
      list.body.map((v) => v.name),
      ['base'],
    );
  } finally {
    await d.destroy();
  }
});

test('start, console, pause, stop through the API; a running VM cannot be started, changed or deleted', async () => {
  const d = await startTestDaemon();
  try {
    const kernel = kernelFile(d);
    await d.client.request('POST', '/api/vms', { name: 'vm1', kernel, cpus: 3 });
    const events: DaemonEvent[] = [];
    const eventsWs = await openWs(wsUrl(d, '/api/events'));
    eventsWs.on('message', (m) => events.push(JSON.parse(m.toString()) as DaemonEvent));

    const started = await d.client.request<VmRecord>('POST', '/api/vms/vm1/start', {});
    assert.equal(started.status, 200, JSON.stringify(started.body));
    assert.ok(['starting', 'running'].includes(started.body.state));
    assert.ok(started.body.pid! > 0);
    await until(
      'vm1 running',
      async () => (await d.client.request<VmRecord>('GET', '/api/vms/vm1')).body.state === 'running',
    );

    const before = libraryFiles(d);
    for (const [method, url, body] of [
      ['POST', '/api/vms/vm1/start', {}],
      ['PATCH', '/api/vms/vm1', { cpus: 1 }],
      ['DELETE', '/api/vms/vm1', undefined],
      ['POST', '/api/vms/vm1/resume', {}],
    ] as const) {
      const r = await d.client.request<{ error: string }>(method, url, body);
      assert.equal(r.status, 409, `${method} ${url}`);
      assert.match(r.body.error, /vm 'vm1' is running/);
    }
    assert.equal(libraryFiles(d).replace(/vm\.json=\S+/g, ''), before.replace(/vm\.json=\S+/g, ''));

    // The console: the guest's greeting (replayed to a late client), then an echo of what we type.
    const consoleWs = await openWs(wsUrl(d, '/api/vms/vm1/console'));
    let text = '';
    consoleWs.on('message', (m: Buffer) => (text += m.toString('utf8')));
    await until('the greeting', () => text.includes('hello from the fake guest with 3 vCPUs'));
    consoleWs.send(Buffer.from('ping'));
    await until('the echo', () => text.includes('echo: ping'));
    consoleWs.close();

    const shot = await d.client.request<{ error: string }>('GET', '/api/vms/vm1/screenshot');
    assert.equal(shot.status, 409);
    assert.match(shot.body.error, /no display/);

    assert.equal((await d.client.request<VmRecord>('POST', '/api/vms/vm1/pause')).body.state, 'paused');
    assert.equal((await d.client.request<VmRecord>('POST', '/api/vms/vm1/resume', {})).body.state, 'running');
    const stopped = await d.client.request<VmRecord>('POST', '/api/vms/vm1/stop', {});
    assert.equal(stopped.body.state, 'stopped', JSON.stringify(stopped.body));
    assert.equal(stopped.body.pid, undefined);
    assert.equal(stopped.body.exitStatus, 0);
    await until('the stopped event', () => events.some((e) => e.type === 'state' && e.state === 'stopped'));
    const states = events
      .filter((e) => e.type === 'state' && e.name === 'vm1')
      .map((e) => (e as { state: string }).state);
    assert.deepEqual(states, ['starting', 'running', 'paused', 'running', 'stopping', 'stopped']);
    eventsWs.close();

    const deleted = await d.client.request('DELETE', '/api/vms/vm1');
    assert.equal(deleted.status, 204);
    assert.deepEqual(readdirSync(join(d.dataDir, 'vms')), []);
  } finally {
    await d.destroy();
  }
});

test('a VMM that fails to start is crashed with the reason from its log', async () => {
  const d = await startTestDaemon({
    vmmCommand: [
      process.execPath,
      '-e',
      'process.stderr.write("partita: kernel is not an ELF\\n"); process.exit(2)',
      '--',
    ],
  });
  try {
    await d.client.request('POST', '/api/vms', { name: 'bad', kernel: kernelFile(d) });
    await d.client.request('POST', '/api/vms/bad/start', {});
    const r = await until('crashed', async () => {
      const v = (await d.client.request<VmRecord>('GET', '/api/vms/bad')).body;
      return v.state === 'crashed' && v;
    });
    assert.equal(r.exitStatus, 2);
    assert.match(r.message!, /kernel is not an ELF/);
    assert.ok(statSync(join(d.dataDir, 'vms', 'bad', 'vmm.log')).size > 0);
  } finally {
    await d.destroy();
  }
});

test('loopback TCP: every /api request needs the bearer token (401 otherwise); ?token= only on WebSocket upgrades', async () => {
  const d = await startTestDaemon({ listen: '127.0.0.1:0' });
  try {
    const { host, port } = d.daemon.tcp!;
    const token = d.daemon.token;
    assert.equal((statSync(join(d.dataDir, 'token')).mode & 0o777).toString(8), '600');
    assert.equal(readFileSync(join(d.dataDir, 'token'), 'utf8').trim(), token);
    assert.equal((statSync(d.daemon.socketPath).mode & 0o777).toString(8), '600');
    const anonymous = new DaemonClient({ host, port });
    const wrong = new DaemonClient({ host, port, token: token.slice(1) + 'x' });
    const right = new DaemonClient({ host, port, token });
    for (const c of [anonymous, wrong]) {
      assert.equal((await c.request('GET', '/api/vms')).status, 401);
      assert.equal((await c.request('POST', '/api/vms', { name: 'x', kernel: kernelFile(d) })).status, 401);
      assert.equal((await c.request('GET', '/api/openapi.json')).status, 401);
    }
    assert.deepEqual(readdirSync(join(d.dataDir, 'vms')), []);
    assert.equal((await anonymous.request('GET', `/api/vms?token=${token}`)).status, 401);
    const ok = await right.request<{ vms: number }>('GET', '/api/status');
    assert.equal(ok.status, 200);
    assert.equal(ok.body.vms, 0);
    // WebSockets: the token in the query, or the header; nothing → refused.
    await assert.rejects(openWs(`ws://${host}:${port}/api/events`), /401/);
    await assert.rejects(openWs(`ws://${host}:${port}/api/events?token=nope`), /401/);
    (await openWs(`ws://${host}:${port}/api/events?token=${token}`)).close();
    (await openWs(`ws://${host}:${port}/api/events`, { authorization: `Bearer ${token}` })).close();
    // The UNIX socket (the user's own, mode 0600) needs no token.
    assert.equal((await d.client.request('GET', '/api/vms')).status, 200);
  } finally {
    await d.destroy();
  }
});

test('OpenAPI document and status are served', async () => {
  const d = await startTestDaemon();
  try {
    const doc = await d.client.request<{ openapi: string; paths: Record<string, Record<string, unknown>> }>(
      'GET',
      '/api/openapi.json',
    );
    assert.equal(doc.status, 200);
    assert.match(doc.body.openapi, /^3\./);
    for (const p of ['/api/vms', '/api/vms/{name}', '/api/vms/{name}/start', '/api/status'])
      assert.ok(doc.body.paths[p], `${p} in the OpenAPI document`);
    assert.ok(doc.body.paths['/api/vms'].post);
    const status = await d.client.request<{ dataDir: string; vms: number; running: number }>('GET', '/api/status');
    assert.deepEqual(
      { ...status.body, version: undefined },
      { version: undefined, vms: 0, running: 0, dataDir: d.dataDir },
    );
    assert.equal((await d.client.request('GET', '/api/nothing')).status, 404);
  } finally {
    await d.destroy();
  }
});

test('records come back whole through the response schemas: device options, firmware boot', async () => {
  const d = await startTestDaemon();
  try {
    const iso = join(d.dataDir, 'install.iso');
    writeFileSync(iso, Buffer.alloc(4096));
    const fw = join(d.dataDir, 'bios.bin');
    writeFileSync(fw, Buffer.alloc(65536));
    const created = await d.client.request<VmRecord>('POST', '/api/vms', {
      name: 'fw',
      os: 'other',
      firmware: fw,
      cdrom: iso,
      disk: 1 << 20,
    });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    const got = (await d.client.request<VmRecord>('GET', '/api/vms/fw')).body;
    // A firmware VM is a PC with a screen (and a virtio tablet and keyboard for it); its installer CD sits on the
    // AHCI controller and boots first.
    assert.deepEqual(got.spec.boot, { kind: 'firmware', firmware: fw, bootOrder: ['cdrom', 'disk'] });
    assert.deepEqual(got.spec.devices, [
      { kind: 'std-vga' },
      { kind: 'virtio-blk', path: join(d.dataDir, 'vms', 'fw', 'disk0.img') },
      { kind: 'ahci', drives: [{ type: 'cdrom', path: iso }] },
      { kind: 'virtio-tablet' },
      { kind: 'virtio-keyboard' },
    ]);
    assert.equal(got.display, true);
    assert.deepEqual(got, JSON.parse(readFileSync(join(d.dataDir, 'vms', 'fw', 'vm.json'), 'utf8')));
    const patched = await d.client.request<VmRecord>('PATCH', '/api/vms/fw', {
      addDevices: [{ kind: 'virtio-net', backend: { kind: 'user' }, mac: '52:54:00:12:34:56' }],
    });
    assert.equal(patched.status, 200, JSON.stringify(patched.body));
    assert.deepEqual(patched.body.spec.devices[5], {
      kind: 'virtio-net',
      backend: { kind: 'user' },
      mac: '52:54:00:12:34:56',
    });
    const isos = await d.client.request<{ path: string; size: number }[]>('GET', '/api/isos');
    assert.deepEqual(isos.body, []);
    writeFileSync(join(d.dataDir, 'isos', 'debian.iso'), Buffer.alloc(2048));
    assert.deepEqual((await d.client.request('GET', '/api/isos')).body, [
      { path: join(d.dataDir, 'isos', 'debian.iso'), size: 2048 },
    ]);
  } finally {
    await d.destroy();
  }
});

test('the vnc WebSocket bridges bytes to <vm dir>/vnc.sock while the VM runs, and refuses otherwise', async () => {
  const d = await startTestDaemon();
  const { createServer } = await import('node:net');
  const rfb = createServer((c) => {
    c.write('RFB 003.008\n');
    c.on('data', (b: Buffer) => c.write(Buffer.concat([Buffer.from('got:'), b])));
  });
  try {
    await d.client.request('POST', '/api/vms', { name: 'gui', kernel: kernelFile(d) });
    const closed = (ws: WebSocket): Promise<number> => new Promise((ok) => ws.once('close', (code) => ok(code)));
    const notRunning = new WebSocket(wsUrl(d, '/api/vms/gui/vnc'));
    assert.equal(await closed(notRunning), 4409);
    const unknown = new WebSocket(wsUrl(d, '/api/vms/nope/vnc'));
    assert.equal(await closed(unknown), 4404);

    await d.client.request('POST', '/api/vms/gui/start', {});
    await until(
      'running',
      async () => (await d.client.request<VmRecord>('GET', '/api/vms/gui')).body.state === 'running',
    );
    await new Promise<void>((ok) => rfb.listen(join(d.dataDir, 'vms', 'gui', 'vnc.sock'), ok));
    const ws = await openWs(wsUrl(d, '/api/vms/gui/vnc'));
    let got = Buffer.alloc(0);
    ws.on('message', (m: Buffer, isBinary: boolean) => {
      assert.equal(isBinary, true);
      got = Buffer.concat([got, m]);
    });
    await until('the RFB greeting', () => got.toString() === 'RFB 003.008\n');
    ws.send(Buffer.from([0, 1, 2, 255]));
    await until('the reply', () => got.length === 12 + 8);
    assert.deepEqual([...got.subarray(12)], [...Buffer.from('got:'), 0, 1, 2, 255]);
    const end = closed(ws);
    ws.close();
    await end;
  } finally {
    rfb.close();
    await d.destroy();
  }
});
