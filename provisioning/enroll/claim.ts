import { type DeviceType, deviceIdForSerial } from '../../firmware-sdk/protocol/device-id.ts';
import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import type { RegistryWriter } from '../registry/writer.ts';
import type { Authorized } from './method.ts';

/**
 * Enrollment by claim certificate (a factory-wide bootstrap identity, as in AWS IoT fleet
 * provisioning by claim): the claim must be current, the hardware serial on its allowlist and
 * not yet enrolled. The device (`hw-<serial>`) is created in the recording transaction, in the
 * **claim's** fleet and with one of the **claim's** device types: the holder of a claim
 * certificate cannot choose a fleet (route `allow.fleets`, `${device.fleet}` topics) or a type
 * the operator did not give the claim. A request naming another fleet or type is refused.
 */
export function authorizeClaim(
  registry: RegistryWriter,
  input: { claimName: string; hardwareSerial: unknown; type?: unknown; fleet?: unknown },
): Authorized {
  const deviceId = deviceIdForSerial(input.hardwareSerial as string);
  const hardwareSerial = input.hardwareSerial as string;
  registry.checkClaimEnrollment(input.claimName, hardwareSerial);
  const claim = registry.getClaim(input.claimName)!;
  const type = (input.type ?? claim.types[0]) as DeviceType;
  const detail = { claim: input.claimName, hardwareSerial };
  if (!claim.types.includes(type))
    throw new FleetgateError(
      'NOT_AUTHORIZED',
      `claim ${claim.name} enrolls ${claim.types.join(', ')}, not ${String(type)}`,
      { detail },
    );
  if (input.fleet !== undefined && input.fleet !== claim.fleet)
    throw new FleetgateError(
      'NOT_AUTHORIZED',
      `claim ${claim.name} enrolls into fleet ${claim.fleet}, not ${String(input.fleet)}`,
      { detail },
    );
  return {
    deviceId,
    method: 'claim',
    detail,
    record: (r, cert, actor) =>
      r.recordClaimEnrollment({ claimName: input.claimName, hardwareSerial, type, fleet: claim.fleet, cert }, actor),
  };
}
