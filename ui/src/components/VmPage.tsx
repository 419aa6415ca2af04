// One VM: its state and actions on top, then tabs for the screen (when it has a display), the serial console
// and its settings. A crashed VM's message is shown above everything.
import { useEffect, useState } from 'preact/hooks';
import { api, ApiError, formatBytes, type VmRecord } from '../api';
import { navigate, type Library } from '../store';
import { Console } from './Console';
import { bootSummary, stopMessage } from './VmLibrary';
import { OsIcon } from './OsIcon';
import { Screen } from './Screen';
import { Settings } from './Settings';
import { StateBadge } from './StateBadge';
import { VmActions } from './VmActions';

type Tab = 'screen' | 'console' | 'settings';

export function VmPage({ name, tab, library }: { name: string; tab?: string; library: Library }) {
  const fromList = library.vms?.find((v) => v.name === name) ?? null;
  const [fetched, setFetched] = useState<VmRecord | null>(null);
  const [missing, setMissing] = useState<ApiError | null>(null);

  // The list may not be loaded yet (a bookmarked VM page): ask for this one VM.
  useEffect(() => {
    setMissing(null);
    api.get(name).then(setFetched, (e: ApiError) => setMissing(e));
  }, [name]);

  const vm = fromList ?? (library.vms ? null : fetched);
  if (!vm) {
    if (missing || library.vms)
      return (
        <div class="empty" role="alert">
          <h2>No VM called '{name}'</h2>
          <p class="muted">{missing?.message ?? 'It may have been deleted.'}</p>
          <button type="button" class="button" onClick={() => navigate({ page: 'library' })}>
            Back to the library
          </button>
        </div>
      );
    return <div class="empty muted">Loading…</div>;
  }

  const tabs: [Tab, string][] = [
    ...(vm.display ? ([['screen', 'Screen']] as [Tab, string][]) : []),
    ['console', 'Console'],
    ['settings', 'Settings'],
  ];
  const current: Tab = tabs.some(([t]) => t === tab) ? (tab as Tab) : tabs[0][0];

  return (
    <section class="vm-page" data-testid="vm-page" data-vm={vm.name} aria-label={`Virtual machine ${vm.name}`}>
      <div class="vm-page-head">
        <button
          type="button"
          class="icon-button back"
          aria-label="Back to the library"
          onClick={() => navigate({ page: 'library' })}
        >
          ‹
        </button>
        <OsIcon os={vm.os} />
        <div class="vm-title">
          <h1>{vm.name}</h1>
          <span class="muted">
            {vm.spec.cpus} {vm.spec.cpus === 1 ? 'CPU' : 'CPUs'} · {formatBytes(vm.spec.memory)} · {bootSummary(vm)}
            {vm.pid ? ` · pid ${vm.pid}` : ''}
          </span>
        </div>
        <StateBadge state={vm.state} message={vm.message} />
        <VmActions vm={vm} onRecord={library.put} />
      </div>
      {stopMessage(vm) && (
        <p
          class={vm.state === 'crashed' ? 'callout callout-error' : 'callout'}
          role={vm.state === 'crashed' ? 'alert' : undefined}
          data-testid="vm-message"
        >
          {vm.state === 'crashed' ? 'The VM crashed: ' : 'Last run: '}
          {vm.message}
          {vm.exitStatus !== undefined ? ` (exit status ${vm.exitStatus})` : ''}
        </p>
      )}
      <div class="tabs" role="tablist" aria-label="VM views">
        {tabs.map(([id, label]) => (
          <button
            key={id}
            type="button"
            role="tab"
            id={`tab-${id}`}
            aria-selected={current === id}
            aria-controls={`panel-${id}`}
            class={current === id ? 'selected' : ''}
            data-testid={`tab-${id}`}
            onClick={() => navigate({ page: 'vm', name: vm.name, tab: id })}
          >
            {label}
          </button>
        ))}
      </div>
      <div class="tab-panel" role="tabpanel" id={`panel-${current}`} aria-labelledby={`tab-${current}`}>
        {current === 'screen' && <Screen vm={vm} />}
        {current === 'console' && <Console vm={vm} />}
        {current === 'settings' && <Settings vm={vm} onRecord={library.put} />}
      </div>
    </section>
  );
}
