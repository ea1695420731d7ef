/**
 * One place that wires the X.509 libraries to Node's WebCrypto.
 *
 * @peculiar/x509 builds and parses certificates and CSRs (EC P-256/P-384, RSA and Ed25519);
 * node-forge cannot (it is RSA-only, STACK-NOTES). pkijs builds the CRL: @peculiar's CRL
 * generator is quadratic and writes a PEM label OpenSSL refuses.
 */
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import * as pkijs from 'pkijs';

// Node's WebCrypto is the global `crypto` (node:crypto's `webcrypto`).
x509.cryptoProvider.set(globalThis.crypto);
pkijs.setEngine('node-webcrypto', new pkijs.CryptoEngine({ name: 'node-webcrypto', crypto: globalThis.crypto }));

export { pkijs, x509 };
export const subtle = globalThis.crypto.subtle;

/** ECDSA P-256 with SHA-256: the CA's own keys and its signatures. */
export const EC_P256 = { name: 'ECDSA', namedCurve: 'P-256' } as const;
export const ECDSA_SHA256 = { name: 'ECDSA', hash: 'SHA-256' } as const;

/** PEM with the trailing newline OpenSSL and humans expect (@peculiar omits it). */
export function pemWithNewline(pem: string): string {
  return pem.endsWith('\n') ? pem : `${pem}\n`;
}

export { toPem } from '../../firmware-sdk/protocol/der.ts';
