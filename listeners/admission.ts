import type { X509Certificate } from 'node:crypto';
import type { TLSSocket } from 'node:tls';
import { identityFromCertificate, type PeerIdentity } from '../firmware-sdk/protocol/certificate-identity.ts';
import { FleetgateError } from '../firmware-sdk/protocol/errors.ts';
import type { DeviceRecord } from '../provisioning/registry/records.ts';

/**
 * The one admission path of every fleetgate listener — MQTT over TLS and WSS, the HTTPS plane,
 * the admin listener, provisioning's mTLS routes:
 *
 *   socket → verified certificate → identity → status → Admitted | FleetgateError
 *
 * The identity is read once per TLS connection (it cannot change: no renegotiation, no
 * resumption); the status is asked of the caller's {@link StatusSource} every time (the gateway:
 * its in-memory view of the registry; provisioning: the registry inside its transaction). It
 * lives outside `gateway/` because provisioning calls it too, and provisioning never imports the
 * gateway.
 */

/** A device whose certificate passed every check. */
export interface Admitted {
  device: DeviceRecord;
  identity: PeerIdentity;
}

/** Answers "may this certificate's holder act now?": the device record, or a coded refusal. */
export interface StatusSource {
  status(identity: PeerIdentity, now?: number): DeviceRecord;
}

/** The same question answered later (the gateway asks its registry thread). */
export interface AsyncStatusSource {
  status(identity: PeerIdentity, now?: number): Promise<DeviceRecord>;
}

const identities = new WeakMap<TLSSocket, PeerIdentity>();

/**
 * The peer's certificate, verified by TLS against the fleet CA, or the coded reason there is
 * none. On listeners where the certificate is optional (`rejectUnauthorized: false`) OpenSSL's
 * verdict is in `authorizationError`.
 */
export function verifiedCertificate(socket: TLSSocket): X509Certificate {
  if (socket.authorized) {
    const cert = socket.getPeerX509Certificate();
    if (cert !== undefined) return cert;
  }
  const verdict =
    socket.authorizationError === null || socket.authorizationError === undefined
      ? undefined
      : String(socket.authorizationError);
  const presented = socket.getPeerX509Certificate() !== undefined;
  if (!presented || verdict === undefined)
    throw new FleetgateError('CERT_REQUIRED', 'no verified client certificate on this connection');
  if (verdict === 'CERT_HAS_EXPIRED') throw new FleetgateError('CERT_EXPIRED', 'the client certificate has expired');
  if (verdict === 'CERT_NOT_YET_VALID')
    throw new FleetgateError('CERT_NOT_YET_VALID', 'the client certificate is not yet valid');
  throw new FleetgateError('CERT_INVALID', `client certificate refused: ${verdict}`, { detail: { verify: verdict } });
}

/** The identity of the connection's device certificate (read once per connection). */
export function socketIdentity(socket: TLSSocket): PeerIdentity {
  let identity = identities.get(socket);
  if (identity === undefined) {
    identity = identityFromCertificate(verifiedCertificate(socket));
    identities.set(socket, identity);
  }
  return identity;
}

/**
 * Admits the device behind `socket` now: identity (cached per connection) and status (asked
 * every call). `types` narrows who may use this surface (the admin API: operators).
 */
export function admit(socket: TLSSocket, source: StatusSource, options: AdmitOptions = {}): Admitted {
  const identity = socketIdentity(socket);
  return mayUse({ device: source.status(identity, options.now), identity }, options);
}

/** {@link admit} with a status source that answers asynchronously. */
export async function admitAsync(
  socket: TLSSocket,
  source: AsyncStatusSource,
  options: AdmitOptions = {},
): Promise<Admitted> {
  return admitIdentityAsync(socketIdentity(socket), source, options);
}

/**
 * {@link admitAsync} for a certificate whose chain another process of this fleetgate verified in
 * its own TLS handshake: a gateway worker's admin listener, for what the supervisor's admin
 * listener passes on (and only with the supervisor's token: see `gateway/admin/server.ts`).
 */
export async function admitCertificateAsync(
  cert: X509Certificate,
  source: AsyncStatusSource,
  options: AdmitOptions = {},
): Promise<Admitted> {
  return admitIdentityAsync(identityFromCertificate(cert), source, options);
}

async function admitIdentityAsync(
  identity: PeerIdentity,
  source: AsyncStatusSource,
  options: AdmitOptions,
): Promise<Admitted> {
  return mayUse({ device: await source.status(identity, options.now), identity }, options);
}

interface AdmitOptions {
  /** Who may use this surface (the admin API: operators). */
  types?: readonly string[];
  now?: number;
}

function mayUse(admitted: Admitted, options: AdmitOptions): Admitted {
  const { device } = admitted;
  if (options.types !== undefined && !options.types.includes(device.type)) {
    throw new FleetgateError(
      'NOT_AUTHORIZED',
      `${device.id} is a ${device.type}; this needs ${options.types.join(' or ')}`,
      { detail: { deviceId: device.id } },
    );
  }
  return admitted;
}
