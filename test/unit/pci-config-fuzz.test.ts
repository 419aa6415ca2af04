// Seeded fuzz of PCI configuration space over the whole bus, as a hostile guest reaches it: random 1-, 2-, 4- and
// 8-byte reads and writes through ports 0xCF8/0xCFC and through ECAM, to any bus/device/function/register
// (present or not, aligned or not, up to 4 KiB), with BAR values chosen to collide, to sit over RAM, ECAM or
// 2^64, interleaved with accesses to the PCI memory window. After every step:
// - nothing threw;
// - the host bridge still reads 1b36:0008, class 06.00.00, through both mechanisms;
// - every byte a guest cannot write is what it was (IDs, class, header type, status, capability list and
//   bodies, extended space), the command register holds only its writable bits;
// - every BAR reads back by the PCI rules: its type bits, zeros below its size (so sizing with all ones reads
//   back the size mask), unimplemented BARs 0;
// - each queue's notify ioeventfd is exactly where the bus says its notify address decodes (none where it does
//   not: outside the window, shadowed by another BAR), and (model) KVM holds nothing else.
//
// PARTITA_FUZZ_SEED=<n> replays a run (the seed is printed); PARTITA_FUZZ_ITERATIONS=<n> changes its length.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomInt } from 'node:crypto';
import { Rng } from '../support/rng.js';
import { pciMachine, type PciMachine } from '../support/pci-machine.js';
import {
  CONFIG_SPACE_SIZE,
  PCI_BAR0,
  PCI_CAPABILITY_LIST,
  PCI_COMMAND,
  PCI_INTERRUPT_LINE,
} from '../../src/devices/pci/config-space.js';
import { NOTIFY_OFFSET, VIRTIO_BAR, type VirtioDeviceInfo } from '../../src/devices/virtio/pci-transport.js';
import type { PciFunction } from '../../src/devices/pci/bus.js';
import { PCI_MMIO32_BASE, PCI_MMIO32_END } from '../../src/arch/x86_64/layout.js';
import { drainEventfd as drain } from '../support/eventfd.js';

const infos: VirtioDeviceInfo[] = [
  { deviceType: 2, classCode: 0x018000, features: 0n, queueSizes: [128, 128], configSize: 60 }, // blk, 2 queues
  { deviceType: 1, classCode: 0x020000, features: 0n, queueSizes: [256, 256], configSize: 12 }, // net
  { deviceType: 4, classCode: 0x00ff00, features: 0n, queueSizes: [64], configSize: 0 }, // rng
];

/** Bytes a guest may change, per function: everything else must keep its initial value. */
function mutableBytes(initial: Uint8Array): Set<number> {
  const bytes = new Set<number>([PCI_COMMAND, PCI_COMMAND + 1, PCI_INTERRUPT_LINE]);
  for (let at = PCI_BAR0; at < PCI_BAR0 + 24; at++) bytes.add(at); // checked by the BAR rules instead
  const add = (from: number, to: number): void => {
    for (let at = from; at < to; at++) bytes.add(at);
  };
  for (let cap = initial[PCI_CAPABILITY_LIST], n = 0; cap && n < 48; cap = initial[cap + 1], n++) {
    if (initial[cap] === 0x11) add(cap + 3, cap + 4); // MSI-X message control, upper byte (enable, mask)
    if (initial[cap] === 0x09 && initial[cap + 3] === 5) {
      add(cap + 4, cap + 5); // VIRTIO_PCI_CAP_PCI_CFG: bar
      add(cap + 8, cap + 20); // offset, length, pci_cfg_data
    }
  }
  return bytes;
}

interface Tracked {
  readonly name: string;
  readonly slot: number;
  readonly fn: PciFunction;
  readonly initial: Uint8Array;
  readonly mutable: Set<number>;
  readonly msixControl?: number;
}

