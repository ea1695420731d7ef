import type { TLSSocket } from 'node:tls';
import type { ErrorCode } from '../firmware-sdk/protocol/errors.ts';
import { peerAddress } from './proxy-protocol.ts';
import type { ThrottledLog } from './throttled-log.ts';

/**
 * A failed TLS handshake mapped to our catalogue for the log and the metrics. The device
 * itself learns only what TLS tells it.
 *
 * With `rejectUnauthorized`, Node destroys a socket whose certificate failed verification
 * right after the handshake, with no error of its own; the server then reports
 * `tlsClientError` "socket hang up" for that socket, whose `authorizationError` holds
 * OpenSSL's verdict (`CERT_HAS_EXPIRED`, `DEPTH_ZERO_SELF_SIGNED_CERT`, …). A missing
 * certificate fails inside the handshake ("peer did not return a certificate").
 */
export function handshakeErrorCode(
  err: Error & { code?: string },
  authorizationError?: string | Error | null,
): ErrorCode {
  const verdict = typeof authorizationError === 'string' ? authorizationError : authorizationError?.message;
  if (verdict !== undefined && verdict !== null && verdict !== '') {
    if (verdict === 'CERT_HAS_EXPIRED') return 'CERT_EXPIRED';
    if (verdict === 'CERT_NOT_YET_VALID') return 'CERT_NOT_YET_VALID';
    if (verdict === 'CERT_REVOKED') return 'CERT_REVOKED';
    return 'CERT_INVALID';
  }
  const text = `${err.code ?? ''} ${err.message}`.toUpperCase();
  if (/DID NOT RETURN A CERTIFICATE|NO_CERTIFICATE|CERTIFICATE REQUIRED/.test(text)) return 'CERT_REQUIRED';
  if (/CERTIFICATE|VERIFY|UNKNOWN CA/.test(text)) return 'CERT_INVALID';
  return 'BAD_REQUEST';
}

/**
 * The `tlsClientError` listener of every listener: logs (throttled: the peer is anonymous),
 * counts, and **closes the socket** — with a listener registered, Node leaves that to us, and a
 * socket left open after a failed or timed-out handshake is a file descriptor an attacker keeps.
 */
export function onTlsClientError(log: ThrottledLog, count: (code: ErrorCode) => void, fields: Record<string, unknown>) {
  return (err: Error & { code?: string }, socket: TLSSocket): void => {
    const code = handshakeErrorCode(err, socket.authorizationError);
    count(code);
    log.warn(
      `tls_failed:${code}`,
      {
        decision: 'refused',
        code,
        ...fields,
        remoteAddress: peerAddress(socket),
        verify: socket.authorizationError ?? undefined,
        err: err.message,
      },
      'tls handshake failed',
    );
    socket.destroy();
  };
}
