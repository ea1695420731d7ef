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

export function topicToSubject(topic: string): string {
  return (
    toSubject.get(topic) ??
    remember(toSubject, topic, `${MESSAGE_PREFIX}.${topic.split('/').map(encodeLevel).join('.')}`)
  );
}

/** The subject a retained message is replicated on. */
export function retainedSubject(topic: string): string {
  return `${RETAINED_PREFIX}${topicToSubject(topic).slice(MESSAGE_PREFIX.length)}`;
}

/** The topic of a message or retained subject (both prefixes have the same length). */
export function subjectToTopic(subject: string): string {
  return (
    toTopic.get(subject) ??
    remember(
      toTopic,
      subject,
      subject
        .slice(MESSAGE_PREFIX.length + 1)
        .split('.')
        .map(decodeLevel)
        .join('/'),
    )
  );
}

/** The subjects that carry every topic `filter` matches (one, or two for a trailing `#`). */
export function filterToSubjects(filter: string): string[] {
  const levels = filter.split('/');
  const tokens = levels.map((l) => (l === '+' ? '*' : l === '#' ? '>' : encodeLevel(l)));
  if (levels.at(-1) === '#') {
    if (levels.length === 1) return [`${MESSAGE_PREFIX}.>`];
    const parent = `${MESSAGE_PREFIX}.${tokens.slice(0, -1).join('.')}`;
    return [parent, `${parent}.>`];
  }
  return [`${MESSAGE_PREFIX}.${tokens.join('.')}`];
}
