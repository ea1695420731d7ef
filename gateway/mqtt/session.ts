import { encodePublish, type EncodedPublish } from './codec.ts';

/**
 * A message as it is routed: the payload is shared, and each wire form (QoS, retain flag) is
 * encoded once for every subscriber that gets it.
 */
export class Message {
  readonly topic: string;
  readonly payload: Buffer;
  readonly qos: 0 | 1 | 2;
  readonly retain: boolean;
  /** Who published it (device id), for retained quotas and logs. */
  readonly from: string;
  #encoded: (EncodedPublish | undefined)[] = [];
  #topicBytes: Buffer | undefined;

  constructor(topic: string, payload: Buffer, qos: 0 | 1 | 2, retain: boolean, from: string) {
    this.topic = topic;
    this.payload = payload;
    this.qos = qos;
    this.retain = retain;
    this.from = from;
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
}

/** A QoS 1/2 delivery owed to a session: queued, then in flight until acknowledged. */
export interface Delivery {
  message: Message;
  qos: 1 | 2;
  retain: boolean;
  /** Row id in the durable store (persistent sessions in disk mode). */
  rowId: number | undefined;
  /** Sent before (a redelivery carries DUP) [MQTT-3.3.1-1]. */
  dup: boolean;
  /** For QoS 2: PUBREC received, PUBREL sent; waiting for PUBCOMP. */
  released: boolean;
  /** The packet id it was sent with (kept across a reconnect for a released QoS 2 delivery). */
  packetId: number | undefined;
}

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
  readonly subscriptions = new Map<string, 0 | 1 | 2>();
  readonly queue = new Queue<Delivery>();
  readonly inflight = new Map<number, Delivery>();
  /** Inbound QoS 2 packet ids received and PUBREC'd, awaiting PUBREL [MQTT-4.3.3]. */
  readonly qos2In = new Set<number>();
  /** When the last connection of a persistent session closed (for expiry). */
  lastSeen = Date.now();
  #nextPacketId = 1;

  constructor(clientId: string, deviceId: string, persistent: boolean) {
    this.clientId = clientId;
    this.deviceId = deviceId;
    this.persistent = persistent;
  }

  /** A packet id not in flight [MQTT-2.3.1-2]; undefined if all 65,535 are (never, with the window). */
  nextPacketId(): number | undefined {
    for (let i = 0; i < 65_535; i++) {
      const id = this.#nextPacketId;
      this.#nextPacketId = id === 65_535 ? 1 : id + 1;
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
