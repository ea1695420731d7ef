import type { Logger } from 'pino';
import type { FleetgateConfig } from '../../config/config.ts';
import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import type { CertificateAuthority } from '../ca/authority.ts';
import { buildCrl } from '../ca/crl.ts';
import { enroll, type EnrollmentAuth, type EnrollmentResult } from '../enroll/pipeline.ts';
import type { RegistryWriter } from '../registry/writer.ts';
import { httpError } from './errors.ts';

/** What the provisioning routes share: the registry writer, the CA, and one way to enroll. */
export class ProvisioningService {
  readonly registry: RegistryWriter;
  readonly ca: CertificateAuthority;
  readonly config: FleetgateConfig;
  readonly log: Logger;
  #crl: { der: Buffer; revocations: number; builtAt: number } | undefined;

  constructor(deps: { registry: RegistryWriter; ca: CertificateAuthority; config: FleetgateConfig; log: Logger }) {
    this.registry = deps.registry;
    this.ca = deps.ca;
    this.config = deps.config;
    this.log = deps.log;
  }

  /**
   * Runs the enrollment pipeline for a remote requester. Every outcome is logged (one line,
   * with the code) and audited; the token never appears in either.
   */
  async enroll(
    method: EnrollmentAuth['method'], resolveAuth: () => EnrollmentAuth, csr: string | Uint8Array, meta: { surface: string; remoteAddress: string },
  ): Promise<EnrollmentResult> {
    const actor = `${meta.surface}:${meta.remoteAddress}`;
    let auth: EnrollmentAuth | undefined;
    try {
      auth = resolveAuth(); // the requester's credentials: certificate, claim, token
      const result = await enroll({ registry: this.registry, ca: this.ca, defaultValidityMs: this.config.ca.leafValidityMs }, { csr, auth, actor });
      this.log.info({ decision: 'issued', method: result.method, surface: meta.surface, deviceId: result.deviceId, serial: result.serial, remoteAddress: meta.remoteAddress }, 'certificate issued');
      return result;
    } catch (err) {
      const e = httpError(err);
      const subject = (e.detail.deviceId as string | undefined) ?? (auth?.method === 'renew' ? auth.current.deviceId : null);
      this.log.warn({ decision: 'refused', code: e.code, method, surface: meta.surface, deviceId: subject, remoteAddress: meta.remoteAddress, reason: e.message }, 'enrollment refused');
      try {
        this.registry.appendAudit(actor, 'enroll.refused', subject, { code: e.code, method, surface: meta.surface });
      } catch (auditErr) {
        this.log.error({ err: auditErr }, 'audit append failed');
      }
      throw e;
    }
  }

  /** The current CRL (DER), rebuilt when a revocation was added or half its validity has passed. */
  async crl(): Promise<Buffer> {
    const revocations = this.registry.listRevocations();
    const stale = this.#crl === undefined || this.#crl.revocations !== revocations.length
      || Date.now() - this.#crl.builtAt > this.config.ca.crlValidityMs / 2;
    if (stale) {
      const number = this.registry.nextCrlNumber('provisioning');
      const der = await buildCrl(this.ca, { number, entries: revocations, validityMs: this.config.ca.crlValidityMs });
      this.#crl = { der, revocations: revocations.length, builtAt: Date.now() };
    }
    return (this.#crl as { der: Buffer }).der;
  }
}

export function requireString(value: unknown, field: string): string {
  if (typeof value !== 'string') throw new FleetgateError('BAD_REQUEST', `${field} must be a string`);
  return value;
}
