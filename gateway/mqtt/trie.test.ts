import assert from 'node:assert/strict';
import { test } from 'node:test';
import { filterMatches, OVERLAP, SubscriptionTrie } from './trie.ts';

const match = (filters: [string, 0 | 1 | 2][], topic: string) => {
  const t = new SubscriptionTrie<string>();
  for (const [f, q] of filters) t.add(f, f, q);
  return [...t.match(topic).keys()].sort();
};

test('trie/wildcards [MQTT-4.7.1]', () => {
  assert.deepEqual(
    match(
      [
        ['a/+/c', 0],
        ['a/#', 0],
        ['#', 0],
        ['a/b', 0],
        ['+/+/+', 0],
      ],
      'a/b/c',
    ),
    ['#', '+/+/+', 'a/#', 'a/+/c'],
  );
  assert.deepEqual(match([['a/#', 0]], 'a'), ['a/#'], '# matches the parent level');
  assert.deepEqual(match([['a/+', 0]], 'a'), []);
  assert.deepEqual(match([['+', 0]], '/x'), []);
});

test('trie/$-topics are not matched by a leading wildcard [MQTT-4.7.2-1]', () => {
  assert.deepEqual(
    match(
      [
        ['#', 0],
        ['+/x', 0],
        ['$SYS/#', 0],
        ['$SYS/+', 0],
      ],
      '$SYS/x',
    ),
    ['$SYS/#', '$SYS/+'],
  );
});

test('trie/one entry per subscriber, at its highest matching QoS [MQTT-3.3.5-1]', () => {
  const t = new SubscriptionTrie<string>();
  t.add('a/#', 's', 0);
  t.add('a/b', 's', 2);
  t.add('+/b', 's', 1);
  const [[who, value]] = [...t.match('a/b')] as [[string, number]];
  assert.equal(who, 's');
  assert.equal(value & 3, 2);
  assert.ok((value & OVERLAP) !== 0, 'marked as overlapping (identifiers looked up by the plane)');
});

test('trie/MQTT 5 options merge on overlap: No Local only if all, Retain As Published if any; alone, the identifier rides along', () => {
  const t = new SubscriptionTrie<string>();
  t.add('a/#', 's', 1 | 4);
  t.add('a/b', 's', 0 | 8);
  const v = t.match('a/b').get('s') as number;
  assert.deepEqual([v & 3, v & 4, v & 8], [1, 0, 8]);
  const u = new SubscriptionTrie<string>();
  u.add('x/+', 's', 1 | 4 | (7 * 256));
  const w = u.match('x/y').get('s') as number;
  assert.deepEqual([w & 3, w & 4, Math.floor(w / 256)], [1, 4, 7]);
});

test('trie/filterMatches agrees with the trie', () => {
  for (const [f, topic, expect] of [
    ['a/+/c', 'a/b/c', true],
    ['a/#', 'a', true],
    ['a/+', 'a', false],
    ['#', '$SYS/x', false],
    ['$SYS/#', '$SYS/x', true],
    ['a/b', 'a/b/c', false],
    ['+/+', '/x', true],
  ] as const) {
    assert.equal(filterMatches(f, topic), expect, `${f} vs ${topic}`);
    const t = new SubscriptionTrie<string>();
    t.add(f, 's', 0);
    assert.equal(t.match(topic).has('s'), expect, `trie: ${f} vs ${topic}`);
  }
});

test('trie/removal prunes and stops matching', () => {
  const t = new SubscriptionTrie<string>();
  t.add('a/b/c', 's', 1);
  assert.equal(t.remove('a/b/c', 's'), true);
  assert.deepEqual([...t.match('a/b/c')], []);
  assert.equal(t.remove('a/b/c', 's'), false);
});

test('trie/empty: true for a new trie and again once every filter is removed', () => {
  const t = new SubscriptionTrie<string>();
  assert.equal(t.empty, true);
  t.add('a/+/c', 's1', 1);
  t.add('#', 's2', 1);
  assert.equal(t.empty, false);
  t.remove('a/+/c', 's1');
  assert.equal(t.empty, false);
  t.remove('#', 's2');
  assert.equal(t.empty, true);
});
