import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { preflightEnrollment, runtimeProblem } from './preflight.ts';
import { FleetgateError } from './protocol/errors.ts';

const cases: [string, string, boolean, boolean][] = [
  ['error/Node 20 (no validFromDate)', 'v20.20.2', false, false],
  ['error/Node 22.11', 'v22.11.0', true, false],
  ['error/a new version without the feature', 'v24.21.0', false, false],
  ['ok/Node 22.12', 'v22.12.0', true, true],
  ['ok/Node 24', 'v24.21.0', true, true],
  ['ok/Node 30', 'v30.0.0', true, true],
];
for (const [name, version, feature, ok] of cases) {
  test(`runtime/${name}`, () => assert.equal(runtimeProblem(version, feature) === undefined, ok));
}

test('preflight/an identity directory that cannot be made is refused before anything is sent', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'fleetgate-preflight-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'a-file'), 'x'); // a directory under a file: refused even for root
  assert.throws(
    () => preflightEnrollment({ identityDir: join(dir, 'a-file', 'id') }),
    (e: unknown) => e instanceof FleetgateError && e.code === 'STORAGE_READ_ONLY',
  );
});

test('preflight/a writable directory passes and is left as it was; a CA that is not a certificate is refused', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'fleetgate-preflight-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  mkdirSync(join(dir, 'id'));
  preflightEnrollment({ identityDir: join(dir, 'id') });
  assert.deepEqual(readdirSync(join(dir, 'id')), []);
  assert.throws(
    () => preflightEnrollment({ identityDir: join(dir, 'id'), ca: 'not a certificate' }),
    (e: unknown) => e instanceof FleetgateError && e.code === 'BAD_REQUEST',
  );
});
