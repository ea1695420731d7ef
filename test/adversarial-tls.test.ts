// Issue #10 §1 and §4 on every TLS listener (MQTT over TLS, WSS, HTTPS, admin, provisioning),
// tried as an unauthenticated attacker would: silent TCP sockets, floods of them from one
// address and from many, and old cipher suites. Sockets that do not finish their handshake are
// closed; a flood from one address does not keep devices from other addresses out; TLS 1.2
// offers ECDHE + AEAD only; the listeners stay up and nothing is written.
import assert from 'node:assert/strict';
import { connect as netConnect, type Socket } from 'node:net';
import { after, before, test } from 'node:test';
import { getCiphers, connect as tlsConnect } from 'node:tls';
import pino from 'pino';
import { startTestFleet, type TestFleet } from '../harness/gateway.ts';
import { connect, end } from '../harness/mqtt.ts';
import { type Credential, enrollDevice } from '../harness/pki.ts';
import { fileScope, run } from '../harness/run.ts';
import { TLS12_SUITES } from '../listeners/tls.ts';
import { startProvisioning } from '../provisioning/api/server.ts';

const scope = fileScope(after);
let fleet: TestFleet;
let device: Credential;
let ports: Record<string, number>;
let auditRows: number;

before(async () => {
  fleet = await startTestFleet(scope, {
    FLEETGATE_HANDSHAKE_TIMEOUT: '1s',
    FLEETGATE_PROVISION_HANDSHAKE_TIMEOUT: '1s',
    FLEETGATE_PROVISION_PORT: '0',
  });
  const provisioning = await startProvisioning(fleet.config, { log: pino({ level: 'silent' }) });
  scope.after(() => provisioning.close());
  ports = { ...fleet.gateway.ports, provisioning: provisioning.port };
  device = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'honest-1' });
  auditRows = fleet.registry.listAudit().length;
});

/** A TCP connection that never says anything; resolves when it is open. */
function silent(port: number, localAddress = '127.0.0.1'): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = netConnect({ host: '127.0.0.1', port, localAddress }, () => resolve(s));
    s.on('error', () => undefined);
    s.once('error', reject);
  });
}

const closedWithin = (s: Socket, ms: number) =>
  new Promise<boolean>((resolve) => {
    if (s.destroyed) return resolve(true);
    const timer = setTimeout(() => resolve(false), ms);
    s.once('close', () => {
      clearTimeout(timer);
      resolve(true);
    });
  });

test('silent sockets/every listener closes a socket that does not finish its handshake', async () => {
  const sockets = await Promise.all(Object.values(ports).flatMap((port) => [silent(port), silent(port), silent(port)]));
  // The handshake timeout here is 1 s; 20 s of room for a busy machine.
  const closed = await Promise.all(sockets.map((s) => closedWithin(s, 20_000)));
  assert.deepEqual(
    closed.map((c, i) => (c ? 'closed' : `open: port ${sockets[i]!.remotePort}`)),
    closed.map(() => 'closed'),
  );
  const metrics = await fetchMetrics();
  assert.match(metrics, /fleetgate_unauthenticated_closed_total\{listener="mqtts",reason="handshake_timeout"\} [1-9]/);
});

/** Which TLS 1.2 suites a listener completes a handshake with (a device certificate presented). */
async function offered12(port: number): Promise<string[]> {
  const candidates = getCiphers()
    .map((c) => c.toUpperCase())
    .filter((c) => !c.startsWith('TLS_'));
  const accepted: string[] = [];
  for (const cipher of candidates) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = tlsConnect(
        {
          host: '127.0.0.1',
          port,
          servername: 'localhost',
          ca: fleet.ca.rootPem,
          cert: device.certPem,
          key: device.keyPem,
          minVersion: 'TLSv1.2',
          maxVersion: 'TLSv1.2',
          ciphers: cipher,
        },
        () => {
          resolve(s.getCipher().standardName !== undefined);
          s.destroy();
        },
      );
      s.on('error', () => resolve(false));
    });
    if (ok) accepted.push(cipher);
  }
  return accepted.sort();
}

