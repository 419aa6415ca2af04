// QEMU's firmware configuration device (QEMU docs/specs/fw_cfg.rst, "QEMU Firmware Configuration (fw_cfg)
// Device"), the x86 I/O-port flavour: how SeaBIOS and OVMF learn the CPU count, the memory map, the boot order,
// option ROMs and the ACPI tables (etc/table-loader) of the machine they run on.
//
//   0x510        selector (16-bit write): picks an item and rewinds its read offset
//   0x511        data (8-bit read): the next byte of the item, 0 past its end or for an unknown item
//   0x514-0x517  DMA address, high half; 0x518-0x51b low half: a 32-bit write of the low half starts a transfer.
//                Both are big-endian registers (the guest writes them byte-swapped); reading 0x514-0x51b gives
//                the DMA signature "QEMU CFG".
//
// A DMA transfer reads a control structure { be32 control; be32 length; be64 address } from guest RAM, may
// select an item (control bits 31-16), then reads (copies the item to guest RAM, zeros past its end), skips or
// writes (refused: every item is read-only here) `length` bytes, and writes the control word back: 0 on success,
// the error bit otherwise. Every guest address is checked against guest RAM; a bad one is the error bit, never a
// host fault.
//
// Threads: selector, offset and the DMA address register live in a SharedArrayBuffer behind a SharedLock (a
// transfer changes selector and offset together, and any vCPU thread may do it). The items are filled on the
// builder thread after create() and before attach() (addFwCfgFile) and are immutable from attach() on; each
// thread holds its own copy, built the same way, so the file directory and select keys agree.
import type { PortIoDevice } from '../bus.js';
import { SharedLock } from '../../base/shared-lock.js';
import { GuestMemoryError, type GuestMemory } from '../../base/guest-memory.js';
import { device, integer, ioPort, name, resourceTemplate, string } from '../../arch/x86_64/acpi/aml.js';
import {
  DeviceStateError,
  expectSnapshot,
  type DeviceModel,
  type DeviceSnapshot,
  type MachineFacts,
} from '../model.js';
import { le16, le32, le64 } from '../../base/little-endian.js';

export const FW_CFG_SELECTOR_PORT = 0x510;
export const FW_CFG_DATA_PORT = 0x511;
export const FW_CFG_DMA_PORT = 0x514; // high half; the low half is at 0x518
/** What QEMU's DSDT declares for the device: 0x510 + 12 ports (selector, data, padding, DMA address). */
export const FW_CFG_IO_SIZE = 0x0c;

/** Item keys (fw_cfg.rst "Selector Register"; QEMU include/standard-headers/linux/qemu_fw_cfg.h). */
export const FW_CFG_SIGNATURE = 0x0000;
export const FW_CFG_ID = 0x0001;
export const FW_CFG_UUID = 0x0002;
export const FW_CFG_RAM_SIZE = 0x0003;
export const FW_CFG_NB_CPUS = 0x0005;
export const FW_CFG_BOOT_MENU = 0x000e;
export const FW_CFG_MAX_CPUS = 0x000f;
export const FW_CFG_FILE_DIR = 0x0019;
export const FW_CFG_FILE_FIRST = 0x0020;
export const FW_CFG_ARCH_LOCAL = 0x8000;
/** x86: "the in-kernel irqchip routes the PIT's IRQ0 to I/O APIC pin 2" (SeaBIOS etc/irq0-override). */
export const FW_CFG_IRQ0_OVERRIDE = FW_CFG_ARCH_LOCAL + 2;
/** Bit 14 once meant "write"; QEMU ignores it when looking an item up. */
const FW_CFG_ENTRY_MASK = 0x3fff;

/** FW_CFG_ID feature bits: the traditional port interface and the DMA interface. */
export const FW_CFG_VERSION = 0x01;
export const FW_CFG_VERSION_DMA = 0x02;

/** DMA control bits. */
export const FW_CFG_DMA_CTL_ERROR = 0x01;
export const FW_CFG_DMA_CTL_READ = 0x02;
export const FW_CFG_DMA_CTL_SKIP = 0x04;
export const FW_CFG_DMA_CTL_SELECT = 0x08;
export const FW_CFG_DMA_CTL_WRITE = 0x10;
/** "QEMU CFG", as read byte by byte from 0x514. */
export const FW_CFG_DMA_SIGNATURE = Buffer.from('QEMU CFG', 'latin1');
const DMA_ACCESS_SIZE = 16;

