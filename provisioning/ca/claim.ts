import { CLAIM_URI_PREFIX } from '../../firmware-sdk/protocol/device-id.ts';
import { type CertificateAuthority, exportKeyPem, issueWithNewKey } from './authority.ts';
import { sha256Hex } from './fields.ts';
import { pemWithNewline, x509 } from './x509.ts';

export interface ClaimCredential {
  serial: string;
  fingerprint: string;
  notAfter: number;
  certPem: string;
  keyPem: string;
}

/**
 * A claim certificate: a factory-wide bootstrap identity for the provisioning service only.
 * Its SAN is `urn:fleetgate:claim:<name>` — no device URI, so the gateway refuses it — and it
 * is recorded in the registry's claims, not among device certificates.
 */
export async function makeClaimCredential(
  ca: CertificateAuthority,
  name: string,
  validityMs: number,
): Promise<ClaimCredential> {
  const { cert, keys, serial } = await issueWithNewKey(ca, {
    subject: [{ CN: [`claim ${name}`] }],
    validityMs,
    eku: [x509.ExtendedKeyUsage.clientAuth],
    san: [{ type: 'url', value: CLAIM_URI_PREFIX + name }],
  });
  return {
    serial,
    fingerprint: sha256Hex(cert.rawData),
    notAfter: cert.notAfter.getTime(),
    certPem: pemWithNewline(cert.toString('pem')) + ca.intermediatePem,
    keyPem: await exportKeyPem(keys.privateKey),
  };
}
