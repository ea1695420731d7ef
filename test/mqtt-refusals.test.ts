// Issue #4 acceptance 3: each bad identity or packet is refused with the right code while
// other clients keep working. Runs over both transports.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { connect as tlsConnect } from 'node:tls';
import type { MqttClient } from 'mqtt';
import { loadConfig } from '../config/config.ts';
import { dataPaths } from '../config/paths.ts';
import { startTestFleet, type TestFleet } from '../harness/gateway.ts';
import { closed, connect, end, nextMessage } from '../harness/mqtt.ts';
import { type Credential, enrollDevice, forgeCert } from '../harness/pki.ts';
import { connectBytes, rawClient } from '../harness/raw-mqtt.ts';
import { fileScope, tempDir } from '../harness/run.ts';
import { loadCa } from '../provisioning/ca/authority.ts';
import { initDataDir } from '../provisioning/setup.ts';

let fleet: TestFleet;
const scope = fileScope(after);
const c: Record<string, Credential> = {};
let witness: MqttClient;
let service: MqttClient;

before(async () => {
  fleet = await startTestFleet(scope);
  const { registry: r, ca, dir } = fleet;
  const other = join(tempDir(scope), 'other');
  const otherConfig = loadConfig({ dataDir: other, env: {} });
  await initDataDir(otherConfig);
  const otherCa = await loadCa(dataPaths(other));
  const hour = 3_600_000;
  c.witness = await enrollDevice(r, ca, dir, { id: 'witness-1' });
  c.svc = await enrollDevice(r, ca, dir, { id: 'svc-1', type: 'service' });
  c.good = await enrollDevice(r, ca, dir, { id: 'good-1' });
  for (const id of ['unknown-1', 'ca-1', 'noeku-1', 'expired-1', 'future-1', 'otherca-1', 'self-1'])
    r.addDevice({ id, type: 'sensor' }, 'test');
  c.unknown = await forgeCert(ca, dir, { name: 'unknown', deviceId: 'unknown-1' }); // fleet key, never recorded
  c.caAsClient = await forgeCert(ca, dir, { name: 'ca-as-client', deviceId: 'ca-1', isCa: true, record: r });
  c.noEku = await forgeCert(ca, dir, { name: 'no-eku', deviceId: 'noeku-1', eku: null, record: r });
  c.expired = await forgeCert(ca, dir, {
    name: 'expired',
    deviceId: 'expired-1',
    notBefore: new Date(Date.now() - 48 * hour),
    notAfter: new Date(Date.now() - hour),
    record: r,
  });
  c.future = await forgeCert(ca, dir, {
    name: 'future',
    deviceId: 'future-1',
    notBefore: new Date(Date.now() + hour),
    notAfter: new Date(Date.now() + 48 * hour),
    record: r,
  });
  c.otherCa = await forgeCert(ca, dir, { name: 'other-ca', deviceId: 'otherca-1', issuer: otherCa });
  c.selfSigned = await forgeCert(ca, dir, { name: 'self', deviceId: 'self-1', issuer: 'self' });
  c.revoked = await enrollDevice(r, ca, dir, { id: 'revoked-1' });
  r.revokeCertificate(c.revoked.serial, 1, 'test');
  c.denyFp = await enrollDevice(r, ca, dir, { id: 'denyfp-1' });
  r.addDeny({ kind: 'fingerprint', value: c.denyFp.fingerprint, reason: 'test' }, 'test');
  const spkiOld = await enrollDevice(r, ca, dir, { id: 'denyspki-1' });
  // A second certificate for the same key, issued before the key was denylisted (afterwards the CA refuses one).
  c.denySpki = await enrollDevice(r, ca, dir, {
    id: 'denyspki-1',
    exists: true,
    keys: spkiOld.keys,
    name: 'denyspki-1-new',
  });
  r.addDeny({ kind: 'spki', value: spkiOld.spki, reason: 'key leaked' }, 'test');
  c.denyDevice = await enrollDevice(r, ca, dir, { id: 'denydev-1' });
  r.addDeny({ kind: 'device', value: 'denydev-1' }, 'test');
  c.suspended = await enrollDevice(r, ca, dir, { id: 'suspended-1' });
  r.suspendDevice('suspended-1', 'test');
  witness = await connect(fleet.mqttsUrl, c.witness, { ca: fleet.rootFile });
  service = await connect(fleet.wssUrl, c.svc, { ca: fleet.rootFile });
  await service.subscribeAsync('devices/witness-1/#', { qos: 1 });
  scope.after(() => end(witness, service));
});

/** The witness (connected before any refusal) still publishes and a service still receives. */
async function othersKeepWorking(tag: string): Promise<void> {
  assert.ok(witness.connected && service.connected, 'witness and service still connected');
  const got = nextMessage(service, 'devices/witness-1/alive');
  await witness.publishAsync('devices/witness-1/alive', tag, { qos: 1 });
  assert.equal(await got, tag);
}

