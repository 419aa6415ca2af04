// Two ways to start the same machine. Direct kernel boot does what firmware would have done (places BARs,
// writes ACPI and MP tables, hands over a memory map) and enters the kernel in the state its boot protocol
// names. Firmware boot maps a firmware image where a PC's flash sits and lets vCPU 0 start at the reset vector
// (Intel SDM vol. 3A §9.1.4: CS.base 0xFFFF0000, IP 0xFFF0), leaving BARs, tables and the boot device to it.
import { BOOT_GDT_ADDRESS, FOUR_GIB, guestMemoryMap, IOAPIC_ADDRESS, LAPIC_ADDRESS } from '../arch/x86_64/layout.js';
import { buildAcpiTables } from '../arch/x86_64/acpi/index.js';
import { defaultIoapicId, MP_MAX_APIC_ID, writeMpTable } from '../arch/x86_64/mptable.js';
import { bootGdt, longModeEntry, protectedModeEntry } from '../arch/x86_64/registers.js';
import { identifyKernel, loadKernel, type BootEntry } from '../boot/index.js';
import type { LinuxBootEntry } from '../boot/linux.js';
import { formatSize, KIB, MIB } from '../base/units.js';
import type { FirmwareBootSpec, KernelBootSpec } from '../spec/machine-spec.js';
import type { PlatformDescription, SharedDeviceState } from './device-set.js';
import { addFwCfgFile, type FwCfgState } from '../devices/firmware/fw-cfg.js';
import { firmwareConfigFiles, type BootDevice } from './firmware-config.js';
import type { Vcpu } from './vcpu.js';
import type { Vm } from './vm.js';

export interface BootContext {
  readonly vm: Vm;
  readonly bsp: Vcpu;
  readonly memorySize: number;
  readonly apicIds: readonly number[];
  readonly platform: PlatformDescription;
  readonly devices: SharedDeviceState;
}

/** What a strategy reports about the start it prepared (for messages and tests). */
export type BootResult =
  | { readonly kind: 'kernel'; readonly entry: BootEntry | LinuxBootEntry }
  | { readonly kind: 'firmware'; readonly romBase: number; readonly romSize: number };

export interface BootStrategy {
  /** Whether the VMM places PCI BARs before the guest starts (firmware does its own enumeration). */
  readonly placesBars: boolean;
  /** Loads what the guest starts from and sets vCPU 0's entry state. */
  prepare(ctx: BootContext): BootResult;
  /** After a guest reset (firmware boot): reload what the guest may have overwritten (the BIOS copy below 1 MiB). */
  reset?(vm: Vm): void;
}

/** A kernel image and its modules, read before the VM is built so a bad file costs nothing. */
export interface KernelImages {
  readonly kernel: Uint8Array;
  readonly modules: readonly { readonly name: string; readonly data: Uint8Array; readonly cmdline: string }[];
}

export function directKernelBoot(spec: KernelBootSpec, images: KernelImages): BootStrategy {
  identifyKernel(images.kernel, spec.kernel); // not a kernel at all: refused before a VM exists
  return {
    placesBars: true,
    prepare({ vm, bsp, memorySize, apicIds, platform }) {
      vm.memory.write(BOOT_GDT_ADDRESS, new Uint8Array(bootGdt().buffer));
      const rsdpAddress = writePlatformTables(vm, apicIds, platform);
      const entry = loadKernel({
        imageName: spec.kernel,
        image: images.kernel,
        cmdline: spec.cmdline ?? '',
        modules: images.modules,
        memory: vm.memory,
        memoryMap: guestMemoryMap(memorySize, platform.reserved),
        rsdpAddress,
      });
      const regs = bsp.getRegs();
      for (const k of Object.keys(regs) as (keyof typeof regs)[]) regs[k] = 0n;
      regs.rip = BigInt(entry.entryPoint);
      regs.rflags = 0x2n;
      if (entry.protocol === 'linux') {
        // Linux boot protocol, 64-bit entry: long mode with the loader's identity map, rsi = boot_params.
        bsp.setSregs(
          longModeEntry(bsp.getSregs(), { gdtBase: entry.gdtAddress, gdtLimit: entry.gdtLimit, cr3: entry.cr3 }),
        );
        regs.rsi = BigInt(entry.rsi);
      } else {
        bsp.setSregs(protectedModeEntry(bsp.getSregs()));
        regs.rax = BigInt(entry.eax);
        regs.rbx = BigInt(entry.ebx);
      }
      bsp.setRegs(regs);
      return { kind: 'kernel', entry };
    },
  };
}

/**
 * The tables a guest OS reads to find its CPUs, interrupt controllers and devices: ACPI (RSDP found by
 * scanning the BIOS area, or through the boot protocol) and, for guests that predate ACPI, an MP table.
 */
function writePlatformTables(vm: Vm, apicIds: readonly number[], platform: PlatformDescription): number {
  const ioapicId = defaultIoapicId(apicIds);
  const acpi = buildAcpiTables(
    {
      apicIds,
      ioapicId,
      ioapicAddress: IOAPIC_ADDRESS,
      lapicAddress: LAPIC_ADDRESS,
      legacy: platform.legacy,
      devices: platform.acpi,
      tables: platform.acpiTables,
      ...(platform.fadt ? { fixedHardware: platform.fadt } : {}),
      interruptOverrides: platform.interruptOverrides,
    },
    vm.memory,
  );
  // The MP table cannot describe x2APIC IDs; such guests use ACPI.
  if (apicIds.every((id) => id <= MP_MAX_APIC_ID))
    writeMpTable(vm.memory, {
      apicIds,
      ioapicId,
      ioapicAddress: IOAPIC_ADDRESS,
      // The machine always has its PCI root: bus 0 is declared even with no function behind it yet.
      pci: { intx: platform.pciInterrupts },
    });
  return acpi.rsdpAddress;
}

