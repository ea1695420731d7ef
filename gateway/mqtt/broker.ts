import type { Logger } from 'pino';
import type { GatewayConfig, MqttConfig } from '../../config/config.ts';
import type { Metrics } from '../metrics.ts';
import type { DeviceQuotas } from '../quotas.ts';
import type { SessionTable } from '../sessions.ts';
import type { RegistryLink } from '../status/registry-link.ts';
import type { MqttConnection } from './connection.ts';
import { rerouteShared, routeDurableShare } from './delivery.ts';
import { RetainedStore } from './retained.ts';
import { Message, MqttSession, type SharedAck } from './session.ts';
import { parseShared, SharedGroups } from './shared.ts';
import { DurableStore } from './store.ts';
import { SubscriptionTrie } from './trie.ts';

export interface BrokerDeps {
  config: GatewayConfig;
  mqtt: MqttConfig;
  /** `data/mqtt.db` (disk durability). */
  storeFile: string;
  registry: RegistryLink;
  sessions: SessionTable;
  metrics: Metrics;
  log: Logger;
  /** Per-device rate quotas, shared with the HTTPS plane. */
  quotas: DeviceQuotas;
  /** Other gateway nodes (NATS): every accepted message goes to them, theirs come back through `MqttPlane.routeRemote`. */
  bus?: ClusterLink;
  /** In a cluster with `cluster.sessions: jetstream`: where persistent sessions and retained messages live (no `storeFile` then). */
  state?: DurableCluster;
}

/** What the MQTT core needs of the cluster: the fan-out to other nodes and the filters it must hear. */
export interface ClusterLink {
  /** To every other node; `durableShares`: the shared groups (their tokens) it went to through JetStream instead. */
  publish(message: Message, durableShares?: string[]): void;
  filterAdded(filter: string): void;
  filterRemoved(filter: string): void;
  /** A shared group got its first member on this node: join the group's NATS queue group. */
  sharedAdded(key: string, filter: string): void;
  sharedRemoved(key: string, filter: string): void;
  /** Whether the link is up (shared groups go through it only then). */
  readonly up: boolean;
  /** This client id connected here: the other nodes close theirs (takeover across nodes). */
  announceSession(clientId: string): void;
  /** A retained message kept here (or cleared): every other node keeps it too. */
  publishRetained(message: Message): void;
}

/**
 * A persistent session as the cluster keeps it (what the MQTT core needs of a record).
 */
export interface ClusterRecord {
  clientId: string;
  deviceId: string;
  lastSeen: number;
  expiryS: number;
  subs: [string, number][];
  qos2In: number[];
  /** Outbound QoS 2 released, awaiting PUBCOMP: `[inbox sequence, packet id]`. */
  qos2Out: [number, number][];
}

/**
 * The cluster's durable state (`cluster.sessions: jetstream`, `gateway/cluster/jetstream.ts`):
 * persistent sessions, their queued QoS 1/2 messages and retained messages on a replicated engine
 * instead of this node's disk, so that a session follows its device to any node.
 */
export interface DurableCluster {
  lookup(clientId: string): ClusterRecord | undefined;
  /** Brings this node's copy of a connecting device's record up to the cluster's latest (bounded). */
  refresh(clientId: string): Promise<void>;
  /** The session's record, attached here (or `offline`). */
  save(mqtt: MqttSession, offline?: boolean): void;
  drop(clientId: string): void;
  /**
   * A QoS 1/2 message accepted here, to the inbox of every persistent session owed it and to the
   * queue of every durable shared group it matches (their tokens returned, for the bus).
   */
  fanOut(message: Message): string[] | undefined;
  /** Whether a shared group's QoS 1/2 messages go through JetStream (a persistent member anywhere). */
  durableShare(key: string): boolean;
  /** A shared group got its first member here: its JetStream queue is read here while it is durable. */
  shareJoined(key: string, deliver: (message: Message, ack: SharedAck) => void): void;
  /** A shared group lost its last member here. */
  shareLeft(key: string): void;
  afterCommit(fn: (err: Error | undefined) => void): void;
  attach(clientId: string, deliver: (message: Message, seq: number) => void): void;
  detach(clientId: string): void;
  settled(clientId: string, seq: number): void;
  putRetained(message: Message): void;
  /** Drops the cluster's sessions whose expiry passed offline (or orphaned by a dead node); how many. */
  expire(now?: number): number;
  /** How often {@link expire} is worth calling. */
  readonly expireEveryMs: number;
}

