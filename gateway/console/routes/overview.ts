import type { TLSSocket } from 'node:tls';
import type { FastifyInstance } from 'fastify';
import { admitAsync } from '../../../listeners/admission.ts';
import { httpError } from '../../../listeners/http-errors.ts';
import { type ConsoleContext, SECURITY_HEADERS, send, viewer } from '../context.ts';
import { overviewPage } from '../pages.ts';

/** The overview page and its live stream. */
export async function overviewRoutes(app: FastifyInstance, ctx: ConsoleContext): Promise<void> {
  const { sampler, store, deps } = ctx;
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
}
