import { constants } from 'node:crypto';
import type { SecureContextOptions, TlsOptions } from 'node:tls';
import { readFileSync } from 'node:fs';
import type { DataPaths } from '../../config/paths.ts';

/**
 * TLS options for every device-facing listener (MQTT over TLS, WSS, HTTPS). The
 * authentication modes, and why:
 *
 * - `requestCert: true, rejectUnauthorized: true`: every connection presents a client
 *   certificate chaining to the fleet CA, or the handshake fails. Trust is the fleet root
 *   only (with the issuing intermediate as a known intermediate), never the system store.
 * - **No session resumption**, in any form: `SSL_OP_NO_TICKET` disables TLS 1.2 tickets and
 *   TLS 1.3 PSK tickets, and we register no `newSession`/`resumeSession` listeners so there is
 *   no server-side session cache either (`sessionTimeout: 0` alone is silently ignored).
 *   Every connection is a full handshake with the client's CertificateVerify: proof of key
 *   possession each time, and no path where a resumed session reports `authorized` without a
 *   certificate (nodejs/node#64584). `setSecureContext()` replaces all of this: pass these
 *   options again on every reload.
 * - TLS 1.2 minimum; OpenSSL's defaults for ciphers (3.5: AEAD suites only for 1.3).
 * - OpenSSL accepts more client certificates than our policy does (no EKU, v1, a CA
 *   certificate): `gateway/identity` checks EKU, CA:false, the SAN and the registry after
 *   the handshake.
 */
export function deviceTlsOptions(paths: DataPaths, options: { handshakeTimeoutMs: number }): TlsOptions & SecureContextOptions {
  return {
    key: readFileSync(paths.serverKey),
    cert: readFileSync(paths.serverCert),
    ca: [readFileSync(paths.rootCert), readFileSync(paths.intermediateCert)],
    requestCert: true,
    rejectUnauthorized: true,
    minVersion: 'TLSv1.2',
    secureOptions: constants.SSL_OP_NO_TICKET,
    handshakeTimeout: options.handshakeTimeoutMs,
  };
}
