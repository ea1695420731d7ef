import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isSpoofable, STRIPPED_REQUEST_HEADERS } from './headers.ts';

// One case per entry of the strip list, in the spellings an origin may read as the same header.
for (const name of STRIPPED_REQUEST_HEADERS) {
  test(`strip/${name}`, () => {
    for (const spelling of [
      name,
      name.toUpperCase(),
      name.replaceAll('-', '_'),
      name.replaceAll('-', '_').toUpperCase(),
    ]) {
      assert.ok(isSpoofable(spelling, 'Fleetgate-Assertion'), spelling);
    }
  });
}

test('strip/the assertion header, in any spelling', () => {
  for (const n of [
    'Fleetgate-Assertion',
    'fleetgate_assertion',
    'FLEETGATE_ASSERTION',
    'X-Jwt'.replace('X-Jwt', 'fleetgate-assertion'),
  ])
    assert.ok(isSpoofable(n, 'Fleetgate-Assertion'), n);
  assert.ok(isSpoofable('x_my_assertion', 'X-My-Assertion'), 'a configured name too');
});

test('strip/prefixes: any client-certificate variant', () => {
  for (const n of [
    'X-Client-Cert-Whatever',
    'x_ssl_client_m_serial',
    'SSL_CLIENT_V_END',
    'X-Forwarded-Tls-Client-Cert-Subject',
  ])
    assert.ok(isSpoofable(n, 'Fleetgate-Assertion'), n);
});

test('keep/ordinary headers pass', () => {
  for (const n of ['content-type', 'accept', 'user-agent', 'x-request-id', 'authorization', 'x_custom', 'cookie'])
    assert.equal(isSpoofable(n, 'Fleetgate-Assertion'), false, n);
});
