import { createHash, randomBytes } from 'node:crypto';

/** Certificates start a minute in the past so a device whose clock lags a little accepts them. */
export const BACKDATE_MS = 60_000;

/** 16 random bytes, positive, no leading zero byte: ≥ 64 bits of entropy (RFC 5280 §4.1.2.2). */
export function randomSerial(): string {
  const bytes = randomBytes(16);
  bytes[0] = ((bytes[0] as number) & 0x7f) | 0x01;
  return bytes.toString('hex');
}

/** Validity starting a minute ago, never outliving the issuer (`issuerNotAfter`). */
export function validityFrom(
  now: number,
  lifetimeMs: number,
  issuerNotAfter?: Date,
): { notBefore: Date; notAfter: Date } {
  const notAfter = new Date(now + lifetimeMs);
  return {
    notBefore: new Date(now - BACKDATE_MS),
    notAfter: issuerNotAfter !== undefined && notAfter > issuerNotAfter ? issuerNotAfter : notAfter,
  };
}

export function sha256Hex(data: Uint8Array | ArrayBuffer): string {
  return createHash('sha256')
    .update(data instanceof Uint8Array ? data : new Uint8Array(data))
    .digest('hex');
}
