import Fastify, { type FastifyInstance, type FastifyRequest } from 'fastify';
import type { TLSSocket, TlsOptions } from 'node:tls';
import type { GatewayConfig } from '../../config/config.ts';
import { FleetgateError, toFleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import { identityFromSocket } from '../../firmware-sdk/protocol/certificate-identity.ts';
import type { Metrics } from '../metrics.ts';
import { SessionTable } from '../sessions.ts';
import type { StatusChecker } from '../status/check.ts';

export interface AdminDeps {
  checker: StatusChecker;
  sessions: SessionTable;
  metrics: Metrics;
  /** Closes every live session of a device; returns how many. */
  kick(deviceId: string, actor: string): number;
  /** The public keys origins verify assertions with. */
  jwks(): { keys: Record<string, unknown>[] };
}

/** Only an `operator` certificate, valid by the registry right now, may use /v1. */
function requireOperator(req: FastifyRequest, checker: StatusChecker): string {
  const identity = identityFromSocket(req.raw.socket as TLSSocket);
  const { device } = checker.check(identity);
  if (device.type !== 'operator') throw new FleetgateError('NOT_AUTHORIZED', `${device.id} is a ${device.type}, not an operator`);
  return device.id;
}

/**
 * The admin listener (loopback by default): `/healthz` and `/metrics` for probes and
 * Prometheus, `/.well-known/jwks.json` for origins, `/v1/connections` for operators (client certificate of type `operator`).
 * The TLS layer requests a certificate but lets the request through without one, so probes
 * work; every `/v1` route checks for itself.
 */
export async function startAdmin(config: GatewayConfig, tls: TlsOptions, deps: AdminDeps): Promise<{ app: FastifyInstance; port: number }> {
  const app = Fastify({
    https: { ...tls, rejectUnauthorized: false },
    logger: false,
    requestTimeout: 10_000,
    connectionTimeout: 10_000,
    keepAliveTimeout: 5_000,
  });
  app.setErrorHandler((err, _req, reply) => {
    const e = toFleetgateError(err);
    void reply.status(e.httpStatus).send({ error: { code: e.code, message: e.code === 'INTERNAL' ? e.publicMessage : e.message } });
  });
  app.get('/healthz', async (_req, reply) => {
    try {
      deps.checker.reader();
      return { status: 'ok', sessions: deps.sessions.size };
    } catch (err) {
      return reply.status(503).send({ status: 'unavailable', error: { code: toFleetgateError(err).code } });
    }
  });
  app.get('/.well-known/jwks.json', async (_req, reply) => reply.header('cache-control', 'max-age=300').send(deps.jwks()));
  app.get('/metrics', async (_req, reply) => reply.type(deps.metrics.registry.contentType).send(await deps.metrics.registry.metrics()));
  app.get('/v1/connections', async (req) => {
    requireOperator(req, deps.checker);
    return { connections: deps.sessions.all().map(SessionTable.info) };
  });
  app.delete<{ Params: { deviceId: string } }>('/v1/connections/:deviceId', async (req) => {
    const operator = requireOperator(req, deps.checker);
    return { deviceId: req.params.deviceId, closed: deps.kick(req.params.deviceId, `operator:${operator}`) };
  });
  await app.listen({ host: config.adminHost, port: config.adminPort });
  const address = app.server.address();
  return { app, port: typeof address === 'object' && address !== null ? address.port : config.adminPort };
}
