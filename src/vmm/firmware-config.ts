// What firmware (SeaBIOS, OVMF) reads from fw_cfg about the machine it starts (QEMU docs/specs/fw_cfg.rst and
// the files QEMU's hw/i386 gives a PC; SeaBIOS src/fw/paravirt.c, src/boot.c): the ACPI tables and the loader
// script that links them, the memory map, the boot order, the boot CPU count, boot retry and serial console
// settings, and whatever the devices hand over themselves (option ROMs). The boot strategy adds these files to
// the fw-cfg device (addFwCfgFile) between creating and attaching the devices.
import { acpiFirmwareFiles, type AcpiOptions, type FirmwareFile } from '../arch/x86_64/acpi/index.js';
import {
  E820_RAM,
  E820_RESERVED,
  IOAPIC_ADDRESS,
  KVM_IDENTITY_MAP_ADDRESS,
  LAPIC_ADDRESS,
  ramRanges,
} from '../arch/x86_64/layout.js';
import { defaultIoapicId } from '../arch/x86_64/mptable.js';
import type { PlatformDescription } from './device-set.js';
import { le16, le32 } from '../base/little-endian.js';

/** KVM's identity-map page and TSS (three pages) right after it: reserved in the memory map, as QEMU does. */
const KVM_PRIVATE_PAGES = { base: KVM_IDENTITY_MAP_ADDRESS, size: 4 * 4096 } as const;

/**
 * One boot device, in priority order. The paths are the ones QEMU writes for the same devices (checked against
 * QEMU 7.2's "boot order:" in SeaBIOS's log), so SeaBIOS (boot.c bootprio_find_*) and OVMF (QemuBootOrderLib)
 * match them as they match QEMU's.
 */
export type BootDevice =
  /** Any PCI function that boots as a whole (a device with an option ROM): /pci@i0cf8/NAME@slot[,fn], NAME `*`. */
  | { readonly kind: 'pci'; readonly slot: number; readonly fn?: number; readonly name?: string }
  /** A virtio-blk disk: /pci@i0cf8/scsi@slot[,fn]/disk@0,0 (its PCI class is SCSI). */
  | { readonly kind: 'virtio-blk'; readonly slot: number; readonly fn?: number }
  /**
   * A disk or CD on an AHCI port: /pci@i0cf8/NAME@slot[,fn]/drive@port/disk@0. NAME is QEMU's for its ICH9 AHCI
   * ("pci8086,2922", which OVMF turns into a Sata() node); SeaBIOS matches any name.
   */
  | {
      readonly kind: 'ahci';
      readonly slot: number;
      readonly fn?: number;
      readonly port: number;
      readonly name?: string;
    }
  /** Network boot through a NIC's option ROM: /pci@i0cf8/ethernet@slot[,fn]/ethernet-phy@0. */
  | { readonly kind: 'net'; readonly slot: number; readonly fn?: number };

/** QEMU's OpenFirmware name of its AHCI controller (ICH9, 8086:2922: no class name, so "pciVVVV,DDDD"). */
export const AHCI_NODE_NAME = 'pci8086,2922';

export interface FirmwareConfigInput {
  /** Boot CPUs (vCPUs); their APIC IDs in vCPU order (the first is the BSP). */
  readonly cpus: number;
  readonly apicIds: readonly number[];
  /** Guest RAM in bytes (split around the PCI hole by layout.ts ramRanges). */
  readonly memory: number;
  /** What the devices said about themselves (describeDevices). */
  readonly platform: PlatformDescription;
  /** Boot devices in priority order; empty: the firmware's own order. */
  readonly bootOrder?: readonly BootDevice[];
  /** Only the listed devices may boot (QEMU -boot strict=on: "HALT" ends the list). */
  readonly strictBoot?: boolean;
  /** How long the firmware waits before trying the boot devices again when none booted (default 60 s). */
  readonly bootFailWaitMs?: number;
  /** SeaBIOS's serial console (sercon) on this UART port, e.g. 0x3F8; default off. */
  readonly serialConsolePort?: number;
  /** FADT reset register, HW-reduced sleep port and interrupt overrides, as for direct boot. */
  readonly acpi?: Pick<AcpiOptions, 'reset' | 'sleepPort' | 'overrides'>;
}

/** The firmware's own boot retry delay (SeaBIOS boot.c): stated explicitly, so both firmwares agree. */
export const DEFAULT_BOOT_FAIL_WAIT_MS = 60_000;

function checkRange(v: number, min: number, max: number, what: string): void {
  if (!Number.isInteger(v) || v < min || v > max) throw new RangeError(`${what} ${v} is outside ${min}..${max}`);
}

/**
 * etc/e820: 20-byte entries { le64 address, le64 length, le32 type }, RAM (type 1: below the PCI hole from 0,
 * above 4 GiB) and reserved ranges (type 2: the devices' reservations such as ECAM, KVM's private pages).
 * Firmware keeps the low-memory details (EBDA, VGA window, its own ROM) to itself, as with QEMU.
 */
