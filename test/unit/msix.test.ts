// MSI-X on a real KVM VM: a vector fired through its irqfd lands in the target LAPIC's IRR; masking holds it
// in the pending-bit array until unmasked.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { ioctls, kvm_lapic_state } from '../../src/kvm/abi.js';
import { KvmSystem } from '../../src/kvm/system.js';
import { check, native } from '../../src/native/index.js';
import { Vm } from '../../src/vmm/vm.js';
import { Vcpu } from '../../src/vmm/vcpu.js';
import { GsiRouter } from '../../src/base/gsi-routing.js';
import { MsixVectors } from '../../src/devices/pci/msix.js';
import { PciConfigSpace } from '../../src/devices/pci/config-space.js';
import { MIB } from '../../src/base/units.js';

function lapic(vcpu: Vcpu): Uint8Array {
  const buf = new Uint8Array(kvm_lapic_state.size);
  check(native.ioctl(vcpu.fd, ioctls.KVM_GET_LAPIC, buf), 'KVM_GET_LAPIC');
  return buf;
}
function irrHas(state: Uint8Array, vector: number): boolean {
  const word = new DataView(state.buffer).getUint32(0x200 + (vector >> 5) * 0x10, true);
  return (word & (1 << (vector & 31))) !== 0;
}

/** Waits for an irqfd delivery (KVM may inject from a work queue): a hang guard only, naming what never came. */
async function until(what: string, ok: () => boolean): Promise<void> {
  const guard = Date.now() + 60_000;
  while (!ok()) {
    if (Date.now() > guard) assert.fail(`hang guard: ${what} never happened`);
    await sleep(5);
  }
}

test(
  'MSI-X: routing, irqfd delivery, per-vector and function masking with pending bits',
  { skip: !existsSync('/dev/kvm') && 'no /dev/kvm' },
  async () => {
    const kvm = KvmSystem.open();
    const vm = Vm.create(kvm, 16 * MIB);
    const vcpu = Vcpu.create(vm.fd, 0, kvm.vcpuMmapSize);
    const state = lapic(vcpu);
    const dv = new DataView(state.buffer);
    dv.setUint32(0xf0, dv.getUint32(0xf0, true) | 0x100, true); // software-enable the LAPIC (SVR bit 8)
    check(native.ioctl(vcpu.fd, ioctls.KVM_SET_LAPIC, state), 'KVM_SET_LAPIC');

    const router = new GsiRouter(vm.fd);
    const msix = MsixVectors.create(2, router);
    const config = new PciConfigSpace();
    config.initialize({ vendorId: 0x1af4, deviceId: 0x1041, classCode: 0x020000 });
    const cap = msix.addCapability(config, 1, 0, 0x800);
    assert.equal(config.read(cap, 1), 0x11);
    assert.equal(config.read(cap + 2, 2), 1, 'table size - 1');
    assert.equal(config.read(cap + 4, 4), 0x1, 'table offset 0 in BAR 1');
    assert.equal(config.read(cap + 8, 4), 0x801, 'PBA offset in BAR 1');

    // Program vector 0: destination APIC 0, vector 0x41; vector 1 → 0x42. Both still masked.
    const dword = (v: number): Uint8Array => new Uint8Array(new Uint32Array([v]).buffer);
    const program = (vector: number, data: number): void => {
      // As a driver does: one dword at a time (MMIO accesses are at most 8 bytes).
      msix.tableWrite(vector * 16, dword(0xfee00000));
      msix.tableWrite(vector * 16 + 4, dword(0));
      msix.tableWrite(vector * 16 + 8, dword(data));
    };
    program(0, 0x41);
    program(1, 0x42);
    msix.tableWrite(0, new Uint8Array(16)); // a 16-byte access is not a valid MMIO access: ignored
    msix.fire(0);
    assert.equal(msix.isPending(0), true, 'MSI-X disabled: pending');
    const pba = new Uint8Array(8);
    msix.pbaRead(0, pba);
    assert.equal(pba[0], 1);

    config.write(cap + 2, 2, 0x8000); // enable
    msix.controlWritten();
    assert.equal(msix.isPending(0), true, 'vector 0 is still masked');
    msix.tableWrite(12, new Uint8Array([0, 0, 0, 0])); // unmask vector 0 → the pending interrupt is delivered
    assert.equal(msix.isPending(0), false);
    await until('vector 0x41 in the LAPIC IRR', () => irrHas(lapic(vcpu), 0x41));

    config.write(cap + 2, 2, 0xc000); // function mask
    msix.controlWritten();
    msix.tableWrite(28, new Uint8Array([0, 0, 0, 0])); // unmask vector 1, but the function is masked
    msix.fire(1);
    assert.equal(msix.isPending(1), true);
    await sleep(20); // a delivery that should not happen has this long to show up
    assert.equal(irrHas(lapic(vcpu), 0x42), false, 'not delivered under the function mask');
    config.write(cap + 2, 2, 0x8000);
    msix.controlWritten();
    assert.equal(msix.isPending(1), false);
    await until('vector 0x42 in the LAPIC IRR once the function is unmasked', () => irrHas(lapic(vcpu), 0x42));

    const out = new Uint8Array(4);
    msix.tableRead(8, out);
    assert.deepEqual([...out], [0x41, 0, 0, 0]);
    msix.tableRead(4096, out); // outside the table
    assert.deepEqual([...out], [0xff, 0xff, 0xff, 0xff]);
  },
);
