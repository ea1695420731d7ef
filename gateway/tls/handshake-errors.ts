import type { ErrorCode } from '../../firmware-sdk/protocol/errors.ts';

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
export function handshakeErrorCode(err: Error & { code?: string }, authorizationError?: string | Error | null): ErrorCode {
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
