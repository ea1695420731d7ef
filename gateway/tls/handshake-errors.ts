import type { ErrorCode } from '../../firmware-sdk/protocol/errors.ts';

/**
 * A failed TLS handshake (OpenSSL refused the client certificate, or there was none) mapped to
 * our catalogue for the log and the metrics. The device itself only sees the TLS alert.
 */
export function handshakeErrorCode(err: Error & { code?: string; reason?: string }): ErrorCode {
  const text = `${err.code ?? ''} ${err.reason ?? ''} ${err.message}`.toUpperCase();
  if (/DID_NOT_RETURN_A_CERTIFICATE|PEER DID NOT RETURN A CERTIFICATE|NO_CERTIFICATE/.test(text)) return 'CERT_REQUIRED';
  if (/EXPIRED/.test(text)) return 'CERT_EXPIRED';
  if (/NOT_YET_VALID|NOT YET VALID/.test(text)) return 'CERT_NOT_YET_VALID';
  if (/CERTIFICATE|VERIFY|UNKNOWN_CA|UNKNOWN CA/.test(text)) return 'CERT_INVALID';
  return 'BAD_REQUEST';
}
