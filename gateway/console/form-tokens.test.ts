import assert from 'node:assert/strict';
import { test } from 'node:test';
import { FORM_TOKEN_TTL_MS, FormTokens } from './form-tokens.ts';
import type { Viewer } from './pages.ts';

const alice: Viewer = { id: 'alice', role: 'operator', fingerprint: 'aa' };
const bob: Viewer = { id: 'bob', role: 'operator', fingerprint: 'bb' };

test('form tokens/ok: the same operator, action and target, once', () => {
  const tokens = new FormTokens();
  const t = tokens.token(alice, 'revoke', { id: 'dev-1' });
  assert.equal(tokens.spend(alice, 'revoke', { id: 'dev-1', reason: 'keyCompromise' }, t), undefined);
  assert.match(tokens.spend(alice, 'revoke', { id: 'dev-1' }, t) ?? '', /already submitted/, 'single use');
});

const refusals: [string, (tokens: FormTokens, t: string) => string | undefined][] = [
  ['error/another target', (k, t) => k.spend(alice, 'revoke', { id: 'dev-2' }, t)],
  ['error/another action', (k, t) => k.spend(alice, 'kick', { id: 'dev-1' }, t)],
  ['error/another operator', (k, t) => k.spend(bob, 'revoke', { id: 'dev-1' }, t)],
  ['error/no token', (k) => k.spend(alice, 'revoke', { id: 'dev-1' }, undefined)],
  ['error/a forged claim', (k, t) => k.spend(alice, 'revoke', { id: 'dev-1' }, `e30.${t.split('.')[1]}`)],
  ['error/expired', (k, t) => k.spend(alice, 'revoke', { id: 'dev-1' }, t, Date.now() + FORM_TOKEN_TTL_MS + 1)],
  ['error/another console (restarted)', (_k, t) => new FormTokens().spend(alice, 'revoke', { id: 'dev-1' }, t)],
];
for (const [name, attempt] of refusals) {
  test(`form tokens/${name}`, () => {
    const tokens = new FormTokens();
    const t = tokens.token(alice, 'revoke', { id: 'dev-1' });
    assert.notEqual(attempt(tokens, t), undefined);
  });
}

test('form tokens/a value cannot smuggle another field', () => {
  const tokens = new FormTokens();
  const t = tokens.token(alice, 'revokeCertificate', { id: 'a', serial: 'b' });
  assert.notEqual(tokens.spend(alice, 'revokeCertificate', { id: 'a","serial', serial: 'b' }, t), undefined);
});
