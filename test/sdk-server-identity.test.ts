// Issue #10 §0: the device must know whom it talks to. Every device certificate chains to the
// fleet CA, so a fake gateway on loopback presenting a device certificate (even one naming
// 127.0.0.1) must be refused by the SDK, `fleetgate-device` and the simulator; and the real
// gateway certificate must be refused when the URL names a host it was not issued for.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { createServer as createTlsServer, type Server } from 'node:tls';
import pino from 'pino';
import { dataPaths } from '../config/paths.ts';
import { Device } from '../firmware-sdk/device.ts';
import { saveIdentity } from '../firmware-sdk/identity.ts';
import type { FleetgateError } from '../firmware-sdk/protocol/errors.ts';
import { startTestFleet, type TestFleet } from '../harness/gateway.ts';
import { enrollDevice, forgeCert } from '../harness/pki.ts';
import { fileScope, ROOT, run } from '../harness/run.ts';
import { startProvisioning } from '../provisioning/api/server.ts';

interface Fake {
  url: (scheme: string, path?: string) => string;
  secure: number;
  refusals: string[];
}

let fleet: TestFleet;
let identityDir: string;
let provisioningUrl: string;
// Fakes on loopback with certificates of the fleet CA that name 127.0.0.1 and localhost:
let asIssued: Fake; // a device certificate as the CA issues them (clientAuth only)
let noEku: Fake; // a device certificate without any EKU (OpenSSL's purpose check lets it through)
let dualUse: Fake; // a device certificate that also claims serverAuth (only our SAN check stops it)
let misnamed: Fake; // the real gateway certificate, reached as 127.0.0.2 (not one of its names)

function listenOne(server: Server, host: string): Promise<(scheme: string, path?: string) => string> {
  return new Promise((resolve) =>
    server.listen(0, host, () => {
      const { port } = server.address() as AddressInfo;
      resolve((scheme, path = '') => `${scheme}://${host}:${port}${path}`);
    }),
  );
}

/** A TLS server and an HTTPS server (for wss://) with the same certificate; counts completed handshakes. */
async function fake(tls: { key: string | Buffer; cert: string | Buffer }, host = '127.0.0.1'): Promise<Fake> {
  const f: Fake = { url: () => '', secure: 0, refusals: [] };
  const servers = [createTlsServer(tls), createHttpsServer(tls)];
  for (const server of servers) {
    server.on('secureConnection', (s) => {
      f.secure++;
      s.destroy();
    });
    server.on('tlsClientError', (err, s) => {
      f.refusals.push(err.message);
      s.destroy();
    });
  }
  const [plain, web] = await Promise.all(servers.map((s) => listenOne(s, host)));
  f.url = (scheme, path) => (scheme === 'wss' ? web! : plain!)(scheme, path);
  scope.after(() => {
    for (const s of servers) s.close();
  });
  return f;
}

async function impostor(name: string, eku: string[] | null): Promise<Fake> {
  const c = await forgeCert(fleet.ca, fleet.dir, {
    name,
    deviceId: name,
    eku,
    extraSan: [
      { type: 'ip', value: '127.0.0.1' },
      { type: 'dns', value: 'localhost' },
    ],
  });
  return fake({ key: c.keyPem, cert: c.certPem });
}

const scope = fileScope(after);

before(async () => {
  fleet = await startTestFleet(scope, { FLEETGATE_PROVISION_PORT: '0' });
  const provisioning = await startProvisioning(fleet.config, { log: pino({ level: 'silent' }) });
  scope.after(() => provisioning.close());
  provisioningUrl = provisioning.endpoint;
  const dev = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'honest-1' });
  identityDir = join(fleet.dir, 'id-honest-1');
  saveIdentity(identityDir, {
    keyPem: dev.keyPem,
    certPem: dev.certPem.split(/(?<=-----END CERTIFICATE-----\n)/)[0]!,
    chainPem: fleet.ca.intermediatePem,
    caPem: fleet.ca.rootPem,
  });
  asIssued = await impostor('impostor-1', ['1.3.6.1.5.5.7.3.2']);
  noEku = await impostor('impostor-2', null);
  dualUse = await impostor('impostor-3', ['1.3.6.1.5.5.7.3.2', '1.3.6.1.5.5.7.3.1']);
  const paths = dataPaths(fleet.config.dataDir);
  misnamed = await fake({ key: readFileSync(paths.serverKey), cert: readFileSync(paths.serverCert) }, '127.0.0.2');
});

