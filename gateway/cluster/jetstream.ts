import {
  AckPolicy,
  ConsumerEvents,
  type ConsumerMessages,
  DeliverPolicy,
  DiscardPolicy,
  type JetStreamClient,
  type JetStreamManager,
  type JsMsg,
  type KV,
  type NatsConnection,
  nanos,
  RetentionPolicy,
  StorageType,
  type StoredMsg,
} from 'nats';
import type { Logger } from 'pino';
import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import { SUB } from '../mqtt/packets.ts';
import { Message, type MqttSession, type SharedAck } from '../mqtt/session.ts';
import { parseShared, type SharedFilter } from '../mqtt/shared.ts';
import { SubscriptionTrie } from '../mqtt/trie.ts';
import { topicHash } from './subjects.ts';
import {
  decodeNodeBeat,
  decodeSessionRecord,
  decodeStored,
  encodeEnvelope,
  encodeNodeBeat,
  encodeSessionRecord,
  nodeBeatKey,
  type SessionRecord,
  sessionKey,
} from './wire.ts';

/** The stream of every persistent session's inbox: `fg.inbox.<session key>`, one subject per session. */
export const INBOX_STREAM = 'FLEETGATE_INBOX';
export const INBOX_PREFIX = 'fg.inbox';
/** Key-value buckets (streams `KV_<bucket>`): session records (`s.<key>`) and retained messages (`r.<topic hash>`). */
export const SESSIONS_BUCKET = 'fleetgate_sessions';
export const RETAINED_BUCKET = 'fleetgate_retained';
/** Every gateway node's beat (`n.<node token>`), by which the others tell a dead node's orphaned sessions. */
export const NODES_BUCKET = 'fleetgate_nodes';
/** How often a node writes its beat (`cluster.nodeTimeout`, at least 3 beats, says when it counts as dead). */
const NODE_BEAT_MS = 2_000;
/** A beat no longer rewritten goes after this (a node removed from the cluster). */
const NODE_BEAT_TTL_MS = 24 * 3600_000;

/**
 * The stream of durable shared groups' QoS 1/2 messages (a group with a persistent member anywhere):
 * `fg.share.<hash of the group's key>`, a work queue read through one durable consumer per group
 * by every node with members of the group — each message to one of them, acknowledged when a
 * member has it.
 */
export const SHARED_STREAM = 'FLEETGATE_SHARED';
export const SHARED_PREFIX = 'fg.share';
/**
 * How long JetStream waits for a durable group's message to be acknowledged before giving it to
 * another node: the node holding it says it is still working on it every third of that, so this
 * is how long a dead node's messages wait before the group's other nodes get them.
 */
const SHARE_ACK_WAIT_MS = 15_000;

export const inboxSubject = (clientId: string): string => `${INBOX_PREFIX}.${sessionKey(clientId)}`;
const recordKey = (clientId: string): string => `s.${sessionKey(clientId)}`;
const retainedKey = (topic: string): string => `r.${topicHash(topic)}`;

/** How long a JetStream write may take before the message it carries is refused (the client is not acknowledged). */
const WRITE_TIMEOUT_MS = 5_000;
/** How long making a session inbox's consumer may take before it is tried again (normally milliseconds). */
const CONSUMER_TIMEOUT_MS = 4_000;
/** What says a reader's consumer is gone: made again. */
const LOST = new Set<string>([
  ConsumerEvents.HeartbeatsMissed,
  ConsumerEvents.ConsumerDeleted,
  ConsumerEvents.ConsumerNotFound,
  ConsumerEvents.StreamNotFound,
]);
/**
 * How long a write is tried again while JetStream recovers: a leader election after a server died
 * takes seconds, longer while a thousand sessions' consumers are made again at the same time — on
 * a crowded host over 30 s (the soak, session 12: giving up at 30 s closed 673 of 1,000
 * connections at once, their devices then sending everything again). Waiting costs the publisher
 * only a late PUBACK (its in-flight window is the bound).
 */
const RETRY_MS = 60_000;
/**
 * The wait before try `n` (0-based) of something JetStream refused: doubling from `base` up to
 * `max`, spread over its upper half so a thousand sessions that failed together do not come back
 * together.
 */
const backoff = (n: number, base: number, max: number): number => {
  const d = Math.min(max, base * 2 ** Math.min(n, 16));
  return d / 2 + Math.random() * (d / 2);
};
/** The shortest time between two purges of one inbox (acknowledged messages go in batches). */
const PURGE_EVERY_MS = 100;
/** How long a node starting with its NATS cluster waits for JetStream to be ready. */
const STARTUP_WAIT_MS = 30_000;
/** How long a connecting device's admission waits for its session record from the stream leader. */
const REFRESH_TIMEOUT_MS = 2_000;

export interface JetStreamOptions {
  replicas: number;
  /** How long a node may go unheard before its sessions are orphans. */
  nodeTimeoutMs: number;
  /** Messages one session's inbox keeps at most (the oldest go first): the largest queue bound of any device type (each session's own bound applies as it is read). */
  maxQueued: number;
  /** The longest a session outlives its connection: inbox messages older than this go. */
  maxAgeMs: number;
}

export interface JetStreamEvents {
  /** A retained message set (or cleared: empty payload) by any node, this one included. */
  retained(message: Message): void;
  /** Something read from JetStream was not what this node writes: dropped and counted. */
  invalid(reason: string, subject: string): void;
}

/** An ordered read of a stream that outlives its consumers: the current one's messages; stopped for good. */
interface Reader {
  stopped: boolean;
  messages: ConsumerMessages | undefined;
}

/** A bucket's value (or deletion) as a follow reads it from the bucket's stream. */
interface BucketEntry {
  key: string;
  operation: 'PUT' | 'DEL' | 'PURGE';
  value: Uint8Array;
  /** When it was written (the NATS server's clock). */
  created: Date;
  /** Its sequence in the bucket's stream: a later write has a higher one. */
  revision: number;
}

/** One session's inbox while the session is attached here: its reader and what is delivered but not yet settled. */
interface Inbox extends Reader {
  /** Stream sequences delivered, in order, not yet below the floor. */
  outstanding: number[];
  settled: Set<number>;
  /** Every message up to this sequence is settled: purged from the stream. */
  floor: number;
  /** The floor the last purge that succeeded went up to. */
  purged: number;
  purging: boolean;
}

