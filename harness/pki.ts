// Test and benchmark PKI, built at run time with real keys and real signatures. Roles are named by what
// they prove (deviceGood, deviceRevoked, deviceOtherCa, …); nothing here is committed.
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { serialHex } from '../firmware-sdk/protocol/certificate-identity.ts';
import type { CertificateAuthority } from '../provisioning/ca/authority.ts';
import { randomSerial } from '../provisioning/ca/fields.ts';
import { EC_P256, ECDSA_SHA256, pemWithNewline, subtle, toPem, x509 } from '../provisioning/ca/x509.ts';
import { enroll } from '../provisioning/enroll/pipeline.ts';
import type { RegistryWriter } from '../provisioning/registry/writer.ts';
import { run } from './run.ts';

export interface Credential {
  deviceId: string;
  certPem: string;
  keyPem: string;
  certFile: string;
  keyFile: string;
  serial: string;
  fingerprint: string;
  spki: string;
  keys: CryptoKeyPair;
}

export async function newKeys(): Promise<CryptoKeyPair> {
  return subtle.generateKey(EC_P256, true, ['sign', 'verify']) as Promise<CryptoKeyPair>;
}

export async function keyPem(keys: CryptoKeyPair): Promise<string> {
  return toPem(await subtle.exportKey('pkcs8', keys.privateKey), 'PRIVATE KEY');
}

export async function csrPem(keys: CryptoKeyPair, cn: string): Promise<string> {
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    name: `CN=${cn}`,
    keys,
    signingAlgorithm: ECDSA_SHA256,
  });
  return csr.toString('pem');
}

async function save(
  dir: string,
  name: string,
  deviceId: string,
  certPem: string,
  keys: CryptoKeyPair,
): Promise<Credential> {
  const cert = new x509.X509Certificate(certPem);
  const certFile = join(dir, `${name}.crt`);
  const keyFile = join(dir, `${name}.key`);
  const kp = await keyPem(keys);
  writeFileSync(certFile, certPem);
  writeFileSync(keyFile, kp, { mode: 0o600 });
  return {
    deviceId,
    certPem,
    keyPem: kp,
    certFile,
    keyFile,
    keys,
    serial: serialHex(cert.serialNumber),
    fingerprint: createHash('sha256').update(new Uint8Array(cert.rawData)).digest('hex'),
    spki: createHash('sha256').update(new Uint8Array(cert.publicKey.rawData)).digest('hex'),
  };
}

/** A device enrolled through the real pipeline (recorded in the registry). */
export async function enrollDevice(
  registry: RegistryWriter,
  ca: CertificateAuthority,
  dir: string,
  opts: {
    id: string;
    type?: string;
    fleet?: string;
    parent?: string;
    keys?: CryptoKeyPair;
    validityMs?: number;
    name?: string;
    exists?: boolean;
  },
): Promise<Credential> {
  if (opts.exists !== true)
    registry.addDevice(
      { id: opts.id, type: opts.type ?? 'sensor', fleet: opts.fleet ?? 'default', parent: opts.parent ?? null },
      'test',
    );
  const keys = opts.keys ?? (await newKeys());
  const result = await enroll(
    { registry, ca, defaultValidityMs: opts.validityMs ?? 86_400_000 },
    { csr: await csrPem(keys, opts.id), auth: { method: 'operator', deviceId: opts.id }, actor: 'test' },
  );
  return save(dir, opts.name ?? opts.id, opts.id, result.certificate + result.chain, keys);
}

export interface ForgeOptions {
  name: string;
  deviceId: string;
  /** Signed by the fleet intermediate (default), another CA's intermediate, or the key itself. */
  issuer?: CertificateAuthority | 'self';
  eku?: string[] | null;
  isCa?: boolean;
  notBefore?: Date;
  notAfter?: Date;
  keys?: CryptoKeyPair;
  /** Record it in the registry as if issued (to test checks other than CERT_UNKNOWN). */
  record?: RegistryWriter;
  /** SAN entries besides the device URI (e.g. `{ type: 'ip', value: '127.0.0.1' }` for a fake server). */
  extraSan?: { type: 'ip' | 'dns'; value: string }[];
}

