// Issue #25 point 4: a registry that is busy says so. Another process holds SQLite's write lock
// (a real `BEGIN IMMEDIATE` from Python's sqlite3, the lock SQLite itself takes); enrollment and
// the CLI wait out their busy timeout and answer REGISTRY_UNAVAILABLE (HTTP 503 with Retry-After;
// CLI exit 7) — never INTERNAL — and nothing is spent: the token still works once the lock goes.
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { after, before, test } from 'node:test';
import { dataPaths } from '../config/paths.ts';
import { startTestProvisioning, type TestProvisioning } from '../harness/gateway.ts';
import { errorCodeOf, https } from '../harness/https.ts';
import { csrPem, newKeys } from '../harness/pki.ts';
import { errorCode, fileScope, fleetgate } from '../harness/run.ts';

const HOLD_WRITE_LOCK = `
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=0)
db.execute('BEGIN IMMEDIATE')
print('locked', flush=True)
sys.stdin.read()
db.execute('ROLLBACK')
`;

let p: TestProvisioning;
let token: string;
const scope = fileScope(after);

before(async () => {
  p = await startTestProvisioning(scope, { FLEETGATE_ACTOR: 'test' });
  token = p.registry.addDevice({ id: 'busy-1', type: 'sensor' }, 'test', { tokenTtlMs: 3_600_000 }).token!.token;
});

/** Holds the registry's write lock until the returned function is called. */
async function lockRegistry(): Promise<() => Promise<void>> {
  const file = dataPaths(p.config.dataDir, p.config.registry).registry;
  const locker: ChildProcess = spawn('python3', ['-c', HOLD_WRITE_LOCK, file], { stdio: ['pipe', 'pipe', 'inherit'] });
  const [line] = (await once(createInterface({ input: locker.stdout! }), 'line')) as [string];
  assert.equal(line, 'locked');
  return async () => {
    const gone = once(locker, 'exit');
    locker.stdin!.end();
    await gone;
  };
}

test('registry busy/enrollment answers 503 REGISTRY_UNAVAILABLE with Retry-After, and spends nothing', async () => {
  const csr = await csrPem(await newKeys(), 'busy-1');
  const enroll = () =>
    https(`${p.url}/v1/enroll`, {
      ca: readFileSync(p.rootFile),
      body: JSON.stringify({ token, csr }),
      headers: { 'content-type': 'application/json' },
    });
  const unlock = await lockRegistry();
  let r: Awaited<ReturnType<typeof enroll>>;
  try {
    r = await enroll();
  } finally {
    await unlock();
  }
  assert.equal(r.status, 503);
  assert.equal(errorCodeOf(r), 'REGISTRY_UNAVAILABLE');
  assert.equal(r.headers['retry-after'], '1');
  assert.equal(p.registry.counts().certificates, 0, 'no certificate recorded');
  const again = await enroll();
  assert.equal(again.status, 201, 'the token was not spent: it works once the lock is gone');
});

test('registry busy/the CLI exits 7 with REGISTRY_UNAVAILABLE (not 1, not INTERNAL)', async () => {
  const unlock = await lockRegistry();
  try {
    const r = await fleetgate(['device', 'add', 'busy-2', '--type', 'sensor', '--json', '--data', p.config.dataDir]);
    assert.equal(r.code, 7, r.stderr);
    assert.equal(errorCode(r), 'REGISTRY_UNAVAILABLE');
  } finally {
    await unlock();
  }
  assert.equal(p.registry.getDevice('busy-2'), undefined, 'nothing written');
  const ok = await fleetgate(['device', 'add', 'busy-2', '--type', 'sensor', '--json', '--data', p.config.dataDir]);
  assert.equal(ok.code, 0, ok.stderr);
});