/** Starts a Device against `url` and resolves with the first connection error it reports. */
async function firstConnectError(url: string): Promise<Error & { code?: string }> {
  let resolveFailed: (e: Error) => void = () => undefined;
  const failed = new Promise<Error>((r) => {
    resolveFailed = r;
  });
  const device = new Device({
    identityDir,
    mqttUrl: url,
    backoff: { baseMs: 200, maxMs: 1_000 },
    log: (event) => {
      if (event === 'connect_failed') resolveFailed(device.lastError!);
    },
  });
  void device.start();
  try {
    return await failed;
  } finally {
    device.stop();
  }
}

test('server identity/the SDK refuses fake gateways presenting device certificates (mqtts and wss)', async () => {
  for (const [f, codes] of [
    [asIssued, ['INVALID_PURPOSE', 'ERR_TLS_CERT_NOT_SERVER']], // OpenSSL's purpose check already refuses clientAuth-only
    [noEku, ['ERR_TLS_CERT_NOT_SERVER']],
    [dualUse, ['ERR_TLS_CERT_NOT_SERVER']],
  ] as const) {
    for (const url of [f.url('mqtts'), f.url('wss', '/mqtt')]) {
      const err = await firstConnectError(url);
      assert.ok((codes as readonly string[]).includes(err.code ?? ''), `${url}: ${err.code} ${err.message}`);
    }
    assert.equal(f.secure, 0, 'no handshake with an impostor completed');
  }
});

test('server identity/the SDK refuses an impostor over HTTPS', async () => {
  for (const f of [noEku, dualUse]) {
    const device = new Device({ identityDir, httpsUrl: f.url('https') });
    await assert.rejects(
      device.request('/v1/whoami'),
      (e: FleetgateError) => e.code === 'ORIGIN_UNREACHABLE' && /ERR_TLS_CERT_NOT_SERVER/.test(e.message),
    );
  }
});

test('server identity/the SDK checks the name in the URL: the gateway certificate reached as 127.0.0.2 is refused', async () => {
  const err = await firstConnectError(misnamed.url('mqtts'));
  assert.equal(err.code, 'ERR_TLS_CERT_ALTNAME_INVALID', err.message);
  assert.equal(misnamed.secure, 0);
});

test('server identity/the real gateway, reached by a name on its certificate, is accepted', async () => {
  const device = new Device({ identityDir, mqttUrl: fleet.mqttsUrl, httpsUrl: fleet.httpsUrl });
  try {
    await device.start();
    assert.ok(device.connected);
    assert.equal((await device.request('/v1/whoami')).status, 200);
  } finally {
    device.stop();
  }
});

test('server identity/fleetgate-device pub and request refuse the impostor', async () => {
  const cli = join(ROOT, 'bin', 'fleetgate-device.ts');
  const pub = await run(process.execPath, [
    cli,
    'pub',
    '--url',
    dualUse.url('mqtts'),
    '--identity',
    identityDir,
    '--topic',
    'devices/honest-1/x',
    '--message',
    'm',
    '--timeout',
    '3',
    '--json',
  ]);
  assert.notEqual(pub.code, 0);
  assert.match(pub.stderr, /device or claim certificate/);
  const req = await run(process.execPath, [
    cli,
    'request',
    '--url',
    dualUse.url('https', '/v1/whoami'),
    '--identity',
    identityDir,
    '--json',
  ]);
  assert.notEqual(req.code, 0);
  assert.match(req.stderr, /ERR_TLS_CERT_NOT_SERVER/);
  assert.equal(dualUse.secure, 0);
});

test('server identity/the simulator refuses the impostor', async () => {
  const sim = await run(
    process.execPath,
    [
      join(ROOT, 'bin', 'device-sim.ts'),
      '--data',
      fleet.config.dataDir,
      '--provision',
      provisioningUrl,
      '--mqtt',
      dualUse.url('mqtts'),
      '--https',
      dualUse.url('https'),
      '--sensors',
      '1',
      '--duration',
      '1',
      '--connect-timeout',
      '3',
    ],
    { timeoutMs: 120_000 },
  );
  assert.notEqual(sim.code, 0, sim.stdout);
  assert.match(sim.stderr, /device or claim certificate/);
  assert.equal(dualUse.secure, 0);
});