/** Firmware images: whole 4 KiB pages, at most 16 MiB (the flash window below 4 GiB on a PC). */
export const MAX_FIRMWARE_SIZE = 16 * MIB;
/**
 * The legacy BIOS area below 1 MiB that holds a copy of the image's top: 0xC0000-0xFFFFF, the whole of a 256 KiB
 * SeaBIOS (Debian's has code from 0xD2720 on, not only in the top 128 KiB a PC's F and E segments show).
 */
const LOW_BIOS_END = 0x10_0000;
const LOW_BIOS_SIZE = 256 * KIB;

/** Checks a firmware image's shape: whole pages, not empty, not larger than the flash window. */
export function checkFirmware(path: string, bytes: Uint8Array): Uint8Array {
  if (bytes.length === 0 || bytes.length % (4 * KIB) !== 0 || bytes.length > MAX_FIRMWARE_SIZE)
    throw new RangeError(
      `firmware '${path}' is ${bytes.length} bytes: a firmware image is whole 4 KiB pages, at most ${formatSize(MAX_FIRMWARE_SIZE)}`,
    );
  // The CPU's first instruction is the image's last paragraph (4 GiB − 16): real firmware puts a jump there
  // (SeaBIOS a far jump EA, OVMF near jumps E9/EB after NOPs). Anything else is not a firmware image.
  const vector = bytes.subarray(bytes.length - 16);
  const first = vector.find((b) => b !== 0x90);
  if (first !== 0xea && first !== 0xe9 && first !== 0xeb)
    throw new RangeError(
      `firmware '${path}' is not a firmware image: no jump at its reset vector (the last 16 bytes start with 0x${(vector[0] ?? 0).toString(16).padStart(2, '0')})`,
    );
  return bytes;
}

export function firmwareBoot(spec: FirmwareBootSpec, image: Uint8Array): BootStrategy {
  return {
    placesBars: false,
    prepare({ vm, memorySize, apicIds, platform, devices }) {
      // What the firmware learns about the machine comes through fw_cfg: CPUs, memory map, ACPI tables (through
      // the table loader), boot order, option ROMs.
      const fwCfg = devices.devices.find((d) => d.kind === 'fw-cfg')?.state as FwCfgState | undefined;
      if (fwCfg) {
        const hasDisplay = devices.devices.some((d) => d.kind === 'std-vga');
        const files = firmwareConfigFiles({
          cpus: apicIds.length,
          apicIds,
          memory: memorySize,
          platform,
          bootOrder: bootDevices(spec.bootOrder, devices),
          // Without a screen, SeaBIOS mirrors its text console to COM1 (sercon), so the user still sees it.
          ...(hasDisplay ? {} : { serialConsolePort: 0x3f8 }),
        });
        for (const f of files) addFwCfgFile(fwCfg, f.name, f.data);
      }
      // The flash copy ends at 4 GiB, so the reset vector (4 GiB − 16) is the image's last paragraph. It is a
      // read-only slot: the guest's writes exit to userspace and are dropped, as a ROM's are.
      const romBase = FOUR_GIB - image.length;
      vm.slots.addRom(romBase, image, `firmware '${spec.firmware}'`);
      // Real-mode firmware jumps to F000:xxxx right after the reset vector: its top must also appear below
      // 1 MiB. Without a chipset that shadows (PAM), that window is plain RAM holding a copy.
      loadLowBiosCopy(vm, image);
      // vCPU 0 keeps KVM's reset state: CS 0xF000 with base 0xFFFF0000, IP 0xFFF0.
      return { kind: 'firmware', romBase, romSize: image.length };
    },
    reset(vm) {
      loadLowBiosCopy(vm, image);
    },
  };
}

/** (Re)loads the copy of the firmware's top below 1 MiB: at start, and on every reset (the guest may have written it). */
export function loadLowBiosCopy(vm: Vm, image: Uint8Array): void {
  const low = image.subarray(Math.max(0, image.length - LOW_BIOS_SIZE));
  vm.memory.write(LOW_BIOS_END - low.length, low);
}

/**
 * The firmware's boot order (fw_cfg "bootorder") from the spec's kinds: every device of the first kind, then of
 * the next. CD-ROMs and disks on the AHCI controller by port, virtio-blk disks and NICs by PCI slot.
 */
export function bootDevices(
  order: readonly ('cdrom' | 'disk' | 'net')[] | undefined,
  devices: SharedDeviceState,
): BootDevice[] {
  const out: BootDevice[] = [];
  for (const kind of order ?? []) {
    for (const d of devices.devices) {
      if (d.pciSlot === undefined) continue;
      if (d.kind === 'ahci') {
        const drives = (d.options.drives ?? []) as readonly { readonly type?: string }[];
        drives.forEach((drive, port) => {
          if ((kind === 'cdrom' && drive.type === 'cdrom') || (kind === 'disk' && drive.type === 'disk'))
            out.push({ kind: 'ahci', slot: d.pciSlot!, port });
        });
      } else if (kind === 'disk' && d.kind === 'virtio-blk') out.push({ kind: 'virtio-blk', slot: d.pciSlot });
      else if (kind === 'net' && d.kind === 'virtio-net') out.push({ kind: 'net', slot: d.pciSlot });
    }
  }
  return out;
}
