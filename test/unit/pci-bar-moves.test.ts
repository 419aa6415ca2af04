// BAR moves a guest may make, on the real device set of a bus (host bridge + virtio-pci transports): BARs on
// top of each other, a 64-bit BAR just below 2^64, BARs over RAM, ECAM, the LAPIC or above 4 GiB, and KVM
// refusing an ioeventfd. Whatever the guest programs, a config write never throws, every access still reaches
// exactly one device (lowest devfn first where BARs overlap, PCI decode order), and the queues' notify ioeventfds
// sit where the notify addresses decode — or, where KVM refuses one, kicks arrive as MMIO exits instead.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PCI_BAR0, PCI_COMMAND, PCI_COMMAND_MEMORY } from '../../src/devices/pci/config-space.js';
import {
  COMMON_OFFSET,
  NOTIFY_OFFSET,
  VIRTIO_BAR,
  VirtioPciDevice,
  type VirtioDeviceInfo,
} from '../../src/devices/virtio/pci-transport.js';
import { ioctls, kvm_ioeventfd, KVM_IOEVENTFD_FLAG_DEASSIGN } from '../../src/kvm/abi.js';
import { EFD_NONBLOCK, native } from '../../src/native/index.js';
import { LAPIC_ADDRESS, PCI_ECAM_BASE, PCI_MMIO32_BASE, PCI_MMIO32_END } from '../../src/arch/x86_64/layout.js';
import { pciMachine, type PciMachine } from '../support/pci-machine.js';
import { drainEventfd as drain } from '../support/eventfd.js';

/** Two queues, as virtio-net and multi-queue disks have: two notify addresses 4 bytes apart. */
const info: VirtioDeviceInfo = {
  deviceType: 2,
  classCode: 0x018000,
  features: 0n,
  queueSizes: [64, 64],
  configSize: 8,
};

type Machine = PciMachine;
const machine = (count: number): Machine => pciMachine(Array.from({ length: count }, () => info));

/** Programs BAR 4 (64-bit) of the device in `slot` to `address`, low dword first, as a driver does. */
function moveVirtioBar(m: Machine, slot: number, address: bigint): void {
  const at = BigInt(address); // (also when an older barAddress() handed out a number)
  m.configWrite(slot, PCI_BAR0 + 4 * VIRTIO_BAR, 4, Number(at & 0xffffffffn));
  m.configWrite(slot, PCI_BAR0 + 4 * VIRTIO_BAR + 4, 4, Number(at >> 32n));
}

const notifyAddress = (dev: VirtioPciDevice, queue: number): number =>
  Number(dev.config.barAddress(VIRTIO_BAR)!) + NOTIFY_OFFSET + 4 * queue;

/** The model's registrations as [address, eventfd] pairs (a real VM's are checked through the transport). */
const registered = (m: Machine): [number, number][] =>
  m.vm.ioeventfds.map((e) => [Number(e.addr), e.fd] as [number, number]).sort((a, b) => a[0] - b[0]);

/** Where each device's queues are registered: expected[device][queue], undefined = notified through exits. */
function assertPlacement(m: Machine, expected: (number | undefined)[][]): void {
  if (m.vm.modelled) {
    const want = expected
      .flatMap((qs, d) => qs.map((a, q) => [a, m.devices[d].shared.queueEventFds[q]] as [number | undefined, number]))
      .filter((p): p is [number, number] => p[0] !== undefined)
      .sort((a, b) => a[0] - b[0]);
    assert.deepEqual(registered(m), want, 'the ioeventfds KVM holds');
  }
  assert.deepEqual(
    m.devices.map((d) => d.info.queueSizes.map((_, q) => d.ioeventfdAddress(q))),
    expected,
    'where each transport has its queues registered',
  );
}

/** A guest 2-byte write reaching the PCI window as an MMIO exit (what KVM does when no ioeventfd caught it). */
function exitWrite(m: Machine, address: number, value: number): void {
  m.window.mmioWrite(address - PCI_MMIO32_BASE, new Uint8Array([value & 0xff, value >> 8]));
}
function exitRead(m: Machine, address: number, size: number): number {
  const d = new Uint8Array(size);
  m.window.mmioRead(address - PCI_MMIO32_BASE, d);
  return d.reduceRight((v, byte) => v * 256 + byte, 0);
}

