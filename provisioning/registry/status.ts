import type { PeerIdentity } from '../../firmware-sdk/protocol/certificate-identity.ts';
import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import type { RegistryReader } from './reader.ts';
import type { DeviceRecord } from './records.ts';

/**
 * The status of one certificate as the registry says now, in order: issued by us (serial and
 * fingerprint recorded for this device) → not revoked → within validity → device neither
 * suspended nor revoked → nothing denylisted (fingerprint, key, device). Used by the gateway on
 * every connection and by provisioning for renewal. Throws the coded reason.
 */
export function checkCertificateStatus(reader: RegistryReader, identity: PeerIdentity, now = Date.now()): DeviceRecord {
  const detail = { serial: identity.serial, fingerprint: identity.fingerprint, deviceId: identity.deviceId };
  // One query for all of it (one round trip on PostgreSQL); the checks below keep their order.
  const facts = reader.statusFacts({
    serial: identity.serial,
    fingerprint: identity.fingerprint,
    spki: identity.spkiSha256,
    now,
  });
  // Signed with the fleet's key but never recorded (or recorded for another certificate):
  // shuts out anything made with a stolen CA key outside the registry.
  if (
    facts === undefined ||
    facts.certFingerprint !== identity.fingerprint ||
    facts.certDeviceId !== identity.deviceId
  ) {
    throw new FleetgateError('CERT_UNKNOWN', `certificate ${identity.serial} was not issued by this registry`, {
      detail,
    });
  }
  if (facts.revocationReason !== null)
    throw new FleetgateError(
      'CERT_REVOKED',
      `certificate ${identity.serial} is revoked (reason ${facts.revocationReason})`,
      { detail },
    );
  if (now < facts.notBefore)
    throw new FleetgateError(
      'CERT_NOT_YET_VALID',
      `certificate ${identity.serial} is not valid before ${new Date(facts.notBefore).toISOString()}`,
      { detail },
    );
  if (now >= facts.notAfter)
    throw new FleetgateError(
      'CERT_EXPIRED',
      `certificate ${identity.serial} expired at ${new Date(facts.notAfter).toISOString()}`,
      { detail },
    );
  const device = facts.device;
  if (device === undefined)
    throw new FleetgateError('CERT_UNKNOWN', `device ${identity.deviceId} is not in the registry`, { detail });
  if (device.status === 'suspended')
    throw new FleetgateError('DEVICE_SUSPENDED', `device ${device.id} is suspended`, { detail });
  if (device.status === 'revoked')
    throw new FleetgateError('DEVICE_REVOKED', `device ${device.id} is revoked`, { detail });
  const denied = facts.denied;
  if (denied !== undefined)
    throw new FleetgateError(
      'DENYLISTED',
      `${denied.kind} ${denied.value} is denylisted${denied.reason ? `: ${denied.reason}` : ''}`,
      { detail: { ...detail, denied: denied.kind } },
    );
  return device;
}
