import { isIP } from 'node:net';
import { NODE_URI_PREFIX } from '../../firmware-sdk/protocol/device-id.ts';
import {
  isNodeRole,
  NODE_NAME,
  NODE_ORGANIZATION,
  NODE_ROLES,
  type NodeRole,
  nodeCommonName,
} from '../../firmware-sdk/protocol/node-id.ts';

export { isNodeRole, NODE_ROLES, type NodeRole, nodeDistinguishedName } from '../../firmware-sdk/protocol/node-id.ts';

import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import { type CertificateAuthority, exportKeyPem, issueForKey, newKeyPair } from './authority.ts';
import { parseCsr } from './csr.ts';
import { EC_P256, pemWithNewline, subtle, x509 } from './x509.ts';

/**
 * Certificates for the fleet's own members — the links between nodes get the same standard as
 * the devices' links, from the same CA:
 *
 * - `gateway`, `provisioning`, `operator`: client certificates a node presents to NATS and
 *   PostgreSQL. Subject `O=fleetgate, OU=<role>, CN=<role>:<name>` (NATS's `verify_and_map` maps the
 *   DN `CN=<role>:<name>,OU=<role>,O=fleetgate` to a user; PostgreSQL's `pg_ident` maps the CN to the
 *   role's database login), SAN URI `urn:fleetgate:node:<role>:<name>`, EKU clientAuth.
 * - `server`: the NATS server's or PostgreSQL's certificate, `CN=server:<name>`, SAN the host names
 *   and addresses clients use, EKU serverAuth.
 *
 * A device id cannot contain `:` (DEVICE_ID_PATTERN), so no device certificate has a node's CN:
 * a device key opens no NATS user and no database role. Device listeners refuse node
 * certificates (they carry no `urn:fleetgate:device:` URI).
 */
export interface NodeCertRequest {
  role: NodeRole;
  name: string;
  validityMs: number;
  /** `server` only: DNS names and IP addresses clients connect to (localhost, 127.0.0.1 and ::1 added). */
  hosts?: readonly string[];
  /** A PEM CSR made where the key lives; without it a key is made here (the caller keeps it). */
  csrPem?: string;
}

export interface IssuedNodeCert {
  role: NodeRole;
  name: string;
  serial: string;
  notAfter: string;
  /** The certificate then the issuing CA (what the node presents). */
  certPem: string;
  /** Only when no CSR was given: the key made here. */
  keyPem?: string;
}

function refuse(message: string, cause?: unknown): FleetgateError {
  return new FleetgateError('NODE_CERT_INVALID', message, cause === undefined ? {} : { cause });
}

function profileFor(request: NodeCertRequest): Parameters<typeof issueForKey>[1] {
  const { role, name } = request;
  const subject: x509.JsonName = [{ O: [NODE_ORGANIZATION] }, { OU: [role] }, { CN: [nodeCommonName(role, name)] }];
  const uri = { type: 'url' as const, value: `${NODE_URI_PREFIX}${role}:${name}` };
  if (role !== 'server')
    return { subject, validityMs: request.validityMs, eku: [x509.ExtendedKeyUsage.clientAuth], san: [uri] };
  const names = [...new Set(['localhost', '127.0.0.1', '::1', ...(request.hosts ?? [])])];
  for (const n of names)
    if (
      isIP(n) === 0 &&
      !/^(?=.{1,253}$)[A-Za-z0-9*]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$/.test(n)
    )
      throw refuse(`${JSON.stringify(n)} is neither a host name nor an IP address`);
  return {
    subject,
    validityMs: request.validityMs,
    // clientAuth too: a NATS server presents its certificate to the others on routes.
    eku: [x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth],
    san: [uri, ...names.map((n) => (isIP(n) ? { type: 'ip' as const, value: n } : { type: 'dns' as const, value: n }))],
  };
}

async function publicKeyOf(csrPem: string): Promise<CryptoKey> {
  const csr = parseCsr(csrPem); // CSR_INVALID: not a CSR, or its signature does not verify
  if (csr.keyDescription !== 'EC P-256')
    throw refuse(`node keys are EC P-256 (as the fleet's CA and device keys); this CSR has ${csr.keyDescription}`);
  try {
    return await subtle.importKey('spki', new Uint8Array(csr.spki), EC_P256, true, ['verify']);
  } catch (err) {
    throw refuse('the CSR public key cannot be read', err);
  }
}

/** Signs a node certificate with the issuing CA; the role and name come from the operator, never from the CSR. */
export async function issueNodeCert(ca: CertificateAuthority, request: NodeCertRequest): Promise<IssuedNodeCert> {
  if (!isNodeRole(request.role)) throw refuse(`role must be one of ${NODE_ROLES.join(', ')}`);
  if (!NODE_NAME.test(request.name))
    throw refuse('a node name is 1–63 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit');
  const profile = profileFor(request);
  let keyPem: string | undefined;
  let publicKey: CryptoKey;
  if (request.csrPem !== undefined) publicKey = await publicKeyOf(request.csrPem);
  else {
    const keys = await newKeyPair();
    publicKey = keys.publicKey;
    keyPem = await exportKeyPem(keys.privateKey);
  }
  const { cert, serial } = await issueForKey(ca, profile, publicKey);
  return {
    role: request.role,
    name: request.name,
    serial,
    notAfter: cert.notAfter.toISOString(),
    certPem: pemWithNewline(cert.toString('pem')) + ca.intermediatePem,
    ...(keyPem !== undefined && { keyPem }),
  };
}

/** A node key and CSR made on the node's own host (`fleetgate node request`): the key stays there. */
export async function nodeKeyAndCsr(role: NodeRole, name: string): Promise<{ keyPem: string; csrPem: string }> {
  const keys = await newKeyPair();
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    name: [{ O: [NODE_ORGANIZATION] }, { OU: [role] }, { CN: [nodeCommonName(role, name)] }],
    keys,
    signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' },
  });
  return { keyPem: await exportKeyPem(keys.privateKey), csrPem: pemWithNewline(csr.toString('pem')) };
}

/** What a node certificate says it is: role and name from its SAN URI (undefined for any other certificate). */
export function nodeIdentityOf(
  certPem: string,
): { role: NodeRole; name: string; notAfter: Date; serial: string } | undefined {
  let cert: x509.X509Certificate;
  try {
    cert = new x509.X509Certificate(certPem);
  } catch {
    return undefined;
  }
  const san = cert.getExtension(x509.SubjectAlternativeNameExtension);
  const uri = san?.names.items.find((n) => n.type === 'url' && n.value.startsWith(NODE_URI_PREFIX))?.value;
  if (uri === undefined) return undefined;
  const [role, name] = uri.slice(NODE_URI_PREFIX.length).split(':');
  if (!isNodeRole(role) || name === undefined || !NODE_NAME.test(name)) return undefined;
  return { role, name, notAfter: cert.notAfter, serial: cert.serialNumber };
}
