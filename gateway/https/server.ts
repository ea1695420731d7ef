import type { IncomingHttpHeaders } from 'node:http';
import { type Readable, Transform } from 'node:stream';
import type { TLSSocket, TlsOptions } from 'node:tls';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import { type Dispatcher, Pool } from 'undici';
import type { HttpsConfig, RouteConfig } from '../../config/config.ts';
import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import { type Admitted, admitAsync, socketIdentity } from '../../listeners/admission.ts';
import type { ConnectionGuard } from '../../listeners/guard.ts';
import { onTlsClientError } from '../../listeners/handshake-errors.ts';
import { frameworkError, httpError, logFields, sendError } from '../../listeners/http-errors.ts';
import { listenApp } from '../../listeners/listen.ts';
import type { ThrottledLog } from '../../listeners/throttled-log.ts';
import type { DeviceRecord } from '../../provisioning/registry/records.ts';
import type { Metrics } from '../metrics.ts';
import type { Session, SessionTable } from '../sessions.ts';
import type { RegistryLink } from '../status/registry-link.ts';
import type { AssertionMinter } from './assertion.ts';
import { deviceResponseHeaders, originRequestHeaders } from './headers.ts';
import { type NormalizedTarget, normalizeTarget } from './path.ts';

export interface HttpsDeps {
  registry: RegistryLink;
  /** Live sessions: each HTTPS connection is one, kept current (and cut) by the status watcher. */
  sessions: SessionTable;
  minter: AssertionMinter;
  guard: ConnectionGuard;
  refusals: ThrottledLog;
  metrics: Metrics;
  log: Logger;
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

/** Origin responses up to this size (with a Content-Length) are sent to the device in one write. */
const SMALL_RESPONSE_BYTES = 16 * 1024;
/**
 * Open connections per device on the HTTPS plane. A connection past the device's cap is marked
 * at its handshake and each of its requests is refused (429 CONNECTION_LIMIT, then closed): one
 * device certificate cannot hold the plane's connections.
 */
class ConnectionsPerDevice {
  readonly #counts = new Map<string, number>();
  readonly #over = new WeakSet<TLSSocket>();
  readonly #cap: number;

  constructor(cap: number) {
    this.#cap = cap;
  }

