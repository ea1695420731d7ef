import { X509Certificate } from 'node:crypto';
import { closeSync, fsyncSync, mkdirSync, openSync, unlinkSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { FleetgateError, toFleetgateError } from './protocol/errors.ts';

/** The oldest Node.js the SDK supports: what `engines` says, and what {@link assertSupportedRuntime} checks. */
export const MIN_NODE = { major: 22, minor: 12 } as const;

/**
 * Why this runtime cannot run the SDK, or undefined when it can: the Node.js version, and the
 * features the SDK relies on (`X509Certificate.validFromDate`, added in Node 22.10). Pure, for tests.
 */
export function runtimeProblem(version: string, x509HasDates: boolean): string | undefined {
  const [major = 0, minor = 0] = version.replace(/^v/, '').split('.').map(Number);
  const oldVersion = major < MIN_NODE.major || (major === MIN_NODE.major && minor < MIN_NODE.minor);
  if (!oldVersion && x509HasDates) return undefined;
  return `Node.js ${version} is not supported: the fleetgate device SDK needs Node.js ${MIN_NODE.major}.${MIN_NODE.minor} or newer${x509HasDates ? '' : ' (X509Certificate.validFromDate is missing)'}`;
}

/** Throws RUNTIME_UNSUPPORTED on a Node.js the SDK does not support — before any network request. */
export function assertSupportedRuntime(): void {
  const problem = runtimeProblem(process.version, 'validFromDate' in X509Certificate.prototype);
  if (problem !== undefined) throw new FleetgateError('RUNTIME_UNSUPPORTED', problem);
}

/**
 * What an enrollment checks before it sends its CSR — so a token is never spent on a device
 * that could not keep or use the certificate: a supported runtime, a root CA it can read, and an
 * identity directory it can write (created if needed, a probe file written, synced and removed).
 */
export function preflightEnrollment(opts: { identityDir: string; ca?: string }): void {
  assertSupportedRuntime();
  if (opts.ca !== undefined) {
    try {
      new X509Certificate(opts.ca);
    } catch (err) {
      throw new FleetgateError('BAD_REQUEST', `the fleet root CA is not a PEM certificate: ${(err as Error).message}`);
    }
  }
  const probe = join(opts.identityDir, `.write-probe-${process.pid}`);
  try {
    mkdirSync(opts.identityDir, { recursive: true, mode: 0o700 });
    const fd = openSync(probe, 'wx', 0o600);
    try {
      writeSync(fd, 'probe');
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    unlinkSync(probe);
  } catch (err) {
    const e = toFleetgateError(err);
    throw e.code === 'INTERNAL'
      ? new FleetgateError('STORAGE_READ_ONLY', `identity directory ${opts.identityDir}: ${(err as Error).message}`)
      : e;
  }
}
