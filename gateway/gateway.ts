import { join } from 'node:path';
import type { Logger } from 'pino';
import type { FleetgateConfig, GatewayConfig } from '../config/config.ts';
import { type DataPaths, dataPaths, urlHost } from '../config/paths.ts';
import { FleetgateError } from '../firmware-sdk/protocol/errors.ts';
import { ConnectionGuard } from '../listeners/guard.ts';
import { proxyOptions } from '../listeners/proxy-protocol.ts';
import { ThrottledLog } from '../listeners/throttled-log.ts';
import { serverTlsOptions } from '../listeners/tls.ts';
import { type ClusterLinks, checkClusterLinks, loadNodeIdentity } from '../runtime/cluster-links.ts';
import { startAdmin } from './admin/server.ts';
import { FleetSessions } from './cluster/fleet-sessions.ts';
import { ClusterJoin } from './cluster/join.ts';
import { startConsole } from './console/server.ts';
import type { AssertionMinter } from './https/assertion.ts';
import { loadKeyring } from './https/keyring.ts';
import { watchKeyring } from './https/keyring-watch.ts';
import { startHttpsPlane } from './https/server.ts';
import { createMetrics, type Metrics } from './metrics.ts';
import { startMqttListeners } from './mqtt/listeners.ts';
import { MqttPlane } from './mqtt/plane.ts';
import { nodeTotals } from './node-totals.ts';
import { DeviceQuotas } from './quotas.ts';
import { SessionTable } from './sessions.ts';
import { Startup } from './startup.ts';
import { type Cut, liveCut } from './status/cut.ts';
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
  /** How the links to NATS and the registry are secured. */
  links: ClusterLinks;
  close(): Promise<void>;
}

/** What the gateway's parts share: built once by {@link startGateway}, handed to each part. */
interface Core {
  config: FleetgateConfig;
  paths: DataPaths;
  log: Logger;
  sessions: SessionTable;
  metrics: Metrics;
  registry: RegistryLink;
  guard: ConnectionGuard;
  refusals: ThrottledLog;
  quotas: DeviceQuotas;
  /** How this node's links to NATS and the registry prove who they are (banner, `/healthz`). */
  links: ClusterLinks;
}

/**
 * Starts the gateway, in order: the registry link (read side, on its own thread) → the guard over
 * anonymous peers → the cluster link (when configured) → the MQTT plane (and the cluster's
 * retained set) → the live-revocation watcher → the assertion keys → the listeners (MQTT over
 * TLS and WSS, HTTPS, admin, console). If a listener cannot bind, everything started is stopped.
 */
export async function startGateway(config: FleetgateConfig, deps: { log: Logger }): Promise<RunningGateway> {
  const paths = dataPaths(config.dataDir, config.registry);
  const log = deps.log.child({ component: 'gateway' });
  const sessions = new SessionTable();
  const metrics = createMetrics();
  let watcher: StatusWatcher | undefined; // wired once the plane exists
  const identity = loadNodeIdentity(paths, config.cluster);
  const links = checkClusterLinks(config, identity); // CLUSTER_INSECURE before anything opens
  const registry = await openRegistry(config.gateway, paths, log, () => watcher);
  metrics.cluster.feedReads = () => registry.feedReads;
  const quotas = new DeviceQuotas(config.gateway.limits, config.gateway.quotas);
  const guarded = anonymousGuard(config.gateway, metrics, log);
  const core: Core = { config, paths, log, sessions, metrics, registry, quotas, links, ...guarded };
  let plane: MqttPlane | undefined;
  let cluster: ClusterJoin | undefined;
  try {
    if (config.cluster.nats !== '')
      cluster = await ClusterJoin.connect(config, { log, metrics, plane: () => plane, identity });
    plane = startPlane(core, cluster);
    await cluster?.syncRetained(plane);
  } catch (err) {
    quotas.close();
    await cluster?.bus.close();
    await registry.close();
    throw err;
  }
  const mqtt = plane;
  const cut = liveCut({ metrics, log, registry });
  watcher = statusWatcher(core, mqtt, cut);
  const keys = watchKeyring(paths, config.https.issuer, log);
  const kick = (deviceId: string, actor: string): number => {
    const live = sessions.ofDevice(deviceId);
    for (const s of live) cut(s, new FleetgateError('NOT_AUTHORIZED', `kicked by ${actor}`), actor);
    return live.length;
  };
  const startup = new Startup(async () => {
    watcher?.close();
    keys.stop();
    quotas.close();
    await mqtt.close();
    await cluster?.state?.close();
    await cluster?.bus.close();
    await registry.close();
  });
  return startSurfaces(core, { startup, mqtt, minter: keys.minter, kick, cluster });
}

/** The registry link; fails fast if the registry cannot be read. Its status feed drives the watcher. */
function openRegistry(
  g: GatewayConfig,
  paths: DataPaths,
  log: Logger,
  watcher: () => StatusWatcher | undefined,
): Promise<RegistryLink> {
  return RegistryLink.open(paths.registry, {
    pollMs: g.statusPollMs,
    idlePollMs: g.statusIdlePollMs,
    timeoutMs: g.registryTimeoutMs,
    cacheMax: g.statusCacheSize,
    onEvents: (events) => watcher()?.apply(events),
    onFeed: (state, error) => {
      if (state === 'down')
        log.error(
          { code: error?.code, err: error?.message },
          'registry status feed unavailable: new connections are refused, live sessions continue',
        );
      else {
        log.info('registry status feed available again');
        watcher()?.recheckUnanswered(); // live sessions whose re-check the outage left unanswered
      }
    },
    onAuditError: (error) => log.error({ code: error.code, err: error.message }, 'audit append failed'),
  });
}

