/**
 * Versioned migrations of the fleet registry. `PRAGMA user_version` holds the number of
 * migrations applied; each runs in its own transaction. Append, never edit a shipped one.
 *
 * Times are integer milliseconds since the Unix epoch (UTC). Hex values (serials,
 * fingerprints, SPKI hashes) are lowercase without separators.
 */
export const MIGRATIONS: readonly string[] = [
  // 1: the foundation
  `
  CREATE TABLE devices (
    id          TEXT PRIMARY KEY,
    fleet       TEXT NOT NULL DEFAULT 'default',
    type        TEXT NOT NULL CHECK (type IN ('sensor','gateway','camera','service','operator')),
    parent      TEXT REFERENCES devices(id),
    status      TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending','active','suspended','revoked')),
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    metadata    TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(metadata))
  ) STRICT;
  CREATE INDEX devices_parent ON devices(parent) WHERE parent IS NOT NULL;

  -- Enrollment tokens are stored as SHA-256 of the token: the registry never holds one in clear.
  CREATE TABLE enrollment_tokens (
    hash        TEXT PRIMARY KEY,
    device_id   TEXT NOT NULL REFERENCES devices(id),
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER,
    used_serial TEXT,
    actor       TEXT NOT NULL
  ) STRICT;
  CREATE INDEX enrollment_tokens_device ON enrollment_tokens(device_id);

  CREATE TABLE certificates (
    serial        TEXT PRIMARY KEY,
    device_id     TEXT NOT NULL REFERENCES devices(id),
    fingerprint   TEXT NOT NULL UNIQUE,
    spki_sha256   TEXT NOT NULL,
    not_before    INTEGER NOT NULL,
    not_after     INTEGER NOT NULL,
    pem           TEXT NOT NULL,
    issued_at     INTEGER NOT NULL,
    method        TEXT NOT NULL,
    actor         TEXT NOT NULL,
    superseded_by TEXT
  ) STRICT;
  CREATE INDEX certificates_device ON certificates(device_id);
  CREATE INDEX certificates_spki ON certificates(spki_sha256);

  -- RFC 5280 §5.3.1 reason codes.
  CREATE TABLE revocations (
    serial      TEXT PRIMARY KEY REFERENCES certificates(serial),
    reason      INTEGER NOT NULL CHECK (reason IN (0,1,2,3,4,5,9,10)),
    revoked_at  INTEGER NOT NULL,
    actor       TEXT NOT NULL
  ) STRICT;

  CREATE TABLE denylist (
    kind        TEXT NOT NULL CHECK (kind IN ('fingerprint','spki','device')),
    value       TEXT NOT NULL,
    reason      TEXT,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER,
    actor       TEXT NOT NULL,
    PRIMARY KEY (kind, value)
  ) STRICT;

  -- Append-only: AUTOINCREMENT never reuses a sequence number; the triggers refuse changes.
  CREATE TABLE audit (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    at      INTEGER NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    subject TEXT,
    detail  TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(detail))
  );
  CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
  CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;

  -- A feed of status changes (revoke, suspend, resume, deny) that live gateways tail by seq
  -- to cut sessions and refresh their in-memory view without a query per packet.
  CREATE TABLE status_events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    at         INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    device_id  TEXT,
    serial     TEXT,
    value      TEXT
  ) STRICT;

  CREATE TABLE crl_state (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    number     INTEGER NOT NULL
  ) STRICT;
  INSERT INTO crl_state (id, number) VALUES (1, 0);
  `,
  // 2: claim certificates (factory bootstrap identities) and their hardware-serial allowlists
  `
  CREATE TABLE claims (
    name        TEXT PRIMARY KEY,
    serial      TEXT NOT NULL UNIQUE,
    fingerprint TEXT NOT NULL UNIQUE,
    not_after   INTEGER NOT NULL,
    pem         TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER,
    actor       TEXT NOT NULL
  ) STRICT;

  -- A hardware serial belongs to one claim and enrolls once.
  CREATE TABLE claim_serials (
    hardware_serial TEXT PRIMARY KEY,
    claim           TEXT NOT NULL REFERENCES claims(name),
    added_at        INTEGER NOT NULL,
    enrolled_at     INTEGER,
    device_id       TEXT REFERENCES devices(id)
  ) STRICT;
  CREATE INDEX claim_serials_claim ON claim_serials(claim);
  `,
  // 3: a claim, not the enrolling request, decides the fleet and the device types it enrolls
  `
  ALTER TABLE claims ADD COLUMN fleet TEXT NOT NULL DEFAULT 'default';
  ALTER TABLE claims ADD COLUMN types TEXT NOT NULL DEFAULT 'sensor';
  `,
  // 4: the auditor type (may look at the console, not act), and the indexes the console pages by.
  // SQLite cannot change a CHECK in place: the table is rebuilt (foreign keys are off while a
  // migration runs and checked before it commits, see open.ts).
  `
  CREATE TABLE devices_v4 (
    id          TEXT PRIMARY KEY,
    fleet       TEXT NOT NULL DEFAULT 'default',
    type        TEXT NOT NULL CHECK (type IN ('sensor','gateway','camera','service','operator','auditor')),
    parent      TEXT REFERENCES devices(id),
    status      TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending','active','suspended','revoked')),
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    metadata    TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(metadata))
  ) STRICT;
  INSERT INTO devices_v4 (id, fleet, type, parent, status, created_at, updated_at, metadata)
    SELECT id, fleet, type, parent, status, created_at, updated_at, metadata FROM devices;
  DROP TABLE devices;
  ALTER TABLE devices_v4 RENAME TO devices;
  CREATE INDEX devices_parent ON devices(parent) WHERE parent IS NOT NULL;
  CREATE INDEX devices_fleet ON devices(fleet, id);
  CREATE INDEX devices_type ON devices(type, id);
  CREATE INDEX devices_status ON devices(status, id);
  CREATE INDEX certificates_not_after ON certificates(not_after);
  CREATE INDEX audit_subject ON audit(subject, seq);
  `,
];

