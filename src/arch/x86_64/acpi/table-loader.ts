// QEMU's BIOS linker/loader ABI ("etc/table-loader", hw/acpi/bios-linker-loader.c; SeaBIOS
// src/fw/romfile_loader.h, OVMF QemuFwCfgAcpiPlatformDxe): a list of 128-byte little-endian commands that tell
// firmware where to put fw_cfg files holding ACPI tables, which fields of them are pointers to patch with the
// addresses the firmware chose, and which checksums to recompute afterwards. The VMM cannot know where the
// firmware will allocate the tables, so it hands them over relative and lets the firmware link them.
//
//   offset  ALLOCATE            ADD_POINTER          ADD_CHECKSUM
//   0       command = 1         command = 2          command = 3
//   4       file[56]            dest_file[56]        file[56]
//   60      align (u32)         src_file[56]         offset (u32)   byte to fix
//   64      zone (u8)                                start (u32)
//   68                                               length (u32)
//   116                         offset (u32)
//   120                         size (u8: 1/2/4/8)
//   … zero padding to 128.
//
// ADD_POINTER adds the address of src_file's allocation to the size-byte little-endian value at dest_file +
// offset: a pointer field holds the offset inside src_file before patching. ADD_CHECKSUM sets the byte at
// `offset` so that bytes [start, start + length) of the file sum to zero (SeaBIOS subtracts the range's sum from
// the byte, OVMF zeroes the byte first and stores the checksum: both agree when the byte starts as 0, which is
// how the tables are handed over).

export const LOADER_COMMAND_SIZE = 128;
/** File names in commands are NUL-padded to 56 bytes (the fw_cfg file directory's name size). */
export const LOADER_FILE_NAME_SIZE = 56;

export const LOADER_COMMAND_ALLOCATE = 1;
export const LOADER_COMMAND_ADD_POINTER = 2;
export const LOADER_COMMAND_ADD_CHECKSUM = 3;

/** ALLOCATE zones: HIGH is anywhere in RAM below 4 GiB; FSEG the 0xF0000 segment (where the RSDP is scanned for). */
export const LOADER_ZONE_HIGH = 1;
export const LOADER_ZONE_FSEG = 2;
export type LoaderZone = 'high' | 'fseg';

/** The file name of the loader script itself in the fw_cfg directory. */
export const TABLE_LOADER_FILE = 'etc/table-loader';

export type LoaderCommand =
  | { readonly kind: 'allocate'; readonly file: string; readonly align: number; readonly zone: LoaderZone }
  | {
      readonly kind: 'add-pointer';
      readonly destFile: string;
      readonly srcFile: string;
      readonly offset: number;
      readonly size: 1 | 2 | 4 | 8;
    }
  | {
      readonly kind: 'add-checksum';
      readonly file: string;
      readonly offset: number;
      readonly start: number;
      readonly length: number;
    };

function checkName(name: string): void {
  const n = Buffer.byteLength(name, 'utf8');
  if (n === 0 || n >= LOADER_FILE_NAME_SIZE || name.includes('\0'))
    throw new RangeError(`loader file name '${name}' must be 1..${LOADER_FILE_NAME_SIZE - 1} bytes without NUL`);
}

function checkU32(v: number, what: string): void {
  if (!Number.isInteger(v) || v < 0 || v > 0xffff_ffff) throw new RangeError(`loader ${what} ${v} is not a u32`);
}

/**
 * Builds a loader script, checking what the firmware would otherwise reject silently: every file is allocated
 * once before any command names it, pointers and checksum ranges lie inside their files.
 */
export class TableLoader {
  private readonly list: LoaderCommand[] = [];
  private readonly sizes = new Map<string, number>();

  /** ALLOCATE `file` (of `size` bytes, the size of the fw_cfg file) aligned to `align` (a power of two). */
  allocate(file: string, size: number, align: number, zone: LoaderZone): this {
    checkName(file);
    checkU32(align, 'alignment');
    if (align === 0 || (align & (align - 1)) !== 0)
      throw new RangeError(`loader alignment ${align} is not a power of 2`);
    if (this.sizes.has(file)) throw new RangeError(`loader file '${file}' is allocated twice`);
    this.sizes.set(file, size);
    this.list.push({ kind: 'allocate', file, align, zone });
    return this;
  }

  /** ADD_POINTER: the `size`-byte field at `destFile` + `offset` gets `srcFile`'s address added. */
  addPointer(destFile: string, srcFile: string, offset: number, size: 1 | 2 | 4 | 8): this {
    const destSize = this.sizeOf(destFile);
    this.sizeOf(srcFile);
    checkU32(offset, 'pointer offset');
    if (![1, 2, 4, 8].includes(size)) throw new RangeError(`loader pointer size ${size}`);
    if (offset + size > destSize)
      throw new RangeError(`loader pointer at ${destFile}+${offset} (${size} bytes) is outside the file`);
    this.list.push({ kind: 'add-pointer', destFile, srcFile, offset, size });
    return this;
  }

