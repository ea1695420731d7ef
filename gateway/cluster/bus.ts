import { connect, createInbox, headers, type Msg, type NatsConnection, RequestStrategy, type Subscription } from 'nats';
import type { Logger } from 'pino';
import { isDeviceId } from '../../firmware-sdk/protocol/device-id.ts';
import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import { NODE_NAME } from '../../firmware-sdk/protocol/node-id.ts';
import type { Message } from '../mqtt/session.ts';
import { Interest, type InterestState } from './interest.ts';
import {
  filterToSubjects,
  isLongSubject,
  RETAINED_PREFIX,
  retainedSubject,
  topicHash,
  topicToSubject,
} from './subjects.ts';
import {
  ADMIN_PREFIX,
  CHUNK_END,
  CHUNK_RECORDS,
  decodeAnnouncement,
  decodeEnvelope,
  decodeRecords,
  encodeEnvelope,
  encodeRecord,
  endChunk,
  inboxPrefix,
  json,
  type Question,
  RETAINED_OFFER,
  readAnswer,
  readJson,
  retainedSend,
  SESSION_PREFIX,
  sessionSubject,
} from './wire.ts';

/**
 * The NATS header naming the shared groups (their tokens, space-separated) a message went to
 * through JetStream (durable groups, `cluster.sessions: jetstream`): their queue groups skip it.
 */
export const DURABLE_SHARES_HEADER = 'Fg-Durable-Shares';
/** Retained messages per snapshot chunk, in bytes (NATS's default max payload is 1 MiB). */
const SNAPSHOT_CHUNK_BYTES = 256 * 1024;
/** One log line per this long about refused bus messages (each is counted). */
const INVALID_LOG_EVERY_MS = 10_000;

export interface BusEvents {
  /** A message published on another node, for this node's subscribers. */
  message(message: Message): void;
  /** The link to NATS went down (fan-out between nodes stops; local delivery goes on) or came back. */
  link(state: 'down' | 'up'): void;
  /** A client id connected to another node (`node`). */
  session(clientId: string, node: string): void;
  /** A retained message kept (or cleared) by another node. */
  retained(message: Message): void;
  /** A message for the shared group `key`, which NATS's queue group gave to this node (one node of those with members). */
  shared(key: string, message: Message): void;
}

/**
 * Counts for metrics: messages each way, published while the link was down, refused as malformed,
 * and not published because no other node listens to their subject (`interest.ts`).
 */
export interface BusCounts {
  sent: number;
  received: number;
  lostWhileDown: number;
  invalid: number;
  unwanted: number;
}

/** How this node reaches NATS: URLs, and (for `tls://`) its node certificate and the fleet's CA (PEM). */
export interface NatsLink {
  servers: string;
  tls?: { ca: string; cert: string; key: string };
}

/** Bounds on what another node may send this one. */
export interface BusLimits {
  /** A snapshot offering more retained messages than this is refused. */
  retainedTotal: number;
  /** …or carrying more bytes than this. */
  retainedBytesTotal: number;
}

type Handler = (msg: Msg) => void;

/**
 * Fan-out between gateway nodes over NATS (core pub/sub, at most once between nodes; each
 * node's own QoS and durability rules apply to its own subscribers). A node publishes every
 * message accepted from its devices to the message's subject (`subjects.ts`) and subscribes to
 * the subjects of the filters its sessions hold (one NATS subscription per subject, counted, so a
 * million devices subscribed to `devices/<id>/commands/#` are a million subjects, which NATS
 * handles flat, and a filter held by many sessions is one subscription). `noEcho`: a node never
 * receives its own messages back (its local subscribers were served before it published).
 *
 * Every message read from NATS is checked (`wire.ts`) before use; what fails is dropped, counted
 * and logged (throttled), and no handler can throw into the NATS client.
 *
 * While NATS is unreachable, local delivery goes on and messages for other nodes are counted as
 * lost (metrics, one log line per outage); the client reconnects without end and subscribes again.
 */
