import Fastify, { type FastifyInstance } from 'fastify';
import rateLimitPlugin from '@fastify/rate-limit';
import { constants } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { Logger } from 'pino';
import type { FleetgateConfig } from '../../config/config.ts';
import { dataPaths, urlHost } from '../../config/paths.ts';
import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import { loadCa } from '../ca/authority.ts';
import { estRoutes } from '../est/routes.ts';
import { RegistryWriter } from '../registry/writer.ts';
import { httpError } from './errors.ts';
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
  const paths = dataPaths(config.dataDir);
  const p = config.provisioning;
  const registry = new RegistryWriter(paths.registry);
  const ca = await loadCa(paths);
  const log = deps.log.child({ component: 'provisioning' });
  const service = new ProvisioningService({ registry, ca, config, log });
  const app = Fastify({
    https: {
      key: readFileSync(paths.serverKey), cert: readFileSync(paths.serverCert), ca: [ca.rootPem, ca.intermediatePem],
      requestCert: true, rejectUnauthorized: false, minVersion: 'TLSv1.2', secureOptions: constants.SSL_OP_NO_TICKET,
    },
    logger: false,
    bodyLimit: p.bodyLimitBytes,
    requestTimeout: p.requestTimeoutMs,
    connectionTimeout: p.requestTimeoutMs,
    keepAliveTimeout: 5_000,
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false } },
  });
  app.server.headersTimeout = 10_000;
  await app.register(rateLimitPlugin, {
    global: false,
    errorResponseBuilder: (_req, ctx) => Object.assign(new FleetgateError('RATE_LIMITED', `rate limit of ${ctx.max} enrollments per second exceeded; retry after ${ctx.after}`), { statusCode: 429 }),
  });
  const rateLimit = { max: p.enrollRatePerSecond, timeWindow: 1_000 };
  app.setErrorHandler((err, req, reply) => {
    const e = httpError(err);
    if (e.code === 'INTERNAL') log.error({ err, url: req.url }, 'internal error');
    void reply.status(e.httpStatus).send({ error: { code: e.code, message: e.code === 'INTERNAL' ? e.publicMessage : e.message } });
  });
  app.setNotFoundHandler((req, reply) => void reply.status(404).send({ error: { code: 'ROUTE_NOT_FOUND', message: `no route ${req.method} ${req.url.split('?')[0]}` } }));
  jsonRoutes(app, service, rateLimit);
  estRoutes(app, service, rateLimit);
  return { app, registry, service };
}

export async function startProvisioning(config: FleetgateConfig, deps: { log: Logger }): Promise<RunningProvisioning> {
  const { app, registry } = await buildProvisioning(config, deps);
  await app.listen({ host: config.provisioning.host, port: config.provisioning.port });
  const address = app.server.address();
  const port = typeof address === 'object' && address !== null ? address.port : config.provisioning.port;
  return {
    app, port, endpoint: `https://${urlHost(config.provisioning.host)}:${port}`,
    async close() {
      await app.close();
      registry.close();
    },
  };
}
