import { createInbox, type Msg, type NatsConnection, type Subscription } from 'nats';
import { inboxPrefix, json, nodeToken, readJson } from './wire.ts';

/**
 * Which message subjects the other gateway nodes listen on, as each announces it — so that a node
 * publishes to NATS only a message some other node may want (#29: a message that stays on its
 * node costs no bus work). NATS knows every subscription but tells no client; so each node
 * announces its own:
 *
 * - `fg.i.<node>`: a change `{ e, s, a?: [subjects added], d?: [subjects removed] }` (`e` the
 *   announcing bus's epoch — new at each start — and `s` its sequence, +1 per change) or, every
 *   second, a beat `{ e, s }` with the current sequence. NATS permissions let a node publish only
 *   under its own name.
 * - `fg.ia.<node>` with a reply inbox: that node's whole set at sequence `s`, in chunks
 *   `{ e, s, a: [...], end }`.
 *
 * A node keeps each peer's set and the union of all (plus its own shared groups' subjects, which
 * NATS queue groups serve even from here). It publishes everything — as if it knew nothing — while
 * any peer's set is unknown: for 3.5 s after it starts or its link comes back (every live peer
 * beats within that), while it asks a peer first heard mid-sequence or after a gap in its sequence
 * (a lost change), for a peer over the bound on subjects — and for good if NATS refuses its
 * subscription to the announcements (a permissions config from an earlier release). A peer unheard for 30 s is
 * forgotten. Changes travel on the same NATS connection as the SUB they follow and ahead of the
 * snapshot answered after them, so what a peer applies is never older than what NATS routes.
 *
 * The window this leaves: a subscription made on node B takes effect on node A when B's
 * announcement reaches A — one NATS hop after B's SUB reaches NATS, the same order of time as
 * before (a subscription on another node was never synchronous with its SUBACK).
 */
export const INTEREST_PREFIX = 'fg.i';
export const INTEREST_ASK_PREFIX = 'fg.ia';
export const interestSubject = (node: string): string => `${INTEREST_PREFIX}.${nodeToken(node)}`;
export const interestAsk = (node: string): string => `${INTEREST_ASK_PREFIX}.${nodeToken(node)}`;

const BEAT_MS = 1_000;
/** How long a node publishes everything after it starts or its link comes back: every live peer beats in it. */
const GRACE_MS = 3_500;
/** A peer unheard this long is forgotten (its subjects no longer count). */
const GONE_MS = 30_000;
/** How long an answer to an ask may take before the peer is asked again (at its next beat). */
const ASK_TIMEOUT_MS = 10_000;
/** Bytes of subjects per change or snapshot chunk (a change or chunk is read with a 64 KiB bound). */
const CHUNK_BYTES = 48 * 1024;
/** Answers kept at most (cleared when full, and whenever a set changes). */
const ANSWERS_MAX = 10_000;
/** Subjects one peer may make this node hold; a peer over it is treated as wanting everything. */
export const PEER_SUBJECTS_MAX = 2_000_000;
/** What a message subject of a node's filters looks like (`subjects.ts`): `fg.m.…` or `fg.l.…`, `*` tokens, a final `>`. */
const SUBJECT = /^fg\.[ml](\.([A-Za-z0-9_~-]+|\*))*(\.>)?$/;
const SUBJECT_MAX_BYTES = 600;
const EPOCH = /^[A-Za-z0-9]{1,40}$/;

/**
 * NATS subjects, counted: the ones without `*` in a map (a subject ending in `>` as itself), those
 * with `*` in a trie. `any(subject)` says whether one of them matches a message subject (no wildcard).
 */
export class SubjectSet {
  readonly #flat = new Map<string, number>();
  readonly #star: StarNode = starNode();
  #stars = 0;
  /** Moves on with every add and remove: what {@link any} answered before may no longer hold. */
  version = 0;

