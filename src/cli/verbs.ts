// prlctl-style verbs that talk to the daemon (`partita serve`): list, create, start, stop, pause, resume, set,
// console, capture, delete, status. Each is one request (or a short wait for a state) and one line of output;
// failures are one line on stderr with a non-zero status: no daemon, unknown VM, VM in the wrong state.
import { writeFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { isatty } from 'node:tty';
import { parseArgs, styleText, type ParseArgsConfig } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { WebSocket } from 'ws';
import { DaemonClient, NoDaemonError, type DaemonResponse } from './daemon-client.js';
import { defaultSocketPath } from '../daemon/paths.js';
import { formatSize, parseSize } from '../base/units.js';
import { DeviceOptionError, parseConsole, parseDisk, parseNet } from './device-options.js';
import { ConsoleEscape } from '../vmm/console-escape.js';
import type { DeviceOptions } from '../devices/model.js';
import type { ApiError, DaemonStatus, VmRecord } from '../daemon/api-schemas.js';
import { VERB_USAGE } from './verb-names.js';

/** A verb's failure: one line, its exit status (2 for bad input, 1 for everything else). */
export class VerbError extends Error {
  constructor(
    message: string,
    readonly status = 1,
  ) {
    super(message);
    this.name = 'VerbError';
  }
}

const COMMON = { socket: { type: 'string' }, help: { type: 'boolean', short: 'h' } } as const;

function parse(args: string[], options: ParseArgsConfig['options']): ReturnType<typeof parseArgs> {
  try {
    return parseArgs({ args, options: { ...COMMON, ...options }, strict: true, allowPositionals: true });
  } catch (e) {
    throw new VerbError((e as Error).message.split('\n')[0], 2);
  }
}

function client(values: Record<string, unknown>): DaemonClient {
  return new DaemonClient({ socketPath: (values.socket as string | undefined) ?? defaultSocketPath() });
}

/** The one VM name a verb takes. */
function vmName(verb: string, positionals: string[]): string {
  if (positionals.length !== 1) throw new VerbError(`${verb}: give one VM name (partita ${verb} NAME)`, 2);
  return positionals[0];
}

/** Sends a request; a 4xx/5xx answer becomes the daemon's own one-line error. */
async function call<T>(c: DaemonClient, method: string, path: string, body?: unknown): Promise<T> {
  const r: DaemonResponse = await c.request(method, path, body);
  if (r.status >= 400) {
    const e = r.body as ApiError;
    const text = typeof e === 'object' && e && 'error' in e ? e.error : `HTTP ${r.status}`;
    throw new VerbError(
      e && typeof e === 'object' && e.path ? `${text} (at ${e.path})` : text,
      r.status === 400 ? 2 : 1,
    );
  }
  return r.body as T;
}

const enc = encodeURIComponent;

const color = (style: Parameters<typeof styleText>[0], text: string): string =>
  isatty(1) && !process.env.NO_COLOR ? styleText(style, text) : text;

function stateText(state: string): string {
  const styles: Record<string, Parameters<typeof styleText>[0]> = {
    running: 'green',
    paused: 'yellow',
    crashed: 'red',
    starting: 'cyan',
    stopping: 'cyan',
  };
  return styles[state] ? color(styles[state], state) : state;
}

function size(text: string, flag: string): number {
  try {
    return parseSize(text);
  } catch (e) {
    throw new VerbError(`${flag}: ${(e as Error).message}`, 2);
  }
}

function count(text: string | undefined, flag: string): number | undefined {
  if (text === undefined) return undefined;
  if (!/^\d+$/.test(text)) throw new VerbError(`${flag} '${text}' is not a whole number`, 2);
  return Number(text);
}

async function listVerb(args: string[]): Promise<number> {
  const { values, positionals } = parse(args, { all: { type: 'boolean', short: 'a' }, json: { type: 'boolean' } });
  if (positionals.length) throw new VerbError(`list: unexpected argument '${positionals[0]}'`, 2);
  let vms = await call<VmRecord[]>(client(values), 'GET', '/api/vms');
  if (!values.all) vms = vms.filter((v) => v.state !== 'stopped');
  if (values.json) {
    process.stdout.write(JSON.stringify(vms, null, 2) + '\n');
    return 0;
  }
  const rows = [['NAME', 'STATE', 'OS', 'CPUS', 'MEMORY', 'PID']].concat(
    vms.map((v) => [
      v.name,
      v.state,
      v.os,
      String(v.spec.cpus),
      formatSize(v.spec.memory),
      v.pid ? String(v.pid) : '-',
    ]),
  );
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  for (const [n, row] of rows.entries()) {
    const cells = row.map((cell, i) => {
      const padded = cell.padEnd(widths[i]);
      return n > 0 && i === 1 ? padded.replace(cell, stateText(cell)) : n === 0 ? color('bold', padded) : padded;
    });
    process.stdout.write(cells.join('  ').trimEnd() + '\n');
  }
  return 0;
}

async function createVerb(args: string[]): Promise<number> {
  const { values, positionals } = parse(args, {
    os: { type: 'string' },
    cpus: { type: 'string' },
    memory: { type: 'string' },
    disk: { type: 'string' },
    cdrom: { type: 'string' },
    kernel: { type: 'string' },
    initrd: { type: 'string' },
    cmdline: { type: 'string' },
    firmware: { type: 'string' },
  });
  const name = vmName('create', positionals);
  const os = values.os as string | undefined;
  if (os !== undefined && !['linux', 'windows', 'other'].includes(os))
    throw new VerbError(`--os '${os}' is not linux, windows or other`, 2);
  const path = (v: unknown): string | undefined => (typeof v === 'string' ? resolve(v) : undefined);
  const firmware = values.firmware as string | undefined;
  const body = {
    name,
    os,
    cpus: count(values.cpus as string | undefined, '--cpus'),
    memory: values.memory !== undefined ? size(values.memory as string, '--memory') : undefined,
    disk: values.disk !== undefined ? size(values.disk as string, '--disk') : undefined,
    cdrom: path(values.cdrom),
    kernel: path(values.kernel),
    initrd: path(values.initrd),
    cmdline: values.cmdline as string | undefined,
    firmware: firmware === undefined || firmware === 'bios' || firmware === 'uefi' ? firmware : resolve(firmware),
  };
  const vm = await call<VmRecord>(client(values), 'POST', '/api/vms', body);
  process.stdout.write(`created '${vm.name}' (${vm.spec.cpus} vCPU, ${formatSize(vm.spec.memory)})\n`);
  return 0;
}

/** Waits (bounded only by a hang guard) until the VM leaves a transitional state. */
async function settled(c: DaemonClient, name: string, from: string): Promise<VmRecord> {
  const guard = Date.now() + 10 * 60_000;
  for (;;) {
    const vm = await call<VmRecord>(c, 'GET', `/api/vms/${enc(name)}`);
    if (vm.state !== from || Date.now() > guard) return vm;
    await sleep(100);
  }
}

async function startVerb(args: string[]): Promise<number> {
  const { values, positionals } = parse(args, { headless: { type: 'boolean' } });
  const name = vmName('start', positionals);
  const c = client(values);
  let vm = await call<VmRecord>(c, 'POST', `/api/vms/${enc(name)}/start`, values.headless ? { headless: true } : {});
  if (vm.state === 'starting') vm = await settled(c, name, 'starting');
  if (vm.state === 'crashed' || vm.state === 'stopped')
    throw new VerbError(`vm '${name}' did not start: ${vm.message ?? vm.state}`);
  process.stdout.write(`vm '${name}' is ${stateText(vm.state)} (pid ${vm.pid})\n`);
  return 0;
}

function actionVerb(verb: 'stop' | 'pause' | 'resume') {
  return async (args: string[]): Promise<number> => {
    const { values, positionals } = parse(args, verb === 'stop' ? { kill: { type: 'boolean' } } : {});
    const name = vmName(verb, positionals);
    const vm = await call<VmRecord>(
      client(values),
      'POST',
      `/api/vms/${enc(name)}/${verb}`,
      values.kill ? { kill: true } : {},
    );
    process.stdout.write(`vm '${name}' is ${stateText(vm.state)}\n`);
    return 0;
  };
}

/** A device for --device-add: the `partita run` syntax (disk=…, net=…, rng, console=…) or a JSON entry. */
export function parseDeviceAdd(text: string): DeviceOptions {
  try {
    if (text.trimStart().startsWith('{')) {
      const json = JSON.parse(text) as unknown;
      if (typeof json !== 'object' || json === null || typeof (json as { kind?: unknown }).kind !== 'string')
        throw new VerbError(`--device-add: a JSON device needs a "kind"`, 2);
      return json as DeviceOptions;
    }
    if (text === 'rng') return { kind: 'virtio-rng' };
    if (text === 'tablet' || text === 'keyboard') return { kind: `virtio-${text}` };
    const eq = text.indexOf('=');
    const [key, rest] = eq < 0 ? [text, ''] : [text.slice(0, eq), text.slice(eq + 1)];
    if (key === 'disk') {
      const d = parseDisk(rest);
      if (d.kind === undefined)
        throw new VerbError(`--device-add disk=${rest}: if=ahci drives are added with the VM's AHCI controller`, 2);
      return typeof d.path === 'string' ? { ...(d as DeviceOptions), path: resolve(d.path) } : (d as DeviceOptions);
    }
    if (key === 'net') return parseNet(rest);
    if (key === 'console') return parseConsole(resolve(rest));
  } catch (e) {
    if (e instanceof DeviceOptionError || e instanceof SyntaxError)
      throw new VerbError(`--device-add: ${e.message}`, 2);
    throw e;
  }
  throw new VerbError(
    `--device-add '${text}': expected disk=PATH…, net=…, rng, tablet, keyboard, console=PATH or a JSON device`,
    2,
  );
}

async function setVerb(args: string[]): Promise<number> {
  const { values, positionals } = parse(args, {
    cpus: { type: 'string' },
    memory: { type: 'string' },
    'device-add': { type: 'string', multiple: true },
    'device-del': { type: 'string', multiple: true },
  });
  const name = vmName('set', positionals);
  const add = ((values['device-add'] as string[] | undefined) ?? []).map(parseDeviceAdd);
  const del = ((values['device-del'] as string[] | undefined) ?? []).map((t) => count(t, '--device-del')!);
  const body = {
    cpus: count(values.cpus as string | undefined, '--cpus'),
    memory: values.memory !== undefined ? size(values.memory as string, '--memory') : undefined,
    ...(add.length ? { addDevices: add } : {}),
    ...(del.length ? { removeDevices: del } : {}),
  };
  const vm = await call<VmRecord>(client(values), 'PATCH', `/api/vms/${enc(name)}`, body);
  process.stdout.write(
    `vm '${name}': ${vm.spec.cpus} vCPU, ${formatSize(vm.spec.memory)}, devices: ${vm.spec.devices.map((d, i) => `${i}:${d.kind}`).join(' ') || 'none'}\n`,
  );
  return 0;
}

async function deleteVerb(args: string[]): Promise<number> {
  const { values, positionals } = parse(args, { 'keep-disks': { type: 'boolean' } });
  const name = vmName('delete', positionals);
  await call(client(values), 'DELETE', `/api/vms/${enc(name)}${values['keep-disks'] ? '?keepDisks=1' : ''}`);
  process.stdout.write(`deleted '${name}'\n`);
  return 0;
}

async function captureVerb(args: string[]): Promise<number> {
  const { values, positionals } = parse(args, {});
  if (positionals.length !== 2) throw new VerbError('capture: partita capture NAME out.png', 2);
  const [name, out] = positionals;
  const r = await client(values).request('GET', `/api/vms/${enc(name)}/screenshot`);
  if (r.status >= 400) throw new VerbError((r.body as ApiError).error ?? `HTTP ${r.status}`);
  writeFileSync(out, r.raw);
  process.stdout.write(`saved ${out} (${r.raw.length} bytes)\n`);
  return 0;
}

async function statusVerb(args: string[]): Promise<number> {
  const { values, positionals } = parse(args, { json: { type: 'boolean' } });
  const c = client(values);
  if (positionals.length === 0) {
    const s = await call<DaemonStatus>(c, 'GET', '/api/status');
    if (values.json) process.stdout.write(JSON.stringify(s) + '\n');
    else
      process.stdout.write(
        `daemon ${s.version} on ${c.where}: ${s.vms} VMs, ${s.running} running; library ${s.dataDir}\n`,
      );
    return 0;
  }
  const vm = await call<VmRecord>(c, 'GET', `/api/vms/${enc(vmName('status', positionals))}`);
  if (values.json) process.stdout.write(JSON.stringify(vm, null, 2) + '\n');
  else
    process.stdout.write(
      `vm '${vm.name}' ${stateText(vm.state)}${vm.pid ? ` (pid ${vm.pid})` : ''}${vm.message ? `: ${vm.message}` : ''}\n`,
    );
  return 0;
}

async function consoleVerb(args: string[]): Promise<number> {
  const { values, positionals } = parse(args, {});
  const name = vmName('console', positionals);
  const c = client(values);
  const vm = await call<VmRecord>(c, 'GET', `/api/vms/${enc(name)}`);
  if (vm.state !== 'running' && vm.state !== 'paused') throw new VerbError(`vm '${name}' is ${vm.state}, not running`);
  const ws = new WebSocket(`ws+unix://${c.endpoint.socketPath}:/api/vms/${enc(name)}/console`);
  await new Promise<void>((ok, fail) => {
    ws.once('open', ok);
    ws.once('error', (e) => fail(new VerbError(`console: ${e.message}`)));
  });
  const raw = isatty(0);
  process.stderr.write(`partita: console of '${name}'; Ctrl-] or Ctrl-A x leaves (the VM keeps running)\r\n`);
  if (raw) process.stdin.setRawMode(true);
  const escape = new ConsoleEscape();
  return new Promise<number>((done) => {
    const leave = (status: number, why?: string): void => {
      if (raw) process.stdin.setRawMode(false);
      process.stdin.pause();
      if (why) process.stderr.write(`\r\npartita: ${why}\n`);
      ws.close();
      done(status);
    };
    ws.on('message', (data: Buffer) => process.stdout.write(data));
    ws.on('close', (code, reason) => leave(code === 1000 ? 0 : 1, `console closed (${reason.toString() || code})`));
    process.stdin.on('data', (bytes: Buffer) => {
      const ctrlBracket = bytes.indexOf(0x1d);
      if (ctrlBracket >= 0) {
        if (ctrlBracket > 0) ws.send(bytes.subarray(0, ctrlBracket));
        return leave(0);
      }
      const { forward, commands } = escape.feed(bytes);
      if (forward.length) ws.send(forward);
      if (commands.includes('quit')) leave(0);
    });
    process.stdin.on('end', () => leave(0));
  });
}

export const DAEMON_VERBS: Record<string, (args: string[]) => Promise<number>> = {
  list: listVerb,
  create: createVerb,
  start: startVerb,
  stop: actionVerb('stop'),
  pause: actionVerb('pause'),
  resume: actionVerb('resume'),
  set: setVerb,
  console: consoleVerb,
  capture: captureVerb,
  delete: deleteVerb,
  status: statusVerb,
};

/** Runs a verb; every failure is one line on stderr and a non-zero status. */
export async function runVerb(verb: string, args: string[]): Promise<number> {
  if (args.includes('-h') || args.includes('--help')) {
    process.stdout.write(`Usage: partita ${verb} …\n${VERB_USAGE}\n`);
    return 0;
  }
  try {
    return await DAEMON_VERBS[verb](args);
  } catch (e) {
    if (e instanceof VerbError || e instanceof NoDaemonError) {
      process.stderr.write(`partita: ${e.message}\n`);
      return e instanceof VerbError ? e.status : 1;
    }
    throw e;
  }
}
