// Every device Partita can give a VM, listed once. The machine spec's device kinds, the builder, the guest's
// tables, the I/O thread and save/restore all find devices here: adding a device is its own file plus one line.
import type { DeviceModel } from './model.js';
import { serialPortModel } from './legacy/uart-16550a.js';
import { debugExitModel } from './legacy/debug-exit.js';
import { ioDelayModel } from './legacy/io-delay.js';
import { cmosRtcModel } from './legacy/cmos-rtc.js';
import { systemControlAModel } from './legacy/system-control-a.js';
import { debugConsoleModel } from './legacy/debug-console.js';
import { i8042Model } from './legacy/i8042.js';
import { pciRootModel } from './pci/root.js';
import { piix3IsaModel } from './pc/piix3.js';
import { piix4PmModel } from './pc/piix4-pm.js';
import { virtioBlockModel } from './virtio/block.js';
import { virtioNetModel } from './virtio/net.js';
import { virtioEntropyModel } from './virtio/entropy.js';
import { virtioConsoleModel } from './virtio/console.js';
import { virtioKeyboardModel, virtioTabletModel } from './virtio/input.js';
import { fwCfgModel } from './firmware/fw-cfg.js';
import { stdVgaModel } from './display/std-vga.js';
import { ahciModel } from './storage/ahci.js';

export class DeviceRegistry {
  private readonly models = new Map<string, DeviceModel>();

  constructor(models: readonly DeviceModel[]) {
    for (const m of models) this.add(m);
  }

  /** A registry with one more model (tests, plug-ins); the original is unchanged. */
  with(model: DeviceModel): DeviceRegistry {
    return new DeviceRegistry([...this.models.values(), model]);
  }

  private add(model: DeviceModel): void {
    if (this.models.has(model.kind)) throw new Error(`device kind '${model.kind}' is registered twice`);
    this.models.set(model.kind, model);
  }

  get(kind: string): DeviceModel | undefined {
    return this.models.get(kind);
  }

  get kinds(): string[] {
    return [...this.models.keys()];
  }
}

export const deviceRegistry = new DeviceRegistry([
  serialPortModel as DeviceModel,
  debugExitModel as DeviceModel,
  ioDelayModel as DeviceModel,
  cmosRtcModel as DeviceModel,
  systemControlAModel as DeviceModel,
  debugConsoleModel as DeviceModel,
  i8042Model as DeviceModel,
  pciRootModel as DeviceModel,
  piix3IsaModel as DeviceModel,
  piix4PmModel as DeviceModel,
  virtioBlockModel as DeviceModel,
  virtioNetModel as DeviceModel,
  virtioEntropyModel as DeviceModel,
  virtioConsoleModel as DeviceModel,
  virtioTabletModel as DeviceModel,
  virtioKeyboardModel as DeviceModel,
  fwCfgModel as DeviceModel,
  stdVgaModel as DeviceModel,
  ahciModel as DeviceModel,
]);
