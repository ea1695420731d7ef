import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import type { FleetgateConfig } from '../../config/config.ts';
import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import type { ConnectionGuard } from '../../listeners/guard.ts';
import type { ThrottledLog } from '../../listeners/throttled-log.ts';
import type { FleetSession, FleetSessions } from '../cluster/fleet-sessions.ts';
import type { Metrics } from '../metrics.ts';
import type { SessionTable } from '../sessions.ts';
import type { RegistryLink } from '../status/registry-link.ts';
import type { FormTokens } from './form-tokens.ts';
import type { Html } from './html.ts';
import type { LiveSampler } from './live.ts';
import type { Viewer } from './pages.ts';
import type { ConsoleStore } from './store.ts';

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

/** What every console route module gets: the configuration, the gateway's parts, and the console's own. */
export interface ConsoleContext {
  config: FleetgateConfig;
  deps: ConsoleDeps;
  store: ConsoleStore;
  sampler: LiveSampler;
  tokens: FormTokens;
}

declare module 'fastify' {
  interface FastifyRequest {
    viewer?: Viewer;
  }
}

/**
 * Every response: nothing cached (pages show live state and one-time tokens), no framing
 * (clickjacking), scripts and styles from this origin only, forms post to this origin only.
 */
export const SECURITY_HEADERS: Record<string, string> = {
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

export function send(reply: FastifyReply, page: Html, status = 200) {
  return reply.status(status).headers(SECURITY_HEADERS).type('text/html; charset=utf-8').send(page.value);
}

/** Who is asking (set by the console's onRequest hook before any route runs). */
export const viewer = (req: FastifyRequest): Viewer => req.viewer!;

/** The audit actor of a console action: the operator's certificate identity. */
export const actor = (v: Viewer) => `operator:${v.id}`;

export function mustAct(v: Viewer): void {
  if (v.role !== 'operator')
    throw new FleetgateError('NOT_AUTHORIZED', `${v.id} is an auditor: the console is read-only for auditors`);
}

/** A query or form field: a non-empty string, at most 512 characters; undefined otherwise. */
export function str(q: unknown, name: string): string | undefined {
  const v = (q as Record<string, unknown>)[name];
  return typeof v === 'string' && v !== '' ? v.slice(0, 512) : undefined;
}

/** A device's live sessions on every node that answers (this node's alone while the NATS link is down). */
export async function sessionsOf(ctx: ConsoleContext, id: string): Promise<FleetSession[]> {
  return (await ctx.deps.fleet.list({ deviceId: id, localOnFailure: true })).connections;
}
