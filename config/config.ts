import { existsSync, readFileSync } from 'node:fs';
import { userInfo } from 'node:os';
import { join, resolve } from 'node:path';
import { FleetgateError } from '../firmware-sdk/protocol/errors.ts';
import { parseDuration } from './duration.ts';

/**
 * Configuration, resolved once at the entry point: defaults → file → environment → flags,
 * validated all at once (every problem reported together), then frozen. Slices are passed
 * down explicitly; nothing below reads the environment.
 *
 * The file is JSON: `--config FILE`, `FLEETGATE_CONFIG`, or `fleetgate.json` in the data dir.
 * Durations are strings with a unit (`30d`, `24h`, `90s`).
 */
export interface FleetgateConfig {
  dataDir: string;
  /** Who the audit log says acted (CLI: `cli:<user>`). */
  actor: string;
  ca: {
    /** Extra names (DNS or IP) for the gateway's server certificate. */
    hostnames: readonly string[];
    rootValidityMs: number;
    intermediateValidityMs: number;
    serverValidityMs: number;
    /** Lifetime of device certificates. */
    leafValidityMs: number;
    /** How long a published CRL stays current (nextUpdate). */
    crlValidityMs: number;
  };
  enrollment: {
    /** Lifetime of one-time enrollment tokens. */
    tokenTtlMs: number;
  };
}

const DAY = 86_400_000;

export const DEFAULTS: FleetgateConfig = Object.freeze({
  dataDir: './data',
  actor: 'cli',
  ca: {
    hostnames: [],
    rootValidityMs: 3650 * DAY, // 10 years
    intermediateValidityMs: 1825 * DAY, // 5 years
    serverValidityMs: 365 * DAY, // 1 year
    leafValidityMs: 30 * DAY, // 30 days
    crlValidityMs: 7 * DAY, // 7 days
  },
  enrollment: {
    tokenTtlMs: DAY, // 24 hours
  },
});

/** Where each setting may come from: its path in the file, its environment variable, its parser. */
const SETTINGS = [
  { key: 'ca.hostnames', file: ['ca', 'hostnames'], env: 'FLEETGATE_HOSTNAMES', kind: 'list' },
  { key: 'ca.rootValidityMs', file: ['ca', 'rootValidity'], env: 'FLEETGATE_ROOT_VALIDITY', kind: 'duration' },
  { key: 'ca.intermediateValidityMs', file: ['ca', 'intermediateValidity'], env: 'FLEETGATE_INTERMEDIATE_VALIDITY', kind: 'duration' },
  { key: 'ca.serverValidityMs', file: ['ca', 'serverValidity'], env: 'FLEETGATE_SERVER_VALIDITY', kind: 'duration' },
  { key: 'ca.leafValidityMs', file: ['ca', 'leafValidity'], env: 'FLEETGATE_LEAF_VALIDITY', kind: 'duration' },
  { key: 'ca.crlValidityMs', file: ['ca', 'crlValidity'], env: 'FLEETGATE_CRL_VALIDITY', kind: 'duration' },
  { key: 'enrollment.tokenTtlMs', file: ['enrollment', 'tokenTtl'], env: 'FLEETGATE_TOKEN_TTL', kind: 'duration' },
] as const;

export interface LoadOptions {
  /** `--data`; else FLEETGATE_DATA; else ./data. */
  dataDir?: string;
  /** `--config`; else FLEETGATE_CONFIG; else <data>/fleetgate.json if it exists. */
  configFile?: string;
  /** Flag values by setting key (e.g. `{ 'ca.leafValidityMs': '2m' }`), applied last. */
  flags?: Record<string, string | readonly string[] | undefined>;
  env?: NodeJS.ProcessEnv;
}

function parseValue(kind: 'list' | 'duration', value: unknown, where: string, problems: string[]): unknown {
  if (kind === 'duration') {
    try {
      return parseDuration(String(value), where);
    } catch (err) {
      problems.push((err as Error).message);
      return undefined;
    }
  }
  const list = typeof value === 'string' ? value.split(',').map((s) => s.trim()).filter(Boolean) : value;
  if (!Array.isArray(list) || !list.every((v) => typeof v === 'string' && /^[A-Za-z0-9.:*-]+$/.test(v))) {
    problems.push(`${where} must be a list of host names or IP addresses`);
    return undefined;
  }
  return list;
}

function readFile(file: string, problems: string[]): Record<string, unknown> {
  try {
    const parsed: unknown = JSON.parse(readFileSync(file, 'utf8'));
    if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) throw new Error('not a JSON object');
    return parsed as Record<string, unknown>;
  } catch (err) {
    problems.push(`config file ${file}: ${(err as Error).message}`);
    return {};
  }
}

function setPath(target: Record<string, unknown>, key: string, value: unknown): void {
  const [section, field] = key.split('.') as [string, string];
  (target[section] as Record<string, unknown>)[field] = value;
}

export function loadConfig(options: LoadOptions = {}): FleetgateConfig {
  const env = options.env ?? process.env;
  const problems: string[] = [];
  const dataDir = resolve(options.dataDir ?? env.FLEETGATE_DATA ?? DEFAULTS.dataDir);
  const config = structuredClone(DEFAULTS) as FleetgateConfig & Record<string, unknown>;
  config.dataDir = dataDir;
  config.actor = env.FLEETGATE_ACTOR ?? `cli:${safeUser()}`;

  const explicitFile = options.configFile ?? env.FLEETGATE_CONFIG;
  const file = explicitFile ?? join(dataDir, 'fleetgate.json');
  if (explicitFile !== undefined && !existsSync(explicitFile)) problems.push(`config file ${explicitFile} does not exist`);
  const fromFile = existsSync(file) ? readFile(file, problems) : {};

  for (const s of SETTINGS) {
    const sources: [unknown, string][] = [
      [(fromFile[s.file[0]] as Record<string, unknown> | undefined)?.[s.file[1]], `${file}: ${s.file.join('.')}`],
      [env[s.env], s.env],
      [options.flags?.[s.key], `flag for ${s.key}`],
    ];
    for (const [raw, where] of sources) {
      if (raw === undefined) continue;
      const value = parseValue(s.kind, raw, where, problems);
      if (value !== undefined) setPath(config, s.key, value);
    }
  }
  if (problems.length > 0) {
    throw new FleetgateError('CONFIG_INVALID', `invalid configuration:\n  - ${problems.join('\n  - ')}`, { detail: { problems } });
  }
  return deepFreeze(config);
}

function safeUser(): string {
  try {
    return userInfo().username;
  } catch {
    return String(process.getuid?.() ?? 'unknown');
  }
}

function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === 'object') {
    for (const v of Object.values(value)) deepFreeze(v);
    Object.freeze(value);
  }
  return value;
}
