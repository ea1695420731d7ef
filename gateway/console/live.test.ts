import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createMetrics } from '../metrics.ts';
import { SessionTable } from '../sessions.ts';
import { LiveSampler } from './live.ts';

test('live/the overview keeps history while nobody watches, so a first visit sees charts', async (t) => {
  const sampler = new LiveSampler(createMetrics(), new SessionTable(), 2);
  t.after(() => sampler.close());
  assert.equal(sampler.history().length, 0);
  sampler.keepHistory(0.02);
  const deadline = Date.now() + 20_000;
  while (sampler.history().length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  assert.ok(sampler.history().length >= 2, 'samples taken with no watcher');
});
