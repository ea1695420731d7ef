/**
 * The fleetgate error catalogue: one table of stable codes shared by every surface.
 *
 * Each code carries its mapping to every surface so that no surface invents its own:
 * - `http`: status code of the JSON API / HTTPS plane (`{ "error": { "code", "message" } }`);
 * - `connack`: MQTT 3.1.1 CONNACK return code (aedes honours 2–5 only: 2 identifier rejected,
 *   3 server unavailable, 4 bad user name or password, 5 not authorized); [MQTT-3.2.2-3];
 * - `exit`: the `fleetgate` CLI exit code (2 is reserved for usage errors).
 * `message` is the short public text: what a device or remote client may learn. Details
 * (serials, fingerprints, causes) go in the error's `detail` to the log and the audit.
 *
 * Keep `docs/errors.md` in step: a test checks that every code is listed there.
 */

/** CLI exit codes, by category. */
export const EXIT = {
  internal: 1,
  usage: 2,
  notFound: 3,
  conflict: 4,
  rejected: 5,
  denied: 6,
  unavailable: 7,
} as const;

interface CatalogueEntry {
  readonly http: number;
  readonly connack: 2 | 3 | 4 | 5;
  readonly exit: number;
  readonly message: string;
}

const entry = (http: number, connack: 2 | 3 | 4 | 5, exit: number, message: string): CatalogueEntry =>
  Object.freeze({ http, connack, exit, message });

export const ERRORS = Object.freeze({
  // --- generic ---
  INTERNAL: entry(500, 3, EXIT.internal, 'internal error'),
  USAGE: entry(400, 5, EXIT.usage, 'invalid arguments'),
  CONFIG_INVALID: entry(500, 3, EXIT.usage, 'invalid configuration'),
  BAD_REQUEST: entry(400, 5, EXIT.rejected, 'malformed request'),
  PAYLOAD_TOO_LARGE: entry(413, 5, EXIT.rejected, 'request body too large'),
  UNSUPPORTED_MEDIA_TYPE: entry(415, 5, EXIT.rejected, 'unsupported media type'),
  RATE_LIMITED: entry(429, 3, EXIT.unavailable, 'too many requests'),
  QUOTA_EXCEEDED: entry(429, 3, EXIT.unavailable, 'quota exceeded'),
  REGISTRY_UNAVAILABLE: entry(503, 3, EXIT.unavailable, 'service unavailable'),
  CLUSTER_UNAVAILABLE: entry(503, 3, EXIT.unavailable, 'service unavailable'),
  CLUSTER_INSECURE: entry(500, 3, EXIT.usage, 'cluster link not authenticated'),
  CLUSTER_MESSAGE_INVALID: entry(500, 3, EXIT.internal, 'malformed message between nodes'),
  NODE_CERT_INVALID: entry(400, 5, EXIT.rejected, 'node certificate not acceptable'),
  NODE_CERT_EXISTS: entry(409, 5, EXIT.conflict, 'node certificate already there'),
  NODE_CERT_NOT_FOUND: entry(404, 5, EXIT.notFound, 'no node certificate'),
  CA_NOT_INITIALIZED: entry(503, 3, EXIT.unavailable, 'certificate authority not initialized'),
  CA_INVALID: entry(500, 3, EXIT.internal, 'certificate authority files are inconsistent'),
  PORT_IN_USE: entry(500, 3, EXIT.unavailable, 'port in use'),
  PORT_UNAVAILABLE: entry(500, 3, EXIT.unavailable, 'cannot listen'),
  CONNECTION_LIMIT: entry(429, 3, EXIT.unavailable, 'too many connections'),
  REQUEST_TIMEOUT: entry(408, 5, EXIT.unavailable, 'request timed out'),
  PATH_INVALID: entry(400, 5, EXIT.rejected, 'invalid request path'),
  STORAGE_READ_ONLY: entry(500, 3, EXIT.unavailable, 'storage not writable'),
  RUNTIME_UNSUPPORTED: entry(500, 3, EXIT.usage, 'runtime not supported'),
  WORKER_FAILED: entry(503, 3, EXIT.unavailable, 'gateway worker failed'),

  // --- devices ---
  DEVICE_ID_INVALID: entry(400, 2, EXIT.usage, 'invalid device id'),
  DEVICE_TYPE_INVALID: entry(400, 5, EXIT.usage, 'invalid device type'),
  DEVICE_NOT_FOUND: entry(404, 5, EXIT.notFound, 'device not found'),
  DEVICE_EXISTS: entry(409, 5, EXIT.conflict, 'device already exists'),
  PARENT_INVALID: entry(400, 5, EXIT.usage, 'invalid parent device'),
  DEVICE_STATE_CONFLICT: entry(409, 5, EXIT.conflict, 'device state does not allow this'),
  DEVICE_SUSPENDED: entry(403, 5, EXIT.denied, 'device suspended'),
  DEVICE_REVOKED: entry(403, 5, EXIT.denied, 'device revoked'),

  // --- certificates and status ---
  CERT_REQUIRED: entry(401, 5, EXIT.denied, 'client certificate required'),
  CERT_INVALID: entry(403, 5, EXIT.denied, 'certificate not acceptable'),
  CERT_UNKNOWN: entry(403, 5, EXIT.denied, 'certificate not acceptable'),
  CERT_EXPIRED: entry(403, 5, EXIT.denied, 'certificate expired'),
  CERT_NOT_YET_VALID: entry(403, 5, EXIT.denied, 'certificate not yet valid'),
  CERT_REVOKED: entry(403, 5, EXIT.denied, 'certificate revoked'),
  CERT_NOT_FOUND: entry(404, 5, EXIT.notFound, 'certificate not found'),
  CERT_SUPERSEDED: entry(403, 5, EXIT.denied, 'certificate superseded'),
  DENYLISTED: entry(403, 5, EXIT.denied, 'not authorized'),
  DENY_NOT_FOUND: entry(404, 5, EXIT.notFound, 'denylist entry not found'),
  NOT_AUTHORIZED: entry(403, 5, EXIT.denied, 'not authorized'),

  // --- policy ---
  CLIENT_ID_MISMATCH: entry(403, 2, EXIT.denied, 'client id must be the device id'),
  TOPIC_DENIED: entry(403, 5, EXIT.denied, 'topic not allowed'),
  ROUTE_DENIED: entry(403, 5, EXIT.denied, 'route not allowed'),
  ROUTE_NOT_FOUND: entry(404, 5, EXIT.notFound, 'no such route'),
  PROTOCOL_UNSUPPORTED: entry(400, 5, EXIT.rejected, 'protocol version not supported'),
  KEEPALIVE_OUT_OF_RANGE: entry(400, 2, EXIT.rejected, 'keepalive outside the allowed range'),
  ORIGIN_UNREACHABLE: entry(502, 3, EXIT.unavailable, 'origin unreachable'),
  ORIGIN_TIMEOUT: entry(504, 3, EXIT.unavailable, 'origin timed out'),

  // --- enrollment ---
  CSR_INVALID: entry(400, 5, EXIT.rejected, 'invalid certificate signing request'),
  KEY_TOO_WEAK: entry(400, 5, EXIT.rejected, 'key too weak'),
  KEY_UNSUPPORTED: entry(400, 5, EXIT.rejected, 'key type not supported'),
  TOKEN_INVALID: entry(401, 4, EXIT.denied, 'invalid enrollment token'),
  TOKEN_EXPIRED: entry(401, 4, EXIT.denied, 'enrollment token expired'),
  TOKEN_USED: entry(409, 4, EXIT.conflict, 'enrollment token already used'),
  SERIAL_NOT_ALLOWED: entry(403, 5, EXIT.denied, 'hardware serial not allowed'),
  SERIAL_ALREADY_ENROLLED: entry(409, 5, EXIT.conflict, 'hardware serial already enrolled'),
  CLAIM_REVOKED: entry(403, 5, EXIT.denied, 'claim certificate revoked'),
} satisfies Record<string, CatalogueEntry>);

