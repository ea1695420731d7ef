import type { ErrorCode } from '../firmware-sdk/protocol/errors.ts';

/** Refusals that say a known device is still trying with a certificate it may no longer use. */
const TRACKED: ReadonlySet<string> = new Set<ErrorCode>([
  'CERT_REVOKED', 'CERT_SUPERSEDED', 'CERT_EXPIRED', 'DEVICE_REVOKED', 'DEVICE_SUSPENDED', 'DENYLISTED',
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
 * connecting" finding. Bounded: past `max` devices the one refused longest ago is forgotten.
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
    return [...this.#byDevice.values()].reverse().slice(0, limit).map((e) => ({ ...e, codes: { ...e.codes } }));
  }

  get size(): number {
    return this.#byDevice.size;
  }
}
