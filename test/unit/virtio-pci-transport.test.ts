// The virtio-pci modern transport (virtio 1.2 §4.1) driven the way a guest driver does it, on a real KVM VM so
// ioeventfd registration and irqfd-backed MSI-X are the real thing.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KvmSystem } from '../../src/kvm/system.js';
import { Vm } from '../../src/vmm/vm.js';
import { Vcpu } from '../../src/vmm/vcpu.js';
import { native } from '../../src/native/index.js';
import { exitReasons, kvm_run } from '../../src/kvm/abi.js';
import { bootGdt, protectedModeEntry } from '../../src/arch/x86_64/registers.js';
import { BOOT_GDT_ADDRESS } from '../../src/arch/x86_64/layout.js';
import { GsiRouter } from '../../src/base/gsi-routing.js';
import { GuestMemory } from '../../src/base/guest-memory.js';
import { MIB } from '../../src/base/units.js';
import {
  COMMON_OFFSET,
  DEVICE_OFFSET,
  ISR_OFFSET,
  NOTIFY_OFFSET,
  STATUS_ACKNOWLEDGE,
  STATUS_DRIVER,
  STATUS_DRIVER_OK,
  STATUS_FEATURES_OK,
  STATUS_NEEDS_RESET,
  VIRTIO_BAR,
  VirtioPciDevice,
  type VirtioDeviceInfo,
} from '../../src/devices/virtio/pci-transport.js';
import { PCI_CAPABILITY_LIST, PCI_COMMAND } from '../../src/devices/pci/config-space.js';
import { EventFdDispatcher, VirtioRunner } from '../../src/devices/virtio/runner.js';
import type { VirtioBackend } from '../../src/devices/virtio/device.js';
import { openEntropy, VirtioEntropy } from '../../src/devices/virtio/entropy.js';
import { FakePackedDriver } from '../support/virtq-driver.js';
import { openNet, VirtioNet } from '../../src/devices/virtio/net.js';
import { drainEventfd } from '../support/eventfd.js';

const info: VirtioDeviceInfo = { deviceType: 4, classCode: 0x00ff00, features: 0n, queueSizes: [256], configSize: 0 };

function setup(intxLog?: boolean[]): VirtioPciDevice {
  const kvm = KvmSystem.open();
  const vm = Vm.create(kvm, 16 * MIB);
  const dev = VirtioPciDevice.create(
    'virtio-rng',
    info,
    vm.fd,
    new GsiRouter(vm.fd),
    intxLog ? { set: (l) => void intxLog.push(l) } : undefined,
  );
  dev.config.setBarAddress(VIRTIO_BAR, 0xd0000000);
  dev.config.write(PCI_COMMAND, 2, 0x6);
  return dev;
}

const u32 = (v: number): Uint8Array => new Uint8Array(new Uint32Array([v >>> 0]).buffer);
const u16 = (v: number): Uint8Array => new Uint8Array(new Uint16Array([v]).buffer);
function read(dev: VirtioPciDevice, offset: number, size: number): number {
  const d = new Uint8Array(size);
  dev.barRead(VIRTIO_BAR, offset, d);
  return size === 1
    ? d[0]
    : size === 2
      ? new DataView(d.buffer).getUint16(0, true)
      : new DataView(d.buffer).getUint32(0, true);
}
const write = (dev: VirtioPciDevice, offset: number, data: Uint8Array): void => dev.barWrite(VIRTIO_BAR, offset, data);

const skip = !existsSync('/dev/kvm') && 'no /dev/kvm';

test('PCI identity and the vendor capability chain (common, ISR, device, notify, PCI cfg) then MSI-X', { skip }, () => {
  const dev = setup();
  assert.equal(dev.config.read(0, 4), 0x10441af4, 'vendor 1af4, device 0x1040 + type 4');
  const caps: number[] = [];
  for (let at = dev.config.read(PCI_CAPABILITY_LIST, 1); at; at = dev.config.read(at + 1, 1)) {
    caps.push(dev.config.read(at, 1) === 0x09 ? dev.config.read(at + 3, 1) : -dev.config.read(at, 1));
  }
  assert.deepEqual(caps, [1, 3, 4, 2, 5, -0x11]);
});

