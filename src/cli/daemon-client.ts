// The CLI's side of the daemon API: JSON requests over the daemon's UNIX socket (or loopback TCP with a token).
import { request as httpRequest } from 'node:http';

export interface DaemonEndpoint {
  /** The daemon's UNIX socket. */
  readonly socketPath?: string;
  /** Or host and port, with the bearer token. */
  readonly host?: string;
  readonly port?: number;
  readonly token?: string;
}

export interface DaemonResponse<T = unknown> {
  readonly status: number;
  readonly body: T;
  readonly contentType: string;
  readonly raw: Buffer;
}

/** The daemon is not there (no socket, or nobody behind it). */
export class NoDaemonError extends Error {
  constructor(readonly where: string) {
    super(`no daemon at ${where}: start it with: partita serve`);
    this.name = 'NoDaemonError';
  }
}

export class DaemonClient {
  constructor(readonly endpoint: DaemonEndpoint) {}

  get where(): string {
    return this.endpoint.socketPath ?? `${this.endpoint.host}:${this.endpoint.port}`;
  }

  /** One request; `body` is sent as JSON (a string is sent as it is, for tests of malformed bodies). */
  request<T = unknown>(method: string, path: string, body?: unknown): Promise<DaemonResponse<T>> {
    const payload = body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body);
    const headers: Record<string, string> = {};
    if (payload !== undefined) {
      headers['content-type'] = 'application/json';
      headers['content-length'] = String(Buffer.byteLength(payload));
    }
    if (this.endpoint.token !== undefined) headers.authorization = `Bearer ${this.endpoint.token}`;
    return new Promise((resolve, reject) => {
      const req = httpRequest(
        {
          method,
          path,
          headers,
          // No pooled keep-alive sockets: a restarted daemon on the same path would get a dead one (EPIPE).
          agent: false,
          ...(this.endpoint.socketPath
            ? { socketPath: this.endpoint.socketPath }
            : { host: this.endpoint.host, port: this.endpoint.port }),
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('error', reject);
          res.on('end', () => {
            const raw = Buffer.concat(chunks);
            const contentType = String(res.headers['content-type'] ?? '');
            let parsed: unknown = raw;
            if (contentType.includes('json')) {
              try {
                parsed = JSON.parse(raw.toString('utf8'));
              } catch {
                parsed = raw.toString('utf8');
              }
            }
            resolve({ status: res.statusCode ?? 0, body: parsed as T, contentType, raw });
          });
        },
      );
      req.on('error', (e: NodeJS.ErrnoException) => {
        if (e.code === 'ENOENT' || e.code === 'ECONNREFUSED') reject(new NoDaemonError(this.where));
        else reject(e);
      });
      if (payload !== undefined) req.write(payload);
      req.end();
    });
  }
}
