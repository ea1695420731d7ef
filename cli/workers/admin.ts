import { readFileSync } from 'node:fs';
import { request } from 'node:https';
import type { TLSSocket } from 'node:tls';
import type { Logger } from 'pino';
import type { FleetgateConfig } from '../../config/config.ts';
import type { DataPaths } from '../../config/paths.ts';
import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import { adminFastify } from '../../gateway/admin/server.ts';
import { httpError, sendError } from '../../listeners/http-errors.ts';
import { listenApp } from '../../listeners/listen.ts';
import { serverTlsOptions } from '../../listeners/tls.ts';
import type { Supervisor, WorkerView } from './supervisor.ts';

/** How long the supervisor waits for one worker's answer. */
const ASK_TIMEOUT_MS = 3_000;

interface Answer {
  status: number;
  body: string;
  headers: Record<string, string | string[] | undefined>;
}

/**
 * The supervisor's admin listener (`gateway.adminPort`, as a single gateway's): `/healthz` and
 * `/metrics` cover every worker — each worker's own admin listener (loopback, a port of its own) is
 * asked and the answers combined — and everything else (`/.well-known/jwks.json`, `/v1`) is
 * passed to a running worker, the operator's certificate with it (checked there: `gateway/admin/server.ts`).
 */
export async function startWorkersAdmin(
  config: FleetgateConfig,
  paths: DataPaths,
  supervisor: Supervisor,
  log: Logger,
  token: string,
): Promise<{ port: number; close(): Promise<void> }> {
  const g = config.gateway;
  const app = adminFastify(
    g,
    serverTlsOptions(paths, { handshakeTimeoutMs: g.handshakeTimeoutMs, clientCert: 'optional' }),
  );
  const rootPem = readFileSync(paths.rootCert, 'utf8');
  const ask = (w: WorkerView, method: string, path: string, headers: Record<string, string> = {}, body?: Buffer) =>
    askWorker(rootPem, w, method, path, headers, body);
  app.setErrorHandler((err, req, reply) => {
    const e = httpError(err);
    if (e.code === 'INTERNAL') log.error({ err, url: req.url }, 'admin request failed');
    void sendError(reply, e);
  });
  app.get('/healthz', async (_req, reply) => {
    const h = await health(supervisor, ask);
    return reply.status(h.status === 'unavailable' ? 503 : 200).send(h);
  });
  app.get('/metrics', async (_req, reply) => {
    const texts = await Promise.all(
      supervisor.workers.map(async (w) => {
        const a = w.state === 'running' ? await ask(w, 'GET', '/metrics').catch(() => undefined) : undefined;
        return { worker: w.name, text: a?.status === 200 ? a.body : '' };
      }),
    );
    return reply.type('text/plain; version=0.0.4; charset=utf-8').send(mergeMetrics(texts, supervisor.workers));
  });
  app.addContentTypeParser('*', { parseAs: 'buffer' }, (_req, body, done) => done(null, body));
  app.all('/*', async (req, reply) => {
    const running = supervisor.workers.filter((w) => w.state === 'running');
    const w = running[Math.floor(Math.random() * running.length)];
    if (w === undefined) throw new FleetgateError('CLUSTER_UNAVAILABLE', 'no gateway worker is running');
    const headers: Record<string, string> = { 'x-fleetgate-supervisor': token };
    const peer = (req.raw.socket as TLSSocket).getPeerX509Certificate?.();
    if (peer !== undefined && (req.raw.socket as TLSSocket).authorized)
      headers['x-fleetgate-peer'] = peer.raw.toString('base64');
    for (const h of ['content-type', 'accept']) {
      const v = req.headers[h];
      if (typeof v === 'string') headers[h] = v;
    }
    const body = Buffer.isBuffer(req.body) ? req.body : undefined;
    const a = await ask(w, req.method, req.url, headers, body);
    const type = a.headers['content-type'];
    if (typeof type === 'string') reply.type(type);
    return reply.status(a.status).send(a.body);
  });
  const port = await listenApp(app, {
    host: g.adminHost,
    port: g.adminPort,
    setting: 'gateway.adminPort (FLEETGATE_ADMIN_PORT)',
  });
  return { port, close: () => app.close() };
}

