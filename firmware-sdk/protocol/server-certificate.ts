import { checkServerIdentity, type PeerCertificate } from 'node:tls';
import { CLAIM_URI_PREFIX, DEVICE_URI_PREFIX } from './device-id.ts';

const SERVER_AUTH = '1.3.6.1.5.5.7.3.1';

/**
 * How a fleetgate client knows whom it talks to. Every device certificate chains to the same
 * fleet CA as the gateway's, so "signed by the fleet CA" alone would let one extracted device key
 * impersonate the gateway to every other device. A server certificate is accepted only when:
 *
 * - its name matches the host of the URL the client was given (RFC 6125; Node's
 *   `checkServerIdentity`: DNS SAN for names, IP SAN for addresses), sent as SNI for names;
 * - it carries the `serverAuth` extended key usage (RFC 5280 §4.2.1.12) — fleetgate's device and
 *   claim certificates carry `clientAuth` only;
 * - it names no fleetgate device or claim (a `urn:fleetgate:device:`/`urn:fleetgate:claim:` SAN
 *   URI): defence in depth should a device certificate ever be issued with `serverAuth`.
 *
 * Pass it as `checkServerIdentity` and let the client derive the SNI name from the URL (Node,
 * undici and mqtt.js do; for an IP address no SNI is sent, RFC 6066 §3): Node calls it with that
 * name, or with the connect host when there is none. Never pin `servername` to a fixed name.
 */
export function verifyServerCertificate(host: string, cert: PeerCertificate): Error | undefined {
  const nameError = checkServerIdentity(host, cert);
  if (nameError !== undefined) return nameError;
  const eku = (cert as PeerCertificate & { ext_key_usage?: string[] }).ext_key_usage;
  if (eku === undefined || !eku.includes(SERVER_AUTH)) {
    return Object.assign(new Error(`server certificate for ${host} lacks the serverAuth extended key usage`), {
      code: 'ERR_TLS_CERT_NOT_SERVER',
    });
  }
  const san = cert.subjectaltname ?? '';
  if (san.includes(`URI:${DEVICE_URI_PREFIX}`) || san.includes(`URI:${CLAIM_URI_PREFIX}`)) {
    return Object.assign(new Error(`server certificate for ${host} is a fleetgate device or claim certificate`), {
      code: 'ERR_TLS_CERT_NOT_SERVER',
    });
  }
  return undefined;
}
