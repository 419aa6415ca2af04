// Which of a VM's input devices the screen's keys and pointer reach (the RFB server's InputSink). The virtio
// tablet and keyboard take over once the guest's driver has set them up (DRIVER_OK): then the pointer is absolute
// and keys arrive as Linux key codes. Before that, and on guests without virtio-input drivers (SeaBIOS, GRUB, an
// installer's early stages), everything goes to the i8042's PS/2 keyboard and mouse, as before.
import type { InputSink } from '../display/source.js';
import { scancodeToLinuxKey } from '../devices/virtio/input-keycodes.js';

/** What routing needs of a virtio-input device (VirtioInput implements it). */
export interface VirtioInputTarget {
  readonly ready: boolean;
  pointerAbsolute(x: number, y: number, width: number, height: number, buttons: number): boolean;
  key(code: number, down: boolean): boolean;
  leds(): number;
}

/**
 * One InputSink over the PS/2 controller and the virtio tablet/keyboard a VM has (any of them may be missing);
 * undefined when it has none. A key's release goes where its press went, so a key held while the guest's driver
 * came up is not left pressed on the other device.
 */
export function routedInputSink(
  ps2: InputSink | undefined,
  tablet: VirtioInputTarget | undefined,
  keyboard: VirtioInputTarget | undefined,
): InputSink | undefined {
  if (!ps2 && !tablet && !keyboard) return undefined;
  const pressedOnVirtio = new Set<number>();
  return {
    key(scancode, down) {
      const code = scancodeToLinuxKey(scancode);
      const virtio = down ? keyboard?.ready === true && code !== undefined : pressedOnVirtio.has(scancode);
      if (virtio && code !== undefined && keyboard?.key(code, down)) {
        if (down) pressedOnVirtio.add(scancode);
        else pressedOnVirtio.delete(scancode);
        return;
      }
      pressedOnVirtio.delete(scancode);
      ps2?.key(scancode, down);
    },
    pointer(dx, dy, buttons) {
      ps2?.pointer(dx, dy, buttons);
    },
    pointerAbsolute(x, y, width, height, buttons) {
      return tablet?.pointerAbsolute(x, y, width, height, buttons) ?? false;
    },
    leds() {
      if (keyboard?.ready) return keyboard.leds();
      return ps2?.leds() ?? 0;
    },
  };
}
