import assert from 'node:assert/strict';
import { generateKeyPairSync, X509Certificate } from 'node:crypto';
import { join } from 'node:path';
import { test } from 'node:test';
import { loadConfig } from '../../config/config.ts';
import { dataPaths } from '../../config/paths.ts';
import { tempDir } from '../../harness/run.ts';
import { initDataDir } from '../setup.ts';
import { loadCa } from './authority.ts';
import { signLeaf } from './leaf.ts';
import { x509 } from './x509.ts';

test('leaf/the DER-built certificate is what the CA policy says, for every accepted key type', async (t) => {
  const dir = join(tempDir(t), 'data');
  await initDataDir(loadConfig({ dataDir: dir, env: {} }));
  const ca = await loadCa(dataPaths(dir));
  const keys = [
    generateKeyPairSync('ec', { namedCurve: 'P-256' }),
    generateKeyPairSync('ec', { namedCurve: 'P-384' }),
    generateKeyPairSync('rsa', { modulusLength: 2048 }),
    generateKeyPairSync('ed25519'),
  ];
  for (const { publicKey } of keys) {
    const spki = publicKey.export({ type: 'spki', format: 'der' });
    const leaf = signLeaf(ca, { deviceId: 'dev-1.a_b', spki, validityMs: 3_600_000 });
    const cert = new X509Certificate(leaf.pem);
    const intermediate = new X509Certificate(ca.intermediatePem);
    assert.ok(cert.verify(intermediate.publicKey), 'signed by the issuing CA');
    assert.ok(cert.checkIssued(intermediate));
    assert.equal(cert.subject, 'CN=dev-1.a_b');
    assert.equal(cert.subjectAltName, 'URI:urn:fleetgate:device:dev-1.a_b');
    assert.deepEqual(cert.keyUsage, ['1.3.6.1.5.5.7.3.2']);
    assert.equal(cert.ca, false);
    assert.equal(cert.serialNumber.toLowerCase(), leaf.serial);
    assert.ok(cert.publicKey.export({ type: 'spki', format: 'der' }).equals(spki));
    assert.equal(Date.parse(cert.validTo), leaf.notAfter);
    const parsed = new x509.X509Certificate(leaf.pem);
    assert.equal(
      parsed.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId,
      (await x509.SubjectKeyIdentifierExtension.create(parsed.publicKey)).keyId,
      'SKI is RFC 5280 method 1',
    );
    assert.equal(parsed.getExtension(x509.AuthorityKeyIdentifierExtension)?.keyId, ca.intermediateKeyId);
    assert.equal(parsed.getExtension(x509.BasicConstraintsExtension)?.critical, true);
    assert.equal(parsed.getExtension(x509.KeyUsagesExtension)?.usages, x509.KeyUsageFlags.digitalSignature);
  }
});
