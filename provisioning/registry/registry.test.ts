import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, type TestContext, test } from 'node:test';
import Database from 'better-sqlite3';
import { type ErrorCode, FleetgateError, toFleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import { ENGINES, type Engine, registryLocation, stopSharedPostgres } from '../../harness/engines.ts';
import { normalizeSerial } from './hex.ts';
import { RegistryReader } from './reader.ts';
import { parseRevocationReason } from './reasons.ts';
import { MIGRATIONS } from './schema.ts';
import { hashToken, type NewCertificate, normalizeDenyTarget, RegistryWriter } from './writer.ts';

// The tests of the registry's operations run on both engines (SQLite, and PostgreSQL where it is
// installed — always in CI); the ones about SQLite itself (pragmas, its files, its migrations) on SQLite.

after(stopSharedPostgres);

async function open(t: TestContext, engine: Engine = 'sqlite'): Promise<{ writer: RegistryWriter; file: string }> {
  const file = await registryLocation(t, engine);
  const writer = new RegistryWriter(file);
  t.after(() => writer.close());
  return { writer, file };
}

/** A test on every engine, named `registry[engine]/…`. */
function both(name: string, fn: (t: TestContext, engine: Engine) => Promise<void> | void): void {
  for (const engine of ENGINES) test(`registry[${engine}]/${name}`, (t) => fn(t, engine));
}

const code = (c: ErrorCode) => (e: unknown) => e instanceof FleetgateError && e.code === c;

let serialCounter = 0;
function fakeIssued(deviceId: string, extra: Partial<NewCertificate> = {}): NewCertificate {
  serialCounter++;
  const hex = serialCounter.toString(16).padStart(32, '1');
  return {
    serial: hex,
    deviceId,
    fingerprint: hex.padEnd(64, 'f'),
    spkiSha256: hex.padEnd(64, 'e'),
    notBefore: 0,
    notAfter: Date.now() + 86_400_000,
    pem: 'PEM',
    method: 'operator',
    ...extra,
  };
}

test('registry/pragmas: WAL, synchronous FULL, schema version set', async (t) => {
  const { writer } = await open(t);
  assert.equal(writer.db.pragma('journal_mode', { simple: true }), 'wal');
  assert.equal(writer.db.pragma('synchronous', { simple: true }), 2); // FULL
  assert.ok((writer.db.pragma('user_version', { simple: true }) as number) >= 1);
});

both('reopening migrates nothing twice and keeps rows', async (t, engine) => {
  const { writer, file } = await open(t, engine);
  writer.addDevice({ id: 'd1', type: 'sensor' }, 'op');
  const again = new RegistryWriter(file);
  assert.equal(again.getDevice('d1')?.type, 'sensor');
  again.close();
});

both('reader is read-only', async (t, engine) => {
  const { writer, file } = await open(t, engine);
  writer.addDevice({ id: 'd1', type: 'sensor' }, 'op');
  const reader = new RegistryReader(file);
  t.after(() => reader.close());
  assert.equal(reader.getDevice('d1')?.status, 'pending');
  assert.throws(() => reader.sql.prepare("UPDATE devices SET status = 'active'").run(), /readonly|read-only/i);
});

test('registry/a write SQLite refuses as read-only is STORAGE_READ_ONLY, not INTERNAL', async (t) => {
  const { writer, file } = await open(t);
  writer.addDevice({ id: 'd1', type: 'sensor' }, 'op');
  const reader = new RegistryReader(file); // a real read-only connection: the write fails in SQLite itself
  t.after(() => reader.close());
  let err: unknown;
  try {
    reader.db.prepare("UPDATE devices SET status = 'active'").run();
  } catch (e) {
    err = e;
  }
  assert.equal(toFleetgateError(err).code, 'STORAGE_READ_ONLY');
  assert.equal(toFleetgateError(new Error('something else')).code, 'INTERNAL');
});

test('registry/reader refuses a missing file (fail closed)', () => {
  assert.throws(
    () => new RegistryReader(join(tmpdir(), 'no-such-dir-fleetgate', 'registry.db')),
    code('REGISTRY_UNAVAILABLE'),
  );
});

both('add device validates id, type, fleet and parent; nothing written on error', async (t, engine) => {
  const { writer } = await open(t, engine);
  writer.addDevice({ id: 'gw-1', type: 'gateway' }, 'op');
  writer.addDevice({ id: 's-1', type: 'sensor', parent: 'gw-1' }, 'op');
  const before = writer.counts();
  assert.throws(() => writer.addDevice({ id: 'a/b', type: 'sensor' }, 'op'), code('DEVICE_ID_INVALID'));
  assert.throws(() => writer.addDevice({ id: 'ok', type: 'toaster' }, 'op'), code('DEVICE_TYPE_INVALID'));
  assert.throws(() => writer.addDevice({ id: 'ok', type: 'sensor', fleet: 'a b' }, 'op'), code('DEVICE_ID_INVALID'));
  assert.throws(() => writer.addDevice({ id: 'ok', type: 'sensor', parent: 's-1' }, 'op'), code('PARENT_INVALID'));
  assert.throws(() => writer.addDevice({ id: 'ok', type: 'sensor', parent: 'nope' }, 'op'), code('PARENT_INVALID'));
  assert.throws(() => writer.addDevice({ id: 'ok', type: 'gateway', parent: 'gw-1' }, 'op'), code('PARENT_INVALID'));
  assert.throws(() => writer.addDevice({ id: 'gw-1', type: 'gateway' }, 'op'), code('DEVICE_EXISTS'));
  assert.deepEqual(writer.counts(), before);
  assert.deepEqual(
    writer.listChildren('gw-1').map((d) => d.id),
    ['s-1'],
  );
});

both('token: stored hashed, single use, expiry, bound to its device', async (t, engine) => {
  const { writer } = await open(t, engine);
  const { token } = writer.addDevice({ id: 'd1', type: 'sensor' }, 'op', { tokenTtlMs: 60_000 });
  assert.ok(token?.token.startsWith('fgt_'));
  const raw = writer.sql.prepare('SELECT hash FROM enrollment_tokens').all() as { hash: string }[];
  assert.deepEqual(raw, [{ hash: hashToken(token!.token) }]);
  assert.equal(writer.checkToken(hashToken(token!.token)).deviceId, 'd1');
  writer.recordCertificate(fakeIssued('d1', { tokenHash: hashToken(token!.token) }), 'enroll');
  assert.throws(() => writer.checkToken(hashToken(token!.token)), code('TOKEN_USED'));
  assert.throws(
    () => writer.recordCertificate(fakeIssued('d1', { tokenHash: hashToken(token!.token) }), 'enroll'),
    code('TOKEN_USED'),
  );
  assert.throws(() => writer.checkToken(hashToken('fgt_nope')), code('TOKEN_INVALID'));
  const late = writer.createToken('d1', 1, 'op');
  assert.throws(() => writer.checkToken(hashToken(late.token), Date.now() + 10), code('TOKEN_EXPIRED'));
  writer.addDevice({ id: 'd2', type: 'sensor' }, 'op');
  const other = writer.createToken('d2', 60_000, 'op');
  assert.throws(
    () => writer.recordCertificate(fakeIssued('d1', { tokenHash: hashToken(other.token) }), 'enroll'),
    code('TOKEN_INVALID'),
  );
  assert.equal(writer.listCertificates({ deviceId: 'd1' }).length, 1);
});

both('issuance activates a pending device; refused for suspended and revoked devices', async (t, engine) => {
  const { writer } = await open(t, engine);
  writer.addDevice({ id: 'd1', type: 'sensor' }, 'op');
  writer.recordCertificate(fakeIssued('d1'), 'op');
  assert.equal(writer.getDevice('d1')?.status, 'active');
  writer.suspendDevice('d1', 'op');
  assert.throws(() => writer.recordCertificate(fakeIssued('d1'), 'op'), code('DEVICE_SUSPENDED'));
  assert.equal(writer.resumeDevice('d1', 'op').device.status, 'active');
  writer.revokeDevice('d1', 5, 'op');
  assert.throws(() => writer.recordCertificate(fakeIssued('d1'), 'op'), code('DEVICE_REVOKED'));
  assert.throws(() => writer.recordCertificate(fakeIssued('ghost'), 'op'), code('DEVICE_NOT_FOUND'));
  assert.throws(() => writer.resumeDevice('d1', 'op'), code('DEVICE_STATE_CONFLICT'));
  assert.throws(() => writer.suspendDevice('d1', 'op'), code('DEVICE_STATE_CONFLICT'));
});

both('device revoke revokes every certificate, expires tokens, emits a status event', async (t, engine) => {
  const { writer } = await open(t, engine);
  writer.addDevice({ id: 'd1', type: 'sensor' }, 'op');
  const a = writer.recordCertificate(fakeIssued('d1'), 'op');
  const b = writer.recordCertificate(fakeIssued('d1'), 'op');
  writer.revokeCertificate(a.serial, 1, 'op');
  const token = writer.createToken('d1', 60_000, 'op');
  const seq = writer.lastStatusSeq();
  const result = writer.revokeDevice('d1', 5, 'op');
  assert.deepEqual(result.revokedSerials, [b.serial]);
  assert.equal(writer.getCertificate(a.serial)?.revocation?.reason, 1, 'earlier reason kept');
  assert.equal(writer.getCertificate(b.serial)?.revocation?.reason, 5);
  assert.throws(() => writer.checkToken(hashToken(token.token)), code('TOKEN_EXPIRED'));
  assert.deepEqual(
    writer.listStatusEvents(seq).map((e) => [e.kind, e.deviceId]),
    [['device.revoke', 'd1']],
  );
  assert.equal(writer.revokeDevice('d1', 5, 'op').changed, false);
});

both('audit is append-only with strictly increasing sequence', async (t, engine) => {
  const { writer } = await open(t, engine);
  writer.addDevice({ id: 'd1', type: 'sensor' }, 'op');
  writer.suspendDevice('d1', 'op');
  writer.resumeDevice('d1', 'op');
  const rows = writer.listAudit();
  assert.deepEqual(
    rows.map((r) => r.action),
    ['device.add', 'device.suspend', 'device.resume'],
  );
  assert.ok(rows.every((r, i) => i === 0 || r.seq > rows[i - 1]!.seq));
  assert.throws(() => writer.sql.prepare("UPDATE audit SET actor = 'x'").run(), /append-only/);
  assert.throws(() => writer.sql.prepare('DELETE FROM audit').run(), /append-only/);
  assert.deepEqual(
    writer.listAudit({ since: rows[1]!.seq }).map((r) => r.action),
    ['device.resume'],
  );
});

both('denylist normalizes fingerprints and refuses malformed ones', async (t, engine) => {
  const { writer } = await open(t, engine);
  const fp = 'AB:'.repeat(31) + 'AB';
  const entry = writer.addDeny({ kind: 'fingerprint', value: fp, reason: 'lost' }, 'op');
  assert.equal(entry.value, 'ab'.repeat(32));
  assert.equal(writer.getDeny('fingerprint', 'ab'.repeat(32))?.reason, 'lost');
  assert.throws(() => normalizeDenyTarget('fingerprint', 'abc'), code('USAGE'));
  assert.throws(() => normalizeDenyTarget('spki', 'zz'.repeat(32)), code('USAGE'));
  assert.throws(() => normalizeDenyTarget('device', 'a/b'), code('DEVICE_ID_INVALID'));
  assert.throws(() => normalizeDenyTarget('serial', 'ab'), code('USAGE'));
  writer.removeDeny('fingerprint', fp.toLowerCase(), 'op');
  assert.throws(() => writer.removeDeny('fingerprint', fp, 'op'), code('DENY_NOT_FOUND'));
});

both('CRL numbers increase monotonically', async (t, engine) => {
  const { writer } = await open(t, engine);
  assert.deepEqual([writer.nextCrlNumber('op'), writer.nextCrlNumber('op'), writer.nextCrlNumber('op')], [1, 2, 3]);
});

test('registry/serial and reason parsing', () => {
  assert.equal(normalizeSerial('00:8A:bc'), '8abc');
  assert.equal(normalizeSerial('0x0ABC'), '0abc');
  assert.equal(normalizeSerial('xyz'), undefined);
  assert.equal(parseRevocationReason('keyCompromise'), 1);
  assert.equal(parseRevocationReason('key-compromise'), 1);
  assert.equal(parseRevocationReason('CESSATION_OF_OPERATION'), 5);
  assert.equal(parseRevocationReason('9'), 9);
  assert.throws(() => parseRevocationReason('certificateHold'), code('USAGE'));
  assert.throws(() => parseRevocationReason('6'), code('USAGE'));
});

test('registry/migration 4 rebuilds devices (auditor type) and keeps every row and reference', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'fleetgate-registry-v3-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'registry.db');
  // A registry as fleetgate with three migrations left it, with a gateway, its child and a certificate.
  const old = new Database(file);
  for (const [i, sql] of MIGRATIONS.slice(0, 3).entries()) {
    old.exec(sql);
    old.pragma(`user_version = ${i + 1}`);
  }
  old.exec(`INSERT INTO devices (id, type, created_at, updated_at) VALUES ('gw-1', 'gateway', 1, 1);
    INSERT INTO devices (id, type, parent, status, created_at, updated_at) VALUES ('s-1', 'sensor', 'gw-1', 'active', 2, 2);
    INSERT INTO certificates (serial, device_id, fingerprint, spki_sha256, not_before, not_after, pem, issued_at, method, actor)
      VALUES ('01', 's-1', 'ff', 'ee', 0, 9, 'PEM', 3, 'operator', 't');`);
  assert.throws(
    () => old.exec(`INSERT INTO devices (id, type, created_at, updated_at) VALUES ('a-0', 'auditor', 1, 1)`),
    /CHECK/,
  );
  old.close();

  const writer = new RegistryWriter(file);
  t.after(() => writer.close());
  assert.equal(writer.db.pragma('user_version', { simple: true }), MIGRATIONS.length);
  assert.equal(writer.db.pragma('foreign_keys', { simple: true }), 1, 'foreign keys are on again after the migration');
  assert.deepEqual(
    writer.listDevices().map((d) => [d.id, d.type, d.parent, d.status]),
    [
      ['gw-1', 'gateway', null, 'pending'],
      ['s-1', 'sensor', 'gw-1', 'active'],
    ],
  );
  assert.equal(writer.getCertificate('01')?.deviceId, 's-1');
  assert.equal(writer.addDevice({ id: 'alice', type: 'auditor', fleet: 'operators' }, 'test').device.type, 'auditor');
  // The rebuilt table still enforces its references.
  assert.throws(
    () =>
      writer.db.exec(
        `INSERT INTO devices (id, type, parent, created_at, updated_at) VALUES ('s-2', 'sensor', 'nope', 1, 1)`,
      ),
    /FOREIGN KEY/,
  );
  assert.throws(() => writer.db.exec(`DELETE FROM devices WHERE id = 'gw-1'`), /FOREIGN KEY/);
});

