// PCI Firmware Specification 3.2 §4.1.2 MCFG table: where the PCI Express enhanced configuration (ECAM) window
// of each segment is, so an OS uses memory-mapped config accesses instead of ports 0xCF8/0xCFC.
import { buildSdt, ByteWriter } from './sdt.js';

export const MCFG_REVISION = 1;

export interface EcamWindow {
  readonly base: number;
  readonly segment: number;
  readonly startBus: number;
  readonly endBus: number;
}

export function buildMcfg(windows: readonly EcamWindow[]): Uint8Array {
  const w = new ByteWriter();
  w.u64(0n); // reserved
  for (const e of windows) {
    if (e.base % (1 << 20) !== 0) throw new RangeError(`ECAM base 0x${e.base.toString(16)} is not 1 MiB aligned`);
    if (e.startBus < 0 || e.endBus > 255 || e.endBus < e.startBus) throw new RangeError('ECAM bus range is invalid');
    w.u64(BigInt(e.base));
    w.u16(e.segment);
    w.u8(e.startBus);
    w.u8(e.endBus);
    w.u32(0); // reserved
  }
  return buildSdt('MCFG', MCFG_REVISION, w.finish());
}
