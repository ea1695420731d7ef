import assert from 'node:assert/strict';
import { test } from 'node:test';
import { SubscriptionTrie } from './trie.ts';

const match = (filters: [string, 0 | 1 | 2][], topic: string) => {
  const t = new SubscriptionTrie<string>();
  for (const [f, q] of filters) t.add(f, f, q);
  return [...t.match(topic).keys()].sort();
};

test('trie/wildcards [MQTT-4.7.1]', () => {
  assert.deepEqual(match([['a/+/c', 0], ['a/#', 0], ['#', 0], ['a/b', 0], ['+/+/+', 0]], 'a/b/c'), ['#', '+/+/+', 'a/#', 'a/+/c']);
  assert.deepEqual(match([['a/#', 0]], 'a'), ['a/#'], '# matches the parent level');
  assert.deepEqual(match([['a/+', 0]], 'a'), []);
  assert.deepEqual(match([['+', 0]], '/x'), []);
});

test('trie/$-topics are not matched by a leading wildcard [MQTT-4.7.2-1]', () => {
  assert.deepEqual(match([['#', 0], ['+/x', 0], ['$SYS/#', 0], ['$SYS/+', 0]], '$SYS/x'), ['$SYS/#', '$SYS/+']);
});

test('trie/one entry per subscriber, at its highest matching QoS [MQTT-3.3.5-1]', () => {
  const t = new SubscriptionTrie<string>();
  t.add('a/#', 's', 0);
  t.add('a/b', 's', 2);
  t.add('+/b', 's', 1);
  assert.deepEqual([...t.match('a/b')], [['s', 2]]);
});

test('trie/removal prunes and stops matching', () => {
  const t = new SubscriptionTrie<string>();
  t.add('a/b/c', 's', 1);
  assert.equal(t.remove('a/b/c', 's'), true);
  assert.deepEqual([...t.match('a/b/c')], []);
  assert.equal(t.remove('a/b/c', 's'), false);
});
