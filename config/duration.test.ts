import assert from 'node:assert/strict';
import { test } from 'node:test';
import { FleetgateError } from '../firmware-sdk/protocol/errors.ts';
import { formatDuration, parseDuration } from './duration.ts';

const ok: [string, number][] = [
  ['90s', 90_000],
  ['2m', 120_000],
  ['24h', 86_400_000],
  ['30d', 30 * 86_400_000],
  ['1h30m', 5_400_000],
  ['250ms', 250],
  [' 7d ', 7 * 86_400_000],
];
for (const [input, ms] of ok) test(`duration/ok/${input.trim()}`, () => assert.equal(parseDuration(input), ms));

for (const input of ['30', '', 'h', '-5m', '1.5h', '10 days', '0s', '5x', '1h 30m']) {
  test(`duration/error/${JSON.stringify(input)}`, () => {
    assert.throws(
      () => parseDuration(input),
      (e: unknown) => e instanceof FleetgateError && e.code === 'USAGE',
    );
  });
}

test('duration/format round-trips', () => {
  for (const [input, ms] of ok) assert.equal(parseDuration(formatDuration(ms)), ms, input);
  assert.equal(formatDuration(5_400_000), '1h30m');
});
