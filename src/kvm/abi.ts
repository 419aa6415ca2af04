// The KVM userspace ABI for x86-64, as declared in <linux/kvm.h> and <asm/kvm.h>: ioctl numbers, constants
// and struct layouts. This is the only place these numbers live; test/unit/kvm-abi.test.ts compiles a C
// program against the installed headers and checks every number, size and offset here.

const KVMIO = 0xae;
const IOC_NONE = 0;
const IOC_WRITE = 1;
const IOC_READ = 2;

function ioc(dir: number, type: number, nr: number, size: number): number {
  // Computed in floating point so bit 31 (READ) does not turn the number negative.
  return dir * 2 ** 30 + size * 2 ** 16 + type * 2 ** 8 + nr;
}
const io = (nr: number): number => ioc(IOC_NONE, KVMIO, nr, 0);
const ior = (nr: number, size: number): number => ioc(IOC_READ, KVMIO, nr, size);
const iow = (nr: number, size: number): number => ioc(IOC_WRITE, KVMIO, nr, size);
const iowr = (nr: number, size: number): number => ioc(IOC_READ | IOC_WRITE, KVMIO, nr, size);

/** A C struct's layout: total size and each field's byte offset and size. */
export interface StructLayout<F extends string> {
  readonly name: string;
  readonly size: number;
  readonly fields: { readonly [K in F]: { readonly offset: number; readonly size: number } };
}

function layout<F extends string>(
  name: string,
  size: number,
  fields: { [K in F]: readonly [offset: number, size: number] },
): StructLayout<F> {
  const out = {} as { [K in F]: { offset: number; size: number } };
  for (const key of Object.keys(fields) as F[]) {
    const [offset, fieldSize] = fields[key];
    out[key] = { offset, size: fieldSize };
  }
  return { name, size, fields: out };
}

export const kvm_userspace_memory_region = layout('kvm_userspace_memory_region', 32, {
  slot: [0, 4],
  flags: [4, 4],
  guest_phys_addr: [8, 8],
  memory_size: [16, 8],
  userspace_addr: [24, 8],
});

export const kvm_regs = layout('kvm_regs', 144, {
  rax: [0, 8],
  rbx: [8, 8],
  rcx: [16, 8],
  rdx: [24, 8],
  rsi: [32, 8],
  rdi: [40, 8],
  rsp: [48, 8],
  rbp: [56, 8],
  r8: [64, 8],
  r9: [72, 8],
  r10: [80, 8],
  r11: [88, 8],
  r12: [96, 8],
  r13: [104, 8],
  r14: [112, 8],
  r15: [120, 8],
  rip: [128, 8],
  rflags: [136, 8],
});
export type RegName = keyof typeof kvm_regs.fields;

export const kvm_segment = layout('kvm_segment', 24, {
  base: [0, 8],
  limit: [8, 4],
  selector: [12, 2],
  type: [14, 1],
  present: [15, 1],
  dpl: [16, 1],
  db: [17, 1],
  s: [18, 1],
  l: [19, 1],
  g: [20, 1],
  avl: [21, 1],
  unusable: [22, 1],
  padding: [23, 1],
});

export const kvm_dtable = layout('kvm_dtable', 16, { base: [0, 8], limit: [8, 2] });

export const kvm_sregs = layout('kvm_sregs', 312, {
  cs: [0, 24],
  ds: [24, 24],
  es: [48, 24],
  fs: [72, 24],
  gs: [96, 24],
  ss: [120, 24],
  tr: [144, 24],
  ldt: [168, 24],
  gdt: [192, 16],
  idt: [208, 16],
  cr0: [224, 8],
  cr2: [232, 8],
  cr3: [240, 8],
  cr4: [248, 8],
  cr8: [256, 8],
  efer: [264, 8],
  apic_base: [272, 8],
  interrupt_bitmap: [280, 32],
});
export type SegmentName = 'cs' | 'ds' | 'es' | 'fs' | 'gs' | 'ss' | 'tr' | 'ldt';