/**
 * The cluster's durable MQTT state on NATS JetStream (`cluster.sessions: jetstream`), replicated
 * by JetStream itself (`cluster.replicas`), no state of its own on any node's disk:
 *
 * - **Session records** in a key-value bucket, one per persistent session, written by the node the
 *   session is attached to; every node watches the bucket and keeps the records in memory — to resume
 *   any session a device brings to it, and to know which persistent sessions anywhere a QoS 1/2
 *   message is owed to.
 * - **Inboxes**: a QoS 1/2 message for a persistent session is written to the session's subject in
 *   one stream by the node that accepted it — once per session, at the QoS the session gets it at —
 *   and the publisher's PUBACK/PUBREC waits for JetStream's acknowledgement (stored on a quorum of
 *   replicas). The node the session is attached to reads its subject (an ordered consumer, from the
 *   oldest message left) and purges what the device acknowledged: the inbox holds exactly what is
 *   owed, on every replica, whichever node dies. A message delivered but not yet acknowledged when
 *   its node dies is delivered again by the next node (at least once; duplicates possible).
 * - **Retained messages** in a second bucket; every node watches it.
 *
 * Clean sessions and QoS 0 stay on core NATS (at most once between nodes), as the bus does.
 */
export class JetStreamState {
  readonly #js: JetStreamClient;
  readonly #jsm: JetStreamManager;
  readonly #sessions: KV;
  readonly #retainedKv: KV;
  readonly #nodesKv: KV;
  readonly #node: string;
  /** When this node opened its state, and when it last heard each other node's beat (its own clock). */
  readonly #openedAt = Date.now();
  readonly #heard = new Map<string, number>();
  readonly #nodeTimeout: number;
  #beat: NodeJS.Timeout | undefined;
  readonly #log: Logger;
  readonly #events: JetStreamEvents;
  /** Every persistent session in the cluster, by client id. */
  readonly #records = new Map<string, SessionRecord>();
  readonly #clientOfKey = new Map<string, string>();
  /** The latest revision of each session key this node has applied (its stream sequence). */
  readonly #revisions = new Map<string, number>();
  /** Their subscriptions that are owed QoS 1/2 messages. */
  readonly #owed = new SubscriptionTrie<string>();
  /**
   * Durable shared groups (a persistent member with QoS 1/2 anywhere): key → those members; a trie
   * of their filters whose members are the groups' tokens (the hash naming a group's subject).
   */
  readonly #durableShares = new Map<string, Set<string>>();
  readonly #sharedOwed = new SubscriptionTrie<string>();
  /** Shared groups with members here, and the readers of their JetStream queues. */
  readonly #localShares = new Map<string, (message: Message, ack: SharedAck) => void>();
  readonly #shareReaders = new Map<string, Reader>();
  readonly #options: JetStreamOptions;
  readonly #attached = new Map<string, Inbox>();
  /** The last inbox write of each publisher to each session (`<publisher> NUL <client id>`): the next waits for it. */
  readonly #chains = new Map<string, Promise<unknown>>();
  /** The buckets' follows, stopped at close (a live one would hold the connection's drain). */
  readonly #followers: Reader[] = [];
  /** Retained topics by key (a deletion names only the key), and keys with a write of ours in flight. */
  readonly #retainedTopics = new Map<string, string>();
  readonly #retainedWriting = new Map<string, number>();
  #pending: Promise<unknown>[] = [];
  #tail: Promise<void> = Promise.resolve();
  #waiting = 0;
  /** Writes to JetStream, and inbox messages delivered from it (for metrics and the benchmark). */
  readonly counts = { writes: 0, retries: 0, failedWrites: 0, delivered: 0, invalid: 0, refreshed: 0 };
  /** Message ids of this node's inbox writes (with the node's name and start time: unique in the cluster). */
  #writeId = 0;
  readonly #started = Date.now().toString(36);
  /** This node's consumers' names: `fg_<hash of the node's name>_<start>_<serial>`. */
  readonly #consumerPrefix: string;
  #consumerSerial = 0;

  private constructor(
    nc: NatsConnection,
    jsm: JetStreamManager,
    kv: { sessions: KV; retained: KV; nodes: KV },
    node: string,
    options: JetStreamOptions,
    log: Logger,
    events: JetStreamEvents,
  ) {
    this.#options = options;
    this.#js = nc.jetstream({ timeout: WRITE_TIMEOUT_MS });
    this.#jsm = jsm;
    this.#sessions = kv.sessions;
    this.#retainedKv = kv.retained;
    this.#nodesKv = kv.nodes;
    this.#nodeTimeout = options.nodeTimeoutMs;
    this.#node = node;
    this.#consumerPrefix = `${topicHash(node).slice(0, 12)}_${this.#started}`;
    this.#log = log;
    this.#events = events;
  }

  /**
   * Opens (creating when missing) the inbox stream and the three buckets, then reads every
   * session record and node beat; rejects CLUSTER_UNAVAILABLE when JetStream is not there or refuses.
   */
  static async open(
    nc: NatsConnection,
    node: string,
    options: JetStreamOptions,
    log: Logger,
    events: JetStreamEvents,
  ): Promise<JetStreamState> {
    // A NATS cluster starting with this node may not have elected its JetStream leader yet.
    const deadline = Date.now() + STARTUP_WAIT_MS;
    for (let attempt = 1; ; attempt++) {
      try {
        return await JetStreamState.#open(nc, node, options, log, events);
      } catch (err) {
        if (
          err instanceof FleetgateError &&
          Date.now() < deadline &&
          !/permission|authorization|not enabled/i.test(err.message)
        ) {
          if (attempt === 1) log.warn({ err: err.message }, 'NATS JetStream not ready: retrying for up to 30 s');
          await new Promise((r) => setTimeout(r, 500));
          continue;
        }
        throw err;
      }
    }
  }

