// The VMM control channel (`partita run --control PATH`): a UNIX socket carrying newline-delimited JSON, one
// request per line, one response line per request, in order. The daemon (src/daemon/vmm-client.ts) is its
// client; the I/O thread (src/vmm/control-server.ts) serves it. Shared here so both sides agree on the shapes.

export const CONTROL_OPS = ['status', 'pause', 'resume', 'stop', 'screenshot', 'screen-text'] as const;
export type ControlOp = (typeof CONTROL_OPS)[number];

export interface ControlRequest {
  readonly op: ControlOp;
}

/** Run state as the VMM sees it: it only answers while it runs, so there is no 'stopped' here. */
export type VmmRunState = 'running' | 'paused' | 'stopping';

export type ControlResponse =
  | {
      readonly ok: true;
      readonly state: VmmRunState;
      readonly pid: number;
      /** 'screenshot': the screen as a PNG, base64. */
      readonly png?: string;
      /** 'screen-text': a text-mode screen as text (UTF-8), one line per row. */
      readonly text?: string;
    }
  | { readonly ok: false; readonly error: string };

/** Longest request line accepted: anything longer is not a control request. */
export const MAX_CONTROL_LINE = 4096;

/** Parses one request line; returns an error message instead of throwing. */
export function parseControlRequest(line: string): ControlRequest | string {
  let json: unknown;
  try {
    json = JSON.parse(line);
  } catch {
    return 'not valid JSON';
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) return 'a request is a JSON object';
  const op = (json as { op?: unknown }).op;
  if (typeof op !== 'string' || !(CONTROL_OPS as readonly string[]).includes(op))
    return `unknown op ${JSON.stringify(op)} (known: ${CONTROL_OPS.join(', ')})`;
  return { op: op as ControlOp };
}
