import type { FastifyInstance, FastifyRequest } from 'fastify';
import { parseDuration } from '../../../config/duration.ts';
import { assertDeviceId } from '../../../firmware-sdk/protocol/device-id.ts';
import { FleetgateError } from '../../../firmware-sdk/protocol/errors.ts';
import { parseRevocationReason, revocationReasonName } from '../../../provisioning/registry/reasons.ts';
import type { DenyRecord, DeviceRecord } from '../../../provisioning/registry/records.ts';
import { actor, type ConsoleContext, mustAct, send, sessionsOf, str, viewer } from '../context.ts';
import { type Html, html } from '../html.ts';
import { deviceState, resultPage, tokenResult } from '../pages.ts';

/** One action's request: the form's fields, who acts, and the device it names (if any). */
interface ActInput {
  ctx: ConsoleContext;
  body: Record<string, unknown>;
  who: string;
  id: string | undefined;
  deviceLink: { href: string; label: string };
}

/** What the result page shows. */
interface Outcome {
  title: string;
  message: string;
  state: Html;
  back?: { href: string; label: string };
}

const DENYLIST_LINK = { href: '/denylist', label: 'Denylist' };

async function suspendOrResume(i: ActInput, action: 'suspend' | 'resume'): Promise<Outcome> {
  const id = assertDeviceId(i.id ?? '');
  const reason = str(i.body, 'reason');
  const r = await i.ctx.store.act<{ device: DeviceRecord; changed: boolean }>(
    action === 'suspend' ? { name: 'suspend', id, ...(reason !== undefined && { reason }) } : { name: 'resume', id },
    i.who,
  );
  const done = action === 'suspend' ? 'suspended' : 'resumed';
  return {
    title: `${action === 'suspend' ? 'Suspended' : 'Resumed'} ${r.device.id}`,
    message: r.changed ? `${r.device.id} ${done}.` : `${r.device.id} was already ${r.device.status}.`,
    state: deviceState(r.device),
  };
}

/** Each action: the same registry operation as the CLI's, with the operator as the audit actor. */
const ACTIONS: Record<string, (i: ActInput) => Promise<Outcome>> = {
  suspend: (i) => suspendOrResume(i, 'suspend'),
  resume: (i) => suspendOrResume(i, 'resume'),
  revoke: async (i) => {
    const reason = parseRevocationReason(str(i.body, 'reason') ?? 'cessationOfOperation');
    const r = await i.ctx.store.act<{ device: DeviceRecord; revokedSerials: string[]; changed: boolean }>(
      { name: 'revoke', id: assertDeviceId(i.id ?? ''), reason },
      i.who,
    );
    return {
      title: `Revoked ${r.device.id}`,
      message: r.changed
        ? `${r.device.id} revoked (${revocationReasonName(reason)}); certificates revoked: ${r.revokedSerials.join(', ') || 'none'}. Its live sessions are cut as the gateways read the change.`
        : `${r.device.id} was already revoked.`,
      state: deviceState(r.device),
    };
  },
  revokeCertificate: async (i) => {
    const reason = parseRevocationReason(str(i.body, 'reason') ?? 'unspecified');
    const c = await i.ctx.store.act<{ serial: string; deviceId: string }>(
      { name: 'revokeCertificate', serial: str(i.body, 'serial') ?? '', reason },
      i.who,
    );
    return {
      title: `Revoked certificate ${c.serial}`,
      message: `certificate ${c.serial} of ${c.deviceId} revoked (${revocationReasonName(reason)}).`,
      state: html``,
    };
  },
  kick: async (i) => {
    const deviceId = assertDeviceId(i.id ?? '');
    const fleet = i.ctx.deps.fleet;
    const { closed } = await fleet.kick(deviceId, i.who);
    return {
      title: `Kicked ${deviceId}`,
      message: `${closed} live session${closed === 1 ? '' : 's'} of ${deviceId} closed${fleet.clustered ? ' (every node that answered)' : ''}.`,
      state: html`<p>Live sessions now: ${(await sessionsOf(i.ctx, deviceId)).length}</p>`,
    };
  },
  deny: async (i) => {
    const expires = str(i.body, 'expires');
    const reason = str(i.body, 'reason');
    const e = await i.ctx.store.act<DenyRecord>(
      {
        name: 'deny',
        kind: str(i.body, 'kind') ?? '',
        value: str(i.body, 'value') ?? '',
        ...(reason !== undefined && { reason }),
        ...(expires !== undefined && { expiresAt: Date.now() + parseDuration(expires, 'expires') }),
      },
      i.who,
    );
    const until = e.expiresAt === null ? '' : ` until ${new Date(e.expiresAt).toISOString()}`;
    return {
      title: `Denied ${e.kind}`,
      message: `${e.kind} ${e.value} is on the denylist${until}.`,
      state: html``,
      back: i.id === undefined ? DENYLIST_LINK : i.deviceLink,
    };
  },
  allow: async (i) => {
    const e = await i.ctx.store.act<DenyRecord>(
      { name: 'allow', kind: str(i.body, 'kind') ?? '', value: str(i.body, 'value') ?? '' },
      i.who,
    );
    return {
      title: `Removed ${e.kind} from the denylist`,
      message: `${e.kind} ${e.value} is no longer denied.`,
      state: html``,
      back: DENYLIST_LINK,
    };
  },
  token: async (i) => {
    const ttlMs = parseDuration(str(i.body, 'ttl') ?? '24h', 'token lifetime');
    const id = assertDeviceId(i.id ?? '');
    const t = await i.ctx.store.act<{ token: string; expiresAt: number }>({ name: 'token', id, ttlMs }, i.who);
    return {
      title: `Enrollment token for ${id}`,
      message: 'Token issued.',
      state: tokenResult(id, t.token, t.expiresAt),
    };
  },
};