export const kvm_run = layout('kvm_run', 2352 /* struct size; the mapping is KVM_GET_VCPU_MMAP_SIZE */, {
  request_interrupt_window: [0, 1],
  immediate_exit: [1, 1],
  exit_reason: [8, 4],
  ready_for_interrupt_injection: [12, 1],
  if_flag: [13, 1],
  flags: [14, 2],
  cr8: [16, 8],
  apic_base: [24, 8],
  'io.direction': [32, 1],
  'io.size': [33, 1],
  'io.port': [34, 2],
  'io.count': [36, 4],
  'io.data_offset': [40, 8],
  'mmio.phys_addr': [32, 8],
  'mmio.data': [40, 8],
  'mmio.len': [48, 4],
  'mmio.is_write': [52, 1],
  'fail_entry.hardware_entry_failure_reason': [32, 8],
  'fail_entry.cpu': [40, 4],
  'internal.suberror': [32, 4],
  'internal.ndata': [36, 4],
  'internal.data': [40, 128],
  'system_event.type': [32, 4],
  'system_event.ndata': [36, 4],
  'hw.hardware_exit_reason': [32, 8],
  'ex.exception': [32, 4],
  'ex.error_code': [36, 4],
});

export const kvm_cpuid_entry2 = layout('kvm_cpuid_entry2', 40, {
  function: [0, 4],
  index: [4, 4],
  flags: [8, 4],
  eax: [12, 4],
  ebx: [16, 4],
  ecx: [20, 4],
  edx: [24, 4],
});
export const kvm_cpuid2 = layout('kvm_cpuid2', 8, { nent: [0, 4] });

export const kvm_msr_entry = layout('kvm_msr_entry', 16, { index: [0, 4], reserved: [4, 4], data: [8, 8] });
export const kvm_msrs = layout('kvm_msrs', 8, { nmsrs: [0, 4] });
export const kvm_msr_list = layout('kvm_msr_list', 4, { nmsrs: [0, 4] });

export const kvm_dirty_log = layout('kvm_dirty_log', 16, { slot: [0, 4], dirty_bitmap: [8, 8] });

export const kvm_irq_level = layout('kvm_irq_level', 8, { irq: [0, 4], level: [4, 4] });

export const kvm_irq_routing_entry = layout('kvm_irq_routing_entry', 48, {
  gsi: [0, 4],
  type: [4, 4],
  flags: [8, 4],
  'u.irqchip.irqchip': [16, 4],
  'u.irqchip.pin': [20, 4],
  'u.msi.address_lo': [16, 4],
  'u.msi.address_hi': [20, 4],
  'u.msi.data': [24, 4],
  'u.msi.devid': [28, 4],
});
export const kvm_irq_routing = layout('kvm_irq_routing', 8, { nr: [0, 4], flags: [4, 4] });

export const kvm_irqfd = layout('kvm_irqfd', 32, { fd: [0, 4], gsi: [4, 4], flags: [8, 4], resamplefd: [12, 4] });

export const kvm_ioeventfd = layout('kvm_ioeventfd', 64, {
  datamatch: [0, 8],
  addr: [8, 8],
  len: [16, 4],
  fd: [20, 4],
  flags: [24, 4],
});