function track(m: PciMachine): Tracked[] {
  const fns: [number, PciFunction][] = [
    [0, m.hostBridge],
    ...m.devices.map((d, n): [number, PciFunction] => [n + 1, d]),
  ];
  return fns.map(([slot, fn]) => {
    const initial = fn.config.bytes.slice();
    let msixControl: number | undefined;
    for (let cap = initial[PCI_CAPABILITY_LIST], n = 0; cap && n < 48; cap = initial[cap + 1], n++)
      if (initial[cap] === 0x11) msixControl = cap + 3;
    return { name: fn.name, slot, fn, initial, mutable: mutableBytes(initial), msixControl };
  });
}

/** The checks of the header comment; returns the first broken one, or undefined. */
function brokenInvariant(m: PciMachine, fns: readonly Tracked[], full: boolean): string | undefined {
  // Host bridge identity, through both mechanisms.
  m.ports.pioWrite(0, 4, 0x80000000);
  if (m.ports.pioRead(4, 4) !== 0x00081b36) return 'host bridge ID through 0xCFC';
  m.ports.pioWrite(0, 4, 0x80000008);
  if (m.ports.pioRead(4, 4) >>> 8 !== 0x060000) return 'host bridge class through 0xCFC';
  const id = new Uint8Array(4);
  m.ecam.mmioRead(0, id);
  if (new DataView(id.buffer).getUint32(0, true) !== 0x00081b36) return 'host bridge ID through ECAM';

  for (const f of fns) {
    const c = f.fn.config;
    const command = c.read(PCI_COMMAND, 2);
    if (command & ~0x0507) return `${f.name}: command 0x${command.toString(16)} has read-only bits set`;
    if (f.msixControl !== undefined && (c.bytes[f.msixControl] & 0x3f) !== (f.initial[f.msixControl] & 0x3f))
      return `${f.name}: MSI-X control read-only bits changed`;
    for (let i = 0; i < 6; i++) {
      const def = c.bar(i);
      const low = c.read(PCI_BAR0 + 4 * i, 4);
      if (!def) {
        const upperHalf = i > 0 && c.bar(i - 1)?.kind === 'mem64';
        if (!upperHalf && low !== 0) return `${f.name}: unimplemented BAR ${i} reads 0x${low.toString(16)}`;
        continue;
      }
      const type = def.kind === 'io' ? 1 : (def.kind === 'mem64' ? 4 : 0) | (def.prefetchable ? 8 : 0);
      const typeMask = def.kind === 'io' ? 0x3 : 0xf;
      if ((low & typeMask) !== type) return `${f.name}: BAR ${i} type bits 0x${(low & typeMask).toString(16)}`;
      if (low & (def.size - 1) & ~typeMask) return `${f.name}: BAR ${i} 0x${low.toString(16)} has bits below its size`;
    }
    if (full)
      for (let at = 0; at < CONFIG_SPACE_SIZE; at++)
        if (!f.mutable.has(at) && c.bytes[at] !== f.initial[at])
          return `${f.name}: read-only byte 0x${at.toString(16)} changed from 0x${f.initial[at].toString(16)} to 0x${c.bytes[at].toString(16)}`;
  }

  // Notify ioeventfds where (and only where) the notify addresses decode.
  let registered = 0;
  for (const dev of m.devices) {
    const locate = m.bus.locator(dev);
    for (let q = 0; q < dev.info.queueSizes.length; q++) {
      const want = locate(VIRTIO_BAR, NOTIFY_OFFSET + 4 * q, 2);
      const have = dev.ioeventfdAddress(q);
      if (have !== want)
        return `${dev.name} queue ${q}: ioeventfd at ${have?.toString(16)}, decodes at ${want?.toString(16)}`;
      if (have !== undefined) registered++;
      if (have !== undefined && (have < PCI_MMIO32_BASE || have + 2 > PCI_MMIO32_END))
        return 'ioeventfd outside the window';
    }
    if (dev.ioeventfdsRefused) return `${dev.name}: KVM refused an ioeventfd: two registrations wanted one address`;
  }
  if (m.vm.modelled && m.vm.ioeventfds.length !== registered)
    return `KVM holds ${m.vm.ioeventfds.length} ioeventfds, the transports ${registered}`;
  return undefined;
}

