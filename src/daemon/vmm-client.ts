// The daemon's side of the VMM control channel (src/vmm/control-protocol.ts): one request, one answer.
import { connect } from 'node:net';
import type { ControlOp, ControlResponse } from '../vmm/control-protocol.js';

export class ControlChannelError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ControlChannelError';
  }
}

/** Asks the VMM listening on `path`; rejects (ControlChannelError) when nobody answers within `timeoutMs`. */
export function controlRequest(path: string, op: ControlOp, timeoutMs = 5000): Promise<ControlResponse> {
  return new Promise((resolve, reject) => {
    const socket = connect(path);
    let text = '';
    const done = (f: () => void): void => {
      clearTimeout(timer);
      socket.destroy();
      f();
    };
    const timer = setTimeout(
      () => done(() => reject(new ControlChannelError(`no answer to '${op}' on ${path}`))),
      timeoutMs,
    );
    socket.setEncoding('utf8');
    socket.on('connect', () => socket.write(JSON.stringify({ op }) + '\n'));
    socket.on('data', (chunk: string) => {
      text += chunk;
      const nl = text.indexOf('\n');
      if (nl < 0) return;
      try {
        const response = JSON.parse(text.slice(0, nl)) as ControlResponse;
        done(() => resolve(response));
      } catch {
        done(() => reject(new ControlChannelError(`a garbled answer to '${op}' on ${path}`)));
      }
    });
    socket.on('error', (e: NodeJS.ErrnoException) =>
      done(() => reject(new ControlChannelError(`cannot reach the VMM on ${path}: ${e.code ?? e.message}`))),
    );
    socket.on('close', () => done(() => reject(new ControlChannelError(`the VMM closed ${path} without answering`))));
  });
}