export const kvm_lapic_state = layout('kvm_lapic_state', 1024, { regs: [0, 1024] });
export const kvm_pit_config = layout('kvm_pit_config', 64, { flags: [0, 4] });
export const kvm_mp_state = layout('kvm_mp_state', 4, { mp_state: [0, 4] });
/** One in-kernel interrupt controller's state (PIC master/slave or IOAPIC): saved at power-on, loaded on reset. */
export const kvm_irqchip = layout('kvm_irqchip', 520, { chip_id: [0, 4], pad: [4, 4], chip: [8, 512] });
/** The in-kernel PIT's state (three channels, flags). */
export const kvm_pit_state2 = layout('kvm_pit_state2', 112, { channels: [0, 72], flags: [72, 4], reserved: [76, 36] });
/** Events a vCPU has pending or in flight (a diagnostic read: an interrupt injected but not yet taken). */
export const kvm_vcpu_events = layout('kvm_vcpu_events', 64, {
  'exception.injected': [0, 1],
  'exception.nr': [1, 1],
  'interrupt.injected': [8, 1],
  'interrupt.nr': [9, 1],
  'interrupt.shadow': [11, 1],
  'nmi.injected': [12, 1],
  'nmi.pending': [13, 1],
  'nmi.masked': [14, 1],
  flags: [20, 4],
});
export const kvm_msi = layout('kvm_msi', 32, {
  address_lo: [0, 4],
  address_hi: [4, 4],
  data: [8, 4],
  flags: [12, 4],
  devid: [16, 4],
});
export const kvm_translation = layout('kvm_translation', 24, {
  linear_address: [0, 8],
  physical_address: [8, 8],
  valid: [16, 1],
  writeable: [17, 1],
  usermode: [18, 1],
});
export const kvm_enable_cap = layout('kvm_enable_cap', 104, { cap: [0, 4], flags: [4, 4], args: [8, 32] });
/** A guest-physical range whose writes KVM queues in the coalesced MMIO ring instead of exiting. */
export const kvm_coalesced_mmio_zone = layout('kvm_coalesced_mmio_zone', 16, {
  addr: [0, 8],
  size: [8, 4],
  pio: [12, 4],
});
/** One queued write in the ring. */
export const kvm_coalesced_mmio = layout('kvm_coalesced_mmio', 24, {
  phys_addr: [0, 8],
  len: [8, 4],
  pio: [12, 4],
  data: [16, 8],
});
/** The ring's head (entries follow): KVM appends at `last`, userspace consumes from `first`. */
export const kvm_coalesced_mmio_ring = layout('kvm_coalesced_mmio_ring', 8, { first: [0, 4], last: [4, 4] });

/** Every layout, for the header check. */
export const allLayouts: readonly StructLayout<string>[] = [
  kvm_coalesced_mmio_zone,
  kvm_coalesced_mmio,
  kvm_coalesced_mmio_ring,
  kvm_irqchip,
  kvm_pit_state2,
  kvm_vcpu_events,
  kvm_userspace_memory_region,
  kvm_dirty_log,
  kvm_regs,
  kvm_segment,
  kvm_dtable,
  kvm_sregs,
  kvm_run,
  kvm_cpuid_entry2,
  kvm_cpuid2,
  kvm_msr_entry,
  kvm_msrs,
  kvm_msr_list,
  kvm_irq_level,
  kvm_irq_routing_entry,
  kvm_irq_routing,
  kvm_irqfd,
  kvm_ioeventfd,
  kvm_lapic_state,
  kvm_pit_config,
  kvm_mp_state,
  kvm_msi,
  kvm_enable_cap,
  kvm_translation,
];

