/** One retained message [MQTT-3.3.1-5], with the device that published it (for quotas and revocation). */
export interface Retained {
  topic: string;
  payload: Buffer;
  qos: 0 | 1 | 2;
  deviceId: string;
  /** The message as published, when it carries MQTT 5 properties (kept in memory; on disk only topic, payload and QoS). */
  message?: { readonly expiresAt: number | undefined; expired(now?: number): boolean };
}

export interface RetainedLimits {
  perDevice: number;
  bytesPerDevice: number;
  total: number;
  bytesTotal: number;
}

interface Node {
  children: Map<string, Node>;
  message: Retained | undefined;
}

const newNode = (): Node => ({ children: new Map(), message: undefined });

/**
 * Retained messages in a trie of topic levels, so a SUBSCRIBE walks only the branches its
 * filter can match instead of scanning every retained message. Bounded per device and in total
 * (count and bytes): past a quota the message is still delivered but not retained. A device's
 * retained messages go when it is revoked or deleted.
 */
export class RetainedStore {
  readonly #root = newNode();
  readonly #limits: RetainedLimits;
  readonly #byDevice = new Map<string, Map<string, number>>(); // deviceId → topic → bytes
  #count = 0;
  #bytes = 0;

  constructor(limits: RetainedLimits) {
    this.#limits = limits;
  }

  get size(): number {
    return this.#count;
  }

  get bytes(): number {
    return this.#bytes;
  }

  /**
   * Stores (or, with an empty payload, clears [MQTT-3.3.1-10]) the retained message of a topic.
   * Returns false when a quota refused it (nothing changed).
   */
  set(message: Retained): boolean {
    const levels = message.topic.split('/');
    if (message.payload.length === 0) {
      this.delete(message.topic);
      return true;
    }
    const existing = this.#find(levels)?.message;
    const size = message.payload.length + message.topic.length;
    const mine = this.#byDevice.get(message.deviceId);
    const replacing =
      existing !== undefined && existing.deviceId === message.deviceId
        ? existing.payload.length + existing.topic.length
        : 0;
    const deviceBytes = [...(mine?.values() ?? [])].reduce((a, b) => a + b, 0) - replacing + size;
    const deviceCount = (mine?.size ?? 0) + (replacing > 0 ? 0 : 1);
    const freed = existing === undefined ? 0 : existing.payload.length + existing.topic.length;
    if (
      deviceCount > this.#limits.perDevice ||
      deviceBytes > this.#limits.bytesPerDevice ||
      this.#count + (existing === undefined ? 1 : 0) > this.#limits.total ||
      this.#bytes - freed + size > this.#limits.bytesTotal
    ) {
      return false;
    }
    if (existing !== undefined) this.delete(message.topic);
    let node = this.#root;
    for (const level of levels) {
      let next = node.children.get(level);
      if (next === undefined) node.children.set(level, (next = newNode()));
      node = next;
    }
    node.message = { ...message, payload: Buffer.from(message.payload) }; // its own copy, not a slice of a socket buffer
    this.#count++;
    this.#bytes += size;
    let m = this.#byDevice.get(message.deviceId);
    if (m === undefined) this.#byDevice.set(message.deviceId, (m = new Map()));
    m.set(message.topic, size);
    return true;
  }

  delete(topic: string): Retained | undefined {
    const levels = topic.split('/');
    const path: Node[] = [this.#root];
    let node = this.#root;
    for (const level of levels) {
      const next = node.children.get(level);
      if (next === undefined) return undefined;
      path.push(next);
      node = next;
    }
    const message = node.message;
    if (message === undefined) return undefined;
    node.message = undefined;
    this.#count--;
    this.#bytes -= message.payload.length + message.topic.length;
    const m = this.#byDevice.get(message.deviceId);
    m?.delete(topic);
    if (m?.size === 0) this.#byDevice.delete(message.deviceId);
    for (let i = levels.length; i > 0; i--) {
      const n = path[i] as Node;
      if (n.message !== undefined || n.children.size > 0) break;
      (path[i - 1] as Node).children.delete(levels[i - 1] as string);
    }
    return message;
  }

  /** Removes every retained message a device published; returns their topics. */
  deleteDevice(deviceId: string): string[] {
    const topics = [...(this.#byDevice.get(deviceId)?.keys() ?? [])];
    for (const t of topics) this.delete(t);
    return topics;
  }

  /** Retained messages whose topic the filter matches; `$`-topics never by a leading wildcard [MQTT-4.7.2-1]. */
  match(filter: string): Retained[] {
    const out: Retained[] = [];
    this.#walk(this.#root, filter.split('/'), 0, out);
    return out;
  }

  #walk(node: Node, levels: string[], i: number, out: Retained[]): void {
    if (i === levels.length) {
      if (node.message !== undefined) out.push(node.message);
      return;
    }
    const level = levels[i] as string;
    if (level === '#') {
      if (node.message !== undefined && i > 0) out.push(node.message); // 'a/#' matches 'a'
      for (const [name, child] of node.children) if (!(i === 0 && name.startsWith('$'))) this.#collect(child, out);
      return;
    }
    if (level === '+') {
      for (const [name, child] of node.children)
        if (!(i === 0 && name.startsWith('$'))) this.#walk(child, levels, i + 1, out);
      return;
    }
    const child = node.children.get(level);
    if (child !== undefined) this.#walk(child, levels, i + 1, out);
  }

  #collect(node: Node, out: Retained[]): void {
    if (node.message !== undefined) out.push(node.message);
    for (const child of node.children.values()) this.#collect(child, out);
  }

  #find(levels: string[]): Node | undefined {
    let node: Node | undefined = this.#root;
    for (const level of levels) {
      node = node.children.get(level);
      if (node === undefined) return undefined;
    }
    return node;
  }

  all(): Retained[] {
    const out: Retained[] = [];
    this.#collect(this.#root, out);
    return out;
  }
}