  add(subject: string): void {
    this.version++;
    if (!subject.includes('*')) {
      this.#flat.set(subject, (this.#flat.get(subject) ?? 0) + 1);
      return;
    }
    this.#stars++;
    const tokens = subject.split('.');
    let node = this.#star;
    for (let i = 0; i < tokens.length; i++) {
      const t = tokens[i]!;
      if (t === '>' && i === tokens.length - 1) {
        node.tail++;
        return;
      }
      let next = node.children.get(t);
      if (next === undefined) {
        next = starNode();
        node.children.set(t, next);
      }
      node = next;
    }
    node.here++;
  }

  remove(subject: string): void {
    this.version++;
    if (!subject.includes('*')) {
      const n = this.#flat.get(subject);
      if (n === undefined) return;
      if (n > 1) this.#flat.set(subject, n - 1);
      else this.#flat.delete(subject);
      return;
    }
    const tokens = subject.split('.');
    const path: StarNode[] = [this.#star];
    let node = this.#star;
    for (let i = 0; i < tokens.length; i++) {
      const t = tokens[i]!;
      if (t === '>' && i === tokens.length - 1) {
        if (node.tail === 0) return;
        node.tail--;
        this.#stars--;
        return this.#prune(path, tokens);
      }
      const next = node.children.get(t);
      if (next === undefined) return;
      node = next;
      path.push(node);
    }
    if (node.here === 0) return;
    node.here--;
    this.#stars--;
    this.#prune(path, tokens);
  }

  #prune(path: StarNode[], tokens: string[]): void {
    for (let i = path.length - 1; i > 0; i--) {
      const n = path[i]!;
      if (n.here > 0 || n.tail > 0 || n.children.size > 0) return;
      path[i - 1]!.children.delete(tokens[i - 1]!);
    }
  }

  get size(): number {
    return this.#flat.size + this.#stars;
  }

  /** Whether a subject held here matches `subject` (a message's: no wildcards). */
  any(subject: string): boolean {
    const flat = this.#flat;
    if (flat.size > 0) {
      if (flat.has(subject)) return true;
      for (let i = subject.indexOf('.'); i !== -1; i = subject.indexOf('.', i + 1))
        if (flat.has(`${subject.slice(0, i)}.>`)) return true;
    }
    return this.#stars > 0 && matchStar(this.#star, subject.split('.'), 0);
  }
}

interface StarNode {
  children: Map<string, StarNode>;
  /** Subjects ending at this node, and ending here with `>` (one or more tokens more). */
  here: number;
  tail: number;
}
const starNode = (): StarNode => ({ children: new Map(), here: 0, tail: 0 });

function matchStar(node: StarNode, tokens: string[], i: number): boolean {
  if (i === tokens.length) return node.here > 0;
  if (node.tail > 0) return true;
  const exact = node.children.get(tokens[i]!);
  if (exact !== undefined && matchStar(exact, tokens, i + 1)) return true;
  const star = node.children.get('*');
  return star !== undefined && matchStar(star, tokens, i + 1);
}

/** One other node as heard: its epoch and sequence, its subjects (undefined while not known). */
interface Peer {
  epoch: string;
  seq: number;
  subjects: Set<string> | undefined;
  /** Over {@link PEER_SUBJECTS_MAX}: wants everything until it restarts. */
  everything: boolean;
  heardAt: number;
  asking?: { sub: Subscription; timer: NodeJS.Timeout; got: Set<string> };
}

/** What a change, beat or snapshot chunk says, checked. */
interface Announcement {
  e: string;
  s: number;
  a: string[];
  d: string[];
  change: boolean;
  end: boolean;
}

function readAnnouncement(data: Uint8Array): Announcement | string {
  const r = readJson(data, 64 * 1024);
  if ('invalid' in r) return r.invalid;
  const { e, s, a, d, end } = r.ok;
  if (typeof e !== 'string' || !EPOCH.test(e)) return 'an interest announcement without its epoch';
  if (!Number.isSafeInteger(s) || (s as number) < 0) return 'an interest announcement without its sequence';
  const list = (v: unknown): string[] | undefined =>
    v === undefined
      ? []
      : Array.isArray(v) && v.every((x) => typeof x === 'string' && x.length <= SUBJECT_MAX_BYTES && SUBJECT.test(x))
        ? (v as string[])
        : undefined;
  const added = list(a);
  const removed = list(d);
  if (added === undefined || removed === undefined) return 'an interest announcement with a malformed subject';
  if (end !== undefined && typeof end !== 'boolean') return 'an interest snapshot chunk without its end flag';
  return { e, s: s as number, a: added, d: removed, change: a !== undefined || d !== undefined, end: end === true };
}

