// Reading and writing a vCPU's register file (kvm_regs, kvm_sregs) as plain objects, the 32-bit flat
// protected-mode state that PVH and multiboot entry require, and a register dump for error reports.
import { kvm_regs, kvm_segment, kvm_sregs, type RegName, type SegmentName } from '../../kvm/abi.js';
import { BOOT_GDT_ADDRESS } from './layout.js';

export type Regs = Record<RegName, bigint>;

export interface Segment {
  base: bigint;
  limit: number;
  selector: number;
  type: number;
  present: number;
  dpl: number;
  db: number;
  s: number;
  l: number;
  g: number;
  avl: number;
  unusable: number;
}

export interface Sregs {
  cs: Segment;
  ds: Segment;
  es: Segment;
  fs: Segment;
  gs: Segment;
  ss: Segment;
  tr: Segment;
  ldt: Segment;
  gdt: { base: bigint; limit: number };
  idt: { base: bigint; limit: number };
  cr0: bigint;
  cr2: bigint;
  cr3: bigint;
  cr4: bigint;
  cr8: bigint;
  efer: bigint;
  apic_base: bigint;
  interruptBitmap: Uint8Array;
}

export function decodeRegs(buf: DataView): Regs {
  const r = {} as Regs;
  for (const [name, f] of Object.entries(kvm_regs.fields) as [RegName, { offset: number }][]) {
    r[name] = buf.getBigUint64(f.offset, true);
  }
  return r;
}

export function encodeRegs(regs: Regs, buf: DataView = new DataView(new ArrayBuffer(kvm_regs.size))): DataView {
  for (const [name, f] of Object.entries(kvm_regs.fields) as [RegName, { offset: number }][]) {
    buf.setBigUint64(f.offset, BigInt.asUintN(64, regs[name]), true);
  }
  return buf;
}

const segFields = kvm_segment.fields;
function decodeSegment(buf: DataView, at: number): Segment {
  return {
    base: buf.getBigUint64(at + segFields.base.offset, true),
    limit: buf.getUint32(at + segFields.limit.offset, true),
    selector: buf.getUint16(at + segFields.selector.offset, true),
    type: buf.getUint8(at + segFields.type.offset),
    present: buf.getUint8(at + segFields.present.offset),
    dpl: buf.getUint8(at + segFields.dpl.offset),
    db: buf.getUint8(at + segFields.db.offset),
    s: buf.getUint8(at + segFields.s.offset),
    l: buf.getUint8(at + segFields.l.offset),
    g: buf.getUint8(at + segFields.g.offset),
    avl: buf.getUint8(at + segFields.avl.offset),
    unusable: buf.getUint8(at + segFields.unusable.offset),
  };
}
function encodeSegment(buf: DataView, at: number, s: Segment): void {
  buf.setBigUint64(at + segFields.base.offset, s.base, true);
  buf.setUint32(at + segFields.limit.offset, s.limit >>> 0, true);
  buf.setUint16(at + segFields.selector.offset, s.selector, true);
  buf.setUint8(at + segFields.type.offset, s.type);
  buf.setUint8(at + segFields.present.offset, s.present);
  buf.setUint8(at + segFields.dpl.offset, s.dpl);
  buf.setUint8(at + segFields.db.offset, s.db);
  buf.setUint8(at + segFields.s.offset, s.s);
  buf.setUint8(at + segFields.l.offset, s.l);
  buf.setUint8(at + segFields.g.offset, s.g);
  buf.setUint8(at + segFields.avl.offset, s.avl);
  buf.setUint8(at + segFields.unusable.offset, s.unusable);
}

const SEGMENTS: SegmentName[] = ['cs', 'ds', 'es', 'fs', 'gs', 'ss', 'tr', 'ldt'];

export function decodeSregs(buf: DataView): Sregs {
  const f = kvm_sregs.fields;
  const seg = Object.fromEntries(SEGMENTS.map((n) => [n, decodeSegment(buf, f[n].offset)])) as Record<
    SegmentName,
    Segment
  >;
  return {
    ...seg,
    gdt: { base: buf.getBigUint64(f.gdt.offset, true), limit: buf.getUint16(f.gdt.offset + 8, true) },
    idt: { base: buf.getBigUint64(f.idt.offset, true), limit: buf.getUint16(f.idt.offset + 8, true) },
    cr0: buf.getBigUint64(f.cr0.offset, true),
    cr2: buf.getBigUint64(f.cr2.offset, true),
    cr3: buf.getBigUint64(f.cr3.offset, true),
    cr4: buf.getBigUint64(f.cr4.offset, true),
    cr8: buf.getBigUint64(f.cr8.offset, true),
    efer: buf.getBigUint64(f.efer.offset, true),
    apic_base: buf.getBigUint64(f.apic_base.offset, true),
    interruptBitmap: new Uint8Array(
      buf.buffer.slice(buf.byteOffset + f.interrupt_bitmap.offset, buf.byteOffset + f.interrupt_bitmap.offset + 32),
    ),
  };
}

export function encodeSregs(s: Sregs, buf: DataView = new DataView(new ArrayBuffer(kvm_sregs.size))): DataView {
  const f = kvm_sregs.fields;
  for (const n of SEGMENTS) encodeSegment(buf, f[n].offset, s[n]);
  buf.setBigUint64(f.gdt.offset, s.gdt.base, true);
  buf.setUint16(f.gdt.offset + 8, s.gdt.limit, true);
  buf.setBigUint64(f.idt.offset, s.idt.base, true);
  buf.setUint16(f.idt.offset + 8, s.idt.limit, true);
  for (const n of ['cr0', 'cr2', 'cr3', 'cr4', 'cr8', 'efer', 'apic_base'] as const)
    buf.setBigUint64(f[n].offset, s[n], true);
  new Uint8Array(buf.buffer, buf.byteOffset + f.interrupt_bitmap.offset, 32).set(s.interruptBitmap);
  return buf;
}

