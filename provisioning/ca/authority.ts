import { createPrivateKey, createPublicKey, type KeyObject, randomBytes, X509Certificate } from 'node:crypto';
import { rmSync } from 'node:fs';
import { isIP } from 'node:net';
import { join } from 'node:path';
import type { DataPaths } from '../../config/paths.ts';
import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import { existsSync, readText, writeNewFile } from '../../runtime/files.ts';
import { randomSerial, validityFrom } from './fields.ts';
import { EC_P256, ECDSA_SHA256, pemWithNewline, subtle, toPem, x509 } from './x509.ts';

export interface CaInitOptions {
  /** Extra names for the gateway's server certificate, besides localhost, 127.0.0.1 and ::1. */
  hostnames: readonly string[];
  rootValidityMs: number;
  intermediateValidityMs: number;
  serverValidityMs: number;
}

/** The issuing CA, loaded and ready to sign. */
export interface CertificateAuthority {
  root: x509.X509Certificate;
  intermediate: x509.X509Certificate;
  /** WebCrypto key of the issuing intermediate (pkijs, @peculiar). */
  intermediateKey: CryptoKey;
  /** The same key as a Node KeyObject (synchronous `crypto.sign`). */
  intermediateKeyObject: KeyObject;
  /** Hex SubjectKeyIdentifier of the intermediate: the AKI of everything it signs. */
  intermediateKeyId: string;
  rootPem: string;
  intermediatePem: string;
  /** Intermediate then root: what a device needs to validate a leaf. */
  chainPem: string;
}

const KEY_MODE = 0o600;
const CERT_MODE = 0o644;

export async function newKeyPair(): Promise<CryptoKeyPair> {
  return subtle.generateKey(EC_P256, true, ['sign', 'verify']) as Promise<CryptoKeyPair>;
}

export async function exportKeyPem(key: CryptoKey): Promise<string> {
  return toPem(await subtle.exportKey('pkcs8', key), 'PRIVATE KEY');
}

async function importKeyPem(pem: string): Promise<CryptoKey> {
  const der = createPrivateKey(pem).export({ format: 'der', type: 'pkcs8' });
  return subtle.importKey('pkcs8', der, EC_P256, false, ['sign']);
}

function skiOf(cert: x509.X509Certificate): string {
  const ext = cert.getExtension(x509.SubjectKeyIdentifierExtension);
  if (ext === null)
    throw new FleetgateError('CA_INVALID', `CA certificate ${cert.subject} has no subject key identifier`);
  return ext.keyId;
}

/** Both halves present, or neither; one alone means someone removed a file: refuse to guess. */
function pairState(certFile: string, keyFile: string): 'present' | 'absent' {
  const cert = existsSync(certFile);
  const key = existsSync(keyFile);
  if (cert && key) return 'present';
  if (!cert && !key) return 'absent';
  throw new FleetgateError(
    'CA_INVALID',
    `${cert ? certFile : keyFile} exists without ${cert ? keyFile : certFile}; restore it or move both away`,
  );
}

/** The root key where `init` left it (or where round 1 kept it); undefined when it is offline. */
export function rootKeyOnDisk(paths: DataPaths): string | undefined {
  return [paths.rootKey, paths.legacyRootKey].find((f) => existsSync(f));
}

/**
 * `fleetgate init`: creates what is missing (root, issuing intermediate, gateway server
 * certificate) and never overwrites anything. Returns the names of what it created.
 *
 * The root key goes to `offline/root-ca.key`, which no service reads: the services run with the
 * issuing key only, and the operator moves the root key off the machine. With the root key
 * offline, a missing intermediate is made by `fleetgate ca reissue-intermediate --root-key FILE`.
 */
