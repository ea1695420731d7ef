import { createHash } from 'node:crypto';

/**
 * MQTT topics and filters as NATS subjects, for fan-out between gateway nodes.
 *
 * A topic's levels become a subject's tokens under `fg.m.`. NATS reserves `.` (the token
 * separator), `*` and `>` (wildcards) and whitespace, and forbids empty tokens; MQTT allows all of
 * them inside a level (and empty levels, `a//b`). A level made only of `A–Z a–z 0–9 _ -` is kept
 * as it is (the common case: `devices/s-1/telemetry` → `fg.m.devices.s-1.telemetry`); any other
 * level, the empty one included, becomes `~` + its UTF-8 bytes in base64url — which has no `~`, so
 * a kept level and an encoded one never collide, and the mapping is one-to-one.
 *
 * Filters: `+` → `*`; a trailing `#` matches the parent level too in MQTT ([MQTT-4.7.1-2]), so
 * `a/#` becomes two subjects, `fg.m.a` and `fg.m.a.>`; `#` alone is `fg.m.>`. The subjects are a
 * superset of what the filter matches (a `$`-topic rule is applied on delivery by each node's own
 * subscription trie), never a subset.
 */
export const MESSAGE_PREFIX = 'fg.m';
/** Retained messages, replicated to every node: `fg.r.` + the same tokens. */
export const RETAINED_PREFIX = 'fg.r';
/**
 * Topics too long for a subject (a device may publish a 5,000-character level; NATS drops a
 * connection whose control line passes 4 KiB): `fg.l.` + SHA-256 of the topic (base64url), the
 * topic itself in the envelope. Every filter with a wildcard, and every filter too long for a subject,
 * also listens on `fg.l.>`; the node's own trie decides what matches (a long exact filter matches
 * long topics only, so it needs no subject of its own).
 */
export const LONG_PREFIX = 'fg.l';
/** A long retained topic: `fg.r.~~` + the hash (`~~` is no encoded level: base64url has no `~`). */
const LONG_RETAINED_PREFIX = `${RETAINED_PREFIX}.~~`;
/**
 * The longest subject a topic or filter maps to (bytes; every subject here is ASCII). NATS's
 * control line (`MSG <subject> <sid> <reply> <size>`) is bounded by `max_control_line`, 4 KiB by
 * default; 512 leaves room for the reply inbox and a server configured below its default.
 */
export const SUBJECT_MAX = 512;

const PLAIN = /^[A-Za-z0-9_-]+$/;

export function encodeLevel(level: string): string {
  return PLAIN.test(level) ? level : `~${Buffer.from(level, 'utf8').toString('base64url')}`;
}

export function decodeLevel(token: string): string {
  return token.startsWith('~') ? Buffer.from(token.slice(1), 'base64url').toString('utf8') : token;
}

/** Devices publish to the same few topics over and over: the mapping is remembered (bounded). */
const CACHE_MAX = 10_000;
const toSubject = new Map<string, string>();
const toTopic = new Map<string, string>();

function remember(cache: Map<string, string>, key: string, value: string): string {
  if (cache.size >= CACHE_MAX) cache.clear();
  cache.set(key, value);
  return value;
}

/** The hash that names a long topic's subject. */
export function topicHash(topic: string): string {
  return createHash('sha256').update(topic, 'utf8').digest('base64url');
}

function mapTopic(topic: string): string {
  const s = `${MESSAGE_PREFIX}.${topic.split('/').map(encodeLevel).join('.')}`;
  return s.length <= SUBJECT_MAX ? s : `${LONG_PREFIX}.${topicHash(topic)}`;
}

/** The subject a message on `topic` travels on (`fg.m.…`, or `fg.l.<hash>` for a long topic). */
export function topicToSubject(topic: string): string {
  return toSubject.get(topic) ?? remember(toSubject, topic, mapTopic(topic));
}

/** Whether a message or retained subject names its topic by hash (the topic is then in the envelope). */
export function isLongSubject(subject: string): boolean {
  return subject.startsWith(`${LONG_PREFIX}.`) || subject.startsWith(LONG_RETAINED_PREFIX);
}

/** The subject a retained message is replicated on. */
export function retainedSubject(topic: string): string {
  const s = topicToSubject(topic);
  return s.startsWith(`${LONG_PREFIX}.`)
    ? `${LONG_RETAINED_PREFIX}${s.slice(LONG_PREFIX.length + 1)}`
    : `${RETAINED_PREFIX}${s.slice(MESSAGE_PREFIX.length)}`;
}

/** The hash a long subject carries (the topic's, for the envelope's topic to be checked against). */
export function longSubjectHash(subject: string): string {
  return subject.startsWith(LONG_RETAINED_PREFIX)
    ? subject.slice(LONG_RETAINED_PREFIX.length)
    : subject.slice(LONG_PREFIX.length + 1);
}

const TOKEN = /^(?:[A-Za-z0-9_-]+|~[A-Za-z0-9_-]*)$/;
const UTF8 = new TextDecoder('utf-8', { fatal: true });

function strictLevel(token: string): string | undefined {
  if (!TOKEN.test(token)) return undefined;
  if (!token.startsWith('~')) return token;
  const bytes = Buffer.from(token.slice(1), 'base64url');
  // Canonical only: one topic, one subject (no second spelling of a level from another process).
  if (bytes.toString('base64url') !== token.slice(1)) return undefined;
  let level: string;
  try {
    level = UTF8.decode(bytes);
  } catch {
    return undefined;
  }
  return PLAIN.test(level) || /[+#/\0]/.test(level) ? undefined : level;
}

/**
 * The topic of a message or retained subject (both prefixes have the same length) read from
 * another process: undefined unless it is exactly what {@link topicToSubject} makes of a valid topic.
 */
export function subjectToTopic(subject: string): string | undefined {
  const known = toTopic.get(subject);
  if (known !== undefined) return known;
  if (subject.length > SUBJECT_MAX) return undefined;
  const levels: string[] = [];
  for (const token of subject.slice(MESSAGE_PREFIX.length + 1).split('.')) {
    const level = strictLevel(token);
    if (level === undefined) return undefined;
    levels.push(level);
  }
  return remember(toTopic, subject, levels.join('/'));
}

/**
 * The subjects that carry every topic `filter` matches: one, or two for a trailing `#`; plus
 * `fg.l.>` when the filter has a wildcard (it may match a long topic); `fg.l.>` alone when the
 * filter itself is too long for a subject.
 */
export function filterToSubjects(filter: string): string[] {
  const levels = filter.split('/');
  const tokens = levels.map((l) => (l === '+' ? '*' : l === '#' ? '>' : encodeLevel(l)));
  const wildcard = levels.some((l) => l === '+' || l === '#');
  const long = wildcard ? [`${LONG_PREFIX}.>`] : [];
  let subjects: string[];
  if (levels.at(-1) === '#') {
    if (levels.length === 1) return [`${MESSAGE_PREFIX}.>`, ...long];
    const parent = `${MESSAGE_PREFIX}.${tokens.slice(0, -1).join('.')}`;
    subjects = [parent, `${parent}.>`];
  } else subjects = [`${MESSAGE_PREFIX}.${tokens.join('.')}`];
  if (subjects.some((s) => s.length > SUBJECT_MAX)) return [`${LONG_PREFIX}.>`];
  return [...subjects, ...long];
}
