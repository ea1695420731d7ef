// Issue #5 acceptance 7: a camera upload streams to the origin in bounded memory. The gateway
// runs in its own process (`fleetgate gateway`) so its RSS is its own, read from /proc. The bound
// is relative so it holds on a loaded machine (#25: 50 MB against a fixed 30 MB bound measured
// 58.9 MB with a second `npm test` beside it — garbage not yet collected, not buffering): a
// 160 MB body must pass with the gateway's RSS growing by less than half of it, which no
// buffering gateway can do. On a quiet machine a 50 MB body stays under 30 MB (UPSIZE=50 runs it).
// Also: a body over the route limit is refused with 413.
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { request } from 'node:https';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, test } from 'node:test';
import { loadConfig } from '../config/config.ts';
import { dataPaths } from '../config/paths.ts';
import { startOrigin } from '../harness/origin.ts';
import { type Credential, enrollDevice } from '../harness/pki.ts';
import { fileScope, tempDir } from '../harness/run.ts';
import { type GatewayProcess, spawnGateway } from '../harness/services.ts';
import { loadCa } from '../provisioning/ca/authority.ts';
import { RegistryWriter } from '../provisioning/registry/writer.ts';
import { initDataDir } from '../provisioning/setup.ts';

const MB = 1024 * 1024;
let origin: Awaited<ReturnType<typeof startOrigin>>;
let gateway: GatewayProcess;
let httpsUrl: string;
let rootFile: string;
let cam: Credential;
const scope = fileScope(after);

before(async () => {
  origin = await startOrigin(scope);
  const dir = tempDir(scope);
  const dataDir = join(dir, 'data');
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  writeFileSync(
    join(dataDir, 'fleetgate.json'),
    JSON.stringify({
      https: {
        routes: [
          {
            prefix: '/upload',
            origin: origin.url,
            audience: 'urn:test:uploads',
            allow: { types: ['camera'] },
            timeout: '60s',
            bodyLimit: 192 * MB,
          },
        ],
      },
    }),
  );
  await initDataDir(loadConfig({ dataDir, env: {} }));
  const paths = dataPaths(dataDir);
  rootFile = paths.rootCert;
  const registry = new RegistryWriter(paths.registry);
  cam = await enrollDevice(registry, await loadCa(paths), dir, { id: 'cam-9', type: 'camera' });
  registry.close();
  gateway = await spawnGateway(dataDir);
  scope.after(() => gateway.stop());
  httpsUrl = gateway.endpoints.https!;
});

/** A body generated as it is read: nothing of it is held in memory on the client side. */
function generated(bytes: number): Readable {
  let sent = 0;
  const chunk = Buffer.alloc(64 * 1024, 0x5a);
  return new Readable({
    read() {
      if (sent >= bytes) return void this.push(null);
      const n = Math.min(chunk.length, bytes - sent);
      sent += n;
      this.push(n === chunk.length ? chunk : chunk.subarray(0, n));
    },
  });
}

function upload(
  bytes: number,
  headers: Record<string, string | number> = {},
  sendBody = true,
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(
      `${httpsUrl}/upload/frame.jpg`,
      {
        method: 'POST',
        ca: readFileSync(rootFile),
        cert: cam.certPem,
        key: cam.keyPem,
        servername: 'localhost',
        agent: false,
        headers: { 'content-type': 'image/jpeg', ...headers },
      },
      (res) => {
        let body = '';
        res.on('data', (b: Buffer) => {
          body += b.toString();
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      },
    );
    req.on('error', reject);
    if (sendBody) generated(bytes).pipe(req);
    else req.flushHeaders(); // only the declared length: the gateway must refuse before reading
  });
}

test("upload/160 MB streams through; the gateway's RSS grows by less than half of it", async (t) => {
  await upload(1 * MB); // warm up the gateway's code paths and buffers
  const baseline = gateway.rssBytes();
  let peak = baseline;
  const sampler = setInterval(() => {
    peak = Math.max(peak, gateway.rssBytes());
  }, 10);
  const SIZE = Number(process.env.UPSIZE ?? 160) * MB;
  const r = await upload(SIZE, { 'content-length': SIZE });
  clearInterval(sampler);
  peak = Math.max(peak, gateway.rssBytes());
  assert.equal(r.status, 200, r.body);
  assert.equal(origin.seen.at(-1)!.bytes, SIZE, 'the origin received every byte');
  const growth = (peak - baseline) / MB;
  t.diagnostic(`gateway RSS grew by ${growth.toFixed(1)} MB at most while ${SIZE / MB} MB streamed through`);
  assert.ok(
    growth < SIZE / MB / 2,
    `gateway RSS grew by ${growth.toFixed(1)} MB for a ${SIZE / MB} MB body (from ${(baseline / MB).toFixed(1)} MB)`,
  );
});

test('upload/chunked, without a length, streams too', async () => {
  const r = await upload(8 * MB);
  assert.equal(r.status, 200, r.body);
  assert.equal(origin.seen.at(-1)!.bytes, 8 * MB);
});

test('upload/over the route limit → 413 PAYLOAD_TOO_LARGE (declared length)', async () => {
  const seen = origin.seen.length;
  const r = await upload(193 * MB, { 'content-length': 193 * MB }, false);
  assert.equal(r.status, 413, r.body);
  assert.equal((JSON.parse(r.body) as { error: { code: string } }).error.code, 'PAYLOAD_TOO_LARGE');
  assert.equal(origin.seen.length, seen, 'nothing reached the origin');
});
