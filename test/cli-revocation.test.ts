// Issue #2 acceptance 4: after `device revoke` and `cert revoke`, `fleetgate crl` lists the
// serials with their reasons and `openssl verify -crl_check` fails for them only.
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { initFleet } from '../harness/fleet.ts';
import { firstCert, openssl, opensslCsr } from '../harness/pki.ts';
import { errorCode, fleetgate, fleetgateOk } from '../harness/run.ts';

test('revocation/device revoke and cert revoke appear on the signed CRL; openssl -crl_check agrees', async (t) => {
  const fleet = await initFleet(t);
  const issue = async (id: string, csrName = id) => {
    const { csrFile } = await opensslCsr(fleet.dir, csrName);
    const pem = firstCert(await fleetgateOk(['cert', 'issue', id, '--csr', csrFile, '--data', fleet.data]));
    const file = join(fleet.dir, `${csrName}.crt`);
    writeFileSync(file, pem);
    const serial = (await openssl(['x509', '-in', file, '-noout', '-serial'])).stdout
      .trim()
      .split('=')[1]!
      .toLowerCase();
    return { file, serial };
  };
  for (const id of ['lost-1', 'keep-1', 'rotated-1'])
    await fleetgateOk(['device', 'add', id, '--type', 'sensor', '--no-token', '--data', fleet.data]);
  const lostA = await issue('lost-1', 'lost-1a');
  const lostB = await issue('lost-1', 'lost-1b');
  const keep = await issue('keep-1');
  const rotatedOld = await issue('rotated-1', 'rotated-1-old');
  const rotatedNew = await issue('rotated-1', 'rotated-1-new');

  await fleetgateOk(['device', 'revoke', 'lost-1', '--reason', 'keyCompromise', '--data', fleet.data]);
  await fleetgateOk([
    'cert',
    'revoke',
    rotatedOld.serial.toUpperCase().replace(/(..)(?!$)/g, '$1:'),
    '--reason',
    'superseded',
    '--data',
    fleet.data,
  ]);

  const crlFile = join(fleet.dir, 'fleet.crl');
  await fleetgateOk(['crl', '--out', crlFile, '--data', fleet.data]); // DER
  const text = await openssl(['crl', '-inform', 'DER', '-in', crlFile, '-noout', '-text']);
  assert.equal(text.code, 0, text.stderr);
  assert.match(text.stdout, /Version 2/);
  assert.match(text.stdout, /X509v3 CRL Number:\s*\n\s*\d+/);
  assert.match(text.stdout, /X509v3 Authority Key Identifier/);
  const entries = new Map(
    [
      ...text.stdout.matchAll(
        /Serial Number: ([0-9A-F]+)\s*\n\s*Revocation Date: [^\n]+\n(?:\s*CRL entry extensions:\s*\n\s*X509v3 CRL Reason Code:\s*\n\s*([^\n]+))?/g,
      ),
    ].map((m) => [m[1]!.toLowerCase(), m[2]?.trim()]),
  );
  assert.deepEqual(
    entries,
    new Map([
      [lostA.serial, 'Key Compromise'],
      [lostB.serial, 'Key Compromise'],
      [rotatedOld.serial, 'Superseded'],
    ]),
  );

  // The CRL is signed by the issuing CA.
  const sig = await openssl(['crl', '-inform', 'DER', '-in', crlFile, '-noout', '-CAfile', fleet.intermediate]);
  assert.match(sig.stderr + sig.stdout, /verify OK/);

  const pemCrl = join(fleet.dir, 'fleet-crl.pem');
  writeFileSync(pemCrl, await fleetgateOk(['crl', '--pem', '--data', fleet.data]));
  const verify = (cert: string) =>
    openssl([
      'verify',
      '-crl_check',
      '-purpose',
      'sslclient',
      '-CAfile',
      fleet.root,
      '-untrusted',
      fleet.intermediate,
      '-CRLfile',
      pemCrl,
      cert,
    ]);
  for (const revoked of [lostA, lostB, rotatedOld]) {
    const r = await verify(revoked.file);
    assert.notEqual(r.code, 0, `${revoked.serial} must fail`);
    assert.match(r.stdout + r.stderr, /certificate revoked/);
  }
  for (const good of [keep, rotatedNew]) {
    const r = await verify(good.file);
    assert.equal(r.code, 0, `${good.serial} must pass: ${r.stderr}`);
  }
});

test('revocation/CRL numbers increase; an empty CRL has no entries; JSON gives PEM', async (t) => {
  const fleet = await initFleet(t);
  const first = JSON.parse(await fleetgateOk(['crl', '--json', '--data', fleet.data])) as {
    number: number;
    entries: number;
    pem: string;
  };
  const second = JSON.parse(await fleetgateOk(['crl', '--json', '--data', fleet.data])) as { number: number };
  assert.equal(first.entries, 0);
  assert.ok(second.number > first.number);
  const text = await openssl(['crl', '-noout', '-text'], first.pem);
  assert.match(text.stdout, /No Revoked Certificates/);
});

test('revocation/revoked devices cannot be resumed, suspended or issued again', async (t) => {
  const fleet = await initFleet(t);
  await fleetgateOk(['device', 'add', 'gone-1', '--type', 'sensor', '--no-token', '--data', fleet.data]);
  await fleetgateOk(['device', 'revoke', 'gone-1', '--data', fleet.data]);
  const { csrFile } = await opensslCsr(fleet.dir, 'gone-1');
  assert.equal(
    errorCode(await fleetgate(['cert', 'issue', 'gone-1', '--csr', csrFile, '--json', '--data', fleet.data])),
    'DEVICE_REVOKED',
  );
  assert.equal(
    errorCode(await fleetgate(['device', 'resume', 'gone-1', '--json', '--data', fleet.data])),
    'DEVICE_STATE_CONFLICT',
  );
  const shown = JSON.parse(await fleetgateOk(['device', 'show', 'gone-1', '--json', '--data', fleet.data])) as {
    status: string;
  };
  assert.equal(shown.status, 'revoked');
});
