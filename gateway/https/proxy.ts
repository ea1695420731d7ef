import type { IncomingHttpHeaders } from 'node:http';
import { type Readable, Transform } from 'node:stream';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { type Dispatcher, Pool } from 'undici';
import type { HttpsConfig, RouteConfig } from '../../config/config.ts';
import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import type { Admitted } from '../../listeners/admission.ts';
import type { DeviceRecord } from '../../provisioning/registry/records.ts';
import { deviceResponseHeaders, originRequestHeaders } from './headers.ts';
import type { HttpsDeps } from './server.ts';

/** Origin responses up to this size (with a Content-Length) are sent to the device in one write. */
const SMALL_RESPONSE_BYTES = 16 * 1024;

/** Longest prefix wins; a prefix matches whole path segments. */
export function findRoute(routes: readonly RouteConfig[], path: string): RouteConfig | undefined {
  let best: RouteConfig | undefined;
  for (const r of routes) {
    const p = r.prefix.endsWith('/') ? r.prefix.slice(0, -1) : r.prefix;
    if (
      (path === p || path.startsWith(`${p}/`) || p === '') &&
      (best === undefined || r.prefix.length > best.prefix.length)
    )
      best = r;
  }
  return best;
}

function routeAllows(route: RouteConfig, device: DeviceRecord): boolean {
  return (
    (route.allow?.types === undefined || route.allow.types.includes(device.type)) &&
    (route.allow?.fleets === undefined || route.allow.fleets.includes(device.fleet))
  );
}

/**
 * Watches a request body as it streams to the origin: past the route's limit it is cut (413,
 * chunked bodies included), and so is a body that stalls for `idleMs` or, after that grace,
 * arrives slower than `minBytesPerSecond` on average (408): a device cannot hold an upload slot
 * by trickling bytes.
 */
function watchBody(
  limit: number,
  pace: { idleMs: number; minBytesPerSecond: number },
  cut: (e: FleetgateError) => void,
): Transform {
  let seen = 0;
  const started = Date.now();
  let last = started;
  const fail = (e: FleetgateError) => {
    clearInterval(timer);
    cut(e);
    body.destroy(e);
  };
  const timer = setInterval(
    () => {
      const now = Date.now();
      if (now - last > pace.idleMs)
        return fail(new FleetgateError('REQUEST_TIMEOUT', `request body stalled for ${now - last} ms`));
      const elapsed = (now - started) / 1000;
      if (now - started > pace.idleMs && seen / elapsed < pace.minBytesPerSecond) {
        fail(
          new FleetgateError(
            'REQUEST_TIMEOUT',
            `request body at ${Math.round(seen / elapsed)} B/s, below ${pace.minBytesPerSecond} B/s`,
          ),
        );
      }
    },
    Math.min(1_000, pace.idleMs),
  );
  timer.unref();
  const body = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      seen += chunk.length;
      last = Date.now();
      if (seen > limit) {
        const e = new FleetgateError('PAYLOAD_TOO_LARGE', `request body exceeds ${limit} bytes`);
        clearInterval(timer);
        cut(e);
        return cb(e);
      }
      cb(null, chunk);
    },
    flush(cb) {
      clearInterval(timer);
      cb();
    },
  });
  body.once('close', () => clearInterval(timer));
  return body;
}

function originError(err: Error & { code?: string }): FleetgateError {
  const code = err.code ?? '';
  if (/TIMEOUT/i.test(code) || /timeout/i.test(err.message))
    return new FleetgateError('ORIGIN_TIMEOUT', `origin did not answer in time (${code || err.message})`);
  if (err instanceof FleetgateError) return err;
  return new FleetgateError('ORIGIN_UNREACHABLE', `origin unreachable (${code || err.message})`);
}

/**
 * The plane's one route: `/v1/whoami` answered here, anything else matched to a route, checked
 * against its policy and limits, and proxied to its origin with an assertion minted for this
 * one request. One undici Pool per origin (keep-alive, no pipelining): requests and responses
 * stream through it with backpressure; nothing is buffered.
 */
