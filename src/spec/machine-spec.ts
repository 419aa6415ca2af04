// The machine spec: one plain JSON description of a VM — CPUs, memory, how it boots, its devices — that the
// CLI, the daemon and snapshot restore all produce, and the builder alone consumes. No CLI syntax, no file
// descriptors, nothing host-specific but paths. Validated by a JSON Schema (TypeBox); every error names the
// JSON path of the value at fault ("/devices/1/queues: …"); the check itself is validate.ts.
import { Type, type Static } from '@sinclair/typebox';
import { MAX_MEMORY, MIN_MEMORY } from '../arch/x86_64/layout.js';
import type { DeviceOptions } from '../devices/model.js';

export const MACHINE_SPEC_VERSION = 1;
export const MAX_VCPUS = 64;

const Path = Type.String({ minLength: 1 });

const KernelBoot = Type.Object(
  {
    kind: Type.Literal('kernel'),
    kernel: Path,
    initrd: Type.Optional(Type.Array(Path)),
    cmdline: Type.Optional(Type.String()),
  },
  { additionalProperties: false, description: 'direct kernel boot: PVH ELF, multiboot or Linux bzImage' },
);

const FirmwareBoot = Type.Object(
  {
    kind: Type.Literal('firmware'),
    firmware: Path,
    /** Which kinds of boot device the firmware tries first (fw_cfg "bootorder"); the rest follow. */
    bootOrder: Type.Optional(
      Type.Array(Type.Union([Type.Literal('cdrom'), Type.Literal('disk'), Type.Literal('net')]), { maxItems: 3 }),
    ),
    /** The firmware's debug log (port 0x402, SeaBIOS's log), appended to a file. */
    log: Type.Optional(Path),
  },
  { additionalProperties: false, description: 'firmware boot: a BIOS/UEFI image started at the reset vector' },
);

const Serial = Type.Union([
  Type.Object({ output: Type.Literal('stdio') }, { additionalProperties: false }),
  Type.Object({ output: Type.Literal('file'), path: Path }, { additionalProperties: false }),
  Type.Object({ output: Type.Literal('none') }, { additionalProperties: false }),
]);

/** The whole spec; each device entry is checked against its own kind's schema afterwards (see validate). */
export const MachineSpecSchema = Type.Object(
  {
    version: Type.Literal(MACHINE_SPEC_VERSION),
    cpus: Type.Integer({ minimum: 1, maximum: MAX_VCPUS }),
    topology: Type.Optional(
      Type.Object(
        {
          sockets: Type.Integer({ minimum: 1 }),
          cores: Type.Integer({ minimum: 1 }),
          threads: Type.Integer({ minimum: 1 }),
        },
        { additionalProperties: false },
      ),
    ),
    cpuProfile: Type.Optional(Type.Union([Type.Literal('host'), Type.Literal('compat')])),
    memory: Type.Integer({ minimum: MIN_MEMORY, maximum: MAX_MEMORY, multipleOf: 4096, description: 'bytes' }),
    boot: Type.Union([KernelBoot, FirmwareBoot]),
    serial: Type.Optional(Serial),
    devices: Type.Array(Type.Object({ kind: Type.String() }, { additionalProperties: true })),
  },
  { additionalProperties: false },
);

export type MachineSpec = Omit<Static<typeof MachineSpecSchema>, 'devices'> & {
  readonly devices: readonly DeviceOptions[];
};
export type KernelBootSpec = Static<typeof KernelBoot>;
export type FirmwareBootSpec = Static<typeof FirmwareBoot>;

/** A spec that does not describe a VM Partita can build: one line naming the JSON path. */
export class SpecError extends Error {
  constructor(
    readonly path: string,
    problem: string,
  ) {
    super(`${path || '/'}: ${problem}`);
    this.name = 'SpecError';
  }
}

/** The checks beyond the schema's reach: the topology multiplies out to the vCPU count. */
export function checkMachineSpec(spec: MachineSpec): MachineSpec {
  if (spec.topology) {
    const { sockets, cores, threads } = spec.topology;
    if (sockets * cores * threads !== spec.cpus)
      throw new SpecError(
        '/topology',
        `sockets=${sockets},cores=${cores},threads=${threads} gives ${sockets * cores * threads} vCPUs, not cpus ${spec.cpus}`,
      );
  }
  return spec;
}
