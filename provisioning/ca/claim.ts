import { CLAIM_URI_PREFIX } from '../../firmware-sdk/protocol/device-id.ts';
import type { CertificateAuthority } from './authority.ts';
import { randomSerial, sha256Hex, validityFrom } from './fields.ts';
import { ECDSA_SHA256, EC_P256, pemWithNewline, subtle, toPem, x509 } from './x509.ts';

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
export async function makeClaimCredential(ca: CertificateAuthority, name: string, validityMs: number): Promise<ClaimCredential> {
  const keys = await subtle.generateKey(EC_P256, true, ['sign', 'verify']) as CryptoKeyPair;
  const serial = randomSerial();
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serial,
    subject: [{ CN: [`claim ${name}`] }],
    issuer: ca.intermediate.subjectName,
    ...validityFrom(Date.now(), validityMs, ca.intermediate.notAfter),
    signingAlgorithm: ECDSA_SHA256,
    publicKey: keys.publicKey,
    signingKey: ca.intermediateKey,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth]),
      new x509.SubjectAlternativeNameExtension([{ type: 'url', value: CLAIM_URI_PREFIX + name }]),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      new x509.AuthorityKeyIdentifierExtension(ca.intermediateKeyId),
    ],
  });
  return {
    serial,
    fingerprint: sha256Hex(cert.rawData),
    notAfter: cert.notAfter.getTime(),
    certPem: pemWithNewline(cert.toString('pem')) + ca.intermediatePem,
    keyPem: toPem(await subtle.exportKey('pkcs8', keys.privateKey), 'PRIVATE KEY'),
  };
}