both(
  'group commit: one transaction, each change in its own savepoint; a failing change is rolled back alone',
  async (t, engine) => {
    const { writer } = await open(t, engine);
    const { GroupCommit } = await import('../enroll/group-commit.ts');
    const group = new GroupCommit(writer);
    const token = writer.addDevice({ id: 'gc-1', type: 'sensor' }, 'test', { tokenTtlMs: 60_000 }).token!;
    writer.addDevice({ id: 'gc-2', type: 'sensor' }, 'test');
    const before = writer.counts();
    // The same token twice in one turn: the first consumes it, the second fails alone; gc-2 is unaffected.
    const first = fakeIssued('gc-1', { tokenHash: hashToken(token.token) });
    const again = fakeIssued('gc-1', { tokenHash: hashToken(token.token) });
    const other = fakeIssued('gc-2');
    const results = await Promise.allSettled(
      [first, again, other].map((c) => group.run(() => writer.recordCertificate(c, 'test'))),
    );
    assert.deepEqual(
      results.map((r) => r.status),
      ['fulfilled', 'rejected', 'fulfilled'],
    );
    assert.ok(code('TOKEN_USED')((results[1] as PromiseRejectedResult).reason));
    assert.equal(group.stats.commits, 1, 'one commit for the three');
    assert.equal(writer.getCertificate(again.serial), undefined, 'nothing of the failed change is left');
    const returned = (results[0] as PromiseFulfilledResult<ReturnType<RegistryWriter['recordCertificate']>>).value;
    assert.deepEqual(returned, writer.getCertificate(first.serial), 'the returned record is the row as stored');
    const after = writer.counts();
    assert.equal(after.certificates - before.certificates, 2);
    assert.equal(after.audit - before.audit, 2);
    assert.equal(writer.getDevice('gc-2')?.status, 'active');
  },
);