export async function proxyRoutes(app: FastifyInstance, opts: { config: HttpsConfig; deps: HttpsDeps }): Promise<void> {
  const { config, deps } = opts;
  const pools = new Map<string, Pool>();
  const poolFor = (origin: string): Pool => {
    let pool = pools.get(origin);
    if (pool === undefined) pools.set(origin, (pool = new Pool(origin, { connections: 128, pipelining: 1 })));
    return pool;
  };
  app.addHook('onClose', async () => {
    await Promise.all([...pools.values()].map((p) => p.destroy()));
  });
  app.all('/*', async (req, reply) => {
    const state = req.fleetgate!;
    const { path } = state.target;
    if (path === '/v1/whoami') {
      deps.metrics.httpsRequests.inc({ code: 'OK' });
      return whoami(state.device, state);
    }
    const route = authorizedRoute(config, req, state);
    const { token } = deps.minter.mint(state.device, state.identity, route.audience, route.timeoutMs);
    state.token = token;
    if (req.body !== undefined) {
      const pace = { idleMs: config.bodyIdleTimeoutMs, minBytesPerSecond: config.minBodyBytesPerSecond };
      const watch = watchBody(route.bodyLimit, pace, (e) => {
        state.bodyError = e;
      });
      req.body = (req.body as NodeJS.ReadableStream).pipe(watch);
    }
    const res = await forward(poolFor(route.origin), req, route, config.assertionHeader);
    deps.metrics.httpsRequests.inc({ code: 'OK' });
    const line = {
      decision: 'proxied',
      route: route.prefix,
      status: res.statusCode,
      deviceId: state.device.id,
      serial: state.identity.serial,
    };
    deps.log.info(line, 'https request proxied');
    return answer(req, reply, res, config.assertionHeader);
  });
}

/** The route for this path, if the device may call it and the declared body fits. */
function authorizedRoute(config: HttpsConfig, req: FastifyRequest, state: Admitted & { target: { path: string } }) {
  const path = state.target.path;
  const route = findRoute(config.routes, path);
  if (route === undefined) throw new FleetgateError('ROUTE_NOT_FOUND', `no route for ${path}`);
  if (!routeAllows(route, state.device))
    throw new FleetgateError(
      'ROUTE_DENIED',
      `${state.device.type} ${state.device.id} (fleet ${state.device.fleet}) may not call ${route.prefix}`,
    );
  const declared = Number(req.headers['content-length'] ?? 0);
  if (declared > route.bodyLimit)
    throw new FleetgateError('PAYLOAD_TOO_LARGE', `request body of ${declared} bytes exceeds ${route.bodyLimit}`);
  return route;
}

/** The request to the origin: its URL built from the normalised path, never from the raw request line. */
async function forward(
  pool: Pool,
  req: FastifyRequest,
  route: RouteConfig,
  assertionHeader: string,
): Promise<Dispatcher.ResponseData> {
  const state = req.fleetgate!;
  const { path, query } = state.target;
  const upstreamPath = route.stripPrefix ? path.slice(route.prefix.replace(/\/$/, '').length) || '/' : path;
  const headers = originRequestHeaders(req.headers, { assertionHeader, token: state.token!, clientIp: req.ip });
  try {
    return await pool.request({
      path: upstreamPath + (query === '' ? '' : `?${query}`),
      method: req.method as Dispatcher.HttpMethod,
      headers: headers as Record<string, string | string[]>,
      body: req.body === undefined ? null : (req.body as Readable),
      headersTimeout: route.timeoutMs,
      bodyTimeout: route.timeoutMs,
    });
  } catch (err) {
    throw state.bodyError ?? originError(err as Error & { code?: string });
  }
}

/** The origin's answer to the device, without the assertion or anything naming it. */
async function answer(req: FastifyRequest, reply: FastifyReply, res: Dispatcher.ResponseData, assertionHeader: string) {
  void reply.code(res.statusCode);
  const token = req.fleetgate!.token!;
  const headers = deviceResponseHeaders(res.headers as IncomingHttpHeaders, { assertionHeader, token });
  for (const [name, value] of Object.entries(headers)) {
    if (value !== undefined) void reply.header(name, value);
  }
  // A short response with a declared length is read whole and sent in one write with its
  // headers (one TLS record, one syscall, instead of headers and body apart); anything longer,
  // or of unknown length, streams with backpressure.
  const length = Number(res.headers['content-length']);
  if (Number.isInteger(length) && length >= 0 && length <= SMALL_RESPONSE_BYTES) {
    return reply.send(Buffer.from(await res.body.arrayBuffer()));
  }
  // A device that goes away stops the origin's response too.
  req.raw.once('close', () => {
    if (!res.body.readableEnded) res.body.destroy();
  });
  return reply.send(res.body);
}

function whoami(device: DeviceRecord, { identity }: Admitted) {
  return {
    deviceId: device.id,
    type: device.type,
    fleet: device.fleet,
    status: device.status,
    serial: identity.serial,
    fingerprint: identity.fingerprint,
    notAfter: new Date(identity.notAfter).toISOString(),
  };
}
