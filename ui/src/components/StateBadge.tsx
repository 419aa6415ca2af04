// A VM's state as a coloured pill; a crashed VM's one-line message is its tooltip (and shown by the caller).
import type { VmState } from '../api';

const LABELS: Record<VmState, string> = {
  stopped: 'Stopped',
  starting: 'Starting…',
  running: 'Running',
  paused: 'Paused',
  stopping: 'Stopping…',
  crashed: 'Crashed',
};

export function StateBadge({ state, message }: { state: VmState; message?: string }) {
  return (
    <span class={`badge badge-${state}`} data-testid="vm-state" data-state={state} title={message}>
      <span class="badge-dot" aria-hidden="true" />
      {LABELS[state] ?? state}
    </span>
  );
}