/** A BAR-ish value a hostile guest would write. */
function barValue(rng: Rng, m: PciMachine): number {
  switch (rng.below(8)) {
    case 0:
      return 0xffffffff; // sizing
    case 1:
      return 0;
    case 2: // somewhere in the window, 16 KiB aligned
      return (PCI_MMIO32_BASE + rng.below((PCI_MMIO32_END - PCI_MMIO32_BASE) / 0x4000) * 0x4000) >>> 0;
    case 3: {
      // on top of another device's BAR
      const dev = rng.pick(m.devices);
      return Number((dev.config.barAddress(rng.pick([1, 4])) ?? 0n) & 0xffffffffn);
    }
    case 4:
      return rng.pick([0x100000, 0xe0000000, 0xfec00000, 0xfee00000, 0xffffc000, 0xdfffc000]);
    default:
      return rng.u32();
  }
}

/** The register a step aims at: mostly where things happen (header, BARs, capabilities), sometimes anywhere. */
function register(rng: Rng): number {
  switch (rng.below(6)) {
    case 0:
      return PCI_BAR0 + rng.below(24);
    case 1:
      return rng.below(0x40);
    case 2:
    case 3:
      return 0x40 + rng.below(0xc0);
    case 4:
      return PCI_COMMAND + rng.below(2);
    default:
      return rng.below(CONFIG_SPACE_SIZE);
  }
}

/**
 * A kick that reaches the bus as an MMIO exit (as when no ioeventfd caught it) at some device's notify address:
 * it must signal exactly the queue of the function that decodes there, and nothing else.
 */
function notifyExit(rng: Rng, m: PciMachine): string | undefined {
  const dev = rng.pick(m.devices);
  const queue = rng.below(dev.info.queueSizes.length);
  const base = dev.config.barBase(VIRTIO_BAR);
  const address = (base ?? 0) + NOTIFY_OFFSET + 4 * queue;
  if (base === undefined || !m.bus.routes('mem', address, 2)) return undefined;
  for (const d of m.devices) d.shared.queueEventFds.forEach(drain);
  m.window.mmioWrite(address - PCI_MMIO32_BASE, new Uint8Array([queue, 0]));
  const hit = m.bus.resolve('mem', address, 2);
  for (const d of m.devices)
    for (let q = 0; q < d.info.queueSizes.length; q++) {
      const want = hit?.fn === d && hit.bar === VIRTIO_BAR && hit.offset === NOTIFY_OFFSET + 4 * q ? 1 : 0;
      const got = drain(d.shared.queueEventFds[q]);
      if (got !== want) return `a notify exit at 0x${address.toString(16)} signalled ${d.name} queue ${q} ${got} times`;
    }
  return undefined;
}

/** A read or write in the memory window near a device's BARs (reaching whatever decodes there, or nothing). */
function windowAccess(rng: Rng, m: PciMachine, write: boolean): string | undefined {
  const dev = rng.pick(m.devices);
  const base = Number(dev.config.barAddress(rng.pick([1, 4])) ?? BigInt(PCI_MMIO32_BASE));
  const address = base + rng.below(0x5000) - 0x800;
  const len = rng.pick([1, 2, 4, 8]);
  if (address < PCI_MMIO32_BASE || address + len > PCI_MMIO32_END) return undefined;
  const data = rng.bytes(len);
  if (write) m.window.mmioWrite(address - PCI_MMIO32_BASE, data);
  else m.window.mmioRead(address - PCI_MMIO32_BASE, data);
  return undefined;
}

