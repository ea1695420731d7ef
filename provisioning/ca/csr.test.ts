import assert from 'node:assert/strict';
import { before, test } from 'node:test';
import { type ErrorCode, FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import { type KeySpec, opensslCsr } from '../../harness/pki.ts';
import { tempDir } from '../../harness/run.ts';
import { csrDer, parseCsr } from './csr.ts';

const csrs = new Map<string, string>();
before(async () => {
  const dir = tempDir({ after: (fn: () => void) => process.once('exit', fn) });
  const specs: [string, KeySpec, string[]][] = [
    ['ec', 'ec', []],
    ['ec384', 'ec384', []],
    ['rsa2048', 'rsa2048', []],
    ['rsa1024', 'rsa1024', []],
    ['ed25519', 'ed25519', []],
    [
      'asks',
      'ec',
      [
        '-addext',
        'basicConstraints=critical,CA:TRUE',
        '-addext',
        'subjectAltName=DNS:evil.example,URI:urn:fleetgate:device:other',
      ],
    ],
  ];
  await Promise.all(
    specs.map(async ([name, key, extra]) => csrs.set(name, (await opensslCsr(dir, name, key, extra)).csrPem)),
  );
});

const rejects = (c: ErrorCode) => (e: unknown) => e instanceof FleetgateError && e.code === c;

/** The CSR with the last byte of its signature flipped: same structure, signature no longer matches. */
function tampered(pem: string): Buffer {
  const der = csrDer(pem);
  der[der.length - 1] = (der[der.length - 1] as number) ^ 0x01;
  return der;
}

for (const [name, description] of [
  ['ec', 'EC P-256'],
  ['ec384', 'EC P-384'],
  ['rsa2048', 'RSA 2048'],
  ['ed25519', 'Ed25519'],
] as const) {
  test(`csr/ok/${name}`, async () => {
    const parsed = await parseCsr(csrs.get(name)!);
    assert.equal(parsed.keyDescription, description);
  });
}

test('csr/ok/DER and bare base64 DER (EST form)', async () => {
  const der = csrDer(csrs.get('ec')!);
  assert.equal((await parseCsr(der)).keyDescription, 'EC P-256');
  assert.equal((await parseCsr(der.toString('base64'))).keyDescription, 'EC P-256');
});

test('csr/ok/what the CSR asked for is reported, to be ignored', async () => {
  const parsed = await parseCsr(csrs.get('asks')!);
  assert.deepEqual(parsed.requested.extensions.sort(), ['basicConstraints', 'subjectAltName']);
});

test('csr/error/RSA-1024 is too weak', async () => {
  assert.throws(() => parseCsr(csrs.get('rsa1024')!), rejects('KEY_TOO_WEAK'));
});

test('csr/error/tampered signature', async () => {
  assert.throws(() => parseCsr(tampered(csrs.get('ec')!)), rejects('CSR_INVALID'));
});

const garbage: [string, string | Buffer][] = [
  ['garbage text', 'hello, I am not a CSR'],
  ['empty', ''],
  [
    'PEM with broken base64',
    '-----BEGIN CERTIFICATE REQUEST-----\nMIIB!!!not base64***\n-----END CERTIFICATE REQUEST-----\n',
  ],
  ['PEM of a certificate', '-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n'],
  ['DER garbage', Buffer.from([0x30, 0x03, 0x02, 0x01, 0x00])],
  ['truncated DER', Buffer.from([0x30, 0x82, 0x01])],
  ['random bytes', Buffer.from('9f3c21aa5b7e', 'hex')],
  ['oversized', 'A'.repeat(64 * 1024)],
];
for (const [name, input] of garbage) {
  test(`csr/error/${name}`, async () => {
    assert.throws(() => parseCsr(input), rejects('CSR_INVALID'));
  });
}
