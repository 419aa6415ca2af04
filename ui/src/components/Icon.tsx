// Inline SVG icons (the UI is served offline and system fonts lack glyphs such as ⏻ and ⛶).
const PATHS = {
  play: 'M5 3.5v9l7.5-4.5z',
  pause: 'M4.5 3.5h2.5v9H4.5zM9 3.5h2.5v9H9z',
  stop: 'M4 4h8v8H4z',
  power: 'M8 1.8v5.4M4.6 4.1a5 5 0 106.8 0',
  fullscreen: 'M2.5 6V2.5H6M10 2.5h3.5V6M13.5 10v3.5H10M6 13.5H2.5V10',
  keyboard: 'M1.8 4h12.4v8H1.8zM4 6.3h1M7.5 6.3h1M11 6.3h1M4.5 9.7h7',
  plus: 'M8 3v10M3 8h10',
} as const;

export function Icon({ name, filled }: { name: keyof typeof PATHS; filled?: boolean }) {
  return (
    <svg class="icon" viewBox="0 0 16 16" width="14" height="14" aria-hidden="true">
      <path
        d={PATHS[name]}
        fill={filled ? 'currentColor' : 'none'}
        stroke={filled ? 'none' : 'currentColor'}
        stroke-width="1.6"
        stroke-linecap="round"
        stroke-linejoin="round"
      />
    </svg>
  );
}