test('two devices with BAR 4 at the same address: no crash, the lower slot decodes, both work once moved apart', () => {
  const m = machine(2);
  const [a, b] = m.devices;
  const aNotify = [notifyAddress(a, 0), notifyAddress(a, 1)];
  const bHome = b.config.barAddress(VIRTIO_BAR)!;
  const bNotify = [notifyAddress(b, 0), notifyAddress(b, 1)];

  // Slot 2's BAR onto slot 1's: KVM would refuse a second ioeventfd at the same address (EEXIST).
  assert.doesNotThrow(() => moveVirtioBar(m, 2, a.config.barAddress(VIRTIO_BAR)!));
  assertPlacement(m, [aNotify, [undefined, undefined]]);
  // An access there reaches slot 1 only, as on a PCI bus where the first decoder claims the cycle.
  exitWrite(m, aNotify[1], 1);
  assert.equal(drain(a.shared.queueEventFds[1]), 1, 'slot 1 got the kick');
  assert.equal(drain(b.shared.queueEventFds[1]), 0, 'slot 2 did not');
  const common = aNotify[0] - NOTIFY_OFFSET + COMMON_OFFSET;
  exitWrite(m, common + 0x16, 1); // queue_select, of whoever decodes
  assert.equal(exitRead(m, common + 0x16, 2), 1, 'read back through the bus');
  const select = (d: VirtioPciDevice): number => {
    const data = new Uint8Array(2);
    d.barRead(VIRTIO_BAR, COMMON_OFFSET + 0x16, data);
    return data[0];
  };
  assert.deepEqual([select(a), select(b)], [1, 0], 'slot 1 took the write, slot 2 did not');

  // Slot 1's BAR onto slot 2's (slot 2 moved back first): slot 1 now wins at slot 2's old place.
  moveVirtioBar(m, 2, bHome);
  assert.doesNotThrow(() => moveVirtioBar(m, 1, bHome));
  assertPlacement(m, [
    [notifyAddress(a, 0), notifyAddress(a, 1)],
    [undefined, undefined],
  ]);
  assert.equal(a.ioeventfdsRefused + b.ioeventfdsRefused, 0, 'released before placed: nothing was refused');

  // Apart again, anywhere: each device decodes and is registered at its own place.
  moveVirtioBar(m, 1, 0xd0000000n);
  assertPlacement(m, [[0xd0003000, 0xd0003004], bNotify]);
  exitWrite(m, notifyAddress(b, 0), 0);
  assert.equal(drain(b.shared.queueEventFds[0]), 1, 'slot 2 answers at its own BAR again');
});

test('a 64-bit BAR at 2^64 - 16 KiB: decoded exactly, decodes nothing, no ioeventfd; moved back, it works', () => {
  const m = machine(1);
  const [dev] = m.devices;
  const home = dev.config.barAddress(VIRTIO_BAR)!;
  // Near 2^64 a number has 2 KiB steps: the two notify addresses (4 bytes apart) would be one address.
  assert.doesNotThrow(() => moveVirtioBar(m, 1, (1n << 64n) - 0x4000n));
  assert.equal(dev.config.barAddress(VIRTIO_BAR), 0xffffffffffffc000n, 'the address, exactly');
  assertPlacement(m, [[undefined, undefined]]);
  assert.equal(m.bus.resolve('mem', Number.MAX_SAFE_INTEGER - 3, 2), undefined);
  moveVirtioBar(m, 1, home);
  assertPlacement(m, [[notifyAddress(dev, 0), notifyAddress(dev, 1)]]);
  assert.equal(dev.ioeventfdsRefused, 0);
});

