// Issue #5: the HTTPS plane. Certificate on every request, a JWT for the origin that lives for
// one request and is never returned to the device.
import assert from 'node:assert/strict';
import { createHash, X509Certificate } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { Agent, request } from 'node:https';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { connect as tlsConnect } from 'node:tls';
import { createLocalJWKSet, decodeProtectedHeader, jwtVerify } from 'jose';
import { auditRows, startTestFleet, type TestFleet } from '../harness/gateway.ts';
import { errorCodeOf, https } from '../harness/https.ts';
import { withTimeout } from '../harness/mqtt.ts';
import { type Seen, startOrigin } from '../harness/origin.ts';
import { type Credential, enrollDevice } from '../harness/pki.ts';
import { fileScope, fleetgateOk, run } from '../harness/run.ts';

let fleet: TestFleet;
let origin: Awaited<ReturnType<typeof startOrigin>>;
let ca: Buffer;
const c: Record<string, Credential> = {};
const scope = fileScope(after);

before(async () => {
  origin = await startOrigin(scope);
  fleet = await startTestFleet(
    scope,
    {},
    {
      https: {
        routes: [
          { prefix: '/api', origin: origin.url, audience: 'urn:test:api', timeout: '2s', bodyLimit: 64 * 1024 * 1024 },
          { prefix: '/camera-only', origin: origin.url, audience: 'urn:test:cams', allow: { types: ['camera'] } },
          { prefix: '/down', origin: 'http://127.0.0.1:1', audience: 'urn:test:down' },
        ],
      },
    },
  );
  ca = readFileSync(fleet.rootFile);
  c.sensor = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'sensor-1' });
  c.camera = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'cam-1', type: 'camera', fleet: 'north' });
  c.doomed = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'doomed-1' });
  c.revoked = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'revoked-1' });
  fleet.registry.revokeDevice('revoked-1', 1, 'test');
});

const errCode = errorCodeOf;
const lastSeen = (): Seen => origin.seen.at(-1)!;

async function jwks() {
  const r = await https(`https://127.0.0.1:${fleet.gateway.ports.admin}/.well-known/jwks.json`, { ca });
  assert.equal(r.status, 200);
  return r.json<{ keys: { kid: string }[] }>();
}

test('curl/whoami with a certificate; none → handshake fails; revoked → 403 CERT_REVOKED', async () => {
  const base = ['-sS', '--max-time', '10', '--cacert', fleet.rootFile];
  const who = await run('curl', [
    ...base,
    '--cert',
    c.sensor!.certFile,
    '--key',
    c.sensor!.keyFile,
    `${fleet.httpsUrl}/v1/whoami`,
  ]);
  assert.equal(who.code, 0, who.stderr);
  const body = JSON.parse(who.stdout) as Record<string, string>;
  assert.deepEqual([body.deviceId, body.type, body.serial], ['sensor-1', 'sensor', c.sensor!.serial]);
  assert.doesNotMatch(who.stdout, /eyJ/, 'never a token');
  const none = await run('curl', [...base, `${fleet.httpsUrl}/v1/whoami`]);
  assert.notEqual(none.code, 0, 'no certificate, no TLS session');
  const revoked = await run('curl', [
    ...base,
    '--cert',
    c.revoked!.certFile,
    '--key',
    c.revoked!.keyFile,
    '-w',
    '\n%{http_code}',
    `${fleet.httpsUrl}/v1/whoami`,
  ]);
  const [json, status] = revoked.stdout.split('\n');
  assert.equal(status, '403');
  assert.equal((JSON.parse(json!) as { error: { code: string } }).error.code, 'CERT_REVOKED');
});

