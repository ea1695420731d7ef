import { createPublicKey, type KeyObject, verify as verifySignature } from 'node:crypto';
import { children, DerError, expectTag, oid, readTlv, type Tlv } from '../../firmware-sdk/protocol/der.ts';
import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';

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
  '2.5.4.3': 'CN',
  '2.5.4.5': 'serialNumber',
  '2.5.4.6': 'C',
  '2.5.4.7': 'L',
  '2.5.4.8': 'ST',
  '2.5.4.10': 'O',
  '2.5.4.11': 'OU',
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

/** Exactly one PEM block and nothing around it but white space (RFC 7468 §2 strict form). */
const PEM_ONLY =
  /^\s*-----BEGIN (NEW )?CERTIFICATE REQUEST-----\r?\n([A-Za-z0-9+/=\s]*?)-----END (NEW )?CERTIFICATE REQUEST-----\s*$/;

/** Subject attributes and requested extensions a CSR may carry (a real one has a handful). */
const MAX_NAME_ATTRIBUTES = 32;
const MAX_REQUESTED_EXTENSIONS = 32;

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
  if (input.includes('-----')) {
    // One block, nothing before or after it: two concatenated CSRs, or junk after END, would
    // leave it to chance which one is meant.
    if (input.split('-----BEGIN').length !== 2)
      throw invalid('expected exactly one "BEGIN CERTIFICATE REQUEST" PEM block');
    const match = PEM_ONLY.exec(input);
    if (match === null || (match[1] ?? '') !== (match[3] ?? ''))
      throw invalid('not a single well-formed "CERTIFICATE REQUEST" PEM block (nothing may precede or follow it)');
    return strictBase64(match[2] as string);
  }
  if (input.trim().length === 0) throw invalid('CSR is empty');
  return strictBase64(input);
}

const OID_EC_PUBLIC_KEY = '1.2.840.10045.2.1';
const OID_RSA = '1.2.840.113549.1.1.1';
const OID_ED25519 = '1.3.101.112';

/**
 * The key policy (CA/Browser Forum Baseline Requirements §6.1.5–6.1.6 in spirit): EC keys on
 * P-256 or P-384 **named** by OID — explicit curve parameters are refused (the "CurveBall"
 * class: a key whose parameters the verifier takes from the certificate); RSA 2048–8192 bits, a
 * whole number of bytes, public exponent 65537; Ed25519. `spki` is the requested
 * SubjectPublicKeyInfo, already checked to be canonical DER.
 */
function describeKey(key: KeyObject, spki: Buffer): string {
  const details = key.asymmetricKeyDetails ?? {};
  const [alg] = children(spki, readTlv(spki, 0));
  const [algOid, params] = children(spki, expectTag(alg, 0x30, 'algorithm'));
  const algorithm = oid(spki, expectTag(algOid, 0x06, 'algorithm id'));
  switch (key.asymmetricKeyType) {
    case 'ec':
      if (algorithm !== OID_EC_PUBLIC_KEY || params?.tag !== 0x06)
        throw new FleetgateError(
          'KEY_UNSUPPORTED',
          'EC keys must name their curve (explicit curve parameters are refused)',
        );
      if (details.namedCurve === 'prime256v1') return 'EC P-256';
      if (details.namedCurve === 'secp384r1') return 'EC P-384';
      throw new FleetgateError(
        'KEY_UNSUPPORTED',
        `EC curve ${details.namedCurve ?? 'unknown'} is not supported: use P-256 or P-384`,
      );
    case 'rsa': {
      if (algorithm !== OID_RSA)
        throw new FleetgateError('KEY_UNSUPPORTED', 'RSA keys must be rsaEncryption (RSA-PSS keys are not supported)');
      const bits = details.modulusLength ?? 0;
      if (bits < 2048)
        throw new FleetgateError('KEY_TOO_WEAK', `RSA ${bits}-bit keys are too weak: at least 2048 bits`);
      if (bits > 8192)
        throw new FleetgateError('KEY_UNSUPPORTED', `RSA ${bits}-bit keys are not supported: at most 8192 bits`);
      if (bits % 8 !== 0)
        throw new FleetgateError('KEY_UNSUPPORTED', `RSA modulus of ${bits} bits: must be a whole number of bytes`);
      if (details.publicExponent !== 65537n)
        throw new FleetgateError('KEY_TOO_WEAK', `RSA public exponent ${details.publicExponent}: must be 65537`);
      return `RSA ${bits}`;
    }
    case 'ed25519':
      if (algorithm !== OID_ED25519 || params !== undefined)
        throw new FleetgateError('KEY_UNSUPPORTED', 'Ed25519 keys carry no parameters');
      return 'Ed25519';
    default:
      throw new FleetgateError(
        'KEY_UNSUPPORTED',
        `${key.asymmetricKeyType ?? 'unknown'} keys are not supported: use EC P-256/P-384, RSA ≥ 2048 or Ed25519`,
      );
  }
}

function stringValue(der: Buffer, t: Tlv): string {
  const bytes = der.subarray(t.contentStart, t.end);
  if (t.tag === 0x1e) return Buffer.from(bytes).swap16().toString('utf16le'); // BMPString (big-endian UCS-2); copies this value only
  return bytes.toString(t.tag === 0x0c ? 'utf8' : 'latin1');
}

