import type { Logger } from 'pino';
import type { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import type { StatusEvent } from '../../provisioning/registry/records.ts';
import type { Metrics } from '../metrics.ts';
import type { Session } from '../sessions.ts';
import type { RegistryLink } from './registry-link.ts';

/** Ends a live session now: by a status event (revoked, suspended, denied), its certificate's expiry, or an operator's kick. */
export type Cut = (session: Session, error: FleetgateError, actor: string, event?: StatusEvent) => void;

/**
 * The one way a live session is cut: marked with the code (so every later packet or request is
 * refused with it), closed, counted, one decision line, and an audit row naming who cut it.
 */
export function liveCut(deps: { metrics: Metrics; log: Logger; registry: RegistryLink }): Cut {
  const { metrics, log, registry } = deps;
  return (session, error, actor, event) => {
    if (session.cut !== undefined) return;
    session.cut = error.code;
    session.close();
    metrics.liveCuts.inc({ code: error.code });
    const line = {
      decision: 'cut',
      code: error.code,
      deviceId: session.device.id,
      serial: session.identity.serial,
      transport: session.transport,
      event: event?.kind,
    };
    log.warn(line, error.message);
    registry.audit(actor, 'session.disconnect', session.device.id, {
      reason:
        event !== undefined
          ? 'disconnected by revocation'
          : error.code === 'CERT_EXPIRED'
            ? 'certificate expired'
            : 'disconnected by operator',
      code: error.code,
      transport: session.transport,
      serial: session.identity.serial,
      sessionId: session.id,
      ...(event && { event: event.kind, eventSeq: event.seq }),
    });
  };
}
