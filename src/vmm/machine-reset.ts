// A platform reset without restarting the process: what a PC does when the guest pulses the reset line (i8042
// 0xFE, port 0x92, 0xCF9) or triple-faults. The state every part had at power-on is captured once, before the
// guest first runs, and loaded again: vCPU 0's registers and local APIC, the in-kernel PIC/IOAPIC and PIT, every
// device (through its own saveState/restoreState: the power-on snapshot *is* its reset state), and the firmware's
// copy below 1 MiB. RAM keeps its contents, as on a real warm reset.
import {
  ioctls,
  kvm_irqchip,
  kvm_lapic_state,
  kvm_mp_state,
  kvm_pit_state2,
  KVM_IRQCHIP_IOAPIC,
  KVM_IRQCHIP_PIC_MASTER,
  KVM_IRQCHIP_PIC_SLAVE,
  mpStates,
} from '../kvm/abi.js';
import { check, native } from '../native/index.js';
import type { DeviceSnapshot } from '../devices/model.js';
import { saveDevices, type DeviceSet } from './device-set.js';
import type { Regs, Sregs } from '../arch/x86_64/registers.js';
import type { Vcpu } from './vcpu.js';
import type { Vm } from './vm.js';

export class PowerOnState {
  private constructor(
    private readonly regs: Regs,
    private readonly sregs: Sregs,
    private readonly lapic: DataView,
    private readonly chips: readonly DataView[],
    private readonly pit: DataView,
    private readonly devices: readonly DeviceSnapshot[],
  ) {}

  /** Captures the power-on state; call after the devices are attached and before vCPU 0 first runs. */
  static capture(vm: Vm, bsp: Vcpu, devices: DeviceSet): PowerOnState {
    const lapic = new DataView(new ArrayBuffer(kvm_lapic_state.size));
    check(native.ioctl(bsp.fd, ioctls.KVM_GET_LAPIC, lapic), 'KVM_GET_LAPIC');
    const chips = [KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQCHIP_IOAPIC].map((id) => {
      const chip = new DataView(new ArrayBuffer(kvm_irqchip.size));
      chip.setUint32(kvm_irqchip.fields.chip_id.offset, id, true);
      check(native.ioctl(vm.fd, ioctls.KVM_GET_IRQCHIP, chip), 'KVM_GET_IRQCHIP', `chip ${id}`);
      return chip;
    });
    const pit = new DataView(new ArrayBuffer(kvm_pit_state2.size));
    check(native.ioctl(vm.fd, ioctls.KVM_GET_PIT2, pit), 'KVM_GET_PIT2');
    return new PowerOnState(bsp.getRegs(), bsp.getSregs(), lapic, chips, pit, saveDevices(devices));
  }

  /** Puts the machine back into its power-on state (vCPU 0 at the reset vector). Throws if a part refuses. */
  apply(vm: Vm, bsp: Vcpu, devices: DeviceSet): void {
    devices.devices.forEach((d, i) => {
      if (d.device.reset) d.device.reset();
      else d.device.restoreState(this.devices[i]);
    });
    for (const chip of this.chips) check(native.ioctl(vm.fd, ioctls.KVM_SET_IRQCHIP, chip), 'KVM_SET_IRQCHIP');
    check(native.ioctl(vm.fd, ioctls.KVM_SET_PIT2, this.pit), 'KVM_SET_PIT2');
    check(native.ioctl(bsp.fd, ioctls.KVM_SET_LAPIC, this.lapic), 'KVM_SET_LAPIC');
    const mp = new DataView(new ArrayBuffer(kvm_mp_state.size));
    mp.setUint32(kvm_mp_state.fields.mp_state.offset, mpStates.KVM_MP_STATE_RUNNABLE, true);
    check(native.ioctl(bsp.fd, ioctls.KVM_SET_MP_STATE, mp), 'KVM_SET_MP_STATE');
    bsp.setSregs(this.sregs);
    bsp.setRegs(this.regs);
  }
}
