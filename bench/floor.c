/* The floor for the exit benchmark: the least a KVM VMM can do. Boots a PVH ELF32 guest (PT_LOAD segments,
 * hvm_start_info with a memory map and the command line, 32-bit flat protected mode) and runs KVM_RUN in a
 * loop: COM1 THR bytes go to stdout, LSR reads say "ready", a write of v to port 0xF4 exits with (v<<1)|1,
 * every other port access is ignored. Usage: floor KERNEL [CMDLINE] */
#include <elf.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define MEM (128u << 20)
#define DIE(...) do { fprintf(stderr, "floor: " __VA_ARGS__); fputc('\n', stderr); exit(2); } while (0)

int main(int argc, char **argv) {
  if (argc < 2) DIE("usage: floor KERNEL [CMDLINE]");
  int kfd = open(argv[1], O_RDONLY);
  struct stat st;
  if (kfd < 0 || fstat(kfd, &st) < 0) DIE("cannot open %s", argv[1]);
  uint8_t *img = mmap(0, st.st_size, PROT_READ, MAP_PRIVATE, kfd, 0);
  Elf32_Ehdr *eh = (Elf32_Ehdr *)img;
  if (memcmp(eh->e_ident, ELFMAG, 4) || eh->e_ident[EI_CLASS] != ELFCLASS32) DIE("not an ELF32 kernel");

  int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  int vm = ioctl(kvm, KVM_CREATE_VM, 0);
  if (vm < 0) DIE("KVM_CREATE_VM");
  ioctl(vm, KVM_SET_TSS_ADDR, 0xfeffd000);
  if (ioctl(vm, KVM_CREATE_IRQCHIP, 0) < 0) DIE("KVM_CREATE_IRQCHIP");
  uint8_t *ram = mmap(0, MEM, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  struct kvm_userspace_memory_region region = {.slot = 0, .guest_phys_addr = 0, .memory_size = MEM, .userspace_addr = (uint64_t)ram};
  if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) DIE("KVM_SET_USER_MEMORY_REGION");

  uint32_t entry = 0;
  for (int i = 0; i < eh->e_phnum; i++) {
    Elf32_Phdr *ph = (Elf32_Phdr *)(img + eh->e_phoff + i * eh->e_phentsize);
    if (ph->p_type == PT_LOAD) {
      if (ph->p_paddr + ph->p_memsz > MEM) DIE("segment outside RAM");
      memcpy(ram + ph->p_paddr, img + ph->p_offset, ph->p_filesz);
    } else if (ph->p_type == PT_NOTE) {
      for (uint32_t at = ph->p_offset; at + 12 <= ph->p_offset + ph->p_filesz;) {
        Elf32_Nhdr *n = (Elf32_Nhdr *)(img + at);
        uint32_t desc = at + 12 + ((n->n_namesz + 3) & ~3u);
        if (n->n_type == 18 && !memcmp(img + at + 12, "Xen", 4)) entry = *(uint32_t *)(img + desc);
        at = desc + ((n->n_descsz + 3) & ~3u);
      }
    }
  }
  if (!entry) DIE("no PVH note");

  /* hvm_start_info at 0x6000, memory map at 0x7000, cmdline at 0x20000 */
  const char *cmdline = argc > 2 ? argv[2] : "";
  strcpy((char *)ram + 0x20000, cmdline);
  uint64_t *mm = (uint64_t *)(ram + 0x7000);
  mm[0] = 0; mm[1] = 0x9fc00; mm[2] = 1;
  mm[3] = 0x100000; mm[4] = MEM - 0x100000; mm[5] = 1;
  uint32_t *si = (uint32_t *)(ram + 0x6000);
  si[0] = 0x336ec578; si[1] = 1;
  *(uint64_t *)(ram + 0x6000 + 24) = 0x20000;
  *(uint64_t *)(ram + 0x6000 + 40) = 0x7000;
  si[12] = 2;

  int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
  int runsz = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
  struct kvm_run *run = mmap(0, runsz, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
  struct { struct kvm_cpuid2 h; struct kvm_cpuid_entry2 e[256]; } cpuid = {.h.nent = 256};
  if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, &cpuid) < 0 || ioctl(vcpu, KVM_SET_CPUID2, &cpuid) < 0) DIE("CPUID");
  struct kvm_sregs sregs;
  ioctl(vcpu, KVM_GET_SREGS, &sregs);
  struct kvm_segment code = {.base = 0, .limit = 0xffffffff, .selector = 0x10, .type = 0xb, .present = 1, .db = 1, .s = 1, .g = 1};
  struct kvm_segment data = code;
  data.selector = 0x18; data.type = 3;
  sregs.cs = code; sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data;
  sregs.tr = (struct kvm_segment){.limit = 0x67, .selector = 0x20, .type = 0xb, .present = 1};
  sregs.cr0 = 0x11; sregs.cr4 = 0; sregs.efer = 0;
  ioctl(vcpu, KVM_SET_SREGS, &sregs);
  struct kvm_regs regs = {.rip = entry, .rbx = 0x6000, .rflags = 2};
  ioctl(vcpu, KVM_SET_REGS, &regs);

  for (;;) {
    if (ioctl(vcpu, KVM_RUN, 0) < 0) DIE("KVM_RUN");
    if (run->exit_reason != KVM_EXIT_IO) DIE("exit reason %u", run->exit_reason);
    uint8_t *d = (uint8_t *)run + run->io.data_offset;
    if (run->io.direction == KVM_EXIT_IO_OUT) {
      if (run->io.port == 0xf4) exit(((*(uint32_t *)d << 1) | 1) & 0xff);
      if (run->io.port == 0x3f8) fwrite(d, 1, run->io.count, stdout);
    } else {
      memset(d, run->io.port == 0x3fd ? 0x60 : 0xff, run->io.size * run->io.count);
      if (run->io.port == 0x3fd) for (uint32_t i = 0; i < run->io.count; i++) d[i * run->io.size] = 0x60;
    }
  }
}