export class NatsBus {
  readonly #nc: NatsConnection;
  /**
   * A second connection for the shared groups' queue subscriptions: the main one never hears its
   * own publishes (`noEcho`), and a message published here must be able to reach a member here
   * through the queue group like any other node's.
   */
  readonly #sharedNc: NatsConnection;
  readonly #shared = new Map<string, Subscription[]>();
  readonly #log: Logger;
  readonly #events: BusEvents;
  readonly #limits: BusLimits;
  readonly #subs = new Map<string, { sub: Subscription; count: number }>();
  #up = true;
  readonly counts: BusCounts = { sent: 0, received: 0, lostWhileDown: 0, invalid: 0, unwanted: 0 };
  /** What the other nodes listen on (undefined: `cluster.interest: all`, every message is published). */
  readonly #interest: Interest | undefined;
  #invalidLoggedAt = 0;
  #invalidUnlogged = 0;
  readonly #node: string;

  private constructor(
    nc: NatsConnection,
    sharedNc: NatsConnection,
    node: string,
    log: Logger,
    events: BusEvents,
    limits: BusLimits,
    interest: boolean,
  ) {
    this.#nc = nc;
    this.#sharedNc = sharedNc;
    this.#node = node;
    this.#log = log;
    this.#events = events;
    this.#limits = limits;
    void this.#watch();
    // Every node keeps every retained message (within its quotas): a subscriber on any node gets it.
    this.#on(`${RETAINED_PREFIX}.>`, (msg) => {
      const m = decodeEnvelope(msg.subject, msg.data);
      if ('invalid' in m) this.#refuse(m.invalid, msg.subject);
      else this.#events.retained(m.ok);
    });
    this.#on(`${SESSION_PREFIX}.*`, (msg) => {
      const a = decodeAnnouncement(msg.subject, msg.data, this.#node);
      if ('invalid' in a) this.#refuse(a.invalid, msg.subject);
      else this.#events.session(a.ok.clientId, a.ok.node);
    });
    this.#interest = interest
      ? new Interest(nc, node, {
          on: (subject, handler, onError) => this.#on(subject, handler, undefined, onError),
          blind: (reason) =>
            log.error(
              { code: 'CLUSTER_UNAVAILABLE', reason },
              'cannot hear the other nodes’ interest: every message goes to NATS (regenerate the NATS config with `fleetgate cluster nats-config`, or set cluster.interest to "all")',
            ),
          publish: (subject, data, reply) => this.#publish(subject, data, undefined, reply),
          refuse: (reason, subject) => this.#refuse(reason, subject),
        })
      : undefined;
  }

  /** Connects to NATS; rejects CLUSTER_UNAVAILABLE if it cannot at start (the server refused this node's certificate, say). */
  static async connect(
    link: NatsLink,
    node: string,
    log: Logger,
    events: BusEvents,
    limits: BusLimits,
    interest = true,
  ): Promise<NatsBus> {
    const options = {
      servers: link.servers
        .split(',')
        .map((s) => s.trim())
        .filter((s) => s !== ''),
      inboxPrefix: inboxPrefix(node),
      maxReconnectAttempts: -1,
      reconnectTimeWait: 250,
      pingInterval: 5_000,
      maxPingOut: 2,
      timeout: 5_000,
      ...(link.tls !== undefined && { tls: { ...link.tls } }),
    };
    try {
      const nc = await connect({ ...options, name: `fleetgate-${node}`, noEcho: true });
      const sharedNc = await connect({ ...options, name: `fleetgate-${node}-shared` }).catch(async (e: unknown) => {
        await nc.close();
        throw e;
      });
      return new NatsBus(nc, sharedNc, node, log, events, limits, interest);
    } catch (err) {
      throw new FleetgateError(
        'CLUSTER_UNAVAILABLE',
        `cannot reach NATS at ${link.servers}: ${(err as Error).message}${authHint(err)}`,
        { cause: err },
      );
    }
  }

  get up(): boolean {
    return this.#up;
  }

  /** The main connection (JetStream goes over it too: `jetstream.ts`). */
  get connection(): NatsConnection {
    return this.#nc;
  }

  /** Something another process wrote that is not what a node writes: counted and logged like a refused bus message. */
  refuse(reason: string, subject: string): void {
    this.#refuse(reason, subject);
  }

  get node(): string {
    return this.#node;
  }

  get subjects(): number {
    return this.#subs.size;
  }

  /**
   * Subscribes with a handler that cannot throw into the NATS client: a throw is a refused
   * message. `shared`: on the shared groups' connection, in queue group `queue`.
   */
  #on(subject: string, handler: Handler, shared?: { queue: string }, onError?: (err: Error) => void): Subscription {
    const nc = shared === undefined ? this.#nc : this.#sharedNc;
    return nc.subscribe(subject, {
      ...(shared !== undefined && { queue: shared.queue }),
      callback: (err, msg) => {
        if (err !== null) {
          onError?.(err); // NATS refused the subscription (a permissions violation): it is closed
          return;
        }
        try {
          handler(msg);
        } catch (e) {
          this.#refuse(`handling it failed: ${(e as Error).message}`, msg.subject);
        }
      },
    });
  }

  /** A message from NATS that is not what it must be: counted, logged at most once per 10 s. */
  #refuse(reason: string, subject: string): void {
    this.counts.invalid++;
    const now = Date.now();
    if (now - this.#invalidLoggedAt < INVALID_LOG_EVERY_MS) {
      this.#invalidUnlogged++;
      return;
    }
    this.#log.warn(
      {
        code: 'CLUSTER_MESSAGE_INVALID',
        reason,
        subject: subject.length > 120 ? `${subject.slice(0, 120)}…` : subject,
        alsoRefusedSinceLastLine: this.#invalidUnlogged,
      },
      'a message from the cluster bus was refused (dropped and counted)',
    );
    this.#invalidLoggedAt = now;
    this.#invalidUnlogged = 0;
  }

  async #watch(): Promise<void> {
    for await (const s of this.#nc.status()) {
      if (s.type === 'disconnect' && this.#up) {
        this.#up = false;
        this.#log.error(
          { code: 'CLUSTER_UNAVAILABLE', server: String(s.data) },
          'NATS link down: messages to subscribers on other nodes are not delivered until it is back',
        );
        this.#events.link('down');
      } else if (s.type === 'reconnect' && !this.#up) {
        this.#up = true;
        this.#log.info(
          { server: String(s.data), lostWhileDown: this.counts.lostWhileDown },
          'NATS link back: fan-out between nodes resumed',
        );
        this.#interest?.reconnected();
        this.#events.link('up');
      } else if (s.type === 'error') {
        // Permissions violations arrive here (a node configured with the wrong role, say).
        this.#log.error({ code: 'CLUSTER_UNAVAILABLE', err: String(s.data) }, 'NATS reported an error');
      }
    }
  }

  #publish(subject: string, data: Uint8Array, durableShares?: string[], reply?: string): boolean {
    if (!this.#up) return false;
    try {
      if (durableShares !== undefined) {
        const h = headers();
        h.set(DURABLE_SHARES_HEADER, durableShares.join(' '));
        this.#nc.publish(subject, data, { headers: h });
      } else if (reply !== undefined) this.#nc.publish(subject, data, { reply });
      else this.#nc.publish(subject, data);
      return true;
    } catch {
      return false; // closed or draining: the link watcher says why
    }
  }

  publish(message: Message, durableShares?: string[]): void {
    const subject = topicToSubject(message.topic);
    if (this.#interest?.wants(subject) === false) {
      this.counts.unwanted++;
      return;
    }
    if (this.#publish(subject, encodeEnvelope(message, isLongSubject(subject)), durableShares)) this.counts.sent++;
    else this.counts.lostWhileDown++;
  }

  /** A retained message kept (or cleared, empty) here: replicated to every other node. */
  publishRetained(message: Message): void {
    // documented: retained messages set while NATS is down stay on this node
    const subject = retainedSubject(message.topic);
    this.#publish(subject, encodeEnvelope(message, isLongSubject(subject)));
  }

  /** A client id connected to this node (a takeover on every other node that has it). */
  announceSession(clientId: string): void {
    this.#publish(sessionSubject(this.#node), new TextEncoder().encode(clientId));
  }

  /** A filter got its first local subscriber. */
  filterAdded(filter: string): void {
    for (const subject of filterToSubjects(filter)) {
      this.#interest?.add(subject);
      const held = this.#subs.get(subject);
      if (held !== undefined) {
        held.count++;
        continue;
      }
      const sub = this.#on(subject, (msg) => {
        const m = decodeEnvelope(msg.subject, msg.data);
        if ('invalid' in m) return this.#refuse(m.invalid, msg.subject);
        this.counts.received++;
        this.#events.message(m.ok);
      });
      this.#subs.set(subject, { sub, count: 1 });
    }
  }

  /**
   * A shared group got its first member here: this node joins the group's NATS queue group on
   * the filter's subjects, so each message goes to one node of those with members (then to one
   * member there). Queue name: a hash of the group's key (share name and filter).
   */
  sharedAdded(key: string, filter: string): void {
    if (this.#shared.has(key)) return;
    const token = topicHash(key);
    const queue = `share_${token}`;
    const subs = filterToSubjects(filter).map((subject) => {
      this.#interest?.add(subject, true);
      return this.#on(
        subject,
        (msg) => {
          // Written to the group's JetStream queue by the publisher's node: it comes from there.
          const durable = msg.headers?.get(DURABLE_SHARES_HEADER);
          if (durable !== undefined && durable !== '' && durable.split(' ').includes(token)) return;
          const m = decodeEnvelope(msg.subject, msg.data);
          if ('invalid' in m) return this.#refuse(m.invalid, msg.subject);
          this.counts.received++;
          this.#events.shared(key, m.ok);
        },
        { queue },
      );
    });
    this.#shared.set(key, subs);
  }

  /** A shared group lost its last member here. */
  sharedRemoved(key: string, filter: string): void {
    const subs = this.#shared.get(key);
    if (subs === undefined) return;
    for (const sub of subs) sub.unsubscribe();
    for (const subject of filterToSubjects(filter)) this.#interest?.remove(subject, true);
    this.#shared.delete(key);
  }

  /** A filter lost its last local subscriber. */
  filterRemoved(filter: string): void {
    for (const subject of filterToSubjects(filter)) {
      this.#interest?.remove(subject);
      const held = this.#subs.get(subject);
      if (held === undefined) continue;
      if (--held.count > 0) continue;
      held.sub.unsubscribe();
      this.#subs.delete(subject);
    }
  }

  /**
   * Answers the other nodes' operator questions — which sessions this node holds, and kick a
   * device here — so that `fleetgate connections` and `kick` on any node see the whole cluster.
   */
  serve(handlers: {
    connections(deviceId?: string): unknown[];
    kick(deviceId: string, actor: string): number;
    overview?(): Promise<unknown>;
    refused?(limit: number): unknown[];
  }): void {
    const question = (name: Question, answer: (body: Record<string, unknown>) => unknown) =>
      this.#on(`${ADMIN_PREFIX}.${name}`, (msg) => {
        const body = readJson(msg.data);
        if ('invalid' in body) return this.#refuse(body.invalid, msg.subject);
        const value = answer(body.ok);
        if (value === undefined) return this.#refuse(`a ${name} question without its shape`, msg.subject);
        void Promise.resolve(value).then(
          (v) => this.#respond(msg, { node: this.#node, ...(v as object) }),
          () => undefined, // this node cannot answer now: the asker sums the nodes that did
        );
      });
    question('connections', ({ deviceId }) => {
      if (deviceId !== undefined && !isDeviceId(deviceId)) return undefined;
      // `{ deviceId }` asks for one device's sessions only (the console's device page).
      return { connections: handlers.connections(deviceId) };
    });
    question('kick', ({ deviceId, actor }) =>
      isDeviceId(deviceId) && typeof actor === 'string' && actor.length <= 256
        ? { closed: handlers.kick(deviceId, actor) }
        : undefined,
    );
    const refused = handlers.refused;
    // The console's "still seen connecting" on any node merges every node's book.
    if (refused !== undefined)
      question('refused', ({ limit }) => ({
        refused: refused(typeof limit === 'number' && limit > 0 ? Math.min(Math.floor(limit), 1_000) : 100),
      }));
    const overview = handlers.overview;
    // The console's overview on any node sums every node's counters and sessions.
    if (overview !== undefined) question('overview', () => overview().then((totals) => ({ totals })));
  }

  #respond(msg: Msg, value: unknown): void {
    try {
      msg.respond(json(value));
    } catch {
      // closed or draining: the asker sums the nodes that answered
    }
  }

  /**
   * Asks every other node and gathers the answers that have the question's shape (others are
   * refused and counted): all that arrive until none has for 150 ms (at most 2 s). A node that is
   * down answers nothing; the caller shows who answered.
   */
  async ask<T>(question: Question, body: unknown = {}): Promise<T[]> {
    if (!this.#up)
      throw new FleetgateError('CLUSTER_UNAVAILABLE', 'the NATS link is down: other nodes cannot be asked');
    const answers: T[] = [];
    try {
      const replies = await this.#nc.requestMany(`${ADMIN_PREFIX}.${question}`, json(body), {
        strategy: RequestStrategy.JitterTimer,
        jitter: 150,
        maxWait: 2_000,
      });
      for await (const msg of replies) {
        if (msg.data.length === 0) continue; // a status message (no responders)
        const a = readAnswer(question, msg.data);
        if ('invalid' in a) this.#refuse(a.invalid, msg.subject);
        else answers.push(a.ok as T);
      }
    } catch (err) {
      if ((err as { code?: string }).code !== '503')
        throw new FleetgateError('CLUSTER_UNAVAILABLE', `asking the other nodes failed: ${(err as Error).message}`);
    }
    return answers;
  }

  /**
   * Serves the retained-message snapshot a joining node asks for (see {@link fetchRetained}):
   * says how many it holds, and when chosen streams them to the request's reply inbox in chunks
   * (`wire.ts`), then the end with the count, flushing every few chunks so a large set does not
   * outrun the asker. Resolves once NATS has the subscriptions.
   */
  async serveRetained(all: () => Message[]): Promise<void> {
    this.#on(RETAINED_OFFER, (msg) => this.#respond(msg, { node: this.#node, count: all().length }));
    this.#on(retainedSend(this.#node), (msg) => {
      const inbox = msg.reply;
      if (inbox === undefined || !/^_INBOX\.[A-Za-z0-9_~-]+\.[A-Za-z0-9]+$/.test(inbox))
        return this.#refuse('a snapshot request without an inbox to answer', msg.subject);
      void this.#streamRetained(inbox, all()).catch((e: unknown) =>
        this.#log.warn({ err: (e as Error).message }, 'retained snapshot for a joining node failed'),
      );
    });
    await this.#nc.flush();
  }

  async #streamRetained(inbox: string, messages: Message[]): Promise<void> {
    let parts: Buffer[] = [Buffer.of(CHUNK_RECORDS)];
    let bytes = 1;
    let chunks = 0;
    const send = async () => {
      this.#nc.publish(inbox, Buffer.concat(parts, bytes));
      parts = [Buffer.of(CHUNK_RECORDS)];
      bytes = 1;
      if (++chunks % 8 === 0) await this.#nc.flush();
    };
    for (const m of messages) {
      const subject = retainedSubject(m.topic);
      for (const p of encodeRecord(subject, encodeEnvelope(m, isLongSubject(subject)))) {
        parts.push(p);
        bytes += p.length;
      }
      if (bytes >= SNAPSHOT_CHUNK_BYTES) await send();
    }
    if (bytes > 1) await send();
    this.#nc.publish(inbox, endChunk(messages.length));
    await this.#nc.flush();
  }

  /** Every node says how many retained messages it holds (until none has answered for 150 ms); the most wins. */
  async #bestOffer(timeoutMs: number): Promise<{ node: string; count: number } | undefined> {
    let best: { node: string; count: number } | undefined;
    try {
      const offers = await this.#nc.requestMany(RETAINED_OFFER, new Uint8Array(0), {
        strategy: RequestStrategy.JitterTimer,
        jitter: 150,
        maxWait: Math.min(2_000, timeoutMs),
      });
      for await (const offer of offers) {
        if (offer.data.length === 0) continue; // a status message (no responders)
        const o = readJson(offer.data);
        const { node, count } = 'ok' in o ? o.ok : {};
        if (
          typeof node !== 'string' ||
          !NODE_NAME.test(node) ||
          node === this.#node ||
          !Number.isSafeInteger(count) ||
          (count as number) < 0 ||
          (count as number) > this.#limits.retainedTotal
        ) {
          this.#refuse('a retained offer without its shape or over this node’s bound', offer.subject);
          continue;
        }
        if (best === undefined || (count as number) > best.count) best = { node, count: count as number };
      }
    } catch {
      // no other node (no responders), or the link went down: start with this node's own
    }
    return best;
  }

  /**
   * On joining: the retained messages the cluster holds, from the node that holds most. Resolves
   * with them and from which node (`{ node, messages: [] }` when the other nodes hold none),
   * `{ messages: [] }` without a node when no other node answered. `complete` only when the whole
   * set arrived, checked: every chunk valid, the end's count the records received and the count
   * that node offered. A snapshot that breaks any bound (count, bytes, `timeoutMs`) or holds one
   * malformed record is refused whole (counted, `refused` says why): nothing of it is applied.
   * A snapshot cut short by the time bound gives what arrived, not complete.
   */
  async fetchRetained(
    timeoutMs = 10_000,
  ): Promise<{ node?: string; messages: Message[]; complete: boolean; refused?: string }> {
    const best = await this.#bestOffer(timeoutMs);
    if (best === undefined) return { messages: [], complete: true };
    const node = best.node;
    if (best.count === 0) return { node, messages: [], complete: true };
    const inbox = createInbox(inboxPrefix(this.#node));
    const sub = this.#nc.subscribe(inbox);
    const timer = setTimeout(() => sub.unsubscribe(), timeoutMs);
    this.#nc.publish(retainedSend(node), new Uint8Array(0), { reply: inbox });
    const got = await this.#receiveSnapshot(sub, best.count).finally(() => {
      clearTimeout(timer);
      sub.unsubscribe();
    });
    if ('invalid' in got) {
      this.#refuse(`retained snapshot from ${node}: ${got.invalid}`, inbox);
      return { node, messages: [], complete: false, refused: got.invalid };
    }
    return { node, ...got.ok };
  }

  async #receiveSnapshot(
    sub: Subscription,
    offered: number,
  ): Promise<{ ok: { messages: Message[]; complete: boolean } } | { invalid: string }> {
    const messages: Message[] = [];
    // A set may grow a little between the offer and the sending; not by more than this.
    const maxCount = Math.min(this.#limits.retainedTotal, offered + Math.ceil(offered / 10) + 100);
    const maxBytes = 2 * this.#limits.retainedBytesTotal;
    let bytes = 0;
    for await (const msg of sub) {
      const b = Buffer.from(msg.data.buffer, msg.data.byteOffset, msg.data.byteLength);
      if (b[0] === CHUNK_END && b.length === 5) {
        const count = b.readUInt32BE(1);
        if (count !== messages.length) return { invalid: `its end says ${count} records, ${messages.length} arrived` };
        return { ok: { messages, complete: count === offered } };
      }
      if (b[0] !== CHUNK_RECORDS) return { invalid: 'a chunk of an unknown kind' };
      bytes += b.length;
      if (bytes > maxBytes) return { invalid: `over ${maxBytes} bytes` };
      const records = decodeRecords(b, RETAINED_PREFIX);
      if ('invalid' in records) return records;
      messages.push(...records.ok);
      if (messages.length > maxCount) return { invalid: `over ${maxCount} records (${offered} offered)` };
    }
    return { ok: { messages, complete: false } }; // the time bound ended it
  }

  /** What this node knows of the other nodes' interest (undefined with `cluster.interest: all`). */
  get interest(): InterestState | undefined {
    return this.#interest?.state;
  }

  /** Drains both connections (what was published reaches NATS), closing them outright after 5 s. */
  async close(): Promise<void> {
    this.#interest?.close();
    await Promise.all(
      [this.#nc, this.#sharedNc].map(async (nc) => {
        let timer: NodeJS.Timeout | undefined;
        const late = new Promise<void>((resolve) => {
          timer = setTimeout(resolve, 5_000);
        });
        try {
          await Promise.race([nc.drain(), late]);
        } catch {
          // closed below
        } finally {
          clearTimeout(timer);
        }
        if (!nc.isClosed()) await nc.close().catch(() => undefined);
      }),
    );
  }
}

/** What to say when NATS refused this node: most often a certificate or role problem. */
function authHint(err: unknown): string {
  const m = String((err as Error).message ?? '');
  if (/authorization|certificate|tls|ssl/i.test(m))
    return ' — check the node certificate (`fleetgate node show`), that NATS trusts the fleet CA, and that its config maps this node (`fleetgate cluster nats-config`)';
  return '';
}
