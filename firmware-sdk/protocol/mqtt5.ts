import { type ErrorCode, isErrorCode } from './errors.ts';

/**
 * MQTT 5 reason codes as fleetgate uses them (the wire contract between the gateway and the
 * SDK). The gateway's refusals carry a reason code and, as the reason string, the catalogue code
 * and its public message (`"CERT_REVOKED: certificate revoked"`): a device learns exactly why
 * without a second request, and a client that ignores reason strings still gets the right
 * reason code class.
 */
export const REASON = Object.freeze({
  SUCCESS: 0x00,
  DISCONNECT_WITH_WILL: 0x04,
  NO_SUBSCRIPTION_EXISTED: 0x11,
  UNSPECIFIED: 0x80,
  MALFORMED_PACKET: 0x81,
  PROTOCOL_ERROR: 0x82,
  IMPLEMENTATION_SPECIFIC: 0x83,
  UNSUPPORTED_PROTOCOL_VERSION: 0x84,
  CLIENT_IDENTIFIER_NOT_VALID: 0x85,
  BAD_USER_NAME_OR_PASSWORD: 0x86,
  NOT_AUTHORIZED: 0x87,
  SERVER_UNAVAILABLE: 0x88,
  SERVER_BUSY: 0x89,
  BANNED: 0x8a,
  SERVER_SHUTTING_DOWN: 0x8b,
  BAD_AUTHENTICATION_METHOD: 0x8c,
  KEEP_ALIVE_TIMEOUT: 0x8d,
  SESSION_TAKEN_OVER: 0x8e,
  TOPIC_FILTER_INVALID: 0x8f,
  TOPIC_NAME_INVALID: 0x90,
  PACKET_ID_IN_USE: 0x91,
  RECEIVE_MAXIMUM_EXCEEDED: 0x93,
  TOPIC_ALIAS_INVALID: 0x94,
  PACKET_TOO_LARGE: 0x95,
  MESSAGE_RATE_TOO_HIGH: 0x96,
  QUOTA_EXCEEDED: 0x97,
  ADMINISTRATIVE_ACTION: 0x98,
  PAYLOAD_FORMAT_INVALID: 0x99,
  RETAIN_NOT_SUPPORTED: 0x9a,
  QOS_NOT_SUPPORTED: 0x9b,
  SHARED_SUBSCRIPTIONS_NOT_SUPPORTED: 0x9e,
  CONNECTION_RATE_EXCEEDED: 0x9f,
});

/** Reason codes each server packet may carry (MQTT 5 §3.2.2.2, §3.4.2.1, §3.9.3, §3.14.2.1). */
const VALID = {
  connack: new Set([
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x8c, 0x90, 0x95, 0x97, 0x99, 0x9a, 0x9b,
    0x9c, 0x9d, 0x9f,
  ]),
  disconnect: new Set([
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8b, 0x8d, 0x8e, 0x8f, 0x90, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98,
    0x99, 0x9a, 0x9b, 0x9c, 0x9d, 0x9e, 0x9f, 0xa0, 0xa1, 0xa2,
  ]),
  puback: new Set([0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99]),
  suback: new Set([0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8f, 0x91, 0x97, 0x9e, 0xa1, 0xa2]),
} as const;

/**
 * The reason code a refusal with this catalogue code is sent with, in `packet` (each packet has
 * its own list: Banned and Server unavailable exist only in CONNACK; a DISCONNECT says Not
 * authorized or Server busy instead, and the reason string still names the exact code).
 */
export function reasonCodeFor(code: ErrorCode, packet: keyof typeof VALID = 'connack'): number {
  const wanted = preferred(code);
  if (VALID[packet].has(wanted)) return wanted;
  if (wanted === REASON.SERVER_UNAVAILABLE && VALID[packet].has(REASON.SERVER_BUSY)) return REASON.SERVER_BUSY;
  return VALID[packet].has(REASON.NOT_AUTHORIZED) ? REASON.NOT_AUTHORIZED : REASON.UNSPECIFIED;
}

function preferred(code: ErrorCode): number {
  switch (code) {
    case 'REGISTRY_UNAVAILABLE':
    case 'INTERNAL':
    case 'STORAGE_READ_ONLY':
      return REASON.SERVER_UNAVAILABLE;
    case 'RATE_LIMITED':
      return REASON.CONNECTION_RATE_EXCEEDED; // at CONNECT: too many connects a minute
    case 'QUOTA_EXCEEDED':
    case 'CONNECTION_LIMIT':
      return REASON.QUOTA_EXCEEDED;
    case 'DENYLISTED':
      return REASON.BANNED;
    case 'CLIENT_ID_MISMATCH':
      return REASON.CLIENT_IDENTIFIER_NOT_VALID;
    case 'PROTOCOL_UNSUPPORTED':
      return REASON.UNSUPPORTED_PROTOCOL_VERSION;
    case 'PAYLOAD_TOO_LARGE':
      return REASON.PACKET_TOO_LARGE;
    case 'BAD_REQUEST':
      return REASON.MALFORMED_PACKET;
    default:
      return REASON.NOT_AUTHORIZED; // certificate, device and topic refusals
  }
}

/** The reason string for a refusal: the catalogue code and its public message. */
export function reasonString(code: ErrorCode, publicMessage: string): string {
  return `${code}: ${publicMessage}`;
}

/**
 * The catalogue code a fleetgate reason string names (`"CERT_REVOKED: …"`), else the closest
 * code for the reason code alone (another server, or a string the client did not get).
 */
export function codeFromReason(reasonCode: number, reason?: string): ErrorCode {
  const named = reason?.split(':', 1)[0];
  if (isErrorCode(named)) return named;
  switch (reasonCode) {
    case REASON.SERVER_UNAVAILABLE:
    case REASON.SERVER_BUSY:
    case REASON.SERVER_SHUTTING_DOWN:
      return 'REGISTRY_UNAVAILABLE';
    case REASON.BANNED:
      return 'DENYLISTED';
    case REASON.CLIENT_IDENTIFIER_NOT_VALID:
      return 'CLIENT_ID_MISMATCH';
    case REASON.UNSUPPORTED_PROTOCOL_VERSION:
      return 'PROTOCOL_UNSUPPORTED';
    case REASON.PACKET_TOO_LARGE:
      return 'PAYLOAD_TOO_LARGE';
    case REASON.QUOTA_EXCEEDED:
      return 'RATE_LIMITED';
    case REASON.MALFORMED_PACKET:
    case REASON.PROTOCOL_ERROR:
      return 'BAD_REQUEST';
    default:
      return 'NOT_AUTHORIZED';
  }
}
