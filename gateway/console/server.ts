import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import type { TLSSocket, TlsOptions } from 'node:tls';
import Fastify, { type FastifyReply, type FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import type { FleetgateConfig } from '../../config/config.ts';
import { parseDuration } from '../../config/duration.ts';
import { assertDeviceId } from '../../firmware-sdk/protocol/device-id.ts';
import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import { admitAsync } from '../../listeners/admission.ts';
import type { ConnectionGuard } from '../../listeners/guard.ts';
import { onTlsClientError } from '../../listeners/handshake-errors.ts';
import { httpError, logFields } from '../../listeners/http-errors.ts';
import { bindError } from '../../listeners/listen.ts';
import type { ThrottledLog } from '../../listeners/throttled-log.ts';
import { parseRevocationReason, revocationReasonName } from '../../provisioning/registry/reasons.ts';
import type { AuditRecord, DenyRecord, DeviceRecord } from '../../provisioning/registry/records.ts';
import type { FleetSession, FleetSessions } from '../cluster/fleet-sessions.ts';
import type { Metrics } from '../metrics.ts';
import type { SessionTable } from '../sessions.ts';
import type { RegistryLink } from '../status/registry-link.ts';
import { type Html, html } from './html.ts';
import { LiveSampler } from './live.ts';
import {
  auditPage,
  type ConfirmSpec,
  certificatesPage,
  confirmPage,
  type DeviceView,
  denylistPage,
  devicePage,
  deviceState,
  devicesPage,
  errorPage,
  overviewPage,
  reasonSelect,
  resultPage,
  tokenResult,
  type Viewer,
} from './pages.ts';
import type { Page } from './queries.ts';
import { ConsoleStore } from './store.ts';

export interface ConsoleDeps {
  registry: RegistryLink;
  sessions: SessionTable;
  metrics: Metrics;
  guard: ConnectionGuard;
  refusals: ThrottledLog;
  log: Logger;
  /** The registry file (the console reads and acts on its own thread). */
  registryFile: string;
  /** Live sessions and kicks, this node's or (in a cluster) every node's. */
  fleet: FleetSessions;
}

declare module 'fastify' {
  interface FastifyRequest {
    viewer?: Viewer;
  }
}

const requireFrom = createRequire(import.meta.url);
const STATIC: Record<string, { type: string; body: Buffer }> = {
  'uPlot.iife.min.js': {
    type: 'text/javascript; charset=utf-8',
    body: readFileSync(requireFrom.resolve('uplot/dist/uPlot.iife.min.js')),
  },
  'uPlot.min.css': {
    type: 'text/css; charset=utf-8',
    body: readFileSync(requireFrom.resolve('uplot/dist/uPlot.min.css')),
  },
  'console.js': {
    type: 'text/javascript; charset=utf-8',
    body: readFileSync(new URL('./static/console.js', import.meta.url)),
  },
  'console.css': {
    type: 'text/css; charset=utf-8',
    body: readFileSync(new URL('./static/console.css', import.meta.url)),
  },
};

/**
 * Every response: nothing cached (pages show live state and one-time tokens), no framing
 * (clickjacking), scripts and styles from this origin only, forms post to this origin only.
 */
const SECURITY_HEADERS: Record<string, string> = {
  'content-security-policy':
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
  'x-frame-options': 'DENY',
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'same-origin', // not no-referrer: with it the browser sends `Origin: null` on the console's own form posts
  'cache-control': 'no-store',
  'cross-origin-opener-policy': 'same-origin',
  'cross-origin-resource-policy': 'same-origin',
  'strict-transport-security': 'max-age=31536000',
};

const EXPORT_MAX_ROWS = 1_000_000;

/**
 * The operator console: server-rendered pages on their own mTLS listener (a client certificate
 * is required by TLS itself: a browser without one never gets a page), for `operator` (look and
 * act) and `auditor` (look) certificates, checked against the registry on every request like any
 * device. No password, no cookie: who you are is the certificate on this connection.
 *
 * Actions are POSTs that pass three checks: the operator role; the browser's own word that the
 * request comes from this origin (`Sec-Fetch-Site`, `Origin`); and a token bound to the
 * operator's certificate and the action (HMAC with a key made at start), which a page on another
 * origin cannot read. They run the same registry operations as the CLI, with the operator's
 * certificate identity as the audit actor.
 */
export async function startConsole(config: FleetgateConfig, tls: TlsOptions, deps: ConsoleDeps) {
  const g = config.gateway;
  const store = new ConsoleStore(deps.registryFile, 10_000);
  const sampler = new LiveSampler(deps.metrics, deps.sessions, 2, deps.fleet.others);
  const csrfKey = randomBytes(32);
  const app = Fastify({
    https: tls,
    logger: false,
    requestTimeout: g.adminRequestTimeoutMs,
    keepAliveTimeout: 5_000,
    bodyLimit: 16 * 1024,
    forceCloseConnections: true, // live streams end with the gateway
  });
  app.server.on(
    'tlsClientError',
    onTlsClientError(
      deps.refusals,
      (code) => deps.metrics.handshakes.inc({ transport: 'console', outcome: 'tls_failed', code }),
      { transport: 'console' },
    ),
  );
  deps.guard.attach(app.server, 'console');

  app.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string' }, (_req, body, done) => {
    done(null, Object.fromEntries(new URLSearchParams(body as string)));
  });

  const send = (reply: FastifyReply, page: Html, status = 200) =>
    reply.status(status).headers(SECURITY_HEADERS).type('text/html; charset=utf-8').send(page.value);

  app.setErrorHandler((err, req, reply) => {
    const e = httpError(err);
    if (e.code === 'INTERNAL') deps.log.error({ err, url: req.url }, 'console request failed');
    else
      deps.log.warn(
        {
          decision: 'refused',
          surface: 'console',
          url: req.url.split('?')[0],
          viewer: req.viewer?.id,
          ...logFields(e),
        },
        'console request refused',
      );
    // Before the caller is known to be an operator or auditor, only the public text (no "x is a sensor").
    const message =
      e.code === 'INTERNAL'
        ? 'internal error (see the gateway log)'
        : req.viewer === undefined
          ? e.publicMessage
          : e.message;
    void send(reply, errorPage(e.httpStatus, e.code, message), e.httpStatus);
  });
  app.setNotFoundHandler(
    (req, reply) =>
      void send(reply, errorPage(404, 'ROUTE_NOT_FOUND', `no console page ${req.url.split('?')[0]}`), 404),
  );

  // Who is asking, on every request: the certificate on this connection, its status now.
  app.addHook('onRequest', async (req) => {
    const socket = req.raw.socket as TLSSocket;
    const { device, identity } = await admitAsync(socket, deps.registry, { types: ['operator', 'auditor'] });
    req.viewer = {
      id: device.id,
      role: device.type === 'operator' ? 'operator' : 'auditor',
      fingerprint: identity.fingerprint,
    };
  });

  const viewer = (req: FastifyRequest) => req.viewer!;
  const actor = (v: Viewer) => `operator:${v.id}`;
  const csrf = (v: Viewer, action: string) =>
    createHmac('sha256', csrfKey).update(`${v.fingerprint}|${action}`).digest('base64url');
  const mustAct = (v: Viewer) => {
    if (v.role !== 'operator')
      throw new FleetgateError('NOT_AUTHORIZED', `${v.id} is an auditor: the console is read-only for auditors`);
  };
  const str = (q: unknown, name: string): string | undefined => {
    const v = (q as Record<string, unknown>)[name];
    return typeof v === 'string' && v !== '' ? v.slice(0, 512) : undefined;
  };
  const live = (id: string) => deps.sessions.ofDevice(id).length;
  /** A device's live sessions on every node that answers (this node's alone while the NATS link is down). */
  const sessionsOf = async (id: string): Promise<FleetSession[]> =>
    (await deps.fleet.list({ deviceId: id, localOnFailure: true })).connections;

  app.get<{ Params: { file: string } }>('/static/:file', async (req, reply) => {
    const f = STATIC[req.params.file];
    if (f === undefined) throw new FleetgateError('ROUTE_NOT_FOUND', `no static file ${req.params.file}`);
    return reply
      .headers({ ...SECURITY_HEADERS, 'cache-control': 'private, max-age=3600' })
      .type(f.type)
      .send(f.body);
  });

  app.get('/', async (req, reply) => {
    const [snap, counts] = await Promise.all([
      sampler.sample(),
      store.query<{ byStatus: Record<string, number>; byType: Record<string, number> }>({ name: 'counts' }),
    ]);
    return send(reply, overviewPage(viewer(req), snap, counts));
  });

  // Server-sent events: the history, then a sample every interval, while the operator's certificate stays valid.
  app.get('/events', (req, reply) => {
    const socket = req.raw.socket as TLSSocket;
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, {
      ...SECURITY_HEADERS,
      'content-type': 'text/event-stream; charset=utf-8',
      connection: 'keep-alive',
    });
    res.write(`retry: 5000\nevent: history\ndata: ${JSON.stringify(sampler.history())}\n\n`);
    const stop = sampler.watch((snap) => {
      admitAsync(socket, deps.registry, { types: ['operator', 'auditor'] }).then(
        () => res.write(`data: ${JSON.stringify(snap)}\n\n`),
        (err: unknown) => {
          res.write(`event: refused\ndata: ${JSON.stringify({ code: httpError(err).code })}\n\n`);
          res.end();
        },
      );
    });
    res.on('close', stop);
  });

  app.get('/devices', async (req, reply) => {
    const q = req.query;
    const filter = { q: str(q, 'q'), type: str(q, 'type'), fleet: str(q, 'fleet'), status: str(q, 'status') };
    const page = await store.query<Page<DeviceRecord>>({
      name: 'devices',
      filter: { ...filter, after: str(q, 'after'), before: str(q, 'before') },
    });
    return send(reply, devicesPage(viewer(req), filter, page, live));
  });

  app.get<{ Params: { id: string } }>('/devices/:id', async (req, reply) => {
    const id = assertDeviceId(req.params.id);
    const view = await store.query<DeviceView>({ name: 'device', id });
    return send(reply, devicePage(viewer(req), view, await sessionsOf(id)));
  });

  app.get('/certificates', async (req, reply) => {
    const view = str(req.query, 'view') ?? 'expiring';
    const v = viewer(req);
    if (view === 'revoked') {
      return send(
        reply,
        certificatesPage(v, view, {
          revoked: await store.query({ name: 'revoked', before: str(req.query, 'before') }),
        }),
      );
    }
    if (view === 'findings') {
      const findings = await store.query<Parameters<typeof certificatesPage>[2]['findings']>({ name: 'findings' });
      const { refused, nodes } = await deps.fleet.refused(deps.metrics.refusedDevices.list(100));
      return send(
        reply,
        certificatesPage(v, view, {
          findings: { ...findings!, refused, ...(nodes !== undefined && { refusedNodes: nodes }) },
        }),
      );
    }
    const withinDays = Math.min(Math.max(Number(str(req.query, 'within') ?? 30) || 30, 1), 3650);
    const page = await store.query<{ rows: Record<string, unknown>[]; next: string | null }>({
      name: 'expiring',
      withinMs: withinDays * 86_400_000,
      after: str(req.query, 'after'),
    });
    return send(reply, certificatesPage(v, 'expiring', { expiring: { ...page, withinDays } }));
  });

  app.get('/denylist', async (req, reply) => {
    const kind = str(req.query, 'kind');
    return send(
      reply,
      denylistPage(
        viewer(req),
        kind,
        await store.query<Page<DenyRecord>>({ name: 'denylist', filter: { kind, after: str(req.query, 'after') } }),
      ),
    );
  });

  const auditFilter = (q: unknown) => ({ device: str(q, 'device'), actor: str(q, 'actor'), action: str(q, 'action') });
  app.get('/audit', async (req, reply) => {
    const filter = auditFilter(req.query);
    const before = str(req.query, 'before');
    const page = await store.query<Page<AuditRecord>>({
      name: 'audit',
      filter: { ...filter, ...(before !== undefined && { before: Number(before) || 0 }) },
    });
    return send(reply, auditPage(viewer(req), filter, page));
  });

  /** Streams every row of a paged query as JSON lines, page by page (memory stays one page). */
  async function exportLines<T>(
    reply: FastifyReply,
    name: string,
    pageOf: (cursor: string | undefined) => Promise<Page<T>>,
  ): Promise<void> {
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, {
      ...SECURITY_HEADERS,
      'content-type': 'application/x-ndjson; charset=utf-8',
      'content-disposition': `attachment; filename="fleetgate-${name}.jsonl"`,
    });
    let cursor: string | undefined;
    let rows = 0;
    try {
      do {
        const page = await pageOf(cursor);
        for (const row of page.rows) {
          if (!res.write(`${JSON.stringify(row)}\n`)) await new Promise((r) => res.once('drain', r));
        }
        rows += page.rows.length;
        cursor = page.next ?? undefined;
      } while (cursor !== undefined && rows < EXPORT_MAX_ROWS && !res.destroyed);
      res.end();
    } catch (err) {
      deps.log.error({ err: (err as Error).message, export: name }, 'console export failed part way');
      res.destroy(); // the client sees a truncated download, never a short file that looks complete
    }
  }
  app.get('/audit.jsonl', (req, reply) => {
    const filter = auditFilter(req.query);
    return exportLines(reply, 'audit', (c) =>
      store.query<Page<AuditRecord>>({
        name: 'audit',
        filter: { ...filter, limit: 500, ...(c !== undefined && { before: Number(c) }) },
      }),
    );
  });
  app.get('/denylist.jsonl', (req, reply) => {
    const kind = str(req.query, 'kind');
    return exportLines(reply, 'denylist', (c) =>
      store.query<Page<DenyRecord>>({ name: 'denylist', filter: { kind, limit: 500, after: c } }),
    );
  });

  // ------------------------------------------------------------ actions

  /** What an action will do, the fields it asks for, and where "cancel" goes. */
  async function spec(action: string, q: unknown): Promise<{ spec: ConfirmSpec; back: string }> {
    const id = str(q, 'id');
    const deviceBack = id === undefined ? '/devices' : `/devices/${encodeURIComponent(id)}`;
    const needId = () => assertDeviceId(id ?? '');
    const n = id === undefined ? 0 : (await sessionsOf(id)).length;
    const where = deps.fleet.clustered ? 'in the cluster' : 'on this gateway';
    const sessionsText =
      n === 0 ? 'live sessions, if any, are' : n === 1 ? `live session ${where} is` : `${n} live sessions ${where} are`;
    const ttlDefault = `${Math.round(config.enrollment.tokenTtlMs / 3_600_000)}h`;
    switch (action) {
      case 'suspend':
        return {
          back: deviceBack,
          spec: {
            action,
            title: `Suspend ${needId()}?`,
            danger: false,
            hidden: { id: needId() },
            effect: `Its connections are refused until it is resumed, and its ${sessionsText} cut.`,
            fields: html`<label>Reason (for the audit log) <input name="reason" maxlength="200"></label>`,
          },
        };
      case 'resume':
        return {
          back: deviceBack,
          spec: {
            action,
            title: `Resume ${needId()}?`,
            danger: false,
            hidden: { id: needId() },
            effect: 'It may connect again.',
            fields: html``,
          },
        };
      case 'revoke':
        return {
          back: deviceBack,
          spec: {
            action,
            title: `Revoke ${needId()}?`,
            danger: true,
            hidden: { id: needId() },
            effect: `Every certificate of this device is revoked and its ${sessionsText} cut. This cannot be undone: the device must be added and enrolled again.`,
            fields: reasonSelect(),
          },
        };
      case 'revokeCertificate': {
        const serial = str(q, 'serial') ?? '';
        return {
          back: deviceBack,
          spec: {
            action,
            title: `Revoke certificate ${serial}?`,
            danger: true,
            hidden: { id: needId(), serial },
            effect:
              'Sessions using this certificate are cut and it is never accepted again; the device may enroll or renew with another.',
            fields: reasonSelect(),
          },
        };
      }
      case 'kick':
        return {
          back: deviceBack,
          spec: {
            action,
            title: `Kick ${needId()}?`,
            danger: false,
            hidden: { id: needId() },
            effect: `Its ${sessionsText} closed. It is not revoked: it may connect again at once.`,
            fields: html``,
          },
        };
      case 'deny': {
        const kind = str(q, 'kind') ?? 'fingerprint';
        const value = str(q, 'value') ?? '';
        return {
          back: id === undefined ? '/denylist' : deviceBack,
          spec: {
            action,
            title: `Deny ${kind} ${value}?`,
            danger: true,
            hidden: { kind, value, ...(id !== undefined && { id }) },
            effect: `Every connection with this ${kind === 'spki' ? 'key' : kind} is refused, and live sessions that match are cut.`,
            fields: html`<label>Reason <input name="reason" maxlength="200"></label>
<label>Expires after <input name="expires" placeholder="e.g. 24h, 7d; empty: never" maxlength="20"></label>`,
          },
        };
      }
      case 'allow': {
        const kind = str(q, 'kind') ?? '';
        const value = str(q, 'value') ?? '';
        return {
          back: '/denylist',
          spec: {
            action,
            title: `Remove ${kind} ${value} from the denylist?`,
            danger: false,
            hidden: { kind, value },
            effect: 'Connections that only this entry refused are admitted again.',
            fields: html``,
          },
        };
      }
      case 'token':
        return {
          back: deviceBack,
          spec: {
            action,
            title: `Issue an enrollment token for ${needId()}?`,
            danger: false,
            hidden: { id: needId() },
            effect: 'A one-time token is shown once on the next page; fleetgate keeps only its hash.',
            fields: html`<label>Lifetime <input name="ttl" value="${ttlDefault}" maxlength="20"></label>`,
          },
        };
      default:
        throw new FleetgateError('BAD_REQUEST', `unknown console action ${JSON.stringify(action)}`);
    }
  }

  app.get('/confirm', async (req, reply) => {
    const v = viewer(req);
    mustAct(v);
    const action = str(req.query, 'action') ?? '';
    const { spec: s, back } = await spec(action, req.query);
    return send(reply, confirmPage(v, s, csrf(v, action), back));
  });

  /** A state-changing request must come from a console page of this origin, for this operator and this action. */
  function checkOrigin(req: FastifyRequest, action: string, token: string | undefined): void {
    const site = req.headers['sec-fetch-site'];
    const origin = req.headers.origin;
    const refuse = (why: string) => new FleetgateError('NOT_AUTHORIZED', `cross-site request refused: ${why}`);
    if (site !== undefined && site !== 'same-origin') throw refuse(`Sec-Fetch-Site is ${site}`);
    if (origin !== undefined && origin !== `https://${req.headers.host}`)
      throw refuse(`Origin ${origin} is not this console`);
    const expected = Buffer.from(csrf(viewer(req), action));
    const given = Buffer.from(token ?? '');
    if (given.length !== expected.length || !timingSafeEqual(given, expected))
      throw refuse("the form token is missing or not this operator's (reload the page and confirm again)");
  }

  app.post('/act', async (req, reply) => {
    const v = viewer(req);
    mustAct(v);
    const body = (req.body ?? {}) as Record<string, unknown>;
    const action = str(body, 'action') ?? '';
    checkOrigin(req, action, str(body, 'csrf'));
    const who = actor(v);
    const id = str(body, 'id');
    const deviceLink = {
      href: id === undefined ? '/devices' : `/devices/${encodeURIComponent(id)}`,
      label: id === undefined ? 'Devices' : `Back to ${id}`,
    };
    const done = (title: string, message: string, state: Html, back = deviceLink) => {
      deps.log.info({ decision: 'console action', action, actor: who, deviceId: id }, message);
      return send(reply, resultPage(v, title, message, state, back));
    };
    switch (action) {
      case 'suspend':
      case 'resume': {
        const r = await store.act<{ device: DeviceRecord; changed: boolean }>(
          action === 'suspend'
            ? {
                name: 'suspend',
                id: assertDeviceId(id ?? ''),
                ...(str(body, 'reason') !== undefined && { reason: str(body, 'reason')! }),
              }
            : { name: 'resume', id: assertDeviceId(id ?? '') },
          who,
        );
        return done(
          `${action === 'suspend' ? 'Suspended' : 'Resumed'} ${r.device.id}`,
          r.changed
            ? `${r.device.id} ${action === 'suspend' ? 'suspended' : 'resumed'}.`
            : `${r.device.id} was already ${r.device.status}.`,
          deviceState(r.device),
        );
      }
      case 'revoke': {
        const reason = parseRevocationReason(str(body, 'reason') ?? 'cessationOfOperation');
        const r = await store.act<{ device: DeviceRecord; revokedSerials: string[]; changed: boolean }>(
          { name: 'revoke', id: assertDeviceId(id ?? ''), reason },
          who,
        );
        return done(
          `Revoked ${r.device.id}`,
          r.changed
            ? `${r.device.id} revoked (${revocationReasonName(reason)}); certificates revoked: ${r.revokedSerials.join(', ') || 'none'}. Its live sessions are cut as the gateways read the change.`
            : `${r.device.id} was already revoked.`,
          deviceState(r.device),
        );
      }
      case 'revokeCertificate': {
        const reason = parseRevocationReason(str(body, 'reason') ?? 'unspecified');
        const c = await store.act<{ serial: string; deviceId: string }>(
          { name: 'revokeCertificate', serial: str(body, 'serial') ?? '', reason },
          who,
        );
        return done(
          `Revoked certificate ${c.serial}`,
          `certificate ${c.serial} of ${c.deviceId} revoked (${revocationReasonName(reason)}).`,
          html``,
        );
      }
      case 'kick': {
        const deviceId = assertDeviceId(id ?? '');
        const { closed } = await deps.fleet.kick(deviceId, who);
        return done(
          `Kicked ${deviceId}`,
          `${closed} live session${closed === 1 ? '' : 's'} of ${deviceId} closed${deps.fleet.clustered ? ' (every node that answered)' : ''}.`,
          html`<p>Live sessions now: ${(await sessionsOf(deviceId)).length}</p>`,
        );
      }
      case 'deny': {
        const expires = str(body, 'expires');
        const e = await store.act<DenyRecord>(
          {
            name: 'deny',
            kind: str(body, 'kind') ?? '',
            value: str(body, 'value') ?? '',
            ...(str(body, 'reason') !== undefined && { reason: str(body, 'reason')! }),
            ...(expires !== undefined && { expiresAt: Date.now() + parseDuration(expires, 'expires') }),
          },
          who,
        );
        return done(
          `Denied ${e.kind}`,
          `${e.kind} ${e.value} is on the denylist${e.expiresAt === null ? '' : ` until ${new Date(e.expiresAt).toISOString()}`}.`,
          html``,
          id === undefined ? { href: '/denylist', label: 'Denylist' } : deviceLink,
        );
      }
      case 'allow': {
        const e = await store.act<DenyRecord>(
          { name: 'allow', kind: str(body, 'kind') ?? '', value: str(body, 'value') ?? '' },
          who,
        );
        return done(`Removed ${e.kind} from the denylist`, `${e.kind} ${e.value} is no longer denied.`, html``, {
          href: '/denylist',
          label: 'Denylist',
        });
      }
      case 'token': {
        const ttlMs = parseDuration(str(body, 'ttl') ?? '24h', 'token lifetime');
        const t = await store.act<{ token: string; expiresAt: number }>(
          { name: 'token', id: assertDeviceId(id ?? ''), ttlMs },
          who,
        );
        return done(`Enrollment token for ${id}`, 'Token issued.', tokenResult(id!, t.token, t.expiresAt));
      }
      default:
        throw new FleetgateError('BAD_REQUEST', `unknown console action ${JSON.stringify(action)}`);
    }
  });

  try {
    await app.listen({ host: g.consoleHost, port: g.consolePort });
  } catch (err) {
    await app.close();
    await store.close();
    throw bindError(
      err as NodeJS.ErrnoException,
      g.consoleHost,
      g.consolePort,
      'gateway.consolePort (FLEETGATE_CONSOLE_PORT)',
    );
  }
  const address = app.server.address();
  return {
    app,
    port: typeof address === 'object' && address !== null ? address.port : g.consolePort,
    async close() {
      sampler.close();
      await app.close();
      await store.close();
    },
  };
}