/** Text compared byte by byte in PostgreSQL, as SQLite does (ordering and keyset paging agree). */
const T = 'TEXT COLLATE "C"';

/**
 * The same registry on PostgreSQL (issue #12). `version` is the SQLite schema version it matches:
 * a PostgreSQL registry starts at the current schema (the first entry creates all of version 4
 * at once); a later change appends to {@link MIGRATIONS} and here with the same number, and
 * `test/registry-engines.test.ts` compares the two engines' tables and columns so they cannot
 * drift apart. Differences, each for a reason: BIGINT for times (ms), identity columns for
 * SQLite's AUTOINCREMENT and for the `rowid` two queries order by, a trigger function for the
 * append-only audit log, and a trigger that rings `pg_notify('fleetgate_status')` with every
 * status event — in the transaction that writes it, so the doorbell rings exactly when the
 * event commits.
 */
export const PG_MIGRATIONS: readonly { version: number; sql: string }[] = [
  {
    version: 4,
    sql: `
  CREATE TABLE devices (
    id          ${T} PRIMARY KEY,
    fleet       ${T} NOT NULL DEFAULT 'default',
    type        ${T} NOT NULL CHECK (type IN ('sensor','gateway','camera','service','operator','auditor')),
    parent      ${T} REFERENCES devices(id),
    status      ${T} NOT NULL DEFAULT 'pending' CHECK (status IN ('pending','active','suspended','revoked')),
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    metadata    TEXT NOT NULL DEFAULT '{}' CHECK (metadata::jsonb IS NOT NULL)
  );
  CREATE INDEX devices_parent ON devices(parent) WHERE parent IS NOT NULL;
  CREATE INDEX devices_fleet ON devices(fleet, id);
  CREATE INDEX devices_type ON devices(type, id);
  CREATE INDEX devices_status ON devices(status, id);

  CREATE TABLE enrollment_tokens (
    hash        ${T} PRIMARY KEY,
    device_id   ${T} NOT NULL REFERENCES devices(id),
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT,
    used_serial ${T},
    actor       ${T} NOT NULL
  );
  CREATE INDEX enrollment_tokens_device ON enrollment_tokens(device_id);

  CREATE TABLE certificates (
    serial        ${T} PRIMARY KEY,
    device_id     ${T} NOT NULL REFERENCES devices(id),
    fingerprint   ${T} NOT NULL UNIQUE,
    spki_sha256   ${T} NOT NULL,
    not_before    BIGINT NOT NULL,
    not_after     BIGINT NOT NULL,
    pem           TEXT NOT NULL,
    issued_at     BIGINT NOT NULL,
    method        ${T} NOT NULL,
    actor         ${T} NOT NULL,
    superseded_by ${T},
    rowid         BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE
  );
  CREATE INDEX certificates_device ON certificates(device_id);
  CREATE INDEX certificates_spki ON certificates(spki_sha256);
  CREATE INDEX certificates_not_after ON certificates(not_after);

  CREATE TABLE revocations (
    serial      ${T} PRIMARY KEY REFERENCES certificates(serial),
    reason      INTEGER NOT NULL CHECK (reason IN (0,1,2,3,4,5,9,10)),
    revoked_at  BIGINT NOT NULL,
    actor       ${T} NOT NULL,
    rowid       BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE
  );

  CREATE TABLE denylist (
    kind        ${T} NOT NULL CHECK (kind IN ('fingerprint','spki','device')),
    value       ${T} NOT NULL,
    reason      TEXT,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT,
    actor       ${T} NOT NULL,
    PRIMARY KEY (kind, value)
  );

  CREATE TABLE audit (
    seq     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at      BIGINT NOT NULL,
    actor   ${T} NOT NULL,
    action  ${T} NOT NULL,
    subject ${T},
    detail  TEXT NOT NULL DEFAULT '{}' CHECK (detail::jsonb IS NOT NULL)
  );
  CREATE INDEX audit_subject ON audit(subject, seq);
  CREATE FUNCTION fleetgate_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $f$
    BEGIN RAISE EXCEPTION 'audit log is append-only'; END $f$;
  CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION fleetgate_audit_append_only();
  CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION fleetgate_audit_append_only();

  CREATE TABLE status_events (
    seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         BIGINT NOT NULL,
    kind       ${T} NOT NULL,
    device_id  ${T},
    serial     ${T},
    value      ${T}
  );
  CREATE FUNCTION fleetgate_status_notify() RETURNS trigger LANGUAGE plpgsql AS $f$
    BEGIN PERFORM pg_notify('fleetgate_status', NEW.seq::text); RETURN NULL; END $f$;
  CREATE TRIGGER status_events_notify AFTER INSERT ON status_events
    FOR EACH ROW EXECUTE FUNCTION fleetgate_status_notify();

  CREATE TABLE crl_state (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    number     BIGINT NOT NULL
  );
  INSERT INTO crl_state (id, number) VALUES (1, 0);

  CREATE TABLE claims (
    name        ${T} PRIMARY KEY,
    serial      ${T} NOT NULL UNIQUE,
    fingerprint ${T} NOT NULL UNIQUE,
    not_after   BIGINT NOT NULL,
    pem         TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT,
    actor       ${T} NOT NULL,
    fleet       ${T} NOT NULL DEFAULT 'default',
    types       ${T} NOT NULL DEFAULT 'sensor'
  );

  CREATE TABLE claim_serials (
    hardware_serial ${T} PRIMARY KEY,
    claim           ${T} NOT NULL REFERENCES claims(name),
    added_at        BIGINT NOT NULL,
    enrolled_at     BIGINT,
    device_id       ${T} REFERENCES devices(id)
  );
  CREATE INDEX claim_serials_claim ON claim_serials(claim);
  `,
  },
];
