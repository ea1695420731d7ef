// Issue #6 acceptance 1: `fleetgate device add` → `fleetgate-device enroll` → `pub` over mqtts and
// wss and `request` over HTTPS succeed; a service subscriber receives the messages.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { dataPaths } from '../config/paths.ts';
import { connect, end, nextMessage } from '../harness/mqtt.ts';
import { startOrigin } from '../harness/origin.ts';
import { enrollDevice } from '../harness/pki.ts';
import { FLEETGATE, fleetgateOk, run, tempDir } from '../harness/run.ts';
import { startStack } from '../harness/stack.ts';
import { loadCa } from '../provisioning/ca/authority.ts';
import { RegistryWriter } from '../provisioning/registry/writer.ts';

const DEVICE_CLI = join(FLEETGATE, '..', 'fleetgate-device.ts');
const device = (args: string[]) => run(process.execPath, [DEVICE_CLI, ...args]);

test('e2e/device add → fleetgate-device enroll → pub over mqtts and wss, request over HTTPS', async (t) => {
  const dir = tempDir(t);
  const data = join(dir, 'data');
  const origin = await startOrigin(t);
  mkdirSync(data, { recursive: true, mode: 0o700 });
  writeFileSync(
    join(data, 'fleetgate.json'),
    JSON.stringify({ https: { routes: [{ prefix: '/api', origin: origin.url, audience: 'urn:e2e' }] } }),
  );
  const stack = await startStack(data);
  t.after(() => stack.stop());
  const e = stack.endpoints;
  const root = join(dir, 'root.pem');
  writeFileSync(root, await fleetgateOk(['ca', 'cert', '--data', data]));

  // A backend service listening (its identity made by the operator side).
  const registry = new RegistryWriter(join(data, 'registry.db'));
  const svc = await enrollDevice(registry, await loadCa(dataPaths(data)), dir, { id: 'backend-1', type: 'service' });
  registry.close();
  const sub = await connect(e['mqtt+tls']!, svc, { ca: root });
  t.after(() => end(sub));
  await sub.subscribeAsync('devices/+/telemetry', { qos: 1 });

  const token = (await fleetgateOk(['device', 'add', 'field-7', '--type', 'sensor', '--data', data])).trim();
  const idDir = join(dir, 'identity');
  const enrolled = await device([
    'enroll',
    '--server',
    e.provision!,
    '--ca',
    root,
    '--token',
    token,
    '--out',
    idDir,
    '--json',
  ]);
  assert.equal(enrolled.code, 0, enrolled.stderr);
  assert.equal((JSON.parse(enrolled.stdout) as { deviceId: string }).deviceId, 'field-7');

  // MQTT 5 by default, 3.1.1 on request, over both transports.
  for (const url of [e['mqtt+tls']!, e['mqtt+wss']!]) {
    for (const mqtt of ['5', '3']) {
      const got = nextMessage(sub, 'devices/field-7/telemetry', 10_000);
      const pub = await device([
        'pub',
        '--url',
        url,
        '--identity',
        idDir,
        '--topic',
        'devices/field-7/telemetry',
        '--message',
        `via ${url.split(':')[0]} v${mqtt}`,
        '--qos',
        '1',
        '--mqtt',
        mqtt,
      ]);
      assert.equal(pub.code, 0, pub.stderr);
      assert.equal(await got, `via ${url.split(':')[0]} v${mqtt}`);
    }
  }
  // MQTT 5: a message outside the device's topics is refused with its code, and said so.
  const denied = await device([
    'pub',
    '--url',
    e['mqtt+tls']!,
    '--identity',
    idDir,
    '--topic',
    'devices/other/telemetry',
    '--message',
    'x',
    '--qos',
    '1',
  ]);
  assert.notEqual(denied.code, 0);
  assert.match(denied.stderr, /TOPIC_DENIED/);

  const who = await device(['request', '--url', `${e.https}/v1/whoami`, '--identity', idDir]);
  assert.equal(who.code, 0, who.stderr);
  assert.equal((JSON.parse(who.stdout) as { deviceId: string }).deviceId, 'field-7');
  const proxied = await device([
    'request',
    '--url',
    `${e.https}/api/reading`,
    '--identity',
    idDir,
    '-X',
    'POST',
    '--data',
    '{"t":1}',
    '-H',
    'content-type: application/json',
  ]);
  assert.equal(proxied.code, 0, proxied.stderr);
  assert.equal(origin.seen.at(-1)?.bytes, 7);
  assert.ok(String(origin.seen.at(-1)?.headers['fleetgate-assertion']).startsWith('eyJ'));

  // sub: the device receives a command the service sends.
  const subProc = spawn(
    process.execPath,
    [
      DEVICE_CLI,
      'sub',
      '--url',
      e['mqtt+tls']!,
      '--identity',
      idDir,
      '--topic',
      'devices/field-7/commands/#',
      '--count',
      '1',
      '--json',
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let subOut = '';
  subProc.stdout.on('data', (b: Buffer) => {
    subOut += b.toString();
  });
  const subExit = new Promise<number | null>((resolve) => subProc.on('exit', (code) => resolve(code)));
  for (let i = 0; i < 50 && subProc.exitCode === null && subOut === ''; i++) {
    await sub.publishAsync('devices/field-7/commands/reboot', 'now', { qos: 1 });
    await new Promise((r) => setTimeout(r, 200));
  }
  assert.equal(await subExit, 0);
  assert.deepEqual(JSON.parse(subOut.trim().split('\n')[0]!), {
    topic: 'devices/field-7/commands/reboot',
    payload: 'now',
  });

  // A gateway that is not there: the CLI retries with backoff, then gives up with a clear code.
  const nowhere = await device([
    'pub',
    '--url',
    'mqtts://127.0.0.1:1',
    '--identity',
    idDir,
    '--topic',
    'devices/field-7/x',
    '--message',
    'x',
    '--timeout',
    '1',
    '--json',
  ]);
  assert.equal(nowhere.code, 7);
  assert.equal((JSON.parse(nowhere.stderr) as { error: { code: string } }).error.code, 'ORIGIN_UNREACHABLE');

  const status = await device(['status', '--identity', idDir, '--json']);
  const s = JSON.parse(status.stdout) as { deviceId: string; daysLeft: number; files: { cert: string } };
  assert.equal(s.deviceId, 'field-7');
  assert.ok(s.daysLeft > 29 && s.daysLeft <= 30.01);
  assert.match(readFileSync(s.files.cert, 'utf8'), /BEGIN CERTIFICATE/);
});
