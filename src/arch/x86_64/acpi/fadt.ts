// ACPI 6.5 §5.2.9 Fixed ACPI Description Table (FADT), in one of two forms:
//   - hardware-reduced (§4.1, FADT flag HW_REDUCED_ACPI): no PM1/GPE register blocks, no PM timer, no SCI, no FACS
//     (direct kernel boot on the generic chipset);
//   - fixed hardware (§4.8), when a device provides the ACPI register blocks (the PIIX4 power management
//     function): PM1a event/control, the PM timer, GPE0, the SCI, the SMI command port with ACPI_ENABLE/DISABLE,
//     the reset register, and a FACS.
import { buildSdt, ByteWriter, GAS_SYSTEM_IO, writeGas } from './sdt.js';

/** FADT Major Version 6, Minor Version 5: ACPI 6.5; the table is 276 bytes long. */
export const FADT_REVISION = 6;
export const FADT_MINOR_REVISION = 5;
export const FADT_LENGTH = 276;

/** §5.2.9 Table 5.10 Fixed ACPI Description Table Fixed Feature Flags (the ones Partita uses). */
export const FADT_F_WBINVD = 1 << 0;
export const FADT_F_PROC_C1 = 1 << 2;
export const FADT_F_PWR_BUTTON = 1 << 4; // 1: no fixed-feature power button
export const FADT_F_SLP_BUTTON = 1 << 5; // 1: no fixed-feature sleep button
export const FADT_F_RTC_S4 = 1 << 7;
export const FADT_F_RESET_REG_SUP = 1 << 10;
export const FADT_F_HW_REDUCED_ACPI = 1 << 20;

/** §5.2.9.3 IA-PC Boot Architecture Flags. */
export const IAPC_LEGACY_DEVICES = 1 << 0;
export const IAPC_8042 = 1 << 1;
export const IAPC_VGA_NOT_PRESENT = 1 << 2;
export const IAPC_MSI_NOT_SUPPORTED = 1 << 3;
export const IAPC_PCIE_ASPM_CONTROLS = 1 << 4;
export const IAPC_CMOS_RTC_NOT_PRESENT = 1 << 5;

/** Which legacy PC devices the machine has; each defaults to absent. */
export interface LegacyDevices {
  /** An 8042 keyboard controller at ports 0x60/0x64. */
  readonly i8042?: boolean;
  /** A CMOS RTC at ports 0x70/0x71. */
  readonly rtc?: boolean;
  /** A VGA-compatible display. */
  readonly vga?: boolean;
}

/**
 * The fixed-hardware register blocks a chipset provides (all I/O ports), and the values that go with them. A
 * device returns this from describe() (DeviceDescription.fadt); the FADT, the MADT (SCI override) and the DSDT
 * (\_S5_) follow it.
 */
export interface FixedHardware {
  /** PM1a_EVT_BLK: PM1 status (2 bytes) then PM1 enable (2 bytes). */
  readonly pm1aEvent: number;
  /** PM1a_CNT_BLK: PM1 control, 2 bytes. */
  readonly pm1aControl: number;
  /** PM_TMR_BLK: the 24-bit 3.579545 MHz PM timer, 4 bytes. */
  readonly pmTimer: number;
  /** GPE0_BLK: GPE0 status then GPE0 enable, gpe0Length bytes in all (even). */
  readonly gpe0: number;
  readonly gpe0Length: number;
  /** The ISA IRQ of the SCI (level, active high: the MADT gets an override for it). */
  readonly sciInterrupt: number;
  /** SMI_CMD port and the values that hand ACPI to and from the OS there. */
  readonly smiCommand: number;
  readonly acpiEnable: number;
  readonly acpiDisable: number;
  /** RESET_REG (an I/O port) and RESET_VALUE. */
  readonly resetRegister: { readonly port: number; readonly value: number };
  /** SLP_TYP of soft-off in PM1 control (the DSDT's \_S5_ package). */
  readonly sleepTypeS5: number;
}

export interface FadtOptions {
  readonly dsdtAddress: number;
  readonly legacy?: LegacyDevices;
  /**
   * An I/O port whose write of `value` resets the machine (e.g. 0xCF9 with 0x06, or 0x64 with 0xFE): sets
   * RESET_REG and RESET_REG_SUP. Omitted: no reset register (Linux then falls back to the keyboard controller,
   * a triple fault and so on).
   */
  readonly reset?: { readonly port: number; readonly value: number };
  /**
   * An 8-bit I/O port implementing the HW-reduced sleep control and status registers:
   * SLEEP_CONTROL_REG and SLEEP_STATUS_REG. Omitted: none (OSPM then has no ACPI S5 / power-off).
   */
  readonly sleepPort?: number;
  /** Fixed-hardware ACPI: these register blocks instead of HW_REDUCED_ACPI (then facsAddress is required). */
  readonly fixedHardware?: FixedHardware;
  /** Where the FACS is (64-byte aligned); fixed hardware only. */
  readonly facsAddress?: number;
}

