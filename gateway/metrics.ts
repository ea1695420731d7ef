import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import { RefusedDevices } from './refused-devices.ts';

/** The gateway's Prometheus metrics, one registry per gateway (tests run several in one process). */
export function createMetrics() {
  const registry = new Registry();
  // Process metrics (CPU, RSS, heap, event-loop lag, open fds) under the usual names.
  // Event-loop delay sampled every 100 ms, not prom-client's default 10 ms: a timer firing 100 times a second is most of an idle gateway's CPU.
  collectDefaultMetrics({ register: registry, eventLoopMonitoringPrecision: 100 });
  // Per-message counts are plain numbers on the hot path, read into the counters when scraped:
  // a prom-client label lookup per message costs more than routing the message.
  const hot: HotCounts = { in: [0, 0, 0], out: 0, reported: { in: [0, 0, 0], out: 0 } };
  /** The cluster link's plain counters (set when the gateway joins a cluster), read into the counter when scraped. */
  const cluster: ClusterCounts = { reported: {} };
  /** Devices refused with a certificate they may no longer use (the console's finding; not exported to Prometheus: unbounded labels). */
  const refusedDevices = new RefusedDevices();
  return {
    registry,
    hot,
    cluster,
    refusedDevices,
    ...connectionMetrics(registry),
    ...messageMetrics(registry, hot),
    ...clusterMetrics(registry, cluster),
  };
}

interface HotCounts {
  in: number[];
  out: number;
  reported: { in: number[]; out: number };
}

interface ClusterCounts {
  counts?: { sent: number; received: number; lostWhileDown: number; invalid: number; unwanted: number };
  /** `cluster.sessions: jetstream`: the durable state's own counts. */
  jetstream?: Record<'writes' | 'retries' | 'failedWrites' | 'delivered' | 'refreshed', number>;
  reported: Record<string, number>;
  /** The registry thread's status-feed reads (set once the registry link is open). */
  feedReads?: () => number;
  /** What this node knows of the other nodes' interest (`cluster.interest: announced`). */
  interest?: () => { peers: number; subjects: number; everything: boolean } | undefined;
}

/** Connections, handshakes, refusals and cuts, on every surface. */
function connectionMetrics(registry: Registry) {
  return {
    handshakes: new Counter({
      name: 'fleetgate_handshakes_total',
      help: 'Connection attempts by transport, outcome (admitted|refused|tls_failed) and error code',
      labelNames: ['transport', 'outcome', 'code'] as const,
      registers: [registry],
    }),
    connected: new Gauge({
      name: 'fleetgate_connected_clients',
      help: 'Live MQTT sessions by device type and transport',
      labelNames: ['type', 'transport'] as const,
      registers: [registry],
    }),
    liveCuts: new Counter({
      name: 'fleetgate_live_cuts_total',
      help: 'Live sessions cut by a status change, by code',
      labelNames: ['code'] as const,
      registers: [registry],
    }),
    httpsHandshakes: new Counter({
      name: 'fleetgate_https_handshakes_total',
      help: 'Full TLS handshakes on the HTTPS plane',
      registers: [registry],
    }),
    httpsRequests: new Counter({
      name: 'fleetgate_https_requests_total',
      help: 'HTTPS plane requests by outcome code (OK: served)',
      labelNames: ['code'] as const,
      registers: [registry],
    }),
    unauthenticatedClosed: new Counter({
      name: 'fleetgate_unauthenticated_closed_total',
      help: 'Sockets closed before their TLS handshake completed, by listener and reason (pending_limit|address_limit|handshake_timeout)',
      labelNames: ['listener', 'reason'] as const,
      registers: [registry],
    }),
    tlsHandshake: new Histogram({
      name: 'fleetgate_tls_handshake_seconds',
      help: 'From TCP accept to a completed mutual-TLS handshake, by listener',
      labelNames: ['listener'] as const,
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers: [registry],
    }),
    statusCheck: new Histogram({
      name: 'fleetgate_status_check_seconds',
      help: 'Latency of the registry status check per connection',
      buckets: [0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.005, 0.025],
      registers: [registry],
    }),
    denied: new Counter({
      name: 'fleetgate_denied_total',
      help: 'Refused PUBLISH/SUBSCRIBE by code',
      labelNames: ['action', 'code'] as const,
      registers: [registry],
    }),
  };
}

