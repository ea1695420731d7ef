import type { TLSSocket, TlsOptions } from 'node:tls';
import Fastify, { type FastifyInstance } from 'fastify';
import type { FleetgateConfig } from '../../config/config.ts';
import { admitAsync } from '../../listeners/admission.ts';
import { onTlsClientError } from '../../listeners/handshake-errors.ts';
import { httpError, logFields } from '../../listeners/http-errors.ts';
import { listenApp } from '../../listeners/listen.ts';
import { type ConsoleContext, type ConsoleDeps, send } from './context.ts';
import { FormTokens } from './form-tokens.ts';
import { LiveSampler } from './live.ts';
import { errorPage } from './pages.ts';
import { actRoutes } from './routes/act.ts';
import { browseRoutes } from './routes/browse.ts';
import { confirmRoutes } from './routes/confirm.ts';
import { exportRoutes } from './routes/export.ts';
import { overviewRoutes } from './routes/overview.ts';
import { staticRoutes } from './routes/static.ts';
import { ConsoleStore } from './store.ts';

/**
 * The operator console: server-rendered pages on their own mTLS listener (a client certificate
 * is required by TLS itself: a browser without one never gets a page), for `operator` (look and
 * act) and `auditor` (look) certificates, checked against the registry on every request like any
 * device. No password, no cookie: who you are is the certificate on this connection.
 *
 * Actions are POSTs that pass three checks: the operator role; the browser's own word that the
 * request comes from this origin (`Sec-Fetch-Site`, `Origin`); and a token bound to the
 * operator's certificate and the action (`form-tokens.ts`), which a page on another origin
 * cannot read. They run the same registry operations as the CLI, with the operator's
 * certificate identity as the audit actor.
 */
export async function startConsole(config: FleetgateConfig, tls: TlsOptions, deps: ConsoleDeps) {
  const g = config.gateway;
  const store = new ConsoleStore(deps.registryFile, 10_000);
  const sampler = new LiveSampler(deps.metrics, deps.sessions, 2, deps.fleet.others);
  sampler.keepHistory();
  const ctx: ConsoleContext = { config, deps, store, sampler, tokens: new FormTokens() };
  const app = Fastify({
    https: tls,
    logger: false,
    requestTimeout: g.adminRequestTimeoutMs,
    keepAliveTimeout: 5_000,
    bodyLimit: 16 * 1024,
    forceCloseConnections: true, // live streams end with the gateway
  });
  const handshakeFailed = (code: string) =>
    deps.metrics.handshakes.inc({ transport: 'console', outcome: 'tls_failed', code });
  app.server.on('tlsClientError', onTlsClientError(deps.refusals, handshakeFailed, { transport: 'console' }));
  deps.guard.attach(app.server, 'console');
  app.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string' }, (_req, body, done) => {
    done(null, Object.fromEntries(new URLSearchParams(body as string)));
  });
  handleErrors(app, ctx);
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
  for (const routes of [staticRoutes, overviewRoutes, browseRoutes, exportRoutes, confirmRoutes, actRoutes])
    await app.register(routes, ctx);
  const at = { host: g.consoleHost, port: g.consolePort, setting: 'gateway.consolePort (FLEETGATE_CONSOLE_PORT)' };
  const port = await listenApp(app, at, () => store.close());
  return {
    app,
    port,
    async close() {
      sampler.close();
      await app.close();
      await store.close();
    },
  };
}

/** One error page for every refusal; before the caller is known to be an operator or auditor, only the public text. */
function handleErrors(app: FastifyInstance, { deps }: ConsoleContext): void {
  app.setErrorHandler((err, req, reply) => {
    const e = httpError(err);
    if (e.code === 'INTERNAL') deps.log.error({ err, url: req.url }, 'console request failed');
    else {
      const line = { decision: 'refused', surface: 'console', url: req.url.split('?')[0], viewer: req.viewer?.id };
      deps.log.warn({ ...line, ...logFields(e) }, 'console request refused');
    }
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
}
