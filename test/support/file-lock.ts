// A process holding a flock(2) on a file the way a running VM holds its disk image (openBlock in
// src/devices/virtio/block.ts: LOCK_EX read-write, LOCK_SH read-only), so lock checks can be tested without KVM.
// util-linux flock(1) takes the lock and keeps it while its command (cat, until stdin closes) runs.
import { spawn } from 'node:child_process';
import { once } from 'node:events';

export interface LockHolder {
  release(): Promise<void>;
}

/** Resolves once `path` is locked (`shared`: LOCK_SH, else LOCK_EX) by a child process; release() ends it. */
export async function holdFileLock(path: string, shared = false): Promise<LockHolder> {
  const child = spawn(
    'flock',
    [shared ? '--shared' : '--exclusive', '--nonblock', path, 'sh', '-c', 'echo locked; cat'],
    {
      stdio: ['pipe', 'pipe', 'inherit'],
    },
  );
  const exited = once(child, 'exit');
  let out = '';
  const locked = new Promise<void>((resolve, reject) => {
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('locked')) resolve();
    });
    void exited.then(() => reject(new Error(`flock could not lock ${path}`)));
  });
  await locked;
  return {
    release: async () => {
      child.stdin.end();
      await exited;
    },
  };
}
