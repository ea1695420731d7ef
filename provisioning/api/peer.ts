import type { TLSSocket } from 'node:tls';
import type { FastifyRequest } from 'fastify';
import { type PeerIdentity, serialHex } from '../../firmware-sdk/protocol/certificate-identity.ts';
import { CLAIM_URI_PREFIX } from '../../firmware-sdk/protocol/device-id.ts';
import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import { socketIdentity, verifiedCertificate } from '../../listeners/admission.ts';
import { sha256Hex } from '../ca/fields.ts';
import type { RegistryWriter } from '../registry/writer.ts';

/**
 * The provisioning listener requests a client certificate but lets requests without one
 * through (token enrollment needs none); each route decides what it requires, through the same
 * admission path as the gateway (`listeners/admission.ts`).
 */

/** A device certificate (renewal, EST simplereenroll). Status is checked by the renewal method, in its transaction. */
export function devicePeer(req: FastifyRequest): PeerIdentity {
  return socketIdentity(req.raw.socket as TLSSocket);
}

/** A claim certificate: SAN `urn:fleetgate:claim:<name>`, recorded in the registry's claims. */
export function claimPeer(req: FastifyRequest, registry: RegistryWriter): string {
  const cert = verifiedCertificate(req.raw.socket as TLSSocket);
  const uri = (cert.subjectAltName ?? '').split(', ').find((e) => e.startsWith(`URI:${CLAIM_URI_PREFIX}`));
  if (uri === undefined) throw new FleetgateError('NOT_AUTHORIZED', 'not a claim certificate');
  const name = uri.slice(`URI:${CLAIM_URI_PREFIX}`.length);
  const claim = registry.getClaim(name);
  const fingerprint = sha256Hex(cert.raw);
  if (claim === undefined || claim.fingerprint !== fingerprint || claim.serial !== serialHex(cert.serialNumber)) {
    throw new FleetgateError('NOT_AUTHORIZED', `claim certificate for ${name} is not the one recorded`, {
      detail: { claim: name },
    });
  }
  if (claim.revokedAt !== null)
    throw new FleetgateError('CLAIM_REVOKED', `claim ${name} is revoked`, { detail: { claim: name } });
  return name;
}
