// The create wizard: name, OS preset (which sets sensible CPUs/memory/disk), what the VM boots (an ISO from
// GET /api/isos or a path, a kernel for direct boot, or firmware with an empty disk), and its size. The daemon
// validates the body; its 400 answer's JSON path puts the message next to the field at fault.
import { useEffect, useState } from 'preact/hooks';
import {
  api,
  ApiError,
  formatBytes,
  GiB,
  MiB,
  type CreateVmBody,
  type IsoImage,
  type OsKind,
  type VmRecord,
} from '../api';
import { notify } from '../notices';
import { navigate } from '../store';
import { Field, fieldOfPath } from './Field';
import { OsIcon } from './OsIcon';

interface Preset {
  cpus: number;
  memoryMiB: number;
  diskGiB: number;
  hint: string;
}

export const PRESETS: Record<OsKind, Preset> = {
  linux: { cpus: 2, memoryMiB: 2048, diskGiB: 20, hint: 'Debian, Ubuntu, Fedora…: 2 CPUs, 2 GiB, 20 GiB disk' },
  windows: { cpus: 4, memoryMiB: 4096, diskGiB: 64, hint: 'Windows 10/11: 4 CPUs, 4 GiB, 64 GiB disk' },
  other: { cpus: 1, memoryMiB: 512, diskGiB: 0, hint: 'Anything else: 1 CPU, 512 MiB, no disk' },
};

type BootSource = 'iso' | 'kernel' | 'none';
const FIELDS = ['name', 'os', 'cpus', 'memory', 'disk', 'cdrom', 'kernel', 'initrd', 'cmdline', 'firmware'] as const;
type Errors = Partial<Record<(typeof FIELDS)[number] | 'form', string>>;

