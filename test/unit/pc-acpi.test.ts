// ACPI for the PC chipset: the AML operations the link devices need (byte-exact encodings), and the tables a
// machine with the i440FX/PIIX3/PIIX4 chipset gets — a fixed-hardware FADT and its FACS, the MADT's SCI and PCI IRQ
// overrides, the DSDT's _PRT through LNKA-LNKD — checked by iasl -d (clean, and compiling back), and the link
// methods run by acpiexec against the PCI_Config region it simulates.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  and,
  arg,
  call,
  createDWordField,
  extendedInterrupt,
  field,
  FIELD_BYTE_ACC,
  ifThen,
  integer,
  lEqual,
  lLess,
  local,
  method,
  operationRegion,
  or,
  orElse,
  ref,
  REGION_PCI_CONFIG,
  returnValue,
  store,
} from '../../src/arch/x86_64/acpi/aml.js';
import { buildAcpiTables, type AcpiTables } from '../../src/arch/x86_64/acpi/index.js';
import { IOAPIC_ADDRESS, LAPIC_ADDRESS } from '../../src/arch/x86_64/layout.js';
import { serialPortModel } from '../../src/devices/legacy/uart-16550a.js';
import type { DeviceDescription, DeviceModel } from '../../src/devices/model.js';
import { pciRootModel } from '../../src/devices/pci/root.js';
import { piix3IsaModel } from '../../src/devices/pc/piix3.js';
import { piix4PmModel } from '../../src/devices/pc/piix4-pm.js';
import { createDevices, describeDevices } from '../../src/vmm/device-set.js';
import { createContext } from '../support/pc-chipset.js';

const ascii = (s: string): number[] => [...s].map((c) => c.charCodeAt(0));

// ---- AML encodings (ACPI 6.5 §20) ----

test('AML: Method, Return, If/Else, LLess/LEqual, And/Or with and without target, Arg/Local', () => {
  assert.deepEqual(
    [...method('_STA', 0, false, returnValue(integer(0x0b)))],
    [0x14, 0x09, ...ascii('_STA'), 0x00, 0xa4, 0x0a, 0x0b],
  );
  assert.deepEqual([...method('IQCR', 1, true)], [0x14, 0x06, ...ascii('IQCR'), 0x09], 'flags: 1 arg | Serialized');
  assert.throws(() => method('X', 8, false), RangeError);
  assert.deepEqual(
    [...ifThen(and(arg(0), integer(0x80)), returnValue(integer(9)))],
    [0xa0, 0x09, 0x7b, 0x68, 0x0a, 0x80, 0x00, 0xa4, 0x0a, 0x09],
  );
  assert.deepEqual([...orElse(returnValue(integer(0)))], [0xa1, 0x03, 0xa4, 0x00]);
  assert.deepEqual([...lLess(arg(0), integer(0x80))], [0x95, 0x68, 0x0a, 0x80]);
  assert.deepEqual([...lEqual(local(7), integer(1))], [0x93, 0x67, 0x01]);
  assert.deepEqual(
    [...or(ref('PRQA'), integer(0x80), ref('PRQA'))],
    [0x7d, ...ascii('PRQA'), 0x0a, 0x80, ...ascii('PRQA')],
  );
  assert.deepEqual(
    [...store(ref('PRRI'), ref('\\_SB_.PCI0.ISA_.PRQA'))],
    [0x70, ...ascii('PRRI'), 0x5c, 0x2f, 4, ...ascii('_SB_PCI0ISA_PRQA')],
  );
  assert.deepEqual([...arg(6)], [0x6e]);
  assert.deepEqual([...local(0)], [0x60]);
  assert.throws(() => arg(7), RangeError);
  assert.throws(() => local(8), RangeError);
  assert.deepEqual([...call('IQST', arg(0))], [...ascii('IQST'), 0x68]);
  assert.deepEqual([...createDWordField(arg(0), 5, 'PRRI')], [0x8a, 0x68, 0x0a, 0x05, ...ascii('PRRI')]);
});

