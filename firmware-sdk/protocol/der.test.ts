import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { certificateSpki, children, DerError, MAX_CHILDREN, oid, readTlv, tlv } from './der.ts';

const bad: [string, number[]][] = [
  ['indefinite length', [0x30, 0x80, 0x00, 0x00]],
  ['long form below 128', [0x04, 0x81, 0x05, 1, 2, 3, 4, 5]],
  ['long form with a leading zero', [0x04, 0x82, 0x00, 0x05, 1, 2, 3, 4, 5]],
  ['length past the end', [0x04, 0x05, 1, 2]],
  ['high tag number', [0x1f, 0x81, 0x01, 0x00]],
  ['truncated', [0x30]],
];
for (const [what, bytes] of bad) {
  test(`error/${what}`, () => assert.throws(() => readTlv(Buffer.from(bytes), 0), DerError));
}

test('ok/minimal long form', () => {
  const t = readTlv(Buffer.concat([Buffer.from([0x04, 0x81, 0x80]), Buffer.alloc(128)]), 0);
  assert.deepEqual([t.contentStart, t.end], [3, 131]);
});

test('error/OIDs: empty, unterminated, padded subidentifier', () => {
  for (const bytes of [
    [0x06, 0x00],
    [0x06, 0x02, 0x2a, 0x86],
    [0x06, 0x03, 0x2a, 0x80, 0x01],
  ]) {
    assert.throws(() => oid(Buffer.from(bytes), readTlv(Buffer.from(bytes), 0)), DerError, JSON.stringify(bytes));
  }
  const ok = Buffer.from([0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02]);
  assert.equal(oid(ok, readTlv(ok, 0)), '1.2.840.10045.4.3.2');
  const inner80 = Buffer.from([0x06, 0x03, 0x2a, 0x81, 0x00]); // 128 encoded as 81 00: a 0x00 after a continuation is fine
  assert.equal(oid(inner80, readTlv(inner80, 0)), '1.2.128');
});

test('error/more elements than the cap', () => {
  const many = tlv(0x30, ...Array.from({ length: MAX_CHILDREN + 1 }, () => Buffer.from([0x05, 0x00])));
  assert.throws(() => children(many, readTlv(many, 0)), DerError);
  assert.equal(children(many, readTlv(many, 0), MAX_CHILDREN + 1).length, MAX_CHILDREN + 1);
});

test('ok/certificateSpki is the key OpenSSL reads from the certificate (EC, RSA, Ed25519; v3 and v1)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'fleetgate-der-'));
  try {
    for (const [alg, extra] of [
      ['ec', ['-pkeyopt', 'ec_paramgen_curve:P-256']],
      ['rsa', ['-pkeyopt', 'rsa_keygen_bits:2048']],
      ['ed25519', []],
    ] as const) {
      execFileSync('openssl', ['genpkey', '-algorithm', alg, ...extra, '-out', join(dir, `${alg}.key`)], {
        stdio: 'ignore',
      });
      // v3 (with extensions) from `req -x509`; v1 (no version field at all) from `x509 -req` without extensions.
      execFileSync(
        'openssl',
        [
          'req',
          '-x509',
          '-new',
          '-key',
          join(dir, `${alg}.key`),
          '-subj',
          '/CN=spki',
          '-days',
          '1',
          '-out',
          join(dir, `${alg}.v3.crt`),
        ],
        { stdio: 'ignore' },
      );
      execFileSync(
        'openssl',
        ['req', '-new', '-key', join(dir, `${alg}.key`), '-subj', '/CN=spki', '-out', join(dir, `${alg}.csr`)],
        { stdio: 'ignore' },
      );
      execFileSync(
        'openssl',
        [
          'x509',
          '-req',
          '-in',
          join(dir, `${alg}.csr`),
          '-key',
          join(dir, `${alg}.key`),
          '-days',
          '1',
          '-out',
          join(dir, `${alg}.v1.crt`),
        ],
        { stdio: 'ignore' },
      );
      for (const v of ['v3', 'v1']) {
        const cert = new X509Certificate(readFileSync(join(dir, `${alg}.${v}.crt`)));
        const tbs = readTlv(cert.raw, readTlv(cert.raw, 0).contentStart);
        assert.equal(
          readTlv(cert.raw, tbs.contentStart).tag === 0xa0,
          v === 'v3',
          `${alg} ${v}: version field present in v3 only`,
        );
        assert.deepEqual(
          Buffer.from(certificateSpki(cert.raw)),
          cert.publicKey.export({ type: 'spki', format: 'der' }),
          `${alg} ${v}`,
        );
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  assert.throws(() => certificateSpki(Buffer.from([0x30, 0x03, 0x30, 0x01, 0x02])), DerError);
});