export function CreateWizard({ onCreated }: { onCreated(r: VmRecord): void }) {
  const [name, setName] = useState('');
  const [os, setOs] = useState<OsKind>('linux');
  const [cpus, setCpus] = useState(PRESETS.linux.cpus);
  const [memoryMiB, setMemoryMiB] = useState(PRESETS.linux.memoryMiB);
  const [diskGiB, setDiskGiB] = useState(PRESETS.linux.diskGiB);
  const [boot, setBoot] = useState<BootSource>('iso');
  const [cdrom, setCdrom] = useState('');
  const [kernel, setKernel] = useState('');
  const [initrd, setInitrd] = useState('');
  const [cmdline, setCmdline] = useState('');
  const [firmware, setFirmware] = useState<'bios' | 'uefi'>('bios');
  const [isos, setIsos] = useState<IsoImage[] | null>(null);
  const [errors, setErrors] = useState<Errors>({});
  const [busy, setBusy] = useState(false);

  useEffect(() => {
    api.isos().then(setIsos, () => setIsos([]));
  }, []);

  // The first field at fault gets the focus (and scrolls into view), so its message is where the user looks.
  useEffect(() => {
    const first = FIELDS.find((f) => errors[f]);
    const input = first && (document.getElementById(first) as HTMLInputElement | null);
    if (input) {
      input.focus();
      input.scrollIntoView({ block: 'center' });
    }
  }, [errors]);

  const choosePreset = (preset: OsKind) => {
    setOs(preset);
    setCpus(PRESETS[preset].cpus);
    setMemoryMiB(PRESETS[preset].memoryMiB);
    setDiskGiB(PRESETS[preset].diskGiB);
  };

  const submit = async (event: Event) => {
    event.preventDefault();
    const local: Errors = {};
    if (!name.trim()) local.name = 'Give the VM a name.';
    if (boot === 'iso' && !cdrom.trim()) local.cdrom = 'Pick an ISO image or type its path.';
    if (boot === 'kernel' && !kernel.trim()) local.kernel = 'Type the path of the kernel to boot.';
    setErrors(local);
    if (Object.keys(local).length) return;

    const body: CreateVmBody = { name: name.trim(), os, cpus, memory: Math.round(memoryMiB) * MiB };
    if (diskGiB > 0) body.disk = Math.round(diskGiB * GiB);
    if (boot === 'iso') body.cdrom = cdrom.trim();
    if (boot !== 'kernel') body.firmware = firmware;
    if (boot === 'kernel') {
      body.kernel = kernel.trim();
      if (initrd.trim()) body.initrd = initrd.trim();
      if (cmdline.trim()) body.cmdline = cmdline.trim();
    }
    setBusy(true);
    try {
      const record = await api.create(body);
      notify('info', `Created '${record.name}'`);
      onCreated(record);
      navigate({ page: 'vm', name: record.name });
    } catch (e) {
      const err = e instanceof ApiError ? e : new ApiError(0, String(e));
      const field = fieldOfPath(err.path, FIELDS);
      setErrors(field ? { [field]: err.message } : { form: err.message });
    } finally {
      setBusy(false);
    }
  };

  const invalid = (field: keyof Errors) =>
    errors[field] ? { 'aria-invalid': true, 'aria-describedby': `${field}-error` } : {};

  return (
    <form class="panel wizard" onSubmit={submit} noValidate data-testid="create-wizard" aria-labelledby="wizard-title">
      <div class="page-head">
        <h1 id="wizard-title">New virtual machine</h1>
      </div>

      <section class="wizard-step">
        <h2>
          <span class="step">1</span>Name and operating system
        </h2>
        <Field id="name" label="Name" hint="Letters, digits, '.', '_' and '-'" error={errors.name}>
          <input
            id="name"
            name="name"
            data-testid="field-name"
            value={name}
            autoFocus
            autoComplete="off"
            spellcheck={false}
            placeholder="debian-12"
            onInput={(e) => setName(e.currentTarget.value)}
            {...invalid('name')}
          />
        </Field>
        <div class="field">
          <span class="label" id="os-label">
            Operating system
          </span>
          <div class="segmented" role="radiogroup" aria-labelledby="os-label">
            {(['linux', 'windows', 'other'] as const).map((preset) => (
              <button
                type="button"
                key={preset}
                role="radio"
                aria-checked={os === preset}
                class={os === preset ? 'selected' : ''}
                data-testid={`preset-${preset}`}
                onClick={() => choosePreset(preset)}
              >
                <OsIcon os={preset} />
                {preset === 'linux' ? 'Linux' : preset === 'windows' ? 'Windows' : 'Other'}
              </button>
            ))}
          </div>
          <small class="muted">{PRESETS[os].hint}</small>
          {errors.os && <small class="field-error">{errors.os}</small>}
        </div>
      </section>

      <section class="wizard-step">
        <h2>
          <span class="step">2</span>Boot from
        </h2>
        <div class="segmented" role="radiogroup" aria-label="Boot from">
          {(
            [
              ['iso', 'ISO image'],
              ['kernel', 'Kernel (direct boot)'],
              ['none', 'Empty disk'],
            ] as const
          ).map(([value, label]) => (
            <button
              type="button"
              key={value}
              role="radio"
              aria-checked={boot === value}
              class={boot === value ? 'selected' : ''}
              data-testid={`boot-${value}`}
              onClick={() => setBoot(value)}
            >
              {label}
            </button>
          ))}
        </div>
        {boot === 'iso' && (
          <Field
            id="cdrom"
            label="ISO image"
            hint={
              isos && isos.length === 0 ? 'No images in the data directory’s isos/ folder: type a path.' : undefined
            }
            error={errors.cdrom}
          >
            <input
              id="cdrom"
              list="iso-list"
              data-testid="field-cdrom"
              value={cdrom}
              placeholder="/path/to/installer.iso"
              spellcheck={false}
              onInput={(e) => setCdrom(e.currentTarget.value)}
              {...invalid('cdrom')}
            />
            <datalist id="iso-list">
              {isos?.map((iso) => (
                <option key={iso.path} value={iso.path}>
                  {formatBytes(iso.size)}
                </option>
              ))}
            </datalist>
            {isos && isos.length > 0 && (
              <div class="chips" role="group" aria-label="ISO images">
                {isos.map((iso) => (
                  <button
                    type="button"
                    key={iso.path}
                    class={`chip ${cdrom === iso.path ? 'selected' : ''}`}
                    onClick={() => setCdrom(iso.path)}
                    title={iso.path}
                  >
                    {iso.path.split('/').pop()} <span class="muted">{formatBytes(iso.size)}</span>
                  </button>
                ))}
              </div>
            )}
          </Field>
        )}
        {boot === 'kernel' && (
          <>
            <Field id="kernel" label="Kernel" hint="PVH ELF, multiboot or Linux bzImage" error={errors.kernel}>
              <input
                id="kernel"
                data-testid="field-kernel"
                value={kernel}
                placeholder="/boot/vmlinuz"
                spellcheck={false}
                onInput={(e) => setKernel(e.currentTarget.value)}
                {...invalid('kernel')}
              />
            </Field>
            <div class="field-row">
              <Field id="initrd" label="Initrd (optional)" error={errors.initrd}>
                <input
                  id="initrd"
                  data-testid="field-initrd"
                  value={initrd}
                  spellcheck={false}
                  onInput={(e) => setInitrd(e.currentTarget.value)}
                  {...invalid('initrd')}
                />
              </Field>
              <Field id="cmdline" label="Command line (optional)" error={errors.cmdline}>
                <input
                  id="cmdline"
                  data-testid="field-cmdline"
                  value={cmdline}
                  placeholder="console=ttyS0"
                  spellcheck={false}
                  onInput={(e) => setCmdline(e.currentTarget.value)}
                  {...invalid('cmdline')}
                />
              </Field>
            </div>
          </>
        )}
        {boot === 'none' && <p class="muted">The VM starts its firmware with an empty disk (set its size below).</p>}
        {boot !== 'kernel' && (
          <div class="field">
            <span class="label" id="firmware-label">
              Firmware
            </span>
            <div class="segmented small" role="radiogroup" aria-labelledby="firmware-label">
              {(
                [
                  ['bios', 'BIOS (SeaBIOS)'],
                  ['uefi', 'UEFI (OVMF)'],
                ] as const
              ).map(([value, label]) => (
                <button
                  type="button"
                  key={value}
                  role="radio"
                  aria-checked={firmware === value}
                  class={firmware === value ? 'selected' : ''}
                  data-testid={`firmware-${value}`}
                  onClick={() => setFirmware(value)}
                >
                  {label}
                </button>
              ))}
            </div>
            {errors.firmware && (
              <small class="field-error" role="alert" data-testid="error-firmware">
                {errors.firmware}
              </small>
            )}
          </div>
        )}
      </section>

      <section class="wizard-step">
        <h2>
          <span class="step">3</span>Hardware
        </h2>
        <div class="field-row three">
          <Field id="cpus" label="CPUs" error={errors.cpus}>
            <input
              id="cpus"
              type="number"
              min={1}
              max={64}
              data-testid="field-cpus"
              value={cpus}
              onInput={(e) => setCpus(e.currentTarget.valueAsNumber)}
              {...invalid('cpus')}
            />
          </Field>
          <Field id="memory" label="Memory (MiB)" error={errors.memory}>
            <input
              id="memory"
              type="number"
              min={16}
              step={256}
              data-testid="field-memory"
              value={memoryMiB}
              onInput={(e) => setMemoryMiB(e.currentTarget.valueAsNumber)}
              {...invalid('memory')}
            />
          </Field>
          <Field id="disk" label="New disk (GiB, 0 = none)" error={errors.disk}>
            <input
              id="disk"
              type="number"
              min={0}
              data-testid="field-disk"
              value={diskGiB}
              onInput={(e) => setDiskGiB(e.currentTarget.valueAsNumber)}
              {...invalid('disk')}
            />
          </Field>
        </div>
      </section>

      {errors.form && (
        <p class="form-error" role="alert" data-testid="error-form">
          {errors.form}
        </p>
      )}
      <div class="form-actions">
        <button type="button" class="button" onClick={() => navigate({ page: 'library' })}>
          Cancel
        </button>
        <button type="submit" class="button button-primary" disabled={busy} data-testid="create-submit">
          {busy ? 'Creating…' : 'Create'}
        </button>
      </div>
    </form>
  );
}
