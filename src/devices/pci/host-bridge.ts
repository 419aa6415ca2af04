// The PCI host bridge at 00:00.0 (PCI Local Bus 3.0 §6, class 06.00.00 "host bridge"), using QEMU's
// generic PCIe host bridge IDs (1b36:0008) so guest drivers treat it as a plain bridge with nothing to set up.
import { PciConfigSpace } from './config-space.js';
import type { PciFunction } from './bus.js';

export class PciHostBridge implements PciFunction {
  readonly name = 'pci-host-bridge';
  readonly config: PciConfigSpace;
  constructor(shared?: SharedArrayBuffer) {
    const initialize = shared === undefined;
    this.config = new PciConfigSpace(shared);
    const id = { vendorId: 0x1b36, deviceId: 0x0008, classCode: 0x060000 };
    if (initialize) this.config.initialize(id);
    else this.config.defineMasks(id);
  }
  barRead(_bar: number, _offset: number, data: Uint8Array): void {
    data.fill(0xff);
  }
  barWrite(): void {}
}
