// Scan codes of the PC keyboard: set 1 (XT) as the host hands keys to the machine (display/source.ts InputSink),
// set 2 (AT) as a PS/2 keyboard sends them, and the 8042 controller's set 2 → set 1 translation (the XLATE bit of
// its command byte). Layouts: IBM PC AT Technical Reference, "Keyboard Scan-Code Set 2"; Microsoft, "Keyboard Scan
// Code Specification" (scancode.doc, rev. 1.3a, 2000), tables of sets 1 and 2 including the extended keys.

/**
 * Set 2 code of each set 1 make code 0x00-0x7F: the inverse of the 8042's translation of set 2 codes 0x00-0x7F.
 * Extended keys (0xE0 prefix) use the same table for the byte after the prefix.
 */
const SET1_TO_SET2 = Uint8Array.of(
  // 0x00-0x0F: (none), Esc, 1-0, -, =, Backspace, Tab
  0x00,
  0x76,
  0x16,
  0x1e,
  0x26,
  0x25,
  0x2e,
  0x36,
  0x3d,
  0x3e,
  0x46,
  0x45,
  0x4e,
  0x55,
  0x66,
  0x0d,
  // 0x10-0x1F: Q-P, [, ], Enter, LCtrl, A, S
  0x15,
  0x1d,
  0x24,
  0x2d,
  0x2c,
  0x35,
  0x3c,
  0x43,
  0x44,
  0x4d,
  0x54,
  0x5b,
  0x5a,
  0x14,
  0x1c,
  0x1b,
  // 0x20-0x2F: D-L, ;, ', `, LShift, \, Z, X, C, V
  0x23,
  0x2b,
  0x34,
  0x33,
  0x3b,
  0x42,
  0x4b,
  0x4c,
  0x52,
  0x0e,
  0x12,
  0x5d,
  0x1a,
  0x22,
  0x21,
  0x2a,
  // 0x30-0x3F: B, N, M, ",", ., /, RShift, KP*, LAlt, Space, CapsLock, F1-F5
  0x32,
  0x31,
  0x3a,
  0x41,
  0x49,
  0x4a,
  0x59,
  0x7c,
  0x11,
  0x29,
  0x58,
  0x05,
  0x06,
  0x04,
  0x0c,
  0x03,
  // 0x40-0x4F: F6-F10, NumLock, ScrollLock, KP7-9, KP-, KP4-6, KP+, KP1 (F7 = 0x41: see keySequence)
  0x0b,
  0x02,
  0x0a,
  0x01,
  0x09,
  0x77,
  0x7e,
  0x6c,
  0x75,
  0x7d,
  0x7b,
  0x6b,
  0x73,
  0x74,
  0x79,
  0x69,
  // 0x50-0x5F: KP2, KP3, KP0, KP., SysRq, -, ISO \, F11, F12, KP=, …
  0x72,
  0x7a,
  0x70,
  0x71,
  0x7f,
  0x60,
  0x61,
  0x78,
  0x07,
  0x0f,
  0x17,
  0x1f,
  0x27,
  0x2f,
  0x37,
  0x3f,
  // 0x60-0x6F: …, F13-F23
  0x47,
  0x4f,
  0x56,
  0x5e,
  0x08,
  0x10,
  0x18,
  0x20,
  0x28,
  0x30,
  0x38,
  0x40,
  0x48,
  0x50,
  0x57,
  0x6f,
  // 0x70-0x7F: Katakana/Hiragana, …, Ro, …, F24, Henkan, Muhenkan, Yen, KP comma
  0x13,
  0x19,
  0x39,
  0x51,
  0x53,
  0x5c,
  0x5f,
  0x62,
  0x63,
  0x64,
  0x65,
  0x67,
  0x68,
  0x6a,
  0x6d,
  0x6e,
);

