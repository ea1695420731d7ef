import { connect, createInbox, type NatsConnection, RequestStrategy, type Subscription } from 'nats';
import type { Logger } from 'pino';
import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import type { ForwardedProperties } from '../mqtt/encode.ts';
import { Message } from '../mqtt/session.ts';
import {
  decodeLevel,
  encodeLevel,
  filterToSubjects,
  RETAINED_PREFIX,
  retainedSubject,
  subjectToTopic,
  topicToSubject,
} from './subjects.ts';

/** Session announcements: `fg.s.<client id>`, the announcing node's name as the payload. */
const SESSION_PREFIX = 'fg.s';
/** Operator questions to every node (request, many replies). */
const ADMIN_PREFIX = 'fg.admin';
/** A joining node asks every node how many retained messages it holds… */
const RETAINED_OFFER = 'fg.sync.retained.offer';
/** …then asks the one holding most to stream them to its inbox. */
const retainedSend = (node: string) => `fg.sync.retained.send.${encodeLevel(node)}`;
/** Retained messages per snapshot chunk, in bytes (NATS's default max payload is 1 MiB). */
const SNAPSHOT_CHUNK_BYTES = 256 * 1024;

export interface BusEvents {
  /** A message published on another node, for this node's subscribers. */
  message(message: Message): void;
  /** The link to NATS went down (fan-out between nodes stops; local delivery goes on) or came back. */
  link(state: 'down' | 'up'): void;
  /** A client id connected to another node (`node`). */
  session(clientId: string, node: string): void;
  /** A retained message kept (or cleared) by another node. */
  retained(message: Message): void;
}

/** Counts for metrics: messages each way, and how many were published while the link was down. */
export interface BusCounts {
  sent: number;
  received: number;
  lostWhileDown: number;
}

/**
 * Fan-out between gateway nodes over NATS (core pub/sub, at most once between nodes; each
 * node's own QoS and durability rules apply to its own subscribers). A node publishes every
 * message accepted from its devices to the message's subject (`subjects.ts`) and subscribes to
 * the subjects of the filters its sessions hold (one NATS subscription per subject, counted, so a
 * million devices subscribed to `devices/<id>/commands/#` are a million subjects, which NATS
 * handles flat, and a filter held by many sessions is one subscription). `noEcho`: a node never
 * receives its own messages back (its local subscribers were served before it published).
 *
 * While NATS is unreachable, local delivery goes on and messages for other nodes are counted as
 * lost (metrics, one log line per outage); the client reconnects without end and subscribes again.
 */
export class NatsBus {
  readonly #nc: NatsConnection;
  readonly #log: Logger;
  readonly #events: BusEvents;
  readonly #subs = new Map<string, { sub: Subscription; count: number }>();
  #up = true;
  readonly counts: BusCounts = { sent: 0, received: 0, lostWhileDown: 0 };

  readonly #node: string;