test('ciphers/TLS 1.2 offers ECDHE with AEAD ciphers only on every listener; TLS 1.3 stays on', async () => {
  const ecdsaSuites = TLS12_SUITES.filter((s) => s.startsWith('ECDHE-ECDSA-')).sort(); // the server key is P-256
  for (const [name, port] of Object.entries(ports)) {
    assert.deepEqual(await offered12(port), ecdsaSuites, `${name} (TLS 1.2)`);
    const version = await new Promise<string | null>((resolve) => {
      const s = tlsConnect(
        {
          host: '127.0.0.1',
          port,
          servername: 'localhost',
          ca: fleet.ca.rootPem,
          cert: device.certPem,
          key: device.keyPem,
        },
        () => {
          resolve(s.getProtocol());
          s.destroy();
        },
      );
      s.on('error', () => resolve(null));
    });
    assert.equal(version, 'TLSv1.3', `${name} (TLS 1.3)`);
  }
  // The well-known client agrees: a CBC/SHA-1 suite is refused, GCM is accepted.
  const sClient = (cipher: string) =>
    run(
      'openssl',
      [
        's_client',
        '-connect',
        `127.0.0.1:${ports.mqtts}`,
        '-servername',
        'localhost',
        '-tls1_2',
        '-cipher',
        cipher,
        '-CAfile',
        fleet.rootFile,
        '-cert',
        device.certFile,
        '-key',
        device.keyFile,
      ],
      { input: '' },
    );
  assert.notEqual((await sClient('ECDHE-ECDSA-AES128-SHA')).code, 0, 'CBC-SHA1 refused');
  assert.equal((await sClient('ECDHE-ECDSA-AES128-GCM-SHA256')).code, 0, 'AES-GCM accepted');
});

async function fetchMetrics(): Promise<string> {
  const { https } = await import('../harness/https.ts');
  return (await https(`https://127.0.0.1:${fleet.gateway.ports.admin}/metrics`, { ca: fleet.ca.rootPem })).body;
}

test('floods/unauthenticated sockets are capped per address and in total; devices elsewhere keep connecting', async (t) => {
  // A gateway with a long handshake timeout, so the flood stays while we look.
  const f = await startTestFleet(t, {
    FLEETGATE_HANDSHAKE_TIMEOUT: '60s',
    FLEETGATE_MAX_PENDING_HANDSHAKES: '16',
    FLEETGATE_MAX_PENDING_HANDSHAKES_PER_ADDRESS: '8',
  });
  const dev = await enrollDevice(f.registry, f.ca, f.dir, { id: 'flooded-1' });
  const mqtts = f.gateway.ports.mqtts;
  const flood = await Promise.all(Array.from({ length: 8 }, () => silent(mqtts, '127.0.0.1')));
  t.after(() => {
    for (const s of flood) s.destroy();
  });
  // The 9th from the same address is closed at once (well before the 60 s handshake timeout).
  // (Same listener: accepts on one listening socket are seen in order.)
  const ninth = await silent(mqtts, '127.0.0.1');
  assert.equal(await closedWithin(ninth, 15_000), true, 'over the per-address cap: closed');
  // A device from another address connects while the flood holds its sockets.
  const client = await connect(f.mqttsUrl, dev, { ca: f.rootFile, localAddress: '127.0.0.2' });
  await end(client);
  // Fill the global cap from a second address: now every new socket is closed, from anywhere.
  const flood2 = await Promise.all(Array.from({ length: 8 }, () => silent(mqtts, '127.0.0.3')));
  t.after(() => {
    for (const s of flood2) s.destroy();
  });
  const refused = await silent(mqtts, '127.0.0.4');
  assert.equal(await closedWithin(refused, 15_000), true, 'over the global cap: closed');
  // When the flood goes, devices are served again.
  for (const s of [...flood, ...flood2]) s.destroy();
  let served = false;
  for (let i = 0; i < 50 && !served; i++) {
    served = await connect(f.mqttsUrl, dev, { ca: f.rootFile, localAddress: '127.0.0.4', timeoutMs: 5_000 }).then(
      async (c) => {
        await end(c);
        return true;
      },
      () => false,
    );
    if (!served) await new Promise((r) => setTimeout(r, 100));
  }
  assert.ok(served, 'served after the flood');
  const log = JSON.stringify(f.log.lines);
  assert.match(log, /"reason":"address_limit"/);
  assert.match(log, /"reason":"pending_limit"/);
});

test('state/the listeners still serve and nothing was written', async () => {
  const client = await connect(fleet.mqttsUrl, device, { ca: fleet.rootFile });
  await end(client);
  assert.equal(fleet.registry.listAudit().length, auditRows);
});

test('idle/an authenticated TLS connection to the WSS listener that never sends its upgrade request is closed', async () => {
  const s = await new Promise<import('node:tls').TLSSocket>((resolve, reject) => {
    const sock = tlsConnect(
      {
        host: '127.0.0.1',
        port: ports.wss!,
        servername: 'localhost',
        ca: fleet.ca.rootPem,
        cert: device.certPem,
        key: device.keyPem,
      },
      () => resolve(sock),
    );
    sock.once('error', reject);
  });
  s.on('error', () => undefined);
  // The gateway allows the handshake timeout (1 s here) for the upgrade request; 20 s of room.
  assert.equal(await closedWithin(s as unknown as Socket, 20_000), true);
});
