import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import { hashToken, type RegistryWriter } from '../registry/writer.ts';
import type { Authorized } from './method.ts';

/**
 * One-time enrollment token: the device comes from the token, never from the CSR. The token
 * is consumed in the transaction that records the certificate, so of N concurrent uses exactly
 * one succeeds (the others get TOKEN_USED).
 */
export function authorizeToken(registry: RegistryWriter, token: unknown, expectedDeviceId?: string): Authorized {
  if (typeof token !== 'string' || token.length === 0 || token.length > 256 || !/^[\x21-\x7e]+$/.test(token)) {
    throw new FleetgateError('TOKEN_INVALID', 'malformed enrollment token');
  }
  const tokenHash = hashToken(token);
  // The token and its device in one registry question.
  const { id: deviceId } = registry.checkTokenEnrollment(tokenHash, expectedDeviceId);
  return { deviceId, method: 'token', record: (r, cert, actor) => r.recordCertificate({ ...cert, tokenHash }, actor) };
}
