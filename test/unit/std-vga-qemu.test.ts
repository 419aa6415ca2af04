// Side by side with QEMU: SeaBIOS and its VGA BIOS (vgabios-stdvga.bin) run on QEMU's std VGA (TCG, no disk)
// until the boot messages are on screen; then the VM is stopped, its VGA registers are read through QEMU's
// monitor (the `i`/`o` port commands), its VRAM through BAR0 (pmemsave), and its screen (screendump). The same
// registers and VRAM loaded into our std-vga must render the same pixels — every cell but the cursor's, whose
// blink phase QEMU chooses. Skipped without QEMU or with PARTITA_NO_QEMU=1.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { stdVgaDisplay } from '../../src/devices/display/vga-renderer.js';
import { QEMU, QEMU_MISSING, qemuAvailable } from '../support/qemu.js';
import { vgaMachine } from '../support/vga-machine.js';

/** QMP over the child's stdio: one command at a time, events skipped. */
class Qmp {
  private readonly waiting: ((reply: Record<string, unknown>) => void)[] = [];
  constructor(private readonly child: ChildProcessWithoutNullStreams) {
    createInterface({ input: child.stdout }).on('line', (line) => {
      let msg: Record<string, unknown>;
      try {
        msg = JSON.parse(line) as Record<string, unknown>;
      } catch {
        return;
      }
      if ('return' in msg || 'error' in msg) this.waiting.shift()?.(msg);
    });
  }
  command(execute: string, args?: Record<string, unknown>): Promise<Record<string, unknown>> {
    return new Promise((resolve) => {
      this.waiting.push(resolve);
      this.child.stdin.write(JSON.stringify({ execute, ...(args ? { arguments: args } : {}) }) + '\n');
    });
  }
  async hmp(line: string): Promise<string> {
    const reply = await this.command('human-monitor-command', { 'command-line': line });
    if ('error' in reply) throw new Error(`${line}: ${JSON.stringify(reply.error)}`);
    return String(reply.return);
  }
  async inb(port: number): Promise<number> {
    const text = await this.hmp(`i /b 0x${port.toString(16)}`);
    const m = /=\s*0x([0-9a-f]+)/i.exec(text);
    if (!m) throw new Error(`i /b 0x${port.toString(16)}: ${text}`);
    return parseInt(m[1], 16);
  }
  async outb(port: number, value: number): Promise<void> {
    await this.hmp(`o /b 0x${port.toString(16)} 0x${value.toString(16)}`);
  }
}

const VRAM_DUMP = 0x40000; // the planes of text mode (4 × 64 KiB)

/**
 * Runs QEMU's std VGA (with `extraArgs`) until `ready` sees the text screen it waits for, stops it, replays QEMU's
 * VGA registers and VRAM into ours, and asserts every cell but the cursor's renders as in QEMU's screendump.
 * Returns the screen as our screenText() reads it.
 */
