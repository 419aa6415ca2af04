// A VM's settings: CPUs, memory and devices (PATCH /api/vms/<name>: addDevices / removeDevices by index), and
// deleting it. The daemon changes stopped VMs only, so everything here is disabled while the VM runs.
import { useEffect, useState } from 'preact/hooks';
import { api, ApiError, MiB, type DeviceOptions, type PatchVmBody, type VmRecord } from '../api';
import { notify, notifyError } from '../notices';
import { navigate } from '../store';
import { Field, fieldOfPath } from './Field';

/** The devices the add form offers, with the options each needs typed in. */
const ADDABLE: Record<string, { label: string; path?: string; make(path: string, extra: boolean): DeviceOptions }> = {
  'virtio-blk': {
    label: 'Disk (virtio-blk)',
    path: 'Raw disk image',
    make: (path, readonly) => ({ kind: 'virtio-blk', path, ...(readonly ? { readonly: true } : {}) }),
  },
  'virtio-net': {
    label: 'Network, user-mode NAT (virtio-net)',
    make: () => ({ kind: 'virtio-net', backend: { kind: 'user' } }),
  },
  'virtio-rng': { label: 'Entropy source (virtio-rng)', make: () => ({ kind: 'virtio-rng' }) },
  'virtio-tablet': { label: 'Absolute pointer (virtio tablet)', make: () => ({ kind: 'virtio-tablet' }) },
  'virtio-keyboard': { label: 'Keyboard (virtio-input)', make: () => ({ kind: 'virtio-keyboard' }) },
  'virtio-console': {
    label: 'Console port (virtio-console)',
    path: 'Output file or UNIX socket',
    make: (path) => ({ kind: 'virtio-console', path }),
  },
};

export function describeDevice(d: DeviceOptions): string {
  const rest = Object.entries(d)
    .filter(([k]) => k !== 'kind')
    .map(([k, v]) =>
      typeof v === 'object' && v !== null ? `${k}: ${JSON.stringify(v)}` : v === true ? k : `${k}: ${String(v)}`,
    );
  return rest.join(' · ');
}