  /** ADD_CHECKSUM: the byte at `file` + `offset` makes bytes [start, start + length) sum to zero. */
  addChecksum(file: string, offset: number, start: number, length: number): this {
    const size = this.sizeOf(file);
    checkU32(offset, 'checksum offset');
    checkU32(start, 'checksum start');
    checkU32(length, 'checksum length');
    if (offset >= size || start + length > size || offset < start || offset >= start + length)
      throw new RangeError(`loader checksum ${file}+${offset} over [${start}, +${length}) is outside the file`);
    this.list.push({ kind: 'add-checksum', file, offset, start, length });
    return this;
  }

  get commands(): readonly LoaderCommand[] {
    return this.list;
  }

  /** The etc/table-loader file: the commands, 128 bytes each. */
  encode(): Uint8Array {
    return encodeTableLoader(this.list);
  }

  private sizeOf(file: string): number {
    const size = this.sizes.get(file);
    if (size === undefined) throw new RangeError(`loader file '${file}' is used before it is allocated`);
    return size;
  }
}

function putName(out: Uint8Array, at: number, name: string): void {
  checkName(name);
  out.set(Buffer.from(name, 'utf8'), at); // the rest of the 56 bytes stays zero: NUL padding
}

export function encodeTableLoader(commands: readonly LoaderCommand[]): Uint8Array {
  const out = new Uint8Array(commands.length * LOADER_COMMAND_SIZE);
  const dv = new DataView(out.buffer);
  commands.forEach((c, i) => {
    const at = i * LOADER_COMMAND_SIZE;
    switch (c.kind) {
      case 'allocate':
        dv.setUint32(at, LOADER_COMMAND_ALLOCATE, true);
        putName(out, at + 4, c.file);
        dv.setUint32(at + 60, c.align, true);
        out[at + 64] = c.zone === 'high' ? LOADER_ZONE_HIGH : LOADER_ZONE_FSEG;
        break;
      case 'add-pointer':
        dv.setUint32(at, LOADER_COMMAND_ADD_POINTER, true);
        putName(out, at + 4, c.destFile);
        putName(out, at + 60, c.srcFile);
        dv.setUint32(at + 116, c.offset, true);
        out[at + 120] = c.size;
        break;
      case 'add-checksum':
        dv.setUint32(at, LOADER_COMMAND_ADD_CHECKSUM, true);
        putName(out, at + 4, c.file);
        dv.setUint32(at + 60, c.offset, true);
        dv.setUint32(at + 64, c.start, true);
        dv.setUint32(at + 68, c.length, true);
        break;
    }
  });
  return out;
}

function getName(bytes: Uint8Array, at: number): string {
  const field = bytes.subarray(at, at + LOADER_FILE_NAME_SIZE);
  const end = field.indexOf(0);
  return Buffer.from(field.subarray(0, end < 0 ? field.length : end)).toString('utf8');
}

function decodeZone(zone: number): LoaderZone {
  if (zone === LOADER_ZONE_HIGH) return 'high';
  if (zone === LOADER_ZONE_FSEG) return 'fseg';
  throw new RangeError(`table loader: unknown allocation zone ${zone}`);
}

/**
 * Reads a loader script back (tests, diagnostics). Unknown commands are skipped, as firmware does; a script
 * that is not whole commands is refused.
 */
export function decodeTableLoader(bytes: Uint8Array): LoaderCommand[] {
  if (bytes.length % LOADER_COMMAND_SIZE !== 0)
    throw new RangeError(`table loader is ${bytes.length} bytes, not a multiple of ${LOADER_COMMAND_SIZE}`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out: LoaderCommand[] = [];
  for (let at = 0; at < bytes.length; at += LOADER_COMMAND_SIZE) {
    switch (dv.getUint32(at, true)) {
      case LOADER_COMMAND_ALLOCATE:
        out.push({
          kind: 'allocate',
          file: getName(bytes, at + 4),
          align: dv.getUint32(at + 60, true),
          zone: decodeZone(bytes[at + 64]),
        });
        break;
      case LOADER_COMMAND_ADD_POINTER:
        out.push({
          kind: 'add-pointer',
          destFile: getName(bytes, at + 4),
          srcFile: getName(bytes, at + 60),
          offset: dv.getUint32(at + 116, true),
          size: bytes[at + 120] as 1 | 2 | 4 | 8,
        });
        break;
      case LOADER_COMMAND_ADD_CHECKSUM:
        out.push({
          kind: 'add-checksum',
          file: getName(bytes, at + 4),
          offset: dv.getUint32(at + 60, true),
          start: dv.getUint32(at + 64, true),
          length: dv.getUint32(at + 68, true),
        });
        break;
      default:
        break;
    }
  }
  return out;
}
