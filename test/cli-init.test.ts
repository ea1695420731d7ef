// Issue #2: `fleetgate init` (idempotent, never overwrites, key files 0600) and `fleetgate up`.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { test } from 'node:test';
import { initFleet } from '../harness/fleet.ts';
import { openssl, opensslCsr } from '../harness/pki.ts';
import { errorCode, FLEETGATE, fleetgate, fleetgateOk, tempDir } from '../harness/run.ts';

const mode = (file: string) => statSync(file).mode & 0o777;

test('init/creates a P-256 root and pathLen-0 intermediate, keys 0600, data dir 0700', async (t) => {
  const fleet = await initFleet(t);
  assert.equal(mode(fleet.data), 0o700);
  for (const key of ['offline/root-ca.key', 'ca/intermediate.key', 'tls/server.key'])
    assert.equal(mode(join(fleet.data, key)), 0o600, key);
  assert.equal(
    existsSync(join(fleet.data, 'ca', 'root.key')),
    false,
    'the root key is not next to what the services load',
  );
  const root = (await openssl(['x509', '-in', fleet.root, '-noout', '-text'])).stdout;
  assert.match(root, /ASN1 OID: prime256v1/);
  assert.match(root, /CA:TRUE/);
  const inter = (await openssl(['x509', '-in', fleet.intermediate, '-noout', '-text'])).stdout;
  assert.match(inter, /CA:TRUE, pathlen:0/);
  assert.match(inter, /Certificate Sign, CRL Sign/);
  const server = join(fleet.data, 'tls', 'server.crt');
  const verify = await openssl([
    'verify',
    '-purpose',
    'sslserver',
    '-CAfile',
    fleet.root,
    '-untrusted',
    fleet.intermediate,
    server,
  ]);
  assert.equal(verify.code, 0, verify.stderr);
  const san = (await openssl(['x509', '-in', server, '-noout', '-ext', 'subjectAltName'])).stdout;
  assert.match(san, /DNS:localhost/);
  assert.match(san, /IP Address:127\.0\.0\.1/);
  assert.match(san, /IP Address:0:0:0:0:0:0:0:1/);
});

test('init/is idempotent and never overwrites an existing CA', async (t) => {
  const fleet = await initFleet(t);
  const files = [
    'ca/root.crt',
    'offline/root-ca.key',
    'ca/intermediate.crt',
    'ca/intermediate.key',
    'tls/server.crt',
  ].map((f) => join(fleet.data, f));
  const before = files.map((f) => readFileSync(f, 'utf8'));
  const again = JSON.parse(await fleetgateOk(['init', '--json', '--data', fleet.data])) as { created: string[] };
  assert.deepEqual(again.created, []);
  assert.deepEqual(
    files.map((f) => readFileSync(f, 'utf8')),
    before,
  );
  // The root key moved offline, as it should be: nothing to do, nothing regenerated.
  renameSync(join(fleet.data, 'offline', 'root-ca.key'), join(fleet.dir, 'root.key.moved'));
  assert.deepEqual(
    (JSON.parse(await fleetgateOk(['init', '--json', '--data', fleet.data])) as { created: string[] }).created,
    [],
  );
  // A half-present issuing CA (certificate without its key) is refused, not regenerated.
  renameSync(join(fleet.data, 'ca', 'intermediate.key'), join(fleet.dir, 'intermediate.key.moved'));
  const r = await fleetgate(['init', '--json', '--data', fleet.data]);
  assert.equal(errorCode(r), 'CA_INVALID');
  assert.equal(readFileSync(files[2]!, 'utf8'), before[2]);
});

test('init/--hostname names go into the gateway certificate', async (t) => {
  const dir = tempDir(t);
  await fleetgateOk(['init', '--hostname', 'gw.factory.example', '10.1.2.3', '--data', dir]);
  const san = (await openssl(['x509', '-in', join(dir, 'tls', 'server.crt'), '-noout', '-ext', 'subjectAltName']))
    .stdout;
  assert.match(san, /DNS:gw\.factory\.example/);
  assert.match(san, /IP Address:10\.1\.2\.3/);
});