/** The 8042's set 2 → set 1 translation of one byte (before the break bit is added). */
export const XLATE_TABLE: Uint8Array = (() => {
  const t = new Uint8Array(256);
  for (let i = 0x80; i < 0x100; i++) t[i] = i; // prefixes and responses (E0, E1, FA, AA, EE, FE, …) pass through
  for (let set1 = 1; set1 < 0x80; set1++) t[SET1_TO_SET2[set1]] = set1;
  t[0x00] = 0xff; // set 2 "key detection error/overrun" is 0xFF in set 1
  t[0x83] = 0x41; // F7 sits outside 0x00-0x7F in set 2
  t[0x84] = 0x54; // Alt+SysRq
  return t;
})();

/** Set 1 codes of the keys that are not a plain (prefix, code) pair. */
export const KEY_PRINT_SCREEN = 0xe037;
/** Pause as QEMU's key numbering has it (0xE046, which is also Ctrl+Break in set 1), and set 1's own 0xE11D. */
export const KEY_PAUSE = 0xe046;
export const KEY_PAUSE_E1 = 0xe11d;
const SET1_F7 = 0x41;
const SET1_SYSRQ = 0x54;
const SET1_LCTRL = 0x1d;
const SET1_LALT = 0x38;

/** Modifier state the special keys depend on: bit 0 Ctrl, bit 1 Alt (either side). */
export const MOD_CTRL = 1;
export const MOD_ALT = 2;

/** The modifier bit a set 1 key code is, or 0. */
export function modifierOf(code: number): number {
  const low = code & 0xff;
  if ((code >> 8 === 0 || code >> 8 === 0xe0) && low === SET1_LCTRL) return MOD_CTRL;
  if ((code >> 8 === 0 || code >> 8 === 0xe0) && low === SET1_LALT) return MOD_ALT;
  return 0;
}

/**
 * The set 2 bytes a keyboard sends for a key going down or up, given as a set 1 code (0xE0nn for extended keys).
 * Empty for codes it does not know. Pause has no break code; Print Screen gets its fake shift (E0 12), or is
 * SysRq (84) while Alt is held; Ctrl+Pause is Break (E0 7E).
 */
export function set2Sequence(code: number, down: boolean, modifiers: number): number[] {
  if (!Number.isInteger(code) || code < 0) return [];
  if (code === KEY_PAUSE || code === KEY_PAUSE_E1) {
    if (!down) return [];
    if (modifiers & MOD_CTRL) return [0xe0, 0x7e, 0xe0, 0xf0, 0x7e];
    return [0xe1, 0x14, 0x77, 0xe1, 0xf0, 0x14, 0xf0, 0x77];
  }
  if (code === KEY_PRINT_SCREEN) {
    if (modifiers & MOD_ALT) return down ? [0x84] : [0xf0, 0x84];
    return down ? [0xe0, 0x12, 0xe0, 0x7c] : [0xe0, 0xf0, 0x7c, 0xe0, 0xf0, 0x12];
  }
  const prefix = code >> 8;
  const low = code & 0xff;
  if ((prefix !== 0 && prefix !== 0xe0) || low === 0 || low >= 0x80) return [];
  let set2 = SET1_TO_SET2[low];
  if (prefix === 0 && low === SET1_F7) set2 = 0x83;
  if (prefix === 0 && low === SET1_SYSRQ) set2 = 0x84;
  const bytes = prefix ? [0xe0] : [];
  if (!down) bytes.push(0xf0);
  bytes.push(set2);
  return bytes;
}

/** Translates set 2 bytes to set 1 as the 8042 does with XLATE on (F0 becomes the break bit of the next code). */
export function translateSet2(bytes: readonly number[]): number[] {
  const out: number[] = [];
  let breakPending = false;
  for (const b of bytes) {
    if (b === 0xf0) {
      breakPending = true;
      continue;
    }
    out.push(XLATE_TABLE[b] | (breakPending ? 0x80 : 0));
    breakPending = false;
  }
  return out;
}
