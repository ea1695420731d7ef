import { serialHex } from '../../firmware-sdk/protocol/certificate-identity.ts';

/**
 * Hex identifiers as the registry stores them: lowercase, no separators. Operators paste
 * fingerprints and serials from `openssl x509 -fingerprint` (colons, upper case) or from
 * our own output; both forms must match.
 */
export function normalizeHex(input: string): string | undefined {
  const hex = input.trim().replace(/^0x/i, '').replaceAll(':', '').toLowerCase();
  return /^[0-9a-f]+$/.test(hex) ? hex : undefined;
}

/** A serial number as stored: normalized hex without leading zero bytes (OpenSSL may print `00…`). */
export function normalizeSerial(input: string): string | undefined {
  const hex = normalizeHex(input);
  return hex === undefined ? undefined : serialHex(hex);
}
