// ACPI 6.5 §5.2.11.1 Differentiated System Description Table (DSDT): Partita's namespace: \_SB_ with one
// processor device per vCPU (§8.4, ACPI0007), COM1 (PNP0501) and the \_S5_ soft-off package (§7.4.2).
import { buildSdt } from './sdt.js';
import {
  concat,
  device,
  eisaId,
  integer,
  ioPort,
  irqNoFlags,
  name,
  pkg,
  resourceTemplate,
  scope,
  string,
  type Aml,
} from './aml.js';

/** DSDT revision 2: AML integers are 64 bits wide. */
export const DSDT_REVISION = 2;

/** SLP_TYP value the \_S5_ package gives for soft-off (written into the sleep control register, if any). */
export const S5_SLEEP_TYPE = 5;

export interface DsdtOptions {
  /** Number of vCPUs: one processor device each, _UID 0..n-1 (the ACPI Processor UIDs of the MADT). */
  readonly processorCount: number;
}

/** Namespace name of the processor device with `uid`: C000, C001, … (hex). */
export function processorDeviceName(uid: number): string {
  return `C${uid.toString(16).toUpperCase().padStart(3, '0')}`;
}

function com1(): Aml {
  return device(
    'COM1',
    name('_HID', eisaId('PNP0501')), // 16550A-compatible serial port
    name('_UID', integer(1)),
    name('_CRS', resourceTemplate(ioPort(0x3f8, 0x3f8, 0x01, 0x08), irqNoFlags(4))),
  );
}

export function buildDsdt(opts: DsdtOptions): Uint8Array {
  const n = opts.processorCount;
  if (!Number.isInteger(n) || n < 1 || n > 0xfff) throw new RangeError(`processor count ${n} out of range`);
  const processors: Aml[] = [];
  for (let uid = 0; uid < n; uid++) {
    processors.push(device(processorDeviceName(uid), name('_HID', string('ACPI0007')), name('_UID', integer(uid))));
  }
  const body = [
    scope('\\_SB_', ...processors, com1()),
    // SLP_TYPa, SLP_TYPb, reserved, reserved
    name('\\_S5_', pkg(integer(S5_SLEEP_TYPE), integer(S5_SLEEP_TYPE), integer(0), integer(0))),
  ];
  return buildSdt('DSDT', DSDT_REVISION, concat(...body));
}