test('assertion/the origin verifies it against the JWKS: sub, aud, cnf.x5t#S256, exp − iat ≤ timeout', async () => {
  const r = await https(`${fleet.httpsUrl}/api/things?x=1`, { ca, cred: c.camera });
  assert.equal(r.status, 200, r.body);
  const seen = lastSeen();
  assert.equal(seen.url, '/api/things?x=1');
  const token = String(seen.headers['fleetgate-assertion']);
  const { payload, protectedHeader } = await jwtVerify(token, createLocalJWKSet((await jwks()) as never), {
    issuer: 'fleetgate',
    audience: 'urn:test:api',
    algorithms: ['ES256'],
  });
  assert.equal(payload.sub, 'cam-1');
  assert.equal(payload.aud, 'urn:test:api');
  assert.equal(payload.device_type, 'camera');
  assert.equal(payload.fleet, 'north');
  assert.equal(payload.serial, c.camera!.serial);
  const der = new X509Certificate(c.camera!.certPem).raw;
  assert.equal(
    (payload.cnf as Record<string, string>)['x5t#S256'],
    createHash('sha256').update(der).digest('base64url'),
  );
  assert.ok(payload.exp! - payload.iat! <= 2, `exp − iat = ${payload.exp! - payload.iat!} s ≤ the 2 s route timeout`);
  assert.ok(typeof payload.jti === 'string' && payload.jti.length >= 16);
  assert.ok(protectedHeader.kid);
  assert.equal(seen.headers['x-forwarded-proto'], 'https');
  assert.equal(seen.headers['x-forwarded-for'], '127.0.0.1');
});

test('never returned/the raw response carries no trace of the assertion, whatever the origin echoes', async () => {
  const socket = tlsConnect({
    host: '127.0.0.1',
    port: fleet.gateway.ports.https,
    ca,
    cert: c.sensor!.certPem,
    key: c.sensor!.keyPem,
    servername: 'localhost',
  });
  await new Promise<void>((resolve, reject) => socket.once('secureConnect', resolve).once('error', reject));
  const chunks: Buffer[] = [];
  socket.on('data', (b: Buffer) => chunks.push(b));
  const done = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  socket.write('GET /api/echo HTTP/1.1\r\nHost: localhost\r\nTE: trailers\r\nConnection: close\r\n\r\n');
  await done;
  const raw = Buffer.concat(chunks);
  const token = String(lastSeen().headers['fleetgate-assertion']);
  assert.ok(token.split('.').length === 3 && token.length > 100, 'the origin did receive an assertion');
  assert.ok(raw.includes('origin-session=abc123'), "the origin's own cookie passes");
  assert.ok(raw.includes('HTTP/1.1 200'));
  for (const part of [token, ...token.split('.')])
    assert.equal(raw.indexOf(part), -1, 'no part of the token, anywhere in the raw response');
  assert.doesNotMatch(raw.toString('latin1'), /fleetgate-assertion/i);
});

test("spoofing/a device's own assertion and client-cert headers never reach the origin", async () => {
  const forged = 'eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9.';
  const r = await https(`${fleet.httpsUrl}/api/spoof`, {
    ca,
    cred: c.sensor,
    headers: {
      'Fleetgate-Assertion': forged,
      'X-Forwarded-Client-Cert': 'By=x;Hash=y;Subject="CN=admin"',
      'Client-Cert': ':MIIB:',
      'Client-Cert-Chain': ':MIIC:',
      'X-Client-Cert': 'admin',
      'X-Client-Cert-Dn': 'CN=admin',
      'X-Forwarded-For': '10.9.9.9',
      Forwarded: 'for=10.9.9.9',
    },
  });
  assert.equal(r.status, 200);
  const h = lastSeen().headers;
  assert.notEqual(h['fleetgate-assertion'], forged);
  assert.match(String(h['fleetgate-assertion']), /^eyJ[^.]+\.eyJ[^.]+\.[A-Za-z0-9_-]+$/);
  for (const name of [
    'x-forwarded-client-cert',
    'client-cert',
    'client-cert-chain',
    'x-client-cert',
    'x-client-cert-dn',
    'forwarded',
  ])
    assert.equal(h[name], undefined, name);
  assert.equal(h['x-forwarded-for'], '127.0.0.1');
});

