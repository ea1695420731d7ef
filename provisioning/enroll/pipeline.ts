import type { PeerIdentity } from '../../firmware-sdk/protocol/certificate-identity.ts';
import type { CertificateAuthority } from '../ca/authority.ts';
import { type ParsedCsr, parseCsr } from '../ca/csr.ts';
import { signLeaf } from '../ca/leaf.ts';
import type { RegistryWriter } from '../registry/writer.ts';
import { authorizeClaim } from './claim.ts';
import type { Authorized } from './method.ts';
import { authorizeOperator } from './operator.ts';
import { authorizeRenewal } from './renew.ts';
import { authorizeToken } from './token.ts';

/** How the requester proved it may have a certificate for this device. */
export type EnrollmentAuth =
  | { method: 'operator'; deviceId: string }
  | { method: 'token'; token: string; deviceId?: string }
  | { method: 'claim'; claimName: string; hardwareSerial: unknown; type?: unknown; fleet?: unknown }
  | { method: 'renew'; current: PeerIdentity };

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
  /** Runs the record step; the provisioning service passes its group commit. Default: now, in its own transaction. */
  commit?: <T>(change: () => T) => Promise<T>;
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
  method: string;
}

function authorize(registry: RegistryWriter, auth: EnrollmentAuth): Authorized {
  switch (auth.method) {
    case 'operator':
      return authorizeOperator(registry, auth.deviceId);
    case 'token':
      return authorizeToken(registry, auth.token, auth.deviceId);
    case 'claim':
      return authorizeClaim(registry, auth);
    case 'renew':
      return authorizeRenewal(registry, auth.current);
  }
}

/**
 * Enrollment, as an ordered list of steps (record always before respond):
 * authorize method → parse CSR → verify possession → shape + sign → record → respond.
 * The requester is authenticated before its CSR is parsed (nothing anonymous reaches the
 * parser), and a failure at any step returns no certificate and leaves no row.
 */
export async function enroll(deps: EnrollmentDeps, request: EnrollmentRequest): Promise<EnrollmentResult> {
  const authorized = authorize(deps.registry, request.auth); // early check; recording re-checks
  const csr = parseCsr(request.csr); // parse + proof of possession
  const leaf = signLeaf(deps.ca, {
    deviceId: authorized.deviceId,
    spki: csr.spki,
    validityMs: request.validityMs ?? deps.defaultValidityMs,
  });
  const ignored = ignoredRequests(csr, authorized.deviceId);
  const record = () =>
    authorized.record(
      deps.registry,
      {
        serial: leaf.serial,
        deviceId: authorized.deviceId,
        fingerprint: leaf.fingerprint,
        spkiSha256: leaf.spkiSha256,
        notBefore: leaf.notBefore,
        notAfter: leaf.notAfter,
        pem: leaf.pem,
        method: authorized.method,
        auditDetail: { key: csr.keyDescription, ...authorized.detail, ...(ignored.length > 0 && { ignored }) },
      },
      request.actor,
    );
  // Answered only once recorded (durably committed): a certificate is never returned unrecorded.
  if (deps.commit === undefined) record();
  else await deps.commit(record);
  return {
    deviceId: authorized.deviceId,
    serial: leaf.serial,
    fingerprint: leaf.fingerprint,
    notBefore: leaf.notBefore,
    notAfter: leaf.notAfter,
    certificate: leaf.pem,
    chain: deps.ca.intermediatePem,
    ca: deps.ca.rootPem,
    ignored,
    method: authorized.method,
  };
}

function ignoredRequests(csr: ParsedCsr, deviceId: string): string[] {
  const ignored = [...csr.requested.extensions];
  if (csr.requested.subject !== '' && csr.requested.subject !== `CN=${deviceId}`)
    ignored.unshift(`subject "${csr.requested.subject}"`);
  return ignored;
}
