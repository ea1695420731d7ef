import type { Metrics } from '../metrics.ts';
import { type NodeTotals, nodeTotals, type OtherNodes } from '../node-totals.ts';
import type { SessionTable } from '../sessions.ts';

/** What the overview shows, one sample: the same counters `/metrics` exports, as rates. */
export interface Snapshot {
  t: number;
  intervalS: number;
  connected: number;
  connectedBy: { type: string; transport: string; count: number }[];
  connectsPerSec: number;
  messagesInPerSec: number;
  messagesOutPerSec: number;
  refusalsPerSec: number;
  /** Refusals since the gateway started (MQTT connects, TLS handshakes, HTTPS requests), by code. */
  refusalsByCode: { code: string; count: number }[];
  /** Live sessions cut by a revocation, suspension or denylist entry since the gateway started. */
  cutsByRevocation: number;
  /** p99 of the mutual-TLS handshake over the last 30 s, in ms (null: none in that window). */
  handshakeP99Ms: number | null;
  /** In a cluster: the nodes whose figures are in this sample (this one and every one that answered). */
  nodes?: string[];
}

interface Totals {
  t: number;
  connects: number;
  messagesIn: number;
  messagesOut: number;
  refusals: Map<string, number>;
  cuts: number;
  /** Cumulative handshake histogram: [upper bound in s, count ≤ bound]. */
  buckets: [number, number][];
  connectedBy: { type: string; transport: string; count: number }[];
  nodes?: string[];
}

const WINDOW_S = 30;
/** How far back the overview's charts go. */
const HISTORY_S = 300;
/**
 * Samples the gateway's metrics every `intervalS` while someone watches (the overview's live
 * stream) and hands each new sample to the watchers. While nobody watches it still samples, every
 * `backgroundS`, so the charts of an operator's first visit show the last five minutes rather than
 * start empty (a ring buffer of five minutes of samples, server-side).
 */
export class LiveSampler {
  readonly #metrics: Metrics;
  readonly #sessions: SessionTable;
  readonly #others: OtherNodes | undefined;
  readonly intervalS: number;
  readonly #history: Snapshot[] = [];
  readonly #totals: Totals[] = [];
  readonly #watchers = new Set<(s: Snapshot) => void>();
  #timer: NodeJS.Timeout | undefined;
  #background: NodeJS.Timeout | undefined;

  /** `others`: in a cluster, every sample sums this node's figures with those of the nodes that answer. */
  constructor(metrics: Metrics, sessions: SessionTable, intervalS = 2, others?: OtherNodes) {
    this.#metrics = metrics;
    this.#sessions = sessions;
    this.intervalS = intervalS;
    this.#others = others;
  }

  async #read(): Promise<Totals> {
    const own = nodeTotals(this.#metrics, this.#sessions);
    // A node that does not answer (or NATS down) leaves its figures out of this sample; the sample names who is in.
    const remote = this.#others === undefined ? [] : await this.#others.totals().catch(() => []);
    const all = [await own, ...remote.map((r) => r.totals)];
    const refusals = new Map<string, number>();
    const buckets = new Map<number, number>();
    const by = new Map<string, { type: string; transport: string; count: number }>();
    for (const n of all) {
      for (const [code, count] of n.refusals) refusals.set(code, (refusals.get(code) ?? 0) + count);
      for (const [le, count] of n.buckets) buckets.set(le ?? Infinity, (buckets.get(le ?? Infinity) ?? 0) + count);
      for (const c of n.connectedBy) {
        const key = `${c.type}|${c.transport}`;
        const e = by.get(key);
        if (e === undefined) by.set(key, { ...c });
        else e.count += c.count;
      }
    }
    const sum = (f: (n: NodeTotals) => number) => all.reduce((a, n) => a + f(n), 0);
    return {
      t: Date.now(),
      connects: sum((n) => n.connects),
      messagesIn: sum((n) => n.messagesIn),
      messagesOut: sum((n) => n.messagesOut),
      refusals,
      cuts: sum((n) => n.cuts),
      buckets: [...buckets].sort((a, b) => a[0] - b[0]),
      connectedBy: [...by.values()].sort((a, b) => b.count - a.count),
      ...(this.#others !== undefined && { nodes: [this.#others.node, ...remote.map((r) => r.node)].sort() }),
    };
  }

  /** A sample now; rates against the last sample taken (zero for the first). */
  async sample(): Promise<Snapshot> {
    return this.#compute(await this.#read());
  }

  #compute(now: Totals): Snapshot {
    const prev = this.#totals.at(-1) ?? now;
    const since = this.#totals.find((x) => now.t - x.t <= WINDOW_S * 1000) ?? prev;
    const dt = Math.max((now.t - prev.t) / 1000, 0.001);
    const rate = (a: number, b: number) => (now === prev ? 0 : Math.max(0, a - b) / dt);
    const sum = (m: Map<string, number>) => [...m.values()].reduce((a, b) => a + b, 0);
    return {
      t: now.t,
      intervalS: this.intervalS,
      connected: now.connectedBy.reduce((a, c) => a + c.count, 0),
      connectedBy: now.connectedBy,
      connectsPerSec: rate(now.connects, prev.connects),
      messagesInPerSec: rate(now.messagesIn, prev.messagesIn),
      messagesOutPerSec: rate(now.messagesOut, prev.messagesOut),
      refusalsPerSec: rate(sum(now.refusals), sum(prev.refusals)),
      refusalsByCode: [...now.refusals].map(([code, count]) => ({ code, count })).sort((a, b) => b.count - a.count),
      cutsByRevocation: now.cuts,
      handshakeP99Ms: p99(now.buckets, since === now ? [] : since.buckets),
      ...(now.nodes !== undefined && { nodes: now.nodes }),
    };
  }