export async function initCa(paths: DataPaths, options: CaInitOptions): Promise<string[]> {
  const created: string[] = [];
  const tag = randomBytes(4).toString('hex');
  let rootKey: CryptoKey | undefined;
  if (!existsSync(paths.rootCert)) {
    const stray = rootKeyOnDisk(paths);
    if (stray !== undefined)
      throw new FleetgateError(
        'CA_INVALID',
        `${stray} exists without ${paths.rootCert}; restore it or move the key away`,
      );
    if (existsSync(paths.intermediateCert))
      throw new FleetgateError('CA_INVALID', `${paths.intermediateCert} exists but the root CA is missing`);
    rootKey = await createRoot(paths, options, tag);
    created.push('root CA');
  }
  if (pairState(paths.intermediateCert, paths.intermediateKey) === 'absent') {
    const keyFile = rootKeyOnDisk(paths);
    if (keyFile === undefined && rootKey === undefined) {
      throw new FleetgateError(
        'CA_INVALID',
        `no issuing CA in ${paths.dataDir} and the root key is offline: run \`fleetgate ca reissue-intermediate --root-key FILE --data ${paths.dataDir}\``,
      );
    }
    rootKey ??= await importKeyPem(readText(keyFile!));
    await createIntermediate(paths, options, rootKey, tag);
    created.push('issuing CA');
  }
  if (pairState(paths.serverCert, paths.serverKey) === 'absent') {
    await createServerCert(paths, options, await loadCa(paths));
    created.push('gateway server certificate');
  }
  return created;
}

async function createRoot(paths: DataPaths, options: CaInitOptions, tag: string): Promise<CryptoKey> {
  const keys = await newKeyPair();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerial(),
    name: `CN=fleetgate Root CA ${tag}, O=fleetgate`,
    ...validityFrom(Date.now(), options.rootValidityMs),
    signingAlgorithm: ECDSA_SHA256,
    keys,
    extensions: [
      new x509.BasicConstraintsExtension(true, 1, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  // Key first: a root certificate is taken as "root exists" by the next init.
  writeNewFile(paths.rootKey, await exportKeyPem(keys.privateKey), KEY_MODE);
  writeNewFile(paths.rootCert, pemWithNewline(cert.toString('pem')), CERT_MODE);
  return keys.privateKey;
}

/**
 * `fleetgate ca reissue-intermediate`: a new issuing CA (new key) signed with the root key from
 * `rootKeyPem` (brought back from offline for this). The replaced intermediate's certificate is
 * kept in `ca/retired/` and its key deleted; certificates it issued stay valid (they chain to the
 * same root, and devices present their own chain). Services pick the new one up on restart.
 */
export async function reissueIntermediate(
  paths: DataPaths,
  options: CaInitOptions,
  rootKeyPem: string,
): Promise<{ retired: string | undefined; subject: string }> {
  let rootKey: CryptoKey;
  let matches: boolean;
  try {
    rootKey = await importKeyPem(rootKeyPem);
    const spki = (k: KeyObject) => k.export({ type: 'spki', format: 'der' });
    matches = spki(createPublicKey(createPrivateKey(rootKeyPem))).equals(
      spki(new X509Certificate(readText(paths.rootCert)).publicKey),
    );
  } catch (err) {
    throw new FleetgateError('CA_INVALID', 'the root key cannot be read (PEM, PKCS#8, EC P-256 expected)', {
      cause: err,
    });
  }
  if (!matches) throw new FleetgateError('CA_INVALID', `that key is not the key of ${paths.rootCert}`);
  let retired: string | undefined;
  if (existsSync(paths.intermediateCert)) {
    const old = new x509.X509Certificate(readText(paths.intermediateCert));
    retired = join(paths.retiredDir, `intermediate-${old.serialNumber}.crt`);
    writeNewFile(retired, readText(paths.intermediateCert), CERT_MODE);
    rmSync(paths.intermediateCert, { force: true });
    rmSync(paths.intermediateKey, { force: true });
  }
  await createIntermediate(paths, options, rootKey, randomBytes(4).toString('hex'));
  return { retired, subject: new x509.X509Certificate(readText(paths.intermediateCert)).subject };
}

async function createIntermediate(
  paths: DataPaths,
  options: CaInitOptions,
  rootKey: CryptoKey,
  tag: string,
): Promise<void> {
  const root = new x509.X509Certificate(readText(paths.rootCert));
  const keys = await newKeyPair();
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: randomSerial(),
    subject: `CN=fleetgate Issuing CA ${tag}, O=fleetgate`,
    issuer: root.subjectName,
    ...validityFrom(Date.now(), options.intermediateValidityMs, root.notAfter),
    signingAlgorithm: ECDSA_SHA256,
    publicKey: keys.publicKey,
    signingKey: rootKey,
    extensions: [
      // pathLen 0: the issuing CA signs leaves only.
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      new x509.AuthorityKeyIdentifierExtension(skiOf(root)),
    ],
  });
  writeNewFile(paths.intermediateKey, await exportKeyPem(keys.privateKey), KEY_MODE);
  writeNewFile(paths.intermediateCert, pemWithNewline(cert.toString('pem')), CERT_MODE);
}