/** MQTT messages in and out, and what was not delivered. */
function messageMetrics(registry: Registry, hot: HotCounts) {
  return {
    messagesIn: new Counter({
      name: 'fleetgate_messages_in_total',
      help: 'PUBLISH packets accepted from clients',
      labelNames: ['qos'] as const,
      registers: [registry],
      collect() {
        for (let q = 0; q < 3; q++) {
          const delta = (hot.in[q] as number) - (hot.reported.in[q] as number);
          if (delta > 0) this.inc({ qos: String(q) }, delta);
          hot.reported.in[q] = hot.in[q] as number;
        }
      },
    }),
    messagesOut: new Counter({
      name: 'fleetgate_messages_out_total',
      help: 'PUBLISH packets delivered to clients',
      registers: [registry],
      collect() {
        const delta = hot.out - hot.reported.out;
        if (delta > 0) this.inc(delta);
        hot.reported.out = hot.out;
      },
    }),
    mqttDropped: new Counter({
      name: 'fleetgate_mqtt_dropped_total',
      help: 'Messages not delivered: QoS 0 to a subscriber that does not read (slow_consumer), oldest queued QoS 1/2 past the queue bound (queue_full), larger than the client accepts (over_client_maximum_packet_size), for a shared group without a member that can take it (shared_group_without_member)',
      labelNames: ['reason'] as const,
      registers: [registry],
    }),
    retainedRefused: new Counter({
      name: 'fleetgate_mqtt_retained_refused_total',
      help: 'Retained messages delivered but not retained (over a quota)',
      registers: [registry],
    }),
    slowConsumers: new Counter({
      name: 'fleetgate_mqtt_slow_consumers_total',
      help: 'Connections closed because they did not read for the drain timeout',
      registers: [registry],
    }),
  };
}

/** How much a plain count grew since the last scrape (its value then kept in `reported` under `key`). */
function growth(reported: Record<string, number>, key: string, value: number): number {
  const delta = value - (reported[key] ?? 0);
  reported[key] = value;
  return delta;
}

/** The link between gateway nodes. */
function clusterMetrics(registry: Registry, cluster: ClusterCounts) {
  return {
    clusterLink: new Gauge({
      name: 'fleetgate_cluster_link_up',
      help: 'The NATS link to the other gateway nodes: 1 up, 0 down (absent: one node)',
      registers: [registry],
    }),
    clusterInterest: new Gauge({
      name: 'fleetgate_cluster_interest',
      help: 'What this node knows of the subjects the other gateway nodes listen on: peers (nodes heard), subjects (theirs, held here), publishing_all (1 while a peer’s set is unknown — after start or a reconnect, or while asking — and every message goes to NATS; 0 when only what another node listens to does)',
      labelNames: ['what'] as const,
      registers: [registry],
      collect() {
        const i = cluster.interest?.();
        if (i === undefined) return;
        this.set({ what: 'peers' }, i.peers);
        this.set({ what: 'subjects' }, i.subjects);
        this.set({ what: 'publishing_all' }, i.everything ? 1 : 0);
      },
    }),
    feedReads: new Counter({
      name: 'fleetgate_registry_feed_reads_total',
      help: 'Reads of the registry status feed by the registry thread (polls and PostgreSQL notifications, a burst of notifications coalesced into one read)',
      registers: [registry],
      collect() {
        const delta = growth(cluster.reported, 'feedReads', cluster.feedReads?.() ?? 0);
        if (delta > 0) this.inc(delta);
      },
    }),
    clusterJetStream: new Counter({
      name: 'fleetgate_cluster_jetstream_total',
      help: 'Durable cluster state on JetStream: writes (inbox messages, session records, purges), retries of them while JetStream elected a leader, failed (given up: the acknowledgement waiting for it was not sent), delivered (inbox messages read for an attached session), refreshed (a connecting device found a newer session record at the stream leader than this node had)',
      labelNames: ['event'] as const,
      registers: [registry],
      collect() {
        const c = cluster.jetstream;
        if (c === undefined) return;
        for (const [event, value] of [
          ['write', c.writes],
          ['retry', c.retries],
          ['failed', c.failedWrites],
          ['delivered', c.delivered],
          ['refreshed', c.refreshed],
        ] as const) {
          const delta = growth(cluster.reported, `js_${event}`, value);
          if (delta > 0) this.inc({ event }, delta);
        }
      },
    }),
    clusterMessages: new Counter({
      name: 'fleetgate_cluster_messages_total',
      help: 'Messages between gateway nodes: sent, received, lost (published while the NATS link was down), invalid (read from NATS, refused by validation), unwanted (not published: no other node listens to the subject)',
      labelNames: ['direction'] as const,
      registers: [registry],
      collect() {
        const c = cluster.counts;
        if (c === undefined) return;
        for (const [direction, value] of [
          ['sent', c.sent],
          ['received', c.received],
          ['lost', c.lostWhileDown],
          ['invalid', c.invalid],
          ['unwanted', c.unwanted],
        ] as const) {
          const delta = growth(cluster.reported, direction, value);
          if (delta > 0) this.inc({ direction }, delta);
        }
      },
    }),
  };
}

export type Metrics = ReturnType<typeof createMetrics>;
