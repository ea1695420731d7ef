import replyFrom from '@fastify/reply-from';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { Transform } from 'node:stream';
import type { TLSSocket, TlsOptions } from 'node:tls';
import type { Logger } from 'pino';
import type { HttpsConfig, RouteConfig } from '../../config/config.ts';
import { identityFromSocket, type PeerIdentity } from '../../firmware-sdk/protocol/certificate-identity.ts';
import { FleetgateError, toFleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import type { DeviceRecord } from '../../provisioning/registry/records.ts';
import type { Metrics } from '../metrics.ts';
import type { StatusChecker } from '../status/check.ts';
import type { AssertionMinter } from './assertion.ts';
import { deviceResponseHeaders, originRequestHeaders } from './headers.ts';

export interface HttpsDeps {
  checker: StatusChecker;
  minter: AssertionMinter;
  metrics: Metrics;
  log: Logger;
}

interface Admitted {
  device: DeviceRecord;
  identity: PeerIdentity;
  /** The minted assertion of this request: sent to the origin, never to the device, never logged. */
  token?: string;
}

declare module 'fastify' {
  interface FastifyRequest {
    fleetgate?: Admitted;
  }
}

/** The identity of a TLS connection is read once; its status is checked on every request. */
const identities = new WeakMap<TLSSocket, PeerIdentity>();

function admit(req: FastifyRequest, checker: StatusChecker): Admitted {
  const socket = req.raw.socket as TLSSocket;
  let identity = identities.get(socket);
  if (identity === undefined) {
    identity = identityFromSocket(socket);
    identities.set(socket, identity);
  }
  return checker.check(identity);
}

/** Longest prefix wins; a prefix matches whole path segments. */
export function findRoute(routes: readonly RouteConfig[], path: string): RouteConfig | undefined {
  let best: RouteConfig | undefined;
  for (const r of routes) {
    const p = r.prefix.endsWith('/') ? r.prefix.slice(0, -1) : r.prefix;
    if ((path === p || path.startsWith(`${p}/`) || p === '') && (best === undefined || r.prefix.length > best.prefix.length)) best = r;
  }
  return best;
}

function routeAllows(route: RouteConfig, device: DeviceRecord): boolean {
  return (route.allow?.types === undefined || route.allow.types.includes(device.type))
    && (route.allow?.fleets === undefined || route.allow.fleets.includes(device.fleet));
}

/** Counts body bytes as they stream to the origin; past the route's limit the upload is cut. */
function limitBody(limit: number): Transform {
  let seen = 0;
  return new Transform({
    transform(chunk: Buffer, _enc, cb) {
      seen += chunk.length;
      if (seen > limit) return cb(new FleetgateError('PAYLOAD_TOO_LARGE', `request body exceeds ${limit} bytes`));
      cb(null, chunk);
    },
  });
}

function originError(err: Error & { code?: string }): FleetgateError {
  const code = err.code ?? '';
  if (/TIMEOUT/i.test(code) || /timeout/i.test(err.message)) return new FleetgateError('ORIGIN_TIMEOUT', `origin did not answer in time (${code || err.message})`);
  if (err instanceof FleetgateError) return err;
  return new FleetgateError('ORIGIN_UNREACHABLE', `origin unreachable (${code || err.message})`);
}

/**
 * The HTTPS plane: certificate on every connection (TLS, no resumption), identity + status on
 * every request (keep-alive too), route policy, a JWT minted for this one request and handed
 * only to the origin, streaming both ways.
 */
export async function startHttpsPlane(config: HttpsConfig, tls: TlsOptions, deps: HttpsDeps): Promise<{ app: FastifyInstance; port: number }> {
  const { checker, minter, metrics, log } = deps;
  const app = Fastify({
    https: { ...tls, maxHeaderSize: config.maxHeaderBytes, noDelay: true } as TlsOptions,
    logger: false,
    keepAliveTimeout: config.keepAliveTimeoutMs,
    connectionTimeout: 0, // per-route timeouts bound the proxy; headersTimeout bounds slow clients
    requestTimeout: Math.max(...config.routes.map((r) => r.timeoutMs), 30_000) + 30_000,
    return503OnClosing: true,
  });
  app.server.headersTimeout = config.headersTimeoutMs;
  app.server.maxConnections = config.maxConnections;
  app.server.on('secureConnection', () => metrics.httpsHandshakes.inc());
  await app.register(replyFrom, { disableRequestLogging: true, undici: { connections: 128, pipelining: 1 } });

  // Bodies are never parsed or buffered here: they stream to the origin.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', (_req, payload, done) => done(null, payload));

  const respond = (req: FastifyRequest, reply: FastifyReply, err: unknown) => {
    const e = toFleetgateError(err);
    const admitted = req.fleetgate;
    metrics.httpsRequests.inc({ code: e.code });
    const line = { decision: 'refused', code: e.code, method: req.method, path: req.url.split('?')[0], deviceId: admitted?.device.id ?? (e.detail.deviceId as string | undefined), serial: admitted?.identity.serial ?? e.detail.serial, reason: e.message };
    if (e.code === 'INTERNAL') log.error({ ...line, err }, 'https request failed'); else log.warn(line, 'https request refused');
    // A device learns the code and the short public text; the log has the rest.
    if (!reply.sent) void reply.status(e.httpStatus).type('application/json').send({ error: { code: e.code, message: e.publicMessage } });
  };
  app.setErrorHandler((err, req, reply) => respond(req, reply, err));

  app.addHook('onRequest', async (req, reply) => {
    if (config.perRequestHandshake) void reply.header('connection', 'close');
    req.fleetgate = admit(req, checker); // throws the coded refusal → error handler
  });

  app.get('/v1/whoami', async (req) => {
    const { device, identity } = req.fleetgate!;
    metrics.httpsRequests.inc({ code: 'OK' });
    return {
      deviceId: device.id, type: device.type, fleet: device.fleet, status: device.status,
      serial: identity.serial, fingerprint: identity.fingerprint, notAfter: new Date(identity.notAfter).toISOString(),
    };
  });

  app.all('/*', async (req, reply) => {
    const admitted = req.fleetgate!;
    const path = req.url.split('?')[0] as string;
    const route = findRoute(config.routes, path);
    if (route === undefined) throw new FleetgateError('ROUTE_NOT_FOUND', `no route for ${path}`);
    if (!routeAllows(route, admitted.device)) throw new FleetgateError('ROUTE_DENIED', `${admitted.device.type} ${admitted.device.id} (fleet ${admitted.device.fleet}) may not call ${route.prefix}`);
    const declared = Number(req.headers['content-length'] ?? 0);
    if (declared > route.bodyLimit) throw new FleetgateError('PAYLOAD_TOO_LARGE', `request body of ${declared} bytes exceeds ${route.bodyLimit}`);
    const { token } = minter.mint(admitted.device, admitted.identity, route.audience, route.timeoutMs);
    admitted.token = token;
    if (req.body !== undefined) req.body = (req.body as NodeJS.ReadableStream).pipe(limitBody(route.bodyLimit));
    const upstreamPath = route.stripPrefix ? req.url.slice(route.prefix.replace(/\/$/, '').length) || '/' : req.url;
    return reply.from(route.origin + upstreamPath, {
      timeout: route.timeoutMs,
      rewriteRequestHeaders: (r, headers) => originRequestHeaders(headers, { assertionHeader: config.assertionHeader, token, clientIp: r.ip }),
      rewriteHeaders: (headers) => deviceResponseHeaders(headers, { assertionHeader: config.assertionHeader, token }),
      onResponse: (_r, rep, res) => {
        metrics.httpsRequests.inc({ code: 'OK' });
        log.info({ decision: 'proxied', route: route.prefix, status: res.statusCode, deviceId: admitted.device.id, serial: admitted.identity.serial }, 'https request proxied');
        void rep.send(res.stream);
      },
      onError: (rep, { error }) => respond(req, rep as unknown as FastifyReply, originError(error)),
    });
  });

  await app.listen({ host: config.host, port: config.port });
  const address = app.server.address();
  return { app, port: typeof address === 'object' && address !== null ? address.port : config.port };
}
