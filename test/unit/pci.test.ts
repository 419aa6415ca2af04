import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PciBus, BarAllocator, devfn, type PciFunction } from '../../src/devices/pci/bus.js';
import {
  PciConfigSpace,
  PCI_COMMAND,
  PCI_STATUS,
  PCI_BAR0,
  PCI_CAPABILITY_LIST,
} from '../../src/devices/pci/config-space.js';
import { PciHostBridge } from '../../src/devices/pci/host-bridge.js';

function cf8(bus: PciBus, dev: number, fn: number, reg: number): void {
  bus.configPorts().pioWrite(0, 4, (0x80000000 | (dev << 11) | (fn << 8) | (reg & 0xfc)) >>> 0);
}

function testDevice(): PciFunction & { log: string[] } {
  const config = new PciConfigSpace();
  config.initialize({ vendorId: 0x1af4, deviceId: 0x1042, classCode: 0x018000, interruptPin: 1 });
  config.defineBar({ index: 0, kind: 'mem32', size: 0x1000 });
  config.defineBar({ index: 2, kind: 'mem64', size: 0x4000, prefetchable: true });
  config.defineBar({ index: 4, kind: 'io', size: 0x20 });
  config.addCapability(0x09, new Uint8Array([14, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
  config.addCapability(
    0x11,
    new Uint8Array([3, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
    new Uint8Array([0, 0xc0, 0, 0, 0, 0, 0, 0, 0, 0]),
  );
  const log: string[] = [];
  return {
    name: 'test',
    config,
    log,
    barRead: (bar, offset, data) => {
      log.push(`r${bar}+${offset}/${data.length}`);
      data.fill(0x5a);
    },
    barWrite: (bar, offset, data) => void log.push(`w${bar}+${offset}=${[...data].join(',')}`),
  };
}

test('config mechanism #1: host bridge identity, absent devices read as all ones', () => {
  const bus = new PciBus();
  bus.add(devfn(0), new PciHostBridge());
  const ports = bus.configPorts();
  cf8(bus, 0, 0, 0);
  assert.equal(ports.pioRead(4, 4), 0x00081b36);
  cf8(bus, 0, 0, 8);
  assert.equal(ports.pioRead(4, 4) >>> 8, 0x060000);
  assert.equal(ports.pioRead(6, 2), 0x0600, 'sub-dword read at 0xCFE');
  cf8(bus, 5, 0, 0);
  assert.equal(ports.pioRead(4, 4), 0xffffffff);
  assert.equal(ports.pioRead(4, 2), 0xffff);
  ports.pioWrite(0, 4, 0x00000000); // enable bit clear
  assert.equal(ports.pioRead(4, 4), 0xffffffff);
  ports.pioWrite(0, 4, 0x80001808);
  assert.equal(ports.pioRead(0, 4), 0x80001808, 'CONFIG_ADDRESS reads back');
});

test('BAR sizing, placement, 64-bit BARs and decode enables', () => {
  const bus = new PciBus();
  const dev = testDevice();
  bus.add(devfn(3), dev);
  const ports = bus.configPorts();
  const probe = (reg: number): number => {
    cf8(bus, 3, 0, reg);
    const old = ports.pioRead(4, 4);
    ports.pioWrite(4, 4, 0xffffffff);
    const size = ports.pioRead(4, 4);
    ports.pioWrite(4, 4, old);
    return size;
  };
  assert.equal(probe(PCI_BAR0), 0xfffff000, 'mem32 4 KiB');
  assert.equal(probe(PCI_BAR0 + 8), 0xffffc00c, 'mem64 prefetchable 16 KiB, low dword');
  assert.equal(probe(PCI_BAR0 + 12), 0xffffffff, 'mem64 high dword');
  assert.equal(probe(PCI_BAR0 + 16), 0xffffffe1, 'I/O 32 bytes');
  assert.equal(probe(PCI_BAR0 + 4), 0, 'unimplemented BAR');

  const alloc = new BarAllocator(
    { base: 0xc0000000, end: 0xe0000000 },
    { base: 2 ** 40, end: 2 ** 41 },
    { base: 0xc000, end: 0x10000 },
  );
  dev.config.setBarAddress(0, alloc.allocate('mem32', 0x1000));
  dev.config.setBarAddress(2, alloc.allocate('mem64', 0x4000));
  dev.config.setBarAddress(4, alloc.allocate('io', 0x20));
  assert.equal(
    bus.resolve('mem', 0xc0000010, 4),
    undefined,
    'memory decoding is off until the command register enables it',
  );
  cf8(bus, 3, 0, PCI_COMMAND);
  ports.pioWrite(4, 2, 0x7);
  assert.deepEqual(bus.resolve('mem', 0xc0000010, 4), { fn: dev, bar: 0, offset: 0x10 });
  assert.deepEqual(bus.resolve('mem', 2 ** 40 + 0x3ffc, 4), { fn: dev, bar: 2, offset: 0x3ffc });
  assert.equal(bus.resolve('mem', 2 ** 40 + 0x3ffe, 4), undefined, 'straddles the end of the BAR');
  const win = bus.memoryWindow(0xc0000000, 0x20000000);
  const data = new Uint8Array(4);
  win.mmioRead(0x20, data);
  win.mmioWrite(0x24, new Uint8Array([1, 2]));
  win.mmioRead(0x5000, data);
  assert.deepEqual([...data], [0xff, 0xff, 0xff, 0xff]);
  const io = bus.ioWindow(0xc000, 0x4000);
  assert.equal(io.pioRead(4, 2), 0x5a5a);
  assert.deepEqual(dev.log, ['r0+32/4', 'w0+36=1,2', 'r4+4/2']);
  assert.throws(() => dev.config.setBarAddress(0, 0xc0000800), RangeError);
});

test('read-only identity, RW1C status bits, capability list', () => {
  const dev = testDevice();
  dev.config.write(0, 4, 0x12345678);
  assert.equal(dev.config.read(0, 4), 0x10421af4, 'IDs are read-only');
  dev.config.bytes[PCI_STATUS + 1] = 0xf9; // pretend errors were latched
  dev.config.write(PCI_STATUS, 2, 0x0100);
  assert.equal(dev.config.read(PCI_STATUS + 1, 1), 0xf9 & ~0x01, 'writing 1 clears only that bit');
  assert.equal(dev.config.read(PCI_STATUS, 2) & 0x10, 0x10, 'capability list bit');
  const first = dev.config.read(PCI_CAPABILITY_LIST, 1);
  assert.equal(first, 0x40);
  assert.equal(dev.config.read(first, 1), 0x09);
  const second = dev.config.read(first + 1, 1);
  assert.equal(dev.config.read(second, 1), 0x11);
  assert.equal(dev.config.read(second + 1, 1), 0, 'end of list');
  dev.config.write(second + 2, 2, 0xffff);
  assert.equal(dev.config.read(second + 2, 2), 0xc003, 'only the masked bits of the capability are writable');
  assert.equal(dev.config.read(4096, 4), 0xffffffff);
});

test('ECAM reaches the same config space as mechanism #1', () => {
  const bus = new PciBus();
  const dev = testDevice();
  bus.add(devfn(3, 0), dev);
  const ecam = bus.ecam();
  const data = new Uint8Array(4);
  ecam.mmioRead((3 << 15) | 0, data);
  assert.deepEqual([...data], [0xf4, 0x1a, 0x42, 0x10]);
  ecam.mmioWrite((3 << 15) | PCI_COMMAND, new Uint8Array([0x06, 0x00]));
  assert.equal(dev.config.read(PCI_COMMAND, 2), 0x6);
  ecam.mmioRead((3 << 15) | 0x101, new Uint8Array(2)); // misaligned: ignored, no throw
  ecam.mmioRead((1 << 20) | (3 << 15), data);
  assert.deepEqual([...data], [0xff, 0xff, 0xff, 0xff], 'bus 1 does not exist');
});

test('a second thread view of the same config space sees the guest writes', () => {
  const dev = testDevice();
  const other = new PciConfigSpace(dev.config.shared);
  other.defineMasks({});
  other.defineBar({ index: 0, kind: 'mem32', size: 0x1000 }, false);
  dev.config.write(PCI_BAR0, 4, 0xd0000000);
  dev.config.write(PCI_COMMAND, 2, 0x2);
  assert.equal(other.barAddress(0), 0xd0000000n);
});

test('64-bit BAR addresses are exact up to 2^64; a BAR at or above 2^53 decodes nothing', () => {
  const bus = new PciBus();
  const dev = testDevice();
  bus.add(devfn(3), dev);
  dev.config.write(PCI_COMMAND, 2, 0x2);
  dev.config.setBarAddress(2, 2n ** 64n - 0x4000n);
  assert.equal(dev.config.barAddress(2), 0xffffffffffffc000n);
  assert.equal(dev.config.read(PCI_BAR0 + 8, 4), 0xffffc00c);
  assert.equal(dev.config.read(PCI_BAR0 + 12, 4), 0xffffffff);
  assert.equal(dev.config.barBase(2), undefined, 'no guest-physical address is up there');
  assert.equal(bus.resolve('mem', Number.MAX_SAFE_INTEGER - 1, 1), undefined);
  dev.config.setBarAddress(2, 2 ** 52);
  assert.equal(dev.config.barBase(2), 2 ** 52);
  assert.deepEqual(bus.resolve('mem', 2 ** 52 + 0x10, 4), { fn: dev, bar: 2, offset: 0x10 });
  assert.throws(() => dev.config.setBarAddress(0, 2 ** 32), RangeError, 'a 32-bit BAR cannot hold it');
  assert.throws(() => dev.config.setBarAddress(2, 2n ** 64n), RangeError);
});

test('overlapping BARs: the lowest devfn decodes, then the lowest BAR index, whatever the order of add()', () => {
  const bus = new PciBus();
  const high = testDevice();
  const low = testDevice();
  bus.add(devfn(5), high);
  bus.add(devfn(2), low);
  for (const d of [high, low]) {
    d.config.write(PCI_COMMAND, 2, 0x2);
    d.config.setBarAddress(0, 0xc0000000);
    d.config.setBarAddress(2, 0xc0000000);
  }
  assert.deepEqual(bus.resolve('mem', 0xc0000004, 4), { fn: low, bar: 0, offset: 4 });
  assert.deepEqual(bus.resolve('mem', 0xc0001004, 4), { fn: low, bar: 2, offset: 0x1004 }, 'past BAR 0: BAR 2');
  low.config.write(PCI_COMMAND, 2, 0);
  assert.deepEqual(bus.resolve('mem', 0xc0000004, 4), { fn: high, bar: 0, offset: 4 });
});