export function iapcBootArch(legacy: LegacyDevices = {}): number {
  return (
    IAPC_LEGACY_DEVICES | // COM1 is an ISA device the OS must drive
    (legacy.i8042 ? IAPC_8042 : 0) |
    (legacy.vga ? 0 : IAPC_VGA_NOT_PRESENT) |
    (legacy.rtc ? 0 : IAPC_CMOS_RTC_NOT_PRESENT)
  );
}

export function buildFadt(opts: FadtOptions): Uint8Array {
  if (opts.fixedHardware) return buildFixedHardwareFadt(opts, opts.fixedHardware);
  const ioByte = (port: number) => ({ spaceId: GAS_SYSTEM_IO, bitWidth: 8, accessSize: 1, address: port });
  let flags = FADT_F_WBINVD | FADT_F_PWR_BUTTON | FADT_F_SLP_BUTTON | FADT_F_HW_REDUCED_ACPI;
  if (opts.reset) flags |= FADT_F_RESET_REG_SUP;

  const w = new ByteWriter();
  w.u32(0); //               36 FIRMWARE_CTRL: no FACS (allowed with HW_REDUCED_ACPI)
  w.u32(opts.dsdtAddress); // 40 DSDT (the same as X_DSDT, for OSes that read only this one)
  w.u8(0); //                44 reserved (ACPI 1.0 INT_MODEL)
  w.u8(0); //                45 Preferred_PM_Profile: unspecified
  w.u16(0); //               46 SCI_INT: none (HW-reduced: offsets 46-108 are ignored)
  w.u32(0); //               48 SMI_CMD: no SMM, ACPI is always enabled
  w.u8(0).u8(0).u8(0).u8(0); // 52 ACPI_ENABLE, ACPI_DISABLE, S4BIOS_REQ, PSTATE_CNT
  w.zeros(8 * 4); //         56 PM1a/b_EVT_BLK, PM1a/b_CNT_BLK, PM2_CNT_BLK, PM_TMR_BLK, GPE0_BLK, GPE1_BLK
  w.zeros(8); //             88 PM1_EVT_LEN … GPE1_BASE, CST_CNT
  w.u16(0).u16(0); //        96 P_LVL2_LAT, P_LVL3_LAT
  w.u16(0).u16(0); //       100 FLUSH_SIZE, FLUSH_STRIDE
  w.u8(0).u8(0); //         104 DUTY_OFFSET, DUTY_WIDTH
  w.u8(0).u8(0).u8(0); //   106 DAY_ALRM, MON_ALRM, CENTURY
  w.u16(iapcBootArch(opts.legacy)); // 109 IAPC_BOOT_ARCH
  w.u8(0); //               111 reserved
  w.u32(flags); //          112 Flags
  writeGas(w, opts.reset ? ioByte(opts.reset.port) : undefined); // 116 RESET_REG
  w.u8(opts.reset?.value ?? 0); // 128 RESET_VALUE
  w.u16(0); //              129 ARM_BOOT_ARCH
  w.u8(FADT_MINOR_REVISION); // 131 FADT Minor Version
  w.u64(0); //              132 X_FIRMWARE_CTRL
  w.u64(opts.dsdtAddress); // 140 X_DSDT
  for (let i = 0; i < 8; i++) writeGas(w, undefined); // 148 X_PM1a_EVT_BLK … X_GPE1_BLK
  const sleep = opts.sleepPort === undefined ? undefined : ioByte(opts.sleepPort);
  writeGas(w, sleep); //    244 SLEEP_CONTROL_REG
  writeGas(w, sleep); //    256 SLEEP_STATUS_REG
  w.u64(0); //              268 Hypervisor Vendor Identity
  const table = buildSdt('FACP', FADT_REVISION, w.finish());
  if (table.length !== FADT_LENGTH) throw new Error(`FADT is ${table.length} bytes, not ${FADT_LENGTH}`);
  return table;
}

/** GAS of an I/O register block: `bytes` long, accessed `access` bytes at a time (1, 2, 4). */
function ioBlock(port: number, bytes: number, access: 1 | 2 | 4) {
  return { spaceId: GAS_SYSTEM_IO, bitWidth: 8 * bytes, accessSize: access === 4 ? 3 : access, address: port };
}

