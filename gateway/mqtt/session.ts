import { type EncodedPublish, encodePublish, type ForwardedProperties, publishProperties } from './encode.ts';
import type { Properties } from './packets.ts';

/**
 * A message as it is routed: the payload is shared, and each wire form (QoS, retain flag) is
 * encoded once for every subscriber that gets it.
 */
export class Message {
  readonly topic: string;
  readonly payload: Buffer;
  readonly qos: 0 | 1 | 2;
  readonly retain: boolean;
  /** Who published it (device id = client id), for retained quotas, No Local and logs. */
  readonly from: string;
  /** MQTT 5 properties forwarded to v5 subscribers (3.1.1 subscribers get the payload alone). */
  readonly fwd: ForwardedProperties | undefined;
  /** MQTT 5 Message Expiry: when it expires (ms since epoch). */
  readonly expiresAt: number | undefined;
  #encoded: (EncodedPublish | undefined)[] = [];
  #encoded5: (EncodedPublish | undefined)[] = [];
  #topicBytes: Buffer | undefined;

  constructor(
    topic: string,
    payload: Buffer,
    qos: 0 | 1 | 2,
    retain: boolean,
    from: string,
    v5?: { fwd?: ForwardedProperties | undefined; expiresAt?: number | undefined },
  ) {
    this.topic = topic;
    this.payload = payload;
    this.qos = qos;
    this.retain = retain;
    this.from = from;
    this.fwd = v5?.fwd;
    this.expiresAt = v5?.expiresAt;
  }

  /** The PUBLISH to send at `qos` with the retain flag `retain`, encoded on first use. */
  encoded(qos: 0 | 1 | 2, retain: boolean): EncodedPublish {
    const k = qos * 2 + (retain ? 1 : 0);
    let e = this.#encoded[k];
    if (e === undefined) {
      this.#topicBytes ??= Buffer.from(this.topic, 'utf8');
      e = encodePublish(this.topic, this.payload, qos, retain, this.#topicBytes);
      this.#encoded[k] = e;
    }
    return e;
  }

  /**
   * The MQTT 5 PUBLISH: forwarded properties, the expiry left now [MQTT-3.3.2-6] and the
   * subscriber's subscription identifiers. Encoded once for every v5 subscriber when neither
   * applies; undefined when the message has expired [MQTT-3.3.2-5].
   */
  encoded5(
    qos: 0 | 1 | 2,
    retain: boolean,
    subscriptionIds: readonly number[] | undefined,
    now?: number,
  ): EncodedPublish | undefined {
    this.#topicBytes ??= Buffer.from(this.topic, 'utf8');
    const shared = this.expiresAt === undefined && (subscriptionIds === undefined || subscriptionIds.length === 0);
    const k = qos * 2 + (retain ? 1 : 0);
    if (shared) {
      const e = this.#encoded5[k];
      if (e !== undefined) return e;
    }
    let expiry: number | undefined;
    if (this.expiresAt !== undefined) {
      expiry = Math.ceil((this.expiresAt - (now ?? Date.now())) / 1000);
      if (expiry <= 0) return undefined;
    }
    const e = encodePublish(
      this.topic,
      this.payload,
      qos,
      retain,
      this.#topicBytes,
      publishProperties(this.fwd, expiry, subscriptionIds),
    );
    if (shared) this.#encoded5[k] = e;
    return e;
  }

  /** The same message as sent to a new subscriber from the retained store: retain flag set. */
  asRetained(): Message {
    return this.retain
      ? this
      : new Message(this.topic, this.payload, this.qos, true, this.from, { fwd: this.fwd, expiresAt: this.expiresAt });
  }

  expired(now = Date.now()): boolean {
    return this.expiresAt !== undefined && this.expiresAt <= now;
  }
}

/**
 * The message a PUBLISH or a will carries, with its MQTT 5 properties when it has any.
 * Positional parameters: it runs once per inbound PUBLISH.
 */
export function newMessage(
  topic: string,
  payload: Buffer,
  qos: 0 | 1 | 2,
  retain: boolean,
  deviceId: string,
  props: Properties | undefined,
): Message {
  if (props === undefined) return new Message(topic, payload, qos, retain, deviceId);
  const expiresAt = props.messageExpiry === undefined ? undefined : Date.now() + props.messageExpiry * 1000;
  return new Message(topic, payload, qos, retain, deviceId, { fwd: forwarded(props), expiresAt });
}

/** The MQTT 5 properties a PUBLISH (or will) forwards to subscribers. */
function forwarded(p: Properties): ForwardedProperties | undefined {
  const f: ForwardedProperties = {};
  if (p.payloadFormat !== undefined) f.payloadFormat = p.payloadFormat;
  if (p.contentType !== undefined) f.contentType = p.contentType;
  if (p.responseTopic !== undefined) f.responseTopic = p.responseTopic;
  if (p.correlationData !== undefined) f.correlationData = p.correlationData;
  if (p.userProperties !== undefined) f.userProperties = p.userProperties;
  return Object.keys(f).length === 0 ? undefined : f;
}

/** A QoS 1/2 delivery owed to a session: queued, then in flight until acknowledged. */
export interface Delivery {
  message: Message;
  qos: 1 | 2;
  retain: boolean;
  /** Row id in the durable store (persistent sessions in disk mode). */
  rowId: number | undefined;
  /** Sequence in the session's JetStream inbox (`cluster.sessions: jetstream`): settled when acknowledged or dropped. */
  seq?: number;
  /** Sent before (a redelivery carries DUP) [MQTT-3.3.1-1]. */
  dup: boolean;
  /** For QoS 2: PUBREC received, PUBREL sent; waiting for PUBCOMP. */
  released: boolean;
  /** The packet id it was sent with (kept across a reconnect for a released QoS 2 delivery). */
  packetId: number | undefined;
  /** MQTT 5 subscription identifiers of the subscriptions it matched. */
  subscriptionIds?: number[];
  /** The shared group it was given to this session through (`<share name> NUL <filter>`): rerouted if the session ends. */
  group?: string;
  /** From a durable shared group's JetStream queue: acknowledged there once the member has it. */
  shareAck?: SharedAck;
}

/**
 * A message of a durable shared group as JetStream gave it to this node: `ack` once a member has
 * it (PUBACK, PUBREC, or sent at QoS 0), `nak` when no member here can take it (JetStream gives it
 * to another node, or to this one again later). Either at most once.
 */
export interface SharedAck {
  ack(): void;
  nak(): void;
}

/**
 * Packet ids of a persistent session in the cluster's durable state: a message from its JetStream
 * inbox is sent with an id its inbox sequence gives (1 … INBOX_IDS), the same on whichever node
 * sends it — so a device that received it from a node that then died, and holds its id awaiting
 * PUBREL, gets it again under that id and does not deliver it twice [MQTT-4.3.3]. Anything else
 * such a session is sent (retained messages on subscribing, shared groups) takes ids above.
 */
export const INBOX_IDS = 49_151;
export const inboxPacketId = (seq: number): number => ((seq - 1) % INBOX_IDS) + 1;

/** A FIFO without `Array.shift`'s O(n) cost on long queues. */
export class Queue<T> {
  #items: (T | undefined)[] = [];
  #head = 0;

