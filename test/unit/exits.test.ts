// Every kind of KVM exit, decoded from a real vCPU's kvm_run page: the page is filled in by the test as KVM
// would fill it, then handed to the same code the exit loop runs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { exitReasons, kvm_run, systemEventTypes } from '../../src/kvm/abi.js';
import { KvmSystem } from '../../src/kvm/system.js';
import { Vm } from '../../src/vmm/vm.js';
import { Vcpu, type VcpuExitContext } from '../../src/vmm/vcpu.js';
import { VmControl } from '../../src/vmm/control.js';
import { MmioBus, PortIoBus } from '../../src/devices/bus.js';
import { MIB } from '../../src/base/units.js';

const R = kvm_run.fields;
const haveKvm = existsSync('/dev/kvm');

function setup(): { vcpu: Vcpu; ctx: VcpuExitContext; log: string[]; control: VmControl } {
  const kvm = KvmSystem.open();
  const vm = Vm.create(kvm, 16 * MIB);
  const vcpu = Vcpu.create(vm.fd, 0, kvm.vcpuMmapSize);
  const pio = new PortIoBus();
  const mmio = new MmioBus();
  const log: string[] = [];
  pio.register(0x3f8, 8, {
    name: 'rec',
    pioRead: (o, s) => (log.push(`in ${o}/${s}`), 0x12345678 >>> (32 - 8 * s)),
    pioWrite: (o, s, v) => void log.push(`out ${o}/${s}=${v.toString(16)}`),
  });
  mmio.register(0xd0000000, 0x1000, {
    name: 'm',
    mmioRead: (o, d) => {
      log.push(`mr ${o}/${d.length}`);
      d.fill(0xab);
    },
    mmioWrite: (o, d) => void log.push(`mw ${o}=${[...d].join(',')}`),
  });
  const control = new VmControl();
  return { vcpu, ctx: { pio, mmio, control, memory: vm.memory }, log, control };
}

function forge(vcpu: Vcpu, reason: number, fill: (run: DataView) => void = () => undefined): void {
  vcpu.runBytes.fill(0, 0, 256);
  vcpu.run.setUint32(R.exit_reason.offset, reason, true);
  fill(vcpu.run);
}

test('port I/O exits: single and string (rep) accesses in both directions', { skip: !haveKvm && 'no /dev/kvm' }, () => {
  const { vcpu, ctx, log } = setup();
  forge(vcpu, exitReasons.KVM_EXIT_IO, (run) => {
    run.setUint8(R['io.direction'].offset, 1);
    run.setUint8(R['io.size'].offset, 2);
    run.setUint16(R['io.port'].offset, 0x3f9, true);
    run.setUint32(R['io.count'].offset, 3, true);
    run.setUint32(R['io.data_offset'].offset, 1024, true);
    run.setUint16(1024, 0x1111, true);
    run.setUint16(1026, 0x2222, true);
    run.setUint16(1028, 0x3333, true);
  });
  assert.equal(vcpu.handleExit(ctx), undefined);
  forge(vcpu, exitReasons.KVM_EXIT_IO, (run) => {
    run.setUint8(R['io.direction'].offset, 0);
    run.setUint8(R['io.size'].offset, 4);
    run.setUint16(R['io.port'].offset, 0x3f8, true);
    run.setUint32(R['io.count'].offset, 1, true);
    run.setUint32(R['io.data_offset'].offset, 1024, true);
  });
  assert.equal(vcpu.handleExit(ctx), undefined);
  assert.equal(vcpu.run.getUint32(1024, true), 0x12345678);
  assert.deepEqual(log, ['out 1/2=1111', 'out 1/2=2222', 'out 1/2=3333', 'in 0/4']);
});

test(
  'MMIO exits: reads fill kvm_run.mmio.data, writes pass the access bytes',
  { skip: !haveKvm && 'no /dev/kvm' },
  () => {
    const { vcpu, ctx, log } = setup();
    forge(vcpu, exitReasons.KVM_EXIT_MMIO, (run) => {
      run.setBigUint64(R['mmio.phys_addr'].offset, 0xd0000010n, true);
      run.setUint32(R['mmio.len'].offset, 4, true);
    });
    vcpu.handleExit(ctx);
    assert.deepEqual(
      [...vcpu.runBytes.subarray(R['mmio.data'].offset, R['mmio.data'].offset + 8)],
      [0xab, 0xab, 0xab, 0xab, 0, 0, 0, 0],
    );
    forge(vcpu, exitReasons.KVM_EXIT_MMIO, (run) => {
      run.setBigUint64(R['mmio.phys_addr'].offset, 0xd0000020n, true);
      run.setUint32(R['mmio.len'].offset, 2, true);
      run.setUint8(R['mmio.is_write'].offset, 1);
      run.setUint16(R['mmio.data'].offset, 0x0201, true);
    });
    vcpu.handleExit(ctx);
    // A bogus length larger than 8 is clamped to the 8-byte data field, never beyond kvm_run.
    forge(vcpu, exitReasons.KVM_EXIT_MMIO, (run) => {
      run.setBigUint64(R['mmio.phys_addr'].offset, 0xe0000000n, true);
      run.setUint32(R['mmio.len'].offset, 4096, true);
    });
    vcpu.handleExit(ctx);
    assert.deepEqual(log, ['mr 16/4', 'mw 32=1,2']);
    assert.equal(ctx.mmio.unclaimed, 1);
  },
);

