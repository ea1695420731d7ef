import { createHash, type X509Certificate } from 'node:crypto';
import { certificateSpki } from './der.ts';
import { DEVICE_URI_PREFIX, isDeviceId, NODE_URI_PREFIX } from './device-id.ts';
import { FleetgateError } from './errors.ts';

/**
 * What a fleetgate device certificate says about its holder, and the checks OpenSSL does not
 * make. Shared by every server surface (gateway, provisioning renewal) and by the SDK.
 */

/** Who a verified peer certificate says it is. Never from anything else the client sent. */
export interface PeerIdentity {
  deviceId: string;
  /** Lowercase hex, no leading zero bytes: as the registry stores it. */
  serial: string;
  /** SHA-256 of the certificate DER, lowercase hex. */
  fingerprint: string;
  /** SHA-256 of the SubjectPublicKeyInfo DER, lowercase hex. */
  spkiSha256: string;
  notBefore: number;
  notAfter: number;
  /** RFC 8705 `x5t#S256`: base64url SHA-256 of the certificate DER. */
  x5tS256: string;
}

const CLIENT_AUTH = '1.3.6.1.5.5.7.3.2';

/** A certificate serial as fleetgate writes it: lowercase hex without leading zero bytes. */
export function serialHex(serialNumber: string): string {
  const hex = serialNumber
    .replaceAll(':', '')
    .toLowerCase()
    .replace(/^(00)+(?=[0-9a-f])/, '');
  return hex.length % 2 === 1 ? `0${hex}` : hex;
}

function invalid(message: string, detail: Record<string, unknown> = {}): FleetgateError {
  return new FleetgateError('CERT_INVALID', message, { detail });
}

/** The single device id in `URI:urn:fleetgate:device:<id>` SAN entries; anything else refuses. */
function deviceIdFromSan(san: string | undefined): string {
  if ((san ?? '').includes(`URI:${NODE_URI_PREFIX}`))
    throw invalid('a fleetgate node certificate (NATS, PostgreSQL) is not a device certificate');
  const uris = (san ?? '').split(', ').filter((e) => e.startsWith(`URI:${DEVICE_URI_PREFIX}`));
  if (uris.length !== 1) throw invalid(`certificate has ${uris.length} fleetgate device URIs in its SAN, expected 1`);
  const id = (uris[0] as string).slice(`URI:${DEVICE_URI_PREFIX}`.length);
  if (!isDeviceId(id)) throw invalid('certificate SAN device id is malformed');
  return id;
}

/**
 * Reads the identity of a verified peer certificate and applies the checks OpenSSL does not
 * (STACK-NOTES): EKU must include clientAuth, the certificate must not be a CA, and it must
 * carry exactly one device URI written by our CA. Registry checks (issued by us, status)
 * come next, in `gateway/status`.
 */
export function identityFromCertificate(cert: X509Certificate): PeerIdentity {
  const der = cert.raw;
  const serial = serialHex(cert.serialNumber);
  const digest = createHash('sha256').update(der).digest();
  const fingerprint = digest.toString('hex');
  const seen = { serial, fingerprint }; // for the log line of a refusal
  const eku = cert.keyUsage; // Node: the *extended* key usage OIDs, undefined when absent
  if (eku === undefined || !eku.includes(CLIENT_AUTH))
    throw invalid('certificate lacks the clientAuth extended key usage', seen);
  if (cert.ca) throw invalid('a CA certificate cannot be used as a client certificate', seen);
  let deviceId: string;
  try {
    deviceId = deviceIdFromSan(cert.subjectAltName);
  } catch (err) {
    throw invalid((err as Error).message, seen);
  }
  let spki: Uint8Array;
  try {
    spki = certificateSpki(der);
  } catch (err) {
    throw invalid(`certificate does not parse: ${(err as Error).message}`, seen);
  }
  return {
    deviceId,
    serial,
    fingerprint,
    spkiSha256: createHash('sha256').update(spki).digest('hex'),
    notBefore: cert.validFromDate.getTime(),
    notAfter: cert.validToDate.getTime(),
    x5tS256: digest.toString('base64url'),
  };
}