/** What {@link issueWithNewKey} puts in an end-entity certificate besides the fixed CA:false profile. */
export interface EndEntityProfile {
  subject: string | x509.JsonName;
  validityMs: number;
  eku: string[];
  san: x509.JsonGeneralNames;
}

/**
 * An end-entity certificate for a key made here (the gateway's server certificate, a claim
 * certificate), signed by the issuing CA: CA:false, digitalSignature, the given EKU and SAN,
 * SKI/AKI. Device certificates are not made here: their keys never leave the device (leaf.ts).
 */
export async function issueWithNewKey(
  ca: CertificateAuthority,
  profile: EndEntityProfile,
): Promise<{ cert: x509.X509Certificate; keys: CryptoKeyPair; serial: string }> {
  const keys = await newKeyPair();
  return { keys, ...(await issueForKey(ca, profile, keys.publicKey)) };
}

/** The same profile for a public key made elsewhere (a node's, from its CSR: the key never travels). */
export async function issueForKey(
  ca: CertificateAuthority,
  profile: EndEntityProfile,
  publicKey: CryptoKey,
): Promise<{ cert: x509.X509Certificate; serial: string }> {
  const serial = randomSerial();
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serial,
    subject: profile.subject,
    issuer: ca.intermediate.subjectName,
    ...validityFrom(Date.now(), profile.validityMs, ca.intermediate.notAfter),
    signingAlgorithm: ECDSA_SHA256,
    publicKey,
    signingKey: ca.intermediateKey,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension(profile.eku, false),
      new x509.SubjectAlternativeNameExtension(profile.san),
      await x509.SubjectKeyIdentifierExtension.create(publicKey),
      new x509.AuthorityKeyIdentifierExtension(ca.intermediateKeyId),
    ],
  });
  return { cert, serial };
}

async function createServerCert(paths: DataPaths, options: CaInitOptions, ca: CertificateAuthority): Promise<void> {
  const names = [...new Set(['localhost', '127.0.0.1', '::1', ...options.hostnames])];
  const { cert, keys } = await issueWithNewKey(ca, {
    subject: 'CN=fleetgate gateway, O=fleetgate',
    validityMs: options.serverValidityMs,
    eku: [x509.ExtendedKeyUsage.serverAuth],
    san: names.map((n) => (isIP(n) ? { type: 'ip' as const, value: n } : { type: 'dns' as const, value: n })),
  });
  writeNewFile(paths.serverKey, await exportKeyPem(keys.privateKey), KEY_MODE);
  // The server presents its chain: leaf, then the issuing CA (devices trust the root).
  writeNewFile(paths.serverCert, pemWithNewline(cert.toString('pem')) + ca.intermediatePem, CERT_MODE);
}

/** Loads the issuing CA; CA_NOT_INITIALIZED when `fleetgate init` has not run. */
export async function loadCa(paths: DataPaths): Promise<CertificateAuthority> {
  if (pairState(paths.intermediateCert, paths.intermediateKey) === 'absent' || !existsSync(paths.rootCert)) {
    throw new FleetgateError(
      'CA_NOT_INITIALIZED',
      `no CA in ${paths.dataDir}: run \`fleetgate init --data ${paths.dataDir}\``,
    );
  }
  const rootPem = readText(paths.rootCert);
  const intermediatePem = readText(paths.intermediateCert);
  const keyPem = readText(paths.intermediateKey);
  const root = new x509.X509Certificate(rootPem);
  const intermediate = new x509.X509Certificate(intermediatePem);
  const intermediateKeyObject = createPrivateKey(keyPem);
  if (!(await intermediate.verify({ publicKey: root.publicKey, signatureOnly: true }))) {
    throw new FleetgateError('CA_INVALID', `${paths.intermediateCert} is not signed by ${paths.rootCert}`);
  }
  return {
    root,
    intermediate,
    intermediateKeyObject,
    rootPem,
    intermediatePem,
    intermediateKey: await importKeyPem(keyPem),
    intermediateKeyId: skiOf(intermediate),
    chainPem: intermediatePem + rootPem,
  };
}
