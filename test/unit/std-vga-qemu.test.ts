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
import { DISPI, VRAM_SIZE } from '../../src/devices/display/std-vga.js';
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
  /** A Bochs VBE DISPI register, through ports 0x1CE/0x1CF. */
  async dispi(index: number): Promise<number> {
    await this.hmp(`o /h 0x1ce 0x${index.toString(16)}`);
    const text = await this.hmp('i /h 0x1cf');
    const m = /=\s*0x([0-9a-f]+)/i.exec(text);
    if (!m) throw new Error(`i /h 0x1cf: ${text}`);
    return parseInt(m[1], 16);
  }
  /** BAR0 of the std VGA once the firmware has placed it. */
  async vgaBar0(): Promise<string | undefined> {
    const pci = await this.hmp('info pci');
    const at = /BAR0: 32 bit prefetchable memory at (0x[0-9a-f]+)/.exec(pci.slice(pci.indexOf('1234:1111')));
    return at && /^0x[0-9a-f]{1,8}$/.test(at[1]) && Number(at[1]) !== 0 ? at[1] : undefined;
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
    const deadline = Date.now() + 240_000;
    for (; ; await new Promise((r) => setTimeout(r, 500))) {
      if (Date.now() > deadline) throw new Error('the screen QEMU was to show did not appear (hang guard)');
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
    return stdVgaDisplay(m.device)!.screenText()!.split('\n');
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

test(
  'std-vga vs QEMU: GRUB in a 1024x768x32 VBE mode (gfxterm) renders pixel for pixel as QEMU shows it',
  { timeout: 300_000 },
  async (t) => {
    if (!qemuAvailable()) return t.skip(QEMU_MISSING);
    const dir = mkdtempSync(join(tmpdir(), 'partita-grub-vbe-'));
    const qemuArgs = ['-M', 'pc', '-vga', 'std', '-display', 'none', '-qmp', 'stdio', '-nic', 'none', '-m', '128'];
    let child: ChildProcessWithoutNullStreams | undefined;
    try {
      mkdirSync(join(dir, 'root/boot/grub'), { recursive: true });
      writeFileSync(
        join(dir, 'root/boot/grub/grub.cfg'),
        'set timeout=-1\ninsmod all_video\nloadfont unicode\nset gfxmode=1024x768x32\nterminal_output gfxterm\n' +
          "menuentry 'Partita graphics entry' { true }\n",
      );
      const iso = join(dir, 'grub.iso');
      const mk = spawnSync('grub-mkrescue', ['-o', iso, join(dir, 'root')], { encoding: 'utf8' });
      if (mk.error || mk.status !== 0) return t.skip(`grub-mkrescue cannot build an ISO: ${mk.stderr}`);
      child = spawn(QEMU, [...qemuArgs, '-no-user-config', '-cdrom', iso, '-boot', 'd'], {
        stdio: ['pipe', 'pipe', 'pipe'],
      });
      const qmp = new Qmp(child);
      await qmp.command('qmp_capabilities');
      const vramFile = join(dir, 'vram.bin');
      const bytes = VRAM_SIZE; // all of it: GRUB flips between pages (Y_OFFSET)
      // Wait (hang guard: the test's timeout) for the VBE mode and then for the menu to be drawn: two dumps alike.
      let bar0: string | undefined;
      let previous = Buffer.alloc(0);
      const deadline = Date.now() + 240_000;
      for (; ; await new Promise((r) => setTimeout(r, 1000))) {
        if (Date.now() > deadline) throw new Error('GRUB did not reach its graphical menu (hang guard)');
        bar0 ??= await qmp.vgaBar0();
        if (!bar0 || !((await qmp.dispi(DISPI.ENABLE)) & 1) || (await qmp.dispi(DISPI.XRES)) !== 1024) continue;
        await qmp.hmp(`pmemsave ${bar0} ${bytes} "${vramFile}"`);
        const vram = readFileSync(vramFile);
        if (vram.equals(previous) && vram.some((b) => b !== 0)) break;
        previous = vram;
      }
      await qmp.command('stop');
      const regs = new Map<number, number>();
      for (const i of [
        DISPI.XRES,
        DISPI.YRES,
        DISPI.BPP,
        DISPI.ENABLE,
        DISPI.VIRT_WIDTH,
        DISPI.X_OFFSET,
        DISPI.Y_OFFSET,
      ])
        regs.set(i, await qmp.dispi(i));
      const virtHeight = await qmp.dispi(DISPI.VIRT_HEIGHT);
      await qmp.hmp(`pmemsave ${bar0} ${bytes} "${vramFile}"`);
      const shot = join(dir, 'screen.ppm');
      await qmp.hmp(`screendump "${shot}"`);

      const m = vgaMachine();
      m.inb(0x3da);
      m.outb(0x3c0, 0x20);
      for (const i of [DISPI.BPP, DISPI.XRES, DISPI.YRES]) m.dispi(i, regs.get(i)!);
      m.dispi(DISPI.ENABLE, regs.get(DISPI.ENABLE)! | 0x80);
      for (const i of [DISPI.VIRT_WIDTH, DISPI.X_OFFSET, DISPI.Y_OFFSET]) m.dispi(i, regs.get(i)!);
      assert.equal(m.dispi(DISPI.VIRT_HEIGHT), virtHeight, 'VIRT_HEIGHT as QEMU computes it');
      for (const [i, v] of regs) assert.equal(m.dispi(i) & ~0x80, v & ~0x80, `DISPI register ${i} as in QEMU`);
      m.device.vga.regs.vram.set(readFileSync(vramFile));
      const frame = stdVgaDisplay(m.device)!.render();
      const ppm = readFileSync(shot);
      const [, w, h] = ppm.toString('latin1', 0, 20).split(/\s+/).map(Number);
      assert.deepEqual([frame.width, frame.height], [w, h]);
      const pixels = ppm.subarray(ppm.length - w * h * 3);
      let differing = 0;
      const box = { x0: w, y0: h, x1: -1, y1: -1 };
      let sample = '';
      for (let i = 0; i < w * h; i++) {
        const q = i * 3;
        const o = i * 4;
        if (pixels[q] === frame.rgba[o] && pixels[q + 1] === frame.rgba[o + 1] && pixels[q + 2] === frame.rgba[o + 2])
          continue;
        differing++;
        const [x, y] = [i % w, Math.floor(i / w)];
        Object.assign(box, {
          x0: Math.min(box.x0, x),
          y0: Math.min(box.y0, y),
          x1: Math.max(box.x1, x),
          y1: Math.max(box.y1, y),
        });
        sample ||= `(${x},${y}) QEMU ${[...pixels.subarray(q, q + 3)]} ours ${[...frame.rgba.subarray(o, o + 3)]}`;
      }
      assert.equal(differing, 0, `pixels that differ from QEMU, in ${JSON.stringify(box)}, first ${sample}`);
      let lit = 0;
      for (let i = 0; i < frame.rgba.length; i += 4) if (frame.rgba[i] | frame.rgba[i + 1] | frame.rgba[i + 2]) lit++;
      assert.ok(lit > 1000, `GRUB drew its menu (${lit} lit pixels)`);
    } finally {
      child?.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    }
  },
);
