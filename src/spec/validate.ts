// Validation of a machine spec from outside (a file, the daemon's API) against its JSON Schema and each device
// entry against its kind's schema in the registry. Every error names the JSON path of the value at fault.
import { Type, type TObject, type TSchema } from '@sinclair/typebox';
import { Value, type ValueError } from '@sinclair/typebox/value';
import { statSync } from 'node:fs';
import { MAX_MEMORY, MIN_MEMORY } from '../arch/x86_64/layout.js';
import { formatSize } from '../base/units.js';
import { deviceRegistry, type DeviceRegistry } from '../devices/registry.js';
import { checkMachineSpec, MachineSpecSchema, SpecError, type MachineSpec } from './machine-spec.js';

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
  refuseSharedImages(checkMachineSpec(spec), registry);
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
function refuseSharedImages(spec: MachineSpec, registry: DeviceRegistry): void {
  const seen = new Map<string, { at: string; image: string }>();
  spec.devices.forEach((d, i) => {
    for (const image of registry.get(d.kind)?.diskImages?.(d) ?? []) {
      const at = d.path === image ? `/devices/${i}/path` : `/devices/${i}`;
      let key = `path:${image}`;
      try {
        const st = statSync(image);
        key = `${st.dev}:${st.ino}`;
      } catch {
        // missing files are named when the device opens
      }
      const first = seen.get(key);
      if (first !== undefined)
        throw new SpecError(
          at,
          first.image === image
            ? `disk image '${image}' is given twice (first at ${first.at})`
            : `'${image}' is the same file as ${first.at} ('${first.image}')`,
        );
      seen.set(key, { at, image });
    }
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