export function e820File(memory: number, reserved: PlatformDescription['reserved']): Uint8Array {
  const entries = [
    ...ramRanges(memory).map((r) => ({ base: r.gpa, size: r.size, type: E820_RAM })),
    ...[...reserved, KVM_PRIVATE_PAGES].map((r) => ({ base: r.base, size: r.size, type: E820_RESERVED })),
  ].sort((a, b) => a.base - b.base);
  const out = new Uint8Array(entries.length * 20);
  const dv = new DataView(out.buffer);
  entries.forEach((e, i) => {
    dv.setBigUint64(i * 20, BigInt(e.base), true);
    dv.setBigUint64(i * 20 + 8, BigInt(e.size), true);
    dv.setUint32(i * 20 + 16, e.type, true);
  });
  return out;
}

/** The OpenFirmware device path QEMU writes for a boot device (hw/core/qdev-fw.c, hw/pci/pci.c). */
export function bootDevicePath(d: BootDevice): string {
  checkRange(d.slot, 0, 31, 'PCI slot');
  const fn = d.fn ?? 0;
  checkRange(fn, 0, 7, 'PCI function');
  const at = fn ? `${d.slot.toString(16)},${fn.toString(16)}` : d.slot.toString(16);
  const nodeName = (n: string | undefined, otherwise: string): string => {
    if (n !== undefined && !/^(\*|[a-z0-9,.+_-]+)$/i.test(n)) throw new RangeError(`boot device node name '${n}'`);
    return n ?? otherwise;
  };
  switch (d.kind) {
    case 'pci':
      return `/pci@i0cf8/${nodeName(d.name, '*')}@${at}`;
    case 'virtio-blk':
      return `/pci@i0cf8/scsi@${at}/disk@0,0`;
    case 'ahci':
      checkRange(d.port, 0, 31, 'AHCI port');
      return `/pci@i0cf8/${nodeName(d.name, AHCI_NODE_NAME)}@${at}/drive@${d.port.toString(16)}/disk@0`;
    case 'net':
      return `/pci@i0cf8/ethernet@${at}/ethernet-phy@0`;
  }
}

/** bootorder: one path per line, NUL-terminated as QEMU writes it; "HALT" last for a strict order. */
export function bootOrderFile(devices: readonly BootDevice[], strict = false): Uint8Array {
  const lines = devices.map(bootDevicePath);
  if (strict) lines.push('HALT');
  return new Uint8Array(Buffer.from(`${lines.join('\n')}\0`, 'latin1'));
}

/**
 * Every fw_cfg file of a firmware boot, in a stable order (the device sorts its directory by name): the ACPI
 * tables (etc/acpi/rsdp, etc/acpi/tables, etc/table-loader), etc/e820, etc/boot-cpus, etc/boot-fail-wait,
 * etc/sercon-port, bootorder (when given) and the devices' firmwareFiles.
 */
export function firmwareConfigFiles(input: FirmwareConfigInput): FirmwareFile[] {
  const { cpus, apicIds, memory, platform } = input;
  checkRange(cpus, 1, 0xffff, 'CPU count');
  if (apicIds.length !== cpus) throw new RangeError(`${cpus} CPUs but ${apicIds.length} APIC IDs`);
  const bootFailWait = input.bootFailWaitMs ?? DEFAULT_BOOT_FAIL_WAIT_MS;
  checkRange(bootFailWait, 0, 0xffff_ffff, 'boot fail wait (ms)');
  const sercon = input.serialConsolePort ?? 0;
  checkRange(sercon, 0, 0xffff, 'serial console port');

  const files: FirmwareFile[] = [
    ...acpiFirmwareFiles({
      apicIds,
      ioapicId: defaultIoapicId(apicIds),
      ioapicAddress: IOAPIC_ADDRESS,
      lapicAddress: LAPIC_ADDRESS,
      legacy: platform.legacy,
      devices: platform.acpi,
      tables: platform.acpiTables,
      ...(platform.fadt ? { fixedHardware: platform.fadt } : {}),
      interruptOverrides: platform.interruptOverrides,
      ...input.acpi,
    }),
    { name: 'etc/e820', data: e820File(memory, platform.reserved) },
    { name: 'etc/boot-cpus', data: le16(cpus) },
    { name: 'etc/boot-fail-wait', data: le32(bootFailWait) },
    { name: 'etc/sercon-port', data: le16(sercon) },
  ];
  if (input.bootOrder && input.bootOrder.length > 0)
    files.push({ name: 'bootorder', data: bootOrderFile(input.bootOrder, input.strictBoot) });
  files.push(...platform.firmwareFiles);
  const seen = new Set<string>();
  for (const f of files) {
    if (seen.has(f.name)) throw new RangeError(`fw_cfg file '${f.name}' is given twice`);
    seen.add(f.name);
  }
  return files;
}
