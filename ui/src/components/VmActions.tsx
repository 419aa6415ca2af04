// Start / stop / pause / resume for one VM: only the buttons its state allows, each labelled for screen readers
// and tests (data-testid vm-start, vm-stop, vm-pause, vm-resume, vm-kill). Errors become notices.
import { useState } from 'preact/hooks';
import { api, type VmRecord } from '../api';
import { notifyError } from '../notices';
import { Icon } from './Icon';

type Action = 'start' | 'stop' | 'pause' | 'resume' | 'kill';

export function VmActions({ vm, onRecord, compact }: { vm: VmRecord; onRecord(r: VmRecord): void; compact?: boolean }) {
  const [busy, setBusy] = useState<Action | null>(null);
  const run = async (action: Action) => {
    setBusy(action);
    try {
      const call = {
        start: () => api.start(vm.name),
        stop: () => api.stop(vm.name),
        kill: () => api.stop(vm.name, true),
        pause: () => api.pause(vm.name),
        resume: () => api.resume(vm.name),
      }[action];
      onRecord(await call());
    } catch (e) {
      notifyError(`Could not ${action === 'kill' ? 'force stop' : action} '${vm.name}'`, e);
    } finally {
      setBusy(null);
    }
  };

  const s = vm.state;
  const button = (action: Action, label: string, icon: 'play' | 'pause' | 'stop' | 'power', cls = '') => (
    <button
      type="button"
      class={`button ${cls}`}
      data-testid={`vm-${action}`}
      aria-label={`${label} ${vm.name}`}
      title={label}
      disabled={busy !== null}
      onClick={(e) => {
        e.stopPropagation();
        void run(action);
      }}
    >
      <Icon name={icon} filled={icon !== 'power'} />
      {!compact && label}
    </button>
  );

  return (
    <div class="actions">
      {(s === 'stopped' || s === 'crashed') && button('start', 'Start', 'play', 'button-primary')}
      {s === 'paused' && button('resume', 'Resume', 'play', 'button-primary')}
      {s === 'running' && button('pause', 'Pause', 'pause')}
      {(s === 'running' || s === 'paused' || s === 'starting') && button('stop', 'Stop', 'stop')}
      {(s === 'stopping' || (!compact && (s === 'running' || s === 'paused'))) &&
        button('kill', 'Force stop', 'power', 'button-danger')}
    </div>
  );
}