test(
  'feature negotiation: VERSION_1 required, only offered bits accepted, FEATURES_OK fixed afterwards',
  { skip },
  () => {
    const dev = setup();
    write(dev, COMMON_OFFSET + 0x00, u32(1));
    assert.equal(read(dev, COMMON_OFFSET + 0x04, 4) & 1, 1, 'VERSION_1 (bit 32) offered');
    write(dev, COMMON_OFFSET + 0x14, new Uint8Array([STATUS_ACKNOWLEDGE | STATUS_DRIVER]));
    // Without VERSION_1, FEATURES_OK does not stick.
    write(dev, COMMON_OFFSET + 0x14, new Uint8Array([STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK]));
    assert.equal(read(dev, COMMON_OFFSET + 0x14, 1) & STATUS_FEATURES_OK, 0);
    // A bit that was not offered is refused too.
    write(dev, COMMON_OFFSET + 0x08, u32(1));
    write(dev, COMMON_OFFSET + 0x0c, u32(1 | (1 << 5)));
    write(dev, COMMON_OFFSET + 0x14, new Uint8Array([STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK]));
    assert.equal(read(dev, COMMON_OFFSET + 0x14, 1) & STATUS_FEATURES_OK, 0);
    write(dev, COMMON_OFFSET + 0x0c, u32(1));
    write(dev, COMMON_OFFSET + 0x14, new Uint8Array([STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK]));
    assert.equal(read(dev, COMMON_OFFSET + 0x14, 1) & STATUS_FEATURES_OK, STATUS_FEATURES_OK);
    assert.equal(dev.negotiated(32n), true);
    write(dev, COMMON_OFFSET + 0x0c, u32(0)); // after FEATURES_OK the features are fixed
    assert.equal(dev.negotiated(32n), true);
  },
);

test(
  'queue setup, enable, reset; a notify write on the MMIO exit path reaches the queue eventfd; the ioeventfd follows the BAR',
  { skip },
  () => {
    const dev = setup();
    dev.registerIoeventfds();
    write(dev, COMMON_OFFSET + 0x16, u16(0));
    assert.equal(read(dev, COMMON_OFFSET + 0x18, 2), 256, 'max queue size');
    write(dev, COMMON_OFFSET + 0x18, u16(100)); // not a power of two: ignored
    assert.equal(read(dev, COMMON_OFFSET + 0x18, 2), 256);
    write(dev, COMMON_OFFSET + 0x18, u16(64));
    write(dev, COMMON_OFFSET + 0x20, u32(0x10000));
    write(dev, COMMON_OFFSET + 0x28, u32(0x11000));
    write(dev, COMMON_OFFSET + 0x30, u32(0x12000));
    write(dev, COMMON_OFFSET + 0x1a, u16(0));
    write(dev, COMMON_OFFSET + 0x1c, u16(1));
    assert.deepEqual(dev.queueConfig(0), {
      index: 0,
      size: 64,
      vector: 0,
      enabled: true,
      desc: 0x10000,
      driver: 0x11000,
      device: 0x12000,
    });
    write(dev, COMMON_OFFSET + 0x20, u32(0x90000)); // ignored while enabled
    assert.equal(dev.queueConfig(0).desc, 0x10000);
    assert.equal(read(dev, COMMON_OFFSET + 0x1e, 2), 0, 'queue_notify_off');
    assert.equal(read(dev, COMMON_OFFSET + 0x12, 2), 1, 'num_queues');
    assert.ok(drainEventfd(dev.shared.controlEventFd) > 0, 'the backend was told about the queue');
    write(dev, NOTIFY_OFFSET, u16(0)); // an MMIO exit path notification (no ioeventfd in the way here)
    assert.equal(drainEventfd(dev.shared.queueEventFds[0]), 1);
    write(dev, COMMON_OFFSET + 0x14, new Uint8Array([0])); // reset
    assert.equal(dev.queueConfig(0).enabled, false);
    assert.equal(dev.queueConfig(0).size, 256);
    assert.equal(dev.status, 0);
    assert.equal(read(dev, COMMON_OFFSET + 0x10, 2), 0xffff, 'config vector back to NO_VECTOR');
    // Moving the BAR moves the ioeventfd registration (a second registration at the same address would fail).
    dev.config.write(0x10 + 4 * VIRTIO_BAR, 4, 0xd0100000);
    dev.registerIoeventfds();
    assert.equal(dev.ioeventfdAddress(0), 0xd0103000);
    dev.config.write(0x10 + 4 * VIRTIO_BAR, 4, 0xd0000000);
    dev.registerIoeventfds();
    assert.equal(dev.ioeventfdAddress(0), 0xd0003000);
    assert.equal(dev.ioeventfdsRefused, 0);
  },
);

