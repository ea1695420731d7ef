import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Backoff } from './backoff.ts';

test('backoff/the cap doubles up to the maximum; full jitter spans [0, cap)', () => {
  const top = new Backoff({ baseMs: 100, maxMs: 1_000, random: () => 0.999_999 });
  assert.deepEqual(
    [1, 2, 3, 4, 5, 6].map(() => top.next()),
    [99, 199, 399, 799, 999, 999],
  );
  const bottom = new Backoff({ baseMs: 100, maxMs: 1_000, random: () => 0 });
  assert.deepEqual(
    [1, 2, 3].map(() => bottom.next()),
    [0, 0, 0],
  );
  top.reset();
  assert.equal(top.next(), 99);
});
