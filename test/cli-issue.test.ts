// Issue #2 acceptance 2: CSRs made by `openssl req` are signed by `fleetgate cert issue`;
// `openssl verify -purpose sslclient` accepts them; the CA alone decides their content.
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { initFleet } from '../harness/fleet.ts';
import { firstCert, type KeySpec, openssl, opensslCsr } from '../harness/pki.ts';
import { fleetgateOk } from '../harness/run.ts';

async function issueAndVerify(t: import('node:test').TestContext, key: KeySpec, extra: string[] = []) {
  const fleet = await initFleet(t);
  const id = `dev-${key}`;
  await fleetgateOk(['device', 'add', id, '--type', 'sensor', '--data', fleet.data]);
  const { csrFile } = await opensslCsr(fleet.dir, id, key, extra);
  const chain = await fleetgateOk(['cert', 'issue', id, '--csr', csrFile, '--data', fleet.data]);
  const certFile = join(fleet.dir, `${id}.crt`);
  writeFileSync(certFile, firstCert(chain));
  assert.match(chain, /(-----BEGIN CERTIFICATE-----[\s\S]*?){2}/, 'leaf + intermediate');

  const verify = await openssl([
    'verify',
    '-purpose',
    'sslclient',
    '-CAfile',
    fleet.root,
    '-untrusted',
    fleet.intermediate,
    certFile,
  ]);
  assert.equal(verify.code, 0, verify.stderr);
  assert.match(verify.stdout, /: OK/);

  const text = (await openssl(['x509', '-in', certFile, '-noout', '-text'])).stdout;
  return { fleet, id, text, certFile };
}

function assertDeviceProfile(text: string, id: string): void {
  assert.match(text, new RegExp(`Subject: CN\\s*=\\s*${id}\\n`), 'subject is CN=<device id> only');
  assert.match(
    text,
    new RegExp(`X509v3 Subject Alternative Name:\\s*\\n\\s*URI:urn:fleetgate:device:${id}\\n`),
    'SAN is the device URI only',
  );
  assert.match(text, /X509v3 Extended Key Usage:\s*\n\s*TLS Web Client Authentication\n/, 'EKU clientAuth only');
  assert.match(text, /X509v3 Basic Constraints: critical\s*\n\s*CA:FALSE/);
  assert.match(text, /X509v3 Key Usage: critical\s*\n\s*Digital Signature\n/);
  assert.match(text, /X509v3 Subject Key Identifier/);
  assert.match(text, /X509v3 Authority Key Identifier/);
  const serial = /Serial Number:\s*\n?\s*([0-9a-f:]+)/i.exec(text)?.[1]?.replaceAll(':', '') ?? '';
  assert.ok(serial.length >= 16, `serial of ≥ 64 bits, got ${serial}`);
}

test('issue/EC P-256 CSR from openssl req is signed and verifies as a client certificate', async (t) => {
  const { text, id, fleet } = await issueAndVerify(t, 'ec');
  assertDeviceProfile(text, id);
  assert.match(text, /ASN1 OID: prime256v1/);
  const device = fleet.reader().getDevice(id);
  assert.equal(device?.status, 'active');
});

test('issue/RSA-2048 CSR from openssl req is signed and verifies as a client certificate', async (t) => {
  const { text, id } = await issueAndVerify(t, 'rsa2048');
  assertDeviceProfile(text, id);
  assert.match(text, /Public-Key: \(2048 bit\)/);
});

test('issue/Ed25519 CSR is signed and verifies', async (t) => {
  const { text, id } = await issueAndVerify(t, 'ed25519');
  assertDeviceProfile(text, id);
});

test('issue/a CSR asking for CA:true and extra SANs gets a certificate without them', async (t) => {
  const { text, id, fleet } = await issueAndVerify(t, 'ec', [
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'subjectAltName=DNS:evil.example,URI:urn:fleetgate:device:someone-else,IP:10.0.0.1',
    '-addext',
    'extendedKeyUsage=serverAuth,codeSigning',
  ]);
  assertDeviceProfile(text, id);
  assert.doesNotMatch(text, /evil\.example|someone-else|10\.0\.0\.1|Code Signing|Server Authentication|CA:TRUE/);
  const audit = fleet
    .reader()
    .listAudit()
    .find((r) => r.action === 'cert.issue');
  assert.ok(audit !== undefined, 'the issuance has its audit row');
  assert.deepEqual(
    (audit.detail.ignored as string[]).slice().sort(),
    ['basicConstraints', 'extendedKeyUsage', 'subjectAltName'],
    'what was asked for and ignored is logged in the audit row',
  );
});

test('issue/--json, --out and --validity', async (t) => {
  const fleet = await initFleet(t);
  await fleetgateOk(['device', 'add', 'cam-1', '--type', 'camera', '--no-token', '--data', fleet.data]);
  const { csrFile } = await opensslCsr(fleet.dir, 'cam-1');
  const out = join(fleet.dir, 'cam-1.pem');
  const result = JSON.parse(
    await fleetgateOk([
      'cert',
      'issue',
      'cam-1',
      '--csr',
      csrFile,
      '--validity',
      '2m',
      '--out',
      out,
      '--json',
      '--data',
      fleet.data,
    ]),
  ) as Record<string, string>;
  assert.equal(result.deviceId, 'cam-1');
  const lifetime = Date.parse(result.notAfter!) - Date.parse(result.notBefore!);
  assert.ok(
    lifetime >= 180_000 - 2_000 && lifetime <= 180_000 + 2_000,
    `2 minutes + 1 minute backdating, got ${lifetime} ms`,
  );
  const dates = (await openssl(['x509', '-in', out, '-noout', '-serial'])).stdout;
  assert.equal(dates.trim().split('=')[1]?.toLowerCase(), result.serial);
  const recorded = fleet.reader().getCertificate(result.serial!);
  assert.equal(recorded?.fingerprint, result.fingerprint);
  assert.equal(recorded?.pem, result.certificate);
});

test('issue/an enrollment token names the device and is consumed', async (t) => {
  const fleet = await initFleet(t);
  const token = (await fleetgateOk(['device', 'add', 'sensor-9', '--type', 'sensor', '--data', fleet.data])).trim();
  const { csrFile } = await opensslCsr(fleet.dir, 'sensor-9');
  const chain = await fleetgateOk(['cert', 'issue', '--token', token, '--csr', csrFile, '--data', fleet.data]);
  const subject = (await openssl(['x509', '-noout', '-subject'], firstCert(chain))).stdout;
  assert.match(subject, /CN\s*=\s*sensor-9/);
  const [cert] = fleet.reader().listCertificates({ deviceId: 'sensor-9' });
  assert.equal(cert?.method, 'token');
});

test('ca cert/prints the root, or the chain with --chain', async (t) => {
  const fleet = await initFleet(t);
  const root = await fleetgateOk(['ca', 'cert', '--data', fleet.data]);
  assert.equal((root.match(/BEGIN CERTIFICATE/g) ?? []).length, 1);
  const chain = await fleetgateOk(['ca', 'cert', '--chain', '--data', fleet.data]);
  assert.equal((chain.match(/BEGIN CERTIFICATE/g) ?? []).length, 2);
  assert.ok(chain.endsWith(root), 'intermediate first, then root');
});
