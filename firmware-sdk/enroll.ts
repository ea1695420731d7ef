import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { errorFromResponse, httpsRequest, type TlsMaterial } from './http.ts';
import { createCsr, type DeviceIdentity, generateKey, type KeyType, loadIdentity, saveIdentity } from './identity.ts';
import { preflightEnrollment } from './preflight.ts';
import { children, expectTag, readTlv, toPem } from './protocol/der.ts';
import { FleetgateError } from './protocol/errors.ts';

export interface EnrollOptions {
  /** Provisioning service, e.g. `https://127.0.0.1:9443`. */
  server: string;
  /** Root CA PEM the provisioning service must chain to. */
  ca: string;
  /** Where the identity is stored (atomically). */
  identityDir: string;
  keyType?: KeyType;
}

interface Issued {
  deviceId: string;
  certificate: string;
  chain: string;
  ca: string;
}

const MAX_BUSY_RETRIES = 8;

/**
 * POSTs an enrollment. A busy service (429 with Retry-After, 503) is waited out — at most
 * MAX_BUSY_RETRIES times, each wait as long as the service asks (capped at 30 s) plus jitter —
 * so a factory line enrolling many devices slows down instead of failing.
 */
async function postEnroll(url: string, tls: TlsMaterial, body: Record<string, unknown>, what: string): Promise<Issued> {
  for (let attempt = 0; ; attempt++) {
    const res = await httpsRequest(url, {
      tls,
      body: JSON.stringify(body),
      headers: { 'content-type': 'application/json' },
    });
    if (res.status === 201) return JSON.parse(res.body.toString('utf8')) as Issued;
    if ((res.status === 429 || res.status === 503) && attempt < MAX_BUSY_RETRIES) {
      const after = Number(res.headers['retry-after'] ?? 1);
      await new Promise((r) =>
        setTimeout(r, Math.min(30, Number.isFinite(after) ? after : 1) * 1000 + Math.random() * 500),
      );
      continue;
    }
    throw errorFromResponse(res, what);
  }
}

function store(dir: string, keyPem: string, issued: Issued): DeviceIdentity {
  saveIdentity(dir, { keyPem, certPem: issued.certificate, chainPem: issued.chain, caPem: issued.ca });
  return loadIdentity(dir);
}

/**
 * Enrolls with a one-time token: makes the key here, sends only the CSR.
 *
 * @example
 * const id = await enrollWithToken({ server: 'https://127.0.0.1:9443', ca, identityDir: './id', token });
 */
export async function enrollWithToken(opts: EnrollOptions & { token: string }): Promise<DeviceIdentity> {
  preflightEnrollment(opts); // before the token is sent: nothing spent on a device that cannot keep the result
  const keyPem = generateKey(opts.keyType);
  const issued = await postEnroll(
    `${opts.server}/v1/enroll`,
    { ca: opts.ca },
    { token: opts.token, csr: createCsr(keyPem, 'device') },
    'enroll',
  );
  return store(opts.identityDir, keyPem, issued);
}

/**
 * Enrolls by claim certificate + hardware serial (factory bootstrap); the device id is `hw-<serial>`.
 *
 * @example
 * const id = await enrollWithClaim({ server, ca, identityDir: './id', claimDir: './claim-line-1', hardwareSerial: 'SN-0001' });
 */
export async function enrollWithClaim(
  opts: EnrollOptions & { claimDir: string; hardwareSerial: string; type?: string; fleet?: string },
): Promise<DeviceIdentity> {
  preflightEnrollment(opts);
  const keyPem = generateKey(opts.keyType);
  const tls = {
    ca: opts.ca,
    cert: readFileSync(join(opts.claimDir, 'claim.crt'), 'utf8'),
    key: readFileSync(join(opts.claimDir, 'claim.key'), 'utf8'),
  };
  const issued = await postEnroll(
    `${opts.server}/v1/enroll/claim`,
    tls,
    {
      hardwareSerial: opts.hardwareSerial,
      csr: createCsr(keyPem, opts.hardwareSerial),
      ...(opts.type !== undefined && { type: opts.type }),
      ...(opts.fleet !== undefined && { fleet: opts.fleet }),
    },
    'claim enrollment',
  );
  return store(opts.identityDir, keyPem, issued);
}

/**
 * Renews over mTLS with the current certificate, with a new key; stores the new identity
 * atomically. The old certificate stays valid until it expires.
 *
 * @example
 * const next = await renew({ server, identityDir: './id' });
 */
