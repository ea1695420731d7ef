import assert from 'node:assert/strict';
import { test } from 'node:test';
import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import { normalizeTarget, normalizeTargetFully } from './path.ts';

const ok: [string, string, string][] = [
  ['/api/x', '/api/x', ''],
  ['/api/x?a=1&b=%2F', '/api/x', 'a=1&b=%2F'],
  ['/api/./x', '/api/x', ''],
  ['/api/a/../x', '/api/x', ''],
  ['/api/%2e%2e/upload/a', '/upload/a', ''],
  ['/api/%2E/x', '/api/x', ''],
  ['/api//x///y', '/api/x/y', ''],
  ['/api/x/', '/api/x/', ''],
  ['/api/x/..', '/api/', ''],
  ['/api/a%20b', '/api/a%20b', ''],
  ['/api/caf%C3%A9', '/api/caf%C3%A9', ''],
  ['/api/a:b@c=e,f+g', '/api/a:b@c=e,f+g', ''],
  ['/api/%61', '/api/a', ''],
  ['/', '/', ''],
];

for (const [raw, path, query] of ok) {
  test(`ok/${raw}`, () => assert.deepEqual(normalizeTarget(raw), { path, query }));
}

const refused = [
  '/api/x\\..\\upload',
  '/api%2fx',
  '/api%2Fx',
  '/api%5cx',
  '/api/%00',
  '/api/a\u0000b',
  '/api/%zz',
  '/api/%e0%a4',
  '/..',
  '/api/../../x',
  'api/x',
  '/api/a b',
  '/api/\u007f',
  '/x?a=\u0001',
  // Path parameters: Tomcat/Jetty/Spring read `/public/..;/admin/x` as `/admin/x`.
  '/public/..;/admin/x',
  '/public/..%3B/admin/x',
  '/public/..%3b/admin/x',
  '/api/a;jsessionid=1',
  '/api/x;',
];
for (const raw of refused) {
  test(`error/${JSON.stringify(raw)}`, () =>
    assert.throws(
      () => normalizeTarget(raw),
      (e: unknown) => e instanceof FleetgateError && e.code === 'PATH_INVALID',
    ));
}

test('ok/the shortcut for canonical paths agrees with the full normalisation (random paths)', () => {
  const alphabet = [
    '/',
    '/',
    '.',
    '..',
    '%2e',
    '%2E',
    '%41',
    '%2f',
    '%zz',
    '%',
    'a',
    'Z',
    '0',
    '-',
    '_',
    '~',
    '!',
    '$',
    '&',
    "'",
    '(',
    '*',
    '+',
    ',',
    ';',
    '%3B',
    '=',
    ':',
    '@',
    ' ',
    '\\',
    'é',
    '?',
    '?q=1',
    '#',
    '[',
    '\u0001',
  ];
  let seed = 1;
  const rnd = (n: number) => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed % n;
  };
  const outcome = (f: (u: string) => unknown, u: string) => {
    try {
      return JSON.stringify(f(u));
    } catch (e) {
      return e instanceof FleetgateError ? `refused ${e.code}` : `threw ${String(e)}`;
    }
  };
  let shortcut = 0;
  for (let i = 0; i < 20_000; i++) {
    const url =
      (rnd(8) === 0 ? '' : '/') + Array.from({ length: 1 + rnd(8) }, () => alphabet[rnd(alphabet.length)]).join('');
    const fast = outcome(normalizeTarget, url);
    assert.equal(fast, outcome(normalizeTargetFully, url), url);
    if (!fast.startsWith('refused') && JSON.parse(fast).path === url.split('?')[0]) shortcut++;
  }
  assert.ok(shortcut > 1_000, `canonical paths among the random ones: ${shortcut}`);
  assert.deepEqual(normalizeTarget('/api/x?a=1'), { path: '/api/x', query: 'a=1' });
  assert.throws(
    () => normalizeTarget('?a=1'),
    (e: unknown) => e instanceof FleetgateError && e.code === 'PATH_INVALID',
  );
});
