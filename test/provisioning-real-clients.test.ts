// Issue #3 acceptance 1 and 2: a factory station with only openssl and curl enrolls a device
// over the JSON API and over EST; renewal over EST with the current certificate.
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { startTestProvisioning } from '../harness/gateway.ts';
import { openssl, opensslCsr } from '../harness/pki.ts';
import { fleetgateOk, run } from '../harness/run.ts';

const curl = (args: string[], input?: string) =>
  run('curl', ['-sS', '--max-time', '20', ...args], input === undefined ? {} : { input });

/** curl's output split at the -w marker into body and status. */
function split(stdout: string): { body: string; status: number } {
  const i = stdout.lastIndexOf('\n@@');
  return { body: stdout.slice(0, i), status: Number(stdout.slice(i + 3)) };
}

test('json api/operator adds a device, the factory enrolls with openssl + curl, openssl verify accepts it', async (t) => {
  const p = await startTestProvisioning(t);
  const token = (
    await fleetgateOk(['device', 'add', 'sensor-7', '--type', 'sensor', '--data', p.config.dataDir])
  ).trim();
  const { csrPem } = await opensslCsr(p.dir, 'sensor-7');
  const r = await curl(
    [
      '--cacert',
      p.rootFile,
      '-H',
      'content-type: application/json',
      '--data-binary',
      '@-',
      '-w',
      '\n@@%{http_code}',
      `${p.url}/v1/enroll`,
    ],
    JSON.stringify({ token, csr: csrPem }),
  );
  const { body, status } = split(r.stdout);
  assert.equal(status, 201, body);
  const issued = JSON.parse(body) as {
    deviceId: string;
    certificate: string;
    chain: string;
    ca: string;
    serial: string;
    notAfter: string;
  };
  assert.equal(issued.deviceId, 'sensor-7');
  for (const [name, pem] of [
    ['leaf.pem', issued.certificate],
    ['chain.pem', issued.chain],
    ['ca.pem', issued.ca],
  ] as const)
    writeFileSync(join(p.dir, name), pem);
  const verify = await openssl([
    'verify',
    '-purpose',
    'sslclient',
    '-CAfile',
    join(p.dir, 'ca.pem'),
    '-untrusted',
    join(p.dir, 'chain.pem'),
    join(p.dir, 'leaf.pem'),
  ]);
  assert.equal(verify.code, 0, verify.stderr);
  assert.equal(readFileSync(join(p.dir, 'ca.pem'), 'utf8'), readFileSync(p.rootFile, 'utf8'));
  assert.equal(p.registry.getCertificate(issued.serial)?.method, 'token');
  // The token never appears in the log.
  assert.ok(!p.log.lines.some((l) => JSON.stringify(l).includes(token)));
});

