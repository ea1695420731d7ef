/**
 * Subscriptions by topic filter, in a trie of levels: matching a topic walks its levels once,
 * following the exact level, `+` and `#` children, so the cost grows with the topic's depth and
 * the number of matching filters, not with the number of subscriptions [MQTT-4.7].
 * `$`-topics are never matched by a filter starting with `+` or `#` [MQTT-4.7.2-1].
 */
/**
 * What a subscription holds in the trie: the MQTT 5 subscription options byte (bits 0–1 QoS, 2 No
 * Local, 3 Retain As Published; 3.1.1: the QoS alone) plus 256 × its subscription identifier.
 * When one subscriber's filters overlap for a topic, their values merge: the highest QoS, No
 * Local only if all have it, Retain As Published if any has it, and {@link OVERLAP} set (the
 * identifiers are then looked up by the caller).
 */
export const OVERLAP = 0x40;

function merge(a: number, b: number): number {
  return Math.max(a & 3, b & 3) | (a & b & 4) | ((a | b) & 8) | OVERLAP;
}

export class SubscriptionTrie<S> {
  readonly #root: Node<S> = newNode();

  /** Whether no filter is held (removal prunes empty branches, so an empty trie is a bare root). */
  get empty(): boolean {
    return this.#root.children.size === 0;
  }

  add(filter: string, subscriber: S, value: number): void {
    let node = this.#root;
    for (const level of filter.split('/')) {
      let next = node.children.get(level);
      if (next === undefined) node.children.set(level, (next = newNode()));
      node = next;
    }
    node.subscribers.set(subscriber, value);
  }

  remove(filter: string, subscriber: S): boolean {
    const path: Node<S>[] = [this.#root];
    const levels = filter.split('/');
    let node = this.#root;
    for (const level of levels) {
      const next = node.children.get(level);
      if (next === undefined) return false;
      path.push(next);
      node = next;
    }
    const removed = node.subscribers.delete(subscriber);
    // Prune empty branches so a churn of device subscriptions leaves no garbage behind.
    for (let i = levels.length; i > 0; i--) {
      const n = path[i] as Node<S>;
      if (n.subscribers.size > 0 || n.children.size > 0) break;
      (path[i - 1] as Node<S>).children.delete(levels[i - 1] as string);
    }
    return removed;
  }

  /**
   * Every subscriber whose filters match `topic`, with its subscription's value (merged when
   * several of its filters match: the **highest** QoS — a client with overlapping subscriptions
   * gets the message once [MQTT-3.3.5-1], [MQTT-3.3.4-2]).
   */
  match(topic: string, into: Map<S, number> = new Map()): Map<S, number> {
    const levels = topic.split('/');
    this.#walk(this.#root, levels, 0, (levels[0] ?? '').startsWith('$'), into);
    return into;
  }

  #walk(node: Node<S>, levels: string[], i: number, dollar: boolean, into: Map<S, number>): void {
    const wildcardsAllowed = !(dollar && i === 0);
    if (wildcardsAllowed) {
      const hash = node.children.get('#');
      if (hash !== undefined) collect(hash, into); // '#' also matches the parent level [MQTT-4.7.1-2]
    }
    if (i === levels.length) {
      collect(node, into);
      return;
    }
    const exact = node.children.get(levels[i] as string);
    if (exact !== undefined) this.#walk(exact, levels, i + 1, dollar, into);
    if (wildcardsAllowed) {
      const plus = node.children.get('+');
      if (plus !== undefined) this.#walk(plus, levels, i + 1, dollar, into);
    }
  }
}

interface Node<S> {
  children: Map<string, Node<S>>;
  subscribers: Map<S, number>;
}

function newNode<S>(): Node<S> {
  return { children: new Map(), subscribers: new Map() };
}

function collect<S>(node: Node<S>, into: Map<S, number>): void {
  for (const [s, value] of node.subscribers) {
    const had = into.get(s);
    into.set(s, had === undefined ? value : merge(had, value));
  }
}

/** Whether a topic filter matches a topic name (the trie's rules, for one filter). */
export function filterMatches(filter: string, topic: string): boolean {
  const f = filter.split('/');
  const t = topic.split('/');
  if (topic.startsWith('$') && (f[0] === '+' || f[0] === '#')) return false;
  for (let i = 0; i < f.length; i++) {
    if (f[i] === '#') return true;
    if (i >= t.length) return false;
    if (f[i] !== '+' && f[i] !== t[i]) return false;
  }
  return f.length === t.length;
}
