import type { FastifyInstance } from 'fastify';
import { assertDeviceId } from '../../../firmware-sdk/protocol/device-id.ts';
import type { AuditRecord, DenyRecord, DeviceRecord } from '../../../provisioning/registry/records.ts';
import { type ConsoleContext, send, sessionsOf, str, viewer } from '../context.ts';
import { auditPage, certificatesPage, type DeviceView, denylistPage, devicePage, devicesPage } from '../pages.ts';
import type { Page } from '../queries.ts';

/** The audit log's filter, from a query string (the page and its export share it). */
export const auditFilter = (q: unknown) => ({
  device: str(q, 'device'),
  actor: str(q, 'actor'),
  action: str(q, 'action'),
});

/** The read-only pages: devices, one device, certificates, the denylist, the audit log. */
export async function browseRoutes(app: FastifyInstance, ctx: ConsoleContext): Promise<void> {
  const { store, deps } = ctx;
  const live = (id: string) => deps.sessions.ofDevice(id).length;

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
    return send(reply, devicePage(viewer(req), view, await sessionsOf(ctx, id)));
  });

  app.get('/certificates', async (req, reply) => {
    const view = str(req.query, 'view') ?? 'expiring';
    const v = viewer(req);
    if (view === 'revoked') {
      const revoked = await store.query<Parameters<typeof certificatesPage>[2]['revoked']>({
        name: 'revoked',
        before: str(req.query, 'before'),
      });
      return send(reply, certificatesPage(v, view, { revoked }));
    }
    if (view === 'findings') {
      const findings = await store.query<Parameters<typeof certificatesPage>[2]['findings']>({ name: 'findings' });
      const { refused, nodes } = await deps.fleet.refused(deps.metrics.refusedDevices.list(100));
      const all = { ...findings!, refused, ...(nodes !== undefined && { refusedNodes: nodes }) };
      return send(reply, certificatesPage(v, view, { findings: all }));
    }
    // By default, certificates in the last third of their lifetime: past the point where a device
    // should have renewed (the SDK renews at two thirds). With 30-day certificates, 10 days — not
    // 30, which would list every certificate there is.
    const byDefault = Math.max(1, Math.round(ctx.config.ca.leafValidityMs / 86_400_000 / 3));
    const withinDays = Math.min(Math.max(Number(str(req.query, 'within') ?? byDefault) || byDefault, 1), 3650);
    const page = await store.query<{ rows: Record<string, unknown>[]; next: string | null }>({
      name: 'expiring',
      withinMs: withinDays * 86_400_000,
      after: str(req.query, 'after'),
    });
    return send(reply, certificatesPage(v, 'expiring', { expiring: { ...page, withinDays } }));
  });

  app.get('/denylist', async (req, reply) => {
    const kind = str(req.query, 'kind');
    const filter = { kind, after: str(req.query, 'after') };
    const page = await store.query<Page<DenyRecord>>({ name: 'denylist', filter });
    return send(reply, denylistPage(viewer(req), kind, page));
  });

  app.get('/audit', async (req, reply) => {
    const filter = auditFilter(req.query);
    const before = str(req.query, 'before');
    const page = await store.query<Page<AuditRecord>>({
      name: 'audit',
      filter: { ...filter, ...(before !== undefined && { before: Number(before) || 0 }) },
    });
    return send(reply, auditPage(viewer(req), filter, page));
  });
}
