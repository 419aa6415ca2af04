// Errors the daemon answers with: an HTTP status, one line, and the JSON path of the value at fault if any.
export class DaemonError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly path?: string,
  ) {
    super(message);
    this.name = 'DaemonError';
  }
}

export const badRequest = (message: string, path?: string): DaemonError => new DaemonError(400, message, path);
export const notFound = (name: string): DaemonError => new DaemonError(404, `no VM named '${name}'`);
export const conflict = (message: string): DaemonError => new DaemonError(409, message);
