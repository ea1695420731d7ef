import type { TLSSocket } from 'node:tls';
import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import { type Admitted, admitAsync } from '../../listeners/admission.ts';
import { peerAddress } from '../../listeners/proxy-protocol.ts';
import type { DeviceQuotas } from '../quotas.ts';
import type { Session, SessionTable } from '../sessions.ts';
import type { RegistryLink } from '../status/registry-link.ts';

/**
 * Every request is checked. The first request of a connection asks the registry (identity,
 * then status: from the gateway's in-memory view when this certificate was admitted before,
 * else from the registry thread) and registers the connection as a live session; the following
 * ones are checked against that session's in-memory state, which the status watcher keeps
 * current from the registry's feed (as for MQTT packets): a revocation, suspension or
 * denylisting cuts the connection within the feed interval (`gateway.statusPoll`, 20 ms) plus
 * one status check, and every later request on it is refused. No registry read per keep-alive request.
 */
export class RequestAdmission {
  readonly #registry: RegistryLink;
  readonly #sessions: SessionTable;
  readonly #quotas: DeviceQuotas;
  readonly #live = new WeakMap<TLSSocket, Session>();
  readonly #admitting = new WeakMap<TLSSocket, Promise<Session>>();

  constructor(registry: RegistryLink, sessions: SessionTable, quotas: DeviceQuotas) {
    this.#registry = registry;
    this.#sessions = sessions;
    this.#quotas = quotas;
  }

  /** Identity, status and the device's request quota, for every request; its connect quota for a connection's first. */
  async admit(socket: TLSSocket): Promise<Admitted> {
    const live = this.#live.get(socket) ?? (await this.#admitting.get(socket));
    if (live !== undefined) return this.#withinRate(this.#stillAdmitted(live), 'requests');
    const pending = admitAsync(socket, this.#registry).then((admitted) => {
      this.#withinRate(admitted, 'connects'); // before the connection becomes a session
      return this.#register(socket, admitted);
    });
    this.#admitting.set(socket, pending);
    try {
      const session = await pending;
      return this.#withinRate({ device: session.device, identity: session.identity }, 'requests');
    } finally {
      this.#admitting.delete(socket);
    }
  }

  /** 429 RATE_LIMITED with how long to wait (`Retry-After`), before any assertion is minted. */
  #withinRate(admitted: Admitted, what: 'requests' | 'connects'): Admitted {
    const quota = this.#quotas.of(admitted.device.id, admitted.device.type);
    if (quota === undefined) return admitted;
    const bucket = quota[what];
    const now = Date.now();
    if (bucket.take(1, now)) return admitted;
    if (quota.shouldAudit(now))
      this.#registry.audit('gateway', 'quota.exceeded', admitted.device.id, { quota: what, transport: 'https' });
    const per = what === 'requests' ? 'requests a second' : 'new connections a minute';
    throw new FleetgateError('RATE_LIMITED', `${admitted.device.id}: over its ${per}`, {
      detail: { deviceId: admitted.device.id, serial: admitted.identity.serial, retryAfterS: bucket.secondsUntil(1) },
    });
  }

  /** A keep-alive request: the connection's live session, unless it was cut or its certificate expired since. */
  #stillAdmitted(live: Session): Admitted {
    if (live.cut !== undefined)
      throw new FleetgateError(live.cut, `session cut: ${live.cut}`, {
        detail: { deviceId: live.device.id, serial: live.identity.serial },
      });
    if (live.identity.notAfter <= Date.now())
      throw new FleetgateError('CERT_EXPIRED', `certificate ${live.identity.serial} expired`, {
        detail: { deviceId: live.device.id },
      });
    return { device: live.device, identity: live.identity };
  }

  #register(socket: TLSSocket, admitted: Admitted): Session {
    const session = this.#sessions.create({
      identity: admitted.identity,
      device: admitted.device,
      transport: 'https',
      remoteAddress: peerAddress(socket),
      scope: { publish: [], subscribe: [] },
      close: () => socket.destroy(),
    });
    if (socket.destroyed) return session; // gone while the registry answered: nothing to watch
    this.#live.set(socket, session);
    this.#sessions.add(session);
    socket.once('close', () => this.#sessions.remove(session));
    return session;
  }
}