/**
 * The broker's routing state, and nothing else: the topic trie, the MQTT sessions and the
 * connections they are attached to, the retained set and the durable store, and the per-turn
 * flush (every connection's packets of one event-loop turn leave in one write). What happens
 * to a packet is in `handlers/` (one module per packet type); how a message reaches its
 * subscribers in `delivery.ts`; admission in `admission.ts`; closing in `close.ts`.
 */
export class Broker {
  readonly deps: BrokerDeps;
  readonly trie = new SubscriptionTrie<MqttSession>();
  /** Shared subscriptions (`$share/<name>/<filter>`): the groups and a trie over their filters. */
  readonly shared = new SharedGroups();
  /** MQTT sessions by client id [MQTT-3.1.2-4]. */
  readonly mqttSessions = new Map<string, MqttSession>();
  /** The connection a session is attached to, while it has one. */
  readonly live = new Map<MqttSession, MqttConnection>();
  readonly connections = new Set<MqttConnection>();
  readonly retained: RetainedStore;
  readonly store: DurableStore | undefined;
  readonly state: DurableCluster | undefined;
  /** The smallest packet limit of any device type: what a connection may send before its admission is decided. */
  readonly minPacketLimit: number;
  /** MQTT 5 wills waiting out their Will Delay Interval, by client id [MQTT-3.1.3-9]. */
  readonly pendingWills = new Map<string, NodeJS.Timeout>();
  /** When the cluster's offline sessions were last checked for expiry. */
  lastClusterExpiry = 0;
  /** When the sweep last ran (a sweep far later than due means this process itself did not run). */
  lastSweep = Date.now();
  /** Metric children resolved once: a label lookup per message costs more than the routing. */
  readonly m;
  readonly #dirty = new Set<MqttConnection>();
  #flushScheduled = false;
  /** Sessions holding each filter, for the cluster link: it hears a filter while one session here holds it. */
  readonly #filterHolders = new Map<string, number>();
  /** Connections past TLS but not yet admitted by CONNECT, in all and by address (bounded: `gateway.maxPendingConnects*`). */
  #pending = 0;
  readonly #pendingByAddress = new Map<string, number>();
  #lastPendingLog = 0;

  constructor(deps: BrokerDeps) {
    this.deps = deps;
    const q = deps.mqtt;
    this.retained = new RetainedStore({
      perDevice: q.retainedPerDevice,
      bytesPerDevice: q.retainedBytesPerDevice,
      total: q.retainedTotal,
      bytesTotal: q.retainedBytesTotal,
    });
    this.minPacketLimit = Math.min(...Object.values(deps.config.limits).map((l) => l.maxPacketBytes));
    const m = deps.metrics;
    this.m = {
      hot: m.hot,
      dropSlow: m.mqttDropped.labels({ reason: 'slow_consumer' }),
      dropTooLarge: m.mqttDropped.labels({ reason: 'over_client_maximum_packet_size' }),
      dropQueue: m.mqttDropped.labels({ reason: 'queue_full' }),
      dropNoMember: m.mqttDropped.labels({ reason: 'shared_group_without_member' }),
    };
    this.state = deps.state;
    if (q.durability === 'disk' && deps.state === undefined) {
      this.store = new DurableStore(deps.storeFile);
      this.#restore(this.store);
    }
  }

