// X11 keysyms (RFB 3.8 §7.5.4 sends keys as keysyms) for the keys and combinations a browser or the host desktop
// eats before a page sees them, and text → key presses for "type clipboard".

export const XK = {
  BackSpace: 0xff08,
  Tab: 0xff09,
  Return: 0xff0d,
  Escape: 0xff1b,
  Delete: 0xffff,
  Print: 0xff61,
  Shift_L: 0xffe1,
  Control_L: 0xffe3,
  Alt_L: 0xffe9,
  Super_L: 0xffeb,
  F1: 0xffbe,
} as const;

/** The code (KeyboardEvent.code) noVNC passes along with a keysym, for servers that want scancodes. */
export interface KeyStroke {
  keysym: number;
  code: string;
}

const key = (keysym: number, code: string): KeyStroke => ({ keysym, code });
export const KEY = {
  ctrl: key(XK.Control_L, 'ControlLeft'),
  alt: key(XK.Alt_L, 'AltLeft'),
  shift: key(XK.Shift_L, 'ShiftLeft'),
  super: key(XK.Super_L, 'MetaLeft'),
  tab: key(XK.Tab, 'Tab'),
  escape: key(XK.Escape, 'Escape'),
  print: key(XK.Print, 'PrintScreen'),
  delete: key(XK.Delete, 'Delete'),
  fn: (n: number) => key(XK.F1 + n - 1, `F${n}`),
};

export interface Combo {
  label: string;
  keys: KeyStroke[];
}

/** The toolbar's special keys: pressed in order, released in reverse. */
export const COMBOS: Record<string, Combo> = {
  'ctrl-alt-del': { label: 'Ctrl+Alt+Del', keys: [KEY.ctrl, KEY.alt, KEY.delete] },
  ...Object.fromEntries(
    [1, 2, 3, 4, 5, 6, 7].map((n) => [
      `ctrl-alt-f${n}`,
      { label: `Ctrl+Alt+F${n}`, keys: [KEY.ctrl, KEY.alt, KEY.fn(n)] },
    ]),
  ),
  'alt-tab': { label: 'Alt+Tab', keys: [KEY.alt, KEY.tab] },
  'print-screen': { label: 'Print Screen', keys: [KEY.print] },
  escape: { label: 'Escape', keys: [KEY.escape] },
  super: { label: 'Windows / Super', keys: [KEY.super] },
};

/** US-layout characters typed with Shift held (the guest decodes scancodes with its own layout). */
const SHIFTED = new Set('~!@#$%^&*()_+{}|:"<>?ABCDEFGHIJKLMNOPQRSTUVWXYZ');
const UNSHIFTED_CODE: Record<string, string> = {
  '`': 'Backquote',
  '-': 'Minus',
  '=': 'Equal',
  '[': 'BracketLeft',
  ']': 'BracketRight',
  '\\': 'Backslash',
  ';': 'Semicolon',
  "'": 'Quote',
  ',': 'Comma',
  '.': 'Period',
  '/': 'Slash',
  ' ': 'Space',
};
const SHIFTED_BASE: Record<string, string> = {
  '~': '`',
  '!': '1',
  '@': '2',
  '#': '3',
  $: '4',
  '%': '5',
  '^': '6',
  '&': '7',
  '*': '8',
  '(': '9',
  ')': '0',
  _: '-',
  '+': '=',
  '{': '[',
  '}': ']',
  '|': '\\',
  ':': ';',
  '"': "'",
  '<': ',',
  '>': '.',
  '?': '/',
};

function codeOf(ch: string): string {
  const base = SHIFTED_BASE[ch] ?? ch.toLowerCase();
  if (/^[a-z]$/.test(base)) return `Key${base.toUpperCase()}`;
  if (/^[0-9]$/.test(base)) return `Digit${base}`;
  return UNSHIFTED_CODE[base] ?? '';
}

/** The key presses that type `text`: (keysym, code, shift) per character; newlines become Return. */
export function textToStrokes(text: string): { stroke: KeyStroke; shift: boolean }[] {
  const strokes: { stroke: KeyStroke; shift: boolean }[] = [];
  for (const ch of text.replace(/\r\n?/g, '\n')) {
    if (ch === '\n') strokes.push({ stroke: key(XK.Return, 'Enter'), shift: false });
    else if (ch === '\t') strokes.push({ stroke: KEY.tab, shift: false });
    else {
      const cp = ch.codePointAt(0) ?? 0;
      if (cp < 0x20 || cp === 0x7f) continue; // other control characters have no key
      // Latin-1 keysyms are the code point; the rest of Unicode is 0x0100_0000 + code point (X11 keysymdef.h).
      const keysym = cp <= 0xff ? cp : 0x01000000 + cp;
      strokes.push({ stroke: key(keysym, codeOf(ch)), shift: SHIFTED.has(ch) });
    }
  }
  return strokes;
}