/** Subjects in chunks of at most {@link CHUNK_BYTES} (at least one, maybe empty). */
function chunks(subjects: Iterable<string>): string[][] {
  const out: string[][] = [[]];
  let bytes = 0;
  for (const s of subjects) {
    if (bytes + s.length + 3 > CHUNK_BYTES && out.at(-1)!.length > 0) {
      out.push([]);
      bytes = 0;
    }
    out.at(-1)!.push(s);
    bytes += s.length + 3;
  }
  return out;
}

export interface InterestState {
  peers: number;
  subjects: number;
  everything: boolean;
  deaf: boolean;
}

export interface InterestHooks {
  /** Subscribes with a handler that cannot throw into the NATS client; `onError` when NATS refuses the subscription. */
  on(subject: string, handler: (msg: Msg) => void, onError?: (err: Error) => void): Subscription;
  /** This node cannot hear the others' interest (NATS refused it): it publishes everything from now on. */
  blind(reason: string): void;
  /** Publishes if the link is up; false if not. */
  publish(subject: string, data: Uint8Array, reply?: string): boolean;
  /** Something a peer sent that is not what a node sends: counted and logged. */
  refuse(reason: string, subject: string): void;
}

/** This node's announced interest and what it knows of every other node's. See the module's comment. */
export class Interest {
  readonly #nc: NatsConnection;
  readonly #node: string;
  readonly #hooks: InterestHooks;
  readonly #epoch = `${Date.now().toString(36)}${Math.random().toString(36).slice(2, 10)}`;
  /** This node's subjects (plain filters' and shared groups'), counted; the announced sequence. */
  readonly #mine = new Map<string, number>();
  #seq = 0;
  /** Subjects changed since the last announcement, with whether each was held at that announcement. */
  readonly #dirty = new Map<string, boolean>();
  #flushQueued = false;
  /** This node's shared groups' subjects: its own publishes reach them through NATS. */
  readonly #ownShared = new SubjectSet();
  readonly #peers = new Map<string, Peer>();
  readonly #union = new SubjectSet();
  /** Peers whose set is not known, or who want everything. */
  #unknown = 0;
  #settled = false;
  /** NATS refused this node's subscription to the announcements. */
  #deaf = false;
  /** {@link wants}' answers, at the sets' version {@link #answersAt} (both only grow: their sum moves when either does). */
  readonly #answers = new Map<string, boolean>();
  #answersAt = 0;
  #graceTimer: NodeJS.Timeout | undefined;
  readonly #beat: NodeJS.Timeout;

