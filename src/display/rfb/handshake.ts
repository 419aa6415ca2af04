// RFC 6143 §7.1 (handshake: ProtocolVersion, security) and §7.3 (ClientInit/ServerInit), with the 3.3 and 3.7
// differences of §A / rfbproto "Protocol Versions": 3.3 has the server pick the security type (a U32), 3.7
// lets the client pick but sends no SecurityResult for None, 3.8 always sends one (with a reason on failure).
import { encodePixelFormat, type PixelFormat } from './pixel-format.js';

export const SERVER_VERSION = Buffer.from('RFB 003.008\n', 'latin1');
export const SECURITY_NONE = 1;

export type ProtocolMinor = 3 | 7 | 8;

/** The minor version to speak for a client's 12-byte ProtocolVersion, or a reason to refuse it. */
export function parseClientVersion(b: Buffer): ProtocolMinor | string {
  const text = b.toString('latin1');
  const m = /^RFB (\d{3})\.(\d{3})\n$/.exec(text);
  if (!m) return `bad protocol version ${JSON.stringify(text)}`;
  const major = Number(m[1]);
  const minor = Number(m[2]);
  if (major !== 3) return `unsupported protocol version ${major}.${minor}`;
  // §7.1.1: versions other than 3.3/3.7/3.8 are to be treated as 3.3; Apple's 3.889 speaks 3.8.
  if (minor >= 8) return 8;
  if (minor === 7) return 7;
  return 3;
}

/** What the server sends once the version is known: the security type(s) it offers. */
export function securityOffer(minor: ProtocolMinor): Buffer {
  if (minor === 3) {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(SECURITY_NONE, 0);
    return b;
  }
  return Buffer.from([1, SECURITY_NONE]);
}

/** SecurityResult (§7.1.3): OK, or failed with a reason string (3.8 only carries the reason). */
export function securityResult(minor: ProtocolMinor, failure?: string): Buffer {
  if (failure === undefined) return Buffer.from([0, 0, 0, 0]);
  if (minor < 8) return Buffer.from([0, 0, 0, 1]);
  const reason = Buffer.from(failure, 'utf8');
  const b = Buffer.alloc(8);
  b.writeUInt32BE(1, 0);
  b.writeUInt32BE(reason.length, 4);
  return Buffer.concat([b, reason]);
}

export function serverInit(width: number, height: number, format: PixelFormat, name: string): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  const head = Buffer.alloc(4);
  head.writeUInt16BE(width, 0);
  head.writeUInt16BE(height, 2);
  const len = Buffer.alloc(4);
  len.writeUInt32BE(nameBytes.length, 0);
  return Buffer.concat([head, encodePixelFormat(format), len, nameBytes]);
}
