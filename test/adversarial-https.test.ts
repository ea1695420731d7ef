// Issue #10 §1, §2, §4 on the HTTPS plane, tried as an attacker with a valid device certificate
// would: path tricks that bypass route policy, identity headers an origin would trust, chunked
// bodies past the limit, trickled bodies, idle and surplus connections, and what an error tells
// the device. Every refusal is a coded error, the plane stays up, the origin sees nothing it
// should not, and no registry state is written.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, test } from 'node:test';
import { type TLSSocket, connect as tlsConnect } from 'node:tls';
import { STRIPPED_REQUEST_HEADERS } from '../gateway/https/headers.ts';
import { startTestFleet, type TestFleet } from '../harness/gateway.ts';
import { errorCodeOf, https } from '../harness/https.ts';
import { startOrigin } from '../harness/origin.ts';
import { type Credential, enrollDevice } from '../harness/pki.ts';
import { fileScope } from '../harness/run.ts';

let fleet: TestFleet;
let origin: Awaited<ReturnType<typeof startOrigin>>;
let ca: Buffer;
let auditRows: number;
const c: Record<string, Credential> = {};
const scope = fileScope(after);

before(async () => {
  origin = await startOrigin(scope);
  fleet = await startTestFleet(
    scope,
    {
      FLEETGATE_HTTPS_IDLE_TIMEOUT: '2s',
      FLEETGATE_HTTPS_BODY_IDLE_TIMEOUT: '2s',
      FLEETGATE_HTTPS_MIN_BODY_RATE: '1024',
      FLEETGATE_HTTPS_MAX_CONNECTIONS_PER_DEVICE: '2',
    },
    {
      https: {
        routes: [
          { prefix: '/api', origin: origin.url, audience: 'urn:test:api', timeout: '2s', bodyLimit: 1024 },
          {
            prefix: '/upload',
            origin: origin.url,
            audience: 'urn:test:cams',
            timeout: '2s',
            allow: { types: ['camera'] },
            bodyLimit: 1024 * 1024,
          },
        ],
      },
    },
  );
  ca = readFileSync(fleet.rootFile);
  c.sensor = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'sensor-1' });
  c.camera = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'cam-1', type: 'camera' });
  c.cloned = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'nm-1' });
  fleet.registry.addDeny({ kind: 'device', value: 'nm-1', reason: 'suspected clone, case INC-4411' }, 'test');
  auditRows = fleet.registry.listAudit().length;
});

const code = errorCodeOf;
const get = (path: string, cred: Credential = c.sensor!, headers: Record<string, string> = {}) =>
  https(`${fleet.httpsUrl}${path}`, { ca, cred, headers });

/** A raw TLS connection with a device certificate (for request lines and bodies no client library would send). */
function raw(cred: Credential = c.sensor!): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    const s = tlsConnect(
      {
        host: '127.0.0.1',
        port: fleet.gateway.ports.https,
        ca,
        cert: cred.certPem,
        key: cred.keyPem,
        servername: 'localhost',
      },
      () => resolve(s),
    );
    s.once('error', reject);
  });
}

/** Everything the server sends on `s` until it closes the connection (or `ms` pass). */
function readAll(s: TLSSocket, ms = 20_000): Promise<string> {
  return new Promise((resolve) => {
    let text = '';
    const timer = setTimeout(() => {
      s.destroy();
      resolve(text);
    }, ms);
    s.on('data', (b: Buffer) => {
      text += b.toString('latin1');
    });
    s.on('close', () => {
      clearTimeout(timer);
      resolve(text);
    });
    s.on('error', () => undefined);
  });
}