/** The FADT of a platform with the fixed ACPI hardware (ACPI 6.5 §4.8): PM1a, PM timer, GPE0, SCI, SMI_CMD. */
function buildFixedHardwareFadt(opts: FadtOptions, hw: FixedHardware): Uint8Array {
  const facs = opts.facsAddress;
  if (facs === undefined || facs % 64 !== 0) throw new RangeError(`a fixed-hardware FADT needs a FACS (got ${facs})`);
  if (hw.gpe0Length % 2 !== 0 || hw.gpe0Length < 2 || hw.gpe0Length > 0xfe)
    throw new RangeError(`GPE0 block length ${hw.gpe0Length} is not an even byte count`);
  // No fixed power button flag: the PM1 PWRBTN_STS/EN bits are the power button. Sleep button: none. C1 works
  // (HLT); C2/C3 latencies above 100/1000 µs say they do not. RTC_S4: the RTC can wake from S4 as on a PC.
  const flags = FADT_F_WBINVD | FADT_F_PROC_C1 | FADT_F_SLP_BUTTON | FADT_F_RTC_S4 | FADT_F_RESET_REG_SUP;
  const reset = hw.resetRegister;
  const w = new ByteWriter();
  w.u32(facs); //            36 FIRMWARE_CTRL
  w.u32(opts.dsdtAddress); // 40 DSDT
  w.u8(0); //                44 reserved
  w.u8(0); //                45 Preferred_PM_Profile: unspecified
  w.u16(hw.sciInterrupt); // 46 SCI_INT
  w.u32(hw.smiCommand); //   48 SMI_CMD
  w.u8(hw.acpiEnable).u8(hw.acpiDisable); // 52 ACPI_ENABLE, ACPI_DISABLE
  w.u8(0).u8(0); //          54 S4BIOS_REQ, PSTATE_CNT
  w.u32(hw.pm1aEvent).u32(0); // 56 PM1a_EVT_BLK, PM1b_EVT_BLK
  w.u32(hw.pm1aControl).u32(0); // 64 PM1a_CNT_BLK, PM1b_CNT_BLK
  w.u32(0); //               72 PM2_CNT_BLK
  w.u32(hw.pmTimer); //      76 PM_TMR_BLK
  w.u32(hw.gpe0).u32(0); //  80 GPE0_BLK, GPE1_BLK
  w.u8(4).u8(2).u8(0).u8(4); // 88 PM1_EVT_LEN, PM1_CNT_LEN, PM2_CNT_LEN, PM_TMR_LEN
  w.u8(hw.gpe0Length).u8(0).u8(0).u8(0); // 92 GPE0_BLK_LEN, GPE1_BLK_LEN, GPE1_BASE, CST_CNT
  w.u16(0x0fff).u16(0x0fff); // 96 P_LVL2_LAT, P_LVL3_LAT: not supported
  w.u16(0).u16(0); //       100 FLUSH_SIZE, FLUSH_STRIDE
  w.u8(0).u8(0); //         104 DUTY_OFFSET, DUTY_WIDTH
  w.u8(0).u8(0).u8(0); //   106 DAY_ALRM, MON_ALRM, CENTURY
  w.u16(iapcBootArch(opts.legacy)); // 109 IAPC_BOOT_ARCH
  w.u8(0); //               111 reserved
  w.u32(flags); //          112 Flags
  writeGas(w, ioBlock(reset.port, 1, 1)); // 116 RESET_REG
  w.u8(reset.value); //     128 RESET_VALUE
  w.u16(0); //              129 ARM_BOOT_ARCH
  w.u8(FADT_MINOR_REVISION); // 131 FADT Minor Version
  w.u64(0); //              132 X_FIRMWARE_CTRL (FIRMWARE_CTRL holds it: below 4 GiB)
  w.u64(opts.dsdtAddress); // 140 X_DSDT
  writeGas(w, ioBlock(hw.pm1aEvent, 4, 2)); // 148 X_PM1a_EVT_BLK
  writeGas(w, undefined); //                   160 X_PM1b_EVT_BLK
  writeGas(w, ioBlock(hw.pm1aControl, 2, 2)); // 172 X_PM1a_CNT_BLK
  writeGas(w, undefined); //                   184 X_PM1b_CNT_BLK
  writeGas(w, undefined); //                   196 X_PM2_CNT_BLK
  writeGas(w, ioBlock(hw.pmTimer, 4, 4)); //   208 X_PM_TMR_BLK
  writeGas(w, ioBlock(hw.gpe0, hw.gpe0Length, 1)); // 220 X_GPE0_BLK
  writeGas(w, undefined); //                   232 X_GPE1_BLK
  writeGas(w, undefined); //                   244 SLEEP_CONTROL_REG (HW-reduced only)
  writeGas(w, undefined); //                   256 SLEEP_STATUS_REG
  w.u64(0); //              268 Hypervisor Vendor Identity
  const table = buildSdt('FACP', FADT_REVISION, w.finish());
  if (table.length !== FADT_LENGTH) throw new Error(`FADT is ${table.length} bytes, not ${FADT_LENGTH}`);
  return table;
}
