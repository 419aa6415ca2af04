// What a screen consumer (screenshots, the RFB server) reads from a display device, and what it sends back to
// the machine's input devices. The display device (std VGA) implements DisplaySource; the machine's input devices
// (i8042 PS/2, virtio-input tablet and keyboard: src/vmm/input-routing.ts picks between them) implement InputSink.

export interface Rect {
  readonly x: number;
  readonly y: number;
  readonly width: number;
  readonly height: number;
}

/** One rendered screen: `rgba` is width × height × 4 bytes, R, G, B, A per pixel, rows top to bottom. */
export interface DisplayFrame {
  readonly width: number;
  readonly height: number;
  readonly rgba: Uint8Array;
}

export interface DisplaySource {
  /** The current screen size (it changes with the guest's video mode). */
  size(): { readonly width: number; readonly height: number };
  /** Renders the whole screen as it is now (text mode through the font, graphics modes through the palette). */
  render(): DisplayFrame;
  /**
   * What changed since the previous call, as rectangles of the current screen (from the framebuffer's dirty
   * log, the text buffer, palette and mode changes); the whole screen after a mode change. Empty: nothing.
   */
  changes(): readonly Rect[];
}

/** Key codes are XT (set 1) scancodes; extended keys carry their 0xE0 prefix as 0xE0nn (0xE048: cursor up). */
export interface InputSink {
  key(scancode: number, down: boolean): void;
  /** Relative pointer motion and buttons (bit 0 left, 1 middle, 2 right, 3/4 wheel up/down). */
  pointer(dx: number, dy: number, buttons: number): void;
  /**
   * The viewer's pointer at pixel (x, y) of a width × height screen, and its buttons, for an absolute pointing
   * device (a virtio tablet). False when no such device is in use (none, or no driver for it yet): the caller
   * then sends relative motion through pointer() instead.
   */
  pointerAbsolute?(x: number, y: number, width: number, height: number, buttons: number): boolean;
  /** Keyboard LEDs the guest set: bit 0 Scroll Lock, 1 Num Lock, 2 Caps Lock. */
  leds(): number;
}
