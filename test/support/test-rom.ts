// The test "firmware" of test/firmware/*.S — small real-mode ROMs started at the reset vector, each asking the
// machine one question — built into 64 KiB images with the system gcc and ld, as the test guests are.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { repoRoot } from './partita.js';

/** Builds test/firmware/NAME.S into DIR/NAME.rom and returns its path; throws with the tool's message if it fails. */
export function buildTestRom(name: string, dir: string): string {
  const src = join(repoRoot, 'test/firmware', `${name}.S`);
  const obj = join(dir, `${name}.o`);
  const rom = join(dir, `${name}.rom`);
  for (const [cmd, args] of [
    ['gcc', ['-c', '-m32', src, '-o', obj]],
    ['ld', ['-m', 'elf_i386', '-Ttext', '0', '--oformat', 'binary', '-o', rom, obj]],
  ] as const) {
    const r = spawnSync(cmd, args, { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.error?.message ?? r.stderr}`);
  }
  return rom;
}

/** isa-debug-exit at port 0xF4, where the test ROMs report their answer (status (v << 1) | 1, as on Partita). */
export const QEMU_DEBUG_EXIT = ['-device', 'isa-debug-exit,iobase=0xf4,iosize=4'] as const;

/** QEMU's `pc` machine with nothing but a test ROM as its firmware (`accel`: ['-accel', 'tcg'] or ['-enable-kvm']). */
export function qemuRomArgs(rom: string, accel: readonly string[]): string[] {
  return ['-M', 'pc', ...accel, '-nodefaults', '-display', 'none', '-bios', rom];
}

/** `partita run` with nothing but a test ROM as its firmware, no screen and no serial console. */
export function partitaRomArgs(rom: string): string[] {
  return ['run', '--bios', rom, '--display', 'none', '--serial', 'none'];
}