test('AML: OperationRegion, Field (units, reserved gaps, long units), Interrupt descriptor', () => {
  assert.deepEqual(
    [...operationRegion('PIRQ', REGION_PCI_CONFIG, 0x60, 4)],
    [0x5b, 0x80, ...ascii('PIRQ'), 0x02, 0x0a, 0x60, 0x0a, 0x04],
  );
  assert.deepEqual(
    [...field('PIRQ', FIELD_BYTE_ACC, [{ name: 'PRQA', bits: 8 }, { bits: 8 }, { name: 'PRQC', bits: 8 }])],
    [0x5b, 0x81, 0x12, ...ascii('PIRQ'), 0x01, ...ascii('PRQA'), 0x08, 0x00, 0x08, ...ascii('PRQC'), 0x08],
  );
  // a unit of 256 bits: PkgLength-style encoding of the bit count itself (lead 0x40 | low nibble, then bits >> 4)
  assert.deepEqual([...field('R', 0, [{ name: 'BIG', bits: 256 }])].slice(-6), [...ascii('BIG_'), 0x40, 0x10]);
  assert.throws(() => field('R', 0, [{ name: 'Z', bits: 0 }]), RangeError);
  assert.deepEqual(
    [...extendedInterrupt({ level: true, activeHigh: true, shared: true }, 5, 10, 11)],
    [0x89, 0x0e, 0x00, 0x09, 0x03, 5, 0, 0, 0, 10, 0, 0, 0, 11, 0, 0, 0],
  );
  assert.deepEqual(
    [...extendedInterrupt({ level: false, activeHigh: false, shared: false }, 9)],
    [0x89, 0x06, 0x00, 0x07, 0x01, 9, 0, 0, 0],
    'edge (bit 1), active-low (bit 2), exclusive, consumer',
  );
  assert.throws(() => extendedInterrupt({ level: true, activeHigh: true, shared: true }), RangeError);
});

// ---- the tables of a PC-chipset machine ----

const facts = { pciInterrupts: [] };

function pcDescriptions(pmBase?: number): DeviceDescription[] {
  const make = <S>(model: DeviceModel<S>, options: Record<string, unknown> = {}): DeviceDescription =>
    model.describe!(model.create({ kind: model.kind, ...options }, createContext), facts);
  return [
    make(pciRootModel, { chipset: 'i440fx' }),
    serialPortModel.describe!(new SharedArrayBuffer(0), facts),
    make(piix3IsaModel),
    make(piix4PmModel as DeviceModel, pmBase === undefined ? {} : { pmBase }),
  ];
}

function pcTables(pmBase?: number): AcpiTables {
  const ds = pcDescriptions(pmBase);
  const fadts = ds.flatMap((d) => (d.fadt ? [d.fadt] : []));
  assert.equal(fadts.length, 1);
  return buildAcpiTables({
    apicIds: [0, 1],
    ioapicId: 2,
    ioapicAddress: IOAPIC_ADDRESS,
    lapicAddress: LAPIC_ADDRESS,
    legacy: { rtc: true, i8042: true },
    devices: ds.flatMap((d) => d.acpi ?? []),
    tables: ds.flatMap((d) => d.acpiTables ?? []),
    fixedHardware: fadts[0],
    interruptOverrides: ds.flatMap((d) => d.interruptOverrides ?? []),
  });
}

const u8 = (b: Uint8Array, at: number): number => b[at];
const u16 = (b: Uint8Array, at: number): number => b[at] | (b[at + 1] << 8);
const u32 = (b: Uint8Array, at: number): number => (u16(b, at) | (u16(b, at + 2) << 16)) >>> 0;
const table = (t: AcpiTables, sig: string) => {
  const found = t.tables.find((x) => x.signature === sig);
  assert.ok(found, `no ${sig}`);
  return found;
};

test('FADT (fixed hardware): PM1a/PM timer/GPE0 at the PM base, SCI 9, SMI_CMD 0xB2 F1/F0, reset 0xCF9=6, FACS', () => {
  const t = pcTables();
  const fadt = table(t, 'FACP').bytes;
  const facs = table(t, 'FACS');
  assert.equal(fadt.length, 276);
  assert.equal(u32(fadt, 36), facs.address, 'FIRMWARE_CTRL → FACS');
  assert.equal(facs.address % 64, 0, 'FACS 64-byte aligned');
  assert.deepEqual([...facs.bytes.subarray(0, 8)], [...ascii('FACS'), 64, 0, 0, 0]);
  assert.equal(facs.bytes[32], 2, 'FACS version');
  assert.equal(u32(fadt, 40), table(t, 'DSDT').address);
  assert.equal(u16(fadt, 46), 9, 'SCI_INT');
  assert.equal(u32(fadt, 48), 0xb2, 'SMI_CMD');
  assert.deepEqual([u8(fadt, 52), u8(fadt, 53)], [0xf1, 0xf0], 'ACPI_ENABLE, ACPI_DISABLE');
  assert.equal(u32(fadt, 56), 0x600, 'PM1a_EVT_BLK');
  assert.equal(u32(fadt, 64), 0x604, 'PM1a_CNT_BLK');
  assert.equal(u32(fadt, 76), 0x608, 'PM_TMR_BLK');
  assert.equal(u32(fadt, 80), 0x60c, 'GPE0_BLK');
  assert.deepEqual([...fadt.subarray(88, 93)], [4, 2, 0, 4, 4], 'PM1_EVT_LEN, PM1_CNT_LEN, PM2, PM_TMR_LEN, GPE0_LEN');
  const flags = u32(fadt, 112);
  assert.equal(flags & (1 << 20), 0, 'not HW_REDUCED_ACPI');
  assert.equal(flags & (1 << 10), 1 << 10, 'RESET_REG_SUP');
  assert.equal(flags & (1 << 8), 0, 'TMR_VAL_EXT = 0: a 24-bit timer');
  assert.equal(flags & (1 << 4), 0, 'a fixed-feature power button (PWRBTN_STS)');
  assert.deepEqual(
    [...fadt.subarray(116, 129)],
    [1, 8, 0, 1, 0xf9, 0x0c, 0, 0, 0, 0, 0, 0, 6],
    'RESET_REG: I/O byte 0xCF9, value 6',
  );
  assert.equal(u16(fadt, 109) & 0b11, 0b11, 'IAPC_BOOT_ARCH: legacy devices and an 8042');
  assert.deepEqual([...fadt.subarray(148, 160)], [1, 32, 0, 2, 0x00, 0x06, 0, 0, 0, 0, 0, 0], 'X_PM1a_EVT_BLK');
  assert.deepEqual([...fadt.subarray(208, 220)], [1, 32, 0, 3, 0x08, 0x06, 0, 0, 0, 0, 0, 0], 'X_PM_TMR_BLK');
  assert.deepEqual([...fadt.subarray(244, 268)], new Array(24).fill(0), 'no HW-reduced sleep registers');
  const ovmf = table(pcTables(0xb000), 'FACP').bytes;
  assert.equal(u32(ovmf, 56), 0xb000, 'pmBase 0xB000 (OVMF) moves every block');
  assert.equal(u32(ovmf, 76), 0xb008);
});

