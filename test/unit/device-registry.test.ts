// Adding a device is one file plus one registry line: a throwaway device added through the registry alone shows
// up on the buses and in the guest's ACPI tables, without touching the builder, the tables or the I/O thread.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Type } from '@sinclair/typebox';
import { buildAcpiTables } from '../../src/arch/x86_64/acpi/index.js';
import { device, eisaId, integer, ioPort, name, resourceTemplate } from '../../src/arch/x86_64/acpi/aml.js';
import { IOAPIC_ADDRESS, LAPIC_ADDRESS } from '../../src/arch/x86_64/layout.js';
import { statelessDevice, type DeviceModel, type PciInterrupt } from '../../src/devices/model.js';
import { deviceRegistry } from '../../src/devices/registry.js';
import { devfn, type PciFunction } from '../../src/devices/pci/bus.js';
import { PciConfigSpace } from '../../src/devices/pci/config-space.js';
import { attachDevices, createDevices, describeDevices, PLATFORM_DEVICES } from '../../src/vmm/device-set.js';
import { validateMachineSpec } from '../../src/spec/validate.js';
import { GuestMemory } from '../../src/base/guest-memory.js';

/** A port device at `port` that reads back `value`, described in the DSDT as \_SB_.TSTD. */
const testPort: DeviceModel<{ port: number; value: number }> = {
  kind: 'test-port',
  summary: 'a throwaway port device for this test',
  options: {
    port: Type.Integer({ minimum: 0x100, maximum: 0xfff0 }),
    value: Type.Integer({ minimum: 0, maximum: 255 }),
  },
  bus: 'platform',
  create: (o) => ({ port: o.port as number, value: o.value as number }),
  describe: (s) => ({
    acpi: [
      device('TSTD', name('_HID', eisaId('PNP0C02')), name('_CRS', resourceTemplate(ioPort(s.port, s.port, 1, 1)))),
    ],
    reserved: [{ base: 0xfed0_0000, size: 0x1000 }],
  }),
  attach(s, ctx) {
    ctx.pio.register(s.port, 1, { name: 'test-port', pioRead: () => s.value, pioWrite: () => undefined });
    return statelessDevice('test-port', 'test-port');
  },
};

/** A PCI function with its own vendor/device IDs; the builder gives it a slot and an INTA# line. */
const testPci: DeviceModel<{ slot: number; gsi: number; config: SharedArrayBuffer }> = {
  kind: 'test-pci',
  summary: 'a throwaway PCI function for this test',
  options: {},
  bus: 'pci',
  create(_o, ctx) {
    const config = new PciConfigSpace();
    config.initialize({ vendorId: 0x1234, deviceId: 0xabcd, classCode: 0xff0000, interruptPin: 1 });
    return { slot: ctx.pci!.slot, gsi: ctx.pci!.gsi, config: config.shared };
  },
  describe: (s): { pciInterrupt: PciInterrupt } => ({ pciInterrupt: { slot: s.slot, gsi: s.gsi } }),
  attach(s, ctx) {
    const fn: PciFunction = {
      name: 'test-pci',
      config: new PciConfigSpace(s.config),
      barRead: (_bar, _offset, data) => data.fill(0xff),
      barWrite: () => undefined,
    };
    ctx.pci.add(devfn(s.slot), fn);
    return statelessDevice('test-pci', 'test-pci');
  },
};

const registry = deviceRegistry.with(testPort as DeviceModel).with(testPci as DeviceModel);
const host = { vmFd: -1, serialOutputFd: 1, stop: () => undefined, reset: () => undefined };

