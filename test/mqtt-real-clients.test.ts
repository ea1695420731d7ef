// Issue #4 acceptance 1 and 4: the well-known clients. mosquitto_pub/mosquitto_sub connect,
// publish and receive; without a certificate or with a revoked one they are refused; and
// `openssl s_client` shows no TLS session is ever resumed, on either listener.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { startTestFleet, type TestFleet } from '../harness/gateway.ts';
import { type Credential, enrollDevice, openssl } from '../harness/pki.ts';
import { fileScope, run } from '../harness/run.ts';

let fleet: TestFleet;
const scope = fileScope(after);
const c: Record<string, Credential> = {};

before(async () => {
  fleet = await startTestFleet(scope);
  c.svc = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'svc-1', type: 'service' });
  c.dev = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'sensor-1' });
  c.revoked = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'sensor-2' });
  fleet.registry.revokeDevice('sensor-2', 1, 'test');
});

const tlsArgs = (cred?: Credential) => [
  '-h',
  '127.0.0.1',
  '-p',
  String(fleet.gateway.ports.mqtts),
  '--cafile',
  fleet.rootFile,
  ...(cred ? ['--cert', cred.certFile, '--key', cred.keyFile, '-i', cred.deviceId] : ['-i', 'sensor-1']),
];

/**
 * mosquitto_sub waiting for one message while mosquitto_pub publishes it: the subscriber's
 * SUBSCRIBE may land after the first PUBLISH, so publish until it has one (bounded). Resolves
 * with what the subscriber printed once it exited successfully.
 */
async function exchange(subArgs: string[], pubArgs: string[]): Promise<string> {
  const sub = spawn('mosquitto_sub', [...subArgs, '-C', '1', '-W', '15'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  sub.stdout.on('data', (b: Buffer) => {
    out += b.toString();
  });
  sub.stderr.on('data', (b: Buffer) => {
    err += b.toString();
  });
  const exited = new Promise<number | null>((resolve) => sub.on('exit', (code) => resolve(code)));
  for (let i = 0; i < 40 && sub.exitCode === null && out === ''; i++) {
    const pub = await run('mosquitto_pub', pubArgs);
    assert.equal(pub.code, 0, pub.stderr);
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.equal(await exited, 0, err);
  return out.trim();
}

test('mosquitto/sub and pub with their certificates exchange a message under their own topics', async () => {
  const out = await exchange(
    [...tlsArgs(c.svc), '-t', 'devices/+/telemetry', '-v'],
    [...tlsArgs(c.dev), '-t', 'devices/sensor-1/telemetry', '-m', '{"t":21.5}', '-q', '1'],
  );
  assert.equal(out, 'devices/sensor-1/telemetry {"t":21.5}');
});

test('mosquitto -V mqttv5/sub and pub exchange a message with a user property; a publish outside the device\'s topics is answered "not authorized" without a disconnect', async () => {
  const out = await exchange(
    ['-V', 'mqttv5', ...tlsArgs(c.svc), '-t', 'devices/+/v5', '-F', '%t %p'],
    [
      '-V',
      'mqttv5',
      ...tlsArgs(c.dev),
      '-t',
      'devices/sensor-1/v5',
      '-m',
      'five',
      '-q',
      '1',
      '-D',
      'publish',
      'user-property',
      'site',
      'north',
    ],
  );
  assert.equal(out, 'devices/sensor-1/v5 five');
  // MQTT 5 lets the gateway say no to one PUBLISH (PUBACK 0x87) instead of closing the connection.
  const denied = await run('mosquitto_pub', [
    '-V',
    'mqttv5',
    ...tlsArgs(c.dev),
    '-t',
    'devices/other/v5',
    '-m',
    'x',
    '-q',
    '1',
    '-d',
  ]);
  assert.match(denied.stdout + denied.stderr, /PUBACK \(Mid: ?\d+, RC: ?135\)|PUBACK.*not authori[sz]ed/is);
  await fleet.log.find((l) => l.action === 'publish' && l.code === 'TOPIC_DENIED' && l.deviceId === 'sensor-1');
});

test('mosquitto/without a client certificate the TLS handshake fails', async () => {
  const before = fleet.log.lines.length;
  const pub = await run('mosquitto_pub', [...tlsArgs(), '-t', 'devices/sensor-1/telemetry', '-m', 'x']);
  assert.notEqual(pub.code, 0);
  await fleet.log.find((l) => fleet.log.lines.indexOf(l) >= before && l.code === 'CERT_REQUIRED');
});

test('mosquitto/a revoked certificate is refused at CONNECT (not authorised)', async () => {
  const pub = await run('mosquitto_pub', [...tlsArgs(c.revoked), '-t', 'devices/sensor-2/telemetry', '-m', 'x']);
  assert.notEqual(pub.code, 0);
  assert.match(pub.stderr, /not authori[sz]ed/i);
  await fleet.log.find((l) => l.code === 'CERT_REVOKED' && l.deviceId === 'sensor-2');
});

for (const listener of ['mqtts', 'wss'] as const) {
  for (const version of ['-tls1_2', '-tls1_3']) {
    test(`no resumption/${listener} ${version}: an offered session is never resumed; the certificate is requested again`, async () => {
      const port = String(fleet.gateway.ports[listener]);
      const sess = join(fleet.dir, `sess-${listener}${version}.pem`);
      const common = [
        's_client',
        '-connect',
        `127.0.0.1:${port}`,
        '-servername',
        'localhost',
        '-CAfile',
        fleet.rootFile,
        '-cert',
        c.dev!.certFile,
        '-key',
        c.dev!.keyFile,
        version,
      ];
      const first = await openssl([...common, '-sess_out', sess], '');
      assert.match(first.stdout, /^New, TLSv1\.[23]/m, first.stdout + first.stderr);
      assert.match(first.stdout, /Acceptable client certificate CA names/);
      assert.doesNotMatch(first.stdout, /^Reused,/m);
      const second = await openssl([...common, ...(existsSync(sess) ? ['-sess_in', sess] : [])], '');
      assert.match(second.stdout, /^New, TLSv1\.[23]/m, 'a full handshake again');
      assert.doesNotMatch(second.stdout, /^Reused,/m);
      assert.match(
        second.stdout,
        /Acceptable client certificate CA names/,
        'the client certificate is requested again',
      );
      if (version === '-tls1_3') {
        // Tickets arrive after the handshake: keep the connection open a moment so s_client reads them.
        const lingering = await run('sh', ['-c', `sleep 1 | openssl ${common.map((a) => `'${a}'`).join(' ')}`]);
        assert.match(lingering.stdout, /^New, TLSv1\.3/m);
        assert.doesNotMatch(
          first.stdout + second.stdout + lingering.stdout,
          /Post-Handshake New Session Ticket/,
          'no TLS 1.3 tickets at all (config/openssl.cnf: NumTickets = 0)',
        );
      }
    });
  }
}
