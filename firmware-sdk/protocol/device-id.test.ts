import assert from 'node:assert/strict';
import { test } from 'node:test';
import { assertDeviceId, assertDeviceType, deviceUri, isDeviceId } from './device-id.ts';
import { FleetgateError } from './errors.ts';

const cases: [string, unknown, boolean][] = [
  ['ok/simple', 'sensor-1', true],
  ['ok/dots and underscores', 'a.b_c-D9', true],
  ['ok/single character', 'x', true],
  ['ok/128 characters', 'a'.repeat(128), true],
  ['error/129 characters', 'a'.repeat(129), false],
  ['error/200 characters', 'a'.repeat(200), false],
  ['error/empty', '', false],
  ['error/slash', 'a/b', false],
  ['error/plus', 'a+b', false],
  ['error/hash', 'a#b', false],
  ['error/space', 'a b', false],
  ['error/NUL', 'a\u0000b', false],
  ['error/colon', 'a:b', false],
  ['error/leading dot', '.hidden', false],
  ['error/leading dash', '-x', false],
  ['error/unicode', 'capteur-é', false],
  ['error/SQL', "x'); DROP TABLE devices;--", false],
  ['error/trailing newline', 'abc\n', false],
  ['error/not a string', 42, false],
];

for (const [name, input, valid] of cases) {
  test(`device id/${name}`, () => {
    assert.equal(isDeviceId(input), valid);
    if (valid) assert.equal(assertDeviceId(input), input);
    else
      assert.throws(
        () => assertDeviceId(input),
        (e: unknown) => e instanceof FleetgateError && e.code === 'DEVICE_ID_INVALID',
      );
  });
}

test('device type/only the five known types', () => {
  for (const t of ['sensor', 'gateway', 'camera', 'service', 'operator']) assert.equal(assertDeviceType(t), t);
  for (const t of ['Sensor', 'admin', '', undefined]) {
    assert.throws(
      () => assertDeviceType(t),
      (e: unknown) => e instanceof FleetgateError && e.code === 'DEVICE_TYPE_INVALID',
    );
  }
});

test('device uri/the SAN URI the CA writes', () => {
  assert.equal(deviceUri('cam-7'), 'urn:fleetgate:device:cam-7');
  assert.throws(() => deviceUri('a/b'));
});