/** A file name is at most 55 bytes plus the terminating NUL of the directory's 56-byte field. */
export const FW_CFG_MAX_NAME_BYTES = 55;
const DIR_ENTRY_SIZE = 64;
const MAX_FILES = FW_CFG_ENTRY_MASK + 1 - FW_CFG_FILE_FIRST;

// Shared state: Int32 words.
const W_LOCK = 0;
const W_SELECTOR = 1; // the selected key, or -1 before the first selection
const W_OFFSET = 2; // read offset into the selected item
const W_DMA_HIGH = 3; // DMA address, high half (the value, after the byte swap)
const W_SEALED = 4; // 1 once attached: no more files
const STATE_WORDS = 5;

export interface FwCfgState {
  readonly shared: SharedArrayBuffer;
  readonly cpus: number;
  readonly memory: number;
  /** Files in the order they were added; the directory sorts them. Filled by addFwCfgFile before attach. */
  readonly files: { readonly name: string; readonly data: Uint8Array }[];
}

export function createFwCfgState(machine: Pick<MachineFacts, 'cpus' | 'memory'>): FwCfgState {
  const shared = new SharedArrayBuffer(STATE_WORDS * 4);
  new Int32Array(shared)[W_SELECTOR] = -1;
  return { shared, cpus: machine.cpus, memory: machine.memory, files: [] };
}

/**
 * Adds a file to the fw_cfg directory (builder thread, after create(), before attach()). The bytes are copied:
 * the item cannot change under the guest. Refuses names over 55 bytes, a name given twice and additions after
 * the device was attached.
 */
export function addFwCfgFile(state: FwCfgState, fileName: string, data: Uint8Array): void {
  if (Atomics.load(new Int32Array(state.shared), W_SEALED) !== 0)
    throw new Error(`fw_cfg: file '${fileName}' added after the device was attached`);
  const n = Buffer.byteLength(fileName, 'utf8');
  if (n === 0 || n > FW_CFG_MAX_NAME_BYTES || fileName.includes('\0'))
    throw new RangeError(`fw_cfg: file name '${fileName}' must be 1..${FW_CFG_MAX_NAME_BYTES} bytes without NUL`);
  if (state.files.some((f) => f.name === fileName)) throw new RangeError(`fw_cfg: file '${fileName}' is added twice`);
  if (state.files.length >= MAX_FILES) throw new RangeError(`fw_cfg: more than ${MAX_FILES} files`);
  if (data.length > 0xffff_ffff) throw new RangeError(`fw_cfg: file '${fileName}' is larger than 4 GiB`);
  state.files.push({ name: fileName, data: Uint8Array.from(data) });
}

/** The item table: keys → bytes. Deterministic, so every thread's copy is the same. */
export function fwCfgItems(state: FwCfgState): Map<number, Uint8Array> {
  const items = new Map<number, Uint8Array>();
  items.set(FW_CFG_SIGNATURE, Buffer.from('QEMU', 'latin1'));
  items.set(FW_CFG_ID, le32(FW_CFG_VERSION | FW_CFG_VERSION_DMA));
  items.set(FW_CFG_UUID, new Uint8Array(16));
  items.set(FW_CFG_RAM_SIZE, le64(state.memory));
  items.set(FW_CFG_NB_CPUS, le16(state.cpus));
  items.set(FW_CFG_MAX_CPUS, le16(state.cpus)); // no CPU hotplug: the boot CPUs are all there will be
  items.set(FW_CFG_BOOT_MENU, le16(0));
  items.set(FW_CFG_IRQ0_OVERRIDE, le32(1));
  // QEMU keeps the directory sorted by name (strcmp) and gives the i-th name key FW_CFG_FILE_FIRST + i.
  const files = [...state.files].sort((a, b) => Buffer.compare(Buffer.from(a.name), Buffer.from(b.name)));
  const dir = new Uint8Array(4 + files.length * DIR_ENTRY_SIZE);
  const dv = new DataView(dir.buffer);
  dv.setUint32(0, files.length, false);
  files.forEach((f, i) => {
    const at = 4 + i * DIR_ENTRY_SIZE;
    const key = FW_CFG_FILE_FIRST + i;
    dv.setUint32(at, f.data.length, false);
    dv.setUint16(at + 4, key, false);
    dir.set(Buffer.from(f.name, 'utf8'), at + 8); // name[56], NUL-padded
    items.set(key, f.data);
  });
  items.set(FW_CFG_FILE_DIR, dir);
  return items;
}

