/**
 * Just enough DER (X.690) to read and write the few structures fleetgate handles by hand:
 * PKCS#10 requests and device certificates on the CA's enrollment hot path, a device's own
 * CSR, and the certificates in an EST PKCS#7 answer. Shared by the servers and the SDK.
 */

export interface Tlv {
  tag: number;
  /** Offset of the tag byte. */
  start: number;
  /** Offset of the first content byte. */
  contentStart: number;
  /** Offset just past the content. */
  end: number;
}

export class DerError extends Error {}

/**
 * Reads one TLV at `offset`, within `limit`. DER only (X.690 §10.1): definite lengths in their
 * shortest form — the long form only from 128 on, with no leading zero byte — so that one value
 * has one encoding (a hash of the bytes then identifies the value).
 */
export function readTlv(buf: Uint8Array, offset: number, limit = buf.length): Tlv {
  if (offset + 2 > limit) throw new DerError('truncated');
  const tag = buf[offset] as number;
  if ((tag & 0x1f) === 0x1f) throw new DerError('high tag numbers are not used here');
  let len = buf[offset + 1] as number;
  let p = offset + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n === 0) throw new DerError('indefinite length is not DER');
    if (n > 4) throw new DerError('unsupported length');
    if (p + n > limit) throw new DerError('truncated length');
    if (buf[p] === 0) throw new DerError('non-minimal length (leading zero)');
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + (buf[p++] as number);
    if (len < 0x80) throw new DerError('non-minimal length (long form below 128)');
  }
  if (p + len > limit) throw new DerError('content runs past its container');
  return { tag, start: offset, contentStart: p, end: p + len };
}

/** No structure fleetgate reads has more elements than this in one container. */
export const MAX_CHILDREN = 256;

/** The TLVs directly inside a constructed TLV (at most `max`: a hostile input cannot make us build huge lists). */
export function children(buf: Uint8Array, parent: Tlv, max = MAX_CHILDREN): Tlv[] {
  const out: Tlv[] = [];
  for (let p = parent.contentStart; p < parent.end; ) {
    if (out.length === max) throw new DerError(`more than ${max} elements in one structure`);
    const t = readTlv(buf, p, parent.end);
    out.push(t);
    p = t.end;
  }
  return out;
}

export function expectTag(t: Tlv | undefined, tag: number, what: string): Tlv {
  if (t === undefined || t.tag !== tag) throw new DerError(`${what}: expected tag 0x${tag.toString(16)}`);
  return t;
}

/** Dotted OID from an OBJECT IDENTIFIER TLV's content; minimal encoding only (X.690 §8.19.2). */
export function oid(buf: Uint8Array, t: Tlv): string {
  if (t.end === t.contentStart || t.end - t.contentStart > 64) throw new DerError('OBJECT IDENTIFIER of bad length');
  if (((buf[t.end - 1] as number) & 0x80) !== 0) throw new DerError('OBJECT IDENTIFIER ends inside a subidentifier');
  const parts: number[] = [];
  let value = 0;
  for (let i = t.contentStart; i < t.end; i++) {
    const b = buf[i] as number;
    if (b === 0x80 && (i === t.contentStart || ((buf[i - 1] as number) & 0x80) === 0))
      throw new DerError('non-minimal OBJECT IDENTIFIER subidentifier');
    value = value * 128 + (b & 0x7f);
    if ((b & 0x80) === 0) {
      if (parts.length === 0) parts.push(value < 80 ? Math.floor(value / 40) : 2, value < 80 ? value % 40 : value - 80);
      else parts.push(value);
      value = 0;
    }
  }
  return parts.join('.');
}

/**
 * The SubjectPublicKeyInfo of an X.509 certificate, as the bytes it carries (RFC 5280 §4.1:
 * the tbsCertificate's seventh field, sixth without the optional version). Hashing these is the
 * RFC 7469 key pin. Read from the DER because re-exporting the key through OpenSSL 3's encoder
 * costs ~80 µs per call — on every new connection.
 */
export function certificateSpki(der: Uint8Array): Uint8Array {
  const cert = expectTag(readTlv(der, 0), 0x30, 'Certificate');
  const tbs = expectTag(readTlv(der, cert.contentStart, cert.end), 0x30, 'tbsCertificate');
  const fields = children(der, tbs, 16);
  const first = fields[0]?.tag === 0xa0 ? 1 : 0;
  const spki = expectTag(fields[first + 5], 0x30, 'subjectPublicKeyInfo');
  return der.subarray(spki.start, spki.end);
}

// --- writing ---

function lengthBytes(len: number): number[] {
  if (len < 0x80) return [len];
  const out: number[] = [];
  for (let n = len; n > 0; n = Math.floor(n / 256)) out.unshift(n & 0xff);
  return [0x80 | out.length, ...out];
}

/** A TLV from a tag and its content parts. */
export function tlv(tag: number, ...content: Uint8Array[]): Buffer {
  const body = Buffer.concat(content);
  return Buffer.concat([Buffer.from([tag, ...lengthBytes(body.length)]), body]);
}

export const seq = (...c: Uint8Array[]) => tlv(0x30, ...c);
export const set = (...c: Uint8Array[]) => tlv(0x31, ...c);
export const octets = (...c: Uint8Array[]) => tlv(0x04, ...c);

export function oidDer(dotted: string): Buffer {
  const [a, b, ...rest] = dotted.split('.').map(Number) as number[];
  const bytes: number[] = [(a as number) * 40 + (b as number)];
  for (const n of rest) {
    const enc: number[] = [n & 0x7f];
    for (let v = Math.floor(n / 128); v > 0; v = Math.floor(v / 128)) enc.unshift((v & 0x7f) | 0x80);
    bytes.push(...enc);
  }
  return tlv(0x06, Buffer.from(bytes));
}

/** UTCTime through 2049, GeneralizedTime from 2050 (RFC 5280 §4.1.2.5). */
export function time(date: Date): Buffer {
  const iso = date.toISOString(); // YYYY-MM-DDTHH:MM:SS.sssZ
  const digits = iso.slice(0, 19).replace(/[-T:]/g, '');
  return date.getUTCFullYear() < 2050
    ? tlv(0x17, Buffer.from(`${digits.slice(2)}Z`))
    : tlv(0x18, Buffer.from(`${digits}Z`));
}

/** PEM (RFC 7468): base64 in 64-character lines, with a trailing newline. */
export function toPem(der: Uint8Array | ArrayBuffer, label: string): string {
  const b64 = Buffer.from(der instanceof Uint8Array ? der : new Uint8Array(der)).toString('base64');
  return `-----BEGIN ${label}-----\n${b64.replace(/.{1,64}/g, '$&\n')}-----END ${label}-----\n`;
}
