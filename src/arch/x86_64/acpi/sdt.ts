// ACPI 6.5 §5.2.6 System Description Table Header (plus §5.2.3.2 Generic Address Structure and the byte checksum
// every ACPI structure carries): the pieces all of Partita's tables share.

/** OEM ID (6 characters) in every table Partita builds and in the RSDP. */
export const OEM_ID = 'PRTITA';
/** Creator ID: the "ASL compiler" vendor; Partita's own table builder. */
export const CREATOR_ID = 'PRTA';
export const CREATOR_REVISION = 1;
export const OEM_REVISION = 1;
export const SDT_HEADER_SIZE = 36;
/** Offset of the checksum byte in a system description table header. */
export const SDT_CHECKSUM_OFFSET = 9;

/**
 * OEM Table ID (8 characters): "PRTT" + the table's signature, so that each table has an ID of its own (Linux's
 * table upgrade mechanism and Windows' registry overrides match tables by OEM ID + OEM Table ID).
 */
export function oemTableId(signature: string): string {
  return `PRTT${signature}`;
}

/** The 8-bit sum of `bytes[start, end)`; an ACPI structure is valid when its sum is 0. */
export function sum8(bytes: Uint8Array, start = 0, end = bytes.length): number {
  let s = 0;
  for (let i = start; i < end; i++) s = (s + bytes[i]) & 0xff;
  return s;
}

/** Sets `bytes[at]` so that `bytes[start, end)` sums to zero (the byte at `at` must lie inside the range). */
export function fixChecksum(bytes: Uint8Array, at: number, start = 0, end = bytes.length): void {
  bytes[at] = 0;
  bytes[at] = (0x100 - sum8(bytes, start, end)) & 0xff;
}

function checkInt(v: number, max: number, what: string): void {
  if (!Number.isInteger(v) || v < 0 || v > max)
    throw new RangeError(`${what} ${v} does not fit (0..0x${max.toString(16)})`);
}

/** Little-endian byte builder with range-checked fields: a wrong value is a bug, never silently truncated. */
export class ByteWriter {
  private buf = new Uint8Array(256);
  private len = 0;

  get length(): number {
    return this.len;
  }

  private reserve(n: number): number {
    const at = this.len;
    if (at + n > this.buf.length) {
      const grown = new Uint8Array(Math.max(this.buf.length * 2, at + n));
      grown.set(this.buf.subarray(0, at));
      this.buf = grown;
    }
    this.len += n;
    return at;
  }

  u8(v: number): this {
    checkInt(v, 0xff, 'u8');
    const at = this.reserve(1); // before reading this.buf: reserve() may replace it
    this.buf[at] = v;
    return this;
  }

  u16(v: number): this {
    checkInt(v, 0xffff, 'u16');
    const at = this.reserve(2);
    this.buf[at] = v & 0xff;
    this.buf[at + 1] = v >>> 8;
    return this;
  }

  u32(v: number): this {
    checkInt(v, 0xffff_ffff, 'u32');
    const at = this.reserve(4);
    for (let i = 0; i < 4; i++) this.buf[at + i] = (v >>> (8 * i)) & 0xff;
    return this;
  }

  u64(v: number | bigint): this {
    const b = BigInt(v);
    if (b < 0n || b > 0xffff_ffff_ffff_ffffn) throw new RangeError(`u64 ${v} does not fit`);
    const at = this.reserve(8);
    for (let i = 0; i < 8; i++) this.buf[at + i] = Number((b >> BigInt(8 * i)) & 0xffn);
    return this;
  }

  /** A fixed-width ASCII field: `text` must be printable ASCII and exactly `width` characters. */
  ascii(text: string, width: number): this {
    if (text.length !== width || !/^[\x20-\x7e]*$/.test(text)) {
      throw new RangeError(`"${text}" is not ${width} printable ASCII characters`);
    }
    const at = this.reserve(width);
    for (let i = 0; i < width; i++) this.buf[at + i] = text.charCodeAt(i);
    return this;
  }

  bytes(data: Uint8Array | readonly number[]): this {
    const at = this.reserve(data.length);
    this.buf.set(data, at);
    return this;
  }

  zeros(n: number): this {
    this.reserve(n); // the buffer is zero-filled and never reused
    return this;
  }

  /** A copy of what was written. */
  finish(): Uint8Array {
    return this.buf.slice(0, this.len);
  }
}

/** ACPI 6.5 §5.2.3.2 Generic Address Structure: address space IDs used here. */
export const GAS_SYSTEM_MEMORY = 0;
export const GAS_SYSTEM_IO = 1;

export interface GenericAddress {
  readonly spaceId: number;
  readonly bitWidth: number;
  readonly bitOffset?: number;
  /** 0 undefined (legacy), 1 byte, 2 word, 3 dword, 4 qword. */
  readonly accessSize: number;
  readonly address: number | bigint;
}

/** Appends a 12-byte Generic Address Structure; `undefined` appends the all-zero "not supported" GAS. */
export function writeGas(w: ByteWriter, gas: GenericAddress | undefined): void {
  if (!gas) {
    w.zeros(12);
    return;
  }
  w.u8(gas.spaceId)
    .u8(gas.bitWidth)
    .u8(gas.bitOffset ?? 0)
    .u8(gas.accessSize)
    .u64(gas.address);
}

/**
 * A complete system description table: the 36-byte header (§5.2.6) in front of `body`, with Length and
 * Checksum filled in.
 */
export function buildSdt(signature: string, revision: number, body: Uint8Array): Uint8Array {
  const w = new ByteWriter();
  w.ascii(signature, 4)
    .u32(SDT_HEADER_SIZE + body.length)
    .u8(revision)
    .u8(0) // checksum, below
    .ascii(OEM_ID, 6)
    .ascii(oemTableId(signature), 8)
    .u32(OEM_REVISION)
    .ascii(CREATOR_ID, 4)
    .u32(CREATOR_REVISION)
    .bytes(body);
  const table = w.finish();
  fixChecksum(table, SDT_CHECKSUM_OFFSET);
  return table;
}
