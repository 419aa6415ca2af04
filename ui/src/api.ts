// The daemon's REST API (docs/api.md, v1) as the web UI uses it. On the loopback TCP listener every request needs
// the token: the page is opened as `/?token=…`, we keep it for the session and send it as `Authorization: Bearer`
// on fetches and as `?token=` on WebSockets (browsers cannot set headers on those).

export type VmState = 'stopped' | 'starting' | 'running' | 'paused' | 'stopping' | 'crashed';
export type OsKind = 'linux' | 'windows' | 'other';

/** One device entry of the machine spec: its kind plus the options its model allows. */
export interface DeviceOptions {
  kind: string;
  [option: string]: unknown;
}

export interface MachineSpec {
  cpus: number;
  memory: number;
  boot:
    { kind: 'kernel'; kernel: string; cmdline?: string; initrd?: string[] } | { kind: 'firmware'; firmware: string };
  devices: DeviceOptions[];
  [key: string]: unknown;
}

export interface VmRecord {
  name: string;
  os: OsKind;
  state: VmState;
  spec: MachineSpec;
  display: boolean;
  pid?: number;
  exitStatus?: number;
  message?: string;
  createdAt: string;
}

export interface CreateVmBody {
  name: string;
  os?: OsKind;
  cpus?: number;
  memory?: number;
  disk?: number;
  cdrom?: string;
  kernel?: string;
  initrd?: string;
  cmdline?: string;
  firmware?: string;
}

export interface PatchVmBody {
  cpus?: number;
  memory?: number;
  addDevices?: DeviceOptions[];
  removeDevices?: number[];
}

export interface IsoImage {
  path: string;
  size: number;
}

export type VmEvent =
  { type: 'state'; name: string; state: VmState; message?: string } | { type: 'created' | 'deleted'; name: string };

/** A 4xx/5xx answer: the daemon's one-line message and, for a bad body, the JSON path at fault ("/memory"). */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly path?: string,
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

const TOKEN_KEY = 'partita.token';

/** The token from `?token=` (kept for the tab's session, so in-page navigation does not lose it). */
function readToken(): string | null {
  const fromUrl = new URLSearchParams(location.search).get('token');
  if (fromUrl) {
    sessionStorage.setItem(TOKEN_KEY, fromUrl);
    return fromUrl;
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

export const token = readToken();

/** Paths are relative to the page (base './'), so the UI works wherever the daemon serves it. */
function apiUrl(path: string): URL {
  return new URL(path.replace(/^\//, ''), document.baseURI);
}

/** `ws(s)://host/api/…` with `?token=` when the page has one. */
export function wsUrl(path: string): string {
  const url = apiUrl(path);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  if (token) url.searchParams.set('token', token);
  return url.toString();
}

export async function request<T>(method: string, path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = {};
  if (token) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  let response: Response;
  try {
    response = await fetch(apiUrl(path), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, `cannot reach the Partita daemon (${(e as Error).message})`);
  }
  if (response.status === 204) return undefined as T;
  const text = await response.text();
  let json: unknown;
  try {
    json = text ? JSON.parse(text) : undefined;
  } catch {
    json = undefined;
  }
  if (!response.ok) {
    const err = (json ?? {}) as { error?: string; message?: string; path?: string };
    let message = err.error ?? err.message ?? (text.trim() || response.statusText);
    if (response.status === 401)
      message = token ? 'the token was refused: open the URL `partita serve` printed' : 'this page needs ?token=…';
    throw new ApiError(response.status, message, err.path);
  }
  return json as T;
}

const vmPath = (name: string) => `/api/vms/${encodeURIComponent(name)}`;

export const api = {
  list: () => request<VmRecord[]>('GET', '/api/vms'),
  get: (name: string) => request<VmRecord>('GET', vmPath(name)),
  create: (body: CreateVmBody) => request<VmRecord>('POST', '/api/vms', body),
  patch: (name: string, body: PatchVmBody) => request<VmRecord>('PATCH', vmPath(name), body),
  remove: (name: string, keepDisks: boolean) =>
    request<void>('DELETE', `${vmPath(name)}${keepDisks ? '?keepDisks=1' : ''}`),
  start: (name: string) => request<VmRecord>('POST', `${vmPath(name)}/start`, {}),
  stop: (name: string, kill = false) => request<VmRecord>('POST', `${vmPath(name)}/stop`, kill ? { kill } : {}),
  pause: (name: string) => request<VmRecord>('POST', `${vmPath(name)}/pause`, {}),
  resume: (name: string) => request<VmRecord>('POST', `${vmPath(name)}/resume`, {}),
  isos: () => request<IsoImage[]>('GET', '/api/isos'),
  consoleUrl: (name: string) => wsUrl(`${vmPath(name)}/console`),
  vncUrl: (name: string) => wsUrl(`${vmPath(name)}/vnc`),
  eventsUrl: () => wsUrl('/api/events'),
};

/** "1.5 GiB", "512 MiB": sizes the way people read them. */
export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${Number.isInteger(value) ? value : value.toFixed(1)} ${units[unit]}`;
}

export const MiB = 1024 * 1024;
export const GiB = 1024 * MiB;
