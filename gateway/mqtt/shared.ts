import type { MqttSession } from './session.ts';
import { SubscriptionTrie } from './trie.ts';

/**
 * Shared subscriptions [MQTT-4.8.2]: `$share/<share name>/<filter>`. The sessions holding the same
 * share name and filter form a group; each message matching the filter goes to **one** member.
 *
 * Distribution is round robin over the members that can take the message now (connected and not
 * cut), in the order they joined: a backend's workers get equal shares of a steady stream, which
 * is what spreading work needs (EMQX's default is random; sticky and hash-by-topic keep order per
 * device but pile a noisy device onto one worker). When no member is connected, a QoS 1/2 message
 * goes to a persistent member's queue (round robin too), a QoS 0 message is dropped. Retained
 * messages are not sent on a shared subscription (§4.8.2).
 */
export const SHARE_PREFIX = '$share/';

/**
 * Who may join a shared group: backend services (a group spreads a fleet's traffic over a
 * backend's workers). A device joining one would take messages meant for others: refused (0x87).
 */
export const SHARED_SUBSCRIBER_TYPES: readonly string[] = ['service'];

export interface SharedFilter {
  /** The share name. */
  group: string;
  /** The filter inside. */
  filter: string;
  /** `<share name> NUL <filter>`: the group's key. */
  key: string;
}

/** The share name and filter of `$share/<name>/<filter>`; `invalid` when it is one in form only; undefined for an ordinary filter. */
export function parseShared(full: string): SharedFilter | 'invalid' | undefined {
  if (!full.startsWith(SHARE_PREFIX)) return undefined;
  const rest = full.slice(SHARE_PREFIX.length);
  const slash = rest.indexOf('/');
  if (slash <= 0) return 'invalid'; // [MQTT-4.8.2-1]: a share name of at least one character, then '/'
  const group = rest.slice(0, slash);
  const filter = rest.slice(slash + 1);
  if (/[+#]/.test(group) || filter === '') return 'invalid'; // [MQTT-4.8.2-2]
  return { group, filter, key: `${group}\0${filter}` };
}

export class SharedGroup {
  readonly group: string;
  readonly filter: string;
  readonly key: string;
  /** Member → its subscription value (options + 256 × identifier). */
  readonly members = new Map<MqttSession, number>();
  /** The members in the order they joined (round robin walks it; no allocation per message). */
  #order: MqttSession[] = [];
  #next = 0;

  constructor(s: SharedFilter) {
    this.group = s.group;
    this.filter = s.filter;
    this.key = s.key;
  }

  set(member: MqttSession, value: number): void {
    if (!this.members.has(member)) this.#order.push(member);
    this.members.set(member, value);
  }

  delete(member: MqttSession): boolean {
    if (!this.members.delete(member)) return false;
    this.#order = this.#order.filter((m) => m !== member);
    return true;
  }

  /**
   * The member to take the next message: round robin over those `ready` accepts, then (for QoS
   * 1/2) over the persistent ones; undefined when none can.
   */
  pick(ready: (m: MqttSession) => boolean, queueable: boolean): MqttSession | undefined {
    const order = this.#order;
    const n = order.length;
    for (let pass = 0; pass < (queueable ? 2 : 1); pass++) {
      for (let i = 0; i < n; i++) {
        const at = (this.#next + i) % n;
        const member = order[at]!;
        if (pass === 0 ? !ready(member) : !member.persistent) continue;
        this.#next = at + 1;
        return member;
      }
    }
    return undefined;
  }
}

/** The groups on this node, and a trie over their filters. */
export class SharedGroups {
  readonly trie = new SubscriptionTrie<SharedGroup>();
  readonly #groups = new Map<string, SharedGroup>();

  get(key: string): SharedGroup | undefined {
    return this.#groups.get(key);
  }

  get size(): number {
    return this.#groups.size;
  }

  /** A session joins (or re-subscribes to) a group; true when the group is new on this node. */
  join(s: SharedFilter, session: MqttSession, value: number): boolean {
    let g = this.#groups.get(s.key);
    const created = g === undefined;
    if (g === undefined) {
      g = new SharedGroup(s);
      this.#groups.set(s.key, g);
      this.trie.add(s.filter, g, 0);
    }
    g.set(session, value);
    return created;
  }

  /** A session leaves; true when the group has no member left on this node (and is gone). */
  leave(s: SharedFilter, session: MqttSession): boolean {
    const g = this.#groups.get(s.key);
    if (g === undefined || !g.delete(session)) return false;
    if (g.members.size > 0) return false;
    this.#groups.delete(s.key);
    this.trie.remove(s.filter, g);
    return true;
  }
}
