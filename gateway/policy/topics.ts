import type { TopicRules } from '../../config/config.ts';
import type { DeviceRecord } from '../../provisioning/registry/records.ts';

/**
 * Topic policy: templates from config, expanded for one device, then matched per PUBLISH
 * and SUBSCRIBE. A `gateway` device also acts for its registered children.
 */
export interface TopicScope {
  publish: readonly string[][];
  subscribe: readonly string[][];
}

/** `${device.id}`, `${device.fleet}`, `${device.type}`. Ids and fleets cannot hold `/ + #` (device-id rules). */
export function expandTemplate(template: string, device: Pick<DeviceRecord, 'id' | 'fleet' | 'type'>): string {
  return template.replace(/\$\{device\.(id|fleet|type)\}/g, (_m, field: 'id' | 'fleet' | 'type') => device[field]);
}

export function scopeFor(
  rules: TopicRules,
  device: Pick<DeviceRecord, 'id' | 'fleet' | 'type'>,
  children: readonly string[] = [],
): TopicScope {
  const childFilters = device.type === 'gateway' ? children.map((c) => `devices/${c}/#`) : [];
  const expand = (list: readonly string[]) =>
    [...list.map((t) => expandTemplate(t, device)), ...childFilters].map((f) => f.split('/'));
  return { publish: expand(rules.publish), subscribe: expand(rules.subscribe) };
}

/** Does a concrete topic match a filter? [MQTT-4.7]; `$`-topics never match a leading wildcard [MQTT-4.7.2-1]. */
export function topicMatches(filter: readonly string[], topic: readonly string[]): boolean {
  if ((topic[0] ?? '').startsWith('$') && (filter[0] === '+' || filter[0] === '#')) return false;
  for (let i = 0; i < filter.length; i++) {
    const f = filter[i];
    if (f === '#') return true;
    if (i >= topic.length) return false;
    if (f !== '+' && f !== topic[i]) return false;
  }
  return filter.length === topic.length;
}

/** Is every topic the subscription `sub` can match also matched by `allowed`? */
export function filterCovers(allowed: readonly string[], sub: readonly string[]): boolean {
  if ((sub[0] ?? '').startsWith('$') && (allowed[0] === '+' || allowed[0] === '#')) return false;
  for (let i = 0; i < allowed.length; i++) {
    const a = allowed[i];
    if (a === '#') return true;
    if (i >= sub.length) return false;
    const s = sub[i];
    if (s === '#') return false; // the subscription reaches deeper than a single allowed level
    if (a !== '+' && (s === '+' || a !== s)) return false;
  }
  return allowed.length === sub.length;
}

const hasWildcard = (levels: readonly string[]) =>
  levels.some((l) => l === '+' || l === '#' || l.includes('+') || l.includes('#'));

export function mayPublish(scope: TopicScope, topic: string): boolean {
  const levels = topic.split('/');
  // Nobody publishes to $SYS or any other $-topic; wildcards are illegal in a PUBLISH [MQTT-3.3.2-2].
  if (topic.startsWith('$') || topic.length === 0 || hasWildcard(levels) || topic.includes('\u0000')) return false;
  return scope.publish.some((f) => topicMatches(f, levels));
}

export function maySubscribe(scope: TopicScope, filter: string): boolean {
  const levels = filter.split('/');
  if (filter.length === 0 || filter.includes('\u0000')) return false;
  return scope.subscribe.some((a) => filterCovers(a, levels));
}
