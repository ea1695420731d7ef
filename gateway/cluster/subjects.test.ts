import assert from 'node:assert/strict';
import { test } from 'node:test';
import { filterMatches } from '../mqtt/trie.ts';
import { filterToSubjects, subjectToTopic, topicToSubject } from './subjects.ts';

/** NATS subject matching, as the server does it: `*` one token, `>` one or more at the end. */
function natsMatches(subject: string, pattern: string): boolean {
  const s = subject.split('.');
  const p = pattern.split('.');
  for (let i = 0; i < p.length; i++) {
    if (p[i] === '>') return s.length > i;
    if (i >= s.length || (p[i] !== '*' && p[i] !== s[i])) return false;
  }
  return s.length === p.length;
}

const TOPICS = ['devices/s-1/telemetry', 'a', 'a/b', 'a//b', '/a', 'a/', 'x.y/z', 'a b/c', 'a/*/>', 'ü/ß', '$SYS/x', 'devices/s-1', 'devices/~abc/x', 'A_b-9'];
const FILTERS = ['#', '+', 'a/#', 'a/+', '+/b', 'devices/+/telemetry', 'devices/s-1/#', 'a//b', 'x.y/#', 'a b/+', '+/+', '$SYS/#'];

test('cluster subjects/topics map one-to-one onto valid NATS subjects', () => {
  const seen = new Set<string>();
  for (const t of TOPICS) {
    const s = topicToSubject(t);
    assert.match(s, /^fg\.m(\.[A-Za-z0-9_~-]+)+$/, `${t} → ${s}`);
    assert.equal(subjectToTopic(s), t);
    assert.ok(!seen.has(s), `collision at ${s}`);
    seen.add(s);
  }
  assert.equal(topicToSubject('devices/s-1/telemetry'), 'fg.m.devices.s-1.telemetry');
});

test('cluster subjects/a filter\'s subjects carry every topic the filter matches', () => {
  for (const f of FILTERS) {
    const subjects = filterToSubjects(f);
    for (const t of TOPICS) {
      if (!filterMatches(f, t)) continue;
      assert.ok(subjects.some((p) => natsMatches(topicToSubject(t), p)), `${f} matches ${t} but ${subjects.join(', ')} do not carry ${topicToSubject(t)}`);
    }
  }
  assert.deepEqual(filterToSubjects('a/#'), ['fg.m.a', 'fg.m.a.>']);
  assert.deepEqual(filterToSubjects('devices/+/telemetry'), ['fg.m.devices.*.telemetry']);
});
