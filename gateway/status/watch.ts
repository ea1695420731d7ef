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
  /**
   * Sessions an event touched whose re-check the registry could not answer (it was down or
   * locked): asked again every second and when the feed comes back, until answered. The event was
   * read from the feed and will not come again — forgetting the session here would miss the
   * revocation for as long as the device stays connected.
   */
  readonly #unanswered = new Map<Session, StatusEvent>();

  constructor(deps: WatchDeps) {
    this.#deps = deps;
    // No session outlives its certificate: a device must reconnect with a current one.
    this.#sweep = setInterval(() => {
      this.sweepExpired();
      this.recheckUnanswered();
    }, 1_000);
    this.#sweep.unref();
  }

  /** Asks again about the sessions whose re-check went unanswered (the feed is back, or a second passed). */
  recheckUnanswered(): void {
    for (const [session, event] of this.#unanswered) {
      this.#unanswered.delete(session);
      if (this.#deps.sessions.ofDevice(session.identity.deviceId).includes(session)) this.#recheck(session, event);
    }
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
    return this.#deps.sessions
      .all()
      .filter(
        (s) =>
          (kind === 'fingerprint' && s.identity.fingerprint === value) ||
          (kind === 'spki' && s.identity.spkiSha256 === value),
      );
  }

  #recheck(session: Session, event: StatusEvent): void {
    if (session.cut !== undefined) return;
    if (event.kind === 'device.children') {
      this.#deps.refresh(session);
      return;
    }
    this.#deps.registry.check(session.identity).then(
      (device) => {
        session.device = device;
      },
      (err: unknown) => {
        if (session.cut !== undefined) return;
        const e = err instanceof FleetgateError ? err : new FleetgateError('INTERNAL', String(err));
        // Existing sessions are not cut because the registry hiccuped (new ones are refused); the
        // question is asked again until the registry answers it.
        if (e.code === 'REGISTRY_UNAVAILABLE') {
          if (!this.#unanswered.has(session)) this.#deps.unavailable(e);
          this.#unanswered.set(session, event);
        } else this.#deps.cut(session, e, event);
      },
    );
  }

  close(): void {
    clearInterval(this.#sweep);
  }
}
