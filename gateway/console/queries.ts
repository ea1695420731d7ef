import { DEVICE_TYPES } from '../../firmware-sdk/protocol/device-id.ts';
import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import { type RegistryReader, toAudit, toDeny, toDevice } from '../../provisioning/registry/reader.ts';
import {
  type AuditRecord,
  type CertificateRecord,
  DENY_KINDS,
  type DenyRecord,
  type DeviceRecord,
} from '../../provisioning/registry/records.ts';
import type { SqlStatement } from '../../provisioning/registry/sql.ts';

/** One page of rows in a stable order, with the key to ask for the next (and previous) one. */
export interface Page<T> {
  rows: T[];
  /** Rows matching the filter in all (devices: counted with the same filter; capped for the audit log). */
  total: number;
  next: string | null;
  prev: string | null;
}

export interface DeviceFilter {
  /** Device id prefix. */
  q?: string;
  type?: string;
  fleet?: string;
  status?: string;
  after?: string;
  before?: string;
  limit?: number;
}

export interface AuditFilter {
  actor?: string;
  action?: string;
  device?: string;
  /** Entries older than this seq (the next page of a newest-first listing). */
  before?: number;
  limit?: number;
}

export interface DenyFilter {
  kind?: string;
  after?: string;
  limit?: number;
}

export interface Findings {
  sharedKeys: { spki: string; devices: string[]; certificates: number }[];
  neverRenewed: { deviceId: string; serial: string; issuedAt: number; notAfter: number }[];
  neverRenewedTotal: number;
}

type Row = Record<string, unknown>;
const STATUSES = ['pending', 'active', 'suspended', 'revoked'] as const;
const MAX_LIMIT = 500;

function limitOf(limit: number | undefined, fallback = 50): number {
  if (limit === undefined) return fallback;
  if (!Number.isInteger(limit) || limit < 1)
    throw new FleetgateError('BAD_REQUEST', 'limit must be a positive integer');
  return Math.min(limit, MAX_LIMIT);
}

function oneOf(value: string | undefined, allowed: readonly string[], what: string): string | null {
  if (value === undefined || value === '') return null;
  if (!allowed.includes(value)) throw new FleetgateError('BAD_REQUEST', `${what} must be one of ${allowed.join(', ')}`);
  return value;
}

/**
 * What the console reads, each an indexed query that pages in SQL (keyset pagination: a page
 * costs the same on page 1 and page 2,000 of a 100k-device registry). Runs on the console's
 * registry thread, on a read-only connection.
 */
export class ConsoleQueries {
  readonly #reader: RegistryReader;
  readonly #s: Record<string, SqlStatement>;
  readonly #byFilter = new Map<string, { after: SqlStatement; before: SqlStatement; count: SqlStatement }>();