/** A certificate shaped by the test, not by the CA's policy: the gateway's checks must catch it. */
export async function forgeCert(ca: CertificateAuthority, dir: string, o: ForgeOptions): Promise<Credential> {
  const keys = o.keys ?? (await newKeys());
  const now = Date.now();
  const extensions: x509.Extension[] = [
    new x509.BasicConstraintsExtension(o.isCa === true, undefined, true),
    new x509.KeyUsagesExtension(
      x509.KeyUsageFlags.digitalSignature | (o.isCa === true ? x509.KeyUsageFlags.keyCertSign : 0),
      true,
    ),
    new x509.SubjectAlternativeNameExtension([
      { type: 'url', value: `urn:fleetgate:device:${o.deviceId}` },
      ...(o.extraSan ?? []),
    ]),
    await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
  ];
  if (o.eku !== null) extensions.push(new x509.ExtendedKeyUsageExtension(o.eku ?? [x509.ExtendedKeyUsage.clientAuth]));
  const issuer = o.issuer ?? ca;
  const common = {
    serialNumber: randomSerial(),
    notBefore: o.notBefore ?? new Date(now - 60_000),
    notAfter: o.notAfter ?? new Date(now + 86_400_000),
    signingAlgorithm: ECDSA_SHA256,
    extensions,
  };
  const cert =
    issuer === 'self'
      ? await x509.X509CertificateGenerator.createSelfSigned({ ...common, name: `CN=${o.deviceId}`, keys })
      : await x509.X509CertificateGenerator.create({
          ...common,
          subject: `CN=${o.deviceId}`,
          issuer: issuer.intermediate.subjectName,
          publicKey: keys.publicKey,
          signingKey: issuer.intermediateKey,
          extensions: [...extensions, new x509.AuthorityKeyIdentifierExtension(issuer.intermediateKeyId)],
        });
  const chain = pemWithNewline(cert.toString('pem')) + (issuer === 'self' ? '' : issuer.intermediatePem);
  const cred = await save(dir, o.name, o.deviceId, chain, keys);
  if (o.record !== undefined) {
    o.record.recordCertificate(
      {
        serial: cred.serial,
        deviceId: o.deviceId,
        fingerprint: cred.fingerprint,
        spkiSha256: cred.spki,
        notBefore: cert.notBefore.getTime(),
        notAfter: cert.notAfter.getTime(),
        pem: pemWithNewline(cert.toString('pem')),
        method: 'test-forged',
      },
      'test',
    );
  }
  return cred;
}

// --- keys and CSRs made by openssl, as a factory station would ---

export type KeySpec = 'ec' | 'ec384' | 'rsa2048' | 'rsa1024' | 'ed25519';

const NEWKEY: Record<KeySpec, string[]> = {
  ec: ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256'],
  ec384: ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-384'],
  rsa2048: ['-newkey', 'rsa:2048'],
  rsa1024: ['-newkey', 'rsa:1024'],
  ed25519: ['-newkey', 'ed25519'],
};

/**
 * A key and CSR made by `openssl req`, as a factory station would. `extra` adds arguments
 * (e.g. `-addext basicConstraints=critical,CA:TRUE`).
 */
export async function opensslCsr(
  dir: string,
  name: string,
  key: KeySpec = 'ec',
  extra: string[] = [],
): Promise<{ keyFile: string; csrFile: string; csrPem: string }> {
  const keyFile = join(dir, `${name}.key`);
  const csrFile = join(dir, `${name}.csr`);
  const r = await run('openssl', [
    'req',
    '-new',
    ...NEWKEY[key],
    '-nodes',
    '-keyout',
    keyFile,
    '-subj',
    `/CN=${name}`,
    ...extra,
    '-out',
    csrFile,
  ]);
  if (r.code !== 0) throw new Error(`openssl req failed: ${r.stderr}`);
  return { keyFile, csrFile, csrPem: readFileSync(csrFile, 'utf8') };
}

export async function openssl(args: string[], input?: string | Buffer) {
  return run('openssl', args, input === undefined ? {} : { input });
}

/** The first PEM certificate in a string. */
export function firstCert(pem: string): string {
  const m = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----\n?/.exec(pem);
  if (m === null) throw new Error('no certificate in output');
  return m[0];
}
