import type { FastifyRequest } from 'fastify';
import type { TLSSocket } from 'node:tls';
import { identityFromCertificate, serialHex, type PeerIdentity } from '../../firmware-sdk/protocol/certificate-identity.ts';
import { CLAIM_URI_PREFIX } from '../../firmware-sdk/protocol/device-id.ts';
import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import { sha256Hex } from '../ca/fields.ts';
import type { RegistryWriter } from '../registry/writer.ts';

/**
 * The provisioning listener requests a client certificate but lets requests without one
 * through (token enrollment needs none); each route decides what it requires.
 */
function verifiedPeer(req: FastifyRequest) {
  const socket = req.raw.socket as TLSSocket;
  const cert = socket.authorized ? socket.getPeerX509Certificate() : undefined;
  if (cert === undefined) {
    const verdict = socket.authorizationError === null || socket.authorizationError === undefined ? undefined : String(socket.authorizationError);
    if (verdict === 'CERT_HAS_EXPIRED') throw new FleetgateError('CERT_EXPIRED', 'the client certificate has expired');
    if (verdict === 'CERT_NOT_YET_VALID') throw new FleetgateError('CERT_NOT_YET_VALID', 'the client certificate is not yet valid');
    if (verdict !== undefined && socket.getPeerX509Certificate() !== undefined) throw new FleetgateError('CERT_INVALID', `client certificate refused: ${verdict}`);
    throw new FleetgateError('CERT_REQUIRED', 'a client certificate is required');
  }
  return cert;
}

/** A device certificate (renewal, EST simplereenroll). Status is checked by the renewal method. */
export function devicePeer(req: FastifyRequest): PeerIdentity {
  return identityFromCertificate(verifiedPeer(req));
}

/** A claim certificate: SAN `urn:fleetgate:claim:<name>`, recorded in the registry's claims. */
export function claimPeer(req: FastifyRequest, registry: RegistryWriter): string {
  const cert = verifiedPeer(req);
  const uri = (cert.subjectAltName ?? '').split(', ').find((e) => e.startsWith(`URI:${CLAIM_URI_PREFIX}`));
  if (uri === undefined) throw new FleetgateError('NOT_AUTHORIZED', 'not a claim certificate');
  const name = uri.slice(`URI:${CLAIM_URI_PREFIX}`.length);
  const claim = registry.getClaim(name);
  const fingerprint = sha256Hex(cert.raw);
  if (claim === undefined || claim.fingerprint !== fingerprint || claim.serial !== serialHex(cert.serialNumber)) {
    throw new FleetgateError('NOT_AUTHORIZED', `claim certificate for ${name} is not the one recorded`);
  }
  if (claim.revokedAt !== null) throw new FleetgateError('CLAIM_REVOKED', `claim ${name} is revoked`);
  return name;
}
