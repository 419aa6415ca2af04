// The VM library: one card per VM with its live state, what it is (CPUs, memory, how it boots) and the actions
// its state allows; a crashed VM shows why. Clicking a card opens the VM's page.
import { formatBytes, type VmRecord } from '../api';
import { navigate, type Library } from '../store';
import { OsIcon } from './OsIcon';
import { StateBadge } from './StateBadge';
import { VmActions } from './VmActions';

export function bootSummary(vm: VmRecord): string {
  const boot = vm.spec?.boot;
  if (!boot) return '';
  if (boot.kind === 'kernel') return `kernel ${baseName(boot.kernel)}`;
  const cdrom = vm.spec.devices?.find((d) => typeof d.path === 'string' && /\.iso$/i.test(d.path));
  return cdrom ? `firmware · ${baseName(String(cdrom.path))}` : 'firmware';
}

/** The message worth showing under a VM: why it crashed, or how its last run ended (not a bare "stopped"). */
export function stopMessage(vm: VmRecord): string | null {
  if (!vm.message || (vm.state !== 'crashed' && vm.state !== 'stopped')) return null;
  if (vm.state === 'stopped' && vm.message.trim().toLowerCase() === 'stopped') return null;
  return vm.message;
}

export function baseName(path: string): string {
  return path.split('/').pop() || path;
}

export function VmLibrary({ library }: { library: Library }) {
  const { vms, error } = library;
  if (error && !vms)
    return (
      <div class="empty" role="alert" data-testid="library-error">
        <h2>Cannot load the VM library</h2>
        <p>{error.message}</p>
        <button type="button" class="button" onClick={library.refresh}>
          Try again
        </button>
      </div>
    );
  if (!vms) return <div class="empty muted">Loading…</div>;
  if (vms.length === 0)
    return (
      <div class="empty" data-testid="library-empty">
        <div class="empty-art" aria-hidden="true">
          <svg viewBox="0 0 24 24" fill="none" stroke="currentColor" stroke-width="1.6" stroke-linecap="round">
            <rect x="2.5" y="4" width="19" height="12.5" rx="2" />
            <path d="M8 20h8M12 16.5V20M9.5 10.2l2 1.8 3-3.5" />
          </svg>
        </div>
        <h2>No virtual machines yet</h2>
        <p class="muted">Create one from an ISO image, a disk, or a kernel to boot directly.</p>
        <button type="button" class="button button-primary" onClick={() => navigate({ page: 'new' })}>
          New virtual machine
        </button>
      </div>
    );

  return (
    <section aria-label="Virtual machines" data-testid="vm-library">
      <div class="page-head">
        <h1>Virtual machines</h1>
        <span class="muted">
          {vms.length} {vms.length === 1 ? 'machine' : 'machines'} ·{' '}
          {vms.filter((v) => v.state === 'running' || v.state === 'paused').length} running
        </span>
      </div>
      <ul class="vm-grid">
        {vms.map((vm) => (
          <li
            key={vm.name}
            class={`vm-card state-${vm.state}`}
            data-testid={`vm-card-${vm.name}`}
            onClick={() => navigate({ page: 'vm', name: vm.name })}
          >
            <div class="vm-card-head">
              <OsIcon os={vm.os} />
              <a
                class="vm-name"
                href={`#/vm/${encodeURIComponent(vm.name)}`}
                data-testid="vm-open"
                onClick={(e) => e.stopPropagation()}
              >
                {vm.name}
              </a>
              <StateBadge state={vm.state} message={vm.message} />
            </div>
            <dl class="vm-facts">
              <div>
                <dt>CPUs</dt>
                <dd>{vm.spec?.cpus}</dd>
              </div>
              <div>
                <dt>Memory</dt>
                <dd>{formatBytes(vm.spec?.memory ?? 0)}</dd>
              </div>
              <div>
                <dt>Boot</dt>
                <dd class="ellipsis" title={bootSummary(vm)}>
                  {bootSummary(vm)}
                </dd>
              </div>
            </dl>
            {stopMessage(vm) && (
              <p class={vm.state === 'crashed' ? 'vm-message error-text' : 'vm-message muted'} data-testid="vm-message">
                {vm.message}
              </p>
            )}
            <VmActions vm={vm} onRecord={library.put} compact={false} />
          </li>
        ))}
      </ul>
    </section>
  );
}