test('est/cacerts decodes with openssl pkcs7; simpleenroll with Basic auth; simplereenroll with the current certificate', async (t) => {
  const p = await startTestProvisioning(t);
  const est = `${p.url}/.well-known/est`;
  // cacerts
  const cacerts = await curl(['--cacert', p.rootFile, '-D', '-', `${est}/cacerts`]);
  assert.match(cacerts.stdout, /content-type: application\/pkcs7-mime/i);
  const b64 = cacerts.stdout.split(/\r\n\r\n/)[1]!;
  const chain = await run('sh', ['-c', 'openssl base64 -d | openssl pkcs7 -inform DER -print_certs'], { input: b64 });
  assert.equal((chain.stdout.match(/BEGIN CERTIFICATE/g) ?? []).length, 2, chain.stderr);
  assert.match(chain.stdout, /subject=.*Issuing CA/);

  // simpleenroll: base64 PKCS#10, HTTP Basic (device id : token)
  const token = (await fleetgateOk(['device', 'add', 'cam-3', '--type', 'camera', '--data', p.config.dataDir])).trim();
  const { csrFile, keyFile } = await opensslCsr(p.dir, 'cam-3');
  const b64csr = (await run('sh', ['-c', `openssl req -in ${csrFile} -outform DER | openssl base64`])).stdout;
  const enrolled = await curl(
    [
      '--cacert',
      p.rootFile,
      '-u',
      `cam-3:${token}`,
      '-H',
      'content-type: application/pkcs10',
      '--data-binary',
      '@-',
      '-w',
      '\n@@%{http_code}',
      `${est}/simpleenroll`,
    ],
    b64csr,
  );
  const e1 = split(enrolled.stdout);
  assert.equal(e1.status, 200, e1.body);
  const leaf = await run('sh', ['-c', 'openssl base64 -d | openssl pkcs7 -inform DER -print_certs'], {
    input: e1.body,
  });
  assert.match(leaf.stdout, /subject=CN\s*=\s*cam-3/);
  const certFile = join(p.dir, 'cam-3.crt');
  writeFileSync(certFile, leaf.stdout.replace(/^(subject|issuer)=.*\n/gm, '').trim() + '\n');
  const v = await openssl([
    'verify',
    '-purpose',
    'sslclient',
    '-CAfile',
    p.rootFile,
    '-untrusted',
    join(p.config.dataDir, 'ca', 'intermediate.crt'),
    certFile,
  ]);
  assert.equal(v.code, 0, v.stderr);

  // The same token again: refused with 409 TOKEN_USED, as plain text.
  const again = await curl(
    [
      '--cacert',
      p.rootFile,
      '-u',
      `cam-3:${token}`,
      '-H',
      'content-type: application/pkcs10',
      '--data-binary',
      '@-',
      '-w',
      '\n@@%{http_code}',
      `${est}/simpleenroll`,
    ],
    b64csr,
  );
  assert.equal(split(again.stdout).status, 409);
  assert.match(split(again.stdout).body, /^TOKEN_USED:/);

  // simplereenroll with the current certificate and a new key
  const next = await opensslCsr(p.dir, 'cam-3-next');
  const b64next = (await run('sh', ['-c', `openssl req -in ${next.csrFile} -outform DER | openssl base64`])).stdout;
  const renewed = await curl(
    [
      '--cacert',
      p.rootFile,
      '--cert',
      certFile,
      '--key',
      keyFile,
      '-H',
      'content-type: application/pkcs10',
      '--data-binary',
      '@-',
      '-w',
      '\n@@%{http_code}',
      `${est}/simplereenroll`,
    ],
    b64next,
  );
  const r2 = split(renewed.stdout);
  assert.equal(r2.status, 200, r2.body);
  const newLeaf = await run('sh', ['-c', 'openssl base64 -d | openssl pkcs7 -inform DER -print_certs'], {
    input: r2.body,
  });
  assert.match(newLeaf.stdout, /subject=CN\s*=\s*cam-3/);
  const certs = p.registry.listCertificates({ deviceId: 'cam-3' });
  assert.equal(certs.length, 2);
  assert.equal(certs[0]!.supersededBy, certs[1]!.serial, 'the old certificate is recorded as superseded');
  assert.equal(certs[0]!.revocation, null, 'and stays valid until it expires');

  // simpleenroll without credentials: 401 with a Basic challenge
  const anon = await curl(
    [
      '--cacert',
      p.rootFile,
      '-D',
      '-',
      '-H',
      'content-type: application/pkcs10',
      '--data-binary',
      '@-',
      `${est}/simpleenroll`,
    ],
    b64csr,
  );
  assert.match(anon.stdout, /^HTTP\/1\.1 401/);
  assert.match(anon.stdout, /www-authenticate: Basic/i);

  // csrattrs
  const attrs = await curl(['--cacert', p.rootFile, `${est}/csrattrs`]);
  const parsed = await run('sh', ['-c', 'openssl base64 -d | openssl asn1parse -inform DER'], { input: attrs.stdout });
  assert.match(parsed.stdout, /ecdsa-with-SHA256/);
  assert.match(parsed.stdout, /prime256v1/);
});

test('json api/CA chain, CRL (DER) and health', async (t) => {
  const p = await startTestProvisioning(t);
  const ca = await curl(['--cacert', p.rootFile, `${p.url}/v1/ca`]);
  assert.equal((ca.stdout.match(/BEGIN CERTIFICATE/g) ?? []).length, 2);
  const crlFile = join(p.dir, 'fleet.crl');
  const crl = await curl(['--cacert', p.rootFile, '-o', crlFile, '-w', '%{content_type}', `${p.url}/v1/crl`]);
  assert.equal(crl.stdout, 'application/pkix-crl');
  const text = await openssl(['crl', '-inform', 'DER', '-in', crlFile, '-noout', '-text']);
  assert.match(text.stdout, /Certificate Revocation List/);
  const health = await curl(['--cacert', p.rootFile, `${p.url}/healthz`]);
  assert.deepEqual(JSON.parse(health.stdout), { status: 'ok' });
});
