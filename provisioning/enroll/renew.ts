import type { PeerIdentity } from '../../firmware-sdk/protocol/certificate-identity.ts';
import { checkCertificateStatus } from '../registry/status.ts';
import type { RegistryWriter } from '../registry/writer.ts';
import type { Authorized } from './method.ts';

/**
 * Renewal over mTLS with the device's current certificate (EST simplereenroll, RFC 7030 §4.2.2):
 * it must be one we issued, unexpired, unrevoked, its device neither suspended nor revoked and
 * nothing denylisted, and it must be the device's newest certificate (CERT_SUPERSEDED otherwise:
 * a stolen old key cannot chain renewals). The new certificate (a new key is allowed) supersedes
 * the old one, which stays valid until it expires (overlap).
 */
export function authorizeRenewal(registry: RegistryWriter, current: PeerIdentity): Authorized {
  const device = checkCertificateStatus(registry, current);
  registry.assertMayRenew(current.serial, device.id); // only the newest certificate renews (re-checked when recording)
  return {
    deviceId: device.id,
    method: 'renew',
    detail: { supersedes: current.serial },
    record: (r, cert, actor) => {
      checkCertificateStatus(r, current); // still good at the moment of recording
      return r.recordCertificate({ ...cert, supersedes: current.serial }, actor);
    },
  };
}
