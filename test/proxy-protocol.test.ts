// Issue #27, point 4: the PROXY protocol on the device listeners, behind Debian's HAProxy
// (`mode tcp`; `send-proxy-v2` to the MQTT TLS listener and the HTTPS plane, `send-proxy` (v1) to WSS),
// connecting from 127.0.0.2 — the one balancer address the gateway trusts. Devices connect to
// HAProxy from 127.0.0.5; the gateway must see 127.0.0.5. A header from anywhere else, and a
// balancer's connection without one, are refused and logged.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { Agent, request } from 'node:https';
import { connect as netConnect } from 'node:net';
import { after, before, test } from 'node:test';
import { startTestFleet, type TestFleet } from '../harness/gateway.ts';
import { type Haproxy, haproxyAvailable, startHaproxy } from '../harness/haproxy.ts';
import { connect, until } from '../harness/mqtt.ts';
import { type Credential, enrollDevice } from '../harness/pki.ts';
import { fileScope } from '../harness/run.ts';

if (!haproxyAvailable() && process.env.CI === 'true')
  throw new Error("haproxy is missing: .ci/run installs Debian's haproxy for the PROXY protocol tests");
const skip = haproxyAvailable() ? false : 'no haproxy (apt-get install haproxy)';

const scope = fileScope(after);
let fleet: TestFleet;
let haproxy: Haproxy;
let sensor: Credential;

before(async () => {
  if (skip !== false) return;
  fleet = await startTestFleet(scope, { FLEETGATE_PROXY_PROTOCOL_FROM: '127.0.0.2' });
  haproxy = await startHaproxy([
    { proxy: 'v2', upstreams: [fleet.gateway.ports.mqtts], source: '127.0.0.2' },
    { proxy: 'v1', upstreams: [fleet.gateway.ports.wss], source: '127.0.0.2' },
    { proxy: 'v2', upstreams: [fleet.gateway.ports.https], source: '127.0.0.2' },
  ]);
  scope.after(() => haproxy.stop());
  sensor = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'pp-sensor' });
});

const admittedFrom = (transport: string) =>
  fleet.log.lines.filter(
    (l) => l.msg === 'mqtt connection admitted' && l.deviceId === 'pp-sensor' && l.transport === transport,
  );

test('proxy protocol/through HAProxy (v2 to TLS, v1 to WSS) the gateway sees the device’s address, not the balancer’s', {
  skip,
}, async () => {
  // mqtt.js binds a TLS connection to `localAddress` (127.0.0.5); its WebSocket transport does not
  // (it connects from 127.0.0.1). Either way the gateway must see the device's address, never 127.0.0.2.
  for (const [url, transport, device] of [
    [`mqtts://127.0.0.1:${haproxy.ports[0]}`, 'mqtts', '127.0.0.5'],
    [`wss://127.0.0.1:${haproxy.ports[1]}/mqtt`, 'wss', '127.0.0.1'],
  ] as const) {
    const client = await connect(url, sensor, { ca: fleet.rootFile, localAddress: '127.0.0.5' });
    try {
      await until(`${transport} admission logged`, () => admittedFrom(transport).length > 0);
      assert.equal(admittedFrom(transport).at(-1)?.remoteAddress, device, transport);
      const live = fleet.gateway.sessions.ofDevice('pp-sensor');
      assert.ok(
        live.some((s) => s.remoteAddress === device),
        `the session table (console, admin): ${transport}`,
      );
    } finally {
      await client.endAsync();
    }
  }
});

test('proxy protocol/the HTTPS plane through HAProxy (v2) sees the device’s address too', { skip }, async () => {
  const agent = new Agent({ keepAlive: true, localAddress: '127.0.0.5' });
  try {
    const status = await new Promise<number>((resolve, reject) => {
      const req = request(
        {
          host: '127.0.0.1',
          port: haproxy.ports[2],
          path: '/anything',
          ca: readFileSync(fleet.rootFile),
          cert: sensor.certPem,
          key: sensor.keyPem,
          servername: 'localhost',
          agent,
        },
        (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode ?? 0));
        },
      );
      req.on('error', reject);
      req.end();
    });
    assert.ok(status > 0);
    // The keep-alive connection is still open: its session names the device's address.
    const https = fleet.gateway.sessions.ofDevice('pp-sensor').filter((s) => s.transport === 'https');
    assert.deepEqual(
      https.map((s) => s.remoteAddress),
      ['127.0.0.5'],
    );
  } finally {
    agent.destroy();
  }
});

test('proxy protocol/a device connecting directly (not through the balancer) is served with its own address', {
  skip,
}, async () => {
  const before = admittedFrom('mqtts').length;
  const client = await connect(fleet.mqttsUrl, sensor, { ca: fleet.rootFile, localAddress: '127.0.0.9' });
  try {
    await until('admitted', () => admittedFrom('mqtts').length > before);
    assert.equal(admittedFrom('mqtts').at(-1)?.remoteAddress, '127.0.0.9');
  } finally {
    await client.endAsync();
  }
});

/** Opens a TCP connection to the MQTT TLS listener from `localAddress`, writes `bytes`, resolves when the gateway closes it. */
function closedAfter(localAddress: string, bytes: Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    const s = netConnect({ host: '127.0.0.1', port: fleet.gateway.ports.mqtts, localAddress }, () => s.write(bytes));
    s.on('error', () => undefined);
    s.on('close', () => resolve());
    setTimeout(() => reject(new Error('not closed')), 20_000).unref();
  });
}

test('proxy protocol/a PROXY header from an address that is not a balancer, and a balancer without one, are refused and logged', {
  skip,
}, async () => {
  // An attacker names any address it likes: refused, never believed.
  await closedAfter('127.0.0.7', Buffer.from('PROXY TCP4 10.9.9.9 127.0.0.1 4444 8883\r\n'));
  await until('the forged header is logged', () =>
    fleet.log.lines.some(
      (l) =>
        l.msg === 'PROXY protocol: connection refused' &&
        l.remoteAddress === '127.0.0.7' &&
        /not a configured balancer/.test(String(l.reason)),
    ),
  );
  // From the balancer's address, straight TLS without the header: refused.
  await closedAfter('127.0.0.2', Buffer.from([0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5]));
  await until('the missing header is logged', () =>
    fleet.log.lines.some(
      (l) => l.msg === 'PROXY protocol: connection refused' && /without its PROXY header/.test(String(l.reason)),
    ),
  );
  // A malformed v2 header from the balancer: refused.
  const v2 = Buffer.concat([
    Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]),
    Buffer.from([0x21, 0x51, 0x00, 0x0c]),
    Buffer.alloc(12),
  ]);
  await closedAfter('127.0.0.2', v2);
  await until('the bad family is logged', () =>
    fleet.log.lines.some(
      (l) => l.msg === 'PROXY protocol: connection refused' && /address family/.test(String(l.reason)),
    ),
  );
  assert.ok(!fleet.log.lines.some((l) => l.remoteAddress === '10.9.9.9'), 'the forged address appears nowhere');
});