/** A request line sent byte for byte (URL parsers in clients would resolve `\` and `..` first). */
async function rawGet(
  path: string,
  cred: Credential = c.sensor!,
): Promise<{ status: number; code: string | undefined; body: string }> {
  const s = await raw(cred);
  const answer = readAll(s);
  s.write(`GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
  const text = await answer;
  const body = text.slice(text.indexOf('\r\n\r\n') + 4);
  let parsed: string | undefined;
  try {
    parsed = (JSON.parse(body) as { error?: { code?: string } }).error?.code;
  } catch {
    parsed = undefined;
  }
  return { status: Number(/^HTTP\/1\.1 (\d+)/.exec(text)?.[1]), code: parsed, body };
}

test("path/a backslash cannot reach a camera-only route or the origin's own paths (400 PATH_INVALID)", async () => {
  const before = origin.seen.length;
  for (const path of [
    '/api/x\\..\\..\\upload\\a',
    '/api/x\\..\\..\\v1\\whoami',
    '/api/x%5c..%5c..%5cupload%5ca',
    '/api%2f..%2fupload/a',
    '/api/a%00b',
    '/api/%zz',
  ]) {
    const r = await rawGet(path);
    assert.deepEqual([r.status, r.code], [400, 'PATH_INVALID'], path);
  }
  assert.equal(origin.seen.length, before, 'the origin saw none of them');
});

test('path/dot segments are resolved before the route is picked and the upstream URL is built from the result', async () => {
  const viaDots = await rawGet('/api/%2e%2e/upload/a');
  assert.deepEqual(
    [viaDots.status, viaDots.code],
    [403, 'ROUTE_DENIED'],
    'a sensor reaching /upload by dot segments is judged as /upload',
  );
  const above = await rawGet('/api/../../x');
  assert.deepEqual([above.status, above.code], [400, 'PATH_INVALID'], 'above the root: refused, not a 500');
  const outside = await rawGet('/api/../x');
  assert.deepEqual([outside.status, outside.code], [404, 'ROUTE_NOT_FOUND'], 'normalised to /x: no route, not a 500');
  const ok = await rawGet('/api/a/./b//c/../d?q=%2F1');
  assert.equal(ok.status, 200);
  assert.equal(
    origin.seen.at(-1)!.url,
    '/api/a/b/d?q=%2F1',
    'the origin gets the normalised path (the query is passed as sent)',
  );
  const whoami = await rawGet('/api/../v1/whoami');
  assert.equal(
    (JSON.parse(whoami.body) as { deviceId: string }).deviceId,
    'sensor-1',
    "the gateway's own whoami, not the origin's",
  );
});

test('headers/every identity header in the strip list, in - and _ spellings and any case, never reaches the origin', async () => {
  const sent: Record<string, string> = {};
  for (const name of [...STRIPPED_REQUEST_HEADERS, 'Fleetgate-Assertion']) {
    sent[name] = 'forged';
    sent[`${name.replaceAll('-', '_').toUpperCase()}_X`.slice(0, -2)] = 'forged'; // the underscore spelling
  }
  const r = await get('/api/echo', c.sensor!, sent);
  assert.equal(r.status, 200);
  const seen = origin.seen.at(-1)!.headers;
  for (const [name, value] of Object.entries(seen)) {
    assert.ok(value !== 'forged' && !(Array.isArray(value) && value.includes('forged')), `${name} reached the origin`);
  }
  assert.match(String(seen['fleetgate-assertion']), /^eyJ/, "the gateway's own assertion is there");
  assert.equal(seen['x-forwarded-for'], '127.0.0.1', 'and its own X-Forwarded-For');
});

test('body/a chunked body over the route limit answers 413, like a declared length', async () => {
  const s = await raw();
  const answer = readAll(s);
  s.write(
    'POST /api/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: application/octet-stream\r\n\r\n',
  );
  for (let i = 0; i < 4; i++) s.write(`400\r\n${'x'.repeat(1024)}\r\n`);
  s.write('0\r\n\r\n');
  const text = await answer;
  assert.match(text, /^HTTP\/1\.1 413 /, text.slice(0, 200));
  assert.match(text, /"code":"PAYLOAD_TOO_LARGE"/);
});

test('body/a trickled body is cut with 408 REQUEST_TIMEOUT (1 byte every 500 ms)', async () => {
  const s = await raw(c.camera!);
  const answer = readAll(s, 30_000);
  s.write(
    'POST /upload/slow HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\nContent-Type: application/octet-stream\r\n\r\n',
  );
  const drip = setInterval(() => {
    if (!s.destroyed) s.write('x');
  }, 500);
  const text = await answer;
  clearInterval(drip);
  assert.match(text, /^HTTP\/1\.1 408 /, text.slice(0, 200));
  assert.match(text, /"code":"REQUEST_TIMEOUT"/);
});

test('idle/a connection that never sends a request is closed (idle timeout)', async () => {
  const s = await raw();
  const started = Date.now();
  await readAll(s, 60_000);
  assert.ok(Date.now() - started < 55_000, 'closed by the server, not by the test');
});

test('connections/a device past its connection cap gets 429 CONNECTION_LIMIT; its other connections keep working', async () => {
  const sockets = await Promise.all([raw(), raw(), raw()]);
  const answers = sockets.map((s) => readAll(s));
  for (const s of sockets) s.write('GET /v1/whoami HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
  const texts = await Promise.all(answers);
  const statuses = texts.map((t) => /^HTTP\/1\.1 (\d+)/.exec(t)?.[1]).sort();
  assert.deepEqual(statuses, ['200', '200', '429'], texts.map((t) => t.slice(0, 80)).join(' | '));
  assert.match(texts.find((t) => t.startsWith('HTTP/1.1 429'))!, /"code":"CONNECTION_LIMIT"/);
  const again = await get('/v1/whoami');
  assert.equal(again.status, 200, 'after they closed, the device connects again');
});

test("errors/a refused device hears the code and the public message, never the operator's reason or its own id", async () => {
  const r = await get('/v1/whoami', c.cloned!);
  assert.deepEqual([r.status, code(r)], [403, 'DENYLISTED']);
  assert.doesNotMatch(r.body, /INC-4411|clone|nm-1/);
  const denied = await get('/upload/x');
  assert.doesNotMatch(denied.body, /sensor-1|sensor/, 'route refusals do not echo the device');
  const log = JSON.stringify(fleet.log.lines);
  assert.match(log, /INC-4411/, 'the operator finds the reason in the log');
});

test('state/none of the above wrote to the registry, and the plane still serves', async () => {
  const r = await get('/v1/whoami');
  assert.equal(r.status, 200);
  assert.equal(fleet.registry.listAudit().length, auditRows, 'no audit rows from refused requests');
});