  private constructor(nc: NatsConnection, node: string, log: Logger, events: BusEvents) {
    this.#nc = nc;
    this.#node = node;
    this.#log = log;
    this.#events = events;
    void this.#watch();
    // Every node keeps every retained message (within its quotas): a subscriber on any node gets it.
    nc.subscribe(`${RETAINED_PREFIX}.>`, {
      callback: (err, msg) => {
        if (err !== null) return;
        const m = decodeEnvelope(msg.subject, msg.data);
        if (m !== undefined) this.#events.retained(m);
      },
    });
    nc.subscribe(`${SESSION_PREFIX}.*`, {
      callback: (err, msg) => {
        if (err !== null) return;
        this.#events.session(
          decodeLevel(msg.subject.slice(SESSION_PREFIX.length + 1)),
          new TextDecoder().decode(msg.data),
        );
      },
    });
  }

  /** Connects to NATS (`servers`: comma-separated URLs); rejects CLUSTER_UNAVAILABLE if it cannot at start. */
  static async connect(servers: string, node: string, log: Logger, events: BusEvents): Promise<NatsBus> {
    try {
      const nc = await connect({
        servers: servers
          .split(',')
          .map((s) => s.trim())
          .filter((s) => s !== ''),
        name: `fleetgate-${node}`,
        noEcho: true,
        maxReconnectAttempts: -1,
        reconnectTimeWait: 250,
        pingInterval: 5_000,
        maxPingOut: 2,
        timeout: 5_000,
      });
      return new NatsBus(nc, node, log, events);
    } catch (err) {
      throw new FleetgateError('CLUSTER_UNAVAILABLE', `cannot reach NATS at ${servers}: ${(err as Error).message}`, {
        cause: err,
      });
    }
  }

  get up(): boolean {
    return this.#up;
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
        this.#events.link('up');
      }
    }
  }

  publish(message: Message): void {
    if (!this.#up) {
      this.counts.lostWhileDown++;
      return;
    }
    try {
      this.#nc.publish(topicToSubject(message.topic), encodeEnvelope(message));
      this.counts.sent++;
    } catch {
      this.counts.lostWhileDown++; // closed or draining: the link watcher says why
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
    const json = (value: unknown) => new TextEncoder().encode(JSON.stringify(value));
    this.#nc.subscribe(`${ADMIN_PREFIX}.connections`, {
      callback: (err, msg) => {
        if (err !== null) return;
        try {
          // `{ deviceId }` asks for one device's sessions only (the console's device page).
          const { deviceId } = JSON.parse(new TextDecoder().decode(msg.data)) as { deviceId?: unknown };
          msg.respond(
            json({
              node: this.#node,
              connections: handlers.connections(typeof deviceId === 'string' ? deviceId : undefined),
            }),
          );
        } catch {
          // a malformed question from a peer: no answer
        }
      },
    });
    this.#nc.subscribe(`${ADMIN_PREFIX}.kick`, {
      callback: (err, msg) => {
        if (err !== null) return;
        try {
          const { deviceId, actor } = JSON.parse(new TextDecoder().decode(msg.data)) as {
            deviceId: string;
            actor: string;
          };
          msg.respond(json({ node: this.#node, closed: handlers.kick(String(deviceId), String(actor)) }));
        } catch {
          // a malformed question from a peer: no answer
        }
      },
    });
    const refused = handlers.refused;
    if (refused !== undefined) {
      // The console's "still seen connecting" on any node merges every node's book.
      this.#nc.subscribe(`${ADMIN_PREFIX}.refused`, {
        callback: (err, msg) => {
          if (err !== null) return;
          try {
            const { limit } = JSON.parse(new TextDecoder().decode(msg.data)) as { limit?: unknown };
            msg.respond(
              json({
                node: this.#node,
                refused: refused(typeof limit === 'number' && limit > 0 ? Math.min(limit, 1_000) : 100),
              }),
            );
          } catch {
            // a malformed question from a peer, or closed: no answer
          }
        },
      });
    }
    const overview = handlers.overview;
    if (overview !== undefined) {
      // The console's overview on any node sums every node's counters and sessions.
      this.#nc.subscribe(`${ADMIN_PREFIX}.overview`, {
        callback: (err, msg) => {
          if (err !== null) return;
          overview().then(
            (totals) => {
              try {
                msg.respond(json({ node: this.#node, totals }));
              } catch {
                // closed or draining: the asker sums the nodes that answered
              }
            },
            () => undefined,
          );
        },
      });
    }
  }

  /**
   * Serves the retained-message snapshot a joining node asks for (see {@link fetchRetained}):
   * says how many it holds, and when chosen streams them to the asker's inbox in chunks of records
   * `subject length (2) · subject · envelope length (4) · envelope`, then an empty end marker,
   * flushing every few chunks so a large set does not outrun the asker. Resolves once NATS has the
   * subscriptions: from then on a joining node's question reaches this one.
   */
  async serveRetained(all: () => Message[]): Promise<void> {
    this.#nc.subscribe(RETAINED_OFFER, {
      callback: (err, msg) => {
        if (err !== null) return;
        try {
          msg.respond(new TextEncoder().encode(JSON.stringify({ node: this.#node, count: all().length })));
        } catch {
          // closed or draining: the asker hears from another node or starts without
        }
      },
    });
    this.#nc.subscribe(retainedSend(this.#node), {
      callback: (err, msg) => {
        if (err !== null) return;
        let inbox: unknown;
        try {
          inbox = (JSON.parse(new TextDecoder().decode(msg.data)) as { inbox?: unknown }).inbox;
        } catch {
          return; // a malformed question from a peer: no answer
        }
        if (typeof inbox !== 'string' || !inbox.startsWith('_INBOX.')) return;
        void this.#streamRetained(inbox, all()).catch((e: unknown) =>
          this.#log.warn({ err: (e as Error).message }, 'retained snapshot for a joining node failed'),
        );
      },
    });
    await this.#nc.flush();
  }

  async #streamRetained(inbox: string, messages: Message[]): Promise<void> {
    let parts: Buffer[] = [];
    let bytes = 0;
    let chunks = 0;
    const send = async () => {
      this.#nc.publish(inbox, Buffer.concat(parts, bytes));
      parts = [];
      bytes = 0;
      if (++chunks % 8 === 0) await this.#nc.flush();
    };
    for (const m of messages) {
      const subject = Buffer.from(retainedSubject(m.topic), 'utf8');
      const envelope = encodeEnvelope(m);
      const head = Buffer.allocUnsafe(6);
      head.writeUInt16BE(subject.length, 0);
      head.writeUInt32BE(envelope.length, 2);
      parts.push(head.subarray(0, 2), subject, head.subarray(2), envelope);
      bytes += 6 + subject.length + envelope.length;
      if (bytes >= SNAPSHOT_CHUNK_BYTES) await send();
    }
    if (bytes > 0) await send();
    this.#nc.publish(inbox, new Uint8Array(0)); // the end
    await this.#nc.flush();
  }

  /**
   * On joining: the retained messages the cluster holds, from the node that holds most, each
   * given to `apply` (which keeps it within this node's quotas). Resolves with how many arrived and from
   * which node (`{ node, count: 0 }` when the other nodes hold none), `{ count: 0 }` without a node
   * when no other node answered, or, past `timeoutMs`, with what arrived and `complete: false`.
   * A complete answer from a node is the cluster's set: the joiner drops what it kept from before
   * that is not in it (cleared while it was away).
   */
  async fetchRetained(
    apply: (m: Message) => void,
    timeoutMs = 10_000,
  ): Promise<{ node?: string; count: number; complete: boolean }> {
    // Every node says how many it holds (until none has answered for 150 ms); the one holding most sends them.
    let best: { node: string; count: number } | undefined;
    try {
      const offers = await this.#nc.requestMany(RETAINED_OFFER, new Uint8Array(0), {
        strategy: RequestStrategy.JitterTimer,
        jitter: 150,
        maxWait: Math.min(2_000, timeoutMs),
      });
      for await (const offer of offers) {
        if (offer.data.length === 0) continue; // a status message (no responders)
        const o = JSON.parse(new TextDecoder().decode(offer.data)) as { node?: unknown; count?: unknown };
        if (typeof o.node === 'string' && typeof o.count === 'number' && (best === undefined || o.count > best.count))
          best = { node: o.node, count: o.count };
      }
    } catch {
      // no other node (no responders), or the link went down: start with this node's own
    }
    if (best === undefined) return { count: 0, complete: true };
    const node = best.node;
    if (best.count === 0) return { node, count: 0, complete: true };
    const inbox = createInbox();
    const sub = this.#nc.subscribe(inbox);
    const timer = setTimeout(() => sub.unsubscribe(), timeoutMs);
    this.#nc.publish(retainedSend(node), new TextEncoder().encode(JSON.stringify({ inbox })));
    let count = 0;
    let complete = false;
    try {
      for await (const msg of sub) {
        const b = Buffer.from(msg.data.buffer, msg.data.byteOffset, msg.data.byteLength);
        if (b.length === 0) {
          complete = true;
          break;
        }
        for (let at = 0; at + 6 <= b.length; ) {
          const subjectLength = b.readUInt16BE(at);
          const subject = b.toString('utf8', at + 2, at + 2 + subjectLength);
          const envelopeLength = b.readUInt32BE(at + 2 + subjectLength);
          const start = at + 6 + subjectLength;
          // Copied: the chunk's buffer is not kept alive by every retained message in it.
          const m = decodeEnvelope(subject, Buffer.from(b.subarray(start, start + envelopeLength)));
          at = start + envelopeLength;
          if (m === undefined || !subject.startsWith(`${RETAINED_PREFIX}.`)) continue;
          apply(m);
          count++;
        }
      }
    } finally {
      clearTimeout(timer);
      sub.unsubscribe();
    }
    return { node, count, complete };
  }

  /**
   * Asks every other node (`connections` or `kick`) and gathers the answers: all that arrive until
   * none has for 150 ms (at most 2 s). A node that is down answers nothing; the caller shows who answered.
   */
  async ask<T>(question: 'connections' | 'kick' | 'overview' | 'refused', body: unknown = {}): Promise<T[]> {
    if (!this.#up)
      throw new FleetgateError('CLUSTER_UNAVAILABLE', 'the NATS link is down: other nodes cannot be asked');
    const answers: T[] = [];
    try {
      const replies = await this.#nc.requestMany(
        `${ADMIN_PREFIX}.${question}`,
        new TextEncoder().encode(JSON.stringify(body)),
        {
          strategy: RequestStrategy.JitterTimer,
          jitter: 150,
          maxWait: 2_000,
        },
      );
      for await (const msg of replies) {
        if (msg.data.length === 0) continue; // a status message (no responders)
        answers.push(JSON.parse(new TextDecoder().decode(msg.data)) as T);
      }
    } catch (err) {
      if ((err as { code?: string }).code !== '503')
        throw new FleetgateError('CLUSTER_UNAVAILABLE', `asking the other nodes failed: ${(err as Error).message}`);
    }
    return answers;
  }

  get node(): string {
    return this.#node;
  }

  /** A retained message kept (or cleared, empty) here: replicated to every other node. */
  publishRetained(message: Message): void {
    if (!this.#up) return; // documented: retained messages set while NATS is down stay on this node
    try {
      this.#nc.publish(retainedSubject(message.topic), encodeEnvelope(message));
    } catch {
      // closed or draining: the link watcher says why
    }
  }

  /** A client id connected to this node (a takeover on every other node that has it). */
  announceSession(clientId: string): void {
    if (!this.#up) return;
    try {
      this.#nc.publish(`${SESSION_PREFIX}.${encodeLevel(clientId)}`, new TextEncoder().encode(this.#node));
    } catch {
      // closed or draining: the link watcher says why
    }
  }

  /** A filter got its first local subscriber. */
  filterAdded(filter: string): void {
    for (const subject of filterToSubjects(filter)) {
      const held = this.#subs.get(subject);
      if (held !== undefined) {
        held.count++;
        continue;
      }
      const sub = this.#nc.subscribe(subject, {
        callback: (err, msg) => {
          if (err !== null) return;
          const m = decodeEnvelope(msg.subject, msg.data);
          if (m === undefined) return;
          this.counts.received++;
          this.#events.message(m);
        },
      });
      this.#subs.set(subject, { sub, count: 1 });
    }
  }

  /** A filter lost its last local subscriber. */
  filterRemoved(filter: string): void {
    for (const subject of filterToSubjects(filter)) {
      const held = this.#subs.get(subject);
      if (held === undefined) continue;
      if (--held.count > 0) continue;
      held.sub.unsubscribe();
      this.#subs.delete(subject);
    }
  }

  get subjects(): number {
    return this.#subs.size;
  }

  async close(): Promise<void> {
    try {
      await this.#nc.drain();
    } catch {
      await this.#nc.close().catch(() => undefined);
    }
  }
}