test('registry: a device added with one line is accepted by the spec, put on the bus and described in ACPI', () => {
  const spec = validateMachineSpec(
    {
      version: 1,
      cpus: 1,
      memory: 64 << 20,
      boot: { kind: 'kernel', kernel: '/k' },
      devices: [{ kind: 'test-port', port: 0x510, value: 0x5a }, { kind: 'test-pci' }],
    },
    registry,
  );
  assert.throws(
    () => validateMachineSpec({ ...spec, devices: [{ kind: 'test-port', port: 0x510 }] }, registry),
    /\/devices\/0\/value/,
    'its options are checked by its own schema',
  );
  assert.throws(
    () => validateMachineSpec(spec),
    /\/devices\/0\/kind: unknown device kind 'test-port'/,
    'not in the default registry',
  );

  // vmFd -1: nothing here may need KVM (platform devices and this PCI function only open SharedArrayBuffers).
  const shared = createDevices(spec.devices, { vmFd: -1, placeBars: true, registry });
  assert.deepEqual(
    shared.devices.map((d) => d.kind),
    [...PLATFORM_DEVICES.map((d) => d.kind), 'test-port', 'test-pci'],
  );
  const set = attachDevices(shared, host, GuestMemory.allocateRanges([{ gpa: 0, size: 1 << 20 }]), registry);
  assert.equal(set.pio.read(0x510, 1), 0x5a, 'the port answers');

  // The PCI function sits in slot 1 (the first PCI device) and answers configuration mechanism #1.
  set.pio.write(0xcf8, 4, 0x8000_0000 | (1 << 11));
  assert.equal(set.pio.read(0xcfc, 4), 0xabcd_1234, 'vendor/device ID at 00:01.0 through 0xCF8/0xCFC');
  set.pio.write(0xcf8, 4, 0x8000_0000);
  assert.equal(set.pio.read(0xcfc, 4) & 0xffff, 0x1b36, 'the host bridge is still 00:00.0');

  const platform = describeDevices(shared, registry);
  assert.deepEqual(platform.pciInterrupts, [{ slot: 1, gsi: 16 }]);
  assert.ok(
    platform.reserved.some((r) => r.base === 0xfed0_0000),
    'its E820 reservation is gathered',
  );
  const acpi = buildAcpiTables({
    apicIds: [0],
    ioapicId: 1,
    ioapicAddress: IOAPIC_ADDRESS,
    lapicAddress: LAPIC_ADDRESS,
    devices: platform.acpi,
    tables: platform.acpiTables,
  });
  const dsdt = Buffer.from(acpi.tables.find((t) => t.signature === 'DSDT')!.bytes);
  for (const dev of ['TSTD', 'COM1', 'PCI0', 'MRES']) assert.ok(dsdt.includes(dev), `DSDT has ${dev}`);
  // _PRT entry of slot 1: Package { 0x0001FFFF, Zero, Zero, 16 }
  assert.ok(dsdt.includes(Buffer.from(integer(0x1ffff))), 'the _PRT routes slot 1');
  assert.ok(
    acpi.tables.some((t) => t.signature === 'MCFG'),
    'the PCI root brings its MCFG',
  );
});

test('registry: a kind registered twice is refused; the default registry lists every device once', () => {
  assert.throws(() => deviceRegistry.with(testPort as DeviceModel).with(testPort as DeviceModel), /registered twice/);
  for (const kind of [
    'uart-16550a',
    'isa-debug-exit',
    'io-delay',
    'pci-root',
    'virtio-blk',
    'virtio-net',
    'virtio-rng',
    'virtio-console',
  ])
    assert.ok(deviceRegistry.get(kind), kind);
});

test('device set: a failed create closes what was already opened, in order', () => {
  const closed: string[] = [];
  const opener = (kind: string, fail = false): DeviceModel => ({
    kind,
    summary: kind,
    options: {},
    bus: 'platform',
    create: () => {
      if (fail) throw new Error(`${kind} cannot open`);
      return kind;
    },
    close: (s) => void closed.push(String(s)),
    attach: () => statelessDevice(kind, kind),
  });
  const r = deviceRegistry.with(opener('a')).with(opener('b')).with(opener('c', true));
  assert.throws(
    () => createDevices([{ kind: 'a' }, { kind: 'b' }, { kind: 'c' }], { vmFd: -1, placeBars: true, registry: r }),
    /c cannot open/,
  );
  assert.deepEqual(closed, ['a', 'b']);
});
