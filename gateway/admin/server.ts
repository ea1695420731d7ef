import { timingSafeEqual, X509Certificate } from 'node:crypto';
import type { TLSSocket, TlsOptions } from 'node:tls';
import Fastify, { type FastifyInstance, type FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import type { GatewayConfig } from '../../config/config.ts';
import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import { admitAsync, admitCertificateAsync } from '../../listeners/admission.ts';
import type { ConnectionGuard } from '../../listeners/guard.ts';
import { onTlsClientError } from '../../listeners/handshake-errors.ts';
import { frameworkError, httpError, logFields, sendError } from '../../listeners/http-errors.ts';
import { listenApp } from '../../listeners/listen.ts';
import type { ThrottledLog } from '../../listeners/throttled-log.ts';
import type { ClusterLinks } from '../../runtime/cluster-links.ts';
import type { FleetSessions } from '../cluster/fleet-sessions.ts';
import type { Metrics } from '../metrics.ts';
import type { SessionTable } from '../sessions.ts';
import type { RegistryLink } from '../status/registry-link.ts';

export interface AdminDeps {
  registry: RegistryLink;
  sessions: SessionTable;
  metrics: Metrics;
  guard: ConnectionGuard;
  refusals: ThrottledLog;
  log: Logger;
  /** Live sessions and kicks, this node's or (in a cluster) every node's. */
  fleet: FleetSessions;
  /** The public keys origins verify assertions with. */
  jwks(): { keys: Record<string, unknown>[] };
  /** How the links to NATS and the registry are secured (`/healthz` says it). */
  links: ClusterLinks;
}

/**
 * Only an `operator` certificate, valid by the registry right now, may use /v1 — the caller's own,
 * or (a worker of `--workers`) the one the supervisor's admin listener verified in its handshake
 * and passes on with the token only the supervisor and its workers know.
 */
async function requireOperator(req: FastifyRequest, registry: RegistryLink): Promise<string> {
  const passed = supervisorPassed(req);
  if (passed !== undefined) return (await admitCertificateAsync(passed, registry, { types: ['operator'] })).device.id;
  return (await admitAsync(req.raw.socket as TLSSocket, registry, { types: ['operator'] })).device.id;
}

/** The certificate the supervisor passed on (`x-fleetgate-peer`, DER in base64), when the token is the supervisor's. */
function supervisorPassed(req: FastifyRequest): X509Certificate | undefined {
  const token = process.env.FLEETGATE_SUPERVISOR_TOKEN;
  const given = req.headers['x-fleetgate-supervisor'];
  if (token === undefined || token === '' || typeof given !== 'string') return undefined;
  const a = Buffer.from(given);
  const b = Buffer.from(token);
  if (a.length !== b.length || !timingSafeEqual(a, b))
    throw new FleetgateError('NOT_AUTHORIZED', 'a request passed on by a supervisor that is not this worker’s');
  const peer = req.headers['x-fleetgate-peer'];
  if (typeof peer !== 'string') throw new FleetgateError('CERT_REQUIRED', 'an operator certificate is required');
  try {
    return new X509Certificate(Buffer.from(peer, 'base64'));
  } catch {
    throw new FleetgateError('CERT_INVALID', 'the certificate passed on is not one');
  }
}

/**
 * An admin listener's HTTP server: its TLS, its request and connection timeouts
 * (`gateway.adminRequestTimeout`), framework errors in the catalogue's shape — this one's, and the
 * `--workers` supervisor's, which answers on the same port in its place.
 */
export function adminFastify(config: GatewayConfig, tls: TlsOptions): FastifyInstance {
  return Fastify({
    https: tls,
    logger: false,
    requestTimeout: config.adminRequestTimeoutMs,
    connectionTimeout: config.adminRequestTimeoutMs,
    keepAliveTimeout: 5_000,
    frameworkErrors: frameworkError,
  });
}

/**
 * The admin listener (loopback by default): `/healthz` and `/metrics` for probes and
 * Prometheus, `/.well-known/jwks.json` for origins, `/v1/connections` for operators (client certificate of type `operator`).
 * The TLS layer requests a certificate but lets the request through without one, so probes
 * work; every `/v1` route admits the caller itself.
 */
export async function startAdmin(
  config: GatewayConfig,
  tls: TlsOptions,
  deps: AdminDeps,
): Promise<{ app: FastifyInstance; port: number }> {
  const app = adminFastify(config, tls);
  app.server.on(
    'tlsClientError',
    onTlsClientError(
      deps.refusals,
      (code) => deps.metrics.handshakes.inc({ transport: 'admin', outcome: 'tls_failed', code }),
      { transport: 'admin' },
    ),
  );
  deps.guard.attach(app.server, 'admin');
  app.setErrorHandler((err, req, reply) => {
    const e = httpError(err);
    if (e.code === 'INTERNAL') deps.log.error({ err, url: req.url }, 'admin request failed');
    else
      deps.log.warn(
        { decision: 'refused', surface: 'admin', url: req.url.split('?')[0], ...logFields(e) },
        'admin request refused',
      );
    void sendError(reply, e);
  });
  app.setNotFoundHandler(
    (req, reply) =>
      void sendError(
        reply,
        new FleetgateError('ROUTE_NOT_FOUND', `no admin route ${req.method} ${req.url.split('?')[0]}`),
      ),
  );
  app.get('/healthz', async (_req, reply) => {
    try {
      await deps.registry.ping();
      return { status: 'ok', sessions: deps.sessions.size, links: deps.links };
    } catch (err) {
      return reply.status(503).send({ status: 'unavailable', error: { code: httpError(err).code } });
    }
  });
  app.get('/.well-known/jwks.json', async (_req, reply) =>
    reply.header('cache-control', 'max-age=300').send(deps.jwks()),
  );
  app.get('/metrics', async (_req, reply) =>
    reply.type(deps.metrics.registry.contentType).send(await deps.metrics.registry.metrics()),
  );
  // In a cluster, both answer for every node that answers (each row and count names its node).
  app.get('/v1/connections', async (req) => {
    await requireOperator(req, deps.registry);
    return deps.fleet.list();
  });
  app.delete<{ Params: { deviceId: string } }>('/v1/connections/:deviceId', async (req) => {
    const operator = await requireOperator(req, deps.registry);
    return { deviceId: req.params.deviceId, ...(await deps.fleet.kick(req.params.deviceId, `operator:${operator}`)) };
  });
  const at = { host: config.adminHost, port: config.adminPort, setting: 'gateway.adminPort (FLEETGATE_ADMIN_PORT)' };
  return { app, port: await listenApp(app, at) };
}