export function Settings({ vm, onRecord }: { vm: VmRecord; onRecord(r: VmRecord): void }) {
  const editable = vm.state === 'stopped' || vm.state === 'crashed';
  const [cpus, setCpus] = useState(vm.spec.cpus);
  const [memoryMiB, setMemoryMiB] = useState(Math.round(vm.spec.memory / MiB));
  const [errors, setErrors] = useState<Record<string, string>>({});
  const [busy, setBusy] = useState(false);
  const [addKind, setAddKind] = useState('virtio-blk');
  const [addPath, setAddPath] = useState('');
  const [addFlag, setAddFlag] = useState(false);
  const [keepDisks, setKeepDisks] = useState(true);

  // A record from elsewhere (another tab, the CLI) resets the form to what the VM now is.
  useEffect(() => {
    setCpus(vm.spec.cpus);
    setMemoryMiB(Math.round(vm.spec.memory / MiB));
  }, [vm.spec.cpus, vm.spec.memory]);

  const patch = async (body: PatchVmBody, done: string) => {
    setBusy(true);
    setErrors({});
    try {
      onRecord(await api.patch(vm.name, body));
      notify('info', done);
      return true;
    } catch (e) {
      const err = e instanceof ApiError ? e : new ApiError(0, String(e));
      const field = fieldOfPath(err.path, ['cpus', 'memory', 'addDevices', 'removeDevices']);
      setErrors({ [field ?? 'form']: err.message });
      return false;
    } finally {
      setBusy(false);
    }
  };

  const save = (event: Event) => {
    event.preventDefault();
    const body: PatchVmBody = {};
    if (cpus !== vm.spec.cpus) body.cpus = cpus;
    if (memoryMiB * MiB !== vm.spec.memory) body.memory = Math.round(memoryMiB) * MiB;
    if (Object.keys(body).length === 0) return;
    void patch(body, `Saved the hardware of '${vm.name}'`);
  };

  const addDevice = async (event: Event) => {
    event.preventDefault();
    const def = ADDABLE[addKind];
    if (def.path && !addPath.trim()) {
      setErrors({ addDevices: `${def.path}: type a path.` });
      return;
    }
    if (await patch({ addDevices: [def.make(addPath.trim(), addFlag)] }, `Added ${def.label}`)) setAddPath('');
  };

  const remove = async () => {
    if (!confirm(`Delete the VM '${vm.name}'${keepDisks ? ' (its disks are kept)' : ' and its disks'}?`)) return;
    try {
      await api.remove(vm.name, keepDisks);
      notify('info', `Deleted '${vm.name}'`);
      navigate({ page: 'library' });
    } catch (e) {
      notifyError(`Could not delete '${vm.name}'`, e);
    }
  };

  const devices = vm.spec.devices ?? [];
  return (
    <div class="settings" data-testid="settings">
      {!editable && (
        <p class="callout" data-testid="settings-locked">
          The VM is {vm.state}: stop it to change its settings.
        </p>
      )}
      <fieldset disabled={!editable || busy} class="panel">
        <legend>Hardware</legend>
        <form onSubmit={save} class="field-row actions-row" noValidate>
          <Field id="set-cpus" label="CPUs" error={errors.cpus}>
            <input
              id="set-cpus"
              type="number"
              min={1}
              max={64}
              value={cpus}
              data-testid="settings-cpus"
              onInput={(e) => setCpus(e.currentTarget.valueAsNumber)}
            />
          </Field>
          <Field id="set-memory" label="Memory (MiB)" error={errors.memory}>
            <input
              id="set-memory"
              type="number"
              min={16}
              step={256}
              value={memoryMiB}
              data-testid="settings-memory"
              onInput={(e) => setMemoryMiB(e.currentTarget.valueAsNumber)}
            />
          </Field>
          <div>
            <button
              type="submit"
              class="button button-primary"
              data-testid="settings-save"
              disabled={cpus === vm.spec.cpus && memoryMiB * MiB === vm.spec.memory}
            >
              Save
            </button>
          </div>
        </form>
        {errors.form && (
          <p class="form-error" role="alert" data-testid="settings-error">
            {errors.form}
          </p>
        )}
      </fieldset>

      <fieldset disabled={!editable || busy} class="panel">
        <legend>Devices</legend>
        {devices.length === 0 ? (
          <p class="muted">No devices besides the serial port.</p>
        ) : (
          <ul class="device-list" data-testid="device-list">
            {devices.map((d, index) => (
              <li key={index} data-testid="device">
                <span class="device-kind">{d.kind}</span>
                <span class="muted ellipsis">{describeDevice(d)}</span>
                <button
                  type="button"
                  class="button small button-danger-text"
                  aria-label={`Remove ${d.kind} device ${index + 1}`}
                  data-testid={`device-remove-${index}`}
                  onClick={() => void patch({ removeDevices: [index] }, `Removed ${d.kind}`)}
                >
                  Remove
                </button>
              </li>
            ))}
          </ul>
        )}
        <form class="add-device" onSubmit={addDevice} noValidate>
          <Field id="add-kind" label="Add a device">
            <select
              id="add-kind"
              value={addKind}
              data-testid="add-kind"
              onChange={(e) => setAddKind(e.currentTarget.value)}
            >
              {Object.entries(ADDABLE).map(([kind, def]) => (
                <option key={kind} value={kind}>
                  {def.label}
                </option>
              ))}
            </select>
          </Field>
          {ADDABLE[addKind].path && (
            <Field id="add-path" label={ADDABLE[addKind].path ?? ''}>
              <input
                id="add-path"
                value={addPath}
                spellcheck={false}
                data-testid="add-path"
                onInput={(e) => setAddPath(e.currentTarget.value)}
              />
            </Field>
          )}
          {addKind === 'virtio-blk' && (
            <label class="checkbox">
              <input type="checkbox" checked={addFlag} onChange={(e) => setAddFlag(e.currentTarget.checked)} />{' '}
              Read-only
            </label>
          )}
          <button type="submit" class="button" data-testid="add-device">
            Add device
          </button>
        </form>
        {errors.addDevices && (
          <p class="form-error" role="alert" data-testid="add-error">
            {errors.addDevices}
          </p>
        )}
        {errors.removeDevices && (
          <p class="form-error" role="alert">
            {errors.removeDevices}
          </p>
        )}
      </fieldset>

      <fieldset disabled={!editable} class="panel danger-zone">
        <legend>Delete</legend>
        <label class="checkbox">
          <input type="checkbox" checked={keepDisks} onChange={(e) => setKeepDisks(e.currentTarget.checked)} /> Keep its
          disk images
        </label>
        <button type="button" class="button button-danger" data-testid="vm-delete" onClick={() => void remove()}>
          Delete this VM
        </button>
      </fieldset>
    </div>
  );
}