/** `CN=x, O=y` from a Name, plus its CN. */
function readSubject(der: Buffer, name: Tlv): { subject: string; commonName: string | undefined } {
  const parts: string[] = [];
  let commonName: string | undefined;
  for (const rdn of children(der, expectTag(name, 0x30, 'subject'), MAX_NAME_ATTRIBUTES)) {
    for (const atv of children(der, expectTag(rdn, 0x31, 'RDN'), MAX_NAME_ATTRIBUTES)) {
      if (parts.length === MAX_NAME_ATTRIBUTES)
        throw new DerError(`more than ${MAX_NAME_ATTRIBUTES} subject attributes`);
      const [type, value, extra] = children(der, expectTag(atv, 0x30, 'attribute'), 2);
      if (value === undefined || extra !== undefined) throw new DerError('attribute must be a type and one value');
      const typeOid = oid(der, expectTag(type, 0x06, 'attribute type'));
      const text = stringValue(der, value);
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
  for (const attr of children(der, attributes, MAX_REQUESTED_EXTENSIONS)) {
    const [type, values, extra] = children(der, expectTag(attr, 0x30, 'attribute'), 2);
    if (extra !== undefined) throw new DerError('attribute must be a type and a set of values');
    if (oid(der, expectTag(type, 0x06, 'attribute type')) !== EXTENSION_REQUEST) continue;
    for (const exts of children(der, expectTag(values, 0x31, 'attribute values'), 1)) {
      for (const ext of children(der, expectTag(exts, 0x30, 'extensions'), MAX_REQUESTED_EXTENSIONS)) {
        if (out.length === MAX_REQUESTED_EXTENSIONS)
          throw new DerError(`more than ${MAX_REQUESTED_EXTENSIONS} requested extensions`);
        const extOid = oid(
          der,
          expectTag(children(der, expectTag(ext, 0x30, 'extension'), 3)[0], 0x06, 'extension id'),
        );
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
/** The request's pieces as read from its DER, before the signature is checked. */
interface CsrParts {
  tbs: Buffer;
  spki: Buffer;
  algOid: string;
  signature: Buffer;
  subject: string;
  commonName: string | undefined;
  extensions: string[];
}

export function parseCsr(input: string | Uint8Array): ParsedCsr {
  const der = csrDer(input);
  let parts: CsrParts;
  try {
    const top = expectTag(readTlv(der, 0), 0x30, 'CertificationRequest');
    if (top.end !== der.length) throw new DerError('trailing bytes after the request');
    const [info, sigAlg, sig, extraTop] = children(der, top, 3);
    if (extraTop !== undefined || sig === undefined) throw new DerError('a request is info, algorithm and signature');
    const [version, subject, spki, attributes] = children(der, expectTag(info, 0x30, 'certificationRequestInfo'), 4);
    expectTag(version, 0x02, 'version');
    if (version!.end - version!.contentStart !== 1 || der[version!.contentStart] !== 0)
      throw new DerError('version must be 0 (v1)');
    const [spkiAlg, spkiKey, spkiExtra] = children(der, expectTag(spki, 0x30, 'subjectPKInfo'), 2);
    expectTag(spkiAlg, 0x30, 'subjectPKInfo algorithm');
    expectTag(spkiKey, 0x03, 'subjectPublicKey');
    if (spkiExtra !== undefined) throw new DerError('subjectPKInfo has extra elements');
    if (attributes !== undefined) expectTag(attributes, 0xa0, 'attributes');
    const algOid = oid(
      der,
      expectTag(children(der, expectTag(sigAlg, 0x30, 'signatureAlgorithm'))[0], 0x06, 'algorithm'),
    );
    const bits = expectTag(sig, 0x03, 'signature');
    if (der[bits.contentStart] !== 0) throw new DerError('signature has unused bits');
    parts = {
      tbs: der.subarray(info!.start, info!.end),
      spki: Buffer.from(der.subarray(spki!.start, spki!.end)),
      algOid,
      signature: der.subarray(bits.contentStart + 1, bits.end),
      ...readSubject(der, subject as Tlv),
      extensions: requestedExtensions(der, attributes),
    };
  } catch (err) {
    if (err instanceof FleetgateError) throw err;
    throw invalid(`not a PKCS#10 certificate signing request (${(err as Error).message})`, err);
  }
  let publicKey: KeyObject;
  let canonical: Buffer;
  try {
    publicKey = createPublicKey({ key: parts.spki, format: 'der', type: 'spki' });
    canonical = publicKey.export({ type: 'spki', format: 'der' });
  } catch (err) {
    throw new FleetgateError('KEY_UNSUPPORTED', 'the CSR public key cannot be read', { cause: err });
  }
  const keyDescription = describeKey(publicKey, parts.spki);
  // One key, one encoding: a key hash in the registry (and the denylist by key) must match the
  // gateway's hash of the certificate's key. Only the canonical re-encoding is accepted and used.
  if (!canonical.equals(parts.spki)) throw invalid('the CSR public key is not canonically encoded');
  const hash = SIGNATURE_HASH[parts.algOid];
  if (hash === undefined) throw invalid(`CSR signature algorithm ${parts.algOid} is not supported`);
  const family = parts.algOid.startsWith('1.2.840.10045.')
    ? 'ec'
    : parts.algOid.startsWith('1.2.840.113549.')
      ? 'rsa'
      : 'ed25519';
  if (family !== publicKey.asymmetricKeyType)
    throw invalid(`CSR signature algorithm ${parts.algOid} does not fit its ${publicKey.asymmetricKeyType} key`);
  let valid: boolean;
  try {
    valid = verifySignature(hash, parts.tbs, publicKey, parts.signature);
  } catch (err) {
    throw invalid('the CSR signature cannot be verified', err);
  }
  if (!valid) throw invalid('the CSR signature does not match its public key (proof of possession failed)');
  return {
    spki: canonical,
    publicKey,
    keyDescription,
    requested: { subject: parts.subject, commonName: parts.commonName, extensions: parts.extensions },
  };
}
