import { assertDeviceId } from '../../firmware-sdk/protocol/device-id.ts';
import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import type { CertificateAuthority } from '../ca/authority.ts';
import { parseCsr, type ParsedCsr } from '../ca/csr.ts';
import { signLeaf, type SignedLeaf } from '../ca/leaf.ts';
import type { DeviceRecord } from '../registry/records.ts';
import { hashToken, type NewCertificate, type RegistryWriter } from '../registry/writer.ts';

/** How the requester proved it may have a certificate for this device. */
export type EnrollmentAuth =
  | { method: 'operator'; deviceId: string }
  | { method: 'token'; token: string; deviceId?: string };

export interface EnrollmentRequest {
  csr: string | Uint8Array;
  auth: EnrollmentAuth;
  /** Certificate lifetime; the CA's configured default when absent. */
  validityMs?: number;
  actor: string;
}

export interface EnrollmentDeps {
  registry: RegistryWriter;
  ca: CertificateAuthority;
  defaultValidityMs: number;
}

/** What an enrolled device receives. */
export interface EnrollmentResult {
  deviceId: string;
  serial: string;
  fingerprint: string;
  notBefore: number;
  notAfter: number;
  /** Leaf certificate PEM. */
  certificate: string;
  /** Issuing intermediate PEM (send it with the leaf). */
  chain: string;
  /** Root PEM (the trust anchor). */
  ca: string;
  /** What the CSR asked for that the CA ignored (e.g. `subjectAltName`, `basicConstraints`). */
  ignored: string[];
}

interface Authorized {
  device: DeviceRecord;
  tokenHash?: string;
}

/**
 * Enrollment, as an ordered list of steps (record always before respond):
 * parse CSR → verify possession → authorize method → shape + sign → record → respond.
 * A failure at any step returns no certificate and leaves no row.
 */
export async function enroll(deps: EnrollmentDeps, request: EnrollmentRequest): Promise<EnrollmentResult> {
  const csr = await parseCsr(request.csr); // parse + proof of possession
  const authorized = authorize(deps.registry, request.auth);
  const validityMs = request.validityMs ?? deps.defaultValidityMs;
  const leaf = await signLeaf(deps.ca, { deviceId: authorized.device.id, publicKey: csr.request.publicKey, validityMs });
  const ignored = ignoredRequests(csr, authorized.device.id);
  deps.registry.recordCertificate(toRecord(leaf, authorized, request.auth.method, csr, ignored), request.actor);
  return {
    deviceId: authorized.device.id,
    serial: leaf.serial,
    fingerprint: leaf.fingerprint,
    notBefore: leaf.notBefore,
    notAfter: leaf.notAfter,
    certificate: leaf.pem,
    chain: deps.ca.intermediatePem,
    ca: deps.ca.rootPem,
    ignored,
  };
}

/** Early check of the method (the recording transaction checks again, authoritatively). */
function authorize(registry: RegistryWriter, auth: EnrollmentAuth): Authorized {
  let deviceId: string;
  let tokenHash: string | undefined;
  if (auth.method === 'token') {
    if (typeof auth.token !== 'string' || auth.token.length === 0 || auth.token.length > 256) {
      throw new FleetgateError('TOKEN_INVALID', 'malformed enrollment token');
    }
    tokenHash = hashToken(auth.token);
    deviceId = registry.checkToken(tokenHash).deviceId;
    if (auth.deviceId !== undefined && auth.deviceId !== deviceId) {
      throw new FleetgateError('TOKEN_INVALID', 'enrollment token is bound to another device');
    }
  } else {
    deviceId = assertDeviceId(auth.deviceId);
  }
  const device = registry.getDevice(deviceId);
  if (device === undefined) throw new FleetgateError('DEVICE_NOT_FOUND', `device ${deviceId} not found`, { detail: { deviceId } });
  if (device.status === 'revoked') throw new FleetgateError('DEVICE_REVOKED', `device ${deviceId} is revoked`, { detail: { deviceId } });
  if (device.status === 'suspended') throw new FleetgateError('DEVICE_SUSPENDED', `device ${deviceId} is suspended`, { detail: { deviceId } });
  return { device, ...(tokenHash !== undefined && { tokenHash }) };
}

function ignoredRequests(csr: ParsedCsr, deviceId: string): string[] {
  const ignored = [...csr.requested.extensions];
  if (csr.requested.subject !== '' && csr.requested.subject !== `CN=${deviceId}`) ignored.unshift(`subject "${csr.requested.subject}"`);
  return ignored;
}

function toRecord(leaf: SignedLeaf, authorized: Authorized, method: string, csr: ParsedCsr, ignored: string[]): NewCertificate {
  return {
    serial: leaf.serial,
    deviceId: authorized.device.id,
    fingerprint: leaf.fingerprint,
    spkiSha256: leaf.spkiSha256,
    notBefore: leaf.notBefore,
    notAfter: leaf.notAfter,
    pem: leaf.pem,
    method,
    ...(authorized.tokenHash !== undefined && { tokenHash: authorized.tokenHash }),
    auditDetail: { key: csr.keyDescription, ...(ignored.length > 0 && { ignored }) },
  };
}