test('MADT: IRQ0 → GSI2, and IRQs 5, 9 (SCI), 10, 11 level-triggered active-high', () => {
  const madt = table(pcTables(), 'APIC').bytes;
  const overrides: number[][] = [];
  for (let at = 44; at < madt.length; at += madt[at + 1])
    if (madt[at] === 2) overrides.push([madt[at + 3], u32(madt, at + 4), u16(madt, at + 8)]);
  assert.deepEqual(overrides, [
    [0, 2, 0],
    [5, 5, 0x0d],
    [9, 9, 0x0d],
    [10, 10, 0x0d],
    [11, 11, 0x0d],
  ]);
});

const haveIasl = spawnSync('iasl', ['-v']).error === undefined;
const haveAcpiexec = spawnSync('acpiexec', ['-v']).error === undefined;

function run(cmd: string, args: string[], cwd: string): string {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', timeout: 120_000 });
  const out = `${r.stdout}${r.stderr}`;
  assert.equal(r.status, 0, `${cmd} ${args.join(' ')} exited ${r.status}:\n${out}`);
  return out;
}

const BAD = /warning|error|abort|invalid|\*\*\*\*/i;

test(
  'DSDT, FADT, MADT, FACS: iasl -d clean; the DSDT compiles back; _PRT, links, ISA_ region, \\_S5_ = 0',
  { skip: !haveIasl && 'iasl not installed: sudo apt-get install acpica-tools' },
  () => {
    const dir = mkdtempSync(join(tmpdir(), 'partita-pc-acpi-'));
    try {
      const t = pcTables();
      for (const sig of ['DSDT', 'FACP', 'APIC', 'FACS']) {
        writeFileSync(join(dir, `${sig}.dat`), table(t, sig).bytes);
        const out = run('iasl', ['-d', `${sig}.dat`], dir);
        assert.deepEqual(
          out.split('\n').filter((l) => BAD.test(l)),
          [],
          `iasl -d ${sig}`,
        );
        const dsl = readFileSync(join(dir, `${sig}.dsl`), 'utf8');
        assert.deepEqual(
          dsl.split('\n').filter((l) => BAD.test(l)),
          [],
          `${sig}.dsl`,
        );
      }
      const out = run('iasl', ['-p', 'dsdt-rt', 'DSDT.dsl'], dir);
      assert.match(out, /Compilation successful\. 0 Errors, 0 Warnings/);
      const d = readFileSync(join(dir, 'DSDT.dsl'), 'utf8');
      assert.match(d, /Device \(ISA\)\s*\{\s*Name \(_ADR, 0x00010000\)/);
      assert.match(d, /OperationRegion \(PIRQ, PCI_Config, 0x60, 0x04\)/);
      assert.match(
        d,
        /Field \(PIRQ, ByteAcc, NoLock, Preserve\)\s*\{\s*PRQA,\s*8,\s*PRQB,\s*8,\s*PRQC,\s*8,\s*PRQD,\s*8\s*\}/,
      );
      assert.match(d, /Name \(_PRT, Package \(0x7C\)/, '31 slots × 4 pins');
      const prt = [...d.matchAll(/\{\s*0x00(\w{2})FFFF,\s*(Zero|One|0x02|0x03),\s*(LNK[A-D]),\s*Zero\s*\}/g)];
      assert.equal(prt.length, 124);
      const pinOf = (p: string): number => ({ Zero: 0, One: 1, '0x02': 2, '0x03': 3 })[p] ?? -1;
      for (const [, slot, pin, link] of prt) {
        const pirq = (parseInt(slot, 16) - 1 + pinOf(pin)) & 3;
        assert.equal(link, `LNK${'ABCD'[pirq]}`, `slot ${slot} pin ${pin}`);
      }
      for (const link of ['LNKA', 'LNKB', 'LNKC', 'LNKD'])
        assert.match(d, new RegExp(`Device \\(${link}\\)\\s*\\{\\s*Name \\(_HID, EisaId \\("PNP0C0F"\\)`));
      assert.match(
        d,
        /Interrupt \(ResourceConsumer, Level, ActiveHigh, Shared, ,, \)\s*\{\s*0x00000005,\s*0x0000000A,\s*0x0000000B,\s*\}/,
      );
      assert.match(
        d,
        /Name \(\\_S5, Package \(0x04\)[^{]*\{\s*Zero,\s*Zero,\s*Zero,\s*Zero\s*\}/,
        'soft-off is SLP_TYP 0 on the PIIX4',
      );
      assert.match(d, /Device \(PMRS\)[\s\S]*?0x0600,\s*\/\/ Range Minimum[\s\S]*?0x40,\s*\/\/ Length[\s\S]*?0x00B2/);
      assert.doesNotMatch(
        d.slice(d.indexOf('Device (PCI0)'), d.indexOf('Device (MRES)')),
        /_PRT/,
        "PCI0's own _PRT is left out",
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
);

test(
  'link devices run by acpiexec: _SRS programs the route register, _CRS/_STA read it, _DIS sets IRQEN#',
  { skip: !haveAcpiexec && 'acpiexec not installed: sudo apt-get install acpica-tools' },
  () => {
    const dir = mkdtempSync(join(tmpdir(), 'partita-pc-acpiexec-'));
    try {
      writeFileSync(join(dir, 'dsdt.dat'), table(pcTables(), 'DSDT').bytes);
      const commands = [
        'evaluate \\_SB.LNKB._SRS (89 06 00 09 01 0A 00 00 00 79 00)', // the OS picks IRQ 10 from _PRS
        'evaluate \\_SB.LNKB._CRS',
        'evaluate \\_SB.LNKB._STA',
        'evaluate \\_SB.PCI0.ISA.PRQB',
        'evaluate \\_SB.LNKB._DIS',
        'evaluate \\_SB.LNKB._STA',
        'evaluate \\_SB.LNKB._CRS',
        'evaluate \\_SB.PCI0.ISA.PRQB',
      ];
      const out = run('acpiexec', ['-b', commands.join('; '), 'dsdt.dat'], dir);
      const results = [...out.matchAll(/\[(Integer|Buffer)\][^=]*=\s*(?:0000: )?([0-9A-F ]+?)\s*(?:\/\/|\n)/g)].map(
        (m) => m[2].trim(),
      );
      assert.deepEqual(
        results,
        [
          '89 06 00 09 01 0A 00 00 00 79 00', // _CRS: IRQ 10, level, high, shared
          '000000000000000B', // _STA: present, enabled, functioning
          '000000000000000A', // PRQB (route register 0x61) = 10
          '0000000000000009', // after _DIS: present, functioning, disabled
          '89 06 00 09 01 00 00 00 00 79 00', // _CRS of a disabled link: no IRQ
          '000000000000008A', // IRQEN# set, IRQ kept
        ],
        out,
      );
      assert.doesNotMatch(out, /ACPI Error|AE_[A-Z_]+ while|Warning/, out);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
);

test('describeDevices gathers the fixed hardware and overrides; none of it without the PC chipset', () => {
  const pc = createDevices([], {
    vmFd: -1,
    placeBars: false,
    platform: [{ kind: 'pci-root', chipset: 'i440fx' }, { kind: 'piix3-isa' }, { kind: 'piix4-pm' }],
  });
  const d = describeDevices(pc);
  assert.equal(d.fadt?.pm1aEvent, 0x600);
  assert.deepEqual(
    d.interruptOverrides.map((o) => o.irq),
    [5, 10, 11],
  );
  const plain = describeDevices(createDevices([], { vmFd: -1, placeBars: true }));
  assert.equal(plain.fadt, undefined);
  assert.deepEqual(plain.interruptOverrides, []);
  const twice = createDevices([], {
    vmFd: -1,
    placeBars: false,
    platform: [{ kind: 'piix4-pm' }, { kind: 'piix4-pm' }],
  });
  assert.throws(() => describeDevices(twice), /2 devices provide the ACPI fixed hardware/);
});
