// ACPI 6.5 §5.2.11.1 Differentiated System Description Table (DSDT): Partita's namespace: \_SB_ with one
// processor device per vCPU (§8.4, ACPI0007), then each device's own description (COM1, the PCI root bridge, …:
// see DeviceModel.describe), and the \_S5_ soft-off package (§7.4.2).
import { buildSdt } from './sdt.js';
import { concat, device, integer, name, pkg, scope, string, type Aml } from './aml.js';

/** DSDT revision 2: AML integers are 64 bits wide. */
export const DSDT_REVISION = 2;

/** SLP_TYP value the \_S5_ package gives for soft-off (written into the sleep control register, if any). */
export const S5_SLEEP_TYPE = 5;

export interface DsdtOptions {
  /** Number of vCPUs: one processor device each, _UID 0..n-1 (the ACPI Processor UIDs of the MADT). */
  readonly processorCount: number;
  /** The machine's devices as they describe themselves (DeviceModel.describe): placed under \_SB_. */
  readonly devices?: readonly Aml[];
  /** SLP_TYP of soft-off for \_S5_ (fixed-hardware ACPI: the chipset's value); default S5_SLEEP_TYPE. */
  readonly s5SleepType?: number;
}

/** Namespace name of the processor device with `uid`: C000, C001, … (hex). */
export function processorDeviceName(uid: number): string {
  return `C${uid.toString(16).toUpperCase().padStart(3, '0')}`;
}

export function buildDsdt(opts: DsdtOptions): Uint8Array {
  const n = opts.processorCount;
  if (!Number.isInteger(n) || n < 1 || n > 0xfff) throw new RangeError(`processor count ${n} out of range`);
  const processors: Aml[] = [];
  for (let uid = 0; uid < n; uid++) {
    processors.push(device(processorDeviceName(uid), name('_HID', string('ACPI0007')), name('_UID', integer(uid))));
  }
  const s5 = opts.s5SleepType ?? S5_SLEEP_TYPE;
  const body = [
    scope('\\_SB_', ...processors, ...(opts.devices ?? [])),
    // SLP_TYPa, SLP_TYPb, reserved, reserved
    name('\\_S5_', pkg(integer(s5), integer(s5), integer(0), integer(0))),
  ];
  return buildSdt('DSDT', DSDT_REVISION, concat(...body));
}
