// The test disk the virtio-blk test guests read: sector 0 holds a known pattern that the guests checksum, so a
// test can tell the guest read the right bytes, and an image hash tells whether anything was written.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';

export const SECTOR0 = Buffer.alloc(512);
for (let i = 0; i < 512; i++) SECTOR0[i] = (i * 13 + 5) & 0xff;
SECTOR0.write('PARTITA-BLK-TEST', 0, 'latin1');

/** The guests' checksum (test/guests/lib/virtio.c): sum = sum * 31 + byte, in 32 bits, as 8 hex digits. */
export function sectorChecksum(b: Buffer): string {
  let sum = 0;
  for (const x of b) sum = (Math.imul(sum, 31) + x) >>> 0;
  return sum.toString(16).padStart(8, '0');
}

export function sha256File(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}