/** A state-changing request must come from a console page of this origin, for this operator and this action. */
function checkOrigin(ctx: ConsoleContext, req: FastifyRequest, action: string, body: Record<string, unknown>): void {
  const site = req.headers['sec-fetch-site'];
  const origin = req.headers.origin;
  const refuse = (why: string) => new FleetgateError('NOT_AUTHORIZED', `cross-site request refused: ${why}`);
  if (site !== undefined && site !== 'same-origin') throw refuse(`Sec-Fetch-Site is ${site}`);
  if (origin !== undefined && origin !== `https://${req.headers.host}`)
    throw refuse(`Origin ${origin} is not this console`);
  const problem = ctx.tokens.spend(viewer(req), action, body, str(body, 'csrf'));
  if (problem !== undefined) throw refuse(problem);
}

/**
 * Actions are POSTs that pass three checks: the operator role; the browser's own word that the
 * request comes from this origin (`Sec-Fetch-Site`, `Origin`); and the form's token.
 */
export async function actRoutes(app: FastifyInstance, ctx: ConsoleContext): Promise<void> {
  app.post('/act', async (req, reply) => {
    const v = viewer(req);
    mustAct(v);
    const body = (req.body ?? {}) as Record<string, unknown>;
    const action = str(body, 'action') ?? '';
    checkOrigin(ctx, req, action, body);
    const run = Object.hasOwn(ACTIONS, action) ? ACTIONS[action] : undefined;
    if (run === undefined) throw new FleetgateError('BAD_REQUEST', `unknown console action ${JSON.stringify(action)}`);
    const who = actor(v);
    const id = str(body, 'id');
    const deviceLink = {
      href: id === undefined ? '/devices' : `/devices/${encodeURIComponent(id)}`,
      label: id === undefined ? 'Devices' : `Back to ${id}`,
    };
    const outcome = await run({ ctx, body, who, id, deviceLink });
    ctx.deps.log.info({ decision: 'console action', action, actor: who, deviceId: id }, outcome.message);
    return send(reply, resultPage(v, outcome.title, outcome.message, outcome.state, outcome.back ?? deviceLink));
  });
}