both(
  'status check in one query: unknown, another certificate, expired, denylisted (device, fingerprint; an expired entry ignored), suspended before denylisted, revoked before all',
  async (t, engine) => {
    const { writer } = await open(t, engine);
    const { checkCertificateStatus } = await import('./status.ts');
    writer.addDevice({ id: 'st-1', type: 'sensor' }, 'op');
    const c = writer.recordCertificate(fakeIssued('st-1'), 'op');
    const identity = {
      serial: c.serial,
      fingerprint: c.fingerprint,
      spkiSha256: c.spkiSha256,
      deviceId: 'st-1',
      notBefore: 0,
      notAfter: c.notAfter,
    } as Parameters<typeof checkCertificateStatus>[1];
    assert.equal(checkCertificateStatus(writer, identity).id, 'st-1');
    assert.throws(() => checkCertificateStatus(writer, { ...identity, serial: 'ffff' }), code('CERT_UNKNOWN'));
    assert.throws(
      () => checkCertificateStatus(writer, { ...identity, fingerprint: 'f'.repeat(64) }),
      code('CERT_UNKNOWN'),
    );
    assert.throws(() => checkCertificateStatus(writer, { ...identity, deviceId: 'st-2' }), code('CERT_UNKNOWN'));
    assert.throws(() => checkCertificateStatus(writer, identity, c.notAfter), code('CERT_EXPIRED'));
    writer.addDeny({ kind: 'spki', value: c.spkiSha256, expiresAt: Date.now() - 1 }, 'op'); // expired: no effect
    assert.equal(checkCertificateStatus(writer, identity).id, 'st-1');
    writer.addDeny({ kind: 'device', value: 'st-1', reason: 'lost' }, 'op');
    assert.throws(
      () => checkCertificateStatus(writer, identity),
      (e: unknown) => code('DENYLISTED')(e) && /lost/.test((e as Error).message),
    );
    writer.removeDeny('device', 'st-1', 'op');
    writer.addDeny({ kind: 'fingerprint', value: c.fingerprint }, 'op');
    assert.throws(() => checkCertificateStatus(writer, identity), code('DENYLISTED'));
    writer.suspendDevice('st-1', 'op'); // suspended is said before denylisted
    assert.throws(() => checkCertificateStatus(writer, identity), code('DEVICE_SUSPENDED'));
    writer.revokeCertificate(c.serial, 1, 'op'); // revoked before anything about the device
    assert.throws(() => checkCertificateStatus(writer, identity), code('CERT_REVOKED'));
  },
);
