import type { Logger } from 'pino';
import { Counter, Registry } from 'prom-client';
import type { FleetgateConfig } from '../../config/config.ts';
import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import { httpError, logFields } from '../../listeners/http-errors.ts';
import type { ThrottledLog } from '../../listeners/throttled-log.ts';
import type { CertificateAuthority } from '../ca/authority.ts';
import { buildCrl } from '../ca/crl.ts';
import { GroupCommit } from '../enroll/group-commit.ts';
import { type EnrollmentAuth, type EnrollmentResult, enroll } from '../enroll/pipeline.ts';
import type { RegistryWriter } from '../registry/writer.ts';

/** Provisioning's Prometheus metrics (served at /metrics to operator certificates). */
function createMetrics(commits: () => { commits: number; changes: number }) {
  const registry = new Registry();
  /** A counter that follows a plain number kept elsewhere, read in when scraped. */
  const following = (name: string, help: string, read: () => number) => {
    let reported = 0;
    return new Counter({
      name,
      help,
      registers: [registry],
      collect() {
        const now = read();
        if (now > reported) this.inc(now - reported);
        reported = now;
      },
    });
  };
  return {
    registry,
    groupCommits: following(
      'fleetgate_enroll_commits_total',
      'Enrollment group commits (one transaction, one fsync each)',
      () => commits().commits,
    ),
    groupCommitted: following(
      'fleetgate_enroll_committed_total',
      'Enrollments recorded by those commits (this / commits = enrollments per fsync)',
      () => commits().changes,
    ),
    enrollments: new Counter({
      name: 'fleetgate_enrollments_total',
      help: 'Enrollment requests by method and outcome code (OK: issued)',
      labelNames: ['method', 'code'] as const,
      registers: [registry],
    }),
    anonymousRefusals: new Counter({
      name: 'fleetgate_enroll_anonymous_refusals_total',
      help: 'Refused enrollments whose requester was never identified (not audited), by code',
      labelNames: ['code'] as const,
      registers: [registry],
    }),
    tlsFailed: new Counter({
      name: 'fleetgate_provisioning_tls_failed_total',
      help: 'Failed TLS handshakes on the provisioning listener, by code',
      labelNames: ['code'] as const,
      registers: [registry],
    }),
  };
}

/** What the provisioning routes share: the registry writer, the CA, and one way to enroll. */
export class ProvisioningService {
  readonly registry: RegistryWriter;
  readonly ca: CertificateAuthority;
  readonly config: FleetgateConfig;
  readonly log: Logger;
  readonly metrics = createMetrics(() => this.commits.stats);
  readonly #refusals: ThrottledLog | undefined;
  #crl: { der: Buffer; lastRevocation: number; builtAt: number } | undefined;
  /** Enrollments recorded together, one commit per event-loop turn. */
  readonly commits: GroupCommit;

  constructor(deps: {
    registry: RegistryWriter;
    ca: CertificateAuthority;
    config: FleetgateConfig;
    log: Logger;
    refusals?: ThrottledLog;
  }) {
    this.#refusals = deps.refusals;
    this.registry = deps.registry;
    this.ca = deps.ca;
    this.config = deps.config;
    this.log = deps.log;
    this.commits = new GroupCommit(deps.registry);
  }

  /**
   * Runs the enrollment pipeline for a remote requester. Every outcome is counted and logged
   * (one line, with the code); the token never appears. What an *identified* party did (a known
   * token's holder, a claim certificate, a device certificate) is audited; refusals of parties
   * never identified (unknown token, no or foreign certificate) are not — anyone could write
   * those rows without bound — they are counted in metrics and logged, throttled.
   */
  async enroll(
    method: EnrollmentAuth['method'],
    resolveAuth: () => EnrollmentAuth,
    csr: string | Uint8Array,
    meta: { surface: string; remoteAddress: string },
  ): Promise<EnrollmentResult> {
    const actor = `${meta.surface}:${meta.remoteAddress}`;
    let auth: EnrollmentAuth | undefined;
    try {
      auth = resolveAuth(); // the requester's credentials: certificate, claim, token
      const result = await enroll(
        {
          registry: this.registry,
          ca: this.ca,
          defaultValidityMs: this.config.ca.leafValidityMs,
          commit: (change) => this.commits.run(change),
        },
        { csr, auth, actor },
      );
      this.metrics.enrollments.inc({ method, code: 'OK' });
      this.log.info(
        {
          decision: 'issued',
          method: result.method,
          surface: meta.surface,
          deviceId: result.deviceId,
          serial: result.serial,
          remoteAddress: meta.remoteAddress,
        },
        'certificate issued',
      );
      return result;
    } catch (err) {
      const e = httpError(err);
      this.metrics.enrollments.inc({ method, code: e.code });
      const claim = (e.detail.claim as string | undefined) ?? (auth?.method === 'claim' ? auth.claimName : undefined);
      const subject =
        (e.detail.deviceId as string | undefined) ??
        (auth?.method === 'renew' ? auth.current.deviceId : claim === undefined ? undefined : `claim:${claim}`);
      const line = {
        decision: 'refused',
        method,
        surface: meta.surface,
        deviceId: subject,
        remoteAddress: meta.remoteAddress,
        ...logFields(e),
      };
      if (subject === undefined) {
        this.metrics.anonymousRefusals.inc({ code: e.code });
        if (this.#refusals !== undefined) this.#refusals.warn(`enroll:${e.code}`, line, 'enrollment refused');
        else this.log.warn(line, 'enrollment refused');
        throw e;
      }
      this.log.warn(line, 'enrollment refused');
      try {
        this.registry.appendAudit(
          actor,
          e.code === 'CERT_SUPERSEDED' ? 'renew.superseded' : 'enroll.refused',
          subject,
          { code: e.code, method, surface: meta.surface },
        );
      } catch (auditErr) {
        this.log.error({ err: auditErr }, 'audit append failed');
      }
      throw e;
    }
  }

  /**
   * The current CRL (DER), rebuilt when a revocation was added or half its validity has passed.
   * Whether one was added is one index look-up (revocations are never deleted, so their newest
   * rowid only grows), not a read of every revocation per request.
   */
  async crl(): Promise<Buffer> {
    const lastRevocation = this.registry.lastRevocationRowid();
    const stale =
      this.#crl === undefined ||
      this.#crl.lastRevocation !== lastRevocation ||
      Date.now() - this.#crl.builtAt > this.config.ca.crlValidityMs / 2;
    if (stale) {
      const number = this.registry.nextCrlNumber('provisioning');
      const der = await buildCrl(this.ca, {
        number,
        entries: this.registry.listRevocations(),
        validityMs: this.config.ca.crlValidityMs,
      });
      this.#crl = { der, lastRevocation, builtAt: Date.now() };
    }
    return (this.#crl as { der: Buffer }).der;
  }
}

export function requireString(value: unknown, field: string): string {
  if (typeof value !== 'string') throw new FleetgateError('BAD_REQUEST', `${field} must be a string`);
  return value;
}