async function compareWithQemu(extraArgs: string[], ready: (lines: string[]) => boolean): Promise<string[]> {
  const dir = mkdtempSync(join(tmpdir(), 'partita-vga-'));
  const child = spawn(
    QEMU,
    [
      '-M',
      'pc',
      '-vga',
      'std',
      '-display',
      'none',
      '-qmp',
      'stdio',
      '-nic',
      'none',
      '-m',
      '64',
      '-no-user-config',
      ...extraArgs,
    ],
    {
      stdio: ['pipe', 'pipe', 'pipe'],
    },
  );
  try {
    const qmp = new Qmp(child);
    await qmp.command('qmp_capabilities');
    const vramFile = join(dir, 'vram.bin');
    const text = (vram: Buffer, row: number): string =>
      Array.from({ length: 80 }, (_, i) => String.fromCharCode(vram[(row * 80 + i) * 4])).join('');
    // Wait (hang guard: the test's timeout) until SeaBIOS has placed BAR0 and the screen is ready.
    let bar0 = '';
    let vram = Buffer.alloc(0);
    for (; ; await new Promise((r) => setTimeout(r, 500))) {
      const pci = await qmp.hmp('info pci');
      const at = /BAR0: 32 bit prefetchable memory at (0x[0-9a-f]+)/.exec(pci.slice(pci.indexOf('1234:1111')));
      if (!at || !/^0x[0-9a-f]{1,8}$/.test(at[1]) || Number(at[1]) === 0) continue;
      bar0 = at[1];
      await qmp.hmp(`pmemsave ${bar0} ${VRAM_DUMP} "${vramFile}"`);
      vram = readFileSync(vramFile);
      if (ready(Array.from({ length: 25 }, (_, row) => text(vram, row)))) break;
    }
    await qmp.command('stop');
    await qmp.hmp(`pmemsave ${bar0} ${VRAM_DUMP} "${vramFile}"`);
    vram = readFileSync(vramFile);
    const shot = join(dir, 'screen.ppm');
    await qmp.hmp(`screendump "${shot}"`);

    // QEMU's registers, replayed into ours through the same ports.
    const m = vgaMachine();
    const misc = await qmp.inb(0x3cc);
    m.outb(0x3c2, misc);
    const crtc = misc & 1 ? 0x3d4 : 0x3b4;
    for (let i = 0; i < 5; i++) {
      await qmp.outb(0x3c4, i);
      m.outw(0x3c4, ((await qmp.inb(0x3c5)) << 8) | i);
    }
    for (let i = 0; i < 9; i++) {
      await qmp.outb(0x3ce, i);
      m.outw(0x3ce, ((await qmp.inb(0x3cf)) << 8) | i);
    }
    m.outw(crtc, 0x0011);
    const crtcValues: number[] = [];
    for (let i = 0; i < 0x19; i++) {
      await qmp.outb(crtc, i);
      crtcValues.push(await qmp.inb(crtc + 1));
    }
    crtcValues.forEach((v, i) => i !== 0x11 && m.outw(crtc, (v << 8) | i));
    m.outw(crtc, (crtcValues[0x11] << 8) | 0x11);
    m.inb(crtc + 6);
    for (let i = 0; i < 0x15; i++) {
      await qmp.inb(crtc + 6);
      await qmp.outb(0x3c0, i | 0x20);
      const v = await qmp.inb(0x3c1);
      m.outb(0x3c0, i);
      m.outb(0x3c0, v);
    }
    await qmp.outb(0x3c7, 0);
    m.outb(0x3c8, 0);
    for (let i = 0; i < 64 * 3; i++) m.outb(0x3c9, await qmp.inb(0x3c9));
    m.inb(crtc + 6);
    m.outb(0x3c0, 0x20);
    m.device.vga.regs.vram.set(vram);

    const frame = stdVgaDisplay(m.device)!.render();
    const ppm = readFileSync(shot);
    const [, w, h] = ppm.toString('latin1', 0, 20).split(/\s+/).map(Number);
    assert.deepEqual([frame.width, frame.height], [w, h], 'same screen size');
    const pixels = ppm.subarray(ppm.length - w * h * 3);
    const cursor = (crtcValues[0x0e] << 8) | crtcValues[0x0f];
    const cols = crtcValues[1] + 1;
    const cellW = w / cols;
    const cellH = (crtcValues[9] & 0x1f) + 1;
    const differing = new Set<string>();
    for (let y = 0; y < h; y++)
      for (let x = 0; x < w; x++) {
        const q = (y * w + x) * 3;
        const o = (y * w + x) * 4;
        if (pixels[q] !== frame.rgba[o] || pixels[q + 1] !== frame.rgba[o + 1] || pixels[q + 2] !== frame.rgba[o + 2]) {
          const cell = Math.floor(y / cellH) * cols + Math.floor(x / cellW);
          if (cell !== cursor) differing.add(`row ${Math.floor(y / cellH)} col ${Math.floor(x / cellW)}`);
        }
      }
    assert.deepEqual([...differing].slice(0, 10), [], 'cells that differ from QEMU');
    return stdVgaDisplay(m.device)!.screenText()!;
  } finally {
    child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
}

test(
  'std-vga vs QEMU: the SeaBIOS boot screen renders pixel for pixel as QEMU shows it',
  { timeout: 300_000 },
  async (t) => {
    if (!qemuAvailable()) return t.skip(QEMU_MISSING);
    const lines = await compareWithQemu([], (l) => l[0].startsWith('SeaBIOS') && /Booting from/.test(l[1]));
    assert.match(lines[0], /^SeaBIOS/);
  },
);

test(
  'std-vga vs QEMU: the GRUB text menu (boxes, highlighted entry) renders as QEMU shows it',
  { timeout: 300_000 },
  async (t) => {
    if (!qemuAvailable()) return t.skip(QEMU_MISSING);
    const dir = mkdtempSync(join(tmpdir(), 'partita-grub-'));
    try {
      mkdirSync(join(dir, 'root/boot/grub'), { recursive: true });
      writeFileSync(
        join(dir, 'root/boot/grub/grub.cfg'),
        "set timeout=-1\nterminal_output console\nmenuentry 'Partita test entry' { true }\nmenuentry 'Second entry' { true }\n",
      );
      const iso = join(dir, 'grub.iso');
      const mk = spawnSync('grub-mkrescue', ['-o', iso, join(dir, 'root')], { encoding: 'utf8' });
      if (mk.error || mk.status !== 0)
        return t.skip(`grub-mkrescue (grub-pc-bin, xorriso) cannot build an ISO: ${mk.stderr}`);
      const lines = await compareWithQemu(['-cdrom', iso, '-boot', 'd'], (l) =>
        l.some((line) => line.includes('Second entry')),
      );
      assert.ok(
        lines.some((line) => line.includes('GNU GRUB')),
        lines.join('\n'),
      );
      assert.ok(
        lines.some((line) => /[┌┐└┘─│]/.test(line)),
        `a menu box of line-drawing characters:\n${lines.join('\n')}`,
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
);
