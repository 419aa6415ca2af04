// XT (set 1) scancodes, as the host hands keys to the machine (display/source.ts InputSink: extended keys as
// 0xE0nn), → Linux input event codes (KEY_*, include/uapi/linux/input-event-codes.h), which virtio-input's
// EV_KEY events carry (virtio 1.2 §5.8.6). Set 1 from Microsoft's "Keyboard Scan Code Specification" (rev. 1.3a).
//
// For the main block, F1-F10 and the keypad (set 1 0x01-0x53), Linux's KEY_* values were chosen equal to the
// set 1 make code (KEY_ESC = 1 … KEY_KPDOT = 83): that range is the identity. The rest is listed one by one.

/** The keys after the identity range, and the 0xE0-prefixed keys: [scancode, KEY_* code]. */
const LISTED: readonly (readonly [number, number])[] = [
  [0x54, 99], // Alt+Print Screen (SysRq) → KEY_SYSRQ
  [0x56, 86], // the key left of Z on ISO keyboards → KEY_102ND
  [0x57, 87], // F11
  [0x58, 88], // F12
  [0x59, 117], // keypad = → KEY_KPEQUAL
  [0x64, 183], // F13
  [0x65, 184], // F14
  [0x66, 185], // F15
  [0x67, 186], // F16
  [0x68, 187], // F17
  [0x69, 188], // F18
  [0x6a, 189], // F19
  [0x6b, 190], // F20
  [0x6c, 191], // F21
  [0x6d, 192], // F22
  [0x6e, 193], // F23
  [0x76, 194], // F24
  [0x70, 93], // Japanese Katakana/Hiragana → KEY_KATAKANAHIRAGANA
  [0x73, 89], // Japanese Ro → KEY_RO
  [0x79, 92], // Japanese Henkan → KEY_HENKAN
  [0x7b, 94], // Japanese Muhenkan → KEY_MUHENKAN
  [0x7d, 124], // Japanese Yen → KEY_YEN
  [0x7e, 121], // Brazilian keypad . → KEY_KPCOMMA
  [0xe010, 165], // previous track → KEY_PREVIOUSSONG
  [0xe019, 163], // next track → KEY_NEXTSONG
  [0xe01c, 96], // keypad Enter → KEY_KPENTER
  [0xe01d, 97], // right Ctrl → KEY_RIGHTCTRL
  [0xe020, 113], // mute → KEY_MUTE
  [0xe021, 140], // calculator → KEY_CALC
  [0xe022, 164], // play/pause → KEY_PLAYPAUSE
  [0xe024, 166], // stop → KEY_STOPCD
  [0xe02e, 114], // volume down → KEY_VOLUMEDOWN
  [0xe030, 115], // volume up → KEY_VOLUMEUP
  [0xe032, 172], // WWW home → KEY_HOMEPAGE
  [0xe035, 98], // keypad / → KEY_KPSLASH
  [0xe037, 99], // Print Screen → KEY_SYSRQ (Linux's name for that key)
  [0xe038, 100], // right Alt (AltGr) → KEY_RIGHTALT
  [0xe046, 119], // Ctrl+Break; also QEMU's code for Pause (0xC6) → KEY_PAUSE
  [0xe047, 102], // Home
  [0xe048, 103], // Up
  [0xe049, 104], // Page Up
  [0xe04b, 105], // Left
  [0xe04d, 106], // Right
  [0xe04f, 107], // End
  [0xe050, 108], // Down
  [0xe051, 109], // Page Down
  [0xe052, 110], // Insert
  [0xe053, 111], // Delete
  [0xe05b, 125], // left Windows → KEY_LEFTMETA
  [0xe05c, 126], // right Windows → KEY_RIGHTMETA
  [0xe05d, 127], // Application (menu) → KEY_COMPOSE
  [0xe05e, 116], // ACPI Power → KEY_POWER
  [0xe05f, 142], // ACPI Sleep → KEY_SLEEP
  [0xe063, 143], // ACPI Wake → KEY_WAKEUP
  [0xe065, 217], // WWW search → KEY_SEARCH
  [0xe066, 156], // WWW favorites → KEY_BOOKMARKS
  [0xe067, 173], // WWW refresh → KEY_REFRESH
  [0xe068, 128], // WWW stop → KEY_STOP
  [0xe069, 159], // WWW forward → KEY_FORWARD
  [0xe06a, 158], // WWW back → KEY_BACK
  [0xe06b, 157], // My Computer → KEY_COMPUTER
  [0xe06c, 155], // mail → KEY_MAIL
  [0xe06d, 226], // media select → KEY_MEDIA
];

function buildTable(): Map<number, number> {
  const table = new Map<number, number>();
  for (let code = 0x01; code <= 0x53; code++) table.set(code, code);
  for (const [scancode, key] of LISTED) table.set(scancode, key);
  return table;
}

const SCANCODE_TO_KEY = buildTable();

/** The Linux KEY_* code of an XT scancode (0xE0nn for extended keys), or undefined when it has none. */
export function scancodeToLinuxKey(scancode: number): number | undefined {
  return SCANCODE_TO_KEY.get(scancode);
}

/** Every KEY_* code the table produces: the virtio keyboard's EV_KEY bitmap (what keys it can send). */
export function linuxKeysOfScancodes(): number[] {
  return [...new Set(SCANCODE_TO_KEY.values())].sort((a, b) => a - b);
}