/** Anonymous peers: counted, throttled in the log, bounded by one guard over every listener. */
function anonymousGuard(g: GatewayConfig, metrics: Metrics, log: Logger) {
  const refusals = new ThrottledLog(log);
  const limits = {
    maxPending: g.maxPendingHandshakes,
    maxPendingPerAddress: g.maxPendingHandshakesPerAddress,
    handshakeTimeoutMs: g.handshakeTimeoutMs,
  };
  const guard = new ConnectionGuard(limits, {
    refused: (listener, reason, remoteAddress) => {
      metrics.unauthenticatedClosed.inc({ listener, reason });
      const line = { decision: 'closed', listener, reason, remoteAddress };
      refusals.warn(`unauthenticated:${reason}`, line, 'unauthenticated connection closed');
    },
    handshake: (listener, seconds) => metrics.tlsHandshake.observe({ listener }, seconds),
  });
  return { guard, refusals };
}

/** The MQTT core; alone a node keeps its store in `mqtt.db`, in a cluster in `mqtt-<node>.db`. */
function startPlane(core: Core, cluster: ClusterJoin | undefined): MqttPlane {
  const { config, paths, log } = core;
  return new MqttPlane({
    config: config.gateway,
    mqtt: config.mqtt,
    storeFile: join(paths.dataDir, cluster === undefined ? 'mqtt.db' : `mqtt-${config.cluster.node}.db`),
    registry: core.registry,
    sessions: core.sessions,
    metrics: core.metrics,
    quotas: core.quotas,
    log: log.child({ plane: 'mqtt' }),
    ...(cluster !== undefined && { bus: cluster.bus }),
    ...(cluster?.state !== undefined && { state: cluster.state }),
  });
}

/** Live revocation: status events and expiries cut sessions; gateway devices' scopes follow their children. */
function statusWatcher(core: Core, mqtt: MqttPlane, cut: Cut): StatusWatcher {
  const { registry, sessions, log } = core;
  return new StatusWatcher({
    registry,
    sessions,
    cut: (session, error, event) => cut(session, error, 'gateway', event),
    expired: (session) => {
      const error = new FleetgateError(
        'CERT_EXPIRED',
        `certificate ${session.identity.serial} expired during the session`,
      );
      cut(session, error, 'gateway');
    },
    refresh: (session) => mqtt.refreshScope(session),
    event: (event) => mqtt.onStatusEvent(event),
    unavailable: (error) =>
      log.error(
        { code: error.code, err: error.message },
        'registry unavailable while re-checking a live session: kept; new connections are refused',
      ),
  });
}

interface Surfaces {
  startup: Startup;
  mqtt: MqttPlane;
  minter: AssertionMinter;
  kick: (deviceId: string, actor: string) => number;
  cluster: ClusterJoin | undefined;
}

/** The listeners, one by one: MQTT over TLS and WSS, HTTPS, admin, console. */
async function startSurfaces(core: Core, s: Surfaces): Promise<RunningGateway> {
  const { config, paths, log, sessions, metrics, registry, guard, refusals } = core;
  const { startup, mqtt, kick } = s;
  const g = config.gateway;
  const bus = s.cluster?.bus;
  const tls = (clientCert: 'required' | 'optional') =>
    serverTlsOptions(paths, { handshakeTimeoutMs: g.handshakeTimeoutMs, clientCert });
  const shared = { guard, refusals, metrics, log };
  const listeners = await startup.step(
    () => startMqttListeners(mqtt, tls('required'), g, shared),
    async (l) => {
      l.mqtts.close();
      l.wss.close();
      l.wss.closeAllConnections();
    },
  );
  const proxy = proxyOptions(g, shared);
  const httpsDeps = {
    ...{ registry, sessions, minter: s.minter, guard, refusals, metrics, quotas: core.quotas },
    log: log.child({ plane: 'https' }),
    ...(proxy !== undefined && { proxy }),
  };
  const httpsPlane = await startup.step(
    () => startHttpsPlane(config.https, tls('required'), httpsDeps),
    (h) => h.app.close(),
  );
  const fleet = new FleetSessions(sessions, kick, bus);
  bus?.serve({
    connections: (deviceId) => fleet.local(deviceId),
    kick,
    overview: () => nodeTotals(metrics, sessions),
    refused: (limit) => metrics.refusedDevices.list(limit),
  });
  // The JWKS is recomputed on each fetch: a key retired past its overlap disappears on time.
  const adminDeps = {
    ...{ registry, sessions, metrics, fleet, guard, refusals, log, links: core.links },
    jwks: () => loadKeyring(paths).jwks,
  };
  const admin = await startup.step(
    () => startAdmin(g, tls('optional'), adminDeps),
    (a) => a.app.close(),
  );
  const consoleDeps = {
    ...{ registry, sessions, metrics, fleet, guard, refusals },
    log: log.child({ surface: 'console' }),
    registryFile: paths.registry,
  };
  const consoleListener = g.consoleEnabled
    ? await startup.step(
        () => startConsole(config, tls('required'), consoleDeps),
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
    links: core.links,
    async close() {
      mqtt.disconnectAll(); // as a shutdown, not as a cut
      for (const session of sessions.all()) session.close(); // the HTTPS connections left
      await Promise.all([
        new Promise((r) => listeners.mqtts.close(r)),
        new Promise((r) => listeners.wss.close(r)),
        admin.app.close(),
        consoleListener?.close(),
        httpsPlane.app.close(),
      ]);
      listeners.wss.closeAllConnections();
      await startup.stopCore();
    },
  };
}
