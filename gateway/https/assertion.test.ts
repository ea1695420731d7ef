import assert from 'node:assert/strict';
import { generateKeyPairSync, sign, verify } from 'node:crypto';
import { test } from 'node:test';
import { createLocalJWKSet, exportJWK, jwtVerify } from 'jose';
import { AssertionMinter, derToJose } from './assertion.ts';

test('mint/ok/the token verifies with jose against the public JWK, for many signatures (r and s of every length)', async () => {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const minter = new AssertionMinter('fleetgate', { kid: 'k1', privateKey });
  const jwks = createLocalJWKSet({ keys: [{ ...(await exportJWK(publicKey)), kid: 'k1', alg: 'ES256' }] });
  const device = { id: 'd-1', type: 'sensor', fleet: 'default' } as Parameters<AssertionMinter['mint']>[0];
  const identity = { x5tS256: 'x', serial: '01' } as Parameters<AssertionMinter['mint']>[1];
  for (let i = 0; i < 200; i++) {
    const { token } = minter.mint(device, identity, 'urn:a', 5_000);
    const { payload } = await jwtVerify(token, jwks, { issuer: 'fleetgate', audience: 'urn:a', algorithms: ['ES256'] });
    assert.equal(payload.sub, 'd-1');
  }
});

test('derToJose/gives signatures that verify as ieee-p1363 (r and s padded to 32 bytes each)', () => {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  for (let i = 0; i < 300; i++) {
    const data = Buffer.from(`m${i}`);
    const jose = derToJose(sign('sha256', data, privateKey));
    assert.equal(jose.length, 64);
    assert.ok(verify('sha256', data, { key: publicKey, dsaEncoding: 'ieee-p1363' }, jose), `signature ${i}`);
  }
});

test('mint/jti: 16 random bytes each, never repeated, across refills of the random pool', () => {
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const minter = new AssertionMinter('fleetgate', { kid: 'k1', privateKey });
  const device = { id: 'd-1', type: 'sensor', fleet: 'default' } as Parameters<AssertionMinter['mint']>[0];
  const identity = { x5tS256: 'x', serial: '01' } as Parameters<AssertionMinter['mint']>[1];
  const seen = new Set<string>();
  for (let i = 0; i < 1_000; i++) {
    // ~4 refills of the 4 KiB pool
    const { jti } = minter.mint(device, identity, 'urn:a', 5_000).claims;
    assert.equal(Buffer.from(jti, 'base64url').length, 16);
    assert.ok(!seen.has(jti), `jti ${i} repeated`);
    seen.add(jti);
  }
});
