// The machine spec: one plain JSON description of a VM — CPUs, memory, how it boots, its devices — that the
// CLI, the daemon and snapshot restore all produce, and the builder alone consumes. No CLI syntax, no file
// descriptors, nothing host-specific but paths. Validated by a JSON Schema (TypeBox); every error names the
// JSON path of the value at fault ("/devices/1/queues: …").
import { Type, type Static, type TObject, type TSchema } from '@sinclair/typebox';
import { Value, type ValueError } from '@sinclair/typebox/value';
import { statSync } from 'node:fs';
import { MAX_MEMORY, MIN_MEMORY } from '../arch/x86_64/layout.js';
import { formatSize } from '../base/units.js';
import { deviceRegistry, type DeviceRegistry } from '../devices/registry.js';
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
  { kind: Type.Literal('firmware'), firmware: Path },
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

/** A device entry's full schema: its kind plus the model's options, nothing else. */
function deviceSchema(kind: string, registry: DeviceRegistry): TObject | undefined {
  const model = registry.get(kind);
  if (!model) return undefined;
  return Type.Object({ kind: Type.Literal(kind), ...model.options }, { additionalProperties: false });
}

/** The first error TypeBox finds, said plainly: unknown keys by name, unions by what they accept. */
function firstError(schema: TSchema, value: unknown, prefix = ''): SpecError | undefined {
  const errors = [...Value.Errors(schema, value)];
  if (errors.length === 0) return undefined;
  // Prefer the deepest error: a union reports "expected union value" at its root and the reasons below it.
  const best = errors.reduce((a, b) => (b.path.length > a.path.length ? b : a));
  return new SpecError(prefix + best.path, describe(best));
}

function describe(e: ValueError): string {
  if (e.schema.additionalProperties === false && e.message.includes('Unexpected property')) {
    return `unknown key`;
  }
  if (e.path.endsWith('/memory') && typeof e.value === 'number') {
    if (e.value > MAX_MEMORY) return `${formatSize(e.value)} is larger than the ${formatSize(MAX_MEMORY)} limit`;
    if (e.value < MIN_MEMORY) return `${formatSize(e.value)} is smaller than the ${formatSize(MIN_MEMORY)} minimum`;
    if (e.value % 4096 !== 0) return 'must be a whole number of 4 KiB pages';
  }
  return `${e.message.replace(/^Expected/, 'expected')}${e.value === undefined ? '' : ` (got ${JSON.stringify(e.value)})`}`;
}

/** Checks `json` against the schema and every device against its kind; returns it typed, or throws SpecError. */
export function validateMachineSpec(json: unknown, registry: DeviceRegistry = deviceRegistry): MachineSpec {
  // Unknown keys are reported by name before anything else: they are the commonest mistake in a hand-written spec.
  const unknown = unknownKey(MachineSpecSchema, json, '');
  if (unknown) throw unknown;
  const error = firstError(MachineSpecSchema, json);
  if (error) throw error;
  const spec = json as MachineSpec;
  spec.devices.forEach((d, i) => {
    const schema = deviceSchema(d.kind, registry);
    if (!schema)
      throw new SpecError(
        `/devices/${i}/kind`,
        `unknown device kind '${d.kind}' (known: ${registry.kinds.filter((k) => registry.get(k)!.bus === 'pci').join(', ')})`,
      );
    const bad = unknownKey(schema, d, `/devices/${i}`) ?? firstError(schema, d, `/devices/${i}`);
    if (bad) throw bad;
  });
  if (spec.topology) {
    const { sockets, cores, threads } = spec.topology;
    if (sockets * cores * threads !== spec.cpus)
      throw new SpecError(
        '/topology',
        `sockets=${sockets},cores=${cores},threads=${threads} gives ${sockets * cores * threads} vCPUs, not cpus ${spec.cpus}`,
      );
  }
  refuseSharedImages(spec);
  return spec;
}

/** An object key the schema does not allow, at any depth the schema describes as an object. */
function unknownKey(schema: TSchema, value: unknown, path: string): SpecError | undefined {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return undefined;
  const variants = (schema as { anyOf?: TSchema[] }).anyOf;
  if (variants) {
    // A union of objects told apart by a literal (kind, output): check the variant the value names.
    const chosen = variants.find((v) =>
      Object.entries((v as { properties?: Record<string, TSchema> }).properties ?? {}).some(
        ([key, p]) => p.const !== undefined && (value as Record<string, unknown>)[key] === p.const,
      ),
    );
    return chosen ? unknownKey(chosen, value, path) : undefined;
  }
  const props = (schema as { properties?: Record<string, TSchema> }).properties;
  if (!props || schema.additionalProperties !== false) return undefined;
  for (const key of Object.keys(value)) {
    if (!(key in props)) return new SpecError(`${path}/${key}`, `unknown key '${key}'`);
    const sub = unknownKey(props[key], (value as Record<string, unknown>)[key], `${path}/${key}`);
    if (sub) return sub;
  }
  return undefined;
}

/** Two disks on one image would lock against each other (or corrupt it): named by both JSON paths. */
function refuseSharedImages(spec: MachineSpec): void {
  const seen = new Map<string, number>();
  spec.devices.forEach((d, i) => {
    if (typeof d.path !== 'string' || d.kind !== 'virtio-blk') return;
    let key = `path:${d.path}`;
    try {
      const st = statSync(d.path);
      key = `${st.dev}:${st.ino}`;
    } catch {
      // missing files are named when the device opens
    }
    const first = seen.get(key);
    if (first !== undefined) {
      const same = spec.devices[first].path === d.path;
      throw new SpecError(
        `/devices/${i}/path`,
        same
          ? `disk image '${d.path}' is already used by /devices/${first}`
          : `'${d.path}' is the same file as /devices/${first}/path ('${String(spec.devices[first].path)}')`,
      );
    }
    seen.set(key, i);
  });
}

/** Reads and validates a spec file: JSON errors and schema errors alike come back as one SpecError line. */
export function parseMachineSpec(text: string, registry: DeviceRegistry = deviceRegistry): MachineSpec {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new SpecError('', `not valid JSON: ${(e as Error).message}`);
  }
  return validateMachineSpec(json, registry);
}
