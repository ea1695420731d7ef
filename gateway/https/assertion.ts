import { randomFillSync, sign } from 'node:crypto';
import type { PeerIdentity } from '../../firmware-sdk/protocol/certificate-identity.ts';
import type { DeviceRecord } from '../../provisioning/registry/records.ts';
import type { SigningKey } from './keyring.ts';

export interface AssertionClaims {
  iss: string;
  sub: string;
  aud: string;
  iat: number;
  nbf: number;
  exp: number;
  jti: string;
  /** RFC 8705 §3.1: bound to the client certificate the device used. */
  cnf: { 'x5t#S256': string };
  device_type: string;
  fleet: string;
  serial: string;
}

const b64url = (data: string | Buffer) => Buffer.from(data).toString('base64url');

/**
 * An ECDSA signature as DER (`SEQUENCE { INTEGER r, INTEGER s }`, what `crypto.sign` returns for
 * a bare KeyObject) in the JWS form: r and s as fixed-size big-endian halves (RFC 7518 §3.4).
 */
export function derToJose(der: Buffer, size = 32): Buffer {
  const out = Buffer.alloc(size * 2);
  let p = 2;
  if ((der[1] as number) & 0x80) p += (der[1] as number) & 0x7f; // long-form sequence length (P-521)
  for (let half = 0; half < 2; half++) {
    const len = der[p + 1] as number;
    let int = der.subarray(p + 2, p + 2 + len);
    while (int.length > size && int[0] === 0) int = int.subarray(1);
    int.copy(out, half * size + (size - int.length));
    p += 2 + len;
  }
  return out;
}

/**
 * Random bytes for `jti`s, drawn from the CSPRNG 4 KiB at a time and each handed out once (as
 * `crypto.randomUUID` caches its entropy): one `randomFillSync` per 256 assertions instead of one
 * per request.
 */
class RandomPool {
  readonly #buf = Buffer.allocUnsafe(4096);
  #at = this.#buf.length;

  take16(): Buffer {
    if (this.#at + 16 > this.#buf.length) {
      randomFillSync(this.#buf);
      this.#at = 0;
    }
    const out = this.#buf.subarray(this.#at, this.#at + 16);
    this.#at += 16;
    return out;
  }
}

/**
 * Mints the per-request assertion: a compact JWS (RFC 7515), ES256, `kid` in the header.
 * Signed with `crypto.sign` on the prepared KeyObject itself — not `{ key, dsaEncoding }`, which
 * makes Node prepare the key again on every call (~2× the signature) — and the DER signature
 * turned into the JWS form here; rather than jose's `SignJWT` (~155 µs here). The header is fixed
 * per key, the payload is one JSON.stringify. Origins verify it with any JOSE library against the
 * gateway's JWKS (the tests use jose's jwtVerify).
 */
export class AssertionMinter {
  readonly #issuer: string;
  readonly #random = new RandomPool();
  #key: SigningKey;
  #header: string;

  constructor(issuer: string, key: SigningKey) {
    this.#issuer = issuer;
    this.#key = key;
    this.#header = b64url(JSON.stringify({ alg: 'ES256', typ: 'JWT', kid: key.kid }));
  }

  /** A rotated keyring takes effect on the next assertion. */
  setKey(key: SigningKey): void {
    this.#key = key;
    this.#header = b64url(JSON.stringify({ alg: 'ES256', typ: 'JWT', kid: key.kid }));
  }

  get kid(): string {
    return this.#key.kid;
  }

  /** `exp` is no later than `iat` + the route timeout: the assertion lives for this request only. */
  mint(
    device: DeviceRecord,
    identity: PeerIdentity,
    audience: string,
    lifetimeMs: number,
    now = Date.now(),
  ): { token: string; claims: AssertionClaims } {
    const iat = Math.floor(now / 1000);
    const claims: AssertionClaims = {
      iss: this.#issuer,
      sub: device.id,
      aud: audience,
      iat,
      nbf: iat,
      exp: iat + Math.max(1, Math.floor(lifetimeMs / 1000)),
      jti: this.#random.take16().toString('base64url'),
      cnf: { 'x5t#S256': identity.x5tS256 },
      device_type: device.type,
      fleet: device.fleet,
      serial: identity.serial,
    };
    const input = `${this.#header}.${b64url(JSON.stringify(claims))}`;
    const signature = derToJose(sign('sha256', Buffer.from(input), this.#key.privateKey));
    return { token: `${input}.${signature.toString('base64url')}`, claims };
  }
}