const bswap32 = (v: number): number =>
  (((v & 0xff) << 24) | ((v & 0xff00) << 8) | ((v >>> 8) & 0xff00) | ((v >>> 24) & 0xff)) >>> 0;

export class FwCfg {
  readonly name = 'fw-cfg';
  private readonly lock: SharedLock;
  private readonly words: Int32Array;

  constructor(
    state: FwCfgState,
    private readonly items: ReadonlyMap<number, Uint8Array>,
    private readonly memory: GuestMemory,
  ) {
    if (state.shared.byteLength < STATE_WORDS * 4) throw new RangeError('fw-cfg: the shared state is too small');
    this.lock = new SharedLock(state.shared, W_LOCK * 4);
    this.words = new Int32Array(state.shared);
  }

  /** Ports 0x510-0x511 (QEMU's combined register: any 1-byte read returns data, a 16-bit write selects). */
  readonly control: PortIoDevice = {
    name: 'fw-cfg',
    pioRead: (_offset, size) => (size === 1 ? this.lock.with(() => this.readDataByte()) : allOnes(size)),
    pioWrite: (offset, size, value) => {
      // 8-bit writes to the data register were removed from QEMU (2.4): ignored, as are other widths.
      if (offset === 0 && size === 2) this.lock.with(() => this.select(value & 0xffff));
    },
  };

  /** Ports 0x514-0x51b: the DMA address register and its signature. */
  readonly dma: PortIoDevice = {
    name: 'fw-cfg-dma',
    pioRead: (offset, size) => {
      let v = 0;
      for (let i = 0; i < size; i++) v |= (FW_CFG_DMA_SIGNATURE[offset + i] ?? 0xff) << (8 * i);
      return v >>> 0;
    },
    pioWrite: (offset, size, value) => {
      if (size !== 4) return; // QEMU takes 32-bit halves (or a 64-bit write, which ports cannot make)
      const half = bswap32(value >>> 0);
      if (offset === 0) this.lock.with(() => (this.words[W_DMA_HIGH] = half | 0));
      else if (offset === 4) this.lock.with(() => this.startDma(half));
    },
  };

  /** Selects `key`: the read offset starts again at 0. */
  select(key: number): void {
    this.words[W_SELECTOR] = key & 0xffff;
    this.words[W_OFFSET] = 0;
  }

  private current(): Uint8Array | undefined {
    const key = this.words[W_SELECTOR];
    if (key < 0) return undefined;
    // Architecture-local keys (bit 15) are their own items; bit 14 is ignored.
    return this.items.get(key & (FW_CFG_ARCH_LOCAL | FW_CFG_ENTRY_MASK));
  }

  private readDataByte(): number {
    const item = this.current();
    const offset = this.words[W_OFFSET] >>> 0;
    if (!item || offset >= item.length) return 0;
    this.words[W_OFFSET] = offset + 1;
    return item[offset];
  }

  /** The low half was written: run the transfer whose control structure is at high:low. */
  private startDma(low: number): void {
    const high = this.words[W_DMA_HIGH] >>> 0;
    this.words[W_DMA_HIGH] = 0; // as QEMU: the address register is cleared for the next transfer
    const at = high * 0x1_0000_0000 + low;
    if (!this.memory.contains(at, DMA_ACCESS_SIZE)) return; // nowhere to read it from or report to
    const access = this.memory.read(at, DMA_ACCESS_SIZE);
    const dv = new DataView(access.buffer);
    const control = dv.getUint32(0, false);
    let length = dv.getUint32(4, false);
    let address = Number(dv.getBigUint64(8, false)); // beyond 2^53 it is not RAM anyway: contains() says no
    if (control & FW_CFG_DMA_CTL_SELECT) this.select(control >>> 16);
    const read = (control & FW_CFG_DMA_CTL_READ) !== 0;
    const write = !read && (control & FW_CFG_DMA_CTL_WRITE) !== 0;
    if (!read && !write && (control & FW_CFG_DMA_CTL_SKIP) === 0) length = 0;
    let status = 0;
    const item = this.current();
    while (length > 0 && status === 0) {
      const offset = this.words[W_OFFSET] >>> 0;
      let n: number;
      if (!item || offset >= item.length) {
        // Past the end (or no item): reads give zeros, skips do nothing, the offset stays where it is.
        n = length;
        if (read) status = this.guestFill(address, n);
      } else {
        n = Math.min(length, item.length - offset);
        if (read) status = this.guestWrite(address, item.subarray(offset, offset + n));
        this.words[W_OFFSET] = offset + n;
      }
      if (write) status = FW_CFG_DMA_CTL_ERROR; // every item is read-only
      address += n;
      length -= n;
    }
    const done = new Uint8Array(4);
    new DataView(done.buffer).setUint32(0, status, false);
    this.memory.write(at, done); // inside RAM: checked above
  }

