// `partita image demo`: fetches Debian's cloud kernel and busybox (apt-get download), builds the demo
// initramfs and caches both, with a progress bar.
import { buildDemoImage, DemoImageError } from '../demo-guest/demo.js';

export async function imageDemoCommand(opts: { refresh: boolean }): Promise<number> {
  // Loaded here, not at start-up: `partita run` should not pay for it.
  const { SingleBar, Presets } = await import('cli-progress');
  const bar = process.stderr.isTTY
    ? new SingleBar({ format: 'partita: {stage} [{bar}] {percentage}%', hideCursor: true }, Presets.shades_classic)
    : undefined;
  let started = false;
  try {
    const image = await buildDemoImage({
      refresh: opts.refresh,
      onProgress: (stage, fraction) => {
        if (!bar) return;
        if (!started) {
          bar.start(100, 0, { stage });
          started = true;
        }
        bar.update(Math.round(fraction * 100), { stage });
      },
    });
    bar?.stop();
    process.stdout.write(
      `kernel     ${image.kernel}\ninitramfs  ${image.initramfs}\nversion    ${image.kernelVersion}${image.fromCache ? ' (cached)' : ''}\n` +
        `boot it:   partita run --kernel ${image.kernel} --initrd ${image.initramfs} --cmdline '${image.cmdline}' --cpus 2 --memory 1G\n`,
    );
    return 0;
  } catch (e) {
    bar?.stop();
    if (e instanceof DemoImageError) {
      process.stderr.write(`partita: ${e.message}\n`);
      return 2;
    }
    throw e;
  }
}
