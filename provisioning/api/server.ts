import rateLimitPlugin from '@fastify/rate-limit';
import Fastify, { type FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import type { FleetgateConfig } from '../../config/config.ts';
import { dataPaths, urlHost } from '../../config/paths.ts';
import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import { ConnectionGuard } from '../../listeners/guard.ts';
import { onTlsClientError } from '../../listeners/handshake-errors.ts';
import { frameworkError, httpError, logFields, sendError } from '../../listeners/http-errors.ts';
import { listenApp } from '../../listeners/listen.ts';
import { ThrottledLog } from '../../listeners/throttled-log.ts';
import { serverTlsOptions } from '../../listeners/tls.ts';
import { checkClusterLinks } from '../../runtime/cluster-links.ts';
import { loadCa } from '../ca/authority.ts';
import { estRoutes } from '../est/routes.ts';
import { RegistryWriter } from '../registry/writer.ts';
import { jsonRoutes } from './routes.ts';
import { ProvisioningService } from './service.ts';

export interface RunningProvisioning {
  app: FastifyInstance;
  port: number;
  endpoint: string;
  close(): Promise<void>;
}

/**
 * The provisioning service: HTTPS (server certificate from the fleet CA) with client
 * certificates requested but optional — token enrollment needs none, claim enrollment and
 * renewal need theirs, and each route checks. No TLS resumption here either.
 */
export async function buildProvisioning(config: FleetgateConfig, deps: { log: Logger }) {
  const paths = dataPaths(config.dataDir, config.registry);
  const p = config.provisioning;
  const registry = new RegistryWriter(paths.registry);
  const ca = await loadCa(paths);
  const log = deps.log.child({ component: 'provisioning' });
  const refusals = new ThrottledLog(log);
  const service = new ProvisioningService({ registry, ca, config, log, refusals });
  const app = Fastify({
    https: serverTlsOptions(paths, { handshakeTimeoutMs: p.handshakeTimeoutMs, clientCert: 'optional' }),
    logger: false,
    bodyLimit: p.bodyLimitBytes,
    requestTimeout: p.requestTimeoutMs,
    connectionTimeout: p.requestTimeoutMs,
    keepAliveTimeout: p.keepAliveTimeoutMs,
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false } },
    frameworkErrors: frameworkError,
  });
  app.server.headersTimeout = p.headersTimeoutMs;
  // Unauthenticated peers: failed handshakes closed and counted; pending handshakes bounded.
  app.server.on(
    'tlsClientError',
    onTlsClientError(refusals, (code) => service.metrics.tlsFailed.inc({ code }), { surface: 'provisioning' }),
  );
  new ConnectionGuard(
    {
      maxPending: p.maxPendingHandshakes,
      maxPendingPerAddress: p.maxPendingHandshakesPerAddress,
      handshakeTimeoutMs: p.handshakeTimeoutMs,
    },
    {
      refused: (listener, reason, remoteAddress) =>
        refusals.warn(
          `unauthenticated:${reason}`,
          { decision: 'closed', listener, reason, remoteAddress },
          'unauthenticated connection closed',
        ),
    },
  ).attach(app.server, 'provisioning');
  await app.register(rateLimitPlugin, {
    global: false,
    errorResponseBuilder: (_req, ctx) =>
      Object.assign(
        new FleetgateError(
          'RATE_LIMITED',
          `rate limit of ${ctx.max} enrollments per second exceeded; retry after ${ctx.after}`,
        ),
        { statusCode: 429 },
      ),
  });
  const rateLimit = { max: p.enrollRatePerSecond, timeWindow: 1_000 };
  app.setErrorHandler((err, req, reply) => {
    const e = httpError(err);
    if (e.code === 'INTERNAL') log.error({ err, url: req.url }, 'internal error');
    else log.debug({ ...logFields(e), url: req.url.split('?')[0] }, 'request refused');
    void sendError(reply, e);
  });
  app.setNotFoundHandler(
    (req, reply) =>
      void sendError(reply, new FleetgateError('ROUTE_NOT_FOUND', `no route ${req.method} ${req.url.split('?')[0]}`)),
  );
  jsonRoutes(app, service, rateLimit);
  estRoutes(app, service, rateLimit);
  return { app, registry, service };
}

export async function startProvisioning(config: FleetgateConfig, deps: { log: Logger }): Promise<RunningProvisioning> {
  // Provisioning speaks to PostgreSQL only (never NATS): its registry link must prove who it is off this host.
  checkClusterLinks({ registry: config.registry, cluster: { ...config.cluster, nats: '' } }, undefined);
  const { app, registry } = await buildProvisioning(config, deps);
  const { host, port: wanted } = config.provisioning;
  const at = { host, port: wanted, setting: 'provisioning.port (FLEETGATE_PROVISION_PORT)' };
  const port = await listenApp(app, at, () => registry.close());
  return {
    app,
    port,
    endpoint: `https://${urlHost(config.provisioning.host)}:${port}`,
    async close() {
      await app.close();
      registry.close();
    },
  };
}
