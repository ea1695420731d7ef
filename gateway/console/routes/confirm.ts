import type { FastifyInstance } from 'fastify';
import { assertDeviceId } from '../../../firmware-sdk/protocol/device-id.ts';
import { FleetgateError } from '../../../firmware-sdk/protocol/errors.ts';
import { type ConsoleContext, mustAct, send, sessionsOf, str, viewer } from '../context.ts';
import { html } from '../html.ts';
import { type ConfirmSpec, confirmPage, reasonSelect } from '../pages.ts';

/** What a confirmation page is built from: the query, and what every action's text needs. */
interface SpecInput {
  q: unknown;
  id: string | undefined;
  /** The device named by `id`, checked (throws DEVICE_ID_INVALID). */
  needId: () => string;
  deviceBack: string;
  /** "live sessions, if any, are" / "live session on this gateway is" / "3 live sessions in the cluster are". */
  sessionsText: string;
  ttlDefault: string;
}

type Spec = { spec: ConfirmSpec; back: string };

/** What each action will do, the fields it asks for, and where "cancel" goes. */
const SPECS: Record<string, (i: SpecInput) => Spec> = {
  suspend: (i) => ({
    back: i.deviceBack,
    spec: {
      action: 'suspend',
      title: `Suspend ${i.needId()}?`,
      danger: false,
      hidden: { id: i.needId() },
      effect: `Its connections are refused until it is resumed, and its ${i.sessionsText} cut.`,
      fields: html`<label>Reason (for the audit log) <input name="reason" maxlength="200"></label>`,
    },
  }),
  resume: (i) => ({
    back: i.deviceBack,
    spec: {
      action: 'resume',
      title: `Resume ${i.needId()}?`,
      danger: false,
      hidden: { id: i.needId() },
      effect: 'It may connect again.',
      fields: html``,
    },
  }),
  revoke: (i) => ({
    back: i.deviceBack,
    spec: {
      action: 'revoke',
      title: `Revoke ${i.needId()}?`,
      danger: true,
      hidden: { id: i.needId() },
      effect: `Every certificate of this device is revoked and its ${i.sessionsText} cut. This cannot be undone: the device must be added and enrolled again.`,
      fields: reasonSelect(),
    },
  }),
  revokeCertificate: (i) => {
    const serial = str(i.q, 'serial') ?? '';
    return {
      back: i.deviceBack,
      spec: {
        action: 'revokeCertificate',
        title: `Revoke certificate ${serial}?`,
        danger: true,
        hidden: { id: i.needId(), serial },
        effect:
          'Sessions using this certificate are cut and it is never accepted again; the device may enroll or renew with another.',
        fields: reasonSelect(),
      },
    };
  },
  kick: (i) => ({
    back: i.deviceBack,
    spec: {
      action: 'kick',
      title: `Kick ${i.needId()}?`,
      danger: false,
      hidden: { id: i.needId() },
      effect: `Its ${i.sessionsText} closed. It is not revoked: it may connect again at once.`,
      fields: html``,
    },
  }),
  deny: (i) => {
    const kind = str(i.q, 'kind') ?? 'fingerprint';
    const value = str(i.q, 'value') ?? '';
    return {
      back: i.id === undefined ? '/denylist' : i.deviceBack,
      spec: {
        action: 'deny',
        title: `Deny ${kind} ${value}?`,
        danger: true,
        hidden: { kind, value, ...(i.id !== undefined && { id: i.id }) },
        effect: `Every connection with this ${kind === 'spki' ? 'key' : kind} is refused, and live sessions that match are cut.`,
        fields: html`<label>Reason <input name="reason" maxlength="200"></label>
<label>Expires after <input name="expires" placeholder="e.g. 24h, 7d; empty: never" maxlength="20"></label>`,
      },
    };
  },
  allow: (i) => {
    const kind = str(i.q, 'kind') ?? '';
    const value = str(i.q, 'value') ?? '';
    return {
      back: '/denylist',
      spec: {
        action: 'allow',
        title: `Remove ${kind} ${value} from the denylist?`,
        danger: false,
        hidden: { kind, value },
        effect: 'Connections that only this entry refused are admitted again.',
        fields: html``,
      },
    };
  },
  token: (i) => ({
    back: i.deviceBack,
    spec: {
      action: 'token',
      title: `Issue an enrollment token for ${i.needId()}?`,
      danger: false,
      hidden: { id: i.needId() },
      effect: 'A one-time token is shown once on the next page; fleetgate keeps only its hash.',
      fields: html`<label>Lifetime <input name="ttl" value="${i.ttlDefault}" maxlength="20"></label>`,
    },
  }),
};

async function specFor(ctx: ConsoleContext, action: string, q: unknown): Promise<Spec> {
  const build = Object.hasOwn(SPECS, action) ? SPECS[action] : undefined;
  if (build === undefined) throw new FleetgateError('BAD_REQUEST', `unknown console action ${JSON.stringify(action)}`);
  const id = str(q, 'id');
  const n = id === undefined ? 0 : (await sessionsOf(ctx, id)).length;
  const where = ctx.deps.fleet.clustered ? 'in the cluster' : 'on this gateway';
  return build({
    q,
    id,
    needId: () => assertDeviceId(id ?? ''),
    deviceBack: id === undefined ? '/devices' : `/devices/${encodeURIComponent(id)}`,
    sessionsText:
      n === 0 ? 'live sessions, if any, are' : n === 1 ? `live session ${where} is` : `${n} live sessions ${where} are`,
    ttlDefault: `${Math.round(ctx.config.enrollment.tokenTtlMs / 3_600_000)}h`,
  });
}

/** The confirmation page of an action: what it will do, and the form (with its token) that does it. */
export async function confirmRoutes(app: FastifyInstance, ctx: ConsoleContext): Promise<void> {
  app.get('/confirm', async (req, reply) => {
    const v = viewer(req);
    mustAct(v);
    const action = str(req.query, 'action') ?? '';
    const { spec, back } = await specFor(ctx, action, req.query);
    return send(reply, confirmPage(v, spec, ctx.tokens.token(v, action, spec.hidden), back));
  });
}
