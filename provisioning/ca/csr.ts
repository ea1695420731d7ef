import { createPublicKey, verify as verifySignature, type KeyObject } from 'node:crypto';
import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import { children, DerError, expectTag, oid, readTlv, type Tlv } from '../../firmware-sdk/protocol/der.ts';

/** Longer than any sane CSR (an RSA-8192 request is ~3 KiB of PEM). */
export const CSR_MAX_BYTES = 16 * 1024;

export interface ParsedCsr {
  /** DER SubjectPublicKeyInfo of the requested key. */
  spki: Buffer;
  publicKey: KeyObject;
  /** e.g. `EC P-256`, `RSA 2048`, `Ed25519`. */
  keyDescription: string;
  /** What the CSR asked for; the CA decides the content and ignores all of it. */
  requested: { subject: string; commonName: string | undefined; extensions: string[] };
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

const DN_NAMES: Record<string, string> = {
  '2.5.4.3': 'CN', '2.5.4.5': 'serialNumber', '2.5.4.6': 'C', '2.5.4.7': 'L', '2.5.4.8': 'ST', '2.5.4.10': 'O', '2.5.4.11': 'OU',
};

/** Signature algorithms a CSR may use, and the digest each implies (null: the key's own, Ed25519). */
const SIGNATURE_HASH: Record<string, string | null> = {
  '1.2.840.10045.4.3.2': 'sha256', // ecdsa-with-SHA256
  '1.2.840.10045.4.3.3': 'sha384',
  '1.2.840.10045.4.3.4': 'sha512',
  '1.2.840.113549.1.1.11': 'sha256', // sha256WithRSAEncryption
  '1.2.840.113549.1.1.12': 'sha384',
  '1.2.840.113549.1.1.13': 'sha512',
  '1.3.101.112': null, // Ed25519
};

const EXTENSION_REQUEST = '1.2.840.113549.1.9.14';

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

function describeKey(key: KeyObject): string {
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

function stringValue(der: Buffer, t: Tlv): string {
  const bytes = der.subarray(t.contentStart, t.end);
  if (t.tag === 0x1e) return bytes.swap16().toString('utf16le'); // BMPString (big-endian UCS-2)
  return bytes.toString(t.tag === 0x0c ? 'utf8' : 'latin1');
}

/** `CN=x, O=y` from a Name, plus its CN. */
function readSubject(der: Buffer, name: Tlv): { subject: string; commonName: string | undefined } {
  const parts: string[] = [];
  let commonName: string | undefined;
  for (const rdn of children(der, expectTag(name, 0x30, 'subject'))) {
    for (const atv of children(der, expectTag(rdn, 0x31, 'RDN'))) {
      const [type, value] = children(der, expectTag(atv, 0x30, 'attribute'));
      const typeOid = oid(der, expectTag(type, 0x06, 'attribute type'));
      const text = stringValue(Buffer.from(der), value as Tlv);
      if (typeOid === '2.5.4.3' && commonName === undefined) commonName = text;
      parts.push(`${DN_NAMES[typeOid] ?? typeOid}=${text}`);
    }
  }
  return { subject: parts.join(', '), commonName };
}

/** OIDs of the extensions asked for in the extensionRequest attribute (RFC 2985 §5.4.2). */
function requestedExtensions(der: Buffer, attributes: Tlv | undefined): string[] {
  if (attributes === undefined) return [];
  const out: string[] = [];
  for (const attr of children(der, attributes)) {
    const [type, values] = children(der, expectTag(attr, 0x30, 'attribute'));
    if (oid(der, expectTag(type, 0x06, 'attribute type')) !== EXTENSION_REQUEST) continue;
    for (const exts of children(der, expectTag(values, 0x31, 'attribute values'))) {
      for (const ext of children(der, expectTag(exts, 0x30, 'extensions'))) {
        const extOid = oid(der, expectTag(children(der, ext)[0], 0x06, 'extension id'));
        out.push(OID_NAMES[extOid] ?? extOid);
      }
    }
  }
  return out;
}

/**
 * Parses a PKCS#10 request (RFC 2986) and checks it proves possession of its key: the
 * request is signed with the private key of the public key it carries. Read with a small DER
 * walker and verified with Node's crypto: a fraction of a millisecond.
 */
export async function parseCsr(input: string | Uint8Array): Promise<ParsedCsr> {
  const der = csrDer(input);
  let parts;
  try {
    const top = expectTag(readTlv(der, 0), 0x30, 'CertificationRequest');
    if (top.end !== der.length) throw new DerError('trailing bytes after the request');
    const [info, sigAlg, sig] = children(der, top);
    const [version, subject, spki, attributes] = children(der, expectTag(info, 0x30, 'certificationRequestInfo'));
    expectTag(version, 0x02, 'version');
    if (version!.end - version!.contentStart !== 1 || der[version!.contentStart] !== 0) throw new DerError('version must be 0 (v1)');
    expectTag(spki, 0x30, 'subjectPKInfo');
    if (attributes !== undefined) expectTag(attributes, 0xa0, 'attributes');
    const algOid = oid(der, expectTag(children(der, expectTag(sigAlg, 0x30, 'signatureAlgorithm'))[0], 0x06, 'algorithm'));
    const bits = expectTag(sig, 0x03, 'signature');
    if (der[bits.contentStart] !== 0) throw new DerError('signature has unused bits');
    parts = {
      tbs: der.subarray(info!.start, info!.end), spki: Buffer.from(der.subarray(spki!.start, spki!.end)), algOid,
      signature: der.subarray(bits.contentStart + 1, bits.end), ...readSubject(der, subject as Tlv), extensions: requestedExtensions(der, attributes),
    };
  } catch (err) {
    if (err instanceof FleetgateError) throw err;
    throw invalid(`not a PKCS#10 certificate signing request (${(err as Error).message})`, err);
  }
  let publicKey: KeyObject;
  try {
    publicKey = createPublicKey({ key: parts.spki, format: 'der', type: 'spki' });
  } catch (err) {
    throw new FleetgateError('KEY_UNSUPPORTED', 'the CSR public key cannot be read', { cause: err });
  }
  const keyDescription = describeKey(publicKey);
  const hash = SIGNATURE_HASH[parts.algOid];
  if (hash === undefined) throw invalid(`CSR signature algorithm ${parts.algOid} is not supported`);
  const family = parts.algOid.startsWith('1.2.840.10045.') ? 'ec' : parts.algOid.startsWith('1.2.840.113549.') ? 'rsa' : 'ed25519';
  if (family !== publicKey.asymmetricKeyType) throw invalid(`CSR signature algorithm ${parts.algOid} does not fit its ${publicKey.asymmetricKeyType} key`);
  let valid: boolean;
  try {
    valid = verifySignature(hash, parts.tbs, publicKey, parts.signature);
  } catch (err) {
    throw invalid('the CSR signature cannot be verified', err);
  }
  if (!valid) throw invalid('the CSR signature does not match its public key (proof of possession failed)');
  return {
    spki: parts.spki, publicKey, keyDescription,
    requested: { subject: parts.subject, commonName: parts.commonName, extensions: parts.extensions },
  };
}
