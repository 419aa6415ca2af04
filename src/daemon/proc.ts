// Process identity from /proc: a PID alone is reused by the kernel, a PID plus its start time (proc(5),
// /proc/PID/stat field 22, in clock ticks since boot) names one process for the life of the machine.
import { readFileSync } from 'node:fs';

/** Field 22 of /proc/PID/stat, or undefined when there is no such process. */
export function processStartTime(pid: number): string | undefined {
  if (!Number.isInteger(pid) || pid <= 0) return undefined;
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // Field 2 (comm) is in parentheses and may itself contain spaces and ')': fields 3… follow the last ')'.
  const close = stat.lastIndexOf(')');
  if (close < 0) return undefined;
  const rest = stat
    .slice(close + 2)
    .trim()
    .split(' ');
  // rest[0] is field 3 (state): field 22 is rest[19].
  return rest[19];
}

/** True when `pid` is alive and is the very process that started at `startTime`. */
export function isSameProcess(pid: number, startTime: string): boolean {
  const now = processStartTime(pid);
  return now !== undefined && now === startTime;
}

/** A zombie (exited, not yet reaped) counts as gone. */
export function isZombie(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) === 'Z';
  } catch {
    return false;
  }
}