/** Every worker's `/healthz`: ok when all are, degraded while some are (the others still serve), else unavailable. */
async function health(
  supervisor: Supervisor,
  ask: (w: WorkerView, method: string, path: string) => Promise<Answer>,
): Promise<Record<string, unknown> & { status: string }> {
  const workers = await Promise.all(
    supervisor.workers.map(async (w) => {
      // What another process answers is input: anything but its JSON counts as unavailable.
      const { status, sessions } =
        w.state === 'running'
          ? parseHealth((await ask(w, 'GET', '/healthz').catch(() => undefined))?.body)
          : { status: w.state, sessions: 0 };
      return { worker: w.name, pid: w.pid, status, sessions, restarts: w.restarts };
    }),
  );
  const ok = workers.filter((w) => w.status === 'ok').length;
  return {
    status: ok === workers.length ? 'ok' : ok > 0 ? 'degraded' : 'unavailable',
    sessions: workers.reduce((n, w) => n + w.sessions, 0),
    workers,
  };
}

/** A worker's `/healthz` answer: its status and session count; unavailable when it is not that. */
function parseHealth(body: string | undefined): { status: string; sessions: number } {
  try {
    const b = JSON.parse(body ?? '') as { status?: unknown; sessions?: unknown };
    return {
      status: typeof b.status === 'string' ? b.status : 'unavailable',
      sessions: Number.isSafeInteger(b.sessions) ? (b.sessions as number) : 0,
    };
  } catch {
    return { status: 'unavailable', sessions: 0 };
  }
}

/**
 * The workers' Prometheus texts as one: each metric family once (its HELP and TYPE), every worker's
 * samples in it with a `worker` label; then the supervisor's own (workers by state, restarts).
 */
export function mergeMetrics(texts: { worker: string; text: string }[], workers: readonly WorkerView[]): string {
  const families = new Map<string, { head: string[]; samples: string[] }>();
  for (const { worker, text } of texts) {
    let family: { head: string[]; samples: string[] } | undefined;
    for (const line of text.split('\n')) {
      if (line === '') continue;
      const meta = /^# (HELP|TYPE) (\S+)/.exec(line);
      if (meta !== null) {
        const name = meta[2] as string;
        family = families.get(name);
        if (family === undefined) {
          family = { head: [], samples: [] };
          families.set(name, family);
        }
        if (family.head.length < 2 && !family.head.some((h) => h.startsWith(`# ${meta[1]} `))) family.head.push(line);
        continue;
      }
      if (line.startsWith('#') || family === undefined) continue;
      const brace = line.indexOf('{');
      const space = line.indexOf(' ');
      const label = `worker="${worker}"`;
      family.samples.push(
        brace !== -1 && brace < space
          ? `${line.slice(0, brace + 1)}${label}${line[brace + 1] === '}' ? '' : ','}${line.slice(brace + 1)}`
          : `${line.slice(0, space)}{${label}}${line.slice(space)}`,
      );
    }
  }
  const out: string[] = [];
  for (const { head, samples } of families.values()) out.push(...head, ...samples);
  out.push('# HELP fleetgate_workers Gateway workers of this supervisor, by state.', '# TYPE fleetgate_workers gauge');
  for (const state of ['running', 'starting', 'restarting', 'stopped'])
    out.push(`fleetgate_workers{state="${state}"} ${workers.filter((w) => w.state === state).length}`);
  out.push(
    '# HELP fleetgate_worker_restarts_total Gateway workers started again after they died.',
    '# TYPE fleetgate_worker_restarts_total counter',
    ...workers.map((w) => `fleetgate_worker_restarts_total{worker="${w.name}"} ${w.restarts}`),
  );
  return `${out.join('\n')}\n`;
}

/** One request to a worker's admin listener (loopback; its certificate checked against the fleet's root). */
function askWorker(
  rootPem: string,
  w: WorkerView,
  method: string,
  path: string,
  headers: Record<string, string>,
  body?: Buffer,
): Promise<Answer> {
  return new Promise((resolve, reject) => {
    if (w.adminPort === undefined)
      return reject(new FleetgateError('CLUSTER_UNAVAILABLE', `worker ${w.name} is not running`));
    const req = request(
      {
        host: '127.0.0.1',
        port: w.adminPort,
        method,
        path,
        headers,
        ca: rootPem,
        timeout: ASK_TIMEOUT_MS,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () =>
          resolve({
            status: res.statusCode ?? 502,
            body: Buffer.concat(chunks).toString('utf8'),
            headers: res.headers,
          }),
        );
        res.on('error', reject);
      },
    );
    req.on('timeout', () =>
      req.destroy(new FleetgateError('CLUSTER_UNAVAILABLE', `worker ${w.name} did not answer in 3 s`)),
    );
    req.on('error', reject);
    req.end(body);
  });
}