/**
 * A guest that writes 0 (16 bits) to `address`, then leaves through `out 0x80` (32-bit protected mode, flat
 * segments), run until its first exit to userspace. Returns that exit.
 */
function runNotifyGuest(vm: Vm, vcpu: Vcpu, address: number): { reason: number; port?: number; mmio?: number } {
  const code = new Uint8Array([0x66, 0xc7, 0x05, 0, 0, 0, 0, 0, 0, 0xe6, 0x80, 0xf4]); // mov word [addr], 0; out; hlt
  new DataView(code.buffer).setUint32(3, address, true);
  vm.memory.write(GUEST_CODE, code);
  vm.memory.write(BOOT_GDT_ADDRESS, new Uint8Array(bootGdt().buffer));
  vcpu.setSregs(protectedModeEntry(vcpu.getSregs()));
  vcpu.setRegs({ ...vcpu.getRegs(), rip: BigInt(GUEST_CODE), rflags: 2n });
  const r = native.run(vcpu.fd);
  assert.equal(r, 0, `KVM_RUN: ${r}`);
  const reason = vcpu.run.getUint32(kvm_run.fields.exit_reason.offset, true);
  if (reason === exitReasons.KVM_EXIT_IO)
    return { reason, port: vcpu.run.getUint16(kvm_run.fields['io.port'].offset, true) };
  if (reason === exitReasons.KVM_EXIT_MMIO)
    return { reason, mmio: Number(vcpu.run.getBigUint64(kvm_run.fields['mmio.phys_addr'].offset, true)) };
  return { reason };
}
const GUEST_CODE = 0x1000;

test(
  'a guest kick is caught by KVM as an ioeventfd: the queue eventfd fires and no MMIO exit reaches userspace',
  { skip },
  () => {
    const kvm = KvmSystem.open();
    const vm = Vm.create(kvm, 16 * MIB);
    const vcpu = Vcpu.create(vm.fd, 0, kvm.vcpuMmapSize);
    try {
      const dev = VirtioPciDevice.create('virtio-rng', info, vm.fd, new GsiRouter(vm.fd));
      dev.config.setBarAddress(VIRTIO_BAR, 0xd0000000);
      dev.config.write(PCI_COMMAND, 2, 0x6);
      const notify = 0xd0000000 + NOTIFY_OFFSET; // queue 0 (queue_notify_off 0)

      // Without the ioeventfd the same write is an MMIO exit: the check below can tell the two paths apart.
      assert.deepEqual(runNotifyGuest(vm, vcpu, notify), { reason: exitReasons.KVM_EXIT_MMIO, mmio: notify });
      assert.equal(drainEventfd(dev.shared.queueEventFds[0]), 0, 'nothing signalled before the device handles it');

      dev.registerIoeventfds();
      assert.deepEqual(
        runNotifyGuest(vm, vcpu, notify),
        { reason: exitReasons.KVM_EXIT_IO, port: 0x80 },
        'the first exit to userspace is the out after the kick',
      );
      assert.equal(drainEventfd(dev.shared.queueEventFds[0]), 1, 'KVM signalled the queue eventfd');
    } finally {
      vcpu.close();
      vm.close();
    }
  },
);

test(
  'INTx: a queue interrupt sets ISR bit 0 and raises the line; reading ISR clears both; NEEDS_RESET',
  { skip },
  () => {
    const levels: boolean[] = [];
    const dev = setup(levels);
    dev.interruptQueue(0);
    assert.deepEqual(levels, [true], 'the line is driven on transitions only');
    assert.equal(read(dev, ISR_OFFSET, 1), 1);
    assert.equal(read(dev, ISR_OFFSET, 1), 0, 'read to clear');
    assert.deepEqual(levels, [true, false]);
    dev.needsReset();
    assert.equal(dev.status & STATUS_NEEDS_RESET, STATUS_NEEDS_RESET);
    assert.equal(read(dev, ISR_OFFSET, 1), 3, 'config change reported');
    assert.equal(read(dev, COMMON_OFFSET + 0x15, 1), 1, 'config_generation bumped');
    assert.equal(read(dev, DEVICE_OFFSET + 0x100, 4), 0, 'beyond the device configuration: zeros');
  },
);