export const ioctls = {
  KVM_GET_API_VERSION: io(0x00),
  KVM_CREATE_VM: io(0x01),
  KVM_GET_MSR_INDEX_LIST: iowr(0x02, kvm_msr_list.size),
  KVM_CHECK_EXTENSION: io(0x03),
  KVM_GET_VCPU_MMAP_SIZE: io(0x04),
  KVM_GET_SUPPORTED_CPUID: iowr(0x05, kvm_cpuid2.size),
  KVM_CREATE_VCPU: io(0x41),
  KVM_SET_USER_MEMORY_REGION: iow(0x46, kvm_userspace_memory_region.size),
  KVM_GET_DIRTY_LOG: iow(0x42, kvm_dirty_log.size),
  KVM_SET_TSS_ADDR: io(0x47),
  KVM_SET_IDENTITY_MAP_ADDR: iow(0x48, 8),
  KVM_CREATE_IRQCHIP: io(0x60),
  KVM_IRQ_LINE: iow(0x61, kvm_irq_level.size),
  KVM_IRQ_LINE_STATUS: iowr(0x67, kvm_irq_level.size),
  KVM_REGISTER_COALESCED_MMIO: iow(0x67, kvm_coalesced_mmio_zone.size),
  KVM_UNREGISTER_COALESCED_MMIO: iow(0x68, kvm_coalesced_mmio_zone.size),
  KVM_SET_GSI_ROUTING: iow(0x6a, kvm_irq_routing.size),
  KVM_IRQFD: iow(0x76, kvm_irqfd.size),
  KVM_CREATE_PIT2: iow(0x77, kvm_pit_config.size),
  KVM_IOEVENTFD: iow(0x79, kvm_ioeventfd.size),
  KVM_RUN: io(0x80),
  KVM_GET_REGS: ior(0x81, kvm_regs.size),
  KVM_SET_REGS: iow(0x82, kvm_regs.size),
  KVM_GET_SREGS: ior(0x83, kvm_sregs.size),
  KVM_SET_SREGS: iow(0x84, kvm_sregs.size),
  KVM_TRANSLATE: iowr(0x85, kvm_translation.size),
  KVM_GET_MSRS: iowr(0x88, kvm_msrs.size),
  KVM_SET_MSRS: iow(0x89, kvm_msrs.size),
  KVM_GET_LAPIC: ior(0x8e, kvm_lapic_state.size),
  KVM_SET_LAPIC: iow(0x8f, kvm_lapic_state.size),
  KVM_SET_CPUID2: iow(0x90, kvm_cpuid2.size),
  KVM_GET_CPUID2: iowr(0x91, kvm_cpuid2.size),
  KVM_GET_MP_STATE: ior(0x98, kvm_mp_state.size),
  KVM_SET_MP_STATE: iow(0x99, kvm_mp_state.size),
  KVM_GET_IRQCHIP: iowr(0x62, kvm_irqchip.size),
  KVM_SET_IRQCHIP: ior(0x63, kvm_irqchip.size),
  KVM_GET_PIT2: ior(0x9f, kvm_pit_state2.size),
  KVM_SET_PIT2: iow(0xa0, kvm_pit_state2.size),
  KVM_GET_VCPU_EVENTS: ior(0x9f, kvm_vcpu_events.size),
  KVM_GET_TSC_KHZ: io(0xa3),
  KVM_SET_TSC_KHZ: io(0xa2),
  KVM_ENABLE_CAP: iow(0xa3, kvm_enable_cap.size),
  KVM_SIGNAL_MSI: iow(0xa5, kvm_msi.size),
} as const;
export type IoctlName = keyof typeof ioctls;

/** The API version every KVM since Linux 2.6.22 reports. */
export const KVM_API_VERSION = 12;

export const exitReasons = {
  KVM_EXIT_UNKNOWN: 0,
  KVM_EXIT_EXCEPTION: 1,
  KVM_EXIT_IO: 2,
  KVM_EXIT_HYPERCALL: 3,
  KVM_EXIT_DEBUG: 4,
  KVM_EXIT_HLT: 5,
  KVM_EXIT_MMIO: 6,
  KVM_EXIT_IRQ_WINDOW_OPEN: 7,
  KVM_EXIT_SHUTDOWN: 8,
  KVM_EXIT_FAIL_ENTRY: 9,
  KVM_EXIT_INTR: 10,
  KVM_EXIT_SET_TPR: 11,
  KVM_EXIT_TPR_ACCESS: 12,
  KVM_EXIT_NMI: 16,
  KVM_EXIT_INTERNAL_ERROR: 17,
  KVM_EXIT_SYSTEM_EVENT: 24,
  KVM_EXIT_IOAPIC_EOI: 26,
  KVM_EXIT_X86_RDMSR: 29,
  KVM_EXIT_X86_WRMSR: 30,
  KVM_EXIT_X86_BUS_LOCK: 33,
  KVM_EXIT_NOTIFY: 37,
  KVM_EXIT_MEMORY_FAULT: 39,
} as const;

