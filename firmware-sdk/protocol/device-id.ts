import { FleetgateError } from './errors.ts';

/**
 * Device ids appear inside MQTT topics and certificate SAN URIs, so the characters that
 * mean something there (`/ + #`, NUL, spaces, `:`) are impossible by construction.
 */
export const DEVICE_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

/**
 * `operator`: may look and act on the admin listener and the console; `auditor`: may look but
 * not act. Neither has MQTT topics by default.
 */
export const DEVICE_TYPES = Object.freeze(['sensor', 'gateway', 'camera', 'service', 'operator', 'auditor'] as const);
export type DeviceType = (typeof DEVICE_TYPES)[number];

/** What a claim certificate may enroll: devices, never services or operators. */
export const CLAIM_DEVICE_TYPES: readonly DeviceType[] = Object.freeze(['sensor', 'gateway', 'camera'] as const);

/** The SAN URI the CA writes into every device certificate. */
export const DEVICE_URI_PREFIX = 'urn:fleetgate:device:';

/** The SAN URI of a cluster member's certificate (`fleetgate node issue`): never a device's. */
export const NODE_URI_PREFIX = 'urn:fleetgate:node:';

export function isDeviceId(value: unknown): value is string {
  return typeof value === 'string' && DEVICE_ID_PATTERN.test(value);
}

/** Throws DEVICE_ID_INVALID unless `value` is a valid device id. */
export function assertDeviceId(value: unknown, what = 'device id'): string {
  if (isDeviceId(value)) return value;
  const shown =
    typeof value === 'string' ? JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value) : typeof value;
  throw new FleetgateError(
    'DEVICE_ID_INVALID',
    `${what} ${shown} is invalid: 1–128 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit`,
  );
}

export function isDeviceType(value: unknown): value is DeviceType {
  return typeof value === 'string' && (DEVICE_TYPES as readonly string[]).includes(value);
}

export function assertDeviceType(value: unknown): DeviceType {
  if (isDeviceType(value)) return value;
  throw new FleetgateError(
    'DEVICE_TYPE_INVALID',
    `device type ${JSON.stringify(value)} is invalid: one of ${DEVICE_TYPES.join(', ')}`,
  );
}

export function deviceUri(id: string): string {
  return DEVICE_URI_PREFIX + assertDeviceId(id);
}

/** Hardware serials enrolled by claim: the device id is derived from them, so the same alphabet. */
export const HARDWARE_SERIAL_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$/;

/**
 * The device id a claim enrollment creates for a hardware serial: `hw-<serial>`, exactly
 * (case kept). The prefix keeps claim-made ids apart from ids operators choose.
 */
export function deviceIdForSerial(hardwareSerial: string): string {
  if (typeof hardwareSerial !== 'string' || !HARDWARE_SERIAL_PATTERN.test(hardwareSerial)) {
    throw new FleetgateError(
      'BAD_REQUEST',
      'hardwareSerial must be 1–100 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit',
    );
  }
  return `hw-${hardwareSerial}`;
}

/** The SAN URI of a claim certificate (never a device identity: the gateway refuses it). */
export const CLAIM_URI_PREFIX = 'urn:fleetgate:claim:';