test("spoofing/a device's URL-rewrite and method-override headers never reach the origin", async () => {
  const r = await https(`${fleet.httpsUrl}/api/override`, {
    ca,
    cred: c.sensor,
    headers: {
      'X-Original-URL': '/admin/x',
      'X-Rewrite-URL': '/admin/x',
      'X-HTTP-Method-Override': 'DELETE',
      'X-HTTP-Method': 'DELETE',
      'X-Method-Override': 'DELETE',
      X_Original_URL: '/admin/y',
    },
  });
  assert.equal(r.status, 200);
  const h = lastSeen().headers;
  for (const name of [
    'x-original-url',
    'x-rewrite-url',
    'x-http-method-override',
    'x-http-method',
    'x-method-override',
  ])
    assert.equal(h[name], undefined, name);
  assert.equal(
    Object.keys(h).find((k) => k.replaceAll('_', '-').toLowerCase() === 'x-original-url'),
    undefined,
  );
});

test('path/";" in a path (raw or %3B) is refused 400 PATH_INVALID and reaches no origin', async () => {
  for (const path of ['/api/..;/admin/x', '/api/..%3B/admin/x', '/api/x;jsessionid=1']) {
    const before = origin.seen.length;
    const r = await https(`${fleet.httpsUrl}${path}`, { ca, cred: c.sensor });
    assert.equal(r.status, 400, path);
    assert.equal(errorCodeOf(r), 'PATH_INVALID', path);
    assert.equal(origin.seen.length, before, `${path} reached the origin`);
  }
});