  static async #open(
    nc: NatsConnection,
    node: string,
    options: JetStreamOptions,
    log: Logger,
    events: JetStreamEvents,
  ): Promise<JetStreamState> {
    try {
      const jsm = await nc.jetstreamManager({ timeout: WRITE_TIMEOUT_MS });
      await ensureStreams(jsm, options);
      const js = nc.jetstream({ timeout: WRITE_TIMEOUT_MS });
      const kvOptions = { replicas: options.replicas, history: 1, storage: StorageType.File };
      const sessions = await js.views.kv(SESSIONS_BUCKET, kvOptions);
      const retained = await js.views.kv(RETAINED_BUCKET, kvOptions);
      const nodes = await js.views.kv(NODES_BUCKET, { ...kvOptions, ttl: NODE_BEAT_TTL_MS });
      const state = new JetStreamState(nc, jsm, { sessions, retained, nodes }, node, options, log, events);
      await state.#watchSessions();
      await state.#watchNodes();
      void state.#followReconnects(nc);
      return state;
    } catch (err) {
      if (err instanceof FleetgateError) throw err;
      throw new FleetgateError(
        'CLUSTER_UNAVAILABLE',
        `NATS JetStream: ${(err as Error).message}${jetStreamHint(err)}`,
        {
          cause: err,
        },
      );
    }
  }

  get node(): string {
    return this.#node;
  }

  /** Persistent sessions known cluster-wide. */
  get sessionCount(): number {
    return this.#records.size;
  }

  /** The persistent session `clientId` as the cluster keeps it, wherever it was last attached. */
  lookup(clientId: string): SessionRecord | undefined {
    return this.#records.get(clientId);
  }

  // ── writes, and waiting for them ─────────────────────────────────────────────────────────────

  /**
   * A write, tried again while JetStream is electing a leader (a NATS server died: 503 / timeouts,
   * for a few seconds) up to {@link RETRY_MS}: the acknowledgement waiting for it is late, the
   * device's connection stays. Writes of one `chain` go one at a time, in order. Each attempt is idempotent (inbox messages carry a message id,
   * which JetStream deduplicates; a record put or a purge may be repeated).
   */
  #track(attempt: () => Promise<unknown>, chain?: string): void {
    this.counts.writes++;
    const deadline = Date.now() + RETRY_MS;
    const before = chain === undefined ? undefined : this.#chains.get(chain);
    const retried = async (): Promise<unknown> => {
      if (before !== undefined) await before.catch(() => undefined);
      for (let n = 0; ; n++) {
        try {
          return await attempt();
        } catch (err) {
          if (Date.now() >= deadline || !retryable(err)) throw err;
          this.counts.retries++;
          await new Promise((r) => setTimeout(r, backoff(n, 250, 5_000)));
        }
      }
    };
    const write = retried().catch((err: unknown) => {
      this.counts.failedWrites++;
      throw err;
    });
    if (chain !== undefined) {
      this.#chains.set(chain, write);
      const forget = () => {
        if (this.#chains.get(chain) === write) this.#chains.delete(chain);
      };
      write.then(forget, forget);
    }
    // Whoever waits (afterCommit) sees the failure; a write nobody waits for must not crash the node.
    write.catch(() => undefined);
    this.#pending.push(write);
    // Bounded: writes nobody waits for (a will, an offline record) are let go once settled.
    if (this.#pending.length > 10_000) this.afterCommit(() => undefined);
  }

  /**
   * Runs `fn` once every write made so far is acknowledged by JetStream (with the first error if
   * one failed), in the order the callbacks were given; at once when nothing is pending.
   */
  afterCommit(fn: (err: Error | undefined) => void): void {
    const ops = this.#pending;
    if (ops.length === 0 && this.#waiting === 0) return fn(undefined);
    this.#pending = [];
    this.#waiting++;
    this.#tail = this.#tail.then(async () => {
      let error: Error | undefined;
      try {
        await Promise.all(ops);
      } catch (err) {
        error = err as Error;
      }
      this.#waiting--;
      try {
        fn(error);
      } catch (err) {
        this.#log.error({ err: (err as Error).message }, 'JetStream commit callback failed');
      }
    });
  }

  // ── session records ──────────────────────────────────────────────────────────────────────────

  /** Writes a session's record (attached here, or `offline`): here at once, in JetStream for every node. */
  save(mqtt: MqttSession, offline = false): void {
    const subs: [string, number][] = [];
    for (const [filter, options] of mqtt.subscriptions)
      subs.push([filter, options + (mqtt.subscriptionIds.get(filter) ?? 0) * 256]);
    const record: SessionRecord = {
      clientId: mqtt.clientId,
      deviceId: mqtt.deviceId,
      node: offline ? null : this.#node,
      lastSeen: offline ? mqtt.lastSeen : Date.now(),
      expiryS: Math.round(mqtt.expiryMs / 1000),
      subs,
      qos2In: [...mqtt.qos2In],
      qos2Out: [...mqtt.qos2Out],
    };
    this.#apply(record);
    const data = encodeSessionRecord(record);
    const key = sessionKey(mqtt.clientId);
    this.#track(async () => {
      const revision = await this.#sessions.put(recordKey(mqtt.clientId), data);
      if (revision > (this.#revisions.get(key) ?? 0)) this.#revisions.set(key, revision);
    });
  }

  /**
   * A device is connecting: its session's record as the bucket's stream leader has it (a read that
   * sees every acknowledged write), applied here when newer than this node's copy. The follow of
   * the bucket is usually milliseconds behind, but a device that reconnects to another node at
   * once, or a node whose follow is being made again (a NATS server died), could otherwise resume
   * from an older record, or find none and start a new session. Bounded: when JetStream does not
   * answer in time the node goes on with what it has (as before this read).
   */
  async refresh(clientId: string): Promise<void> {
    if (this.#attached.has(clientId)) return;
    const key = sessionKey(clientId);
    const subject = `$KV.${SESSIONS_BUCKET}.${recordKey(clientId)}`;
    let sm: StoredMsg;
    try {
      sm = await withTimeout(
        this.#jsm.streams.getMessage(`KV_${SESSIONS_BUCKET}`, { last_by_subj: subject }),
        REFRESH_TIMEOUT_MS,
        () => undefined,
      );
    } catch (err) {
      // No record at all is an answer (a new session); anything else leaves this node's copy.
      if (!/no message found/i.test((err as Error).message))
        this.#log.debug({ clientId, err: (err as Error).message }, 'session record not read at connect');
      return;
    }
    const op = sm.header?.get('KV-Operation');
    if (op === 'DEL' || op === 'PURGE' || sm.seq <= (this.#revisions.get(key) ?? 0)) return;
    this.counts.refreshed++;
    this.#sessionEntry(
      { key: recordKey(clientId), operation: 'PUT', value: sm.data, created: sm.time, revision: sm.seq },
      true,
    );
  }

  /** A session ends (cleaned, expired, its device revoked): its record and whatever its inbox holds go. */
  drop(clientId: string): void {
    this.#forget(clientId);
    this.#track(() => this.#sessions.delete(recordKey(clientId)));
    this.#track(() => this.#jsm.streams.purge(INBOX_STREAM, { filter: inboxSubject(clientId) }));
  }

  #apply(record: SessionRecord): void {
    this.#forget(record.clientId);
    this.#records.set(record.clientId, record);
    this.#clientOfKey.set(sessionKey(record.clientId), record.clientId);
    for (const [filter, value] of record.subs) {
      if ((value & SUB.QOS) === 0) continue;
      const shared = parseShared(filter);
      if (shared === undefined) this.#owed.add(filter, record.clientId, value);
      else if (shared !== 'invalid') this.#shareMember(shared, record.clientId, true);
    }
  }

  #forget(clientId: string): void {
    const old = this.#records.get(clientId);
    if (old === undefined) return;
    for (const [filter] of old.subs) {
      const shared = parseShared(filter);
      if (shared === undefined) this.#owed.remove(filter, clientId);
      else if (shared !== 'invalid') this.#shareMember(shared, clientId, false);
    }
    this.#records.delete(clientId);
    this.#clientOfKey.delete(sessionKey(clientId));
  }

  /** Every node's records: read whole before this node takes devices, then followed. */
  async #watchSessions(): Promise<void> {
    await this.#follow(SESSIONS_BUCKET, 's.>', (e, initial) => this.#sessionEntry(e, initial));
  }

  /**
   * Follows a bucket's keys under `key` (its stream read in order, the last value of each key
   * first): resolves once every current value was given to `entry` (with `initial` true), then goes
   * on — through the loss of its consumer, as an inbox's read does ({@link #readOrdered}).
   */
  async #follow(bucket: string, key: string, entry: (e: BucketEntry, initial: boolean) => void): Promise<void> {
    let initial = true;
    let caughtUp!: () => void;
    const ready = new Promise<void>((resolve) => {
      caughtUp = () => {
        if (!initial) return;
        initial = false;
        resolve();
      };
    });
    const reader: Reader = { stopped: false, messages: undefined };
    this.#followers.push(reader);
    const prefix = `$KV.${bucket}.`;
    const read = this.#readOrdered(
      reader,
      { bucket },
      { stream: `KV_${bucket}`, filter: `${prefix}${key}`, lastPerSubject: true },
      (jm) => {
        const op = jm.headers?.get('KV-Operation');
        entry(
          {
            key: jm.subject.slice(prefix.length),
            operation: op === 'DEL' || op === 'PURGE' ? op : 'PUT',
            value: jm.data,
            created: new Date(Math.floor(jm.info.timestampNanos / 1e6)),
            revision: jm.seq,
          },
          initial,
        );
        if (jm.info.pending === 0) caughtUp();
      },
      (pending) => {
        if (pending === 0) caughtUp();
      },
    );
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_r, reject) => {
      timer = setTimeout(() => {
        reader.stopped = true;
        reader.messages?.stop();
        reject(new FleetgateError('CLUSTER_UNAVAILABLE', `NATS JetStream: the bucket ${bucket} could not be read`));
      }, STARTUP_WAIT_MS);
    });
    await Promise.race([ready, read, late]).finally(() => clearTimeout(timer));
  }

  /**
   * Every node's beat, followed; this node's own written now and every {@link NODE_BEAT_MS}. A node
   * heard within `cluster.nodeTimeout` holds its sessions; after that they are orphans ({@link expire}).
   */
  async #watchNodes(): Promise<void> {
    await this.#follow(NODES_BUCKET, 'n.>', (e, initial) => {
      if (e.operation !== 'PUT') return;
      const b = decodeNodeBeat(e.key, e.value);
      if ('invalid' in b) return this.#invalid(b.invalid, `$KV.${NODES_BUCKET}.${e.key}`);
      // A beat read at start may be old: when it was written (the server's clock), never later than now.
      this.#heard.set(b.ok.node, initial ? Math.min(Date.now(), e.created.getTime()) : Date.now());
    });
    const beat = () =>
      void this.#nodesKv
        .put(nodeBeatKey(this.#node), encodeNodeBeat({ node: this.#node, at: Date.now() }))
        .catch((err: unknown) => this.#log.debug({ err: (err as Error).message }, 'node beat not written'));
    beat();
    this.#beat = setInterval(beat, NODE_BEAT_MS);
    this.#beat.unref();
  }

  #sessionEntry(e: BucketEntry, initial: boolean): void {
    const key = e.key.slice(2);
    // Older than what this node already applied for the key (read at a CONNECT from the stream's
    // leader, or its own write): the follow is behind, not the session.
    if (e.revision <= (this.#revisions.get(key) ?? 0)) return;
    this.#revisions.set(key, e.revision);
    if (e.operation !== 'PUT') {
      const clientId = this.#clientOfKey.get(key);
      // A session attached here is this node's to end; a stale deletion does not end it.
      if (clientId !== undefined && !this.#attached.has(clientId)) this.#forget(clientId);
      return;
    }
    const r = decodeSessionRecord(key, e.value);
    if ('invalid' in r) return this.#invalid(r.invalid, `$KV.${SESSIONS_BUCKET}.${e.key}`);
    // This node's own writes were applied when made (a late echo must not undo a newer one) — but
    // what it wrote before it last stopped is read like any other node's.
    if ((!initial && r.ok.node === this.#node) || this.#attached.has(r.ok.clientId)) return;
    this.#apply(r.ok);
  }

  #invalid(reason: string, subject: string): void {
    this.counts.invalid++;
    this.#events.invalid(reason, subject);
  }

  /**
   * Sessions whose expiry passed while offline, wherever they were: dropped (every node may do it;
   * dropping twice is harmless). A session whose node died while it was attached (an orphan: its
   * node not heard for `cluster.nodeTimeout`, or this node before it restarted) counts as offline
   * since that node was last heard.
   */
  expire(now = Date.now()): number {
    let n = 0;
    for (const r of [...this.#records.values()]) {
      if (this.#attached.has(r.clientId)) continue;
      const since = this.#offlineSince(r, now);
      if (since === undefined || now - since <= r.expiryS * 1000) continue;
      if (r.node !== null)
        this.#log.info(
          { clientId: r.clientId, node: r.node },
          'persistent session expired: its node died (or restarted) with it attached',
        );
      this.drop(r.clientId);
      n++;
    }
    return n;
  }

  /** Every minute, or as often as a node may be declared dead when that is shorter. */
  get expireEveryMs(): number {
    return Math.min(60_000, this.#nodeTimeout);
  }

  /** Since when a session not attached here has had no node: undefined while its node lives. */
  #offlineSince(r: SessionRecord, now: number): number | undefined {
    if (r.node === null) return r.lastSeen;
    if (r.node === this.#node) return Math.max(r.lastSeen, this.#openedAt);
    const heard = this.#heard.get(r.node);
    if (heard === undefined)
      return now - this.#openedAt > this.#nodeTimeout ? Math.max(r.lastSeen, this.#openedAt) : undefined;
    return now - heard > this.#nodeTimeout ? Math.max(r.lastSeen, heard) : undefined;
  }

  // ── inboxes ──────────────────────────────────────────────────────────────────────────────────

  /**
   * A QoS 1/2 message accepted here: written to the inbox of every persistent session in the
   * cluster that is owed it (at least one of its subscriptions grants QoS 1 or 2; No Local
   * respected). The caller's acknowledgement waits for these writes ({@link afterCommit}).
   */
  fanOut(message: Message): string[] | undefined {
    if (message.qos === 0) return undefined;
    const shares = this.#durableShares.size === 0 ? undefined : this.#fanOutShared(message);
    if (this.#owed.empty) return shares; // no persistent session anywhere is owed QoS 1/2
    const owed = this.#owed.match(message.topic);
    if (owed.size === 0) return shares;
    let data: Buffer | undefined;
    for (const [clientId, value] of owed) {
      if ((value & SUB.NO_LOCAL) !== 0 && clientId === message.from) continue;
      data ??= encodeEnvelope(message, true);
      const body = data;
      const msgID = `${this.#node}.${this.#started}.${this.#writeId++}`;
      // One publisher's messages to one session are written one after the other: pipelined, one
      // lost with a dying stream leader and tried again would land after a later one.
      this.#track(() => this.#js.publish(inboxSubject(clientId), body, { msgID }), `${message.from}\0${clientId}`);
    }
    return shares;
  }

  // ── durable shared groups ────────────────────────────────────────────────────────────────────

  /** A QoS 1/2 message to the queue of every durable shared group it matches, once each; their tokens. */
  #fanOutShared(message: Message): string[] | undefined {
    let tokens: string[] | undefined;
    let data: Buffer | undefined;
    for (const [token] of this.#sharedOwed.match(message.topic)) {
      data ??= encodeEnvelope(message, true);
      const body = data;
      const msgID = `${this.#node}.${this.#started}.${this.#writeId++}`;
      // In order per publisher and group, as an inbox is.
      this.#track(() => this.#js.publish(`${SHARED_PREFIX}.${token}`, body, { msgID }), `${message.from}\0\0${token}`);
      (tokens ??= []).push(token);
    }
    return tokens;
  }

  /** Whether the shared group `key` is durable: its QoS 1/2 messages go through JetStream. */
  durableShare(key: string): boolean {
    return this.#durableShares.has(key);
  }

  /** A persistent session with QoS 1/2 in a shared group (`member`), or no longer. */
  #shareMember(s: SharedFilter, clientId: string, member: boolean): void {
    let members = this.#durableShares.get(s.key);
    if (member) {
      if (members === undefined) {
        members = new Set();
        this.#durableShares.set(s.key, members);
        this.#sharedOwed.add(s.filter, topicHash(s.key), 1);
      }
      members.add(clientId);
      this.#syncShare(s.key);
    } else if (members?.delete(clientId) === true && members.size === 0) {
      this.#durableShares.delete(s.key);
      this.#sharedOwed.remove(s.filter, topicHash(s.key));
    }
  }

  /** A shared group got its first member here: its queue is read here while the group is durable. */
  shareJoined(key: string, deliver: (message: Message, ack: SharedAck) => void): void {
    this.#localShares.set(key, deliver);
    this.#syncShare(key);
  }

  /** A shared group lost its last member here: its queue is no longer read here. */
  shareLeft(key: string): void {
    this.#localShares.delete(key);
    this.#syncShare(key);
  }

  /**
   * Reads a group's queue here while it has members here and it is (or was, since this node began
   * reading it: what is left in the queue still goes to the members) durable.
   */
  #syncShare(key: string): void {
    const reader = this.#shareReaders.get(key);
    if (!this.#localShares.has(key)) {
      if (reader === undefined) return;
      reader.stopped = true;
      reader.messages?.stop();
      this.#shareReaders.delete(key);
      return;
    }
    if (reader !== undefined || !this.#durableShares.has(key)) return;
    const r: Reader = { stopped: false, messages: undefined };
    this.#shareReaders.set(key, r);
    void this.#readShare(key, r);
  }

  /**
   * A durable group's queue, read through the group's durable consumer (replicated like the
   * stream; every node with members pulls from it, JetStream gives each message to one), until the
   * reader is stopped; made again after a loss. Each message goes to `deliver` with its
   * acknowledgement; one nobody here can take goes back to JetStream (`nak`).
   */
  async #readShare(key: string, reader: Reader): Promise<void> {
    const token = topicHash(key);
    const name = `fgs_${token.slice(0, 32)}`;
    const open = () =>
      withTimeout(
        (async () => {
          await this.#jsm.consumers.add(SHARED_STREAM, {
            durable_name: name,
            filter_subject: `${SHARED_PREFIX}.${token}`,
            deliver_policy: DeliverPolicy.All,
            ack_policy: AckPolicy.Explicit,
            ack_wait: nanos(SHARE_ACK_WAIT_MS),
            max_ack_pending: 4_096,
            num_replicas: this.#options.replicas,
            inactive_threshold: nanos(this.#options.maxAgeMs),
          });
          const consumer = await this.#js.consumers.get(SHARED_STREAM, name);
          const messages = await consumer.consume({ max_messages: 64, expires: 10_000, idle_heartbeat: 2_500 });
          this.#watchConsumer(messages, SHARED_STREAM, name);
          return messages;
        })(),
        CONSUMER_TIMEOUT_MS,
        (late) => late.stop(),
      );
    await this.#keepReading(reader, { stream: SHARED_STREAM, consumer: name }, open, (messages, progress) =>
      this.#deliverShared(key, reader, messages, progress),
    );
  }

  /**
   * A durable group's messages as its consumer gives them, each to `deliver` with its
   * acknowledgement; those held here (queued or in flight to a member) are said to be worked on
   * every third of the ack wait, so JetStream does not give them to another node meanwhile.
   */
  async #deliverShared(key: string, reader: Reader, messages: ConsumerMessages, progress: () => void): Promise<void> {
    const held = new Set<JsMsg>();
    const working = setInterval(() => {
      for (const jm of held) jm.working();
    }, SHARE_ACK_WAIT_MS / 3);
    working.unref();
    try {
      for await (const jm of messages) {
        progress();
        const deliver = this.#localShares.get(key);
        if (reader.stopped || deliver === undefined) {
          jm.nak();
          continue;
        }
        const m = decodeStored(jm.data);
        if ('invalid' in m) {
          this.#invalid(m.invalid, jm.subject);
          jm.term();
          continue;
        }
        this.counts.delivered++;
        held.add(jm);
        deliver(m.ok, sharedAck(jm, held));
      }
    } finally {
      clearInterval(working);
    }
  }

  /**
   * The session is attached here: its inbox is read from the oldest message left (after every
   * write made so far — a cleaned inbox is purged first) and each message given to `deliver` with
   * its sequence, to be {@link settled} once the device acknowledged it (or it was dropped).
   */
  attach(clientId: string, deliver: (message: Message, seq: number) => void): void {
    this.detach(clientId);
    const inbox: Inbox = {
      stopped: false,
      messages: undefined,
      outstanding: [],
      settled: new Set(),
      floor: 0,
      purged: 0,
      purging: false,
    };
    this.#attached.set(clientId, inbox);
    this.afterCommit(() => {
      void this.#read(clientId, inbox, deliver).catch((err: unknown) => {
        if (inbox.stopped) return;
        this.#log.error(
          { code: 'CLUSTER_UNAVAILABLE', clientId, err: (err as Error).message },
          'reading a session inbox from JetStream failed: its queued messages wait for its next connection',
        );
      });
    });
  }

  /** Reads a session's inbox from the oldest message left, in order, while it is attached here. */
  async #read(clientId: string, inbox: Inbox, deliver: (message: Message, seq: number) => void): Promise<void> {
    await this.#readOrdered(inbox, { clientId }, { stream: INBOX_STREAM, filter: inboxSubject(clientId) }, (jm) => {
      inbox.outstanding.push(jm.seq);
      // Settled before it was read: a released QoS 2 message whose PUBCOMP came first (its PUBREL
      // was sent from the session's record).
      if (inbox.settled.has(jm.seq)) return this.#advance(clientId, inbox);
      const m = decodeStored(jm.data);
      if ('invalid' in m) {
        this.#invalid(m.invalid, jm.subject);
        this.settled(clientId, jm.seq);
        return;
      }
      this.counts.delivered++;
      deliver(m.ok, jm.seq);
    });
  }

  /**
   * Reads `from.filter` of `from.stream` in order, on consumers of this node's own ({@link #consumer})
   * — from its oldest message, or the last of each subject — until `reader` is stopped. A consumer
   * lost with its NATS server is noticed by missed heartbeats (or its absence), a message lost on
   * its way by a gap in the delivery sequence; either way the consumer is made again from the next
   * sequence ({@link #keepReading}). `made` hears how many messages each new consumer has to deliver.
   */
  async #readOrdered(
    reader: Reader,
    fields: Record<string, unknown>,
    from: { stream: string; filter: string; lastPerSubject?: boolean },
    onMessage: (jm: JsMsg) => void,
    made?: (pending: number) => void,
  ): Promise<void> {
    let next = 0; // 0: from the start
    const open = () => {
      const start =
        next > 0
          ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: next }
          : from.lastPerSubject === true
            ? { deliver_policy: DeliverPolicy.LastPerSubject }
            : {};
      return this.#consumer(from.stream, from.filter, start, made);
    };
    await this.#keepReading(reader, { stream: from.stream, ...fields }, open, async (messages, progress) => {
      // Without acknowledgements a message lost on its way (a route or server gone) is not sent
      // again: a gap in the consumer's delivery sequence means one was — made again from `next`.
      let delivered = 0;
      for await (const jm of messages) {
        if (reader.stopped) break;
        if (jm.info.deliverySequence !== delivered + 1) {
          this.#log.warn(
            { stream: from.stream, ...fields, expected: delivered + 1, got: jm.info.deliverySequence },
            'a JetStream message was lost on its way: reading again from the last one read',
          );
          messages.stop();
          break;
        }
        delivered = jm.info.deliverySequence;
        next = jm.seq + 1;
        progress();
        onMessage(jm);
      }
    });
  }

  /**
   * Reads through consumers `open` makes until `reader` is stopped, each one's messages given to
   * `read` (which calls `progress` for each message it reads). A consumer lost is made again —
   * spread over a second, since every reader of the node lost its consumer at once when its NATS
   * server died, rather than a burst of requests at a recovering JetStream; one that cannot be
   * made or read is tried again from about half a second apart to about three.
   */
  async #keepReading(
    reader: Reader,
    fields: Record<string, unknown>,
    open: () => Promise<ConsumerMessages>,
    read: (messages: ConsumerMessages, progress: () => void) => Promise<void>,
  ): Promise<void> {
    let failures = 0;
    for (let n = 0; !reader.stopped; n++) {
      if (n > 0 && failures === 0) await new Promise((r) => setTimeout(r, Math.random() * 1_000));
      try {
        const messages = await open();
        reader.messages = messages;
        if (reader.stopped) return messages.stop();
        await read(messages, () => {
          failures = 0;
        });
      } catch (err) {
        if (reader.stopped) return;
        if (failures === 0)
          this.#log.warn(
            { code: 'CLUSTER_UNAVAILABLE', ...fields, err: (err as Error).message },
            'a JetStream stream cannot be read now: trying again',
          );
        await new Promise((r) => setTimeout(r, backoff(failures++, 500, 3_000)));
      }
    }
  }

  /**
   * A consumer of this node's own (memory, one replica, no acknowledgements: cheap to make, gone
   * 30 s after its reader stops) and its messages; its making bounded in time; stopped at any sign it
   * is gone. Not nats.js's "ordered consumer": that one remakes itself after a loss, without end and
   * without regard to being stopped (seen to keep a stopped gateway alive); this loop does it instead.
   */
  async #consumer(
    stream: string,
    filter: string,
    start: { deliver_policy?: DeliverPolicy; opt_start_seq?: number },
    made?: (pending: number) => void,
  ): Promise<ConsumerMessages> {
    this.#log.debug({ stream, filter, ...start }, 'making a consumer');
    // JetStream may place the consumer on a server that just died (nats-server 2.9 picks among the
    // stream's peers): its making is bounded here, and made again by the caller.
    const { messages, pending } = await withTimeout(
      (async () => {
        const info = await this.#jsm.consumers.add(stream, {
          name: `fg_${this.#consumerPrefix}_${++this.#consumerSerial}`,
          filter_subject: filter,
          deliver_policy: DeliverPolicy.All,
          ...start,
          ack_policy: AckPolicy.None,
          mem_storage: true,
          num_replicas: 1,
          inactive_threshold: nanos(30_000),
        });
        const consumer = await this.#js.consumers.get(stream, info.name);
        // Heartbeats every 2.5 s while idle (the defaults would leave a reader without messages for a minute).
        const messages = await consumer.consume({ max_messages: 256, expires: 10_000, idle_heartbeat: 2_500 });
        return { messages, pending: info.num_pending };
      })(),
      CONSUMER_TIMEOUT_MS,
      (late) => late.messages.stop(),
    );
    made?.(pending);
    this.#watchConsumer(messages, stream, filter);
    return messages;
  }

  /** Stops a consumer's messages at any sign the consumer is gone (its reader makes it again). */
  #watchConsumer(messages: ConsumerMessages, stream: string, what: string): void {
    void (async () => {
      for await (const s of await messages.status()) {
        this.#log.debug({ stream, consumer: what, status: s.type, data: s.data }, 'consumer status');
        if (LOST.has(s.type)) return messages.stop();
      }
    })().catch(() => undefined);
  }

  /**
   * This node's NATS connection came back (its server died, say): every inbox it reads gets a new
   * consumer from where it stopped — nats.js would first ask after the old one, without end when
   * that one was on the dead server, and hear no heartbeat meanwhile.
   */
  async #followReconnects(nc: NatsConnection): Promise<void> {
    for await (const s of nc.status()) {
      if (s.type !== 'reconnect') continue;
      for (const reader of [...this.#attached.values(), ...this.#followers, ...this.#shareReaders.values()])
        reader.messages?.stop();
    }
  }

  /** A message from the session's inbox was acknowledged by the device (or dropped): purged once all before it are. */
  settled(clientId: string, seq: number): void {
    const inbox = this.#attached.get(clientId);
    if (inbox === undefined) return;
    inbox.settled.add(seq);
    this.#advance(clientId, inbox);
  }

  /** Moves the inbox's floor over the settled messages at its head, and purges up to it. */
  #advance(clientId: string, inbox: Inbox): void {
    let advanced = false;
    while (inbox.outstanding.length > 0 && inbox.settled.has(inbox.outstanding[0] as number)) {
      const s = inbox.outstanding.shift() as number;
      inbox.settled.delete(s);
      inbox.floor = s;
      advanced = true;
    }
    if (advanced) this.#purge(clientId, inbox);
  }

  /**
   * Purges the inbox up to its floor: at most one purge in flight per inbox, and at most one every
   * {@link PURGE_EVERY_MS} (each is a replicated write: a session acknowledging a stream of
   * messages purges a batch of them, not one purge each). What a node dies holding unpurged is
   * delivered again by the next (at least once).
   */
  #purge(clientId: string, inbox: Inbox): void {
    if (inbox.purging) return;
    inbox.purging = true;
    setTimeout(() => {
      const floor = inbox.floor;
      this.#purgeTo(clientId, floor)
        .then(() => {
          inbox.purged = Math.max(inbox.purged, floor);
        })
        .catch((err: unknown) => {
          this.#log.warn({ clientId, err: (err as Error).message }, 'purging a session inbox failed');
        })
        .finally(() => {
          inbox.purging = false;
          if (inbox.floor > floor && this.#attached.get(clientId) === inbox) this.#purge(clientId, inbox);
        });
    }, PURGE_EVERY_MS).unref();
  }

  /**
   * The session left this node: its inbox is no longer read here (what it did not acknowledge
   * stays for the next node). What it did acknowledge is purged now, not in the next batch — a
   * device that reconnects at once, here or to another node, would otherwise get it again.
   */
  detach(clientId: string): void {
    const inbox = this.#attached.get(clientId);
    if (inbox === undefined) return;
    inbox.stopped = true;
    inbox.messages?.stop();
    this.#attached.delete(clientId);
    const floor = inbox.floor;
    if (floor > inbox.purged) this.#track(() => this.#purgeTo(clientId, floor));
  }

  /** Purges a session's inbox up to `floor` (every message up to it acknowledged). */
  #purgeTo(clientId: string, floor: number): Promise<unknown> {
    return this.#jsm.streams.purge(INBOX_STREAM, { filter: inboxSubject(clientId), seq: floor + 1 });
  }

  // ── retained messages ────────────────────────────────────────────────────────────────────────

  /** A retained message set (empty payload: cleared) here: written for every node. */
  putRetained(message: Message): void {
    const key = retainedKey(message.topic);
    this.#retainedTopics.set(key, message.topic);
    const data = message.payload.length === 0 ? undefined : encodeEnvelope(message, true);
    const done = () => {
      const n = (this.#retainedWriting.get(key) ?? 1) - 1;
      if (n > 0) this.#retainedWriting.set(key, n);
      else this.#retainedWriting.delete(key);
    };
    // Each attempt counts as a write in flight for its key (the watch's older values wait).
    this.#track(() => {
      this.#retainedWriting.set(key, (this.#retainedWriting.get(key) ?? 0) + 1);
      return (data === undefined ? this.#retainedKv.delete(key) : this.#retainedKv.put(key, data)).finally(done);
    });
  }

  /**
   * Reads every retained message the cluster holds, then follows changes from any node; resolves
   * once the whole set has been given to `events.retained`.
   */
  async watchRetained(): Promise<number> {
    let count = 0;
    await this.#follow(RETAINED_BUCKET, 'r.>', (e) => {
      if (this.#retainedEntry(e)) count++;
    });
    return count;
  }

  #retainedEntry(e: BucketEntry): boolean {
    // A write of ours in flight is newer than what the watch brings for its key.
    if (this.#retainedWriting.has(e.key)) return false;
    if (e.operation !== 'PUT') {
      const topic = this.#retainedTopics.get(e.key);
      if (topic === undefined) return false;
      this.#retainedTopics.delete(e.key);
      this.#events.retained(new Message(topic, Buffer.alloc(0), 0, true, ''));
      return false;
    }
    const m = decodeStored(e.value);
    if ('invalid' in m) {
      this.#invalid(m.invalid, `$KV.${RETAINED_BUCKET}.${e.key}`);
      return false;
    }
    if (retainedKey(m.ok.topic) !== e.key) {
      this.#invalid('retained message under another topic’s key', `$KV.${RETAINED_BUCKET}.${e.key}`);
      return false;
    }
    this.#retainedTopics.set(e.key, m.ok.topic);
    this.#events.retained(m.ok);
    return true;
  }

  async close(): Promise<void> {
    clearInterval(this.#beat);
    for (const r of this.#followers) {
      r.stopped = true;
      r.messages?.stop();
    }
    for (const clientId of [...this.#attached.keys()]) this.detach(clientId);
    for (const key of [...this.#localShares.keys()]) this.shareLeft(key);
    await this.#tail;
    await Promise.allSettled(this.#pending);
  }
}

/** The inbox stream and the shared groups' work queue. */
async function ensureStreams(jsm: JetStreamManager, options: JetStreamOptions): Promise<void> {
  await ensureStream(jsm, options, INBOX_STREAM, INBOX_PREFIX, RetentionPolicy.Limits);
  await ensureStream(jsm, options, SHARED_STREAM, SHARED_PREFIX, RetentionPolicy.Workqueue);
}

/**
 * A stream of fleetgate's, created when missing, its bounds brought to this node's configuration
 * when they differ (the last node started with a new configuration sets them for all).
 */
async function ensureStream(
  jsm: JetStreamManager,
  options: JetStreamOptions,
  name: string,
  prefix: string,
  retention: RetentionPolicy,
): Promise<void> {
  const config = {
    name,
    subjects: [`${prefix}.>`],
    retention,
    storage: StorageType.File,
    num_replicas: options.replicas,
    max_msgs_per_subject: options.maxQueued,
    max_age: nanos(options.maxAgeMs),
    discard: DiscardPolicy.Old,
    // A write is tried again for at most RETRY_MS: its message id need not be remembered longer.
    duplicate_window: nanos(2 * RETRY_MS),
  };
  let current: Awaited<ReturnType<JetStreamManager['streams']['info']>>['config'];
  try {
    current = (await jsm.streams.info(name)).config;
  } catch (err) {
    if ((err as { code?: string }).code !== '404') throw err;
    await jsm.streams.add(config);
    return;
  }
  if (
    current.max_msgs_per_subject !== config.max_msgs_per_subject ||
    current.max_age !== config.max_age ||
    current.num_replicas !== config.num_replicas ||
    current.duplicate_window !== config.duplicate_window
  )
    await jsm.streams.update(name, config);
}

/** A durable group's message's acknowledgement: whichever of ack and nak comes first counts; no longer `held`. */
function sharedAck(jm: JsMsg, held: Set<JsMsg>): SharedAck {
  return {
    ack: () => {
      if (held.delete(jm)) jm.ack();
    },
    nak: () => {
      if (held.delete(jm)) jm.nak(1_000);
    },
  };
}

/** JetStream not answering for now (no leader yet, a server gone): worth another try. */
function retryable(err: unknown): boolean {
  const code = String((err as { code?: unknown }).code ?? '');
  return code === '503' || code === 'TIMEOUT' || /timeout|no responders|temporarily unavailable/i.test(String(err));
}

function jetStreamHint(err: unknown): string {
  const m = String((err as Error).message ?? '');
  if (/jetstream not enabled|503|no responders/i.test(m))
    return ' — enable JetStream on the NATS servers (`jetstream { store_dir: … }`), or set cluster.sessions to "node"';
  if (/insufficient resources|replicas/i.test(m))
    return ' — fewer NATS servers than cluster.replicas: run 3 (or set FLEETGATE_CLUSTER_REPLICAS=1 for one server)';
  if (/permission|authorization/i.test(m))
    return ' — the NATS configuration lacks this node’s JetStream permissions: regenerate it with `fleetgate cluster nats-config`';
  return '';
}

/** `p`, or a TIMEOUT rejection after `ms` (what `p` gives later is handed to `discard`). */
function withTimeout<T>(p: Promise<T>, ms: number, discard: (late: T) => void): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  let timedOut = false;
  return Promise.race([
    p
      .then(
        (v) => {
          if (timedOut) discard(v);
          return v;
        },
        (err: unknown) => {
          throw err;
        },
      )
      .finally(() => clearTimeout(timer)),
    new Promise<T>((_r, reject) => {
      timer = setTimeout(() => {
        timedOut = true;
        reject(new Error('TIMEOUT making a JetStream consumer'));
      }, ms);
    }),
  ]);
}
