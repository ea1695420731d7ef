import { createPrivateKey, createPublicKey, generateKeyPairSync, sign, X509Certificate } from 'node:crypto';
import {
  closeSync,
  existsSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  renameSync,
  rmSync,
  symlinkSync,
  writeSync,
} from 'node:fs';
import { join } from 'node:path';
import { identityFromCertificate, type PeerIdentity } from './protocol/certificate-identity.ts';
import { oidDer, seq, set, tlv, toPem } from './protocol/der.ts';
import { FleetgateError } from './protocol/errors.ts';

/** The key type a device makes: EC P-256 by default, RSA-2048 for devices that need it. */
export type KeyType = 'ec-p256' | 'rsa-2048';

/** A device's key, certificate chain and trust anchor, as loaded from its identity directory. */
export interface DeviceIdentity {
  /** PKCS#8 PEM. Never leaves the device. */
  keyPem: string;
  /** Leaf certificate PEM. */
  certPem: string;
  /** Issuing CA PEM, sent along with the leaf. */
  chainPem: string;
  /** Root CA PEM: what the device trusts the gateway and provisioning service by. */
  caPem: string;
  /** What the certificate says: device id, serial, fingerprint, validity. */
  info: PeerIdentity;
}

const FILES = { key: 'device.key', cert: 'device.crt', chain: 'chain.crt', ca: 'ca.crt' } as const;

// --- key and CSR ---------------------------------------------------------------------------

/**
 * Makes a new key on the device. Returns its PKCS#8 PEM.
 *
 * @example
 * const keyPem = generateKey('ec-p256');
 */
export function generateKey(type: KeyType = 'ec-p256'): string {
  const pair =
    type === 'rsa-2048'
      ? generateKeyPairSync('rsa', { modulusLength: 2048 })
      : generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return pair.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
}

/**
 * A PKCS#10 CSR for the key (RFC 2986), subject CN = `commonName`: proof that the device holds
 * the key. The CA decides everything else in the certificate.
 *
 * @example
 * const csrPem = createCsr(keyPem, 'sensor-1');
 */
export function createCsr(keyPem: string, commonName: string): string {
  const key = createPrivateKey(keyPem);
  const spki = createPublicKey(key).export({ type: 'spki', format: 'der' });
  const subject = seq(set(seq(oidDer('2.5.4.3'), tlv(0x0c, Buffer.from(commonName, 'utf8')))));
  const info = seq(tlv(0x02, Buffer.from([0])), subject, spki, tlv(0xa0)); // version 0, no attributes
  const algorithm =
    key.asymmetricKeyType === 'ec'
      ? seq(oidDer('1.2.840.10045.4.3.2')) // ecdsa-with-SHA256
      : seq(oidDer('1.2.840.113549.1.1.11'), tlv(0x05)); // sha256WithRSAEncryption, NULL parameters
  const signature = sign('sha256', info, key);
  return toPem(seq(info, algorithm, tlv(0x03, Buffer.from([0]), signature)), 'CERTIFICATE REQUEST');
}

// --- atomic storage ------------------------------------------------------------------------

function writeSynced(file: string, content: string, mode: number): void {
  const fd = openSync(file, 'wx', mode);
  try {
    writeSync(fd, content);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

function fsyncDir(dir: string): void {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/**
 * Stores an identity so a power cut never leaves half of one: the four files go into a new
 * version directory (each fsynced), then the `current` symlink is swapped to it with an
 * atomic rename. The directory holds the old identity or the new one, never a mix. Tools use
 * `DIR/current/device.crt`, `device.key`, `chain.crt`, `ca.crt`.
 *
 * @example
 * saveIdentity('./identity', { keyPem, certPem, chainPem, caPem });
 */
export function saveIdentity(
  dir: string,
  files: { keyPem: string; certPem: string; chainPem: string; caPem: string },
): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const version = `v-${Date.now().toString(36)}-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
  const vdir = join(dir, version);
  mkdirSync(vdir, { mode: 0o700 });
  writeSynced(join(vdir, FILES.key), files.keyPem, 0o600);
  writeSynced(join(vdir, FILES.cert), files.certPem, 0o644);
  writeSynced(join(vdir, FILES.chain), files.chainPem, 0o644);
  writeSynced(join(vdir, FILES.ca), files.caPem, 0o644);
  fsyncDir(vdir);
  const link = join(dir, `.current-${version}`);
  symlinkSync(version, link);
  renameSync(link, join(dir, 'current')); // the commit point
  fsyncDir(dir);
  cleanStale(dir);
}

/** Removes versions no longer current and links a crash left behind. */
function cleanStale(dir: string): void {
  let current: string | undefined;
  try {
    current = readlinkSync(join(dir, 'current'));
  } catch {
    return;
  }
  for (const entry of readdirSync(dir)) {
    if ((entry.startsWith('v-') && entry !== current) || entry.startsWith('.current-'))
      rmSync(join(dir, entry), { recursive: true, force: true });
  }
}

/**
 * Loads the identity in `dir` and checks it is whole: the key matches the certificate.
 *
 * @example
 * const id = loadIdentity('./identity');
 * console.log(id.info.deviceId, new Date(id.info.notAfter));
 */
export function loadIdentity(dir: string): DeviceIdentity {
  const current = join(dir, 'current');
  if (!existsSync(current)) throw new FleetgateError('CERT_REQUIRED', `no identity in ${dir}: enroll first`);
  const read = (f: string) => readFileSync(join(current, f), 'utf8');
  const keyPem = read(FILES.key);
  const certPem = read(FILES.cert);
  const cert = new X509Certificate(certPem);
  if (!cert.checkPrivateKey(createPrivateKey(keyPem)))
    throw new FleetgateError('CERT_INVALID', `${dir}: the key does not match the certificate`);
  return { keyPem, certPem, chainPem: read(FILES.chain), caPem: read(FILES.ca), info: identityFromCertificate(cert) };
}

/** The files of the current identity, for tools (curl, mosquitto_pub). */
export function identityFiles(dir: string): { key: string; cert: string; chain: string; ca: string } {
  const current = join(dir, 'current');
  return {
    key: join(current, FILES.key),
    cert: join(current, FILES.cert),
    chain: join(current, FILES.chain),
    ca: join(current, FILES.ca),
  };
}
