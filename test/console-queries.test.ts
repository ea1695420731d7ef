// Issue #13: the console pages a 100k-device registry in SQL. Keyset pages walk the whole
// filtered set forward and back without a gap or a repeat; the fleet-audit findings see a key
// shared by two devices and a device that never renewed. Timings are printed, not asserted
// (`npm run bench:console` measures them against the gateway's admission latency).
import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import { after, before, describe, test } from 'node:test';
import { ConsoleQueries } from '../gateway/console/queries.ts';
import { ENGINES, registryLocation, stopSharedPostgres } from '../harness/engines.ts';
import { seedRegistry } from '../harness/seed.ts';
import { RegistryReader } from '../provisioning/registry/reader.ts';
import { RegistryWriter } from '../provisioning/registry/writer.ts';

const DEVICES = 100_000;
const now = Date.now();
after(stopSharedPostgres);

// The same queries on both engines (PostgreSQL where installed — always in CI).
for (const engine of ENGINES)
  describe(`console queries[${engine}]`, () => {
    let q: ConsoleQueries;
    let writer: RegistryWriter;
    let reader: RegistryReader;

    const cleanups: (() => void)[] = [];
    after(() => {
      reader?.close();
      writer?.close();
      for (const c of cleanups) c();
    });

    before(async () => {
      const file = await registryLocation({ after: (fn: () => void) => cleanups.push(fn) }, engine);
      writer = new RegistryWriter(file);
      seedRegistry(writer, { devices: DEVICES, now });
      // Two devices whose certificates carry one key (a cloned key) and a device that never renewed.
      writer.addDevice({ id: 'lonely-1', type: 'sensor', fleet: 'f-0' }, 'test');
      writer.sql.prepare(`UPDATE devices SET status = 'active' WHERE id = 'lonely-1'`).run();
      writer.sql
        .prepare(`INSERT INTO certificates (serial, device_id, fingerprint, spki_sha256, not_before, not_after, pem, issued_at, method, actor)
      VALUES ('aa01', 'dev-000001', '${'a'.repeat(63)}1', '${'c'.repeat(64)}', ${now - 1000}, ${now + 86_400_000}, 'PEM', ${now - 1000}, 'operator', 'test'),
             ('aa02', 'dev-000002', '${'a'.repeat(63)}2', '${'c'.repeat(64)}', ${now - 1000}, ${now + 86_400_000}, 'PEM', ${now - 1000}, 'operator', 'test'),
             ('aa03', 'lonely-1', '${'a'.repeat(63)}3', '${'d'.repeat(64)}', ${now - 80 * 86_400_000}, ${now + 3_600_000}, 'PEM', ${now - 80 * 86_400_000}, 'operator', 'test')`)
        .run();
      reader = new RegistryReader(file);
      q = new ConsoleQueries(reader);
    });

    function timed<T>(what: string, fn: () => T): T {
      const t0 = performance.now();
      const v = fn();
      console.log(`${what}: ${(performance.now() - t0).toFixed(2)} ms`);
      return v;
    }

    test('devices: keyset pages walk a filtered 100k registry forward and back, no gap, no repeat', () => {
      const first = timed('devices page 1 (100k)', () => q.devices({ limit: 100 }));
      assert.equal(first.total, DEVICES + 1); // and lonely-1
      assert.equal(first.rows.length, 100);
      assert.equal(first.prev, null);
      const deep = timed('devices page at dev-090000', () => q.devices({ after: 'dev-090000', limit: 100 }));
      assert.equal(deep.rows[0]!.id, 'dev-090001');

      // Every active camera of fleet f-3, page by page.
      const filter = { type: 'camera', fleet: 'f-3', status: 'active' };
      const expected = writer.sql
        .prepare(`SELECT id FROM devices WHERE type = 'camera' AND fleet = 'f-3' AND status = 'active' ORDER BY id`)
        .all()
        .map((r) => (r as { id: string }).id);
      assert.ok(expected.length > 500, `${expected.length} matching devices`);
      const seen: string[] = [];
      const pages: { first: string; last: string }[] = [];
      let after: string | undefined;
      for (;;) {
        const page = q.devices({ ...filter, ...(after !== undefined && { after }), limit: 250 });
        assert.equal(page.total, expected.length);
        seen.push(...page.rows.map((d) => d.id));
        pages.push({ first: page.rows[0]!.id, last: page.rows.at(-1)!.id });
        if (page.next === null) break;
        after = page.next;
      }
      assert.deepEqual(seen, expected);
      // Back from the last page: each "previous" page is the one before.
      const last = q.devices({ ...filter, after: pages.at(-2)!.last, limit: 250 });
      const back = q.devices({ ...filter, before: last.prev!, limit: 250 });
      assert.equal(back.rows[0]!.id, pages.at(-2)!.first);
      assert.equal(back.rows.at(-1)!.id, pages.at(-2)!.last);

      // The id prefix search.
      const prefix = timed('devices id prefix', () => q.devices({ q: 'dev-01234', limit: 500 }));
      assert.equal(prefix.total, 10);
      assert.ok(prefix.rows.every((d) => d.id.startsWith('dev-01234')));
      assert.throws(() => q.devices({ status: 'gone' }), /status must be one of/);
    });

    test('findings: a key in two devices, a device that never renewed; certificates expiring and revoked page', () => {
      const f = timed('findings (100k)', () => q.findings(now));
      assert.deepEqual(
        f.sharedKeys.map((k) => [k.spki, [...k.devices].sort()]),
        [['c'.repeat(64), ['dev-000001', 'dev-000002']]],
      );
      assert.ok(f.neverRenewed.some((n) => n.deviceId === 'lonely-1' && n.serial === 'aa03'));
      assert.ok(f.neverRenewedTotal >= 1);
      const soon = timed('expiring within 30 days', () => q.expiring({ withinMs: 30 * 86_400_000, limit: 50, now }));
      assert.ok(soon.rows.some((r) => r.serial === 'aa03'));
      let key: string | null = null;
      const serials: string[] = [];
      do {
        const page = q.expiring({ withinMs: 30 * 86_400_000, limit: 7, now, ...(key !== null && { after: key }) });
        serials.push(...page.rows.map((r) => r.serial as string));
        key = page.next;
      } while (key !== null);
      assert.equal(new Set(serials).size, serials.length, 'no certificate twice');
      assert.ok(serials.includes('aa03'));
      writer.revokeCertificate('aa01', 1, 'test');
      assert.equal(q.revoked({}).rows[0]?.serial, 'aa01');
    });

    test('audit and denylist page newest first without a repeat', () => {
      for (let i = 0; i < 30; i++)
        writer.addDeny({ kind: 'device', value: `dev-0000${String(i).padStart(2, '0')}`, reason: 'test' }, 'test');
      const values: string[] = [];
      let after: string | null = null;
      do {
        const page = q.denylist({ limit: 8, ...(after !== null && { after }) });
        assert.equal(page.total, 30);
        values.push(...page.rows.map((r) => r.value));
        after = page.next;
      } while (after !== null);
      assert.equal(values.length, 30);
      assert.equal(new Set(values).size, 30);
      const audit1 = timed('audit newest (filtered by action)', () => q.audit({ action: 'deny.add', limit: 10 }));
      assert.equal(audit1.rows.length, 10);
      const audit2 = q.audit({ action: 'deny.add', limit: 100, before: Number(audit1.next) });
      assert.equal(audit2.rows.length, 20);
      assert.ok(audit2.rows[0]!.seq < audit1.rows.at(-1)!.seq);
      assert.deepEqual(
        q.audit({ device: 'dev-000005', limit: 5 }).rows.map((r) => r.action),
        ['deny.add'],
      );
    });
  });
