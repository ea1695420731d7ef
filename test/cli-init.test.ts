// Issue #2: `fleetgate init` (idempotent, never overwrites, key files 0600) and `fleetgate up`.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync, renameSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { test } from 'node:test';
import { initFleet } from './helpers/fleet.ts';
import { openssl } from './helpers/pki.ts';
import { errorCode, fleetgate, fleetgateOk, FLEETGATE, tempDir } from './helpers/run.ts';

const mode = (file: string) => statSync(file).mode & 0o777;

test('init/creates a P-256 root and pathLen-0 intermediate, keys 0600, data dir 0700', async (t) => {
  const fleet = await initFleet(t);
  assert.equal(mode(fleet.data), 0o700);
  for (const key of ['ca/root.key', 'ca/intermediate.key', 'tls/server.key']) assert.equal(mode(join(fleet.data, key)), 0o600, key);
  const root = (await openssl(['x509', '-in', fleet.root, '-noout', '-text'])).stdout;
  assert.match(root, /ASN1 OID: prime256v1/);
  assert.match(root, /CA:TRUE/);
  const inter = (await openssl(['x509', '-in', fleet.intermediate, '-noout', '-text'])).stdout;
  assert.match(inter, /CA:TRUE, pathlen:0/);
  assert.match(inter, /Certificate Sign, CRL Sign/);
  const server = join(fleet.data, 'tls', 'server.crt');
  const verify = await openssl(['verify', '-purpose', 'sslserver', '-CAfile', fleet.root, '-untrusted', fleet.intermediate, server]);
  assert.equal(verify.code, 0, verify.stderr);
  const san = (await openssl(['x509', '-in', server, '-noout', '-ext', 'subjectAltName'])).stdout;
  assert.match(san, /DNS:localhost/);
  assert.match(san, /IP Address:127\.0\.0\.1/);
  assert.match(san, /IP Address:0:0:0:0:0:0:0:1/);
});

test('init/is idempotent and never overwrites an existing CA', async (t) => {
  const fleet = await initFleet(t);
  const files = ['ca/root.crt', 'ca/root.key', 'ca/intermediate.crt', 'ca/intermediate.key', 'tls/server.crt'].map((f) => join(fleet.data, f));
  const before = files.map((f) => readFileSync(f, 'utf8'));
  const again = JSON.parse(await fleetgateOk(['init', '--json', '--data', fleet.data])) as { created: string[] };
  assert.deepEqual(again.created, []);
  assert.deepEqual(files.map((f) => readFileSync(f, 'utf8')), before);
  // A half-present CA (certificate without its key) is refused, not regenerated.
  renameSync(join(fleet.data, 'ca', 'root.key'), join(fleet.dir, 'root.key.moved'));
  const r = await fleetgate(['init', '--json', '--data', fleet.data]);
  assert.equal(errorCode(r), 'CA_INVALID');
  assert.equal(readFileSync(files[0]!, 'utf8'), before[0]);
});

test('init/--hostname names go into the gateway certificate', async (t) => {
  const dir = tempDir(t);
  await fleetgateOk(['init', '--hostname', 'gw.factory.example', '10.1.2.3', '--data', dir]);
  const san = (await openssl(['x509', '-in', join(dir, 'tls', 'server.crt'), '-noout', '-ext', 'subjectAltName'])).stdout;
  assert.match(san, /DNS:gw\.factory\.example/);
  assert.match(san, /IP Address:10\.1\.2\.3/);
});

test('up/initializes the data dir, stays up, stops cleanly on SIGINT and SIGTERM', async (t) => {
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    const dir = join(tempDir(t), 'data');
    const child = spawn(process.execPath, [FLEETGATE, 'up', '--data', dir], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, FLEETGATE_MQTT_PORT: '0', FLEETGATE_WSS_PORT: '0', FLEETGATE_ADMIN_PORT: '0', FLEETGATE_HTTPS_PORT: '0', FLEETGATE_PROVISION_PORT: '0' },
    });
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    let stderr = '';
    child.stderr.on('data', (b: Buffer) => { stderr += b.toString(); });
    const banner: string[] = [];
    for await (const line of createInterface({ input: child.stdout })) {
      banner.push(line);
      if (line.includes('Ctrl-C')) break;
    }
    assert.match(banner.join('\n'), /mqtt\+tls\s+mqtts:\/\/127\.0\.0\.1:\d+/);
    assert.match(banner.join('\n'), /mqtt\+wss\s+wss:\/\/127\.0\.0\.1:\d+\/mqtt/);
    assert.match(banner.join('\n'), /provision\s+https:\/\/127\.0\.0\.1:\d+/);
    assert.equal(child.exitCode, null, 'still running');
    assert.equal(mode(join(dir, 'ca', 'root.key')), 0o600);
    assert.ok(statSync(join(dir, 'registry.db')).isFile(), 'registry created');
    child.kill(signal);
    assert.equal(await exited, 0, `exit 0 after ${signal}: ${stderr}`);
    assert.match(stderr, /stopped/);
  }
});