export async function renew(opts: { server: string; identityDir: string; keyType?: KeyType }): Promise<DeviceIdentity> {
  preflightEnrollment(opts);
  const current = loadIdentity(opts.identityDir);
  const keyPem = generateKey(opts.keyType);
  const tls = { ca: current.caPem, cert: current.certPem + current.chainPem, key: current.keyPem };
  const issued = await postEnroll(
    `${opts.server}/v1/renew`,
    tls,
    { csr: createCsr(keyPem, current.info.deviceId) },
    'renewal',
  );
  if (issued.deviceId !== current.info.deviceId)
    throw new FleetgateError('CERT_INVALID', `renewal returned a certificate for ${issued.deviceId}`);
  return store(opts.identityDir, keyPem, issued);
}

// --- EST (RFC 7030) client ------------------------------------------------------------------

function csrBase64(csrPem: string): string {
  return csrPem.replace(/-----[^-]+-----|\s/g, '');
}

/** The certificates in an EST base64 PKCS#7 certs-only answer (RFC 7030 §4.1.3), as PEM. */
export function certsFromPkcs7(base64: string): string[] {
  const der = Buffer.from(base64.replace(/\s+/g, ''), 'base64');
  try {
    // ContentInfo { contentType, [0] { SignedData { version, digestAlgorithms, encapContentInfo, [0] certificates, … } } }
    const [, explicit] = children(der, readTlv(der, 0));
    const signed = children(der, expectTag(explicit, 0xa0, 'content'))[0];
    const certs = expectTag(children(der, expectTag(signed, 0x30, 'SignedData'))[3], 0xa0, 'certificates');
    return children(der, certs).map((c) => toPem(der.subarray(c.start, c.end), 'CERTIFICATE'));
  } catch (err) {
    throw new FleetgateError('BAD_REQUEST', `not a PKCS#7 certs-only answer (${(err as Error).message})`, {
      cause: err,
    });
  }
}

/** EST `cacerts`: the CA chain (issuing CA, root). */
export async function estCacerts(server: string, ca: string): Promise<string[]> {
  const res = await httpsRequest(`${server}/.well-known/est/cacerts`, { tls: { ca } });
  if (res.status !== 200) throw errorFromResponse(res, 'EST cacerts');
  return certsFromPkcs7(res.body.toString('utf8'));
}

/** EST `simpleenroll` with HTTP Basic (device id : enrollment token). */
export async function estSimpleEnroll(
  opts: EnrollOptions & { deviceId: string; token: string },
): Promise<DeviceIdentity> {
  preflightEnrollment(opts);
  const keyPem = generateKey(opts.keyType);
  const res = await httpsRequest(`${opts.server}/.well-known/est/simpleenroll`, {
    tls: { ca: opts.ca },
    body: csrBase64(createCsr(keyPem, opts.deviceId)),
    headers: {
      'content-type': 'application/pkcs10',
      authorization: `Basic ${Buffer.from(`${opts.deviceId}:${opts.token}`).toString('base64')}`,
    },
  });
  if (res.status !== 200) throw errorFromResponse(res, 'EST simpleenroll');
  const [cert] = certsFromPkcs7(res.body.toString('utf8'));
  const [chain] = await estCacerts(opts.server, opts.ca);
  return store(opts.identityDir, keyPem, { deviceId: opts.deviceId, certificate: cert!, chain: chain!, ca: opts.ca });
}

/** EST `simplereenroll` over mTLS with the current certificate. */
export async function estSimpleReenroll(opts: {
  server: string;
  identityDir: string;
  keyType?: KeyType;
}): Promise<DeviceIdentity> {
  preflightEnrollment(opts);
  const current = loadIdentity(opts.identityDir);
  const keyPem = generateKey(opts.keyType);
  const res = await httpsRequest(`${opts.server}/.well-known/est/simplereenroll`, {
    tls: { ca: current.caPem, cert: current.certPem + current.chainPem, key: current.keyPem },
    body: csrBase64(createCsr(keyPem, current.info.deviceId)),
    headers: { 'content-type': 'application/pkcs10' },
  });
  if (res.status !== 200) throw errorFromResponse(res, 'EST simplereenroll');
  const [cert] = certsFromPkcs7(res.body.toString('utf8'));
  return store(opts.identityDir, keyPem, {
    deviceId: current.info.deviceId,
    certificate: cert!,
    chain: current.chainPem,
    ca: current.caPem,
  });
}
