// Issue #2 acceptance 3: each bad input is a clear coded error, exit ≠ 0, and no row is written.
import assert from 'node:assert/strict';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { ERRORS, type ErrorCode } from '../firmware-sdk/protocol/errors.ts';
import { initFleet } from '../harness/fleet.ts';
import { opensslCsr } from '../harness/pki.ts';
import { errorCode, fileScope, fleetgate, fleetgateOk } from '../harness/run.ts';
import { csrDer } from '../provisioning/ca/csr.ts';

let fleet: Awaited<ReturnType<typeof initFleet>>;
const scope = fileScope(after);
const files: Record<string, string> = {};
const tokens: Record<string, string> = {};

before(async () => {
  fleet = await initFleet(scope as never);
  await fleetgateOk(['device', 'add', 'known-1', '--type', 'sensor', '--data', fleet.data]);
  tokens.expired = (
    await fleetgateOk(['device', 'add', 'late-1', '--type', 'sensor', '--token-ttl', '1ms', '--data', fleet.data])
  ).trim();
  tokens.used = (await fleetgateOk(['device', 'add', 'used-1', '--type', 'sensor', '--data', fleet.data])).trim();
  const good = await opensslCsr(fleet.dir, 'good');
  files.good = good.csrFile;
  await fleetgateOk(['cert', 'issue', '--token', tokens.used, '--csr', good.csrFile, '--data', fleet.data]);
  files.rsa1024 = (await opensslCsr(fleet.dir, 'weak', 'rsa1024')).csrFile;
  files.garbage = join(fleet.dir, 'garbage.csr');
  writeFileSync(files.garbage, 'this is not a certificate signing request\n');
  const der = csrDer(readFileSync(good.csrFile, 'utf8'));
  der[der.length - 1] = (der[der.length - 1] as number) ^ 0x01; // flip a bit of the signature
  files.tampered = join(fleet.dir, 'tampered.csr');
  writeFileSync(files.tampered, der);
});

function snapshot() {
  const r = fleet.reader();
  const counts = r.counts();
  const devices = r.listDevices().map((d) => `${d.id}:${d.status}`);
  r.close();
  return { counts, devices };
}

const cases: [string, () => string[], ErrorCode][] = [
  ['garbage instead of a CSR', () => ['cert', 'issue', 'known-1', '--csr', files.garbage!], 'CSR_INVALID'],
  [
    'CSR whose signature does not match its key',
    () => ['cert', 'issue', 'known-1', '--csr', files.tampered!],
    'CSR_INVALID',
  ],
  ['RSA-1024 CSR', () => ['cert', 'issue', 'known-1', '--csr', files.rsa1024!], 'KEY_TOO_WEAK'],
  ['unknown device id', () => ['cert', 'issue', 'nobody-here', '--csr', files.good!], 'DEVICE_NOT_FOUND'],
  [
    'CSR file that does not exist',
    () => ['cert', 'issue', 'known-1', '--csr', join(fleet.dir, 'missing.csr')],
    'USAGE',
  ],
  ['expired token', () => ['cert', 'issue', '--token', tokens.expired!, '--csr', files.good!], 'TOKEN_EXPIRED'],
  ['already-used token', () => ['cert', 'issue', '--token', tokens.used!, '--csr', files.good!], 'TOKEN_USED'],
  ['unknown token', () => ['cert', 'issue', '--token', 'fgt_not-a-real-token', '--csr', files.good!], 'TOKEN_INVALID'],
  [
    'token of another device',
    () => ['cert', 'issue', 'known-1', '--token', tokens.expired!, '--csr', files.good!],
    'TOKEN_EXPIRED',
  ],
  ['unknown device type', () => ['device', 'add', 'new-1', '--type', 'toaster'], 'DEVICE_TYPE_INVALID'],
  ['existing device id', () => ['device', 'add', 'known-1', '--type', 'sensor'], 'DEVICE_EXISTS'],
  ['bad --token-ttl', () => ['device', 'add', 'new-2', '--type', 'sensor', '--token-ttl', '30'], 'USAGE'],
  ['bad revocation reason', () => ['device', 'revoke', 'known-1', '--reason', 'because'], 'USAGE'],
  ['malformed fingerprint', () => ['deny', 'add', '--fingerprint', 'abc123'], 'USAGE'],
  ['two deny targets', () => ['deny', 'add', '--device', 'known-1', '--spki', 'ab'.repeat(32)], 'USAGE'],
  ['revoking an unknown serial', () => ['cert', 'revoke', 'abcdef0123'], 'CERT_NOT_FOUND'],
  ['unknown command', () => ['devices', 'list'], 'USAGE'],
];
for (const bad of ['a/b', 'a+b', 'a#b', 'a b', 'x'.repeat(200), "x'); DROP TABLE devices;--", '']) {
  const name = JSON.stringify(bad.length > 20 ? `${bad.slice(0, 8)}…(${bad.length})` : bad);
  cases.push([`device add with id ${name}`, () => ['device', 'add', bad, '--type', 'sensor'], 'DEVICE_ID_INVALID']);
  cases.push([`cert issue for id ${name}`, () => ['cert', 'issue', bad, '--csr', files.good!], 'DEVICE_ID_INVALID']);
}

for (const [name, args, code] of cases) {
  test(`bad input/${name} → ${code}, nothing written`, async () => {
    const before = snapshot();
    const r = await fleetgate([...args(), '--json', '--data', fleet.data]);
    assert.equal(errorCode(r), code, r.stderr);
    assert.equal(r.code, ERRORS[code].exit, `exit code of ${code}`);
    assert.notEqual(r.code, 0);
    assert.equal(r.stdout, '', 'no certificate or token printed');
    assert.deepEqual(snapshot(), before, 'no row written');
  });
}

test('bad input/human errors are one clear line with the code', async () => {
  const r = await fleetgate(['cert', 'issue', 'known-1', '--csr', files.rsa1024!, '--data', fleet.data]);
  assert.equal(r.code, ERRORS.KEY_TOO_WEAK.exit);
  assert.match(r.stderr, /^fleetgate: KEY_TOO_WEAK: .*2048.*\n$/);
});

test('bad input/usage errors exit 2', async () => {
  const r = await fleetgate(['device', 'add', 'x', '--data', fleet.data]);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /USAGE.*--type/);
});

test('bad input/a data directory that cannot be written is STORAGE_READ_ONLY (exit 7), not INTERNAL', async () => {
  // /sys: a place even root cannot create a directory in (EPERM, or EROFS where it is mounted read-only).
  const r = await fleetgate(['init', '--json', '--data', '/sys/fleetgate-cannot-be-here']);
  assert.equal(errorCode(r), 'STORAGE_READ_ONLY', r.stderr);
  assert.equal(r.code, ERRORS.STORAGE_READ_ONLY.exit);
});

test('bad input/commands on an uninitialized data dir say how to fix it and create nothing', async () => {
  const empty = join(fleet.dir, 'never-initialized');
  const r = await fleetgate(['device', 'list', '--json', '--data', empty]);
  assert.equal(errorCode(r), 'CA_NOT_INITIALIZED');
  assert.match(r.stderr, /fleetgate init/);
  const ca = await fleetgate(['ca', 'cert', '--json', '--data', empty]);
  assert.equal(errorCode(ca), 'CA_NOT_INITIALIZED');
  assert.equal(existsSync(empty), false, 'nothing created outside init');
});
