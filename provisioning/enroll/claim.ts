import { deviceIdForSerial, type DeviceType } from '../../firmware-sdk/protocol/device-id.ts';
import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import type { RegistryWriter } from '../registry/writer.ts';
import type { Authorized } from './method.ts';

export const CLAIM_DEVICE_TYPES: readonly DeviceType[] = ['sensor', 'gateway', 'camera'];

/**
 * Enrollment by claim certificate (a factory-wide bootstrap identity, as in AWS IoT fleet
 * provisioning by claim): the claim must be current, the hardware serial on its allowlist and
 * not yet enrolled. The device (`hw-<serial>`) is created in the recording transaction.
 */
export function authorizeClaim(
  registry: RegistryWriter,
  input: { claimName: string; hardwareSerial: unknown; type?: unknown; fleet?: unknown },
): Authorized {
  const deviceId = deviceIdForSerial(input.hardwareSerial as string);
  const hardwareSerial = input.hardwareSerial as string;
  const type = (input.type ?? 'sensor') as DeviceType;
  if (!CLAIM_DEVICE_TYPES.includes(type)) throw new FleetgateError('BAD_REQUEST', `type must be one of ${CLAIM_DEVICE_TYPES.join(', ')}`);
  const fleet = input.fleet ?? 'default';
  if (typeof fleet !== 'string') throw new FleetgateError('BAD_REQUEST', 'fleet must be a string');
  registry.checkClaimEnrollment(input.claimName, hardwareSerial);
  return {
    deviceId, method: 'claim', detail: { claim: input.claimName, hardwareSerial },
    record: (r, cert, actor) => r.recordClaimEnrollment({ claimName: input.claimName, hardwareSerial, type, fleet, cert }, actor),
  };
}
