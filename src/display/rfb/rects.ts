// Dirty-rectangle bookkeeping for RFB updates (RFC 6143 §7.6.1 sends rectangles; we keep few and merge).
import type { Rect } from '../source.js';

/** Past this many pending rectangles a viewer's dirty region collapses to their bounding box. */
export const MAX_DIRTY_RECTS = 64;

export function clipRect(r: Rect, width: number, height: number): Rect | undefined {
  const x0 = Math.max(0, Math.floor(r.x));
  const y0 = Math.max(0, Math.floor(r.y));
  const x1 = Math.min(width, Math.floor(r.x + r.width));
  const y1 = Math.min(height, Math.floor(r.y + r.height));
  if (!(x1 > x0 && y1 > y0)) return undefined;
  return { x: x0, y: y0, width: x1 - x0, height: y1 - y0 };
}

function contains(a: Rect, b: Rect): boolean {
  return b.x >= a.x && b.y >= a.y && b.x + b.width <= a.x + a.width && b.y + b.height <= a.y + a.height;
}

export function boundingBox(rects: readonly Rect[]): Rect {
  let x0 = Infinity;
  let y0 = Infinity;
  let x1 = -Infinity;
  let y1 = -Infinity;
  for (const r of rects) {
    x0 = Math.min(x0, r.x);
    y0 = Math.min(y0, r.y);
    x1 = Math.max(x1, r.x + r.width);
    y1 = Math.max(y1, r.y + r.height);
  }
  return { x: x0, y: y0, width: x1 - x0, height: y1 - y0 };
}

/** Adds a (clipped) rectangle to a dirty list: drops what it covers, skips it if covered, bounds the count. */
export function addDirtyRect(list: Rect[], r: Rect): Rect[] {
  if (list.some((d) => contains(d, r))) return list;
  const kept = list.filter((d) => !contains(r, d));
  kept.push(r);
  return kept.length > MAX_DIRTY_RECTS ? [boundingBox(kept)] : kept;
}
