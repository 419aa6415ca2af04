import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { startRfbServer, type RfbServerHandle } from '../../src/display/rfb/server.js';
import { FakeInput, FakeScreen } from '../support/rfb-client.js';

const missing = spawnSync('sh', ['-c', 'command -v vncsnapshot']).status !== 0;

/** Width and height from a JPEG's start-of-frame marker. */
function jpegSize(b: Buffer): { width: number; height: number } {
  assert.equal(b.readUInt16BE(0), 0xffd8, 'a JPEG');
  for (let o = 2; o + 9 < b.length;) {
    const marker = b.readUInt16BE(o);
    const length = b.readUInt16BE(o + 2);
    if (marker >= 0xffc0 && marker <= 0xffc3) return { height: b.readUInt16BE(o + 5), width: b.readUInt16BE(o + 7) };
    o += 2 + length;
  }
  throw new Error('no SOF marker');
}

test(
  'a native viewer (vncsnapshot, RFB 3.3) takes a frame over TCP',
  { skip: missing ? 'vncsnapshot is not installed: apt-get install -y vncsnapshot' : false },
  async () => {
    const screen = new FakeScreen(320, 200);
    const logs: string[] = [];
    // vncsnapshot names a server by display number (port 5900 + N): find a free one.
    let handle: RfbServerHandle | undefined;
    let display = 0;
    for (display = 57; display < 99 && !handle; display++) {
      try {
        handle = await startRfbServer({
          source: screen,
          input: new FakeInput(),
          name: 'snapshot',
          listen: { port: 5900 + display, host: '127.0.0.1' },
          log: (l) => logs.push(l),
        });
      } catch {
        // port taken
      }
    }
    assert.ok(handle, 'a free VNC display');
    display--;
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rfb-snap-'));
    const out = path.join(dir, 'shot.jpg');
    try {
      const result = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
        const child = execFile(
          'vncsnapshot',
          ['-quiet', `127.0.0.1:${display}`, out],
          { timeout: 60_000 },
          (err, _o, stderr) => resolve({ code: err ? (child.exitCode ?? -1) : 0, stderr }),
        );
      });
      assert.equal(result.code, 0, `vncsnapshot failed: ${result.stderr}`);
      assert.deepEqual(jpegSize(fs.readFileSync(out)), { width: 320, height: 200 });
      // At least the whole screen went out (Raw would be 320 × 200 × 4 bytes; compressed encodings less).
      assert.ok(handle.server.updatesSent >= 1 && handle.server.bytesSent > 1000, logs.join('\n'));
    } finally {
      await handle.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  },
);