test('keep-alive/a revocation cuts the live connection (within the feed interval); the next request is refused 403', async () => {
  const agent = new Agent({ keepAlive: true, maxSockets: 1, ca, cert: c.doomed!.certPem, key: c.doomed!.keyPem });
  const handshakes = () => fleet.gateway.metrics.httpsHandshakes.get().then((m) => m.values[0]?.value ?? 0);
  let socket: import('node:net').Socket | undefined;
  const get = () =>
    new Promise<{ status: number; body: string }>((resolve, reject) => {
      request(`${fleet.httpsUrl}/v1/whoami`, { agent, servername: 'localhost' }, (res) => {
        socket = res.socket;
        let body = '';
        res.on('data', (b: Buffer) => {
          body += b.toString();
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      })
        .on('error', reject)
        .end();
    });
  const before = await handshakes();
  assert.equal((await get()).status, 200);
  assert.ok(
    fleet.gateway.sessions.ofDevice('doomed-1').some((s) => s.transport === 'https'),
    'the connection is a live session',
  );
  const cut = new Promise<void>((resolve) => socket!.once('close', () => resolve()));
  fleet.registry.revokeDevice('doomed-1', 1, 'test');
  await withTimeout(cut, 15_000, 'the keep-alive connection to be cut'); // bound for a busy machine; latency is benchmarked
  const second = await get();
  assert.equal(second.status, 403);
  assert.equal((JSON.parse(second.body) as { error: { code: string } }).error.code, 'CERT_REVOKED');
  assert.equal(await handshakes(), before + 2, 'the second request needed a new connection');
  const [audit] = await auditRows(fleet.registry, (a) => a.action === 'session.disconnect' && a.subject === 'doomed-1');
  assert.equal(audit?.detail.transport, 'https');
  agent.destroy();
});

test('perRequestHandshake/every request is a new full handshake (counted on the server)', async (t) => {
  const strict = await startTestFleet(t, { FLEETGATE_PER_REQUEST_HANDSHAKE: 'true' });
  const dev = await enrollDevice(strict.registry, strict.ca, strict.dir, { id: 'strict-1' });
  const agent = new Agent({
    keepAlive: true,
    maxSockets: 1,
    ca: readFileSync(strict.rootFile),
    cert: dev.certPem,
    key: dev.keyPem,
  });
  t.after(() => agent.destroy());
  for (let i = 0; i < 3; i++) {
    const r = await new Promise<{ status: number; connection?: string }>((resolve, reject) => {
      request(`${strict.httpsUrl}/v1/whoami`, { agent, servername: 'localhost' }, (res) => {
        res.resume();
        res.on('end', () => resolve({ status: res.statusCode ?? 0, connection: res.headers.connection }));
      })
        .on('error', reject)
        .end();
    });
    assert.deepEqual(r, { status: 200, connection: 'close' });
  }
  const count = (await strict.gateway.metrics.httpsHandshakes.get()).values[0]?.value;
  assert.equal(count, 3, 'three requests, three handshakes');
});

test('policy/camera-only route refuses a sensor (403 ROUTE_DENIED); unknown route 404; origin down 502; slow origin 504', async () => {
  const denied = await https(`${fleet.httpsUrl}/camera-only/x`, { ca, cred: c.sensor });
  assert.deepEqual([denied.status, errCode(denied)], [403, 'ROUTE_DENIED']);
  const allowed = await https(`${fleet.httpsUrl}/camera-only/x`, { ca, cred: c.camera });
  assert.equal(allowed.status, 200);
  const unknown = await https(`${fleet.httpsUrl}/nowhere`, { ca, cred: c.sensor });
  assert.deepEqual([unknown.status, errCode(unknown)], [404, 'ROUTE_NOT_FOUND']);
  const down = await https(`${fleet.httpsUrl}/down/x`, { ca, cred: c.sensor });
  assert.deepEqual([down.status, errCode(down)], [502, 'ORIGIN_UNREACHABLE']);
  const slow = await https(`${fleet.httpsUrl}/api/slow`, { ca, cred: c.sensor });
  assert.deepEqual([slow.status, errCode(slow)], [504, 'ORIGIN_TIMEOUT']);
});

test('rotation/after fleetgate jwt rotate, assertions carry the new kid; the JWKS holds both until the overlap ends', async () => {
  const kidOf = async () => {
    await https(`${fleet.httpsUrl}/api/kid`, { ca, cred: c.sensor });
    return decodeProtectedHeader(String(lastSeen().headers['fleetgate-assertion'])).kid;
  };
  const oldKid = await kidOf();
  // The overlap is the subject here: long enough that the checks below run inside it on a busy
  // machine, and the removal is checked against the retireAt the CLI reports.
  const out = JSON.parse(
    await fleetgateOk(['jwt', 'rotate', '--overlap', '20s', '--json', '--data', fleet.config.dataDir]),
  ) as { active: string; retired: string; retireAt: string };
  const retireAt = Date.parse(out.retireAt);
  assert.equal(out.retired, oldKid);
  let newKid = oldKid;
  for (let i = 0; i < 100 && newKid === oldKid; i++) {
    await new Promise((r) => setTimeout(r, 100));
    newKid = await kidOf();
  }
  assert.equal(newKid, out.active, 'the running gateway picked up the new key');
  const during = (await jwks()).keys.map((k) => k.kid).sort();
  const printed = JSON.parse(await fleetgateOk(['jwks', '--data', fleet.config.dataDir])) as {
    keys: { kid: string }[];
  };
  assert.ok(Date.now() < retireAt, 'the checks above ran inside the overlap');
  assert.deepEqual(during, [oldKid, newKid].sort());
  assert.deepEqual(printed.keys.map((k) => k.kid).sort(), [oldKid, newKid].sort());
  // After retireAt the old key leaves the JWKS (the gateway re-reads the keyring within a second).
  let after = during;
  while (after.includes(oldKid!) && Date.now() < retireAt + 15_000) {
    await new Promise((r) => setTimeout(r, 200));
    after = (await jwks()).keys.map((k) => k.kid);
  }
  assert.ok(Date.now() >= retireAt, 'the old key stayed published for the whole overlap');
  assert.deepEqual(after, [newKid], 'the old key is gone after the overlap');
  // …and so is its private key file (the running gateway deletes it; no rotation needed).
  const oldKeyFile = join(fleet.config.dataDir, 'jwt', `${oldKid}.key`);
  for (let i = 0; i < 100 && existsSync(oldKeyFile); i++) await new Promise((r) => setTimeout(r, 100));
  assert.equal(existsSync(oldKeyFile), false, 'the retired private key is deleted from the data directory');
  assert.ok(existsSync(join(fleet.config.dataDir, 'jwt', `${newKid}.key`)), 'the active one stays');
});
