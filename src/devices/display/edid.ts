// VESA E-EDID 1.4 base block (VESA Enhanced EDID Standard, release A rev. 2, §3): what the std VGA's MMIO BAR
// shows at offset 0, as QEMU's does, so bochs-drm and OVMF's QemuVideoDxe learn a preferred mode and the largest
// one. One 128-byte block, no extensions.

/** A detailed timing (EDID §3.10.2) for one mode at about 60 Hz, with CVT-like blanking. */
function detailedTiming(width: number, height: number): Uint8Array {
  const hBlank = Math.max(160, Math.round(width * 0.3) & ~7);
  const vBlank = Math.max(23, Math.round(height * 0.05));
  const hFront = 48;
  const hSync = 32;
  const vFront = 3;
  const vSync = 5;
  const clock10kHz = Math.round(((width + hBlank) * (height + vBlank) * 60) / 10_000);
  const d = new Uint8Array(18);
  d[0] = clock10kHz & 0xff;
  d[1] = (clock10kHz >> 8) & 0xff;
  d[2] = width & 0xff;
  d[3] = hBlank & 0xff;
  d[4] = ((width >> 8) << 4) | ((hBlank >> 8) & 0xf);
  d[5] = height & 0xff;
  d[6] = vBlank & 0xff;
  d[7] = ((height >> 8) << 4) | ((vBlank >> 8) & 0xf);
  d[8] = hFront & 0xff;
  d[9] = hSync & 0xff;
  d[10] = ((vFront & 0xf) << 4) | (vSync & 0xf);
  d[11] = 0;
  const widthMm = Math.round(width * 0.264);
  const heightMm = Math.round(height * 0.264);
  d[12] = widthMm & 0xff;
  d[13] = heightMm & 0xff;
  d[14] = ((widthMm >> 8) << 4) | ((heightMm >> 8) & 0xf);
  d[17] = 0x18; // digital separate sync, both polarities negative
  return d;
}

/** A display descriptor (EDID §3.10.3): `tag` 0xFC monitor name, 0xFF serial; text padded with LF and spaces. */
function textDescriptor(tag: number, text: string): Uint8Array {
  const d = new Uint8Array(18);
  d[3] = tag;
  const bytes = Buffer.from(text.slice(0, 13), 'latin1');
  d.set(bytes, 5);
  if (bytes.length < 13) {
    d[5 + bytes.length] = 0x0a;
    d.fill(0x20, 6 + bytes.length);
  }
  return d;
}

/** Display range limits (EDID §3.10.3.3): 50-125 Hz vertical, 30-160 kHz horizontal, up to the given clock. */
function rangeLimits(maxClockMHz: number): Uint8Array {
  const d = new Uint8Array(18);
  d[3] = 0xfd;
  d.set(
    [50, 125, 30, 160, Math.min(255, Math.ceil(maxClockMHz / 10)), 0x01, 0x0a, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20],
    5,
  );
  return d;
}

/** The 128-byte EDID of a virtual monitor preferring `width`×`height` and accepting up to `maxWidth`×`maxHeight`. */
export function buildEdid(width = 1024, height = 768, maxWidth = 2560, maxHeight = 1600): Uint8Array {
  const e = new Uint8Array(128);
  e.set([0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00], 0);
  // Manufacturer "PTA" as three 5-bit letters (A = 1), big-endian.
  const id = ((0x50 - 0x40) << 10) | ((0x54 - 0x40) << 5) | (0x41 - 0x40);
  e[8] = id >> 8;
  e[9] = id & 0xff;
  e[10] = 0x34; // product code 0x1234
  e[11] = 0x12;
  e[16] = 1; // week 1
  e[17] = 2024 - 1990;
  e[18] = 1; // EDID 1.4
  e[19] = 4;
  e[20] = 0xa5; // digital, 8 bits per colour, DisplayPort
  e[21] = Math.round(maxWidth * 0.0264); // screen size in cm
  e[22] = Math.round(maxHeight * 0.0264);
  e[23] = 120; // gamma 2.2
  e[24] = 0x06; // RGB colour, preferred timing mode is native
  // sRGB chromaticity (EDID §3.7).
  e.set([0xee, 0x91, 0xa3, 0x54, 0x4c, 0x99, 0x26, 0x0f, 0x50, 0x54], 25);
  e[35] = 0x21; // established timings: 640x480@60, 800x600@60
  e[36] = 0x08; // 1024x768@60
  e[37] = 0;
  e.fill(0x01, 38, 54); // no standard timings
  e.set(detailedTiming(width, height), 54);
  e.set(detailedTiming(maxWidth, maxHeight), 72);
  e.set(textDescriptor(0xfc, 'Partita VGA'), 90);
  e.set(rangeLimits(((maxWidth * 1.3 * maxHeight * 1.05 * 60) / 1e6) | 0), 108);
  e[126] = 0; // no extension blocks
  let sum = 0;
  for (let i = 0; i < 127; i++) sum += e[i];
  e[127] = (256 - (sum & 0xff)) & 0xff;
  return e;
}