test(
  'reset with backend I/O in flight: device_status reads 0 only after the backend drained (virtio 1.2 §2.4.1)',
  { skip },
  async () => {
    const kvm = KvmSystem.open();
    const vm = Vm.create(kvm, 16 * MIB);
    const dev = VirtioPciDevice.create('virtio-test', info, vm.fd, new GsiRouter(vm.fd));
    dev.config.setBarAddress(VIRTIO_BAR, 0xd0000000);
    dev.config.write(PCI_COMMAND, 2, 0x6);
    let finishIo: (() => void) | undefined;
    const events: string[] = [];
    const backend: VirtioBackend = {
      info,
      configBytes: () => new Uint8Array(0),
      activate: () => void events.push('activate'),
      queueNotified: () => undefined,
      reset: () => {
        events.push('reset');
        return new Promise<void>((resolve) => (finishIo = resolve));
      },
      close: () => undefined,
    };
    new VirtioRunner(dev, backend, vm.memory, new EventFdDispatcher());
    const until = async (what: string, ok: () => boolean): Promise<void> => {
      const end = Date.now() + 60_000;
      while (!ok()) {
        if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
        await new Promise((r) => setTimeout(r, 5));
      }
    };
    const status = (): number => read(dev, COMMON_OFFSET + 0x14, 1);
    write(dev, COMMON_OFFSET + 0x08, u32(1));
    write(dev, COMMON_OFFSET + 0x0c, u32(1)); // VERSION_1
    for (const s of [STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_FEATURES_OK, STATUS_DRIVER_OK].reduce<number[]>(
      (acc, bit) => [...acc, (acc.at(-1) ?? 0) | bit],
      [],
    ))
      write(dev, COMMON_OFFSET + 0x14, new Uint8Array([s]));
    await until('activation', () => events.includes('activate'));

    write(dev, COMMON_OFFSET + 0x14, new Uint8Array([0]));
    await until('the backend reset', () => events.includes('reset'));
    assert.notEqual(status(), 0, 'still draining: the driver must keep waiting');
    write(dev, COMMON_OFFSET + 0x14, new Uint8Array([STATUS_ACKNOWLEDGE])); // too early: ignored
    assert.equal(dev.resetPending, true);
    finishIo!();
    await until('device_status 0', () => status() === 0);
    assert.equal(dev.resetPending, false);
    write(dev, COMMON_OFFSET + 0x14, new Uint8Array([STATUS_ACKNOWLEDGE]));
    assert.equal(status(), STATUS_ACKNOWLEDGE, 'the driver can initialize the device again');
  },
);

test(
  'packed virtqueue end to end: VIRTIO_F_RING_PACKED negotiated, any queue size, a kick through the queue eventfd is served by the backend (virtio-rng)',
  { skip },
  async () => {
    const kvm = KvmSystem.open();
    const vm = Vm.create(kvm, 16 * MIB);
    const rng = new VirtioEntropy(openEntropy());
    const plain = VirtioPciDevice.create('virtio-rng', rng.info, vm.fd, new GsiRouter(vm.fd));
    write(plain, COMMON_OFFSET + 0x00, u32(1));
    assert.equal((read(plain, COMMON_OFFSET + 0x04, 4) >>> 2) & 1, 0, 'RING_PACKED is not offered unless asked for');
    const dev = VirtioPciDevice.create('virtio-rng', { ...rng.info, packedRing: true }, vm.fd, new GsiRouter(vm.fd));
    dev.config.setBarAddress(VIRTIO_BAR, 0xd0000000);
    dev.config.write(PCI_COMMAND, 2, 0x6);
    new VirtioRunner(dev, rng, vm.memory, new EventFdDispatcher());
    const status = (s: number): void => write(dev, COMMON_OFFSET + 0x14, new Uint8Array([s]));
    write(dev, COMMON_OFFSET + 0x00, u32(1));
    assert.equal((read(dev, COMMON_OFFSET + 0x04, 4) >>> 2) & 1, 1, 'RING_PACKED (bit 34) offered');
    status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    write(dev, COMMON_OFFSET + 0x08, u32(1));
    write(dev, COMMON_OFFSET + 0x0c, u32(1 | (1 << 2))); // VERSION_1 | RING_PACKED
    status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
    assert.equal(dev.negotiated(34n), true);

    write(dev, COMMON_OFFSET + 0x16, u16(0));
    write(dev, COMMON_OFFSET + 0x18, u16(100)); // packed rings need not be a power of two (§2.8.10.1)
    assert.equal(read(dev, COMMON_OFFSET + 0x18, 2), 100);
    const driver = FakePackedDriver.at(vm.memory, 100, 0x100000);
    write(dev, COMMON_OFFSET + 0x20, u32(driver.desc));
    write(dev, COMMON_OFFSET + 0x28, u32(driver.driverArea));
    write(dev, COMMON_OFFSET + 0x30, u32(driver.deviceArea));
    write(dev, COMMON_OFFSET + 0x1c, u16(1));
    status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);

    const gpa = driver.alloc(64);
    driver.addChain([{ len: 64, writable: true, gpa }]);
    write(dev, NOTIFY_OFFSET, u16(0)); // the kick (no ioeventfd registered in this test: the exit path)
    const end = Date.now() + 60_000;
    let used: { id: number; len: number }[] = [];
    while (used.length === 0 && Date.now() < end) {
      await new Promise((r) => setTimeout(r, 5));
      used = driver.takeUsed();
    }
    assert.equal(used.length, 1, 'the chain came back on the packed ring');
    assert.equal(used[0].len, 64);
    assert.ok(
      vm.memory.read(gpa, 64).some((b) => b !== 0),
      'random bytes were written',
    );
  },
);

