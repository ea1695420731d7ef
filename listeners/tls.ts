import { constants } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { SecureContextOptions, TlsOptions } from 'node:tls';
import type { DataPaths } from '../config/paths.ts';

/**
 * Suites a fleetgate listener offers. TLS 1.3: its three AEAD suites (Node disables TLS 1.3 when
 * a `ciphers` string names none). TLS 1.2: ECDHE key exchange (forward secrecy) with an AEAD
 * cipher, nothing else — no CBC/SHA-1, no ARIA, no CCM, no static RSA (Node's defaults offer
 * all of those). ECDSA first: the server certificate is P-256.
 */
export const TLS13_SUITES = ['TLS_AES_128_GCM_SHA256', 'TLS_AES_256_GCM_SHA384', 'TLS_CHACHA20_POLY1305_SHA256'];
export const TLS12_SUITES = [
  'ECDHE-ECDSA-AES128-GCM-SHA256',
  'ECDHE-ECDSA-AES256-GCM-SHA384',
  'ECDHE-ECDSA-CHACHA20-POLY1305',
  'ECDHE-RSA-AES128-GCM-SHA256',
  'ECDHE-RSA-AES256-GCM-SHA384',
  'ECDHE-RSA-CHACHA20-POLY1305',
];

/**
 * TLS options for every fleetgate listener (MQTT over TLS, WSS, HTTPS, admin, provisioning).
 * The authentication modes, and why:
 *
 * - `requestCert: true`: the certificate is asked for on every connection. With
 *   `clientCert: 'required'` (device listeners) `rejectUnauthorized: true` makes a missing or
 *   foreign certificate fail the handshake; with `'optional'` (admin probes, token enrollment)
 *   the handshake completes and each route decides (`listeners/admission.ts`).
 *   Trust is the fleet root only (with the issuing intermediate as a known intermediate), never
 *   the system store.
 * - **No session resumption**, in any form: `SSL_OP_NO_TICKET` disables TLS 1.2 tickets and
 *   TLS 1.3 PSK tickets, and we register no `newSession`/`resumeSession` listeners so there is
 *   no server-side session cache either (`sessionTimeout: 0` alone is silently ignored).
 *   Every connection is a full handshake with the client's CertificateVerify: proof of key
 *   possession each time, and no path where a resumed session reports `authorized` without a
 *   certificate (nodejs/node#64584). `setSecureContext()` replaces all of this: pass these
 *   options again on every reload.
 * - TLS 1.2 minimum, ECDHE + AEAD only on 1.2 ({@link TLS12_SUITES}), server preference.
 * - `handshakeTimeout`: a peer that does not finish its handshake in time is dropped; the
 *   {@link ConnectionGuard} also bounds how many may be handshaking at once.
 * - OpenSSL accepts more client certificates than our policy does (no EKU, v1, a CA
 *   certificate): `listeners/admission.ts` checks EKU, CA:false, the SAN and the registry after the
 *   handshake.
 */
export function serverTlsOptions(
  paths: DataPaths,
  options: { handshakeTimeoutMs: number; clientCert: 'required' | 'optional' },
): TlsOptions & SecureContextOptions {
  return {
    key: readFileSync(paths.serverKey),
    cert: readFileSync(paths.serverCert),
    ca: [readFileSync(paths.rootCert), readFileSync(paths.intermediateCert)],
    requestCert: true,
    rejectUnauthorized: options.clientCert === 'required',
    minVersion: 'TLSv1.2',
    ciphers: [...TLS13_SUITES, ...TLS12_SUITES].join(':'),
    honorCipherOrder: true,
    secureOptions: constants.SSL_OP_NO_TICKET,
    handshakeTimeout: options.handshakeTimeoutMs,
  };
}