  constructor(nc: NatsConnection, node: string, hooks: InterestHooks) {
    this.#nc = nc;
    this.#node = node;
    this.#hooks = hooks;
    // Refused by NATS (a permissions config from before announcements): deaf to the others, so
    // every message goes out — never silence because this node cannot hear.
    hooks.on(
      `${INTEREST_PREFIX}.*`,
      (msg) => this.#heard(msg),
      (err) => {
        if (this.#deaf) return;
        this.#deaf = true;
        hooks.blind(err.message);
      },
    );
    hooks.on(interestAsk(node), (msg) => this.#answer(msg));
    this.#beat = setInterval(() => this.#tick(), BEAT_MS);
    this.#beat.unref();
    this.#startGrace();
  }

  /** Whether another node (or a shared group here) may want a message on `subject`. */
  wants(subject: string): boolean {
    if (this.#everything) return true;
    // Devices publish to the same topics over and over: each answer is kept until a set changes.
    const version = this.#union.version + this.#ownShared.version;
    if (version !== this.#answersAt || this.#answers.size >= ANSWERS_MAX) {
      this.#answers.clear();
      this.#answersAt = version;
    }
    const known = this.#answers.get(subject);
    if (known !== undefined) return known;
    const want = this.#union.any(subject) || this.#ownShared.any(subject);
    this.#answers.set(subject, want);
    return want;
  }

  /** For metrics and tests: peers known, subjects held for them, whether this node publishes everything now (and whether for good: deaf). */
  get state(): InterestState {
    return {
      peers: this.#peers.size,
      subjects: this.#union.size,
      everything: this.#everything,
      deaf: this.#deaf,
    };
  }

  /** In its start's grace, a peer's set unknown, or deaf: every message goes out. */
  get #everything(): boolean {
    return !this.#settled || this.#unknown > 0 || this.#deaf;
  }

  /** A subject this node listens on (a filter's or, `shared`, a shared group's). */
  add(subject: string, shared = false): void {
    if (shared) this.#ownShared.add(subject);
    const n = this.#mine.get(subject) ?? 0;
    this.#mine.set(subject, n + 1);
    if (n === 0) this.#mark(subject, false);
  }

  remove(subject: string, shared = false): void {
    if (shared) this.#ownShared.remove(subject);
    const n = this.#mine.get(subject);
    if (n === undefined) return;
    if (n > 1) this.#mine.set(subject, n - 1);
    else {
      this.#mine.delete(subject);
      this.#mark(subject, true);
    }
  }

  /** The link came back: changes may have been lost both ways — publish everything until every peer is heard again. */
  reconnected(): void {
    for (const token of [...this.#peers.keys()]) this.#forget(token);
    this.#startGrace();
    this.#send({ e: this.#epoch, s: this.#seq });
  }

  close(): void {
    clearInterval(this.#beat);
    clearTimeout(this.#graceTimer);
    for (const token of [...this.#peers.keys()]) this.#forget(token);
  }

  #startGrace(): void {
    this.#settled = false;
    clearTimeout(this.#graceTimer);
    this.#graceTimer = setTimeout(() => {
      this.#settled = true;
    }, GRACE_MS);
    this.#graceTimer.unref();
  }

  #mark(subject: string, wasHeld: boolean): void {
    if (!this.#dirty.has(subject)) this.#dirty.set(subject, wasHeld);
    if (this.#flushQueued) return;
    this.#flushQueued = true;
    queueMicrotask(() => this.#flush());
  }

  /** Announces what changed since the last announcement (one sequence number per chunk). */
  #flush(): void {
    this.#flushQueued = false;
    if (this.#dirty.size === 0) return;
    const added: string[] = [];
    const removed: string[] = [];
    for (const [subject, was] of this.#dirty) {
      const now = this.#mine.has(subject);
      if (now !== was) (now ? added : removed).push(subject);
    }
    this.#dirty.clear();
    const subject = interestSubject(this.#node);
    for (const a of added.length > 0 ? chunks(added) : []) this.#send({ e: this.#epoch, s: ++this.#seq, a }, subject);
    for (const d of removed.length > 0 ? chunks(removed) : [])
      this.#send({ e: this.#epoch, s: ++this.#seq, d }, subject);
  }

  /** Sent even while the link is down (the sequence still moves on: peers see the gap and ask). */
  #send(body: object, subject = interestSubject(this.#node), reply?: string): void {
    this.#hooks.publish(subject, json(body), reply);
  }

  #tick(): void {
    this.#send({ e: this.#epoch, s: this.#seq });
    const now = Date.now();
    for (const [token, peer] of this.#peers) {
      if (now - peer.heardAt > GONE_MS) this.#forget(token);
      else if (peer.subjects === undefined && !peer.everything && peer.asking === undefined) this.#ask(token, peer);
    }
  }

  /** Another node's change or beat. */
  #heard(msg: Msg): void {
    const token = msg.subject.slice(INTEREST_PREFIX.length + 1);
    const a = readAnnouncement(msg.data);
    if (typeof a === 'string') return this.#hooks.refuse(a, msg.subject);
    let peer = this.#peers.get(token);
    if (peer === undefined || peer.epoch !== a.e) {
      // New to this node, or restarted (a new epoch starts empty at sequence 0).
      if (peer !== undefined) this.#forget(token);
      peer = { epoch: a.e, seq: 0, subjects: new Set(), everything: false, heardAt: Date.now() };
      this.#peers.set(token, peer);
      if (a.change ? a.s === 1 : a.s === 0) {
        if (a.change) this.#apply(peer, a);
        return;
      }
      return this.#resync(token, peer);
    }
    peer.heardAt = Date.now();
    if (peer.subjects === undefined || peer.everything) return; // asking: the answer covers what came before it
    if (a.change ? a.s === peer.seq + 1 : a.s === peer.seq) {
      if (a.change) this.#apply(peer, a);
      return;
    }
    this.#resync(token, peer); // a change was lost
  }

  #apply(peer: Peer, a: Announcement): void {
    const held = peer.subjects!;
    peer.seq = a.s;
    for (const s of a.a) {
      if (held.has(s)) continue;
      held.add(s);
      this.#union.add(s);
    }
    for (const s of a.d) if (held.delete(s)) this.#union.remove(s);
    if (held.size > PEER_SUBJECTS_MAX) this.#wantsEverything(peer);
  }

  #wantsEverything(peer: Peer): void {
    for (const s of peer.subjects ?? []) this.#union.remove(s);
    if (peer.subjects !== undefined) this.#unknown++;
    peer.subjects = undefined;
    peer.everything = true;
  }

  /** The peer's set is not known any more: everything is published until its answer arrives. */
  #resync(token: string, peer: Peer): void {
    if (peer.subjects !== undefined) {
      for (const s of peer.subjects) this.#union.remove(s);
      peer.subjects = undefined;
      this.#unknown++;
    }
    this.#ask(token, peer);
  }

  #ask(token: string, peer: Peer): void {
    const inbox = createInbox(inboxPrefix(this.#node));
    const got = new Set<string>();
    const sub = this.#hooks.on(inbox, (msg) => {
      // NATS's "no responders" (a status, no data): the peer is gone; its beats stop and it is forgotten.
      if (msg.data.length === 0) return this.#stopAsking(peer);
      const a = readAnnouncement(msg.data);
      if (typeof a === 'string') {
        this.#stopAsking(peer);
        return this.#hooks.refuse(`interest snapshot: ${a}`, msg.subject);
      }
      if (this.#peers.get(token) !== peer || a.e !== peer.epoch) return this.#stopAsking(peer); // it restarted
      for (const s of a.a) got.add(s);
      if (got.size > PEER_SUBJECTS_MAX) {
        this.#stopAsking(peer);
        peer.everything = true;
        return;
      }
      if (!a.end) return;
      this.#stopAsking(peer);
      peer.subjects = got;
      peer.seq = a.s;
      for (const s of got) this.#union.add(s);
      this.#unknown--;
    });
    const timer = setTimeout(() => this.#stopAsking(peer), ASK_TIMEOUT_MS);
    timer.unref();
    peer.asking = { sub, timer, got };
    if (!this.#hooks.publish(`${INTEREST_ASK_PREFIX}.${token}`, new Uint8Array(0), inbox)) this.#stopAsking(peer);
  }

  #stopAsking(peer: Peer): void {
    if (peer.asking === undefined) return;
    peer.asking.sub.unsubscribe();
    clearTimeout(peer.asking.timer);
    peer.asking = undefined;
  }

  #forget(token: string): void {
    const peer = this.#peers.get(token);
    if (peer === undefined) return;
    this.#stopAsking(peer);
    if (peer.subjects === undefined) this.#unknown--;
    else for (const s of peer.subjects) this.#union.remove(s);
    this.#peers.delete(token);
  }

  /** Another node asks for this node's whole set: pending changes first, then the set at that sequence. */
  #answer(msg: Msg): void {
    const inbox = msg.reply;
    if (inbox === undefined || !/^_INBOX\.[A-Za-z0-9_~-]+\.[A-Za-z0-9]+$/.test(inbox))
      return this.#hooks.refuse('an interest question without an inbox to answer', msg.subject);
    this.#flush();
    const parts = chunks(this.#mine.keys());
    for (const [i, a] of parts.entries())
      this.#send({ e: this.#epoch, s: this.#seq, a, end: i === parts.length - 1 }, inbox);
    void this.#nc.flush().catch(() => undefined);
  }
}