  /**
   * Starts the unwatched sampling (every `backgroundS` seconds; the timer does not keep the
   * process alive). 30 s: ten points in the five-minute charts. At 10 s an idle gateway's CPU in
   * bench:mqtt went from 0.4–0.5 % to 0.7 % of a core; 30 s should cost a third of that (not
   * measured separately).
   */
  keepHistory(backgroundS = 30): void {
    if (this.#background !== undefined) return;
    this.#background = setInterval(() => {
      if (this.#timer === undefined) void this.#tick().catch(() => undefined);
    }, backgroundS * 1000);
    this.#background.unref();
  }

  /** Every sample kept (oldest first), for a chart that starts now. */
  history(): Snapshot[] {
    return [...this.#history];
  }

  /** Calls `fn` with each new sample until the returned function is called. */
  watch(fn: (s: Snapshot) => void): () => void {
    this.#watchers.add(fn);
    this.#timer ??= setInterval(() => void this.#tick(), this.intervalS * 1000);
    return () => {
      this.#watchers.delete(fn);
      if (this.#watchers.size === 0 && this.#timer !== undefined) {
        clearInterval(this.#timer);
        this.#timer = undefined;
      }
    };
  }

  async #tick(): Promise<void> {
    const totals = await this.#read();
    const snap = this.#compute(totals);
    this.#totals.push(totals);
    this.#history.push(snap);
    while (this.#history.length > 0 && snap.t - this.#history[0]!.t > HISTORY_S * 1000) this.#history.shift();
    while (this.#totals.length > 0 && totals.t - this.#totals[0]!.t > WINDOW_S * 1000 + this.intervalS * 1000)
      this.#totals.shift();
    for (const w of this.#watchers) w(snap);
  }

  close(): void {
    clearInterval(this.#background);
    this.#background = undefined;
    clearInterval(this.#timer);
    this.#timer = undefined;
    this.#watchers.clear();
  }
}

/** The 99th percentile of the handshakes between two cumulative histograms, in ms (linear within a bucket). */
function p99(now: [number, number][], before: [number, number][]): number | null {
  const prior = new Map(before);
  const counts = now.map(([le, c]) => [le, c - (prior.get(le) ?? 0)] as [number, number]);
  const total = counts.at(-1)?.[1] ?? 0;
  if (total <= 0) return null;
  const want = 0.99 * total;
  let lower = 0;
  let below = 0;
  for (const [le, c] of counts) {
    if (c >= want) {
      if (!Number.isFinite(le)) return lower * 1000;
      const within = c - below;
      return (lower + (le - lower) * (within === 0 ? 1 : (want - below) / within)) * 1000;
    }
    lower = le;
    below = c;
  }
  return null;
}
