import type { FastifyInstance, FastifyReply } from 'fastify';
import type { Logger } from 'pino';
import type { AuditRecord, DenyRecord } from '../../../provisioning/registry/records.ts';
import { type ConsoleContext, SECURITY_HEADERS, str } from '../context.ts';
import type { Page } from '../queries.ts';
import { auditFilter } from './browse.ts';

const EXPORT_MAX_ROWS = 1_000_000;

/** The audit log and the denylist as JSON lines, streamed. */
export async function exportRoutes(app: FastifyInstance, ctx: ConsoleContext): Promise<void> {
  const { store, deps } = ctx;
  app.get('/audit.jsonl', (req, reply) => {
    const filter = auditFilter(req.query);
    return exportLines(reply, deps.log, 'audit', (c) =>
      store.query<Page<AuditRecord>>({
        name: 'audit',
        filter: { ...filter, limit: 500, ...(c !== undefined && { before: Number(c) }) },
      }),
    );
  });
  app.get('/denylist.jsonl', (req, reply) => {
    const kind = str(req.query, 'kind');
    return exportLines(reply, deps.log, 'denylist', (c) =>
      store.query<Page<DenyRecord>>({ name: 'denylist', filter: { kind, limit: 500, after: c } }),
    );
  });
}

/** Streams every row of a paged query as JSON lines, page by page (memory stays one page). */
async function exportLines<T>(
  reply: FastifyReply,
  log: Logger,
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
    log.error({ err: (err as Error).message, export: name }, 'console export failed part way');
    res.destroy(); // the client sees a truncated download, never a short file that looks complete
  }
}
