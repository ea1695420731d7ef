import type { ErrorCode } from '../firmware-sdk/protocol/errors.ts';

/** Refusals that say a known device is still trying with a certificate it may no longer use. */
const TRACKED: ReadonlySet<string> = new Set<ErrorCode>([
  'CERT_REVOKED',
  'CERT_SUPERSEDED',
  'CERT_EXPIRED',
  'DEVICE_REVOKED',
  'DEVICE_SUSPENDED',
  'DENYLISTED',
]);

export interface RefusedDevice {
  deviceId: string;
  /** Refusals since the gateway started, by code. */
  codes: Record<string, number>;
  lastAt: number;
  lastSerial: string | null;
}

/**
 * Which devices keep connecting with a revoked, superseded or expired certificate (or while
 * revoked, suspended or denylisted), since this gateway started: the console's "still seen
 * connecting" finding (in a cluster, every node's book merged: {@link mergeRefused}). Bounded:
 * past `max` devices the one refused longest ago is forgotten.
 */
export class RefusedDevices {
  readonly #max: number;
  readonly #byDevice = new Map<string, RefusedDevice>();

  constructor(max = 10_000) {
    this.#max = max;
  }

  record(deviceId: string | undefined, serial: string | undefined, code: string): void {
    if (deviceId === undefined || !TRACKED.has(code)) return;
    let entry = this.#byDevice.get(deviceId);
    if (entry === undefined) {
      if (this.#byDevice.size >= this.#max) this.#byDevice.delete(this.#byDevice.keys().next().value as string);
      entry = { deviceId, codes: {}, lastAt: 0, lastSerial: null };
    } else {
      this.#byDevice.delete(deviceId); // to the end: the map is kept in order of the last refusal
    }
    entry.codes[code] = (entry.codes[code] ?? 0) + 1;
    entry.lastAt = Date.now();
    entry.lastSerial = serial ?? null;
    this.#byDevice.set(deviceId, entry);
  }

  /** The most recently refused first. */
  list(limit = 100): RefusedDevice[] {
    return [...this.#byDevice.values()]
      .reverse()
      .slice(0, limit)
      .map((e) => ({ ...e, codes: { ...e.codes } }));
  }

  get size(): number {
    return this.#byDevice.size;
  }
}

/** Whether a peer's answer is a list of {@link RefusedDevice} (another node's book, over NATS). */
function isRefusedDevice(x: unknown): x is RefusedDevice {
  const r = x as RefusedDevice;
  return (
    typeof r === 'object' &&
    r !== null &&
    typeof r.deviceId === 'string' &&
    typeof r.lastAt === 'number' &&
    (r.lastSerial === null || typeof r.lastSerial === 'string') &&
    typeof r.codes === 'object' &&
    r.codes !== null &&
    Object.values(r.codes).every((n) => typeof n === 'number')
  );
}

/**
 * Several nodes' books as one: per device the refusals summed by code, and the latest refusal's
 * time and certificate; the most recently refused first. Entries that are not well-formed are left out.
 */
export function mergeRefused(books: readonly unknown[][], limit = 100): RefusedDevice[] {
  const merged = new Map<string, RefusedDevice>();
  for (const book of books) {
    for (const r of book) {
      if (!isRefusedDevice(r)) continue;
      const m = merged.get(r.deviceId);
      if (m === undefined) {
        merged.set(r.deviceId, { ...r, codes: { ...r.codes } });
        continue;
      }
      for (const [code, n] of Object.entries(r.codes)) m.codes[code] = (m.codes[code] ?? 0) + n;
      if (r.lastAt > m.lastAt) {
        m.lastAt = r.lastAt;
        m.lastSerial = r.lastSerial;
      }
    }
  }
  return [...merged.values()].sort((a, b) => b.lastAt - a.lastAt).slice(0, limit);
}
