// Intel 82441FX PCI and Memory Controller (PMC), the host bridge of the i440FX chipset (Intel 440FX PCIset
// datasheet, order no. 290549, §3.2 PCI configuration registers): device 8086:1237 revision 02, class 06.00.00, at
// 00:00.0. Real firmware identifies the PC by it (SeaBIOS's "Running on QEMU (i440fx)", edk2 OvmfPkg/PlatformPei's
// host bridge switch), so Partita presents it when the PCI root is asked for chipset 'i440fx'.
//
// Guest-visible behaviour kept: identity, reset values of the DRAM and cache registers, PAM0-PAM6 (0x59-0x5F)
// and SMRAM (0x72) stored and read back. Their effect is deliberately NOT modelled: the BIOS area 0xC0000-0xFFFFF
// stays plain RAM whatever PAM says, and SMRAM never appears, because
//   - firmware (SeaBIOS make_bios_writable / make_bios_readonly) only uses PAM to copy itself from the high ROM
//     alias into shadow RAM and then write-protect it; Partita already loads the image's top 128 KiB into RAM at
//     0xE0000, so the copy moves identical bytes and the write protection only guards against firmware bugs;
//   - switching KVM memory slots on every PAM write would cost a slot rebuild per write from every thread for no
//     guest that depends on it;
//   - there is no SMM (the PIIX4 reports it as already set up, config byte 0x5B = 0x02), so SMRAM is never opened.
import { PciConfigSpace, QEMU_SUBSYSTEM_IDS } from '../pci/config-space.js';
import type { PciFunction } from '../pci/bus.js';

export const I440FX_VENDOR_ID = 0x8086;
export const I440FX_DEVICE_ID = 0x1237;
export const I440FX_REVISION = 0x02;

/** PAM0 (0xF0000-0xFFFFF, high nibble only) … PAM6 (0xEC000-0xEFFFF): read enable bits 0/4, write enable 1/5. */
export const I440FX_PAM0 = 0x59;
export const I440FX_PAM_COUNT = 7;
const PAM_MASK = 0x33;
/** SMRAM control: bits 2:0 C_BASE_SEG hardwired 010 (0xA0000), G_SMRAME bit 3, D_LCK bit 4, D_CLS 5, D_OPEN 6. */
export const I440FX_SMRAM = 0x72;
const SMRAM_RESET = 0x02;
const SMRAM_WRITABLE = 0x78;
const SMRAM_D_LCK = 0x10;
const SMRAM_D_OPEN = 0x40;

/** Reset values (datasheet §3.2) and writable bits of the registers kept: [offset, reset, writable mask]. */
const REGISTERS: readonly (readonly [number, number, number])[] = [
  [0x0d, 0x00, 0xf8], // MLT master latency timer
  [0x50, 0x00, 0xff], // PMCCFG
  [0x51, 0x00, 0xff],
  [0x53, 0x80, 0xff], // DBC deturbo counter
  [0x54, 0x00, 0xff], // DRT DRAM row type
  [0x55, 0x00, 0xff],
  [0x56, 0x00, 0xff],
  [0x57, 0x01, 0xff], // DRAMC DRAM control
  [0x58, 0x10, 0xff], // DRAMT DRAM timing
  ...Array.from({ length: I440FX_PAM_COUNT }, (_, i) => [I440FX_PAM0 + i, 0x00, PAM_MASK] as const),
  ...Array.from({ length: 8 }, (_, i) => [0x60 + i, 0x02, 0xff] as const), // DRB0-7 DRAM row boundaries
  [0x68, 0x00, 0xc0], // FDHC fixed DRAM hole
  [0x70, 0x20, 0xf8], // MTT multi-transaction timer
  [0x71, 0x10, 0xff], // CLT CPU latency timer
  [I440FX_SMRAM, SMRAM_RESET, SMRAM_WRITABLE],
  [0x90, 0x00, 0xff], // ERRCMD
  [0x91, 0x00, 0x00], // ERRSTS (nothing ever fails)
  [0x93, 0x00, 0x06], // TRC turbo reset control (its reset bits are the PIIX3's 0xCF9 in a PC; stored only)
];

/** The 82441FX config space: SMRAM's D_LCK, once set, stays set and keeps D_OPEN clear until reset. */
class I440fxConfig extends PciConfigSpace {
  override write(offset: number, size: number, value: number): boolean {
    const smramBefore = this.bytes[I440FX_SMRAM];
    const changed = super.write(offset, size, value);
    if (smramBefore & SMRAM_D_LCK) {
      const after = (this.bytes[I440FX_SMRAM] | SMRAM_D_LCK) & ~SMRAM_D_OPEN;
      if (after !== this.bytes[I440FX_SMRAM]) Atomics.store(this.bytes, I440FX_SMRAM, after);
    }
    return changed;
  }
}

export class I440fxHostBridge implements PciFunction {
  readonly name = 'i440fx';
  readonly config: PciConfigSpace;

  /** `shared`: an existing device's config space (another thread's view); omitted: a new one in its reset state. */
  constructor(shared?: SharedArrayBuffer) {
    const initialize = shared === undefined;
    this.config = new I440fxConfig(shared);
    const id = {
      vendorId: I440FX_VENDOR_ID,
      deviceId: I440FX_DEVICE_ID,
      revision: I440FX_REVISION,
      classCode: 0x060000,
      ...QEMU_SUBSYSTEM_IDS,
    };
    if (initialize) {
      this.config.initialize(id);
      this.config.setU16(0x04, 0x0006); // PCICMD: memory and bus master enabled
      this.config.setU16(0x06, 0x0280); // PCISTS: fast back-to-back capable, DEVSEL medium
    } else this.config.defineMasks(id);
    for (const [offset, reset, mask] of REGISTERS) {
      if (initialize) this.config.bytes[offset] = reset;
      this.config.setWritableMask(offset, 1, mask);
    }
  }

  barRead(_bar: number, _offset: number, data: Uint8Array): void {
    data.fill(0xff);
  }
  barWrite(): void {}
}
