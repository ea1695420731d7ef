// Issue #26: node identities from the fleet's CA, made where they are used; what a gateway host
// gets (never the issuing CA key); the server side's configuration, generated.
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { fleetgate, fleetgateOk, run, tempDir } from '../harness/run.ts';

const json = (s: string) => JSON.parse(s) as Record<string, unknown>;

test('cli node/a node key made on its host, signed on the CA host from its CSR, installed, rotated', async (t) => {
  const caHost = join(tempDir(t), 'ca');
  const nodeHost = join(tempDir(t), 'n2');
  await fleetgateOk(['init', '--data', caHost]);
  await fleetgateOk(['cluster', 'host-files', '--data', caHost, '--out', nodeHost]);
  const csrFile = join(nodeHost, '..', 'n2.csr');
  await fleetgateOk(['node', 'request', 'n2', '--role', 'gateway', '--data', nodeHost, '--out', csrFile]);
  assert.equal(statSync(join(nodeHost, 'node', 'node.key')).mode & 0o777, 0o600);
  const certFile = join(nodeHost, '..', 'n2.crt');
  const issued = json(
    await fleetgateOk([
      'node',
      'issue',
      'n2',
      '--role',
      'gateway',
      '--csr',
      csrFile,
      '--out',
      certFile,
      '--data',
      caHost,
      '--json',
    ]),
  );
  assert.equal(issued.distinguishedName, 'CN=gateway:n2,OU=gateway,O=fleetgate');
  assert.ok(!existsSync(join(caHost, 'node', 'node.key')), 'no key was made on the CA host');
  await fleetgateOk(['node', 'install', certFile, '--data', nodeHost]);
  const shown = json(await fleetgateOk(['node', 'show', '--data', nodeHost, '--json']));
  assert.deepEqual([shown.role, shown.name], ['gateway', 'n2']);
  assert.ok(Number(shown.daysLeft) >= 89);
  // The chain verifies against the fleet root, for client authentication.
  const v = await run('openssl', [
    'verify',
    '-purpose',
    'sslclient',
    '-CAfile',
    join(caHost, 'ca', 'root.crt'),
    '-untrusted',
    join(caHost, 'ca', 'intermediate.crt'),
    certFile,
  ]);
  assert.equal(v.code, 0, v.stderr);
  // Recorded: no certificate issued unrecorded.
  const audit = await fleetgateOk(['audit', '--data', caHost, '--json']);
  assert.match(audit, /node\.issue/);
  assert.match(audit, /gateway:n2/);
  // Installing again needs --replace (rotation); a certificate for another key is refused.
  const again = await fleetgate(['node', 'install', certFile, '--data', nodeHost]);
  assert.equal(again.code, 4, again.stderr);
  assert.match(again.stderr, /NODE_CERT_EXISTS/);
  await fleetgateOk([
    'node',
    'issue',
    'x',
    '--role',
    'gateway',
    '--out-dir',
    join(nodeHost, '..', 'x'),
    '--data',
    caHost,
  ]);
  const wrong = await fleetgate([
    'node',
    'install',
    join(nodeHost, '..', 'x', 'x.crt'),
    '--data',
    nodeHost,
    '--replace',
  ]);
  assert.equal(wrong.code, 5, wrong.stderr);
  assert.match(wrong.stderr, /not for this host's key/);
});

test('cli node/a gateway host gets the chain, its TLS files and the assertion keys, never a CA key', async (t) => {
  const caHost = join(tempDir(t), 'ca');
  const out = join(tempDir(t), 'gw');
  await fleetgateOk(['init', '--data', caHost]);
  const r = json(await fleetgateOk(['cluster', 'host-files', '--data', caHost, '--out', out, '--json']));
  const files = r.files as string[];
  for (const f of ['ca/root.crt', 'ca/intermediate.crt', 'tls/server.crt', 'tls/server.key'])
    assert.ok(files.includes(f), `${f} in ${JSON.stringify(files)}`);
  assert.ok(!existsSync(join(out, 'ca', 'intermediate.key')), 'no issuing CA key');
  assert.ok(!existsSync(join(out, 'offline')), 'no root key');
  assert.ok(!existsSync(join(out, 'registry.db')));
  assert.equal(statSync(join(out, 'tls', 'server.key')).mode & 0o777, 0o600);
  assert.ok(readdirSync(join(out, 'jwt')).length > 0, 'the HTTPS assertion keys');
  const again = await fleetgate(['cluster', 'host-files', '--data', caHost, '--out', out]);
  assert.notEqual(again.code, 0, 'never into a directory with files in it');
});

test('cli node/bad requests are refused with their codes and nothing is written', async (t) => {
  const dir = join(tempDir(t), 'ca');
  await fleetgateOk(['init', '--data', dir]);
  const badRole = await fleetgate(['node', 'issue', 'n1', '--role', 'device', '--data', dir]);
  assert.equal(badRole.code, 5);
  assert.match(badRole.stderr, /NODE_CERT_INVALID/);
  const badName = await fleetgate(['node', 'issue', 'a:b', '--role', 'gateway', '--data', dir]);
  assert.match(badName.stderr, /NODE_CERT_INVALID/);
  const hostOnClient = await fleetgate(['node', 'issue', 'n1', '--role', 'gateway', '--host', 'x', '--data', dir]);
  assert.match(hostOnClient.stderr, /NODE_CERT_INVALID/);
  const rsa = await run('openssl', [
    'req',
    '-new',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-keyout',
    '/dev/null',
    '-subj',
    '/CN=x',
  ]);
  const rsaCsr = await fleetgate(['node', 'issue', 'n1', '--role', 'gateway', '--csr', '-', '--data', dir], {
    input: rsa.stdout,
  });
  assert.match(rsaCsr.stderr, /NODE_CERT_INVALID.*EC P-256|EC P-256/s);
  assert.ok(!existsSync(join(dir, 'node')), 'nothing written');
  const none = await fleetgate(['node', 'show', '--data', dir]);
  assert.equal(none.code, 3);
  assert.match(none.stderr, /NODE_CERT_NOT_FOUND/);
  await fleetgateOk(['node', 'issue', 'n1', '--role', 'gateway', '--data', dir]);
  const twice = await fleetgate(['node', 'issue', 'n1', '--role', 'gateway', '--data', dir]);
  assert.equal(twice.code, 4);
  const before = readFileSync(join(dir, 'node', 'node.crt'), 'utf8');
  await fleetgateOk(['node', 'issue', 'n1', '--role', 'gateway', '--data', dir, '--replace']);
  assert.notEqual(readFileSync(join(dir, 'node', 'node.crt'), 'utf8'), before, 'rotated');
});

test('cli cluster/nats-config and postgres-setup print the server side, --json too', async (t) => {
  const dir = join(tempDir(t), 'ca');
  await fleetgateOk(['init', '--data', dir]);
  const nats = await fleetgateOk(['cluster', 'nats-config', '--gateway', 'n1,n2', '--data', dir]);
  assert.match(nats, /verify_and_map: true/);
  assert.match(nats, /CN=gateway:n1,OU=gateway,O=fleetgate/);
  assert.match(nats, /"fg\.s\.n2"/);
  assert.doesNotMatch(nats, /no_auth_user|password/);
  // One of three JetStream servers, routed over mTLS: only the fleet's route certificate may join.
  const js = await fleetgateOk([
    ...['cluster', 'nats-config', '--gateway', 'n1', '--data', dir, '--jetstream', join(dir, 'js')],
    ...['--server-name', 'nats-2', '--cluster-listen', '127.0.0.1:6222', '--routes', '127.0.0.1:6221,127.0.0.1:6223'],
  ]);
  assert.match(js, /server_name: "nats-2"\njetstream \{ store_dir: /);
  assert.match(js, /routes: \["nats-route:\/\/127\.0\.0\.1:6221", "nats-route:\/\/127\.0\.0\.1:6223"\]/);
  assert.match(js, /authorization \{ user: "CN=server:nats,OU=server,O=fleetgate" \}/);
  assert.match(js, /"\$JS\.API\.STREAM\.PURGE\.FLEETGATE_INBOX"/);
  assert.doesNotMatch(js, /STREAM\.DELETE/);
  const half = await fleetgate([
    'cluster',
    'nats-config',
    '--gateway',
    'n1',
    '--data',
    dir,
    '--routes',
    '127.0.0.1:6221',
  ]);
  assert.equal(half.code, 2);
  assert.match(half.stderr, /--cluster-listen and --routes go together/);
  const pgSetup = json(
    await fleetgateOk(['cluster', 'postgres-setup', '--host', 'db.example', '--data', dir, '--json']),
  );
  assert.match(String(pgSetup.hba), /hostssl fleetgate .* cert map=fleetgate/);
  assert.match(String(pgSetup.ident), /fleetgate \/\^gateway:.*fleetgate_gateway/);
  assert.match(
    String((pgSetup.urls as Record<string, string>).gateway),
    /^postgres:\/\/fleetgate_gateway@db\.example:5432\/fleetgate\?sslmode=verify-full/,
  );
});
