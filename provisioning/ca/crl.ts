import * as asn1js from 'asn1js';
import type { CertificateAuthority } from './authority.ts';
import { pkijs, toPem } from './x509.ts';

export interface CrlEntry {
  serial: string;
  reason: number;
  revokedAt: number;
}

export interface CrlOptions {
  /** RFC 5280 §5.2.3: monotonically increasing, from the registry. */
  number: number;
  entries: readonly CrlEntry[];
  /** How long relying parties may use this CRL (sets nextUpdate). */
  validityMs: number;
  now?: number;
}

const OID_AKI = '2.5.29.35';
const OID_CRL_NUMBER = '2.5.29.20';
const OID_REASON_CODE = '2.5.29.21';

/** UTCTime for dates through 2049, GeneralizedTime after (RFC 5280 §5.1.2.4). */
function time(date: Date): pkijs.Time {
  return new pkijs.Time({ type: date.getUTCFullYear() < 2050 ? 0 : 1, value: date });
}

function integerFromHex(hex: string): asn1js.Integer {
  const padded = hex.length % 2 === 1 ? `0${hex}` : hex;
  // A leading 1 bit would make the DER INTEGER negative: prefix a zero byte.
  const bytes = Buffer.from(/^[89a-f]/.test(padded) ? `00${padded}` : padded, 'hex');
  return new asn1js.Integer({ valueHex: bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) });
}

function entry(e: CrlEntry): pkijs.RevokedCertificate {
  return new pkijs.RevokedCertificate({
    userCertificate: integerFromHex(e.serial),
    revocationDate: time(new Date(e.revokedAt)),
    // RFC 5280 §5.3.1: reasonCode unspecified (0) SHOULD be absent.
    ...(e.reason !== 0 && {
      crlEntryExtensions: new pkijs.Extensions({
        extensions: [
          new pkijs.Extension({
            extnID: OID_REASON_CODE,
            critical: false,
            extnValue: new asn1js.Enumerated({ value: e.reason }).toBER(false),
          }),
        ],
      }),
    }),
  });
}

/**
 * A signed X.509 v2 CRL of the issuing CA (RFC 5280 §5): CRL number, AKI, one entry per
 * revoked serial with its reason code. Built with pkijs (linear in the number of entries).
 * Returns DER.
 */
export async function buildCrl(ca: CertificateAuthority, options: CrlOptions): Promise<Buffer> {
  const now = new Date(options.now ?? Date.now());
  const issuer = pkijs.Certificate.fromBER(new Uint8Array(ca.intermediate.rawData));
  const crl = new pkijs.CertificateRevocationList({
    version: 1,
    issuer: issuer.subject,
    thisUpdate: time(now),
    nextUpdate: time(new Date(now.getTime() + options.validityMs)),
  });
  // RFC 5280 §5.1.2.6: absent, not empty, when nothing is revoked.
  if (options.entries.length > 0) crl.revokedCertificates = options.entries.map(entry);
  const keyId = Buffer.from(ca.intermediateKeyId, 'hex');
  crl.crlExtensions = new pkijs.Extensions({
    extensions: [
      new pkijs.Extension({
        extnID: OID_AKI,
        critical: false,
        extnValue: new pkijs.AuthorityKeyIdentifier({ keyIdentifier: new asn1js.OctetString({ valueHex: keyId }) })
          .toSchema()
          .toBER(false),
      }),
      new pkijs.Extension({
        extnID: OID_CRL_NUMBER,
        critical: false,
        extnValue: new asn1js.Integer({ value: options.number }).toBER(false),
      }),
    ],
  });
  await crl.sign(ca.intermediateKey, 'SHA-256');
  return Buffer.from(crl.toSchema(true).toBER(false));
}

/** PEM with the label OpenSSL expects (`X509 CRL`). */
export function crlPem(der: Uint8Array): string {
  return toPem(der, 'X509 CRL');
}
