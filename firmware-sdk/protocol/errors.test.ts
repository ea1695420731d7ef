import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { ERROR_CODES, ERRORS, EXIT, FleetgateError, isErrorCode, toFleetgateError } from './errors.ts';

const docs = readFileSync(join(import.meta.dirname, '..', '..', 'docs', 'errors.md'), 'utf8');

test('catalogue/every code has every surface mapping', () => {
  const exits = new Set<number>(Object.values(EXIT));
  for (const code of ERROR_CODES) {
    const e = ERRORS[code];
    assert.ok(e.http >= 400 && e.http <= 599, `${code} http ${e.http}`);
    assert.ok([2, 3, 4, 5].includes(e.connack), `${code} connack ${e.connack} (aedes honours 2–5 only)`);
    assert.ok(exits.has(e.exit) && e.exit !== 0, `${code} exit ${e.exit}`);
    assert.ok(e.message.length > 0 && !/\d{6,}/.test(e.message), `${code} public message`);
  }
});

test('catalogue/every code is documented in docs/errors.md with its mappings', () => {
  for (const code of ERROR_CODES) {
    const e = ERRORS[code];
    const row = docs.split('\n').find((l) => l.startsWith(`| \`${code}\` |`));
    assert.ok(row, `${code} missing from docs/errors.md`);
    const cells = row.split('|').map((c) => c.trim());
    assert.deepEqual(
      cells.slice(2, 5),
      [String(e.http), String(e.connack), String(e.exit)],
      `${code} mappings in docs`,
    );
  }
  const documented = [...docs.matchAll(/^\| `([A-Z_]+)` \|/gm)].map((m) => m[1]);
  assert.deepEqual(
    documented.filter((c) => !isErrorCode(c)),
    [],
    'docs list codes that do not exist',
  );
});

test('error/coded error exposes its mappings and hides detail from the public message', () => {
  const e = new FleetgateError('CERT_REVOKED', 'certificate 0a1b revoked (keyCompromise)', {
    detail: { serial: '0a1b' },
  });
  assert.equal(e.code, 'CERT_REVOKED');
  assert.equal(e.httpStatus, 403);
  assert.equal(e.connackCode, 5);
  assert.equal(e.publicMessage, 'certificate revoked');
  assert.equal(e.detail.serial, '0a1b');
});

test('error/uncoded errors become INTERNAL', () => {
  const e = toFleetgateError(new RangeError('boom at /secret/path'));
  assert.equal(e.code, 'INTERNAL');
  assert.equal(e.publicMessage, 'internal error');
  const same = new FleetgateError('TOKEN_USED');
  assert.equal(toFleetgateError(same), same);
});
