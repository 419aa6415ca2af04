import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { WebSocketServer } from 'ws';
import { RfbServer } from '../../src/display/rfb/server.js';
import { FakeInput, FakeScreen } from '../support/rfb-client.js';

// noVNC 1.7 (the web UI's viewer) in Chromium, over the same attachWebSocket path the daemon's bridge uses: it
// must connect, draw the screen pixel-exact, follow an incremental change, and its keys must arrive as scancodes.
const CHROMIUM = '/usr/bin/chromium';
const NOVNC = path.resolve('node_modules/@novnc/novnc');
const missing = !fs.existsSync(CHROMIUM) ? `no ${CHROMIUM}` : !fs.existsSync(NOVNC) ? 'no @novnc/novnc' : false;

const PAGE = `<!doctype html><html><body style="margin:0">
<div id="screen" style="width:400px;height:300px"></div>
<script type="module">
import RFB from '/novnc/core/rfb.js';
const rfb = new RFB(document.getElementById('screen'), 'ws://' + location.host + '/ws');
window.rfb = rfb;
rfb.addEventListener('connect', () => (window.connected = true));
rfb.addEventListener('disconnect', (e) => (window.disconnected = JSON.stringify(e.detail)));
</script></body></html>`;

test(
  'noVNC 1.7 in Chromium connects over WebSocket, draws pixel-exact, and its keys arrive as scancodes',
  { skip: missing, timeout: 180_000 },
  async () => {
    const { chromium } = await import('playwright-core');
    const screen = new FakeScreen(200, 150);
    const input = new FakeInput();
    const logs: string[] = [];
    const rfb = new RfbServer({ source: screen, input, name: 'novnc-vm', log: (l) => logs.push(l), pollHz: 60 });
    const httpServer = http.createServer((req, res) => {
      const url = new URL(req.url ?? '/', 'http://x');
      if (url.pathname === '/') {
        res.setHeader('content-type', 'text/html');
        return res.end(PAGE);
      }
      const file = path.join(NOVNC, path.normalize(url.pathname.replace(/^\/novnc\//, '')));
      if (!url.pathname.startsWith('/novnc/') || !file.startsWith(NOVNC + path.sep) || !fs.existsSync(file)) {
        res.statusCode = 404;
        return res.end();
      }
      res.setHeader('content-type', 'text/javascript');
      res.end(fs.readFileSync(file));
    });
    const wss = new WebSocketServer({ noServer: true });
    httpServer.on('upgrade', (req, socket, head) =>
      wss.handleUpgrade(req, socket, head, (ws) => rfb.attachWebSocket(ws)),
    );
    await new Promise<void>((r) => httpServer.listen(0, '127.0.0.1', r));
    const port = (httpServer.address() as { port: number }).port;
    const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-gpu'] });
    try {
      const page = await browser.newPage();
      await page.goto(`http://127.0.0.1:${port}/`);
      // Page code is passed as strings: this file is compiled without the DOM library.
      await page.waitForFunction('window.connected === true', null, { timeout: 60_000 });

      const canvasMatches = async (): Promise<string | undefined> => {
        const pixels = (await page.evaluate(
          "Array.from(document.querySelector('#screen canvas').getContext('2d').getImageData(0, 0, 200, 150).data)",
        )) as number[];
        for (let i = 0; i < 200 * 150 * 4; i += 4) {
          if (i % 4 === 3) continue;
          for (let k = 0; k < 3; k++) {
            if (pixels[i + k] !== screen.rgba[i + k])
              return `pixel ${i / 4}: ${pixels.slice(i, i + 3)} vs ${[...screen.rgba.slice(i, i + 3)]}`;
          }
        }
        return undefined;
      };
      const until = async (what: string): Promise<void> => {
        let last: string | undefined = 'not checked';
        for (let i = 0; i < 300 && (last = await canvasMatches()) !== undefined; i++) await page.waitForTimeout(100);
        assert.equal(last, undefined, what);
      };
      await until('the first frame');
      screen.pattern(20, 30, 120, 90, 42);
      screen.fill(0, 0, 64, 64, 250, 10, 10);
      await until('the incremental update');

      await page.evaluate('window.rfb.focus()');
      await page.keyboard.press('KeyA');
      await page.keyboard.press('ArrowUp');
      for (let i = 0; i < 100 && input.keys.length < 4; i++) await page.waitForTimeout(50);
      assert.deepEqual(input.keys, [
        [0x1e, true],
        [0x1e, false],
        [0xe048, true],
        [0xe048, false],
      ]);
      assert.equal(await page.evaluate('window.disconnected'), undefined);
    } finally {
      await browser.close();
      rfb.close();
      wss.close();
      await new Promise<void>((r) => httpServer.close(() => r()));
    }
  },
);