  constructor(reader: RegistryReader) {
    this.#reader = reader;
    const p = (sql: string) => reader.sql.prepare(sql);
    this.#s = {
      byStatus: p('SELECT status, COUNT(*) AS n FROM devices GROUP BY status'),
      byType: p('SELECT type, COUNT(*) AS n FROM devices GROUP BY type'),
      expiring: p(`SELECT c.serial, c.device_id, c.fingerprint, c.not_after, c.issued_at FROM certificates c
        WHERE c.not_after >= @now AND c.not_after < @until AND c.superseded_by IS NULL
          AND NOT EXISTS (SELECT 1 FROM revocations r WHERE r.serial = c.serial)
          AND (CAST(@after AS TEXT) IS NULL OR c.not_after > @afterAt OR (c.not_after = @afterAt AND c.serial > @after))
        ORDER BY c.not_after, c.serial LIMIT @limit`),
      revoked:
        p(`SELECT c.serial, c.device_id, c.fingerprint, c.not_after, r.reason, r.revoked_at, r.actor FROM revocations r
        JOIN certificates c ON c.serial = r.serial
        WHERE (CAST(@before AS TEXT) IS NULL OR r.revoked_at < @beforeAt OR (r.revoked_at = @beforeAt AND r.serial < @before))
        ORDER BY r.revoked_at DESC, r.serial DESC LIMIT @limit`),
      sharedKeys:
        p(`SELECT g.spki, g.certificates, (SELECT string_agg(u.d, ',') FROM (SELECT DISTINCT x.device_id AS d FROM certificates x
          WHERE x.spki_sha256 = g.spki ORDER BY x.device_id) u) AS devices
        FROM (SELECT spki_sha256 AS spki, COUNT(*) AS certificates, COUNT(DISTINCT device_id) AS n FROM certificates
          GROUP BY spki_sha256 HAVING COUNT(DISTINCT device_id) > 1) g ORDER BY g.n DESC LIMIT 100`),
      neverRenewed: p(`SELECT c.device_id, c.serial, c.issued_at, c.not_after FROM devices d
        JOIN certificates c ON c.device_id = d.id
        WHERE d.status = 'active' AND d.type NOT IN ('operator', 'auditor')
          AND NOT EXISTS (SELECT 1 FROM certificates o WHERE o.device_id = d.id AND o.serial <> c.serial)
          AND NOT EXISTS (SELECT 1 FROM revocations r WHERE r.serial = c.serial)
          AND c.not_after > @now AND @now > c.not_before + (c.not_after - c.not_before) / 2
        ORDER BY c.not_after LIMIT @limit`),
      neverRenewedCount: p(`SELECT COUNT(*) AS n FROM devices d JOIN certificates c ON c.device_id = d.id
        WHERE d.status = 'active' AND d.type NOT IN ('operator', 'auditor')
          AND NOT EXISTS (SELECT 1 FROM certificates o WHERE o.device_id = d.id AND o.serial <> c.serial)
          AND NOT EXISTS (SELECT 1 FROM revocations r WHERE r.serial = c.serial)
          AND c.not_after > @now AND @now > c.not_before + (c.not_after - c.not_before) / 2`),
      deny: p(`SELECT * FROM denylist WHERE (CAST(@kind AS TEXT) IS NULL OR kind = @kind) AND (CAST(@after AS TEXT) IS NULL OR kind || ':' || value > @after)
        ORDER BY kind || ':' || value LIMIT @limit`),
      denyCount: p('SELECT COUNT(*) AS n FROM denylist WHERE (CAST(@kind AS TEXT) IS NULL OR kind = @kind)'),
      denyForDevice: p(`SELECT * FROM denylist WHERE (kind = 'device' AND value = @id)
        OR (kind = 'fingerprint' AND value IN (SELECT fingerprint FROM certificates WHERE device_id = @id))
        OR (kind = 'spki' AND value IN (SELECT spki_sha256 FROM certificates WHERE device_id = @id))`),
      audit: p(`SELECT * FROM audit WHERE (CAST(@before AS BIGINT) IS NULL OR seq < @before)
        AND (CAST(@device AS TEXT) IS NULL OR subject = @device OR subject = 'device:' || @device)
        AND (CAST(@actor AS TEXT) IS NULL OR actor = @actor) AND (CAST(@action AS TEXT) IS NULL OR action = @action)
        ORDER BY seq DESC LIMIT @limit`),
    };
  }

  /**
   * SqlStatements for one combination of device filters, made once: only the conditions asked for
   * are in the SQL, so SQLite picks the index that fits (id prefix: the primary key; fleet, type,
   * status: their own indexes), where `(@x IS NULL OR …)` would scan.
   */
  #deviceSqlStatements(where: Record<string, string | null>): {
    after: SqlStatement;
    before: SqlStatement;
    count: SqlStatement;
  } {
    const parts: string[] = [];
    if (where.q !== null) parts.push(`id >= @q AND id < @q || '~'`);
    for (const c of ['type', 'fleet', 'status'] as const) if (where[c] !== null) parts.push(`${c} = @${c}`);
    const key = parts.join(' AND ');
    let s = this.#byFilter.get(key);
    if (s === undefined) {
      const cond = parts.length === 0 ? 'TRUE' : key;
      const p = (sql: string) => this.#reader.sql.prepare(sql);
      s = {
        after: p(
          `SELECT * FROM devices WHERE ${cond} AND (CAST(@after AS TEXT) IS NULL OR id > @after) ORDER BY id LIMIT @limit`,
        ),
        before: p(`SELECT * FROM devices WHERE ${cond} AND id < @before ORDER BY id DESC LIMIT @limit`),
        count: p(`SELECT COUNT(*) AS n FROM devices WHERE ${cond}`),
      };
      this.#byFilter.set(key, s);
    }
    return s;
  }

  devices(f: DeviceFilter): Page<DeviceRecord> {
    const limit = limitOf(f.limit);
    const where = {
      q: f.q === undefined || f.q === '' ? null : f.q,
      type: oneOf(f.type, DEVICE_TYPES, 'type'),
      fleet: f.fleet === undefined || f.fleet === '' ? null : f.fleet,
      status: oneOf(f.status, STATUSES, 'status'),
    };
    const s = this.#deviceSqlStatements(where);
    const bind = Object.fromEntries(Object.entries(where).filter(([, v]) => v !== null));
    const total = (s.count.get(bind) as { n: number }).n;
    if (f.before !== undefined && f.before !== '') {
      const got = (s.before.all({ ...bind, before: f.before, limit: limit + 1 }) as Row[]).map(toDevice);
      const rows = got.slice(0, limit).reverse();
      return { rows, total, next: rows.at(-1)?.id ?? null, prev: got.length > limit ? rows[0]!.id : null };
    }
    const after = f.after === undefined || f.after === '' ? null : f.after;
    const got = (s.after.all({ ...bind, after, limit: limit + 1 }) as Row[]).map(toDevice);
    const rows = got.slice(0, limit);
    return {
      rows,
      total,
      next: got.length > limit ? rows.at(-1)!.id : null,
      prev: after === null || rows.length === 0 ? null : rows[0]!.id,
    };
  }

  device(id: string): {
    device: DeviceRecord;
    certificates: Omit<CertificateRecord, 'pem'>[];
    children: string[];
    audit: AuditRecord[];
    denied: DenyRecord[];
  } {
    const device = this.#reader.getDevice(id);
    if (device === undefined) throw new FleetgateError('DEVICE_NOT_FOUND', `device ${id} not found`);
    return {
      device,
      certificates: this.#reader
        .listCertificates({ deviceId: id })
        .map(({ pem: _pem, ...c }) => c)
        .reverse(),
      children: this.#reader.listChildren(id).map((c) => c.id),
      audit: this.#reader.listAudit({ device: id, newest: true, limit: 25 }),
      denied: (this.#s.denyForDevice!.all({ id }) as Row[]).map(toDeny),
    };
  }

  /** Devices by status and by type: the registry half of the overview. */
  counts(): { byStatus: Record<string, number>; byType: Record<string, number> } {
    const fold = (rows: Row[], key: string) => Object.fromEntries(rows.map((r) => [r[key] as string, r.n as number]));
    return {
      byStatus: fold(this.#s.byStatus!.all() as Row[], 'status'),
      byType: fold(this.#s.byType!.all() as Row[], 'type'),
    };
  }

  /** Valid certificates that expire within `withinMs`, soonest first. `after`: `<notAfter>:<serial>` of the last row seen. */
  expiring(o: { withinMs: number; after?: string; limit?: number; now?: number }): {
    rows: Row[];
    next: string | null;
  } {
    const limit = limitOf(o.limit);
    const now = o.now ?? Date.now();
    const [afterAt, after] = splitKey(o.after);
    const rows = this.#s.expiring!.all({ now, until: now + o.withinMs, after, afterAt, limit: limit + 1 }) as Row[];
    const page = rows.slice(0, limit);
    const last = page.at(-1);
    return {
      rows: page,
      next: rows.length > limit && last !== undefined ? `${last.not_after as number}:${last.serial as string}` : null,
    };
  }

  /** Revoked certificates, newest revocation first. */
  revoked(o: { before?: string; limit?: number }): { rows: Row[]; next: string | null } {
    const limit = limitOf(o.limit);
    const [beforeAt, before] = splitKey(o.before);
    const rows = this.#s.revoked!.all({ before, beforeAt, limit: limit + 1 }) as Row[];
    const page = rows.slice(0, limit);
    const last = page.at(-1);
    return {
      rows: page,
      next: rows.length > limit && last !== undefined ? `${last.revoked_at as number}:${last.serial as string}` : null,
    };
  }

  /**
   * The fleet-audit findings a CA does not give for free: one key in the certificates of several
   * devices (a cloned or copied key), and active devices still on their first certificate past
   * half its lifetime (they never renewed: their firmware may not be able to).
   */
  findings(now = Date.now()): Findings {
    return {
      sharedKeys: (this.#s.sharedKeys!.all() as Row[]).map((r) => ({
        spki: r.spki as string,
        certificates: r.certificates as number,
        devices: (r.devices as string).split(','),
      })),
      neverRenewed: (this.#s.neverRenewed!.all({ now, limit: 100 }) as Row[]).map((r) => ({
        deviceId: r.device_id as string,
        serial: r.serial as string,
        issuedAt: r.issued_at as number,
        notAfter: r.not_after as number,
      })),
      neverRenewedTotal: (this.#s.neverRenewedCount!.get({ now }) as { n: number }).n,
    };
  }

  denylist(f: DenyFilter): Page<DenyRecord> {
    const limit = limitOf(f.limit);
    const kind = oneOf(f.kind, DENY_KINDS, 'kind');
    const after = f.after === undefined || f.after === '' ? null : f.after;
    const got = (this.#s.deny!.all({ kind, after, limit: limit + 1 }) as Row[]).map(toDeny);
    const rows = got.slice(0, limit);
    const last = rows.at(-1);
    return {
      rows,
      total: (this.#s.denyCount!.get({ kind }) as { n: number }).n,
      next: got.length > limit && last !== undefined ? `${last.kind}:${last.value}` : null,
      prev: null,
    };
  }

  /** The audit log, newest first; `before` pages on. */
  audit(f: AuditFilter): Page<AuditRecord> {
    const limit = limitOf(f.limit);
    const got = (
      this.#s.audit!.all({
        before: f.before ?? null,
        device: f.device || null,
        actor: f.actor || null,
        action: f.action || null,
        limit: limit + 1,
      }) as Row[]
    ).map(toAudit);
    const rows = got.slice(0, limit);
    return { rows, total: -1, next: got.length > limit ? String(rows.at(-1)!.seq) : null, prev: null };
  }
}

function splitKey(key: string | undefined): [number | null, string | null] {
  if (key === undefined || key === '') return [null, null];
  const i = key.indexOf(':');
  const at = Number(key.slice(0, i));
  if (i < 1 || !Number.isSafeInteger(at)) throw new FleetgateError('BAD_REQUEST', 'malformed page key');
  return [at, key.slice(i + 1)];
}
