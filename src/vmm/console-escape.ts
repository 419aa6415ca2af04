// The serial console's escape keys, after QEMU's Ctrl-A prefix: Ctrl-A then a key is a command to Partita, not
// input for the guest. Sits between the host terminal (in raw mode) and the UART's receive().
// The state carries across feed() calls, so a Ctrl-A at the end of one read pairs with the key in the next.
const CTRL_A = 0x01;
const KEY_QUIT = 0x78; // x
const KEY_HELP = 0x68; // h
const KEY_BREAK = 0x62; // b

export type ConsoleCommand = 'quit' | 'help' | 'break';

export interface ConsoleEscapeResult {
  /** Bytes for the guest (may be the array passed to feed() itself when it held nothing to filter). */
  readonly forward: Uint8Array;
  /** Commands typed, in order. */
  readonly commands: ConsoleCommand[];
}

export const ESCAPE_HELP = [
  'Partita console keys (Ctrl-A, then the key):',
  '  Ctrl-A x       quit: stop the VM and exit',
  '  Ctrl-A h       show this help',
  '  Ctrl-A b       send a break to the serial port (Linux: SysRq, then the SysRq key)',
  '  Ctrl-A Ctrl-A  send one Ctrl-A to the guest',
  'Ctrl-A followed by any other key sends both keys to the guest.',
].join('\n');

export class ConsoleEscape {
  /** A Ctrl-A was the last byte seen and waits for the key that follows it. */
  private pending = false;

  feed(bytes: Uint8Array): ConsoleEscapeResult {
    const commands: ConsoleCommand[] = [];
    if (!this.pending && bytes.indexOf(CTRL_A) < 0) return { forward: bytes, commands };
    const out = new Uint8Array(bytes.length + 1); // at most one held-back Ctrl-A comes out in addition
    let n = 0;
    for (const b of bytes) {
      if (!this.pending) {
        if (b === CTRL_A) this.pending = true;
        else out[n++] = b;
        continue;
      }
      this.pending = false;
      switch (b) {
        case KEY_QUIT:
          commands.push('quit');
          break;
        case KEY_HELP:
          commands.push('help');
          break;
        case KEY_BREAK:
          commands.push('break');
          break;
        case CTRL_A:
          out[n++] = CTRL_A;
          break;
        default:
          out[n++] = CTRL_A;
          out[n++] = b;
      }
    }
    return { forward: out.subarray(0, n), commands };
  }
}