  opened(socket: TLSSocket): void {
    let deviceId: string;
    try {
      deviceId = socketIdentity(socket).deviceId;
    } catch {
      return; // refused at its first request, with the reason
    }
    const n = (this.#counts.get(deviceId) ?? 0) + 1;
    this.#counts.set(deviceId, n);
    if (n > this.#cap) this.#over.add(socket);
    socket.once('close', () => {
      const left = (this.#counts.get(deviceId) ?? 1) - 1;
      if (left <= 0) this.#counts.delete(deviceId);
      else this.#counts.set(deviceId, left);
    });
  }

  check(socket: TLSSocket): void {
    if (this.#over.has(socket))
      throw new FleetgateError('CONNECTION_LIMIT', `more than ${this.#cap} connections from this device`);
  }
}

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
 * The HTTPS plane: certificate on every connection (TLS, no resumption), identity + status on
 * every request (keep-alive too), one normalised path for routing and the origin, route policy,
 * a JWT minted for this one request and handed only to the origin, streaming both ways.
 */
export async function startHttpsPlane(
  config: HttpsConfig,
  tls: TlsOptions,
  deps: HttpsDeps,
): Promise<{ app: FastifyInstance; port: number }> {
  const { registry, minter, metrics, log } = deps;
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
  app.server.on(
    'tlsClientError',
    onTlsClientError(
      deps.refusals,
      (code) => metrics.handshakes.inc({ transport: 'https', outcome: 'tls_failed', code }),
      { transport: 'https' },
    ),
  );
  deps.guard.attach(app.server, 'https');
  const perDevice = new ConnectionsPerDevice(config.maxConnectionsPerDevice);
  app.server.on('secureConnection', (socket: TLSSocket) => {
    metrics.httpsHandshakes.inc();
    perDevice.opened(socket);
  });
  // One undici Pool per origin (keep-alive, no pipelining): requests and responses stream
  // through it with backpressure; nothing is buffered.
  const pools = new Map<string, Pool>();
  const poolFor = (origin: string): Pool => {
    let pool = pools.get(origin);
    if (pool === undefined) pools.set(origin, (pool = new Pool(origin, { connections: 128, pipelining: 1 })));
    return pool;
  };
  app.addHook('onClose', async () => {
    await Promise.all([...pools.values()].map((p) => p.destroy()));
  });

  // Bodies are never parsed or buffered here: they stream to the origin.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', (_req, payload, done) => done(null, payload));

  const respond = (req: FastifyRequest, reply: FastifyReply, err: unknown) => {
    const e = httpError(err);
    const state = req.fleetgate;
    metrics.httpsRequests.inc({ code: e.code });
    const line = {
      decision: 'refused',
      method: req.method,
      path: state?.target.path ?? req.url.split('?')[0]?.slice(0, 200),
      deviceId: state?.device.id ?? e.detail.deviceId,
      serial: state?.identity.serial ?? e.detail.serial,
      ...logFields(e),
    };
    metrics.refusedDevices.record(line.deviceId as string | undefined, line.serial as string | undefined, e.code);
    if (e.code === 'INTERNAL') log.error({ ...line, err }, 'https request failed');
    else log.warn(line, 'https request refused');
    // After a cut body or a connection over the cap, the connection is not reused.
    if (e.code === 'CONNECTION_LIMIT' || e.code === 'REQUEST_TIMEOUT' || e.code === 'PAYLOAD_TOO_LARGE')
      void reply.header('connection', 'close');
    // A device learns the code and the short public text; the log has the rest.
    if (!reply.sent) void sendError(reply, e);
  };
  app.setErrorHandler((err, req, reply) => respond(req, reply, err));

  app.addHook('onRequest', async (req, reply) => {
    if (config.perRequestHandshake) void reply.header('connection', 'close');
    const socket = req.raw.socket as TLSSocket;
    perDevice.check(socket);
    const admitted = await admitRequest(socket); // throws the coded refusal → error handler
    req.fleetgate = { ...admitted, target: normalizeTarget(req.url) };
  });

  /**
   * Every request is checked. The first request of a connection asks the registry (identity,
   * then status: from the gateway's in-memory view when this certificate was admitted before,
   * else from the registry thread) and registers the connection as a live session; the following
   * ones are checked against that session's in-memory state, which the status watcher keeps
   * current from the registry's feed (as for MQTT packets): a revocation, suspension or
   * denylisting cuts the connection within the feed interval (`gateway.statusPoll`, 20 ms) plus
   * one status check, and every later request on it is refused. No registry read per keep-alive request.
   */
  const liveSessions = new WeakMap<TLSSocket, Session>();
  const admitting = new WeakMap<TLSSocket, Promise<Session>>();
  async function admitRequest(socket: TLSSocket): Promise<Admitted> {
    const live = liveSessions.get(socket) ?? (await admitting.get(socket));
    if (live !== undefined) {
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
    const pending = admitAsync(socket, registry).then((admitted) => {
      const session = deps.sessions.create({
        identity: admitted.identity,
        device: admitted.device,
        transport: 'https',
        remoteAddress: socket.remoteAddress ?? 'unknown',
        scope: { publish: [], subscribe: [] },
        close: () => socket.destroy(),
      });
      if (socket.destroyed) return session; // gone while the registry answered: nothing to watch
      liveSessions.set(socket, session);
      deps.sessions.add(session);
      socket.once('close', () => deps.sessions.remove(session));
      return session;
    });
    admitting.set(socket, pending);
    try {
      const session = await pending;
      return { device: session.device, identity: session.identity };
    } finally {
      admitting.delete(socket);
    }
  }

  app.all('/*', async (req, reply) => {
    const state = req.fleetgate!;
    const { path, query } = state.target;
    if (path === '/v1/whoami') return whoami(state.device, state);
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
    const { token } = minter.mint(state.device, state.identity, route.audience, route.timeoutMs);
    state.token = token;
    if (req.body !== undefined) {
      req.body = (req.body as NodeJS.ReadableStream).pipe(
        watchBody(
          route.bodyLimit,
          { idleMs: config.bodyIdleTimeoutMs, minBytesPerSecond: config.minBodyBytesPerSecond },
          (e) => {
            state.bodyError = e;
          },
        ),
      );
    }
    // The upstream URL is built from the normalised path, never from the raw request line.
    const upstreamPath = route.stripPrefix ? path.slice(route.prefix.replace(/\/$/, '').length) || '/' : path;
    const headers = originRequestHeaders(req.headers, {
      assertionHeader: config.assertionHeader,
      token,
      clientIp: req.ip,
    });
    let res: Dispatcher.ResponseData;
    try {
      res = await poolFor(route.origin).request({
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
    metrics.httpsRequests.inc({ code: 'OK' });
    log.info(
      {
        decision: 'proxied',
        route: route.prefix,
        status: res.statusCode,
        deviceId: state.device.id,
        serial: state.identity.serial,
      },
      'https request proxied',
    );
    void reply.code(res.statusCode);
    for (const [name, value] of Object.entries(
      deviceResponseHeaders(res.headers as IncomingHttpHeaders, { assertionHeader: config.assertionHeader, token }),
    )) {
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
  });

  function whoami(device: DeviceRecord, { identity }: Admitted) {
    metrics.httpsRequests.inc({ code: 'OK' });
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

  return {
    app,
    port: await listenApp(app, { host: config.host, port: config.port, setting: 'https.port (FLEETGATE_HTTPS_PORT)' }),
  };
}
