import { deviceUri } from '../../firmware-sdk/protocol/device-id.ts';
import type { CertificateAuthority } from './authority.ts';
import { randomSerial, sha256Hex, validityFrom } from './fields.ts';
import { ECDSA_SHA256, pemWithNewline, x509 } from './x509.ts';

export interface LeafOptions {
  deviceId: string;
  /** The device's public key, from its CSR. */
  publicKey: x509.PublicKey;
  validityMs: number;
}

export interface SignedLeaf {
  serial: string;
  pem: string;
  fingerprint: string;
  spkiSha256: string;
  notBefore: number;
  notAfter: number;
}

/**
 * Shapes and signs a device certificate. The CA alone decides its content: CN = device id,
 * SAN URI `urn:fleetgate:device:<id>`, EKU clientAuth only, keyUsage digitalSignature,
 * CA:false, SKI/AKI, a random serial. Nothing the CSR asked for is copied.
 */
export async function signLeaf(ca: CertificateAuthority, options: LeafOptions): Promise<SignedLeaf> {
  const { notBefore, notAfter } = validityFrom(Date.now(), options.validityMs, ca.intermediate.notAfter);
  const serial = randomSerial();
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serial,
    subject: [{ CN: [options.deviceId] }],
    issuer: ca.intermediate.subjectName,
    notBefore,
    notAfter,
    signingAlgorithm: ECDSA_SHA256,
    publicKey: options.publicKey,
    signingKey: ca.intermediateKey,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth], false),
      new x509.SubjectAlternativeNameExtension([{ type: 'url', value: deviceUri(options.deviceId) }], false),
      await x509.SubjectKeyIdentifierExtension.create(options.publicKey),
      new x509.AuthorityKeyIdentifierExtension(ca.intermediateKeyId),
    ],
  });
  return {
    serial,
    pem: pemWithNewline(cert.toString('pem')),
    fingerprint: sha256Hex(cert.rawData),
    spkiSha256: sha256Hex(options.publicKey.rawData),
    notBefore: cert.notBefore.getTime(),
    notAfter: cert.notAfter.getTime(),
  };
}
