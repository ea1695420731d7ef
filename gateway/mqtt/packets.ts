/**
 * MQTT 3.1.1 (and 3.1) and MQTT 5 packets as the core sees them: the inbound packet types the
 * decoder produces (`decode.ts`), the errors it throws, and the protocol's constants. Framing is
 * `framer.ts`, decoding `decode.ts`, encoding `encode.ts`.
 */

export class MalformedPacket extends Error {
  /** The normative statement broken, e.g. `MQTT-3.3.1-4`. */
  readonly rule: string;
  /** The MQTT 5 reason code to close with: 0x81 Malformed Packet, 0x82 Protocol Error, 0x95 Packet too large, … */
  readonly reasonCode: number;
  constructor(rule: string, message: string, reasonCode = 0x81) {
    super(`${message} [${rule}]`);
    this.rule = rule;
    this.reasonCode = reasonCode;
  }
}

export const PROTOCOL_ERROR = 0x82;

/** A packet over the size limit, refused from its fixed header; `head` holds the bytes seen (up to a CONNECT's protocol level). */
export class TooLarge extends MalformedPacket {
  readonly head: Buffer;
  constructor(message: string, head: Buffer) {
    super('MQTT-2.2.3', message, 0x95);
    this.head = Buffer.from(head);
  }

  /** It is a CONNECT that says MQTT 5 (fixed header, then "\0\4MQTT" and level 5): it may be answered CONNACK 0x95. */
  get isMqtt5Connect(): boolean {
    const h = this.head;
    if (h.length < 2 || h[0] !== 0x10) return false;
    let i = 1;
    while (i < h.length && ((h[i] as number) & 0x80) !== 0) i++;
    const v = h.subarray(i + 1);
    return v.length >= 7 && v.subarray(0, 6).equals(Buffer.from([0, 4, 0x4d, 0x51, 0x54, 0x54])) && v[6] === 5;
  }
}

export const TYPE = {
  CONNECT: 1,
  CONNACK: 2,
  PUBLISH: 3,
  PUBACK: 4,
  PUBREC: 5,
  PUBREL: 6,
  PUBCOMP: 7,
  SUBSCRIBE: 8,
  SUBACK: 9,
  UNSUBSCRIBE: 10,
  UNSUBACK: 11,
  PINGREQ: 12,
  PINGRESP: 13,
  DISCONNECT: 14,
  AUTH: 15,
} as const;

/** MQTT 5 properties a client may send (§2.2.2.2), decoded and checked for their packet. */
export interface Properties {
  payloadFormat?: 0 | 1;
  messageExpiry?: number;
  contentType?: string;
  responseTopic?: string;
  correlationData?: Buffer;
  subscriptionId?: number;
  sessionExpiry?: number;
  authMethod?: string;
  authData?: Buffer;
  requestProblemInfo?: 0 | 1;
  willDelay?: number;
  requestResponseInfo?: 0 | 1;
  reasonString?: string;
  receiveMaximum?: number;
  topicAliasMaximum?: number;
  topicAlias?: number;
  maximumPacketSize?: number;
  serverReference?: string;
  userProperties?: [string, string][];
  /** Bytes of user properties (names and values), for the pass-through limit. */
  userPropertyBytes?: number;
}

/** A packet without properties (shared, never mutated). */
export const NO_PROPERTIES: Properties = Object.freeze({});

export interface Will {
  topic: string;
  payload: Buffer;
  qos: 0 | 1 | 2;
  retain: boolean;
  /** MQTT 5 will properties (will delay, message expiry, content type, user properties, …). */
  properties?: Properties;
}

export interface ConnectPacket {
  type: 'connect';
  protocolName: string;
  protocolLevel: number;
  cleanSession: boolean;
  keepalive: number;
  clientId: string;
  will: Will | undefined;
  username: string | undefined;
  password: Buffer | undefined;
  /** MQTT 5 only. */
  properties?: Properties;
}

export interface PublishPacket {
  type: 'publish';
  topic: string;
  payload: Buffer;
  qos: 0 | 1 | 2;
  retain: boolean;
  dup: boolean;
  packetId: number;
  /** MQTT 5 only (a topic alias may leave `topic` empty). */
  properties?: Properties;
}

export interface AckPacket {
  type: 'puback' | 'pubrec' | 'pubrel' | 'pubcomp';
  packetId: number;
  /** MQTT 5 reason code (0 in 3.1.1). */
  reasonCode: number;
}

/**
 * Subscription options as one number, the MQTT 5 options byte: bits 0–1 maximum QoS, bit 2 No
 * Local, bit 3 Retain As Published, bits 4–5 Retain Handling (3.1.1: the QoS alone).
 */
export type SubscriptionOptions = number;
export const SUB = { QOS: 0x03, NO_LOCAL: 0x04, RETAIN_AS_PUBLISHED: 0x08, RETAIN_HANDLING: 0x30 } as const;

export interface SubscribePacket {
  type: 'subscribe';
  packetId: number;
  subscriptions: { filter: string; qos: 0 | 1 | 2; options: SubscriptionOptions }[];
  properties?: Properties;
}

export interface UnsubscribePacket {
  type: 'unsubscribe';
  packetId: number;
  filters: string[];
}

export interface DisconnectPacket {
  type: 'disconnect';
  /** MQTT 5 (0 in 3.1.1): 0x04 asks for the will to be sent. */
  reasonCode: number;
  properties?: Properties;
}

export type InboundPacket =
  | ConnectPacket
  | PublishPacket
  | AckPacket
  | SubscribePacket
  | UnsubscribePacket
  | { type: 'pingreq' }
  | DisconnectPacket;