  private guestWrite(address: number, bytes: Uint8Array): number {
    return this.guarded(() => this.memory.write(address, bytes), address, bytes.length);
  }

  private guestFill(address: number, length: number): number {
    return this.guarded(() => this.memory.fill(address, length, 0), address, length);
  }

  /** Runs a guest-memory access; outside RAM it is the DMA error bit (nothing is written then). */
  private guarded(access: () => void, address: number, length: number): number {
    if (!this.memory.contains(address, length)) return FW_CFG_DMA_CTL_ERROR;
    try {
      access();
      return 0;
    } catch (e) {
      if (e instanceof GuestMemoryError) return FW_CFG_DMA_CTL_ERROR;
      throw e;
    }
  }

  saveRegisters(): { selector: number; offset: number; dmaAddressHigh: number } {
    return this.lock.with(() => ({
      selector: this.words[W_SELECTOR],
      offset: this.words[W_OFFSET] >>> 0,
      dmaAddressHigh: this.words[W_DMA_HIGH] >>> 0,
    }));
  }

  restoreRegisters(r: { selector: number; offset: number; dmaAddressHigh: number }): void {
    this.lock.with(() => {
      this.words[W_SELECTOR] = r.selector;
      this.words[W_OFFSET] = r.offset | 0;
      this.words[W_DMA_HIGH] = r.dmaAddressHigh | 0;
    });
  }
}

const allOnes = (size: number): number => (size === 4 ? 0xffff_ffff : (1 << (size * 8)) - 1);

const SNAPSHOT_VERSION = 1;

function checkWord(value: unknown, field: string, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max)
    throw new DeviceStateError('fw-cfg', `has '${field}' ${String(value)} outside ${min}..${max}`);
  return value;
}

export const fwCfgModel: DeviceModel<FwCfgState> = {
  kind: 'fw-cfg',
  summary: 'QEMU fw_cfg at ports 0x510-0x51b (with DMA): CPU count, memory map, boot order, ACPI for firmware',
  options: {},
  bus: 'platform',
  create: (_options, ctx) => createFwCfgState(ctx.machine),
  describe: () => ({
    acpi: [
      device(
        'FWCF',
        name('_HID', string('QEMU0002')),
        name('_STA', integer(0x0b)), // present, enabled, functioning; not shown in UI (as QEMU)
        name('_CRS', resourceTemplate(ioPort(FW_CFG_SELECTOR_PORT, FW_CFG_SELECTOR_PORT, 0x01, FW_CFG_IO_SIZE))),
      ),
    ],
  }),
  attach(state, ctx) {
    Atomics.store(new Int32Array(state.shared), W_SEALED, 1);
    const fwCfg = new FwCfg(state, fwCfgItems(state), ctx.memory);
    ctx.pio.register(FW_CFG_SELECTOR_PORT, 2, fwCfg.control);
    ctx.pio.register(FW_CFG_DMA_PORT, 8, fwCfg.dma);
    return {
      name: 'fw-cfg',
      saveState: () => ({ kind: 'fw-cfg', version: SNAPSHOT_VERSION, data: fwCfg.saveRegisters() }),
      restoreState(snapshot: DeviceSnapshot) {
        expectSnapshot('fw-cfg', snapshot, 'fw-cfg', SNAPSHOT_VERSION);
        const d = snapshot.data;
        fwCfg.restoreRegisters({
          selector: checkWord(d.selector, 'selector', -1, 0xffff),
          offset: checkWord(d.offset, 'offset', 0, 0xffff_ffff),
          dmaAddressHigh: checkWord(d.dmaAddressHigh, 'dmaAddressHigh', 0, 0xffff_ffff),
        });
      },
    };
  },
};
