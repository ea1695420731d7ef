import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import type { StatusEvent } from '../../provisioning/registry/records.ts';
import type { Session, SessionTable } from '../sessions.ts';
import type { RegistryLink } from './registry-link.ts';

export interface WatchDeps {
  registry: RegistryLink;
  sessions: SessionTable;
  /** Cut one session whose status check now fails. */
  cut(session: Session, error: FleetgateError, event: StatusEvent): void;
  /** A session's certificate expired while connected. */
  expired(session: Session): void;
  /** A gateway device's children changed: recompute its topic scope. */
  refresh(session: Session): void;
  /** The registry could not answer while an event was applied (the session is kept; new connections are refused). */
  unavailable(error: FleetgateError): void;
  /** Every event, after the live sessions it touches were handed over for re-checking (the MQTT core purges what a revoked device left). */
  event?(event: StatusEvent): void;
}

/**
 * Live revocation: the registry thread tails the status-event feed (written in the same
 * transaction as every revoke, suspend and denylist change, by any process) every
 * `gateway.statusPoll` and hands new events here; each live session an event touches is
 * re-checked against the registry and cut if it no longer passes. The cut is bounded by the
 * poll interval plus one status check on the registry thread.
 */
export class StatusWatcher {
  readonly #deps: WatchDeps;
  readonly #sweep: NodeJS.Timeout;

  constructor(deps: WatchDeps) {
    this.#deps = deps;
    // No session outlives its certificate: a device must reconnect with a current one.
    this.#sweep = setInterval(() => this.sweepExpired(), 1_000);
    this.#sweep.unref();
  }

  sweepExpired(now = Date.now()): void {
    for (const session of this.#deps.sessions.all()) {
      if (session.cut === undefined && session.identity.notAfter <= now) this.#deps.expired(session);
    }
  }

  /** New feed events, in order. */
  apply(events: StatusEvent[]): void {
    for (const event of events) {
      for (const session of this.#affected(event)) this.#recheck(session, event);
      this.#deps.event?.(event);
    }
  }

  #affected(event: StatusEvent): Session[] {
    if (event.deviceId !== null) return this.#deps.sessions.ofDevice(event.deviceId);
    // A fingerprint or key denylisted: any device's session may hold it.
    const [kind, value] = (event.value ?? '').split(':');
    return this.#deps.sessions.all().filter((s) =>
      (kind === 'fingerprint' && s.identity.fingerprint === value) || (kind === 'spki' && s.identity.spkiSha256 === value));
  }

  #recheck(session: Session, event: StatusEvent): void {
    if (session.cut !== undefined) return;
    if (event.kind === 'device.children') {
      this.#deps.refresh(session);
      return;
    }
    this.#deps.registry.check(session.identity).then((device) => {
      session.device = device;
    }, (err: unknown) => {
      if (session.cut !== undefined) return;
      const e = err instanceof FleetgateError ? err : new FleetgateError('INTERNAL', String(err));
      // Existing sessions are not cut because the registry hiccuped; new ones are refused.
      if (e.code === 'REGISTRY_UNAVAILABLE') this.#deps.unavailable(e);
      else this.#deps.cut(session, e, event);
    });
  }

  close(): void {
    clearInterval(this.#sweep);
  }
}
