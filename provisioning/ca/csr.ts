import { createPublicKey } from 'node:crypto';
import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import { x509 } from './x509.ts';

/** Longer than any sane CSR (an RSA-8192 request is ~3 KiB of PEM). */
export const CSR_MAX_BYTES = 16 * 1024;

export interface ParsedCsr {
  request: x509.Pkcs10CertificateRequest;
  /** DER SubjectPublicKeyInfo of the requested key. */
  spki: Buffer;
  /** e.g. `EC P-256`, `RSA 2048`, `Ed25519`. */
  keyDescription: string;
  /** What the CSR asked for; the CA decides the content and ignores all of it. */
  requested: { subject: string; extensions: string[] };
}

const OID_NAMES: Record<string, string> = {
  '2.5.29.17': 'subjectAltName',
  '2.5.29.19': 'basicConstraints',
  '2.5.29.15': 'keyUsage',
  '2.5.29.37': 'extendedKeyUsage',
  '2.5.29.14': 'subjectKeyIdentifier',
  '2.5.29.32': 'certificatePolicies',
  '2.5.29.30': 'nameConstraints',
};

const PEM_BLOCK = /-----BEGIN (NEW )?CERTIFICATE REQUEST-----([\s\S]*?)-----END (NEW )?CERTIFICATE REQUEST-----/;

function invalid(message: string, cause?: unknown): FleetgateError {
  return new FleetgateError('CSR_INVALID', message, cause === undefined ? {} : { cause });
}

function strictBase64(body: string): Buffer {
  const compact = body.replace(/\s+/g, '');
  if (compact.length === 0 || compact.length % 4 !== 0 || !/^[A-Za-z0-9+/]+={0,2}$/.test(compact)) {
    throw invalid('CSR is not valid base64');
  }
  return Buffer.from(compact, 'base64');
}

/**
 * Accepts a PKCS#10 request as PEM, as DER, or as bare base64 DER (the EST wire form,
 * RFC 7030 §4.2.1) and returns its DER bytes.
 */
export function csrDer(input: string | Uint8Array): Buffer {
  if (input.length > CSR_MAX_BYTES * 2) throw invalid(`CSR is larger than ${CSR_MAX_BYTES} bytes`);
  if (typeof input !== 'string') {
    const bytes = Buffer.from(input);
    if (bytes[0] === 0x30) return bytes; // an ASN.1 SEQUENCE: DER
    return csrDer(bytes.toString('latin1'));
  }
  if (input.includes('-----BEGIN')) {
    const match = PEM_BLOCK.exec(input);
    if (match === null) throw invalid('no "BEGIN CERTIFICATE REQUEST" PEM block found');
    return strictBase64(match[2] as string);
  }
  if (input.trim().length === 0) throw invalid('CSR is empty');
  return strictBase64(input);
}

function describeKey(spki: Buffer): string {
  let key;
  try {
    key = createPublicKey({ key: spki, format: 'der', type: 'spki' });
  } catch (err) {
    throw new FleetgateError('KEY_UNSUPPORTED', 'the CSR public key cannot be read', { cause: err });
  }
  const details = key.asymmetricKeyDetails ?? {};
  switch (key.asymmetricKeyType) {
    case 'ec':
      if (details.namedCurve === 'prime256v1') return 'EC P-256';
      if (details.namedCurve === 'secp384r1') return 'EC P-384';
      throw new FleetgateError('KEY_UNSUPPORTED', `EC curve ${details.namedCurve ?? 'unknown'} is not supported: use P-256 or P-384`);
    case 'rsa': {
      const bits = details.modulusLength ?? 0;
      if (bits < 2048) throw new FleetgateError('KEY_TOO_WEAK', `RSA ${bits}-bit keys are too weak: at least 2048 bits`);
      if (bits > 8192) throw new FleetgateError('KEY_UNSUPPORTED', `RSA ${bits}-bit keys are not supported: at most 8192 bits`);
      return `RSA ${bits}`;
    }
    case 'ed25519':
      return 'Ed25519';
    default:
      throw new FleetgateError('KEY_UNSUPPORTED', `${key.asymmetricKeyType ?? 'unknown'} keys are not supported: use EC P-256/P-384, RSA ≥ 2048 or Ed25519`);
  }
}

/**
 * Parses a CSR and checks it proves possession of its key (RFC 2986 §3: the request is
 * signed with the private key of the public key it carries).
 */
export async function parseCsr(input: string | Uint8Array): Promise<ParsedCsr> {
  const der = csrDer(input);
  let request: x509.Pkcs10CertificateRequest;
  try {
    request = new x509.Pkcs10CertificateRequest(new Uint8Array(der));
  } catch (err) {
    throw invalid('not a PKCS#10 certificate signing request', err);
  }
  const spki = Buffer.from(request.publicKey.rawData);
  const keyDescription = describeKey(spki);
  let valid: boolean;
  try {
    valid = await request.verify();
  } catch (err) {
    throw invalid('the CSR signature cannot be verified', err);
  }
  if (!valid) throw invalid('the CSR signature does not match its public key (proof of possession failed)');
  return {
    request, spki, keyDescription,
    requested: {
      subject: request.subject,
      extensions: Array.from(request.extensions, (e) => OID_NAMES[e.type] ?? e.type),
    },
  };
}
