import assert from 'node:assert/strict';
import { test } from 'node:test';
import { mergeRefused, RefusedDevices } from './refused-devices.ts';

test('refused devices/a book keeps the tracked codes only, the most recently refused first', () => {
  const book = new RefusedDevices(2);
  book.record('d1', 's1', 'CERT_REVOKED');
  book.record('d2', 's2', 'NOT_AUTHORIZED'); // not a "may not use this certificate" refusal
  book.record('d2', 's2', 'CERT_EXPIRED');
  book.record('d1', 's1b', 'CERT_REVOKED');
  book.record('d3', 's3', 'DENYLISTED'); // over the bound: d2, refused longest ago, goes
  assert.deepEqual(
    book.list().map((r) => [r.deviceId, r.codes, r.lastSerial]),
    [
      ['d3', { DENYLISTED: 1 }, 's3'],
      ['d1', { CERT_REVOKED: 2 }, 's1b'],
    ],
  );
});

test("refused devices/nodes' books merge: codes summed, the latest refusal's time and certificate, malformed entries left out", () => {
  const a = [
    { deviceId: 'd1', codes: { CERT_REVOKED: 2 }, lastAt: 100, lastSerial: 'aa' },
    { deviceId: 'd2', codes: { DENYLISTED: 1 }, lastAt: 50, lastSerial: null },
  ];
  const b = [
    { deviceId: 'd1', codes: { CERT_REVOKED: 1, DEVICE_SUSPENDED: 4 }, lastAt: 300, lastSerial: 'bb' },
    { deviceId: 'd3', codes: { CERT_EXPIRED: 'x' }, lastAt: 400, lastSerial: 'cc' }, // malformed count
    { deviceId: 7, codes: {}, lastAt: 1, lastSerial: null }, // malformed id
    null,
  ];
  assert.deepEqual(mergeRefused([a, b]), [
    { deviceId: 'd1', codes: { CERT_REVOKED: 3, DEVICE_SUSPENDED: 4 }, lastAt: 300, lastSerial: 'bb' },
    { deviceId: 'd2', codes: { DENYLISTED: 1 }, lastAt: 50, lastSerial: null },
  ]);
  assert.equal(mergeRefused([a, b], 1).length, 1);
  assert.deepEqual(a[0]!.codes, { CERT_REVOKED: 2 }, 'the inputs are not changed');
});