  get length(): number {
    return this.#items.length - this.#head;
  }

  push(item: T): void {
    this.#items.push(item);
  }

  unshift(items: T[]): void {
    this.#items = [...items, ...this.#items.slice(this.#head)];
    this.#head = 0;
  }

  shift(): T | undefined {
    if (this.#head >= this.#items.length) return undefined;
    const item = this.#items[this.#head];
    this.#items[this.#head++] = undefined;
    if (this.#head > 1024 && this.#head * 2 > this.#items.length) {
      this.#items = this.#items.slice(this.#head);
      this.#head = 0;
    }
    return item;
  }

  drain(): T[] {
    const out = this.#items.slice(this.#head) as T[];
    this.#items = [];
    this.#head = 0;
    return out;
  }
}

/**
 * The MQTT session of one client id [MQTT-3.1.2-4]: its subscriptions and what it is owed. A
 * clean session lives as long as its connection; a persistent one (clean session 0) outlives it
 * — its subscriptions keep matching and its QoS 1/2 messages queue (on disk in durable mode) —
 * until the client cleans it or it expires.
 */
export class MqttSession {
  readonly clientId: string;
  deviceId: string;
  persistent: boolean;
  /** Filter → subscription options (MQTT 5 options byte; 3.1.1: the QoS). */
  readonly subscriptions = new Map<string, number>();
  /** Filter → MQTT 5 subscription identifier, for the subscriptions that have one. */
  readonly subscriptionIds = new Map<string, number>();
  /** How long the session outlives its connection (3.1.1 persistent: the configured expiry; MQTT 5: what the client asked, bounded). */
  expiryMs = 0;
  readonly queue = new Queue<Delivery>();
  readonly inflight = new Map<number, Delivery>();
  /** Inbound QoS 2 packet ids received and PUBREC'd, awaiting PUBREL [MQTT-4.3.3]. */
  readonly qos2In = new Set<number>();
  /**
   * Outbound QoS 2 messages from the session's JetStream inbox released (PUBREC received, PUBREL
   * sent) and awaiting PUBCOMP: inbox sequence → packet id. In the session's record, so that the
   * node it resumes on sends the PUBREL again rather than the message [MQTT-4.4.0-1].
   */
  readonly qos2Out = new Map<number, number>();

  /** The QoS 1/2 deliveries this session holds (in flight and queued) that came through a shared group. */
  sharedOwed(): Delivery[] {
    const owed: Delivery[] = [];
    for (const d of this.inflight.values()) if (d.group !== undefined && !d.released) owed.push(d);
    for (const d of this.queue.drain()) {
      if (d.group !== undefined) owed.push(d);
    }
    return owed;
  }
  /** When the last connection of a persistent session closed (for expiry). */
  lastSeen = Date.now();
  /** Queued messages kept at most (its device type's bound, set at each CONNECT; until then the global one). */
  maxQueued = Number.POSITIVE_INFINITY;
  #nextPacketId = 1;

  constructor(clientId: string, deviceId: string, persistent: boolean) {
    this.clientId = clientId;
    this.deviceId = deviceId;
    this.persistent = persistent;
  }

  /**
   * A packet id not in flight [MQTT-2.3.1-2], from `low` to 65,535; undefined if all are (never,
   * with the window). A range above 1 starts at a random place in it (see {@link INBOX_IDS}).
   */
  nextPacketId(low = 1): number | undefined {
    if (this.#nextPacketId < low) this.#nextPacketId = low + Math.floor(Math.random() * (65_535 - low));
    for (let i = low; i <= 65_535; i++) {
      const id = this.#nextPacketId;
      this.#nextPacketId = id === 65_535 ? low : id + 1;
      if (!this.inflight.has(id)) return id;
    }
    return undefined;
  }

  /** The connection closed: what was in flight is sent again, first, with DUP [MQTT-4.4.0-1]. */
  requeueInflight(): void {
    const pending = [...this.inflight.values()];
    this.inflight.clear();
    for (const d of pending) d.dup = true;
    if (pending.length > 0) this.queue.unshift(pending);
  }
}
