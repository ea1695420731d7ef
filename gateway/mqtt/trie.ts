/**
 * Subscriptions by topic filter, in a trie of levels: matching a topic walks its levels once,
 * following the exact level, `+` and `#` children, so the cost grows with the topic's depth and
 * the number of matching filters, not with the number of subscriptions [MQTT-4.7].
 * `$`-topics are never matched by a filter starting with `+` or `#` [MQTT-4.7.2-1].
 */
export class SubscriptionTrie<S> {
  readonly #root: Node<S> = newNode();

  add(filter: string, subscriber: S, qos: 0 | 1 | 2): void {
    let node = this.#root;
    for (const level of filter.split('/')) {
      let next = node.children.get(level);
      if (next === undefined) node.children.set(level, (next = newNode()));
      node = next;
    }
    node.subscribers.set(subscriber, qos);
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
   * Every subscriber whose filters match `topic`, with the **highest** QoS of its matching
   * subscriptions: a client with overlapping subscriptions gets the message once [MQTT-3.3.5-1].
   */
  match(topic: string, into: Map<S, 0 | 1 | 2> = new Map()): Map<S, 0 | 1 | 2> {
    const levels = topic.split('/');
    this.#walk(this.#root, levels, 0, (levels[0] ?? '').startsWith('$'), into);
    return into;
  }

  #walk(node: Node<S>, levels: string[], i: number, dollar: boolean, into: Map<S, 0 | 1 | 2>): void {
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
  subscribers: Map<S, 0 | 1 | 2>;
}

function newNode<S>(): Node<S> {
  return { children: new Map(), subscribers: new Map() };
}

function collect<S>(node: Node<S>, into: Map<S, 0 | 1 | 2>): void {
  for (const [s, qos] of node.subscribers) {
    const had = into.get(s);
    if (had === undefined || qos > had) into.set(s, qos);
  }
}
