import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ERROR_CODES } from './errors.ts';
import { codeFromReason, REASON, reasonCodeFor, reasonString } from './mqtt5.ts';

test('mqtt5/every catalogue code maps to a reason code valid in each packet that may carry it', () => {
  const valid = {
    connack: [
      0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x8c, 0x90, 0x95, 0x97, 0x99, 0x9a, 0x9b, 0x9c,
      0x9d, 0x9f,
    ],
    disconnect: [
      0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8b, 0x8d, 0x8e, 0x8f, 0x90, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a,
      0x9b, 0x9c, 0x9d, 0x9e, 0x9f, 0xa0, 0xa1, 0xa2,
    ],
    puback: [0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99],
    suback: [0x80, 0x83, 0x87, 0x8f, 0x91, 0x97, 0x9e, 0xa1, 0xa2],
  } as const;
  for (const code of ERROR_CODES) {
    for (const [packet, codes] of Object.entries(valid) as [keyof typeof valid, readonly number[]][]) {
      const r = reasonCodeFor(code, packet);
      assert.ok(codes.includes(r), `${code} in ${packet}: 0x${r.toString(16)}`);
    }
  }
  assert.equal(reasonCodeFor('DENYLISTED'), REASON.BANNED);
  assert.equal(reasonCodeFor('DENYLISTED', 'disconnect'), REASON.NOT_AUTHORIZED, 'Banned exists in CONNACK only');
  assert.equal(reasonCodeFor('REGISTRY_UNAVAILABLE', 'disconnect'), REASON.SERVER_BUSY);
  assert.equal(reasonCodeFor('CERT_REVOKED'), REASON.NOT_AUTHORIZED);
});

test('mqtt5/the SDK reads the exact code back from the reason string, else the closest for the reason code', () => {
  for (const code of ERROR_CODES) assert.equal(codeFromReason(reasonCodeFor(code), reasonString(code, 'x')), code);
  assert.equal(codeFromReason(0x87), 'NOT_AUTHORIZED');
  assert.equal(codeFromReason(0x8a), 'DENYLISTED');
  assert.equal(
    codeFromReason(0x87, 'NOT_A_CODE: something'),
    'NOT_AUTHORIZED',
    'a string that is not ours is not trusted as a code',
  );
  assert.equal(codeFromReason(0x88, 'Server unavailable'), 'REGISTRY_UNAVAILABLE');
});
