/**
 * Least privilege on a PostgreSQL registry: one login role per kind of cluster member, reached
 * only with that kind's node certificate (`hostssl … cert map=fleetgate`, `pg_ident` maps the
 * certificate's CN `<role>:<name>` to the role):
 *
 * | role | may |
 * | --- | --- |
 * | `fleetgate_operator` | own the schema: `fleetgate init`, migrations, every operator command |
 * | `fleetgate_provisioning` | read and write rows (enroll, renew, tokens, claims, CRL number); no DDL |
 * | `fleetgate_gateway` | read every table and append audit rows; nothing else (enforced by GRANT, not a session setting) |
 *
 * A device certificate opens none of them: a device id has no `:`, so no `pg_ident` line matches it.
 */
export const PG_ROLES = {
  operator: 'fleetgate_operator',
  provisioning: 'fleetgate_provisioning',
  gateway: 'fleetgate_gateway',
} as const;

/**
 * The GRANTs the schema's owner applies after every migration (`fleetgate init`, any writer
 * that finds the schema current and owns it): idempotent, and only for roles that exist (a
 * registry without them — one PostgreSQL user for everything, a lab — is left as it is).
 */
export const GRANTS_SQL = `DO $grants$ BEGIN
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '${PG_ROLES.gateway}') THEN
    GRANT USAGE ON SCHEMA public TO ${PG_ROLES.gateway};
    REVOKE ALL ON ALL TABLES IN SCHEMA public FROM ${PG_ROLES.gateway};
    GRANT SELECT ON ALL TABLES IN SCHEMA public TO ${PG_ROLES.gateway};
    GRANT INSERT ON audit TO ${PG_ROLES.gateway};
  END IF;
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '${PG_ROLES.provisioning}') THEN
    GRANT USAGE ON SCHEMA public TO ${PG_ROLES.provisioning};
    GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO ${PG_ROLES.provisioning};
  END IF;
END $grants$`;

const NAME = '[A-Za-z0-9][A-Za-z0-9._-]*';

export interface PostgresSetup {
  /** Run once as a PostgreSQL superuser (psql), before `fleetgate init`. */
  sql: string;
  /** For `postgresql.conf`: TLS on, the server's certificate, the fleet's root as the client CA. */
  conf: string;
  /** For `pg_hba.conf` (before any broader line): certificate authentication only, over TLS only. */
  hba: string;
  /** For `pg_ident.conf`: node certificate CN → role. */
  ident: string;
  /** The registry URL each kind of member uses (its own data directory's files). */
  urls: Record<keyof typeof PG_ROLES, string>;
}

/**
 * What `fleetgate cluster postgres-setup` prints. `host`/`port`: where the members reach
 * PostgreSQL (the name must be in its certificate); `files`: where the server reads its
 * certificate, key and the fleet root; `dataDir`: the members' data directory, for their URLs.
 */
export function postgresSetup(options: {
  database: string;
  host: string;
  port: number;
  serverCert: string;
  serverKey: string;
  rootCert: string;
  dataDir: string;
}): PostgresSetup {
  const { database, host, port } = options;
  const roles = Object.values(PG_ROLES);
  const sql = [
    `CREATE ROLE ${PG_ROLES.operator} LOGIN;`,
    `CREATE ROLE ${PG_ROLES.provisioning} LOGIN;`,
    `CREATE ROLE ${PG_ROLES.gateway} LOGIN;`,
    `CREATE DATABASE ${database} OWNER ${PG_ROLES.operator};`,
    `REVOKE ALL ON DATABASE ${database} FROM PUBLIC;`,
    `GRANT CONNECT ON DATABASE ${database} TO ${roles.join(', ')};`,
  ].join('\n');
  const conf = [
    'ssl = on',
    `ssl_cert_file = '${options.serverCert}'`,
    `ssl_key_file = '${options.serverKey}'`,
    `ssl_ca_file = '${options.rootCert}'`,
    "ssl_min_protocol_version = 'TLSv1.2'",
  ].join('\n');
  const hba = [
    `hostssl ${database} ${roles.join(',')} 0.0.0.0/0 cert map=fleetgate`,
    `hostssl ${database} ${roles.join(',')} ::/0 cert map=fleetgate`,
    `host    ${database} ${roles.join(',')} all reject`,
  ].join('\n');
  const ident = (Object.entries(PG_ROLES) as [string, string][])
    .map(([kind, role]) => `fleetgate /^${kind}:${NAME}$ ${role}`)
    .join('\n');
  const url = (role: string) =>
    `postgres://${role}@${host.includes(':') ? `[${host}]` : host}:${port}/${database}?sslmode=verify-full` +
    `&sslrootcert=${options.dataDir}/ca/root.crt&sslcert=${options.dataDir}/node/node.crt&sslkey=${options.dataDir}/node/node.key`;
  return {
    sql,
    conf,
    hba,
    ident,
    urls: {
      operator: url(PG_ROLES.operator),
      provisioning: url(PG_ROLES.provisioning),
      gateway: url(PG_ROLES.gateway),
    },
  };
}
