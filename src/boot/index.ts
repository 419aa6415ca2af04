// Kernel loading: picks the boot protocol from the image the way QEMU does (a multiboot header in the first 8 KiB
// wins, then an ELF with a PVH entry note), validates the whole image against guest RAM, and only then writes the
// kernel, its modules and the boot information. Every refusal is a BootImageError naming the file and the problem.
import type { BootEntry, BootRequest } from './types.js';
import { isElf, parseElf } from './elf.js';
import { isBzImage, loadBzImage, type LinuxBootEntry } from './linux.js';
import { BootImageError } from './errors.js';
import { findMultibootHeader, loadMultiboot } from './multiboot.js';
import { loadPvh, probePvh } from './pvh.js';

export type { BootEntry, BootModule, BootRequest } from './types.js';

export function loadKernel(request: BootRequest): BootEntry | LinuxBootEntry {
  const kind = identifyKernel(request.image, request.imageName);
  switch (kind.protocol) {
    case 'multiboot':
      return loadMultiboot(request, kind.header);
    case 'pvh':
      return loadPvh(request, kind.elf);
    case 'linux':
      return loadBzImage(request);
  }
}

type KernelKind =
  | { readonly protocol: 'multiboot'; readonly header: NonNullable<ReturnType<typeof findMultibootHeader>['header']> }
  | { readonly protocol: 'pvh'; readonly elf: ReturnType<typeof parseElf> }
  | { readonly protocol: 'linux' };

/**
 * Which boot protocol an image speaks, decided from its headers alone (no guest memory needed), so a file that
 * is no kernel at all is refused before a VM is built. Throws BootImageError naming what was looked for.
 */
export function identifyKernel(image: Uint8Array, file: string): KernelKind {
  if (image.length === 0) throw new BootImageError(file, 'the file is empty');
  const search = findMultibootHeader(image);
  if (search.header) return { protocol: 'multiboot', header: search.header };

  const reasons: string[] = [];
  if (isElf(image)) {
    const elf = parseElf(image, file);
    const probe = probePvh(image, elf);
    if (probe.kind === 'entry') return { protocol: 'pvh', elf };
    reasons.push(
      probe.xenNotes > 0
        ? `it is an ELF${elf.class} file with Xen notes but no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY): a Xen PV-only kernel?`
        : `it is an ELF${elf.class} file without a PVH entry note (Xen, XEN_ELFNOTE_PHYS32_ENTRY)`,
    );
  } else if (isBzImage(image)) {
    return { protocol: 'linux' };
  } else {
    reasons.push('it is not an ELF file');
  }
  const bad = search.badChecksum;
  reasons.push(
    bad
      ? `the multiboot magic at offset ${bad.offset} has a bad checksum (magic + flags + checksum = 0x${bad.sum.toString(16)}, not 0)`
      : 'there is no multiboot header in its first 8 KiB',
  );
  throw new BootImageError(file, `not a multiboot or PVH ELF kernel: ${reasons.join('; ')}`);
}
