// Test images for firmware boot, built from Debian's grub-pc-bin with grub-mkrescue (xorriso, mtools):
// build/images/grub.iso is a hybrid image — an El Torito CD and, through its MBR, a disk — whose GRUB shows the
// menu of test/images/grub.cfg on the serial port and the VGA console. Rebuilt when grub.cfg changes; a missing
// tool is named with its apt-get line and the firmware tests that need the image say SKIP.
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const cfg = join(root, 'test/images/grub.cfg');
const out = join(root, 'build/images/grub.iso');

const missing = [
  ['grub-mkrescue', ['--version'], 'grub-common'],
  ['xorriso', ['--version'], 'xorriso'],
  ['mformat', ['--version'], 'mtools'],
].filter(([cmd, args]) => spawnSync(cmd, args, { stdio: 'ignore' }).error !== undefined);
if (!existsSync('/usr/lib/grub/i386-pc/modinfo.sh')) missing.push(['grub i386-pc', [], 'grub-pc-bin']);
if (missing.length) {
  const pkgs = [...new Set(missing.map((m) => m[2]))].join(' ');
  console.error(
    `partita: no GRUB test images (${missing.map((m) => m[0]).join(', ')} missing: apt-get install ${pkgs})`,
  );
  process.exit(0);
}
if (existsSync(out) && statSync(out).mtimeMs >= statSync(cfg).mtimeMs) process.exit(0);

const tmp = mkdtempSync(join(tmpdir(), 'partita-grub-'));
try {
  mkdirSync(join(tmp, 'boot/grub'), { recursive: true });
  copyFileSync(cfg, join(tmp, 'boot/grub/grub.cfg'));
  mkdirSync(dirname(out), { recursive: true });
  // BIOS only (i386-pc), no locales/themes/fonts: a small image that GRUB starts quickly under emulation.
  const r = spawnSync(
    'grub-mkrescue',
    ['-d', '/usr/lib/grub/i386-pc', '--locales=', '--themes=', '--fonts=', '-o', out, tmp],
    { encoding: 'utf8' },
  );
  if (r.status !== 0) {
    console.error(`partita: grub-mkrescue failed: ${(r.stderr || '').trim().split('\n').pop()}`);
    process.exit(1);
  }
  console.log(`partita: built the GRUB test image build/images/grub.iso (${statSync(out).size} bytes)`);
} finally {
  rmSync(tmp, { recursive: true, force: true });
}
