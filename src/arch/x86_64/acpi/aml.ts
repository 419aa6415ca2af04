// ACPI 6.5 §20 ACPI Machine Language (AML) Specification, and §6.4 Resource Data Types: the small subset of
// encodings Partita's DSDT needs (names, scopes, devices, integers, strings, packages, resource templates).
import { ByteWriter } from './sdt.js';

/** An encoded AML term or data object. */
export type Aml = Uint8Array;

const ZERO_OP = 0x00;
const ONE_OP = 0x01;
const NAME_OP = 0x08;
const BYTE_PREFIX = 0x0a;
const WORD_PREFIX = 0x0b;
const DWORD_PREFIX = 0x0c;
const STRING_PREFIX = 0x0d;
const QWORD_PREFIX = 0x0e;
const SCOPE_OP = 0x10;
const BUFFER_OP = 0x11;
const PACKAGE_OP = 0x12;
const EXT_OP_PREFIX = 0x5b;
const DEVICE_OP = 0x82; // after EXT_OP_PREFIX
const ROOT_CHAR = 0x5c; // '\'
const PARENT_PREFIX_CHAR = 0x5e; // '^'
const DUAL_NAME_PREFIX = 0x2e;
const MULTI_NAME_PREFIX = 0x2f;

export function concat(...parts: readonly (Uint8Array | readonly number[])[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/**
 * §20.2.4 PkgLength for `contentLength` bytes that follow it. The encoded value counts the PkgLength bytes
 * themselves: one byte up to 63, else a lead byte (bits 7-6: how many bytes follow, bits 3-0: low nibble)
 * and 1-3 more bytes.
 */
export function pkgLength(contentLength: number): number[] {
  if (!Number.isInteger(contentLength) || contentLength < 0) throw new RangeError(`bad AML length ${contentLength}`);
  if (contentLength + 1 <= 0x3f) return [contentLength + 1];
  for (let extra = 1; extra <= 3; extra++) {
    const total = contentLength + 1 + extra;
    if (total < 2 ** (4 + 8 * extra)) {
      const out = [(extra << 6) | (total & 0x0f)];
      for (let i = 0; i < extra; i++) out.push((total >>> (4 + 8 * i)) & 0xff);
      return out;
    }
  }
  throw new RangeError(`AML package of ${contentLength} bytes is too long`);
}

/** §20.2.2 NameSeg: 1-4 characters (lead A-Z or '_', then A-Z, 0-9, '_'), padded with '_'. */
export function nameSeg(seg: string): number[] {
  if (!/^[A-Z_][A-Z0-9_]{0,3}$/.test(seg)) throw new RangeError(`"${seg}" is not an AML name segment`);
  const padded = seg.padEnd(4, '_');
  return [...padded].map((c) => c.charCodeAt(0));
}

/** §20.2.2 NameString: optional '\' or '^' prefixes, then dot-separated segments (e.g. "\_SB_.COM1", "_HID"). */
export function nameString(path: string): number[] {
  const out: number[] = [];
  let rest = path;
  if (rest.startsWith('\\')) {
    out.push(ROOT_CHAR);
    rest = rest.slice(1);
  } else {
    while (rest.startsWith('^')) {
      out.push(PARENT_PREFIX_CHAR);
      rest = rest.slice(1);
    }
  }
  if (rest === '') {
    out.push(0); // NullName
    return out;
  }
  const segs = rest.split('.');
  if (segs.length === 2) out.push(DUAL_NAME_PREFIX);
  else if (segs.length > 2) {
    if (segs.length > 255) throw new RangeError(`AML name "${path}" has too many segments`);
    out.push(MULTI_NAME_PREFIX, segs.length);
  }
  for (const s of segs) out.push(...nameSeg(s));
  return out;
}

/** §20.2.3 an Integer: ZeroOp, OneOp or the smallest of Byte/Word/DWord/QWord constants. */
export function integer(value: number | bigint): Aml {
  const v = BigInt(value);
  if (v < 0n || v > 0xffff_ffff_ffff_ffffn) throw new RangeError(`AML integer ${value} out of range`);
  if (v === 0n) return Uint8Array.of(ZERO_OP);
  if (v === 1n) return Uint8Array.of(ONE_OP);
  const le = (n: number): number[] => Array.from({ length: n }, (_, i) => Number((v >> BigInt(8 * i)) & 0xffn));
  if (v <= 0xffn) return Uint8Array.of(BYTE_PREFIX, ...le(1));
  if (v <= 0xffffn) return Uint8Array.of(WORD_PREFIX, ...le(2));
  if (v <= 0xffff_ffffn) return Uint8Array.of(DWORD_PREFIX, ...le(4));
  return Uint8Array.of(QWORD_PREFIX, ...le(8));
}

/** §20.2.3 String: ASCII characters 0x01-0x7F, NUL-terminated. */
export function string(text: string): Aml {
  const codes = [...text].map((c) => c.charCodeAt(0));
  if (codes.some((c) => c < 0x01 || c > 0x7f)) throw new RangeError(`"${text}" is not an AML ASCII string`);
  return Uint8Array.of(STRING_PREFIX, ...codes, 0);
}

/**
 * A compressed EISA ID (§6.1.5 _HID, ASL EISAID()): three letters A-Z (5 bits each) and four hex digits, as the
 * DWord whose bytes in memory are [l1<<2 | l2>>3, (l2&7)<<5 | l3, d0<<4 | d1, d2<<4 | d3].
 */
export function eisaId(id: string): Aml {
  if (!/^[A-Z]{3}[0-9A-F]{4}$/.test(id)) throw new RangeError(`"${id}" is not an EISA ID (e.g. PNP0501)`);
  const l = [0, 1, 2].map((i) => id.charCodeAt(i) - 0x40);
  const d = [3, 4, 5, 6].map((i) => parseInt(id[i], 16));
  const bytes = [(l[0] << 2) | (l[1] >> 3), ((l[1] & 7) << 5) | l[2], (d[0] << 4) | d[1], (d[2] << 4) | d[3]];
  return integer(bytes[0] + bytes[1] * 0x100 + bytes[2] * 0x1_0000 + bytes[3] * 0x100_0000);
}

/** §20.2.5.1 DefName: Name (name, value). */
export function name(n: string, value: Aml): Aml {
  return concat([NAME_OP], nameString(n), value);
}

/** §20.2.5.1 DefScope: Scope (name) { terms }. */
export function scope(n: string, ...terms: readonly Aml[]): Aml {
  const body = concat(nameString(n), ...terms);
  return concat([SCOPE_OP], pkgLength(body.length), body);
}

/** §20.2.5.2 DefDevice: Device (name) { terms }. */
export function device(n: string, ...terms: readonly Aml[]): Aml {
  const body = concat(nameString(n), ...terms);
  return concat([EXT_OP_PREFIX, DEVICE_OP], pkgLength(body.length), body);
}

/** §20.2.5.4 DefPackage: Package (n) { elements } (at most 255 elements). */
export function pkg(...elements: readonly Aml[]): Aml {
  if (elements.length > 255) throw new RangeError('AML package with more than 255 elements');
  const body = concat([elements.length], ...elements);
  return concat([PACKAGE_OP], pkgLength(body.length), body);
}

/** §20.2.5.4 DefBuffer: Buffer (size) { bytes }. */
export function buffer(data: Uint8Array | readonly number[]): Aml {
  const body = concat(integer(data.length), data);
  return concat([BUFFER_OP], pkgLength(body.length), body);
}

// ---- §6.4 resource descriptors (small items: tag byte = type << 3 | length) ----

/** §6.4.2.5 I/O Port Descriptor, 16-bit decode: IO (Decode16, min, max, alignment, length). */
export function ioPort(min: number, max: number, alignment: number, length: number): Uint8Array {
  for (const [v, lim, what] of [
    [min, 0xffff, 'min'],
    [max, 0xffff, 'max'],
    [alignment, 0xff, 'alignment'],
    [length, 0xff, 'length'],
  ] as const) {
    if (!Number.isInteger(v) || v < 0 || v > lim) throw new RangeError(`I/O descriptor ${what} ${v} out of range`);
  }
  if (max < min) throw new RangeError(`I/O descriptor max 0x${max.toString(16)} below min 0x${min.toString(16)}`);
  return Uint8Array.of((0x08 << 3) | 7, 0x01, min & 0xff, min >> 8, max & 0xff, max >> 8, alignment, length);
}

/** §6.4.2.1 IRQ Descriptor without the information byte: IRQNoFlags () { irqs } (ISA: edge, active-high). */
export function irqNoFlags(...irqs: readonly number[]): Uint8Array {
  let mask = 0;
  for (const irq of irqs) {
    if (!Number.isInteger(irq) || irq < 0 || irq > 15) throw new RangeError(`ISA IRQ ${irq} out of range`);
    mask |= 1 << irq;
  }
  return Uint8Array.of((0x04 << 3) | 2, mask & 0xff, mask >> 8);
}

/** §6.4.2.9 End Tag, checksum 0 ("treated as if the checksum operation succeeded"). */
const END_TAG = [(0x0f << 3) | 1, 0x00];

/** ResourceTemplate () { descriptors }: a Buffer holding the descriptors and an End Tag. */
export function resourceTemplate(...descriptors: readonly Uint8Array[]): Aml {
  return buffer(concat(...descriptors, END_TAG));
}

// ---- §6.4.3 large resource descriptors: address space descriptors for a PCI root bridge's _CRS ----

const RESOURCE_MEMORY = 0;
const RESOURCE_IO = 1;
const RESOURCE_BUS = 2;

/**
 * §6.4.3.5.3 Word Address Space Descriptor (bus numbers or I/O ports), "producer", fixed min and max:
 * WordBusNumber / WordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange).
 */
function wordAddress(kind: number, min: number, max: number): Uint8Array {
  if (!Number.isInteger(min) || !Number.isInteger(max) || min < 0 || max > 0xffff || max < min)
    throw new RangeError(`word address range 0x${min.toString(16)}-0x${max.toString(16)} is invalid`);
  // general flags: bit 3 MaxFixed, bit 2 MinFixed, bit 0 consumer(1)/producer(0)
  const typeFlags = kind === RESOURCE_IO ? 0x03 /* EntireRange */ : 0x00;
  return new ByteWriter()
    .u8(0x88)
    .u16(13) // length after this header
    .u8(kind)
    .u8(0x0c)
    .u8(typeFlags)
    .u16(0) // granularity
    .u16(min)
    .u16(max)
    .u16(0) // translation offset
    .u16(max - min + 1)
    .finish();
}

/** WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode, min, max). */
export function wordBusNumber(min: number, max: number): Uint8Array {
  return wordAddress(RESOURCE_BUS, min, max);
}

/** WordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange, min, max). */
export function wordIo(min: number, max: number): Uint8Array {
  return wordAddress(RESOURCE_IO, min, max);
}

/**
 * §6.4.3.5.2 DWord Address Space Descriptor, memory: DWordMemory (ResourceProducer, PosDecode, MinFixed,
 * MaxFixed, NonCacheable, ReadWrite, min, max).
 */
export function dwordMemory(min: number, max: number): Uint8Array {
  if (!Number.isInteger(min) || !Number.isInteger(max) || min < 0 || max > 0xffff_ffff || max < min)
    throw new RangeError(`memory range 0x${min.toString(16)}-0x${max.toString(16)} is invalid`);
  // type flags: bit 0 ReadWrite, bits 1-2 memory attributes 0 = non-cacheable
  return new ByteWriter()
    .u8(0x87)
    .u16(23) // length after this header
    .u8(RESOURCE_MEMORY)
    .u8(0x0c)
    .u8(0x01)
    .u32(0) // granularity
    .u32(min)
    .u32(max)
    .u32(0) // translation offset
    .u32(max - min + 1)
    .finish();
}

/** §6.4.3.4 32-Bit Fixed Memory Range Descriptor: Memory32Fixed (ReadWrite, base, length). */
export function fixedMemory(base: number, length: number): Uint8Array {
  return new ByteWriter().u8(0x86).u16(9).u8(1 /* read-write */).u32(base).u32(length).finish();
}

// ---- §6.4.3.6 Extended Interrupt Descriptor ----

export interface InterruptFlags {
  /** Level-triggered (else edge). */
  readonly level: boolean;
  /** Active-high (else active-low). */
  readonly activeHigh: boolean;
  /** Shared with other devices (else exclusive). */
  readonly shared: boolean;
}

/**
 * Interrupt (ResourceConsumer, Level|Edge, ActiveHigh|ActiveLow, Shared|Exclusive) { irqs }: 0x89, length, flags
 * (bit 0 consumer, bit 1 edge, bit 2 active-low, bit 3 shared), count, then one DWord per interrupt. The first
 * interrupt number sits at byte offset 5, which AML code patches through CreateDWordField (LNKx _CRS).
 */
export function extendedInterrupt(flags: InterruptFlags, ...irqs: readonly number[]): Uint8Array {
  if (irqs.length < 1 || irqs.length > 255) throw new RangeError(`${irqs.length} interrupts in one descriptor`);
  const bits = 0x01 | (flags.level ? 0 : 0x02) | (flags.activeHigh ? 0 : 0x04) | (flags.shared ? 0x08 : 0);
  const w = new ByteWriter()
    .u8(0x89)
    .u16(2 + 4 * irqs.length)
    .u8(bits)
    .u8(irqs.length);
  for (const irq of irqs) w.u32(irq);
  return w.finish();
}

// ---- §20.2.5 named objects and §20.2.5.3 statements / §20.2.5.4 expressions a DSDT's methods need ----

const METHOD_OP = 0x14;
const OP_REGION_OP = 0x80; // after EXT_OP_PREFIX
const FIELD_OP = 0x81; // after EXT_OP_PREFIX
const STORE_OP = 0x70;
const AND_OP = 0x7b;
const OR_OP = 0x7d;
const CREATE_DWORD_FIELD_OP = 0x8a;
const LEQUAL_OP = 0x93;
const LLESS_OP = 0x95;
const IF_OP = 0xa0;
const ELSE_OP = 0xa1;
const RETURN_OP = 0xa4;
const ARG0_OP = 0x68;
const LOCAL0_OP = 0x60;

/** §20.2.6.1 ArgObj: Arg0 … Arg6. */
export function arg(n: number): Aml {
  if (!Number.isInteger(n) || n < 0 || n > 6) throw new RangeError(`Arg${n} does not exist`);
  return Uint8Array.of(ARG0_OP + n);
}

/** §20.2.6.2 LocalObj: Local0 … Local7. */
export function local(n: number): Aml {
  if (!Number.isInteger(n) || n < 0 || n > 7) throw new RangeError(`Local${n} does not exist`);
  return Uint8Array.of(LOCAL0_OP + n);
}

/** A reference to a named object (a NameString used as a term, a target or a package element). */
export function ref(path: string): Aml {
  return Uint8Array.from(nameString(path));
}

/** §20.2.7 MethodInvocation: the method's name, then exactly as many arguments as it was declared with. */
export function call(path: string, ...args: readonly Aml[]): Aml {
  return concat(nameString(path), ...args);
}

/** §20.2.5.2 DefMethod: Method (name, argCount, Serialized|NotSerialized) { terms }. */
export function method(n: string, argCount: number, serialized: boolean, ...terms: readonly Aml[]): Aml {
  if (!Number.isInteger(argCount) || argCount < 0 || argCount > 7) throw new RangeError(`${argCount} method args`);
  const body = concat(nameString(n), [argCount | (serialized ? 0x08 : 0)], ...terms);
  return concat([METHOD_OP], pkgLength(body.length), body);
}

/** §19.6.100 RegionSpace keywords (the ones used here). */
export const REGION_SYSTEM_IO = 0x01;
export const REGION_PCI_CONFIG = 0x02;

/** §20.2.5.2 DefOpRegion: OperationRegion (name, space, offset, length). */
export function operationRegion(n: string, space: number, offset: number, length: number): Aml {
  return concat([EXT_OP_PREFIX, OP_REGION_OP], nameString(n), [space], integer(offset), integer(length));
}

/** §19.6.48 Field access types and update rules (FieldFlags bits 3:0 and 6:5). */
export const FIELD_ANY_ACC = 0;
export const FIELD_BYTE_ACC = 1;
export const FIELD_WORD_ACC = 2;
export const FIELD_DWORD_ACC = 3;

/** One unit of a Field: a named unit of `bits` bits, or (name undefined) `bits` reserved bits (Offset()). */
export interface FieldUnit {
  readonly name?: string;
  readonly bits: number;
}

/** A field unit's length: PkgLength's encoding, but the value is the bit count itself (§20.2.5.2 NamedField). */
function fieldLength(bits: number): number[] {
  if (!Number.isInteger(bits) || bits < 1 || bits >= 2 ** 28) throw new RangeError(`field unit of ${bits} bits`);
  if (bits <= 0x3f) return [bits];
  for (let extra = 1; extra <= 3; extra++) {
    if (bits < 2 ** (4 + 8 * extra)) {
      const out = [(extra << 6) | (bits & 0x0f)];
      for (let i = 0; i < extra; i++) out.push((bits >>> (4 + 8 * i)) & 0xff);
      return out;
    }
  }
  throw new RangeError(`field unit of ${bits} bits`);
}

/** §20.2.5.2 DefField: Field (region, access, NoLock, Preserve) { units }. */
export function field(region: string, access: number, units: readonly FieldUnit[]): Aml {
  if (!Number.isInteger(access) || access < 0 || access > 5) throw new RangeError(`field access type ${access}`);
  const list = units.map((u) =>
    u.name === undefined ? concat([0x00], fieldLength(u.bits)) : concat(nameSeg(u.name), fieldLength(u.bits)),
  );
  const body = concat(nameString(region), [access], ...list);
  return concat([EXT_OP_PREFIX, FIELD_OP], pkgLength(body.length), body);
}

/** §20.2.5.3 DefIfElse: If (predicate) { terms }. */
export function ifThen(predicate: Aml, ...terms: readonly Aml[]): Aml {
  const body = concat(predicate, ...terms);
  return concat([IF_OP], pkgLength(body.length), body);
}

/** §20.2.5.3 DefElse: Else { terms } (directly after an If). */
export function orElse(...terms: readonly Aml[]): Aml {
  const body = concat(...terms);
  return concat([ELSE_OP], pkgLength(body.length), body);
}

/** §20.2.5.3 DefReturn: Return (value). */
export function returnValue(value: Aml): Aml {
  return concat([RETURN_OP], value);
}

/** §20.2.5.4 DefStore: Store (source, target). */
export function store(source: Aml, target: Aml): Aml {
  return concat([STORE_OP], source, target);
}

/** The Target of an expression: a name or Local/Arg, or none (NullName: the result is only returned). */
const targetOf = (target?: Aml): Aml => target ?? Uint8Array.of(0);

/** §20.2.5.4 DefAnd: And (a, b, target). */
export function and(a: Aml, b: Aml, target?: Aml): Aml {
  return concat([AND_OP], a, b, targetOf(target));
}

/** §20.2.5.4 DefOr: Or (a, b, target). */
export function or(a: Aml, b: Aml, target?: Aml): Aml {
  return concat([OR_OP], a, b, targetOf(target));
}

/** §20.2.5.4 DefLLess: LLess (a, b). */
export function lLess(a: Aml, b: Aml): Aml {
  return concat([LLESS_OP], a, b);
}

/** §20.2.5.4 DefLEqual: LEqual (a, b). */
export function lEqual(a: Aml, b: Aml): Aml {
  return concat([LEQUAL_OP], a, b);
}

/** §20.2.5.2 DefCreateDWordField: CreateDWordField (buffer, byteIndex, name). */
export function createDWordField(source: Aml, byteIndex: number, n: string): Aml {
  return concat([CREATE_DWORD_FIELD_OP], source, integer(byteIndex), nameString(n));
}
