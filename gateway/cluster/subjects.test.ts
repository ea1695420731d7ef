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

const TOPICS = [
  'devices/s-1/telemetry',
  'a',
  'a/b',
  'a//b',
  '/a',
  'a/',
  'x.y/z',
  'a b/c',
  'a/*/>',
  'ü/ß',
  '$SYS/x',
  'devices/s-1',
  'devices/~abc/x',
  'A_b-9',
];
const FILTERS = [
  '#',
  '+',
  'a/#',
  'a/+',
  '+/b',
  'devices/+/telemetry',
  'devices/s-1/#',
  'a//b',
  'x.y/#',
  'a b/+',
  '+/+',
  '$SYS/#',
];

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

test("cluster subjects/a filter's subjects carry every topic the filter matches", () => {
  for (const f of FILTERS) {
    const subjects = filterToSubjects(f);
    for (const t of TOPICS) {
      if (!filterMatches(f, t)) continue;
      assert.ok(
        subjects.some((p) => natsMatches(topicToSubject(t), p)),
        `${f} matches ${t} but ${subjects.join(', ')} do not carry ${topicToSubject(t)}`,
      );
    }
  }
  assert.deepEqual(filterToSubjects('a/#'), ['fg.m.a', 'fg.m.a.>']);
  assert.deepEqual(filterToSubjects('devices/+/telemetry'), ['fg.m.devices.*.telemetry']);
});

test('cluster envelope/a message crosses nodes whole: QoS, retain, publisher, expiry, MQTT 5 properties, payload', async () => {
  const { encodeEnvelope, decodeEnvelope } = await import('./bus.ts');
  const { Message } = await import('../mqtt/session.ts');
  const plain = new Message('devices/s-1/t', Buffer.from('hello'), 1, false, 's-1');
  const p = decodeEnvelope(topicToSubject(plain.topic), encodeEnvelope(plain))!;
  assert.deepEqual(
    [p.topic, p.payload.toString(), p.qos, p.retain, p.from, p.fwd, p.expiresAt],
    ['devices/s-1/t', 'hello', 1, false, 's-1', undefined, undefined],
  );
  const rich = new Message('a b/ü', Buffer.alloc(0), 2, true, 'gw.1', {
    expiresAt: 1_800_000_000_123,
    fwd: {
      contentType: 'application/json',
      correlationData: Buffer.from([0, 1, 255]),
      userProperties: [['k', 'v']],
      payloadFormat: 1,
      responseTopic: 'r/1',
    },
  });
  const r = decodeEnvelope(topicToSubject(rich.topic), encodeEnvelope(rich))!;
  assert.deepEqual(
    [r.topic, r.payload.length, r.qos, r.retain, r.from, r.expiresAt],
    ['a b/ü', 0, 2, true, 'gw.1', 1_800_000_000_123],
  );
  assert.deepEqual(r.fwd, rich.fwd);
  assert.equal(decodeEnvelope('fg.m.x', Buffer.from('not an envelope')), undefined);
  assert.equal(decodeEnvelope('fg.m.x', Buffer.from([1, 3, 0])), undefined, 'QoS 3');
});