/**
 * A message between nodes: a few bytes of envelope before the payload (NATS headers cost more
 * CPU per message than the routing):
 *   version (1) · flags (bits 0–1 QoS, 2 retain, 3 expiry, 4 forwarded MQTT 5 properties) ·
 *   publisher id length · publisher id · [expiry: 8 bytes, ms since epoch] ·
 *   [properties: 4-byte length + JSON] · payload
 */
const ENVELOPE_VERSION = 1;

export function encodeEnvelope(m: Message): Buffer {
  const from = Buffer.from(m.from, 'utf8');
  const fwd =
    m.fwd === undefined
      ? undefined
      : Buffer.from(
          JSON.stringify({
            ...m.fwd,
            ...(m.fwd.correlationData !== undefined && { correlationData: m.fwd.correlationData.toString('base64') }),
          }),
          'utf8',
        );
  const size =
    3 + from.length + (m.expiresAt === undefined ? 0 : 8) + (fwd === undefined ? 0 : 4 + fwd.length) + m.payload.length;
  const out = Buffer.allocUnsafe(size);
  out[0] = ENVELOPE_VERSION;
  out[1] = m.qos | (m.retain ? 4 : 0) | (m.expiresAt === undefined ? 0 : 8) | (fwd === undefined ? 0 : 16);
  out[2] = from.length;
  let at = 3 + from.copy(out, 3);
  if (m.expiresAt !== undefined) at = out.writeDoubleBE(m.expiresAt, at);
  if (fwd !== undefined) {
    at = out.writeUInt32BE(fwd.length, at);
    at += fwd.copy(out, at);
  }
  m.payload.copy(out, at);
  return out;
}