const fatal: [string, number, string, RegExp, (run: DataView) => void][] = [
  ['HLT', exitReasons.KVM_EXIT_HLT, 'halted', /halted/, () => undefined],
  ['SHUTDOWN', exitReasons.KVM_EXIT_SHUTDOWN, 'triple-fault', /triple-fault/, () => undefined],
  [
    'FAIL_ENTRY',
    exitReasons.KVM_EXIT_FAIL_ENTRY,
    'fail-entry',
    /refused to enter.*0x80000021/,
    (run) => run.setBigUint64(R['fail_entry.hardware_entry_failure_reason'].offset, 0x80000021n, true),
  ],
  [
    'INTERNAL_ERROR',
    exitReasons.KVM_EXIT_INTERNAL_ERROR,
    'emulation-failure',
    /emulation failure.*data 0x3/,
    (run) => {
      run.setUint32(R['internal.suberror'].offset, 1, true);
      run.setUint32(R['internal.ndata'].offset, 1, true);
      run.setBigUint64(R['internal.data'].offset, 3n, true);
    },
  ],
  [
    'INTERNAL_ERROR (bogus ndata)',
    exitReasons.KVM_EXIT_INTERNAL_ERROR,
    'internal-error',
    /suberror 9/,
    (run) => {
      run.setUint32(R['internal.suberror'].offset, 9, true);
      run.setUint32(R['internal.ndata'].offset, 0xffffffff, true);
    },
  ],
  ['unknown', 250, 'unknown-exit', /unexpected exit unknown exit reason 250/, () => undefined],
  ['DEBUG', exitReasons.KVM_EXIT_DEBUG, 'unknown-exit', /KVM_EXIT_DEBUG/, () => undefined],
];

for (const [label, reason, kind, message, fill] of fatal) {
  test(`${label} exit stops the VM with a message and a register dump`, { skip: !haveKvm && 'no /dev/kvm' }, () => {
    const { vcpu, ctx, control } = setup();
    forge(vcpu, reason, fill);
    const stop = vcpu.handleExit(ctx);
    assert.ok(stop, 'the VM must stop');
    assert.equal(stop.kind, kind);
    assert.equal(stop.status, 3);
    assert.match(stop.message, message);
    assert.match(stop.message, /RIP=[0-9a-f]{16}/);
    assert.equal(control.stopping, true);
    assert.equal(control.reason().kind, kind);
  });
}

test(
  'system events: poweroff is a clean stop, reset stops without rebooting',
  { skip: !haveKvm && 'no /dev/kvm' },
  () => {
    const a = setup();
    forge(a.vcpu, exitReasons.KVM_EXIT_SYSTEM_EVENT, (run) =>
      run.setUint32(R['system_event.type'].offset, systemEventTypes.KVM_SYSTEM_EVENT_SHUTDOWN, true),
    );
    assert.deepEqual([a.vcpu.handleExit(a.ctx)?.kind, a.control.reason().status], ['poweroff', 0]);
    const b = setup();
    forge(b.vcpu, exitReasons.KVM_EXIT_SYSTEM_EVENT, (run) =>
      run.setUint32(R['system_event.type'].offset, systemEventTypes.KVM_SYSTEM_EVENT_RESET, true),
    );
    assert.equal(b.vcpu.handleExit(b.ctx)?.kind, 'reset');
  },
);

test('the first stop wins; later ones report it', () => {
  const control = new VmControl();
  control.stop({ kind: 'guest-exit', status: 11, message: 'first' });
  const second = control.fault('second', 3);
  assert.deepEqual(second, { kind: 'guest-exit', status: 11, message: 'first' });
  const other = new VmControl(control.buffer); // another thread's view
  assert.equal(other.stopping, true);
  assert.equal(other.reason().message, 'first');
});