export type ErrorCode = keyof typeof ERRORS;

export const ERROR_CODES = Object.freeze(Object.keys(ERRORS) as ErrorCode[]);

export function isErrorCode(value: unknown): value is ErrorCode {
  return typeof value === 'string' && Object.hasOwn(ERRORS, value);
}

/**
 * A coded error. `message` is for operators and logs; {@link FleetgateError.publicMessage}
 * is what a remote party may see; `detail` holds structured facts for the log and audit.
 *
 * @example
 * throw new FleetgateError('CERT_REVOKED', `certificate ${serial} revoked`, { detail: { serial } });
 */
export class FleetgateError extends Error {
  readonly code: ErrorCode;
  readonly detail: Readonly<Record<string, unknown>>;

  constructor(code: ErrorCode, message?: string, options: { detail?: Record<string, unknown>; cause?: unknown } = {}) {
    super(message ?? ERRORS[code].message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'FleetgateError';
    this.code = code;
    this.detail = Object.freeze({ ...options.detail });
  }

  get publicMessage(): string {
    return ERRORS[this.code].message;
  }

  get httpStatus(): number {
    return ERRORS[this.code].http;
  }

  get connackCode(): 2 | 3 | 4 | 5 {
    return ERRORS[this.code].connack;
  }

  get exitCode(): number {
    return ERRORS[this.code].exit;
  }
}

/**
 * Anything uncoded becomes INTERNAL with its text hidden from remote parties: fail closed.
 * Caller bugs (TypeError and friends) are wrapped the same way at the edge.
 */
export function toFleetgateError(err: unknown): FleetgateError {
  if (err instanceof FleetgateError) return err;
  const text = err instanceof Error ? err.message : String(err);
  // A file or database that must be written cannot be (a read-only data or identity directory,
  // a read-only file system, no permission): its own code, not INTERNAL — the operator can fix it.
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code === 'string' && (READ_ONLY_ERRNO.has(code) || code.startsWith('SQLITE_READONLY'))) {
    return new FleetgateError('STORAGE_READ_ONLY', `cannot write: ${text}`, {
      cause: err,
      ...(typeof (err as { path?: unknown }).path === 'string' && { detail: { path: (err as { path: string }).path } }),
    });
  }
  // The registry is there but busy: SQLite's write lock held by another process past the busy
  // timeout, or a PostgreSQL lock or statement timeout. Not a bug: the caller may retry.
  // (the PostgreSQL facade reports a SQLSTATE as `PG_<code>`)
  if (typeof code === 'string' && (REGISTRY_BUSY.has(code.replace(/^PG_/, '')) || /^SQLITE_(BUSY|LOCKED)/.test(code))) {
    return new FleetgateError('REGISTRY_UNAVAILABLE', `registry busy (${code}): ${text}`, { cause: err });
  }
  return new FleetgateError('INTERNAL', text, { cause: err });
}

/** PostgreSQL SQLSTATEs of a busy registry: lock_not_available, query_canceled (statement_timeout). */
const REGISTRY_BUSY = new Set(['55P03', '57014']);

const READ_ONLY_ERRNO = new Set(['EROFS', 'EACCES', 'EPERM']);