function step(rng: Rng, m: PciMachine): string | undefined {
  const slot = rng.chance(0.9) ? rng.below(m.devices.length + 1) : rng.below(32);
  const fn = rng.chance(0.95) ? 0 : rng.below(8);
  const bus = rng.chance(0.95) ? 0 : rng.below(256);
  let reg = register(rng);
  const size = rng.pick([1, 2, 4, 4, 4]);
  if (rng.chance(0.8)) reg -= reg % size; // mostly aligned
  const value = reg >= PCI_BAR0 && reg < PCI_BAR0 + 24 && size === 4 ? barValue(rng, m) : rng.u32();
  const write = rng.chance(0.6);
  const inRange = (v: number, bytes: number): boolean => v >= 0 && v < 2 ** (8 * bytes) && Number.isInteger(v);
  switch (rng.below(5)) {
    case 0:
    case 1: {
      // mechanism #1: latch CONFIG_ADDRESS (sometimes disabled or odd), then a data port access
      const enable = rng.chance(0.95) ? 0x80000000 : 0;
      const address =
        (enable | (bus << 16) | (slot << 11) | (fn << 8) | (reg & 0xfc) | (rng.below(4) * +rng.chance(0.05))) >>> 0;
      if (rng.chance(0.05))
        m.ports.pioWrite(rng.below(4), rng.pick([1, 2]), rng.u32() & 0xffff); // not a latch
      else m.ports.pioWrite(0, 4, address);
      const port = 4 + (rng.chance(0.8) ? reg & 3 & ~(size - 1) : rng.below(4));
      const len = Math.min(size, 8 - port);
      if (write) m.ports.pioWrite(port, len, value % 2 ** (8 * len));
      else if (!inRange(m.ports.pioRead(port, len), len)) return `0xCF8 read out of range`;
      return undefined;
    }
    case 2:
    case 3: {
      // ECAM, 1/2/4/8 bytes
      const len = rng.chance(0.05) ? 8 : size;
      const offset = bus * 2 ** 20 + ((slot << 3) | fn) * 4096 + (reg % CONFIG_SPACE_SIZE);
      const data = new Uint8Array(len);
      if (write) {
        for (let i = 0; i < len; i++) data[i] = i < 4 ? (value >>> (8 * i)) & 0xff : rng.below(256);
        m.ecam.mmioWrite(offset, data);
      } else {
        m.ecam.mmioRead(offset, data);
      }
      return undefined;
    }
    case 4:
      return rng.chance(0.3) ? notifyExit(rng, m) : windowAccess(rng, m, write);
    default:
      return windowAccess(rng, m, write);
  }
}

test(
  'PCI config-space fuzz over the whole bus: no throw, read-only bits, BAR rules, ioeventfds follow the decode',
  { timeout: 120_000 },
  (t) => {
    const seed = Number(process.env.PARTITA_FUZZ_SEED ?? randomInt(2 ** 32)) >>> 0;
    const iterations = Number(process.env.PARTITA_FUZZ_ITERATIONS ?? 20_000);
    t.diagnostic(`pci config fuzz: seed ${seed} (replay with PARTITA_FUZZ_SEED=${seed}), ${iterations} steps`);
    const rng = new Rng(seed);
    const m = pciMachine(infos);
    t.diagnostic(`pci config fuzz: ${m.vm.modelled ? 'modelled KVM (no /dev/kvm)' : 'real KVM VM'}`);
    const fns = track(m);
    const started = performance.now();
    let moved = 0;
    const lastBars = (): string =>
      m.devices.map((d) => `${d.config.barAddress(1)}/${d.config.barAddress(4)}`).join(',');
    let bars = lastBars();
    for (let i = 0; i < iterations; i++) {
      let broken: string | undefined;
      try {
        broken = step(rng, m) ?? brokenInvariant(m, fns, i % 16 === 0 || i === iterations - 1);
      } catch (e) {
        broken = `threw ${(e as Error).stack}`;
      }
      if (broken) assert.fail(`seed ${seed} step ${i}: ${broken}`);
      const now = lastBars();
      if (now !== bars) moved++;
      bars = now;
    }
    assert.equal(brokenInvariant(m, fns, true), undefined);
    t.diagnostic(
      `pci config fuzz: ${iterations} steps in ${((performance.now() - started) / 1000).toFixed(1)} s, BAR placement changed ${moved} times, ` +
        `${m.devices.reduce((n, d) => n + d.notificationCounts().notifyExits, 0)} notify exits`,
    );
    assert.ok(moved > iterations / 200, 'the fuzzer moved BARs often enough to exercise re-placement');
  },
);
