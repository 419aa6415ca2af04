// A small glyph per guest OS family for the library cards (no external icon font: the UI is served offline).
import type { OsKind } from '../api';

export function OsIcon({ os }: { os: OsKind }) {
  const label = { linux: 'Linux', windows: 'Windows', other: 'Other OS' }[os] ?? os;
  return (
    <span class={`os-icon os-${os}`} role="img" aria-label={label} title={label}>
      {os === 'windows' ? (
        <svg viewBox="0 0 16 16" aria-hidden="true">
          <path d="M1 3l6-1v5.5H1zM8 1.8L15 1v6.5H8zM1 8.5h6V14l-6-1zM8 8.5h7V15l-7-1z" fill="currentColor" />
        </svg>
      ) : os === 'linux' ? (
        <svg viewBox="0 0 16 16" aria-hidden="true">
          <path
            d="M8 1C6.3 1 5.5 2.4 5.5 4c0 1-.2 1.6-.9 2.7C3.7 8 3 9.3 3 10.8c0 .5.1.9.3 1.3-.6.3-1.3.7-1.3 1.3 0 .9 1.6.9 2.7 1.3.8.3 1.3.3 1.8-.3h3c.5.6 1 .6 1.8.3 1.1-.4 2.7-.4 2.7-1.3 0-.6-.7-1-1.3-1.3.2-.4.3-.8.3-1.3 0-1.5-.7-2.8-1.6-4.1-.7-1.1-.9-1.7-.9-2.7C10.5 2.4 9.7 1 8 1zm-1 2.5a.6.6 0 110 1.2.6.6 0 010-1.2zm2 0a.6.6 0 110 1.2.6.6 0 010-1.2zM8 5.5l1 .6-1 .6-1-.6z"
            fill="currentColor"
          />
        </svg>
      ) : (
        <svg viewBox="0 0 16 16" aria-hidden="true">
          <rect x="1.5" y="2.5" width="13" height="9" rx="1.5" fill="none" stroke="currentColor" stroke-width="1.5" />
          <path d="M5 14h6M8 11.5V14" stroke="currentColor" stroke-width="1.5" />
        </svg>
      )}
    </span>
  );
}
