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
  assert.deepEqual(filterToSubjects('a/#'), ['fg.m.a', 'fg.m.a.>', 'fg.l.>']);
  assert.deepEqual(filterToSubjects('devices/+/telemetry'), ['fg.m.devices.*.telemetry', 'fg.l.>']);
  assert.deepEqual(
    filterToSubjects('devices/s-1/t'),
    ['fg.m.devices.s-1.t'],
    'an exact short filter matches short topics only',
  );
  assert.deepEqual(
    filterToSubjects(`devices/s-1/${'y'.repeat(5_000)}`),
    ['fg.l.>'],
    'a long filter: the long subjects',
  );
  for (const f of [...FILTERS, `a/${'z'.repeat(4_000)}/#`])
    for (const s of filterToSubjects(f)) assert.ok(s.length <= 512, s);
});

test('cluster envelope/a message crosses nodes whole: QoS, retain, publisher, expiry, MQTT 5 properties, payload', async () => {
  const { encodeEnvelope, decodeEnvelope } = await import('./wire.ts');
  const { Message } = await import('../mqtt/session.ts');
  const ok = (r: ReturnType<typeof decodeEnvelope>) => {
    assert.ok('ok' in r, JSON.stringify(r));
    return r.ok;
  };
  const plain = new Message('devices/s-1/t', Buffer.from('hello'), 1, false, 's-1');
  const p = ok(decodeEnvelope(topicToSubject(plain.topic), encodeEnvelope(plain)));
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
  const r = ok(decodeEnvelope(topicToSubject(rich.topic), encodeEnvelope(rich)));
  assert.deepEqual(
    [r.topic, r.payload.length, r.qos, r.retain, r.from, r.expiresAt],
    ['a b/ü', 0, 2, true, 'gw.1', 1_800_000_000_123],
  );
  assert.deepEqual(r.fwd, rich.fwd);
  // A long topic travels on a hashed subject with the topic in the envelope.
  const longTopic = `devices/s-1/${'x'.repeat(5_000)}`;
  const long = new Message(longTopic, Buffer.from('p'), 0, false, 's-1');
  const subject = topicToSubject(longTopic);
  assert.match(subject, /^fg\.l\.[A-Za-z0-9_-]{43}$/);
  assert.equal(ok(decodeEnvelope(subject, encodeEnvelope(long, true))).topic, longTopic);
  assert.ok('invalid' in decodeEnvelope(subject, encodeEnvelope(long)), 'a hashed subject needs its topic');
  const other = new Message(`${longTopic}y`, Buffer.from('p'), 0, false, 's-1');
  assert.ok('invalid' in decodeEnvelope(subject, encodeEnvelope(other, true)), "the hash must be the topic's");
});

test('cluster envelope/malformed envelopes and subjects are refused with a reason, never thrown', async () => {
  const { encodeEnvelope, decodeEnvelope, decodeAnnouncement, decodeRecords } = await import('./wire.ts');
  const { Message } = await import('../mqtt/session.ts');
  const good = encodeEnvelope(
    new Message('a/b', Buffer.from('x'), 1, true, 's-1', { expiresAt: 1e12, fwd: { contentType: 't' } }),
  );
  const cases: [string, string, Uint8Array][] = [
    ['the 3-byte message of the report', 'fg.m.a', Buffer.from([1, 8, 0])],
    ['the same at this version', 'fg.m.a', Buffer.from([2, 8, 0])],
    ['properties length past the end', 'fg.m.a', Buffer.from([2, 16, 0, 0, 0])],
    ['QoS 3', 'fg.m.a', Buffer.from([2, 3, 0])],
    ['unknown flag', 'fg.m.a', Buffer.from([2, 64, 0])],
    ['publisher past the end', 'fg.m.a', Buffer.from([2, 0, 200, 65])],
    ['publisher not UTF-8', 'fg.m.a', Buffer.from([2, 0, 1, 0xff])],
    ['not an envelope', 'fg.m.a', Buffer.from('not an envelope')],
    ['empty', 'fg.m.a', new Uint8Array(0)],
    ['a subject that is no topic (wildcard)', 'fg.m.a.~Kw', good],
    ['a non-canonical level', 'fg.m.a.~YQ', good],
    ['bad properties JSON', 'fg.m.a', Buffer.from([2, 16, 0, 0, 0, 0, 2, 0x7b, 0x78])],
    [
      'properties of another shape',
      'fg.m.a',
      Buffer.concat([Buffer.from([2, 16, 0, 0, 0, 0, 11]), Buffer.from('{"evil":1}x')]),
    ],
    ['truncated good envelope', 'fg.m.a.b', good.subarray(0, 12)],
  ];
  for (const [what, subject, data] of cases) {
    let r: ReturnType<typeof decodeEnvelope> | undefined;
    assert.doesNotThrow(() => {
      r = decodeEnvelope(subject, data);
    }, what);
    assert.ok(r !== undefined && 'invalid' in r, `${what}: ${JSON.stringify(r)}`);
  }
  for (let n = 0; n <= good.length; n++) assert.doesNotThrow(() => decodeEnvelope('fg.m.a.b', good.subarray(0, n)));
  assert.ok('ok' in decodeAnnouncement('fg.s.n2', Buffer.from('c-1'), 'n1'));
  assert.ok('invalid' in decodeAnnouncement('fg.s.n1', Buffer.from('c-1'), 'n1'), "this node's own name");
  assert.ok('invalid' in decodeAnnouncement('fg.s.n2', Buffer.alloc(0), 'n1'), 'no client id');
  assert.ok('invalid' in decodeAnnouncement('fg.s.n2', Buffer.from([0xc3]), 'n1'), 'not UTF-8');
  assert.ok('invalid' in decodeRecords(Buffer.from([1, 0, 9, 0]), 'fg.r'), 'a record past the end');
  assert.ok('invalid' in decodeRecords(Buffer.from([1, 0xff, 0xff]), 'fg.r'), 'a record header past the end');
});
