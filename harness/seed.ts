import type { RegistryWriter } from '../provisioning/registry/writer.ts';

const TYPES = ['sensor', 'camera', 'gateway'] as const;

/**
 * Fills a registry with `devices` synthetic devices (`dev-000000`…) in ten fleets, of three
 * types, mostly active (every 20th suspended, every 50th revoked, every 7th pending), each
 * non-pending one with one certificate that expires within a year: for the console's paging
 * tests and benchmark, on either engine. Straight SQL in one transaction (seconds for 100k); the rows are not real
 * certificates and the audit log is not written.
 */
export function seedRegistry(writer: RegistryWriter, options: { devices: number; now?: number }): void {
  const now = options.now ?? Date.now();
  const day = 86_400_000;
  // Multi-row INSERTs (both engines take them): 500 rows a statement, so PostgreSQL's round trips stay few.
  const ROWS = 500;
  const insert = (sql: string, width: number) => {
    const prepared = new Map<number, ReturnType<typeof writer.sql.prepare>>();
    return (rows: unknown[][]) => {
      if (rows.length === 0) return;
      let stmt = prepared.get(rows.length);
      if (stmt === undefined) {
        stmt = writer.sql.prepare(
          `${sql} ${Array.from({ length: rows.length }, () => `(${Array(width).fill('?').join(', ')})`).join(', ')}`,
        );
        prepared.set(rows.length, stmt);
      }
      stmt.run(...rows.flat());
    };
  };
  const devices = insert('INSERT INTO devices (id, fleet, type, status, created_at, updated_at) VALUES', 6);
  const certs = insert(
    `INSERT INTO certificates (serial, device_id, fingerprint, spki_sha256, not_before, not_after, pem, issued_at, method, actor) VALUES`,
    10,
  );
  writer.sql
    .transaction(() => {
      for (let start = 0; start < options.devices; start += ROWS) {
        const d: unknown[][] = [];
        const c: unknown[][] = [];
        for (let i = start; i < Math.min(options.devices, start + ROWS); i++) {
          const id = `dev-${String(i).padStart(6, '0')}`;
          const status = i % 50 === 1 ? 'revoked' : i % 20 === 0 ? 'suspended' : i % 7 === 3 ? 'pending' : 'active';
          d.push([id, `f-${i % 10}`, TYPES[i % 3]!, status, now - 30 * day + i, now - 30 * day + i]);
          if (status === 'pending') continue;
          const hex = i.toString(16).padStart(8, '0');
          c.push([
            `5eed${hex}`,
            id,
            `f${hex}`.padEnd(64, '0'),
            `e${hex}`.padEnd(64, '1'),
            now - 10 * day,
            now + ((i % 365) + 1) * day,
            'PEM',
            now - 10 * day,
            'seed',
            'seed',
          ]);
        }
        devices(d);
        certs(c);
      }
    })
    .immediate();
}
