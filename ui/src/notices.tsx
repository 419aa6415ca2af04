// Errors and confirmations the user must see, whatever page they are on: a stack of dismissible notices at the
// bottom of the window (errors stay until dismissed; other notices fade after a few seconds).
import { useEffect, useState } from 'preact/hooks';

export interface Notice {
  id: number;
  kind: 'error' | 'info';
  text: string;
}

let notices: Notice[] = [];
let nextId = 1;
const listeners = new Set<(n: Notice[]) => void>();

function publish(next: Notice[]): void {
  notices = next;
  for (const l of listeners) l(notices);
}

export function notify(kind: Notice['kind'], text: string): void {
  const id = nextId++;
  // The newest few only: a burst of confirmations must not cover the page.
  publish([...notices.filter((n) => n.text !== text), { id, kind, text }].slice(-3));
  if (kind === 'info') setTimeout(() => dismiss(id), 3000);
}

export function notifyError(what: string, e: unknown): void {
  notify('error', `${what}: ${e instanceof Error ? e.message : String(e)}`);
}

function dismiss(id: number): void {
  publish(notices.filter((n) => n.id !== id));
}

export function Notices() {
  const [list, setList] = useState(notices);
  useEffect(() => {
    listeners.add(setList);
    return () => void listeners.delete(setList);
  }, []);
  return (
    <div class="notices" aria-live="polite">
      {list.map((n) => (
        <div
          key={n.id}
          class={`notice notice-${n.kind}`}
          role={n.kind === 'error' ? 'alert' : 'status'}
          data-testid={`notice-${n.kind}`}
        >
          <span>{n.text}</span>
          <button type="button" class="icon-button" aria-label="Dismiss" onClick={() => dismiss(n.id)}>
            ×
          </button>
        </div>
      ))}
    </div>
  );
}
