import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import type { StatusEvent } from '../../provisioning/registry/records.ts';
import type { Session, SessionTable } from '../sessions.ts';
import type { StatusChecker } from './check.ts';

export interface WatchDeps {
  checker: StatusChecker;
  sessions: SessionTable;
  /** Cut one session whose status check now fails. */
  cut(session: Session, error: FleetgateError, event: StatusEvent): void;
  /** A session's certificate expired while connected. */
  expired(session: Session): void;
  /** A gateway device's children changed: recompute its topic scope. */
  refresh(session: Session): void;
  /** The feed could not be read (the registry is unavailable); called once per outage. */
  unavailable(error: FleetgateError): void;
  /** Every event, after the live sessions it touches were handled (the MQTT core purges what a revoked device left). */
  event?(event: StatusEvent): void;
}

/**
 * Live revocation: tails the registry's status-event feed (written in the same transaction as
 * every revoke, suspend and denylist change, by any process) every `pollMs`, re-checks the
 * live sessions each event touches and cuts those that no longer pass. The cut is bounded
 * by `pollMs` plus one status check.
 */
export class StatusWatcher {
  readonly #deps: WatchDeps;
  readonly #timer: NodeJS.Timeout;
  readonly #sweep: NodeJS.Timeout;
  #last = 0;
  #down = false;
  #retryAt = 0;

  constructor(deps: WatchDeps, pollMs: number) {
    this.#deps = deps;
    try {
      this.#last = deps.checker.reader().lastStatusSeq();
    } catch (err) {
      this.#outage(err);
    }
    this.#timer = setInterval(() => this.poll(), pollMs);
    this.#timer.unref();
    // No session outlives its certificate: a device must reconnect with a current one.
    this.#sweep = setInterval(() => this.sweepExpired(), 1_000);
    this.#sweep.unref();
  }

  sweepExpired(now = Date.now()): void {
    for (const session of this.#deps.sessions.all()) {
      if (session.cut === undefined && session.identity.notAfter <= now) this.#deps.expired(session);
    }
  }

  poll(): void {
    // While the registry fails (locked, gone), ask it again once a second, not every poll: each
    // attempt may wait out SQLite's busy timeout, and live sessions must keep being served.
    if (this.#down && Date.now() < this.#retryAt) return;
    let events: StatusEvent[];
    try {
      events = this.#deps.checker.reader().listStatusEvents(this.#last);
      this.#down = false;
    } catch (err) {
      this.#retryAt = Date.now() + 1_000;
      this.#outage(err);
      return;
    }
    for (const event of events) {
      this.#last = event.seq;
      this.#apply(event);
      this.#deps.event?.(event);
    }
  }

  #outage(err: unknown): void {
    if (this.#down) return;
    this.#down = true;
    this.#deps.unavailable(err instanceof FleetgateError ? err : new FleetgateError('REGISTRY_UNAVAILABLE', String(err)));
  }

  #affected(event: StatusEvent): Session[] {
    if (event.deviceId !== null) return this.#deps.sessions.ofDevice(event.deviceId);
    // A fingerprint or key denylisted: any device's session may hold it.
    const [kind, value] = (event.value ?? '').split(':');
    return this.#deps.sessions.all().filter((s) =>
      (kind === 'fingerprint' && s.identity.fingerprint === value) || (kind === 'spki' && s.identity.spkiSha256 === value));
  }

  #apply(event: StatusEvent): void {
    for (const session of this.#affected(event)) {
      if (session.cut !== undefined) continue;
      if (event.kind === 'device.children') {
        this.#deps.refresh(session);
        continue;
      }
      try {
        session.device = this.#deps.checker.status(session.identity);
      } catch (err) {
        const e = err instanceof FleetgateError ? err : new FleetgateError('INTERNAL', String(err));
        // Existing sessions are not cut because the registry hiccuped; new ones are refused.
        if (e.code === 'REGISTRY_UNAVAILABLE') this.#outage(e);
        else this.#deps.cut(session, e, event);
      }
    }
  }

  close(): void {
    clearInterval(this.#timer);
    clearInterval(this.#sweep);
  }
}
