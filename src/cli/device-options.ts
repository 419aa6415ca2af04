// Parsing of the device options of `partita run`, QEMU-style: "value,key=value,flag"; a literal comma in a path
// is written as ",,". Each parser returns the machine spec's entry for the device, or throws DeviceOptionError.
import type { DeviceOptions } from '../devices/model.js';

export class DeviceOptionError extends Error {}

/** Splits on single commas; ",," stands for a comma inside a value. */
export function splitOption(text: string): string[] {
  const parts: string[] = [];
  let current = '';
  for (let i = 0; i < text.length; i++) {
    if (text[i] === ',') {
      if (text[i + 1] === ',') {
        current += ',';
        i++;
        continue;
      }
      parts.push(current);
      current = '';
      continue;
    }
    current += text[i];
  }
  parts.push(current);
  return parts;
}

function keyValue(part: string): [string, string | undefined] {
  const eq = part.indexOf('=');
  return eq < 0 ? [part, undefined] : [part.slice(0, eq), part.slice(eq + 1)];
}

/** A disk on the AHCI controller (`--disk …,if=ahci`): one drive entry of the machine's `ahci` device. */
export interface AhciDiskOption {
  readonly kind?: never;
  readonly type: 'disk';
  readonly path: string;
  readonly readonly?: boolean;
  readonly serial?: string;
}

/** --disk PATH[,if=virtio|ahci][,readonly][,serial=ID][,queues=N][,packed] */
export function parseDisk(text: string): DeviceOptions | AhciDiskOption {
  const [path, ...rest] = splitOption(text);
  if (!path) throw new DeviceOptionError(`--disk '${text}': the image path is missing`);
  let readOnly = false;
  let serial: string | undefined;
  let queues: number | undefined;
  let packed = false;
  let bus: 'virtio' | 'ahci' = 'virtio';
  for (const part of rest) {
    const [key, value] = keyValue(part);
    if (key === 'if' && (value === 'virtio' || value === 'ahci')) bus = value;
    else if (key === 'packed' && value === undefined) packed = true;
    else if (key === 'readonly' && (value === undefined || value === 'on')) readOnly = true;
    else if (key === 'readonly' && value === 'off') readOnly = false;
    else if (key === 'serial' && value !== undefined) serial = value;
    else if (key === 'queues' && value !== undefined && /^\d+$/.test(value)) queues = Number(value);
    else
      throw new DeviceOptionError(
        `--disk '${text}': unknown or malformed option '${part}' (if=virtio|ahci, readonly, serial=ID, queues=N, packed)`,
      );
  }
  if (bus === 'ahci') {
    if (queues !== undefined || packed)
      throw new DeviceOptionError(`--disk '${text}': queues= and packed are virtio options, not AHCI's`);
    return { type: 'disk', path, ...(readOnly ? { readonly: true } : {}), ...(serial !== undefined ? { serial } : {}) };
  }
  return {
    kind: 'virtio-blk',
    path,
    ...(readOnly ? { readOnly } : {}),
    ...(serial !== undefined ? { serial } : {}),
    ...(queues !== undefined ? { queues } : {}),
    ...(packed ? { packed } : {}),
  };
}

/** --net user|tap=NAME|socket=PATH[,mac=52:54:00:12:34:56][,packed] */
export function parseNet(text: string): DeviceOptions {
  const [first, ...rest] = splitOption(text);
  const [kind, value] = keyValue(first);
  let backend: { kind: 'user' } | { kind: 'tap'; name: string } | { kind: 'socket'; path: string };
  if (kind === 'user' && value === undefined) backend = { kind: 'user' };
  else if (kind === 'tap' && value) backend = { kind: 'tap', name: value };
  else if (kind === 'socket' && value) backend = { kind: 'socket', path: value };
  else throw new DeviceOptionError(`--net '${text}': expected user, tap=NAME or socket=PATH`);
  let mac: string | undefined;
  let packed = false;
  for (const part of rest) {
    const [key, v] = keyValue(part);
    if (key === 'mac' && v !== undefined) mac = v;
    else if (key === 'packed' && v === undefined) packed = true;
    else
      throw new DeviceOptionError(
        `--net '${text}': unknown or malformed option '${part}' (mac=XX:XX:XX:XX:XX:XX, packed)`,
      );
  }
  return { kind: 'virtio-net', backend, ...(mac !== undefined ? { mac } : {}), ...(packed ? { packed } : {}) };
}

/** --console PATH (a file to write, or a UNIX socket to connect to) */
export function parseConsole(text: string): DeviceOptions {
  if (!text) throw new DeviceOptionError('--console needs a path');
  return { kind: 'virtio-console', path: text };
}

/** --input tablet,keyboard: virtio-input devices (an absolute pointer and a keyboard for the screen). */
export function parseInput(text: string): DeviceOptions[] {
  const names = splitOption(text);
  const devices = names.map((name): DeviceOptions => {
    if (name === 'tablet' || name === 'keyboard') return { kind: `virtio-${name}` };
    throw new DeviceOptionError(`--input '${text}': '${name}' is not tablet or keyboard`);
  });
  if (new Set(names).size !== names.length) throw new DeviceOptionError(`--input '${text}': a device is named twice`);
  return devices;
}

/** --boot order=cd,disk,net → the firmware's boot order (fw_cfg "bootorder"). */
export function parseBootOrder(text: string): ('cdrom' | 'disk' | 'net')[] {
  const [key, value] = keyValue(text);
  if (key !== 'order' || !value) throw new DeviceOptionError(`--boot '${text}': expected order=cd,disk,net`);
  const names: Record<string, 'cdrom' | 'disk' | 'net'> = { cd: 'cdrom', cdrom: 'cdrom', disk: 'disk', net: 'net' };
  const order = value.split(',').map((n) => {
    const kind = names[n];
    if (!kind) throw new DeviceOptionError(`--boot '${text}': '${n}' is not cd, disk or net`);
    return kind;
  });
  if (new Set(order).size !== order.length) throw new DeviceOptionError(`--boot '${text}': a device is named twice`);
  return order;
}
