// The daemon API's shapes (docs/api.md) as TypeBox schemas: fastify validates every body against them (unknown
// fields refused) and @fastify/swagger turns them into /api/openapi.json. The types the CLI and the server use
// come from here too.
import { Type, type Static } from '@sinclair/typebox';
import { MachineSpecSchema, MAX_VCPUS, type MachineSpec } from '../spec/machine-spec.js';
import { MAX_MEMORY, MIN_MEMORY } from '../arch/x86_64/layout.js';
import type { DeviceOptions } from '../devices/model.js';

/** A VM name: a file name in the library, never a path. */
export const VM_NAME_PATTERN = '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$';

export const VmStateSchema = Type.Union(
  ['stopped', 'starting', 'running', 'paused', 'stopping', 'crashed'].map((s) => Type.Literal(s)),
);
export type VmState = 'stopped' | 'starting' | 'running' | 'paused' | 'stopping' | 'crashed';

export const OsSchema = Type.Union([Type.Literal('linux'), Type.Literal('windows'), Type.Literal('other')]);
export type GuestOs = Static<typeof OsSchema>;

const DeviceOptionsSchema = Type.Object(
  { kind: Type.String({ minLength: 1 }) },
  { additionalProperties: true, description: "a device entry of the machine spec: its kind plus the model's options" },
);

export const VmRecordSchema = Type.Object(
  {
    name: Type.String({ pattern: VM_NAME_PATTERN }),
    os: OsSchema,
    state: VmStateSchema,
    spec: MachineSpecSchema,
    display: Type.Boolean(),
    pid: Type.Optional(Type.Integer()),
    exitStatus: Type.Optional(Type.Integer()),
    message: Type.Optional(Type.String()),
    createdAt: Type.String(),
  },
  { $id: 'VmRecord', additionalProperties: false },
);
export type VmRecord = Omit<Static<typeof VmRecordSchema>, 'state' | 'spec'> & { state: VmState; spec: MachineSpec };

export const CreateBodySchema = Type.Object(
  {
    name: Type.String({ pattern: VM_NAME_PATTERN }),
    os: Type.Optional(OsSchema),
    cpus: Type.Optional(Type.Integer({ minimum: 1, maximum: MAX_VCPUS })),
    memory: Type.Optional(Type.Integer({ minimum: MIN_MEMORY, maximum: MAX_MEMORY, multipleOf: 4096 })),
    disk: Type.Optional(Type.Integer({ minimum: 512, description: 'bytes: a new sparse raw disk in the VM folder' })),
    cdrom: Type.Optional(Type.String({ minLength: 1, description: 'an existing ISO image (attached read-only)' })),
    kernel: Type.Optional(Type.String({ minLength: 1 })),
    initrd: Type.Optional(Type.String({ minLength: 1 })),
    cmdline: Type.Optional(Type.String()),
    firmware: Type.Optional(
      Type.String({ minLength: 1, description: "'bios' (default without a kernel), 'uefi', or a ROM image path" }),
    ),
  },
  { additionalProperties: false },
);
export type CreateBody = Static<typeof CreateBodySchema>;

export const PatchBodySchema = Type.Object(
  {
    cpus: Type.Optional(Type.Integer({ minimum: 1, maximum: MAX_VCPUS })),
    memory: Type.Optional(Type.Integer({ minimum: MIN_MEMORY, maximum: MAX_MEMORY, multipleOf: 4096 })),
    addDevices: Type.Optional(Type.Array(DeviceOptionsSchema)),
    removeDevices: Type.Optional(Type.Array(Type.Integer({ minimum: 0 }))),
  },
  { additionalProperties: false },
);
export type PatchBody = Omit<Static<typeof PatchBodySchema>, 'addDevices'> & { addDevices?: DeviceOptions[] };

export const StartBodySchema = Type.Object(
  { headless: Type.Optional(Type.Boolean()) },
  { additionalProperties: false },
);
export const StopBodySchema = Type.Object({ kill: Type.Optional(Type.Boolean()) }, { additionalProperties: false });
export const EmptyBodySchema = Type.Object({}, { additionalProperties: false });

export const NameParamsSchema = Type.Object({ name: Type.String() });

export const ErrorSchema = Type.Object(
  { error: Type.String(), path: Type.Optional(Type.String()) },
  { $id: 'ApiError' },
);
export interface ApiError {
  error: string;
  path?: string;
}

export const StatusSchema = Type.Object({
  version: Type.String(),
  vms: Type.Integer(),
  running: Type.Integer(),
  dataDir: Type.String(),
});
export type DaemonStatus = Static<typeof StatusSchema>;

export const IsoSchema = Type.Object({ path: Type.String(), size: Type.Integer() });

export type DaemonEvent =
  { type: 'state'; name: string; state: VmState; message?: string } | { type: 'created' | 'deleted'; name: string };