/** GDT entries Partita writes at BOOT_GDT_ADDRESS: null, null, code32 (0x10), data32 (0x18), TSS (0x20). */
export const BOOT_CS = 0x10;
export const BOOT_DS = 0x18;
export const BOOT_TSS = 0x20;

/** The boot GDT, as 8-byte descriptors (Intel SDM vol. 3A, 3.4.5 "Segment Descriptors"). */
export function bootGdt(): BigUint64Array {
  return new BigUint64Array([
    0n,
    0n,
    0x00cf9b000000ffffn, // code: base 0, limit 4G, 32-bit, execute/read, accessed
    0x00cf93000000ffffn, // data: base 0, limit 4G, read/write, accessed
    0x00008b0000000067n, // TSS: base 0, limit 0x67, busy 32-bit TSS
  ]);
}

function flat(selector: number, type: number): Segment {
  return {
    base: 0n,
    limit: 0xffffffff,
    selector,
    type,
    present: 1,
    dpl: 0,
    db: 1,
    s: 1,
    l: 0,
    g: 1,
    avl: 0,
    unusable: 0,
  };
}

/** Segment registers for a kernel entry: code and flat data, a busy TSS, an unused LDT; all bases 0. */
function entrySegments(code: Segment, dataSelector: number, tssSelector: number): Pick<Sregs, SegmentName> {
  const data = flat(dataSelector, 0x3);
  const system = { base: 0n, present: 1, dpl: 0, db: 0, s: 0, l: 0, g: 0, avl: 0, unusable: 0 };
  return {
    cs: code,
    ds: data,
    es: { ...data },
    fs: { ...data },
    gs: { ...data },
    ss: { ...data },
    tr: { ...system, limit: 0x67, selector: tssSelector, type: 0xb },
    ldt: { ...system, limit: 0xffff, selector: 0, type: 0x2 },
  };
}

/**
 * 32-bit protected mode, paging off, flat 4 GiB code and data segments, as the PVH and multiboot
 * specifications require at the kernel's entry; the descriptor caches match the GDT at BOOT_GDT_ADDRESS.
 */
export function protectedModeEntry(current: Sregs): Sregs {
  return {
    ...current,
    ...entrySegments(flat(BOOT_CS, 0xb), BOOT_DS, BOOT_TSS),
    gdt: { base: BigInt(BOOT_GDT_ADDRESS), limit: 5 * 8 - 1 },
    idt: { base: 0n, limit: 0 },
    cr0: 0x11n, // PE | ET
    cr3: 0n,
    cr4: 0n,
    efer: 0n,
  };
}

/**
 * 64-bit long mode as the Linux boot protocol's 64-bit entry requires (Documentation/arch/x86/boot.rst,
 * "64-bit Boot Protocol"): paging on with the given identity map, CS = 0x10 64-bit code, DS/ES/SS = 0x18.
 */
export function longModeEntry(current: Sregs, opts: { gdtBase: number; gdtLimit: number; cr3: number }): Sregs {
  return {
    ...current,
    ...entrySegments({ ...flat(0x10, 0xb), db: 0, l: 1 }, 0x18, 0x20),
    gdt: { base: BigInt(opts.gdtBase), limit: opts.gdtLimit },
    idt: { base: 0n, limit: 0 },
    cr0: 0x80000011n, // PG | ET | PE
    cr3: BigInt(opts.cr3),
    cr4: 0x20n, // PAE
    efer: 0x500n, // LME | LMA
  };
}

const hex = (v: bigint, width = 16): string => v.toString(16).padStart(width, '0');

function segLine(name: string, s: Segment): string {
  return `${name.toUpperCase().padEnd(3)}=${hex(BigInt(s.selector), 4)} ${hex(s.base)} ${hex(BigInt(s.limit), 8)} type=${s.type.toString(16)} dpl=${s.dpl} db=${s.db} l=${s.l} p=${s.present}`;
}

/** A register dump in the spirit of QEMU's "info registers". */
export function formatRegisterDump(regs: Regs, sregs: Sregs): string {
  const r = regs;
  return [
    `RAX=${hex(r.rax)} RBX=${hex(r.rbx)} RCX=${hex(r.rcx)} RDX=${hex(r.rdx)}`,
    `RSI=${hex(r.rsi)} RDI=${hex(r.rdi)} RBP=${hex(r.rbp)} RSP=${hex(r.rsp)}`,
    `R8 =${hex(r.r8)} R9 =${hex(r.r9)} R10=${hex(r.r10)} R11=${hex(r.r11)}`,
    `R12=${hex(r.r12)} R13=${hex(r.r13)} R14=${hex(r.r14)} R15=${hex(r.r15)}`,
    `RIP=${hex(r.rip)} RFL=${hex(r.rflags, 8)}`,
    ...(['cs', 'ds', 'es', 'ss', 'fs', 'gs', 'tr'] as const).map((n) => segLine(n, sregs[n])),
    `GDT=${hex(sregs.gdt.base)} ${hex(BigInt(sregs.gdt.limit), 4)}  IDT=${hex(sregs.idt.base)} ${hex(BigInt(sregs.idt.limit), 4)}`,
    `CR0=${hex(sregs.cr0, 8)} CR2=${hex(sregs.cr2)} CR3=${hex(sregs.cr3)} CR4=${hex(sregs.cr4, 8)} EFER=${hex(sregs.efer, 8)}`,
  ].join('\n');
}