test('a BAR over RAM, ECAM, the LAPIC or above 4 GiB decodes nothing and gets no ioeventfd', () => {
  const m = machine(1);
  const [dev] = m.devices;
  const home = dev.config.barAddress(VIRTIO_BAR)!;
  for (const at of [0x100000n, BigInt(PCI_ECAM_BASE), BigInt(LAPIC_ADDRESS), 1n << 32n, 1n << 40n]) {
    moveVirtioBar(m, 1, at);
    assertPlacement(m, [[undefined, undefined]]);
    assert.equal(dev.config.barAddress(VIRTIO_BAR), at);
    assert.equal(m.bus.routes('mem', Number(at) + NOTIFY_OFFSET, 2), false, `0x${at.toString(16)} is not routed`);
    moveVirtioBar(m, 1, home);
    assertPlacement(m, [[notifyAddress(dev, 0), notifyAddress(dev, 1)]]);
  }
  // The last place inside the window decodes.
  moveVirtioBar(m, 1, BigInt(PCI_MMIO32_END - 0x4000));
  assertPlacement(m, [[PCI_MMIO32_END - 0x1000, PCI_MMIO32_END - 0x1000 + 4]]);
});

test('KVM refuses an ioeventfd (EEXIST): that queue falls back to MMIO-exit kicks, nothing is half-moved', () => {
  const m = machine(1);
  const [dev] = m.devices;
  const target = 0xd8000000;
  // Something else already holds queue 1's future notify address (another VMM component, a leftover).
  const foreign = native.eventfd(0, EFD_NONBLOCK);
  const request = (deassign: boolean): number => {
    const f = kvm_ioeventfd.fields;
    const buf = new DataView(new ArrayBuffer(kvm_ioeventfd.size));
    buf.setBigUint64(f.addr.offset, BigInt(target + NOTIFY_OFFSET + 4), true);
    buf.setUint32(f.len.offset, 2, true);
    buf.setInt32(f.fd.offset, foreign, true);
    buf.setUint32(f.flags.offset, deassign ? KVM_IOEVENTFD_FLAG_DEASSIGN : 0, true);
    return native.ioctl(m.vm.fd, ioctls.KVM_IOEVENTFD, buf);
  };
  assert.equal(request(false), 0);
  const old = [notifyAddress(dev, 0), notifyAddress(dev, 1)];
  assert.doesNotThrow(() => moveVirtioBar(m, 1, BigInt(target)));
  assert.deepEqual(
    [dev.ioeventfdAddress(0), dev.ioeventfdAddress(1)],
    [target + NOTIFY_OFFSET, undefined],
    'queue 0 moved; queue 1 was refused and is notified through exits',
  );
  assert.ok(dev.ioeventfdsRefused > 0, 'the refusal was counted');
  if (m.vm.modelled)
    assert.ok(!registered(m).some(([a]) => old.includes(a)), 'no registration stayed at the old place');
  exitWrite(m, target + NOTIFY_OFFSET + 4, 1);
  assert.equal(drain(dev.shared.queueEventFds[1]), 1, 'the kick arrived as an exit and reached queue 1');
  assert.equal(dev.notificationCounts().notifyExits, 1);

  // The address is free again: the next BAR change registers queue 1 too.
  assert.equal(request(true), 0);
  m.configWrite(1, PCI_COMMAND, 2, PCI_COMMAND_MEMORY);
  assert.deepEqual(
    [dev.ioeventfdAddress(0), dev.ioeventfdAddress(1)],
    [target + NOTIFY_OFFSET, target + NOTIFY_OFFSET + 4],
  );
  native.close(foreign);
});

test('decoding off and on again: ioeventfds go and come back; the host bridge write path never moves BARs', () => {
  const m = machine(1);
  const [dev] = m.devices;
  const at = [notifyAddress(dev, 0), notifyAddress(dev, 1)];
  m.configWrite(1, PCI_COMMAND, 2, 0);
  assertPlacement(m, [[undefined, undefined]]);
  m.configWrite(1, PCI_COMMAND, 2, PCI_COMMAND_MEMORY);
  assertPlacement(m, [at]);
  m.configWrite(0, PCI_COMMAND, 2, 0xffff);
  m.configWrite(0, PCI_BAR0, 4, 0xffffffff);
  assertPlacement(m, [at]);
});