test('up/initializes the data dir, stays up, stops cleanly on SIGINT and SIGTERM', async (t) => {
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    const dir = join(tempDir(t), 'data');
    const child = spawn(process.execPath, [FLEETGATE, 'up', '--data', dir], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: {
        ...process.env,
        FLEETGATE_MQTT_PORT: '0',
        FLEETGATE_WSS_PORT: '0',
        FLEETGATE_ADMIN_PORT: '0',
        FLEETGATE_CONSOLE_PORT: '0',
        FLEETGATE_HTTPS_PORT: '0',
        FLEETGATE_PROVISION_PORT: '0',
      },
    });
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    t.after(() => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    });
    let stderr = '';
    child.stderr.on('data', (b: Buffer) => {
      stderr += b.toString();
    });
    const banner: string[] = [];
    for await (const line of createInterface({ input: child.stdout })) {
      banner.push(line);
      if (line.includes('Ctrl-C')) break;
    }
    assert.match(banner.join('\n'), /mqtt\+tls\s+mqtts:\/\/127\.0\.0\.1:\d+/);
    assert.match(banner.join('\n'), /mqtt\+wss\s+wss:\/\/127\.0\.0\.1:\d+\/mqtt/);
    assert.match(banner.join('\n'), /provision\s+https:\/\/127\.0\.0\.1:\d+/);
    assert.equal(child.exitCode, null, 'still running');
    assert.equal(mode(join(dir, 'offline', 'root-ca.key')), 0o600);
    // The reminder goes to the log on stderr, which may arrive after the banner on stdout.
    for (let i = 0; i < 100 && !/root CA key is still in the data directory/.test(stderr); i++)
      await new Promise((r) => setTimeout(r, 100));
    assert.match(stderr, /root CA key is still in the data directory/, 'up reminds the operator to move the root key');
    assert.ok(statSync(join(dir, 'registry.db')).isFile(), 'registry created');
    child.kill(signal);
    assert.equal(await exited, 0, `exit 0 after ${signal}: ${stderr}`);
    assert.match(stderr, /stopped/);
  }
});

test('ca/the services run with the root key offline; reissue-intermediate re-signs with the key brought back', async (t) => {
  const fleet = await initFleet(t);
  const offline = join(fleet.dir, 'root-ca.key');
  renameSync(join(fleet.data, 'offline', 'root-ca.key'), offline);
  // Enrollment works without the root key: the services load the issuing CA only.
  await fleetgateOk(['device', 'add', 'dev-1', '--type', 'sensor', '--no-token', '--data', fleet.data]);
  const csr = await opensslCsr(fleet.dir, 'dev-1');
  const first = await fleetgateOk(['cert', 'issue', 'dev-1', '--csr', csr.csrFile, '--data', fleet.data]);
  const oldIntermediate = readFileSync(fleet.intermediate, 'utf8');
  // A key that is not the root's is refused.
  const wrong = await fleetgate([
    'ca',
    'reissue-intermediate',
    '--root-key',
    join(fleet.data, 'tls', 'server.key'),
    '--json',
    '--data',
    fleet.data,
  ]);
  assert.equal(errorCode(wrong), 'CA_INVALID');
  assert.equal(readFileSync(fleet.intermediate, 'utf8'), oldIntermediate, 'nothing replaced');
  const out = JSON.parse(
    await fleetgateOk(['ca', 'reissue-intermediate', '--root-key', offline, '--json', '--data', fleet.data]),
  ) as { retired: string };
  assert.notEqual(readFileSync(fleet.intermediate, 'utf8'), oldIntermediate);
  assert.equal(readFileSync(out.retired, 'utf8'), oldIntermediate, 'the old certificate is kept');
  const verify = await openssl(['verify', '-CAfile', fleet.root, fleet.intermediate]);
  assert.equal(verify.code, 0, verify.stderr);
  const csr2 = await opensslCsr(fleet.dir, 'dev-2');
  await fleetgateOk(['device', 'add', 'dev-2', '--type', 'sensor', '--no-token', '--data', fleet.data]);
  const second = await fleetgateOk(['cert', 'issue', 'dev-2', '--csr', csr2.csrFile, '--data', fleet.data]);
  const fresh = join(fleet.dir, 'dev-2.pem');
  writeFileSync(fresh, second);
  assert.equal(
    (await openssl(['verify', '-purpose', 'sslclient', '-CAfile', fleet.root, '-untrusted', fleet.intermediate, fresh]))
      .code,
    0,
    'new certificates chain to the new issuing CA',
  );
  const old = join(fleet.dir, 'dev-1.pem');
  writeFileSync(old, first);
  assert.equal(
    (await openssl(['verify', '-purpose', 'sslclient', '-CAfile', fleet.root, '-untrusted', out.retired, old])).code,
    0,
    'old ones still chain to the root',
  );
});