  /** A session subscribes to `filter` (`value`: its options + 256 × its MQTT 5 identifier). */
  addFilter(filter: string, session: MqttSession, value: number, isNew: boolean): void {
    const shared = parseShared(filter);
    if (typeof shared === 'object') {
      if (this.shared.join(shared, session, value)) {
        this.deps.bus?.sharedAdded(shared.key, shared.filter);
        this.state?.shareJoined(shared.key, (m, ack) => routeDurableShare(this, shared.key, m, ack));
      }
      return;
    }
    this.trie.add(filter, session, value);
    if (!isNew || this.deps.bus === undefined) return;
    const n = (this.#filterHolders.get(filter) ?? 0) + 1;
    this.#filterHolders.set(filter, n);
    if (n === 1) this.deps.bus.filterAdded(filter);
  }

  removeFilter(filter: string, session: MqttSession): void {
    const shared = parseShared(filter);
    if (typeof shared === 'object') {
      if (this.shared.leave(shared, session)) {
        this.deps.bus?.sharedRemoved(shared.key, shared.filter);
        this.state?.shareLeft(shared.key);
      }
      return;
    }
    if (!this.trie.remove(filter, session) || this.deps.bus === undefined) return;
    const n = (this.#filterHolders.get(filter) ?? 1) - 1;
    if (n > 0) this.#filterHolders.set(filter, n);
    else {
      this.#filterHolders.delete(filter);
      this.deps.bus.filterRemoved(filter);
    }
  }

  /**
   * A new connection may wait for its CONNECT, unless too many already do (in all, or from its
   * address): then it is refused at once (counted as an unauthenticated close, logged at most
   * once a second) — a flood of TLS-valid but never-admitted connections (a revoked certificate
   * passes TLS) holds neither memory nor descriptors past the bounds.
   */
  mayWaitForConnect(conn: MqttConnection): boolean {
    const { maxPendingConnects, maxPendingConnectsPerAddress } = this.deps.config;
    const fromAddress = this.#pendingByAddress.get(conn.remoteAddress) ?? 0;
    const reason =
      this.#pending >= maxPendingConnects
        ? 'connect_limit'
        : fromAddress >= maxPendingConnectsPerAddress
          ? 'connect_address_limit'
          : undefined;
    if (reason !== undefined) {
      this.deps.metrics.unauthenticatedClosed.inc({ listener: conn.kind, reason });
      const now = Date.now();
      if (now - this.#lastPendingLog >= 1_000) {
        this.#lastPendingLog = now;
        const line = { decision: 'closed', reason, remoteAddress: conn.remoteAddress, transport: conn.kind };
        this.deps.log.warn(line, 'too many connections waiting for their CONNECT: connection closed');
      }
      return false;
    }
    this.#pending++;
    this.#pendingByAddress.set(conn.remoteAddress, fromAddress + 1);
    conn.pendingCounted = true;
    return true;
  }

  /** The connection is no longer waiting for its CONNECT (admitted, refused or closed). */
  doneWaiting(conn: MqttConnection): void {
    if (!conn.pendingCounted) return;
    conn.pendingCounted = false;
    this.#pending--;
    const n = (this.#pendingByAddress.get(conn.remoteAddress) ?? 1) - 1;
    if (n > 0) this.#pendingByAddress.set(conn.remoteAddress, n);
    else this.#pendingByAddress.delete(conn.remoteAddress);
  }

  /**
   * A session ends: its subscriptions stop matching, its stored state goes; what it was owed
   * through shared groups goes to another member.
   */
  discard(mqtt: MqttSession): void {
    if (mqtt.persistent) {
      this.store?.dropSession(mqtt.clientId);
      this.state?.drop(mqtt.clientId);
    }
    this.release(mqtt);
  }

  /**
   * A session leaves this node without ending (`cluster.sessions: jetstream`: it lives on in the
   * cluster, for its device to resume anywhere): its subscriptions stop matching here, its inbox is
   * no longer read here; what it was owed through shared groups goes to another member.
   */
  release(mqtt: MqttSession): void {
    const owed = this.shared.size === 0 ? [] : mqtt.sharedOwed();
    for (const filter of mqtt.subscriptions.keys()) this.removeFilter(filter, mqtt);
    this.state?.detach(mqtt.clientId);
    if (this.mqttSessions.get(mqtt.clientId) === mqtt) this.mqttSessions.delete(mqtt.clientId);
    if (owed.length > 0) {
      const n = rerouteShared(this, owed);
      this.deps.log.info(
        { clientId: mqtt.clientId, owed: owed.length, rerouted: n },
        'shared-subscription messages given to other members',
      );
    }
  }

  /** Whether shared groups are distributed by the cluster's bus (NATS queue groups) rather than here. */
  sharedOverBus(): boolean {
    return this.deps.bus?.up === true;
  }

  /** The connection has packets to send: written at the end of this event-loop turn. */
  markDirty(conn: MqttConnection): void {
    if (conn.out.length === 0) return;
    this.#dirty.add(conn);
    if (this.#flushScheduled) return;
    this.#flushScheduled = true;
    setImmediate(() => this.#flushAll());
  }

  /** A closed connection is written no more. */
  forgetDirty(conn: MqttConnection): void {
    this.#dirty.delete(conn);
  }

  /** One write per connection per event-loop turn. */
  #flushAll(): void {
    this.#flushScheduled = false;
    const dirty = [...this.#dirty];
    this.#dirty.clear();
    for (const conn of dirty) conn.flush();
  }

  /** Keeps (or, empty, clears) a retained message within the quotas, on disk too; false when over a quota. */
  keepRetained(message: Message, transport: string): boolean {
    const r = {
      topic: message.topic,
      payload: message.payload,
      qos: message.qos,
      deviceId: message.from,
      ...((message.fwd !== undefined || message.expiresAt !== undefined) && { message }),
    };
    if (!this.retained.set(r)) {
      this.deps.metrics.retainedRefused.inc();
      this.deps.log.warn(
        { code: 'PAYLOAD_TOO_LARGE', deviceId: message.from, topic: message.topic, transport },
        'retained message over quota: delivered, not retained',
      );
      return false;
    }
    if (message.payload.length === 0) this.store?.deleteRetained(message.topic);
    else this.store?.putRetained(message.topic, message.payload, message.qos, message.from);
    return true;
  }

  /** A retained message published here: kept, and every other node keeps it too. */
  retain(conn: MqttConnection, message: Message): void {
    if (!this.keepRetained(message, conn.kind)) return;
    if (this.state !== undefined) this.state.putRetained(message);
    else this.deps.bus?.publishRetained(message);
  }

  /** A message accepted here (from a device, or a will), beyond this node: other nodes' subscribers, persistent sessions' inboxes. */
  publishOut(message: Message): void {
    const durableShares = this.state?.fanOut(message);
    this.deps.bus?.publish(message, durableShares);
  }

  /** What acknowledgements wait for: the cluster's JetStream writes, or this node's disk. */
  get commits(): { afterCommit(fn: (err: Error | undefined) => void): void } | undefined {
    return this.state ?? this.store;
  }

  /** Persistent sessions, their queues and retained messages, as the last run left them on disk. */
  #restore(store: DurableStore): void {
    const { sessions, queue, retained } = store.load();
    for (const s of sessions) {
      const session = new MqttSession(s.clientId, s.deviceId, true);
      session.lastSeen = s.lastSeen;
      session.expiryMs = this.deps.mqtt.sessionExpiryMs;
      for (const sub of s.subscriptions) {
        // The stored value is the subscription's options (+ 256 × its MQTT 5 identifier).
        session.subscriptions.set(sub.filter, sub.qos % 256);
        if (sub.qos >= 256) session.subscriptionIds.set(sub.filter, Math.floor(sub.qos / 256));
        this.addFilter(sub.filter, session, sub.qos, true);
      }
      for (const id of s.qos2In) session.qos2In.add(id);
      this.mqttSessions.set(s.clientId, session);
    }
    for (const row of queue) {
      const session = this.mqttSessions.get(row.clientId);
      if (session === undefined) continue;
      session.queue.push({
        message: new Message(row.topic, row.payload, row.qos, false, ''),
        qos: row.qos,
        retain: false,
        rowId: row.id,
        dup: true,
        released: false,
        packetId: undefined,
      });
    }
    for (const r of retained) this.retained.set(r);
    this.deps.log.info(
      { sessions: sessions.length, queued: queue.length, retained: retained.length },
      'mqtt state restored',
    );
  }
}