/** The message in an envelope from another node; undefined for anything that is not one. */
export function decodeEnvelope(subject: string, data: Uint8Array): Message | undefined {
  const b = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  if (b.length < 3 || b[0] !== ENVELOPE_VERSION) return undefined;
  const flags = b[1]!;
  if ((flags & 3) === 3) return undefined;
  const qos = (flags & 3) as 0 | 1 | 2;
  let at = 3 + b[2]!;
  if (at > b.length) return undefined;
  const from = b.toString('utf8', 3, at);
  let expiresAt: number | undefined;
  if ((flags & 8) !== 0) {
    expiresAt = b.readDoubleBE(at);
    at += 8;
  }
  let fwd: ForwardedProperties | undefined;
  if ((flags & 16) !== 0) {
    const n = b.readUInt32BE(at);
    at += 4;
    const raw = JSON.parse(b.toString('utf8', at, at + n)) as ForwardedProperties & { correlationData?: string };
    at += n;
    fwd = {
      ...raw,
      ...(raw.correlationData !== undefined && { correlationData: Buffer.from(raw.correlationData, 'base64') }),
    } as ForwardedProperties;
  }
  return new Message(subjectToTopic(subject), b.subarray(at), qos, (flags & 4) !== 0, from, { fwd, expiresAt });
}
