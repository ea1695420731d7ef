import assert from 'node:assert/strict';
import { test } from 'node:test';
import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import { normalizeTarget } from './path.ts';

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
  ['/api/a:b@c;d=e,f+g', '/api/a:b@c;d=e,f+g', ''],
  ['/api/%61', '/api/a', ''],
  ['/', '/', ''],
];

for (const [raw, path, query] of ok) {
  test(`ok/${raw}`, () => assert.deepEqual(normalizeTarget(raw), { path, query }));
}

const refused = ['/api/x\\..\\upload', '/api%2fx', '/api%2Fx', '/api%5cx', '/api/%00', '/api/a\u0000b', '/api/%zz', '/api/%e0%a4', '/..', '/api/../../x', 'api/x', '/api/a b', '/api/\u007f', '/x?a=\u0001'];
for (const raw of refused) {
  test(`error/${JSON.stringify(raw)}`, () => assert.throws(() => normalizeTarget(raw), (e: unknown) => e instanceof FleetgateError && e.code === 'PATH_INVALID'));
}
