// X11 keysyms (X Window System Protocol, Appendix A; keysymdef.h values) → XT set-1 make codes for a US keyboard,
// for RFB KeyEvent (RFC 6143 §7.5.4). Shifted symbols map to the key that produces them ('!' → the '1' key):
// the viewer sends Shift itself, so the guest sees the same key presses the user made. Non-US layouts need the
// QEMU Extended Key Event (rfbproto "QEMU Extended Key Event Message"), which carries scancodes end to end.

const US_ROWS: [string, string, number][] = [
  // unshifted, shifted, first scancode (consecutive keys)
  ['1234567890-=', '!@#$%^&*()_+', 0x02],
  ['qwertyuiop[]', 'QWERTYUIOP{}', 0x10],
  ["asdfghjkl;'`", 'ASDFGHJKL:"~', 0x1e],
  ['\\zxcvbnm,./', '|ZXCVBNM<>?', 0x2b],
];

const SPECIAL: [number, number][] = [
  [0x20, 0x39], // space
  [0xff08, 0x0e], // BackSpace
  [0xff09, 0x0f], // Tab
  [0xfe20, 0x0f], // ISO_Left_Tab (Shift+Tab)
  [0xff0d, 0x1c], // Return
  [0xff1b, 0x01], // Escape
  [0xffff, 0xe053], // Delete
  [0xff50, 0xe047], // Home
  [0xff51, 0xe04b], // Left
  [0xff52, 0xe048], // Up
  [0xff53, 0xe04d], // Right
  [0xff54, 0xe050], // Down
  [0xff55, 0xe049], // Page_Up
  [0xff56, 0xe051], // Page_Down
  [0xff57, 0xe04f], // End
  [0xff63, 0xe052], // Insert
  [0xff61, 0xe037], // Print (the make code without its fake-shift prefix)
  [0xff15, 0x54], // Sys_Req
  [0xff14, 0x46], // Scroll_Lock
  [0xff7f, 0x45], // Num_Lock
  [0xffe5, 0x3a], // Caps_Lock
  [0xffe1, 0x2a], // Shift_L
  [0xffe2, 0x36], // Shift_R
  [0xffe3, 0x1d], // Control_L
  [0xffe4, 0xe01d], // Control_R
  [0xffe9, 0x38], // Alt_L
  [0xffea, 0xe038], // Alt_R
  [0xfe03, 0xe038], // ISO_Level3_Shift (AltGr)
  [0xffe7, 0xe05b], // Meta_L
  [0xffe8, 0xe05c], // Meta_R
  [0xffeb, 0xe05b], // Super_L
  [0xffec, 0xe05c], // Super_R
  [0xff67, 0xe05d], // Menu
  [0xff8d, 0xe01c], // KP_Enter
  [0xffaf, 0xe035], // KP_Divide
  [0xffaa, 0x37], // KP_Multiply
  [0xffad, 0x4a], // KP_Subtract
  [0xffab, 0x4e], // KP_Add
  [0xffae, 0x53], // KP_Decimal
  [0xff9f, 0x53], // KP_Delete
  [0xff95, 0x47], // KP_Home
  [0xff96, 0x4b], // KP_Left
  [0xff97, 0x48], // KP_Up
  [0xff98, 0x4d], // KP_Right
  [0xff99, 0x50], // KP_Down
  [0xff9a, 0x49], // KP_Prior
  [0xff9b, 0x51], // KP_Next
  [0xff9c, 0x4f], // KP_End
  [0xff9d, 0x4c], // KP_Begin
  [0xff9e, 0x52], // KP_Insert
];

const KEYPAD_DIGITS = [0x52, 0x4f, 0x50, 0x51, 0x4b, 0x4c, 0x4d, 0x47, 0x48, 0x49]; // KP_0 … KP_9

function buildTable(): Map<number, number> {
  const table = new Map<number, number>();
  for (const [plain, shifted, first] of US_ROWS) {
    for (let i = 0; i < plain.length; i++) {
      const code = first + i;
      table.set(plain.charCodeAt(i), code);
      table.set(shifted.charCodeAt(i), code);
    }
  }
  for (const [keysym, code] of SPECIAL) table.set(keysym, code);
  for (let i = 0; i < 10; i++) table.set(0xffb0 + i, KEYPAD_DIGITS[i]);
  for (let i = 0; i < 10; i++) table.set(0xffbe + i, 0x3b + i); // F1 … F10
  table.set(0xffc8, 0x57); // F11
  table.set(0xffc9, 0x58); // F12
  return table;
}

const KEYSYM_TO_XT = buildTable();

/** The XT make code (0xE0nn for extended keys) of an X keysym on a US keyboard, or undefined when it has none. */
export function keysymToScancode(keysym: number): number | undefined {
  return KEYSYM_TO_XT.get(keysym);
}

/**
 * The QEMU Extended Key Event's keycode → our scancode: single-byte codes are sent as is, 0xE0-prefixed ones
 * with the high bit set (0xE0 0x48 → 0xC8). Codes outside that encoding (Pause's 0xE1 sequence) are dropped.
 */
export function qemuKeycodeToScancode(keycode: number): number | undefined {
  if (keycode <= 0 || keycode > 0xff) return undefined;
  return keycode & 0x80 ? 0xe000 | (keycode & 0x7f) : keycode;
}