test(
  'virtio-net link status: when the host network goes away the guest reads link down, a new config_generation and gets a config interrupt',
  { skip },
  async () => {
    const dir = mkdtempSync(join(tmpdir(), 'partita-link-'));
    const path = join(dir, 'net.sock');
    const server = createServer((s) => setTimeout(() => s.destroy(), 50)); // the network hangs up at once
    await new Promise<void>((r) => server.listen(path, r));
    try {
      const kvm = KvmSystem.open();
      const vm = Vm.create(kvm, 16 * MIB);
      const net = new VirtioNet(openNet({ backend: { kind: 'socket', path } }), () => undefined);
      const intx: boolean[] = [];
      const dev = VirtioPciDevice.create('virtio-net', net.info, vm.fd, new GsiRouter(vm.fd), {
        set: (l) => void intx.push(l),
      });
      dev.deviceConfig.set(net.configBytes());
      dev.config.setBarAddress(VIRTIO_BAR, 0xd0000000);
      dev.config.write(PCI_COMMAND, 2, 0x6);
      new VirtioRunner(dev, net, vm.memory, new EventFdDispatcher());
      const status = (s: number): void => write(dev, COMMON_OFFSET + 0x14, new Uint8Array([s]));
      assert.equal(read(dev, DEVICE_OFFSET + 6, 2), 1, 'link up to begin with');
      const generation = read(dev, COMMON_OFFSET + 0x15, 1);
      status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
      write(dev, COMMON_OFFSET + 0x08, u32(1));
      write(dev, COMMON_OFFSET + 0x0c, u32(1));
      status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
      status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
      const end = Date.now() + 60_000;
      while (read(dev, DEVICE_OFFSET + 6, 2) !== 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
      assert.equal(read(dev, DEVICE_OFFSET + 6, 2), 0, 'VIRTIO_NET_S_LINK_UP cleared');
      assert.notEqual(read(dev, COMMON_OFFSET + 0x15, 1), generation, 'config_generation changed');
      assert.deepEqual(intx, [true], 'INTx raised for the configuration change');
      assert.equal(read(dev, ISR_OFFSET, 1) & 2, 2, 'ISR: configuration change (bit 1; bit 0 too, as QEMU sets it)');
      assert.deepEqual(intx, [true, false], 'reading the ISR lowers INTx');
      net.close();
    } finally {
      server.close();
      rmSync(dir, { recursive: true, force: true });
    }
  },
);

test('DRIVER_OK without FEATURES_OK (never set, or refused) sets DEVICE_NEEDS_RESET and never starts the backend (§3.1.1)', async () => {
  // Status handling needs no VM: MSI-X stays off, so the router only has to accept the irqfds it is handed.
  class NoKvmRouter extends GsiRouter {
    override attachIrqfd(): void {}
  }
  const memory = GuestMemory.allocateRanges([{ gpa: 0, size: MIB }]);
  const levels: boolean[] = [];
  const dev = VirtioPciDevice.create('virtio-test', info, -1, new NoKvmRouter(-1), {
    set: (l) => void levels.push(l),
  });
  dev.config.setBarAddress(VIRTIO_BAR, 0xd0000000);
  dev.config.write(PCI_COMMAND, 2, 0x6);
  const events: string[] = [];
  const backend: VirtioBackend = {
    info,
    configBytes: () => new Uint8Array(0),
    activate: (ctx) => void events.push(`activate features 0x${ctx.features.toString(16)}`),
    queueNotified: () => undefined,
    reset: () => void events.push('reset'),
    close: () => undefined,
  };
  new VirtioRunner(dev, backend, memory, new EventFdDispatcher());
  const until = async (what: string, ok: () => boolean): Promise<void> => {
    const end = Date.now() + 5000;
    while (!ok()) {
      if (Date.now() > end) assert.fail(`timed out waiting for ${what}; backend: ${events.join(', ')}`);
      await new Promise((r) => setTimeout(r, 5));
    }
  };
  const status = (): number => read(dev, COMMON_OFFSET + 0x14, 1);
  const setStatus = (s: number): void => write(dev, COMMON_OFFSET + 0x14, new Uint8Array([s]));
  const features = (lo: number, hi: number): void => {
    write(dev, COMMON_OFFSET + 0x08, u32(0));
    write(dev, COMMON_OFFSET + 0x0c, u32(lo));
    write(dev, COMMON_OFFSET + 0x08, u32(1));
    write(dev, COMMON_OFFSET + 0x0c, u32(hi));
  };
  const resetDevice = async (): Promise<void> => {
    setStatus(0);
    await until('device_status 0', () => status() === 0);
    read(dev, ISR_OFFSET, 1); // acknowledge
  };
  const VERSION_1 = 1; // bit 32
  const RING_PACKED = 1 << 2; // bit 34: not offered by this device
  const ACK_DRIVER = STATUS_ACKNOWLEDGE | STATUS_DRIVER;
  const attempts: [string, () => void][] = [
    [
      'FEATURES_OK never set, RING_PACKED accepted',
      () => {
        setStatus(ACK_DRIVER);
        features(0, VERSION_1 | RING_PACKED);
        setStatus(ACK_DRIVER | STATUS_DRIVER_OK);
      },
    ],
    [
      'FEATURES_OK refused (RING_PACKED not offered), DRIVER_OK anyway',
      () => {
        setStatus(ACK_DRIVER);
        features(0, VERSION_1 | RING_PACKED);
        setStatus(ACK_DRIVER | STATUS_FEATURES_OK);
        assert.equal(status() & STATUS_FEATURES_OK, 0, 'FEATURES_OK reads back clear: features refused');
        setStatus(ACK_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
      },
    ],
    [
      'FEATURES_OK and DRIVER_OK in one write, with a feature not offered',
      () => {
        setStatus(ACK_DRIVER);
        features(0, VERSION_1 | RING_PACKED);
        setStatus(ACK_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
      },
    ],
    [
      'FEATURES_OK accepted, then cleared before DRIVER_OK',
      () => {
        setStatus(ACK_DRIVER);
        features(0, VERSION_1);
        setStatus(ACK_DRIVER | STATUS_FEATURES_OK);
        assert.equal(status() & STATUS_FEATURES_OK, STATUS_FEATURES_OK);
        setStatus(ACK_DRIVER | STATUS_DRIVER_OK);
      },
    ],
  ];
  for (const [name, attempt] of attempts) {
    const generation = read(dev, COMMON_OFFSET + 0x15, 1);
    levels.length = 0;
    attempt();
    assert.equal(status() & STATUS_NEEDS_RESET, STATUS_NEEDS_RESET, `${name}: DEVICE_NEEDS_RESET`);
    assert.equal(status() & STATUS_FEATURES_OK, 0, `${name}: FEATURES_OK clear`);
    assert.notEqual(read(dev, COMMON_OFFSET + 0x15, 1), generation, `${name}: config_generation bumped`);
    assert.deepEqual(levels, [true], `${name}: configuration change interrupt (INTx)`);
    assert.equal(read(dev, ISR_OFFSET, 1) & 2, 2, `${name}: ISR says configuration change`);
    await resetDevice();
  }
  // The same device initialised correctly: the backend starts now, with the features it offered, and this is
  // its first start (the control eventfd is handled in order, so the attempts above were seen before it).
  setStatus(ACK_DRIVER);
  features(0, VERSION_1);
  setStatus(ACK_DRIVER | STATUS_FEATURES_OK);
  setStatus(ACK_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
  await until('activation', () => events.some((e) => e.startsWith('activate')));
  assert.equal(status() & STATUS_NEEDS_RESET, 0);
  assert.deepEqual(events, ['activate features 0x100000000']);
  // FEATURES_OK taken away from the running device (the driver could then rewrite the features): it needs a
  // reset, and stops.
  setStatus(ACK_DRIVER | STATUS_DRIVER_OK);
  assert.equal(status() & STATUS_NEEDS_RESET, STATUS_NEEDS_RESET);
  await until('the backend stopped', () => events.includes('reset'));
  assert.deepEqual(events, ['activate features 0x100000000', 'reset']);
});
