import type { Metrics } from './metrics.ts';
import type { SessionTable } from './sessions.ts';

/** Cuts that are a status change (not an operator's kick, not an expiry). */
const REVOCATION_CUTS = new Set([
  'CERT_REVOKED',
  'DEVICE_REVOKED',
  'DEVICE_SUSPENDED',
  'DENYLISTED',
  'CERT_SUPERSEDED',
]);

/**
 * One node's counters as they stand (cumulative since it started) and its live sessions by type
 * and transport: what the overview sums over the nodes of a cluster. JSON-safe (`le: null` is +Inf).
 */
export interface NodeTotals {
  connects: number;
  messagesIn: number;
  messagesOut: number;
  refusals: [string, number][];
  cuts: number;
  buckets: [number | null, number][];
  connectedBy: { type: string; transport: string; count: number }[];
}

/** This node's {@link NodeTotals}, from its metrics and session table. */
export async function nodeTotals(m: Metrics, sessions: SessionTable): Promise<NodeTotals> {
  const [handshakes, https, httpsRequests, messagesIn, messagesOut, cuts, tls, denied] = await Promise.all([
    m.handshakes.get(),
    m.httpsHandshakes.get(),
    m.httpsRequests.get(),
    m.messagesIn.get(),
    m.messagesOut.get(),
    m.liveCuts.get(),
    m.tlsHandshake.get(),
    m.denied.get(),
  ]);
  const refusals = new Map<string, number>();
  let connects = 0;
  for (const v of handshakes.values) {
    if (v.labels.outcome === 'admitted') connects += v.value;
    else refusals.set(String(v.labels.code), (refusals.get(String(v.labels.code)) ?? 0) + v.value);
  }
  for (const v of https.values) connects += v.value;
  for (const v of httpsRequests.values) {
    if (v.labels.code !== 'OK')
      refusals.set(String(v.labels.code), (refusals.get(String(v.labels.code)) ?? 0) + v.value);
  }
  // Refused PUBLISH/SUBSCRIBE (topic policy, quotas) count as refusals too.
  for (const v of denied.values)
    refusals.set(String(v.labels.code), (refusals.get(String(v.labels.code)) ?? 0) + v.value);
  const buckets = new Map<number, number>();
  for (const v of tls.values) {
    if (!v.metricName?.endsWith('_bucket')) continue;
    const bound = (v.labels as Record<string, string | number | undefined>).le;
    const le = bound === '+Inf' ? Infinity : Number(bound);
    buckets.set(le, (buckets.get(le) ?? 0) + v.value);
  }
  const by = new Map<string, { type: string; transport: string; count: number }>();
  for (const s of sessions.all()) {
    const key = `${s.device.type}|${s.transport}`;
    const e = by.get(key);
    if (e === undefined) by.set(key, { type: s.device.type, transport: s.transport, count: 1 });
    else e.count++;
  }
  return {
    connects,
    messagesIn: messagesIn.values.reduce((a, v) => a + v.value, 0),
    messagesOut: messagesOut.values.reduce((a, v) => a + v.value, 0),
    refusals: [...refusals],
    cuts: cuts.values.filter((v) => REVOCATION_CUTS.has(String(v.labels.code))).reduce((a, v) => a + v.value, 0),
    buckets: [...buckets].sort((a, b) => a[0] - b[0]).map(([le, n]) => [Number.isFinite(le) ? le : null, n]),
    connectedBy: [...by.values()],
  };
}

/** Where the other nodes' totals come from, in a cluster. */
export interface OtherNodes {
  node: string;
  totals(): Promise<{ node: string; totals: NodeTotals }[]>;
}
