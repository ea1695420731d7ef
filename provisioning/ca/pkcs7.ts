import { pkijs } from './x509.ts';

const ID_DATA = '1.2.840.113549.1.7.1';

function derOfPems(pem: string): Uint8Array<ArrayBuffer>[] {
  return [...pem.matchAll(/-----BEGIN CERTIFICATE-----([\s\S]*?)-----END CERTIFICATE-----/g)].map(
    (m) => new Uint8Array(Buffer.from((m[1] as string).replace(/\s+/g, ''), 'base64')),
  );
}

/**
 * A degenerate "certs-only" PKCS#7 / CMS SignedData (no signers, no content), as EST returns
 * certificates (RFC 7030 §4.1.3, §4.2.3; RFC 5652 §5). The same structure as
 * `openssl crl2pkcs7 -nocrl`. Returns DER.
 */
export function certsOnly(pems: string): Buffer {
  const signed = new pkijs.SignedData({
    version: 1,
    encapContentInfo: new pkijs.EncapsulatedContentInfo({ eContentType: ID_DATA }),
    certificates: derOfPems(pems).map((der) => pkijs.Certificate.fromBER(der)),
    signerInfos: [],
  });
  const info = new pkijs.ContentInfo({ contentType: pkijs.ContentInfo.SIGNED_DATA, content: signed.toSchema(true) });
  return Buffer.from(info.toSchema().toBER(false));
}

/** Base64 with line breaks every 76 characters (the EST wire form, RFC 7030 §4.1.3). */
export function base64Lines(der: Uint8Array): string {
  return `${Buffer.from(der)
    .toString('base64')
    .replace(/.{1,76}/g, '$&\r\n')}`;
}
