import mqttPacket from 'mqtt-packet';
import { TYPE } from './packets.ts';

/** Outbound packets: PUBLISH and its acknowledgements by hand (hot, encoded once per message), the rest by mqtt-packet. */

function varint(n: number): number[] {
  const out: number[] = [];
  do {
    let b = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) b |= 0x80;
    out.push(b);
  } while (n > 0);
  return out;
}

/**
 * An outgoing PUBLISH, encoded once for every subscriber that gets it at this QoS and retain
 * flag: `head` is the fixed header and topic, the packet identifier (QoS > 0) goes between
 * `head` and `payload` per subscriber. The chunks are written, never copied together.
 */
export interface EncodedPublish {
  head: Buffer;
  /** MQTT 5: the properties (length + properties), between the packet identifier and the payload. */
  props?: Buffer;
  payload: Buffer;
  qos: 0 | 1 | 2;
}

/** What an MQTT 5 PUBLISH carries from its publisher to every subscriber, unaltered [MQTT-3.3.2-4], [MQTT-3.3.2-15 … 20]. */
export interface ForwardedProperties {
  payloadFormat?: 0 | 1;
  contentType?: string;
  responseTopic?: string;
  correlationData?: Buffer;
  userProperties?: [string, string][];
}

/** The property block of an outgoing MQTT 5 PUBLISH: forwarded properties, the remaining message expiry, subscription identifiers. */
export function publishProperties(
  fwd: ForwardedProperties | undefined,
  expirySeconds: number | undefined,
  subscriptionIds: readonly number[] | undefined,
): Buffer {
  const parts: number[] = [];
  const chunks: Buffer[] = [];
  const flush = () => {
    if (parts.length > 0) chunks.push(Buffer.from(parts.splice(0)));
  };
  const str = (id: number, v: string | Buffer) => {
    const b = typeof v === 'string' ? Buffer.from(v, 'utf8') : v;
    parts.push(id, b.length >> 8, b.length & 0xff);
    flush();
    chunks.push(b);
  };
  if (fwd?.payloadFormat !== undefined) parts.push(0x01, fwd.payloadFormat);
  if (expirySeconds !== undefined)
    parts.push(
      0x02,
      (expirySeconds >>> 24) & 0xff,
      (expirySeconds >>> 16) & 0xff,
      (expirySeconds >>> 8) & 0xff,
      expirySeconds & 0xff,
    );
  if (fwd?.contentType !== undefined) str(0x03, fwd.contentType);
  if (fwd?.responseTopic !== undefined) str(0x08, fwd.responseTopic);
  if (fwd?.correlationData !== undefined) str(0x09, fwd.correlationData);
  for (const id of subscriptionIds ?? []) parts.push(0x0b, ...varint(id));
  for (const [k, v] of fwd?.userProperties ?? []) {
    str(0x26, k);
    const b = Buffer.from(v, 'utf8');
    parts.push(b.length >> 8, b.length & 0xff);
    flush();
    chunks.push(b);
  }
  flush();
  const body = Buffer.concat(chunks);
  return Buffer.concat([Buffer.from(varint(body.length)), body]);
}

export function encodePublish(
  topic: string,
  payload: Buffer,
  qos: 0 | 1 | 2,
  retain: boolean,
  topicBytes?: Buffer,
  props?: Buffer,
): EncodedPublish {
  const t = topicBytes ?? Buffer.from(topic, 'utf8');
  const remaining = 2 + t.length + (qos > 0 ? 2 : 0) + (props?.length ?? 0) + payload.length;
  const len = varint(remaining);
  const head = Buffer.allocUnsafe(1 + len.length + 2 + t.length);
  head[0] = (TYPE.PUBLISH << 4) | (qos << 1) | (retain ? 1 : 0);
  for (let i = 0; i < len.length; i++) head[1 + i] = len[i] as number;
  head.writeUInt16BE(t.length, 1 + len.length);
  t.copy(head, 3 + len.length);
  return props === undefined ? { head, payload, qos } : { head, props, payload, qos };
}

/** The size of the whole packet on the wire (for the client's Maximum Packet Size). */
export function publishSize(p: EncodedPublish): number {
  return p.head.length + (p.qos > 0 ? 2 : 0) + (p.props?.length ?? 0) + p.payload.length;
}

/** The same PUBLISH with the DUP flag (a redelivery) [MQTT-3.3.1-1]. */
export function withDup(p: EncodedPublish): EncodedPublish {
  const head = Buffer.from(p.head);
  head[0] = (head[0] as number) | 0x08;
  return { ...p, head };
}

export function packetIdBytes(id: number): Buffer {
  const b = Buffer.allocUnsafe(2);
  b.writeUInt16BE(id, 0);
  return b;
}

export function encodeAck(type: 'puback' | 'pubrec' | 'pubrel' | 'pubcomp', id: number): Buffer {
  const first = type === 'puback' ? 0x40 : type === 'pubrec' ? 0x50 : type === 'pubrel' ? 0x62 : 0x70;
  return Buffer.from([first, 2, id >> 8, id & 0xff]);
}

export const PINGRESP = Buffer.from([0xd0, 0]);

export function encodeConnack(sessionPresent: boolean, returnCode: number): Buffer {
  return mqttPacket.generate({ cmd: 'connack', sessionPresent, returnCode });
}

export function encodeSuback(packetId: number, granted: number[]): Buffer {
  return mqttPacket.generate({ cmd: 'suback', messageId: packetId, granted });
}

export function encodeUnsuback(packetId: number): Buffer {
  return mqttPacket.generate({ cmd: 'unsuback', messageId: packetId, granted: [] });
}

// MQTT 5 control packets (not hot: mqtt-packet encodes them).
const V5 = { protocolVersion: 5 } as const;
type V5Props = Record<string, unknown>;
const props = (p: V5Props | undefined) => (p === undefined || Object.keys(p).length === 0 ? {} : { properties: p });

export function encodeConnack5(sessionPresent: boolean, reasonCode: number, properties?: V5Props): Buffer {
  return mqttPacket.generate(
    { cmd: 'connack', sessionPresent, reasonCode, ...props(properties) } as mqttPacket.IConnackPacket,
    V5,
  );
}

export function encodeSuback5(packetId: number, reasonCodes: number[], properties?: V5Props): Buffer {
  return mqttPacket.generate(
    { cmd: 'suback', messageId: packetId, granted: reasonCodes, ...props(properties) } as mqttPacket.ISubackPacket,
    V5,
  );
}

export function encodeUnsuback5(packetId: number, reasonCodes: number[]): Buffer {
  return mqttPacket.generate(
    { cmd: 'unsuback', messageId: packetId, granted: reasonCodes } as unknown as mqttPacket.IUnsubackPacket,
    V5,
  );
}

export function encodeDisconnect5(reasonCode: number, properties?: V5Props): Buffer {
  return mqttPacket.generate(
    { cmd: 'disconnect', reasonCode, ...props(properties) } as mqttPacket.IDisconnectPacket,
    V5,
  );
}

/** PUBACK / PUBREC / PUBREL / PUBCOMP with a reason code (MQTT 5); success without properties is the short 3.1.1 form [§3.4.2.1]. */
export function encodeAck5(
  type: 'puback' | 'pubrec' | 'pubrel' | 'pubcomp',
  id: number,
  reasonCode: number,
  properties?: V5Props,
): Buffer {
  if (reasonCode === 0 && properties === undefined) return encodeAck(type, id);
  return mqttPacket.generate(
    { cmd: type, messageId: id, reasonCode, ...props(properties) } as mqttPacket.IPubackPacket,
    V5,
  );
}