const exitNames = new Map<number, string>(Object.entries(exitReasons).map(([k, v]) => [v, k]));
export function exitReasonName(reason: number): string {
  return exitNames.get(reason) ?? `unknown exit reason ${reason}`;
}

export const KVM_EXIT_IO_IN = 0;
export const KVM_EXIT_IO_OUT = 1;

export const internalErrorSuberrors = {
  KVM_INTERNAL_ERROR_EMULATION: 1,
  KVM_INTERNAL_ERROR_SIMUL_EX: 2,
  KVM_INTERNAL_ERROR_DELIVERY_EV: 3,
  KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON: 4,
} as const;

export const systemEventTypes = {
  KVM_SYSTEM_EVENT_SHUTDOWN: 1,
  KVM_SYSTEM_EVENT_RESET: 2,
  KVM_SYSTEM_EVENT_CRASH: 3,
} as const;

export const mpStates = {
  KVM_MP_STATE_RUNNABLE: 0,
  KVM_MP_STATE_UNINITIALIZED: 1,
  KVM_MP_STATE_INIT_RECEIVED: 2,
  KVM_MP_STATE_HALTED: 3,
  KVM_MP_STATE_SIPI_RECEIVED: 4,
} as const;

export const caps = {
  KVM_CAP_IRQCHIP: 0,
  KVM_CAP_HLT: 1,
  KVM_CAP_USER_MEMORY: 3,
  KVM_CAP_SET_TSS_ADDR: 4,
  KVM_CAP_EXT_CPUID: 7,
  KVM_CAP_NR_VCPUS: 9,
  KVM_CAP_NR_MEMSLOTS: 10,
  KVM_CAP_PIT: 11,
  KVM_CAP_MP_STATE: 14,
  KVM_CAP_COALESCED_MMIO: 15,
  KVM_CAP_IRQ_ROUTING: 25,
  KVM_CAP_IRQFD: 32,
  KVM_CAP_PIT2: 33,
  KVM_CAP_IOEVENTFD: 36,
  KVM_CAP_SET_IDENTITY_MAP_ADDR: 37,
  KVM_CAP_ADJUST_CLOCK: 39,
  KVM_CAP_INTERNAL_ERROR_DATA: 40,
  KVM_CAP_VCPU_EVENTS: 41,
  KVM_CAP_TSC_CONTROL: 60,
  KVM_CAP_GET_TSC_KHZ: 61,
  KVM_CAP_MAX_VCPUS: 66,
  KVM_CAP_SIGNAL_MSI: 77,
  KVM_CAP_READONLY_MEM: 81,
  KVM_CAP_MAX_VCPU_ID: 128,
  KVM_CAP_IMMEDIATE_EXIT: 136,
} as const;
export type CapName = keyof typeof caps;

export const KVM_PIT_SPEAKER_DUMMY = 1;
export const KVM_IRQCHIP_PIC_MASTER = 0;
export const KVM_IRQCHIP_PIC_SLAVE = 1;
export const KVM_IRQCHIP_IOAPIC = 2;
export const KVM_IRQ_ROUTING_IRQCHIP = 1;
export const KVM_IRQ_ROUTING_MSI = 2;
export const KVM_IRQFD_FLAG_DEASSIGN = 1;
export const KVM_IOEVENTFD_FLAG_DATAMATCH = 1;
export const KVM_IOEVENTFD_FLAG_PIO = 2;
export const KVM_IOEVENTFD_FLAG_DEASSIGN = 4;
export const KVM_MEM_LOG_DIRTY_PAGES = 1;
export const KVM_MEM_READONLY = 2;
