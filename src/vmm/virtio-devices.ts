// The virtio devices a user asked for (--disk, --net, --rng, --console): parsed from CLI specs, opened on the
// builder thread (files, locks, sockets and helper processes: errors surface before the guest starts), and
// turned into backends on the I/O thread. What crosses threads is a structured-clone-safe handle.
import { statSync } from 'node:fs';
import { DeviceOpenError, type VirtioBackend } from '../devices/virtio/device.js';
import { openBlock, VirtioBlock, type BlockHandle, type BlockOptions } from '../devices/virtio/block.js';
import { openNet, VirtioNet, type NetHandle, type NetOptions } from '../devices/virtio/net.js';
import { openEntropy, VirtioEntropy, type EntropyHandle } from '../devices/virtio/entropy.js';
import { openConsole, VirtioConsole, type ConsoleHandle } from '../devices/virtio/console.js';

/** `packed`: offer packed virtqueues (VIRTIO_F_RING_PACKED) on this device; split only by default. */
export type VirtioDeviceSpec =
  | { readonly kind: 'block'; readonly options: BlockOptions; readonly packed?: boolean }
  | { readonly kind: 'net'; readonly options: NetOptions; readonly packed?: boolean }
  | { readonly kind: 'entropy'; readonly packed?: boolean }
  | { readonly kind: 'console'; readonly options: { readonly path: string }; readonly packed?: boolean };

export type OpenedVirtioDevice = { readonly name: string; readonly packed: boolean } & (
  | { readonly kind: 'block'; readonly handle: BlockHandle }
  | { readonly kind: 'net'; readonly handle: NetHandle }
  | { readonly kind: 'entropy'; readonly handle: EntropyHandle }
  | { readonly kind: 'console'; readonly handle: ConsoleHandle }
);

/** One image given twice would be locked against itself: say what happened instead of "in use by another VM". */
function refuseRepeatedImages(specs: readonly VirtioDeviceSpec[]): void {
  const seen = new Map<string, string>();
  for (const spec of specs) {
    if (spec.kind !== 'block') continue;
    let key: string;
    try {
      const st = statSync(spec.options.path);
      key = `${st.dev}:${st.ino}`;
    } catch {
      continue; // openBlock names the problem
    }
    const first = seen.get(key);
    if (first !== undefined)
      throw new DeviceOpenError(
        first === spec.options.path
          ? `disk image '${first}' is given twice`
          : `disk images '${first}' and '${spec.options.path}' are the same file`,
      );
    seen.set(key, spec.options.path);
  }
}

/** Opens every device's host side; on failure closes what was already opened, then rethrows. */
export function openVirtioDevices(specs: readonly VirtioDeviceSpec[]): OpenedVirtioDevice[] {
  refuseRepeatedImages(specs);
  const disks = specs.flatMap((s) => (s.kind === 'block' ? [s.options.path] : []));
  const opened: OpenedVirtioDevice[] = [];
  const counts = new Map<string, number>();
  const nameFor = (kind: string): string => {
    const n = counts.get(kind) ?? 0;
    counts.set(kind, n + 1);
    return `virtio-${kind}${n}`;
  };
  try {
    for (const spec of specs) {
      const packed = spec.packed === true;
      switch (spec.kind) {
        case 'block':
          opened.push({ kind: 'block', name: nameFor('blk'), packed, handle: openBlock(spec.options) });
          break;
        case 'net':
          opened.push({ kind: 'net', name: nameFor('net'), packed, handle: openNet(spec.options) });
          break;
        case 'entropy':
          opened.push({ kind: 'entropy', name: nameFor('rng'), packed, handle: openEntropy() });
          break;
        case 'console':
          opened.push({
            kind: 'console',
            name: nameFor('console'),
            packed,
            handle: openConsole({ ...spec.options, disks }),
          });
          break;
      }
    }
  } catch (e) {
    for (const d of opened) backendFor(d).close();
    throw e;
  }
  return opened;
}

/** A backend object for an opened device (cheap: the work starts at activate()); `log` gets its host-side errors. */
export function backendFor(device: OpenedVirtioDevice, log?: (message: string) => void): VirtioBackend {
  switch (device.kind) {
    case 'block':
      return new VirtioBlock(device.handle);
    case 'net':
      return new VirtioNet(device.handle, log);
    case 'entropy':
      return new VirtioEntropy(device.handle);
    case 'console':
      return new VirtioConsole(device.handle, log);
  }
}
