import { statSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { FleetgateConfig } from '../config/config.ts';
import { dataPaths, urlHost } from '../config/paths.ts';
import { FleetgateError } from '../firmware-sdk/protocol/errors.ts';
import { ConnectionGuard } from '../listeners/guard.ts';
import { ThrottledLog } from '../listeners/throttled-log.ts';
import { serverTlsOptions } from '../listeners/tls.ts';
import type { StatusEvent } from '../provisioning/registry/records.ts';
import { startAdmin } from './admin/server.ts';
import { NatsBus } from './cluster/bus.ts';
import { FleetSessions } from './cluster/fleet-sessions.ts';
import { startConsole } from './console/server.ts';
import { AssertionMinter } from './https/assertion.ts';
import { deleteRetiredKeys, ensureKeyring, keyringFile, loadKeyring } from './https/keyring.ts';
import { startHttpsPlane } from './https/server.ts';
import { createMetrics, type Metrics } from './metrics.ts';
import { startMqttListeners } from './mqtt/listeners.ts';
import { MqttPlane } from './mqtt/plane.ts';
import { nodeTotals } from './node-totals.ts';
import { type Session, SessionTable } from './sessions.ts';
import { RegistryLink } from './status/registry-link.ts';
import { StatusWatcher } from './status/watch.ts';

export interface RunningGateway {
  /** `console` is absent when `gateway.console` is off. */
  endpoints: { mqtts: string; wss: string; https: string; admin: string; console?: string };
  ports: { mqtts: number; wss: number; https: number; admin: number; console?: number };
  sessions: SessionTable;
  metrics: Metrics;
  /** Closes every live session of a device (operator action); returns how many. */
  kick(deviceId: string, actor: string): number;
  close(): Promise<void>;
}

/**
 * Starts the gateway: MQTT over TLS and WSS, the HTTPS plane, the admin listener, and the
 * live-revocation watcher, all reading the registry in `config.dataDir` (read side only, plus audit appends).
 */
export async function startGateway(config: FleetgateConfig, deps: { log: Logger }): Promise<RunningGateway> {
  const paths = dataPaths(config.dataDir, config.registry);
  const log = deps.log.child({ component: 'gateway' });
  const g = config.gateway;
  const sessions = new SessionTable();
  const metrics = createMetrics();
  // The registry is read on its own thread; the watcher is wired once the plane exists.
  let watcher: StatusWatcher | undefined;
  const registry = await RegistryLink.open(paths.registry, {
    // fails fast if the registry cannot be read
    pollMs: g.statusPollMs,
    idlePollMs: g.statusIdlePollMs,
    timeoutMs: g.registryTimeoutMs,
    cacheMax: g.statusCacheSize,
    onEvents: (events) => watcher?.apply(events),
    onFeed: (state, error) => {
      if (state === 'down')
        log.error(
          { code: error?.code, err: error?.message },
          'registry status feed unavailable: new connections are refused, live sessions continue',
        );
      else {
        log.info('registry status feed available again');
        watcher?.recheckUnanswered(); // live sessions whose re-check the outage left unanswered
      }
    },
    onAuditError: (error) => log.error({ code: error.code, err: error.message }, 'audit append failed'),
  });
  const tls = serverTlsOptions(paths, { handshakeTimeoutMs: g.handshakeTimeoutMs, clientCert: 'required' });
  // Anonymous peers: counted, throttled in the log, bounded by one guard over every listener.
  const refusals = new ThrottledLog(log);
  const guard = new ConnectionGuard(
    {
      maxPending: g.maxPendingHandshakes,
      maxPendingPerAddress: g.maxPendingHandshakesPerAddress,
      handshakeTimeoutMs: g.handshakeTimeoutMs,
    },
    {
      refused: (listener, reason, remoteAddress) => {
        metrics.unauthenticatedClosed.inc({ listener, reason });
        refusals.warn(
          `unauthenticated:${reason}`,
          { decision: 'closed', listener, reason, remoteAddress },
          'unauthenticated connection closed',
        );
      },
      handshake: (listener, seconds) => metrics.tlsHandshake.observe({ listener }, seconds),
    },
  );
  let plane: MqttPlane | undefined;
  // Several nodes: messages between them over NATS; each node keeps its own MQTT store.
  let bus: NatsBus | undefined;
  const node = config.cluster.node;
  // Topics whose retained message changed live while this node fetched the cluster's snapshot: the live change wins.
  let changedWhileSyncing: Set<string> | undefined = new Set();
  try {
    if (config.cluster.nats !== '') {
      bus = await NatsBus.connect(config.cluster.nats, node, log.child({ component: 'cluster', node }), {
        message: (m) => plane?.routeRemote(m),
        link: (state) => metrics.clusterLink.set(state === 'up' ? 1 : 0),
        session: (clientId, other) => plane?.takenOverElsewhere(clientId, other),
        retained: (m) => {
          changedWhileSyncing?.add(m.topic);
          plane?.retainRemote(m);
        },
      });
      metrics.cluster.counts = bus.counts;
      metrics.clusterLink.set(1);
      log.info({ node, nats: config.cluster.nats }, 'joined the cluster: messages between nodes over NATS');
    }
    plane = new MqttPlane({
      config: g,
      mqtt: config.mqtt,
      storeFile: join(paths.dataDir, bus === undefined ? 'mqtt.db' : `mqtt-${node}.db`),
      registry,
      sessions,
      metrics,
      log: log.child({ plane: 'mqtt' }),
      ...(bus !== undefined && { bus }),
    });
    if (bus !== undefined) {
      // Joining: the retained messages the other nodes hold (set before this node started, or while
      // it was away), before any device can subscribe here; then this node serves them in turn.
      const mqtt = plane;
      const inSnapshot = new Set<string>();
      const synced = await bus.fetchRetained((m) => {
        inSnapshot.add(m.topic);
        if (!changedWhileSyncing!.has(m.topic)) mqtt.retainRemote(m);
      });
      // A whole snapshot from another node is the cluster's set: what this node kept on disk from
      // before and is not in it was cleared (or its device revoked) while this node was away.
      // Alone, or with a snapshot cut short, it keeps its own.
      const changed = changedWhileSyncing!;
      const forgotten =
        synced.node !== undefined && synced.complete
          ? mqtt.keepRetainedOnly((topic) => inSnapshot.has(topic) || changed.has(topic))
          : 0;
      changedWhileSyncing = undefined;
      if (synced.count > 0 || forgotten > 0 || !synced.complete) {
        (synced.complete ? log.info.bind(log) : log.warn.bind(log))(
          { from: synced.node, retained: synced.count, forgotten, complete: synced.complete },
          synced.complete
            ? 'retained messages taken from another node'
            : 'retained snapshot from another node incomplete (timed out): the rest arrives as it changes',
        );
      }
      await bus.serveRetained(() => mqtt.retainedMessages());
    }
  } catch (err) {
    await bus?.close();
    await registry.close();
    throw err;
  }

  const cut = (session: Session, error: FleetgateError, actor: string, event?: StatusEvent) => {
    if (session.cut !== undefined) return;
    session.cut = error.code;
    session.close();
    metrics.liveCuts.inc({ code: error.code });
    log.warn(
      {
        decision: 'cut',
        code: error.code,
        deviceId: session.device.id,
        serial: session.identity.serial,
        transport: session.transport,
        event: event?.kind,
      },
      error.message,
    );
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
  watcher = new StatusWatcher({
    registry,
    sessions,
    cut: (session, error, event) => cut(session, error, 'gateway', event),
    expired: (session) =>
      cut(
        session,
        new FleetgateError('CERT_EXPIRED', `certificate ${session.identity.serial} expired during the session`),
        'gateway',
      ),
    refresh: (session) => plane.refreshScope(session),
    event: (event) => plane.onStatusEvent(event),
    unavailable: (error) =>
      log.error(
        { code: error.code, err: error.message },
        'registry unavailable while re-checking a live session: kept; new connections are refused',
      ),
  });

  // Assertion keys: created on first start, reloaded when `fleetgate jwt rotate` changes them.
  ensureKeyring(paths);
  let keyring = loadKeyring(paths);
  const minter = new AssertionMinter(config.https.issuer, keyring.active);
  const keyWatch = setInterval(() => {
    try {
      if (keyring.nextRetireAt !== null && keyring.nextRetireAt <= Date.now()) {
        const gone = deleteRetiredKeys(paths);
        if (gone.length > 0) log.info({ kids: gone }, 'retired assertion signing keys deleted');
        keyring = loadKeyring(paths);
      }
      if (statSync(keyringFile(paths)).mtimeMs === keyring.mtimeMs) return;
      keyring = loadKeyring(paths);
      minter.setKey(keyring.active);
      log.info({ kid: keyring.active.kid }, 'assertion signing key reloaded');
    } catch (err) {
      log.error({ err: (err as Error).message }, 'assertion keyring cannot be read; keeping the current key');
    }
  }, 1_000);
  keyWatch.unref();

  const kick = (deviceId: string, actor: string): number => {
    const live = sessions.ofDevice(deviceId);
    for (const s of live) cut(s, new FleetgateError('NOT_AUTHORIZED', `kicked by ${actor}`), actor);
    return live.length;
  };
  // Listeners start one by one; if one cannot bind, everything already started is closed and the
  // coded error (PORT_IN_USE …) goes up: no half-started gateway keeps the process alive.
  const stopAll = async () => {
    watcher?.close();
    clearInterval(keyWatch);
    await plane.close();
    await bus?.close();
    await registry.close();
  };
  const started: (() => Promise<unknown>)[] = [];
  const step = async <T>(start: () => Promise<T>, stop: (v: T) => Promise<unknown>): Promise<T> => {
    try {
      const v = await start();
      started.push(() => stop(v));
      return v;
    } catch (err) {
      for (const s of started.reverse()) await s().catch(() => undefined);
      await stopAll().catch(() => undefined);
      throw err;
    }
  };
  const shared = { guard, refusals, metrics, log };
  const listeners = await step(
    () => startMqttListeners(plane, tls, g, shared),
    async (l) => {
      l.mqtts.close();
      l.wss.close();
      l.wss.closeAllConnections();
    },
  );
  const httpsPlane = await step(
    () =>
      startHttpsPlane(config.https, tls, {
        registry,
        sessions,
        minter,
        guard,
        refusals,
        metrics,
        log: log.child({ plane: 'https' }),
      }),
    (h) => h.app.close(),
  );
  // The JWKS is recomputed on each fetch: a key retired past its overlap disappears on time.
  const fleet = new FleetSessions(sessions, kick, bus);
  bus?.serve({
    connections: (deviceId) => fleet.local(deviceId),
    kick,
    overview: () => nodeTotals(metrics, sessions),
    refused: (limit) => metrics.refusedDevices.list(limit),
  });
  const admin = await step(
    () =>
      startAdmin(g, serverTlsOptions(paths, { handshakeTimeoutMs: g.handshakeTimeoutMs, clientCert: 'optional' }), {
        registry,
        sessions,
        metrics,
        fleet,
        guard,
        refusals,
        log,
        jwks: () => loadKeyring(paths).jwks,
      }),
    (a) => a.app.close(),
  );
  const consoleListener = g.consoleEnabled
    ? await step(
        () =>
          startConsole(
            config,
            serverTlsOptions(paths, { handshakeTimeoutMs: g.handshakeTimeoutMs, clientCert: 'required' }),
            {
              registry,
              sessions,
              metrics,
              fleet,
              guard,
              refusals,
              log: log.child({ surface: 'console' }),
              registryFile: paths.registry,
            },
          ),
        (c) => c.close(),
      )
    : undefined;
  const host = urlHost(g.host);
  return {
    endpoints: {
      mqtts: `mqtts://${host}:${listeners.ports.mqtts}`,
      wss: `wss://${host}:${listeners.ports.wss}${g.wssPath}`,
      https: `https://${urlHost(config.https.host)}:${httpsPlane.port}`,
      admin: `https://${urlHost(g.adminHost)}:${admin.port}`,
      ...(consoleListener !== undefined && { console: `https://${urlHost(g.consoleHost)}:${consoleListener.port}` }),
    },
    ports: {
      ...listeners.ports,
      https: httpsPlane.port,
      admin: admin.port,
      ...(consoleListener !== undefined && { console: consoleListener.port }),
    },
    sessions,
    metrics,
    kick,
    async close() {
      plane.disconnectAll(); // as a shutdown, not as a cut
      for (const s of sessions.all()) s.close(); // the HTTPS connections left
      await Promise.all([
        new Promise((r) => listeners.mqtts.close(r)),
        new Promise((r) => listeners.wss.close(r)),
        admin.app.close(),
        consoleListener?.close(),
        httpsPlane.app.close(),
      ]);
      listeners.wss.closeAllConnections();
      await stopAll();
    },
  };
}
