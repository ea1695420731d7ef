import { createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject, randomBytes } from 'node:crypto';
import { existsSync, readFileSync, renameSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { DataPaths } from '../../config/paths.ts';
import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import { ensureDir, writeNewFile } from '../../runtime/files.ts';

/**
 * The assertion signing keys (ES256). `data/jwt/keyring.json` lists them; each private key is
 * its own 0600 PEM file. The newest is active; a rotated-out key stays in the JWKS until its
 * `retireAt`, so an origin never meets an unknown `kid` while assertions it signed can live.
 */
export interface KeyringEntry {
  kid: string;
  createdAt: number;
  /** After this the key leaves the JWKS (unset for the active key). */
  retireAt: number | null;
}

interface KeyringFile {
  active: string;
  keys: KeyringEntry[];
}

export interface SigningKey {
  kid: string;
  privateKey: KeyObject;
}

const dirOf = (paths: DataPaths) => join(paths.dataDir, 'jwt');
const fileOf = (paths: DataPaths) => join(dirOf(paths), 'keyring.json');
const keyFile = (paths: DataPaths, kid: string) => join(dirOf(paths), `${kid}.key`);

function read(paths: DataPaths): KeyringFile {
  try {
    return JSON.parse(readFileSync(fileOf(paths), 'utf8')) as KeyringFile;
  } catch (err) {
    throw new FleetgateError('CA_INVALID', `cannot read ${fileOf(paths)}: ${(err as Error).message}`, { cause: err });
  }
}

function write(paths: DataPaths, ring: KeyringFile): void {
  const tmp = `${fileOf(paths)}.${process.pid}.new`;
  writeNewFile(tmp, `${JSON.stringify(ring, null, 2)}\n`, 0o644);
  renameSync(tmp, fileOf(paths));
}

function newKey(paths: DataPaths): KeyringEntry {
  const kid = randomBytes(8).toString('hex');
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  writeNewFile(keyFile(paths, kid), privateKey.export({ type: 'pkcs8', format: 'pem' }) as string, 0o600);
  return { kid, createdAt: Date.now(), retireAt: null };
}

/** Creates the keyring with one key if there is none. */
export function ensureKeyring(paths: DataPaths): void {
  if (existsSync(fileOf(paths))) return;
  ensureDir(dirOf(paths));
  const first = newKey(paths);
  write(paths, { active: first.kid, keys: [first] });
}

/** `fleetgate jwt rotate`: a new active key; the previous one stays published for `overlapMs`. */
export function rotateKeyring(
  paths: DataPaths,
  overlapMs: number,
): { active: string; retired: string; retireAt: number } {
  ensureKeyring(paths);
  const ring = read(paths);
  const now = Date.now();
  const next = newKey(paths);
  const keys = ring.keys
    .filter((k) => k.retireAt === null || k.retireAt > now)
    .map((k) => (k.kid === ring.active ? { ...k, retireAt: now + overlapMs } : k));
  write(paths, { active: next.kid, keys: [...keys, next] });
  deleteRetiredKeys(paths, now);
  return { active: next.kid, retired: ring.active, retireAt: now + overlapMs };
}

/**
 * Deletes the private key file of every key past its overlap: once a key has left the JWKS no
 * origin accepts what it signs, so keeping it would only keep something worth stealing. Only
 * files are removed (the keyring's entry is dropped at the next rotation), so a running gateway
 * and `fleetgate jwt rotate` never race on keyring.json. Returns the kids deleted.
 */
export function deleteRetiredKeys(paths: DataPaths, now = Date.now()): string[] {
  const ring = read(paths);
  const gone: string[] = [];
  for (const k of ring.keys) {
    if (k.kid === ring.active || k.retireAt === null || k.retireAt > now) continue;
    if (!existsSync(keyFile(paths, k.kid))) continue;
    rmSync(keyFile(paths, k.kid), { force: true });
    gone.push(k.kid);
  }
  return gone;
}

/** The active signing key, and a JWKS of every key still published. */
export function loadKeyring(
  paths: DataPaths,
  now = Date.now(),
): { active: SigningKey; jwks: { keys: Record<string, unknown>[] }; mtimeMs: number; nextRetireAt: number | null } {
  const mtimeMs = statSync(fileOf(paths)).mtimeMs;
  const ring = read(paths);
  const published = ring.keys.filter((k) => k.kid === ring.active || k.retireAt === null || k.retireAt > now);
  const jwks = {
    keys: published.map((k) => ({
      ...createPublicKey(createPrivateKey(readFileSync(keyFile(paths, k.kid)))).export({ format: 'jwk' }),
      kid: k.kid,
      alg: 'ES256',
      use: 'sig',
    })),
  };
  const pending = ring.keys
    .filter((k) => k.kid !== ring.active && k.retireAt !== null && existsSync(keyFile(paths, k.kid)))
    .map((k) => k.retireAt as number);
  return {
    active: { kid: ring.active, privateKey: createPrivateKey(readFileSync(keyFile(paths, ring.active))) },
    jwks,
    mtimeMs,
    nextRetireAt: pending.length === 0 ? null : Math.min(...pending),
  };
}

export function keyringFile(paths: DataPaths): string {
  return fileOf(paths);
}
