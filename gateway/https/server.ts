import type { TLSSocket, TlsOptions } from 'node:tls';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import type { HttpsConfig } from '../../config/config.ts';
import type { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import type { Admitted } from '../../listeners/admission.ts';
import type { ConnectionGuard } from '../../listeners/guard.ts';
import { onTlsClientError } from '../../listeners/handshake-errors.ts';
import { frameworkError, httpError, logFields, sendError } from '../../listeners/http-errors.ts';
import { listenApp } from '../../listeners/listen.ts';
import { behindProxy, type ProxyFrontOptions } from '../../listeners/proxy-protocol.ts';
import type { ThrottledLog } from '../../listeners/throttled-log.ts';
import type { Metrics } from '../metrics.ts';
import type { DeviceQuotas } from '../quotas.ts';
import type { SessionTable } from '../sessions.ts';
import type { RegistryLink } from '../status/registry-link.ts';
import type { AssertionMinter } from './assertion.ts';
import { type NormalizedTarget, normalizeTarget } from './path.ts';
import { ConnectionsPerDevice } from './per-device.ts';
import { proxyRoutes } from './proxy.ts';
import { RequestAdmission } from './request-admission.ts';

export interface HttpsDeps {
  registry: RegistryLink;
  /** Live sessions: each HTTPS connection is one, kept current (and cut) by the status watcher. */
  sessions: SessionTable;
  minter: AssertionMinter;
  guard: ConnectionGuard;
  refusals: ThrottledLog;
  metrics: Metrics;
  /** Per-device rate quotas, shared with the MQTT plane. */
  quotas: DeviceQuotas;
  log: Logger;
  /** Behind a TCP balancer that sends a PROXY header (`gateway.proxyProtocolFrom`). */
  proxy?: ProxyFrontOptions;
}

interface RequestState extends Admitted {
  target: NormalizedTarget;
  /** The minted assertion of this request: sent to the origin, never to the device, never logged. */
  token?: string;
  /** Why the request body was cut (over the limit, stalled), if it was. */
  bodyError?: FleetgateError;
}

declare module 'fastify' {
  interface FastifyRequest {
    fleetgate?: RequestState;
  }
}

/**
 * The HTTPS plane: certificate on every connection (TLS, no resumption), identity + status on
 * every request (keep-alive too), one normalised path for routing and the origin, route policy,
 * a JWT minted for this one request and handed only to the origin, streaming both ways.
 */
export async function startHttpsPlane(
  config: HttpsConfig,
  tls: TlsOptions,
  deps: HttpsDeps,
): Promise<{ app: FastifyInstance; port: number }> {
  const longestRoute = Math.max(0, ...config.routes.map((r) => r.timeoutMs));
  const app = Fastify({
    https: { ...tls, maxHeaderSize: config.maxHeaderBytes, noDelay: true } as TlsOptions,
    logger: false,
    keepAliveTimeout: config.keepAliveTimeoutMs,
    // Idle connection (no request yet, or no traffic either way): closed. Longer than any route
    // timeout so a device waiting on a slow origin keeps its connection.
    connectionTimeout: Math.max(config.idleTimeoutMs, longestRoute + 5_000),
    requestTimeout: longestRoute + 30_000,
    return503OnClosing: true,
    // A URL fastify cannot route (bad percent-encoding) is refused like any bad path.
    frameworkErrors: frameworkError,
  });
  app.server.headersTimeout = config.headersTimeoutMs;
  app.server.maxConnections = config.maxConnections;
  const handshakeFailed = (code: string) =>
    deps.metrics.handshakes.inc({ transport: 'https', outcome: 'tls_failed', code });
  app.server.on('tlsClientError', onTlsClientError(deps.refusals, handshakeFailed, { transport: 'https' }));
  deps.guard.attach(app.server, 'https');
  const perDevice = new ConnectionsPerDevice(config.maxConnectionsPerDevice);
  app.server.on('secureConnection', (socket: TLSSocket) => {
    deps.metrics.httpsHandshakes.inc();
    perDevice.opened(socket);
  });
  // Bodies are never parsed or buffered here: they stream to the origin.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', (_req, payload, done) => done(null, payload));
  app.setErrorHandler((err, req, reply) => refuse(deps, req, reply, err));
  const admission = new RequestAdmission(deps.registry, deps.sessions, deps.quotas);
  app.addHook('onRequest', async (req, reply) => {
    if (config.perRequestHandshake) void reply.header('connection', 'close');
    const socket = req.raw.socket as TLSSocket;
    perDevice.check(socket);
    const admitted = await admission.admit(socket); // throws the coded refusal → error handler
    req.fleetgate = { ...admitted, target: normalizeTarget(req.url) };
  });
  await app.register(proxyRoutes, { config, deps });
  // Behind a TCP balancer speaking the PROXY protocol: the same front as the MQTT listeners'.
  const proxy = deps.proxy;
  if (proxy !== undefined) behindProxy([app.server], proxy);
  const at = { host: config.host, port: config.port, setting: 'https.port (FLEETGATE_HTTPS_PORT)' };
  return { app, port: await listenApp(app, at) };
}

/** A refused request: counted, one decision line, the device told the code and the short public text. */
function refuse(deps: HttpsDeps, req: FastifyRequest, reply: FastifyReply, err: unknown): void {
  const e = httpError(err);
  const state = req.fleetgate;
  deps.metrics.httpsRequests.inc({ code: e.code });
  const line = {
    decision: 'refused',
    method: req.method,
    path: state?.target.path ?? req.url.split('?')[0]?.slice(0, 200),
    deviceId: state?.device.id ?? e.detail.deviceId,
    serial: state?.identity.serial ?? e.detail.serial,
    ...logFields(e),
  };
  deps.metrics.refusedDevices.record(line.deviceId as string | undefined, line.serial as string | undefined, e.code);
  if (e.code === 'INTERNAL') deps.log.error({ ...line, err }, 'https request failed');
  else deps.log.warn(line, 'https request refused');
  // After a cut body or a connection over the cap, the connection is not reused.
  if (e.code === 'CONNECTION_LIMIT' || e.code === 'REQUEST_TIMEOUT' || e.code === 'PAYLOAD_TOO_LARGE')
    void reply.header('connection', 'close');
  // The log has the rest.
  if (!reply.sent) void sendError(reply, e);
}