const connackRefusals: [string, () => Credential, string][] = [
  ['certificate signed by the fleet intermediate but not in the registry', () => c.unknown!, 'CERT_UNKNOWN'],
  ['a CA certificate used as a client', () => c.caAsClient!, 'CERT_INVALID'],
  ['a certificate without clientAuth EKU', () => c.noEku!, 'CERT_INVALID'],
  ['revoked certificate', () => c.revoked!, 'CERT_REVOKED'],
  ['denylisted fingerprint', () => c.denyFp!, 'DENYLISTED'],
  ['denylisted SPKI (a new certificate for the same key)', () => c.denySpki!, 'DENYLISTED'],
  ['denylisted device', () => c.denyDevice!, 'DENYLISTED'],
  ['suspended device', () => c.suspended!, 'DEVICE_SUSPENDED'],
];

const handshakeRefusals: [string, () => Credential, string][] = [
  ['expired certificate', () => c.expired!, 'CERT_EXPIRED'],
  ['not yet valid certificate', () => c.future!, 'CERT_NOT_YET_VALID'],
  ['certificate from another CA', () => c.otherCa!, 'CERT_INVALID'],
  ['self-signed certificate', () => c.selfSigned!, 'CERT_INVALID'],
];

for (const transport of ['mqtts', 'wss'] as const) {
  const url = () => (transport === 'mqtts' ? fleet.mqttsUrl : fleet.wssUrl);
  describe(`refusals over ${transport}`, () => {
    for (const [name, cred, code] of connackRefusals) {
      test(`${name} → CONNACK 5, logged ${code}`, async () => {
        const before = fleet.log.lines.length;
        const who = cred();
        await assert.rejects(connect(url(), who, { ca: fleet.rootFile }), (e: { code?: number }) => e.code === 5);
        await fleet.log.find(
          (l) =>
            fleet.log.lines.indexOf(l) >= before &&
            l.decision === 'refused' &&
            l.code === code &&
            l.transport === transport &&
            l.serial === who.serial,
        );
        await othersKeepWorking(`${transport}-${code}`);
      });
    }

    for (const [name, cred, code] of handshakeRefusals) {
      test(`${name} → TLS handshake fails, logged ${code}`, async () => {
        const before = fleet.log.lines.length;
        await assert.rejects(
          connect(url(), cred(), { ca: fleet.rootFile }),
          (e: { code?: unknown }) => typeof e.code !== 'number',
        );
        await fleet.log.find(
          (l) =>
            fleet.log.lines.indexOf(l) >= before &&
            l.decision === 'refused' &&
            l.code === code &&
            l.transport === transport,
        );
        await othersKeepWorking(`${transport}-${code}`);
      });
    }

    test('a valid certificate is admitted (the refusals above are not a broken gateway)', async () => {
      const good = await connect(url(), c.good, { ca: fleet.rootFile });
      await end(good);
    });

    test('keepalive 0 (none) → CONNACK 2, logged KEEPALIVE_OUT_OF_RANGE', async () => {
      await assert.rejects(
        connect(url(), c.good, { ca: fleet.rootFile, keepalive: 0 }),
        (e: { code?: number }) => e.code === 2,
      );
      await fleet.log.find((l) => l.code === 'KEEPALIVE_OUT_OF_RANGE' && l.transport === transport);
    });

    test('an unknown protocol level is refused clearly (CONNACK 1, unsupported protocol version)', async () => {
      const raw = await rawClient(url(), c.good!, fleet.ca.rootPem);
      const b = connectBytes('good-1');
      b[8] = 6; // the protocol level byte (after the fixed header and "MQTT")
      raw.send(b);
      assert.equal(((await raw.next('connack')) as { returnCode: number }).returnCode, 1);
      assert.ok(await raw.closed());
      await fleet.log.find((l) => l.code === 'PROTOCOL_UNSUPPORTED' && l.transport === transport);
      await othersKeepWorking(`${transport}-level6`);
    });

    test('an oversized packet closes the connection before it is buffered', async () => {
      const dev = await connect(url(), c.good, { ca: fleet.rootFile });
      const cut = closed(dev);
      dev.publish('devices/good-1/blob', Buffer.alloc(fleet.config.gateway.limits.sensor.maxPacketBytes + 1024), {
        qos: 0,
      });
      await cut;
      await fleet.log.find((l) => l.code === 'PAYLOAD_TOO_LARGE' && l.transport === transport);
      await othersKeepWorking(`${transport}-oversize`);
    });
  });
}

test('garbage bytes after the handshake close that connection only', async () => {
  const socket = tlsConnect({
    host: '127.0.0.1',
    port: fleet.gateway.ports.mqtts,
    ca: readFileSync(fleet.rootFile),
    cert: c.good!.certPem,
    key: c.good!.keyPem,
    servername: 'localhost',
  });
  await new Promise<void>((resolve, reject) => socket.once('secureConnect', resolve).once('error', reject));
  const ended = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  socket.write(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\xff\xfe garbage'));
  await ended;
  await othersKeepWorking('after-garbage');
});
