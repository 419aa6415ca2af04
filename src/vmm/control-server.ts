// The VMM's side of the control channel (see control-protocol.ts), served on the I/O thread: status, pause,
// resume and stop go through VmControl (which any thread may drive); screenshot and screen-text ask hooks the
// display device installs ("no display" without one).
import { createServer, type Server, type Socket } from 'node:net';
import { chmodSync, rmSync } from 'node:fs';
import type { VmControl } from './control.js';
import {
  MAX_CONTROL_LINE,
  parseControlRequest,
  type ControlRequest,
  type ControlResponse,
} from './control-protocol.js';

/** Produces a PNG of the guest's screen. Installed by the display device on the I/O thread. */
export type ScreenshotHook = () => Uint8Array | Promise<Uint8Array>;

let screenshotHook: ScreenshotHook | undefined;

/** The lead wires the VGA renderer here: until then 'screenshot' answers "no display". */
export function setScreenshotHook(hook: ScreenshotHook | undefined): void {
  screenshotHook = hook;
}

/** A text-mode screen's text, or undefined when the display is in a graphics mode. */
export type ScreenTextHook = () => string | undefined;

let screenTextHook: ScreenTextHook | undefined;

export function setScreenTextHook(hook: ScreenTextHook | undefined): void {
  screenTextHook = hook;
}

async function answer(request: ControlRequest, control: VmControl): Promise<ControlResponse> {
  const state = (): ControlResponse => ({
    ok: true,
    state: control.stopping ? 'stopping' : control.paused ? 'paused' : 'running',
    pid: process.pid,
  });
  switch (request.op) {
    case 'status':
      return state();
    case 'pause':
      if (control.stopping) return { ok: false, error: 'the VM is stopping' };
      control.pause();
      return state();
    case 'resume':
      if (control.stopping) return { ok: false, error: 'the VM is stopping' };
      control.resume();
      return state();
    case 'stop':
      control.stop({ kind: 'user-quit', status: 0, message: 'stopped through the control channel' });
      return state();
    case 'screenshot': {
      if (!screenshotHook) return { ok: false, error: 'no display' };
      const png = await screenshotHook();
      return { ...(state() as ControlResponse & { ok: true }), png: Buffer.from(png).toString('base64') };
    }
    case 'screen-text': {
      if (!screenTextHook) return { ok: false, error: 'no display' };
      const text = screenTextHook();
      if (text === undefined) return { ok: false, error: 'the display is in a graphics mode' };
      return { ...(state() as ControlResponse & { ok: true }), text };
    }
  }
}

function serveClient(socket: Socket, control: VmControl): void {
  let buffered = '';
  let queue = Promise.resolve();
  socket.setEncoding('utf8');
  socket.on('error', () => socket.destroy());
  socket.on('data', (text: string) => {
    buffered += text;
    if (buffered.length > MAX_CONTROL_LINE && !buffered.includes('\n')) {
      socket.end(JSON.stringify({ ok: false, error: 'request line too long' } satisfies ControlResponse) + '\n');
      return;
    }
    let nl: number;
    while ((nl = buffered.indexOf('\n')) >= 0) {
      const line = buffered.slice(0, nl).trim();
      buffered = buffered.slice(nl + 1);
      if (!line) continue;
      // Answered in order, one at a time (a screenshot may take a while).
      queue = queue.then(async () => {
        const request = parseControlRequest(line);
        let response: ControlResponse;
        try {
          response = typeof request === 'string' ? { ok: false, error: request } : await answer(request, control);
        } catch (e) {
          response = { ok: false, error: e instanceof Error ? e.message : String(e) };
        }
        if (!socket.destroyed) socket.write(JSON.stringify(response) + '\n');
      });
    }
  });
}

/** Listens on `path` (a stale socket file there is replaced), mode 0600: only its owner may drive the VM. */
export function serveControl(path: string, control: VmControl): Server {
  rmSync(path, { force: true });
  const server = createServer((socket) => serveClient(socket, control));
  server.listen(path, () => chmodSync(path, 0o600));
  return server;
}
