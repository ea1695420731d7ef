// Issue #6 acceptance 4: a process killed between the steps of writing an identity leaves the
// directory holding the old identity or the new one, never a mix.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { identityFiles, loadIdentity, saveIdentity } from '../firmware-sdk/identity.ts';
import { startTestFleet } from '../harness/gateway.ts';
import { forgeCert, newKeys } from '../harness/pki.ts';
import { ROOT, tempDir } from '../harness/run.ts';

test('identity/SIGKILL while identities are being written never leaves a mix', async (t) => {
  const fleet = await startTestFleet(t);
  const dir = tempDir(t);
  // Two complete identities, A and B, written in turn by a child process we kill at random moments.
  const ids = await Promise.all(
    ['a', 'b'].map(async (name) => {
      fleet.registry.addDevice({ id: `atomic-${name}`, type: 'sensor' }, 'test');
      const c = await forgeCert(fleet.ca, dir, { name, deviceId: `atomic-${name}`, keys: await newKeys() });
      return {
        keyPem: c.keyPem,
        certPem: c.certPem,
        chainPem: fleet.ca.intermediatePem,
        caPem: fleet.ca.rootPem,
        serial: c.serial,
      };
    }),
  );
  const identityDir = join(dir, 'identity');
  saveIdentity(identityDir, ids[0]!);
  const spec = join(dir, 'ids.json');
  writeFileSync(spec, JSON.stringify(ids));
  const script = `
    import { readFileSync } from 'node:fs';
    import { saveIdentity } from ${JSON.stringify(join(ROOT, 'firmware-sdk', 'identity.ts'))};
    const ids = JSON.parse(readFileSync(${JSON.stringify(spec)}, 'utf8'));
    saveIdentity(${JSON.stringify(identityDir)}, ids[1]);
    process.stdout.write('writing\\n');
    for (let i = 0; ; i++) saveIdentity(${JSON.stringify(identityDir)}, ids[i % 2]);
  `;
  const serials = new Set(ids.map((i) => i.serial));
  const seen = new Set<string>();
  for (let round = 0; round < 25; round++) {
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    // Wait for the event (the child has loaded and is in its write loop), not for a duration:
    // importing the SDK alone takes a few hundred ms on a busy machine.
    await new Promise<void>((resolve, reject) => {
      child.stdout.once('data', () => resolve());
      child.once('exit', (code) => reject(new Error(`writer exited early (${code})`)));
    });
    await new Promise((r) => setTimeout(r, Math.floor(Math.random() * 40)));
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    const id = loadIdentity(identityDir); // throws if the key does not match the certificate
    assert.ok(serials.has(id.info.serial), 'one of the two identities');
    const files = identityFiles(identityDir);
    const cert = new X509Certificate(readFileSync(files.cert));
    assert.ok(
      cert.checkPrivateKey(createPrivateKey(readFileSync(files.key))),
      'key and certificate of the same identity',
    );
    assert.equal(readFileSync(files.chain, 'utf8'), fleet.ca.intermediatePem);
    seen.add(id.info.serial);
  }
  assert.equal(seen.size, 2, 'the kills landed while both identities were being written');
});
