import {
  type ConnectPacket,
  type InboundPacket,
  MalformedPacket,
  NO_PROPERTIES,
  PROTOCOL_ERROR,
  type Properties,
  type PublishPacket,
  type SubscribePacket,
  TYPE,
  type UnsubscribePacket,
  type Will,
} from './packets.ts';

/**
 * MQTT 3.1.1 (and 3.1) on the wire. Inbound packets are framed from the fixed header — the
 * per-connection size limit is enforced on the remaining length **before** the body is buffered
 * [MQTT-2.2.3] — and decoded strictly here, on the raw bytes: every reserved flag, QoS 3, packet
 * identifier 0, DUP on QoS 0, well-formed UTF-8 without U+0000 in every string [MQTT-1.5.3-1/2],
 * the will/username/password flag rules, no trailing bytes. A general-purpose parser is lenient
 * on exactly these points (it replaces bad UTF-8, ignores reserved bits), so inbound decoding is
 * ours. Outbound control packets that are not hot (CONNACK, SUBACK, UNSUBACK) are encoded by
 * mqtt-packet; PUBLISH and its acknowledgements are encoded by hand, once per message.
 */

type PropertyType = 'byte' | 'u16' | 'u32' | 'varint' | 'string' | 'binary' | 'pair';
type PropertyContext = 'connect' | 'will' | 'publish' | 'ack' | 'subscribe' | 'unsubscribe' | 'disconnect' | 'auth';

/** Identifier → name, type, and the client packets it may appear in. */
const PROPERTIES: Record<number, [keyof Properties, PropertyType, readonly PropertyContext[]]> = {
  0x01: ['payloadFormat', 'byte', ['publish', 'will']],
  0x02: ['messageExpiry', 'u32', ['publish', 'will']],
  0x03: ['contentType', 'string', ['publish', 'will']],
  0x08: ['responseTopic', 'string', ['publish', 'will']],
  0x09: ['correlationData', 'binary', ['publish', 'will']],
  0x0b: ['subscriptionId', 'varint', ['subscribe']],
  0x11: ['sessionExpiry', 'u32', ['connect', 'disconnect']],
  0x15: ['authMethod', 'string', ['connect', 'auth']],
  0x16: ['authData', 'binary', ['connect', 'auth']],
  0x17: ['requestProblemInfo', 'byte', ['connect']],
  0x18: ['willDelay', 'u32', ['will']],
  0x19: ['requestResponseInfo', 'byte', ['connect']],
  0x1c: ['serverReference', 'string', ['disconnect']],
  0x1f: ['reasonString', 'string', ['ack', 'disconnect', 'auth']],
  0x21: ['receiveMaximum', 'u16', ['connect']],
  0x22: ['topicAliasMaximum', 'u16', ['connect']],
  0x23: ['topicAlias', 'u16', ['publish']],
  0x26: [
    'userProperties',
    'pair',
    ['connect', 'will', 'publish', 'ack', 'subscribe', 'unsubscribe', 'disconnect', 'auth'],
  ],
  0x27: ['maximumPacketSize', 'u32', ['connect']],
};

const UTF8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** A cursor over one packet body. */
class Reader {
  readonly buf: Buffer;
  pos = 0;
  constructor(buf: Buffer) {
    this.buf = buf;
  }

  get left(): number {
    return this.buf.length - this.pos;
  }

  u8(what: string): number {
    if (this.left < 1) throw new MalformedPacket('MQTT-2.2.3', `${what}: packet too short`);
    return this.buf[this.pos++] as number;
  }

  u16(what: string): number {
    if (this.left < 2) throw new MalformedPacket('MQTT-2.2.3', `${what}: packet too short`);
    const v = this.buf.readUInt16BE(this.pos);
    this.pos += 2;
    return v;
  }

  bytes(what: string): Buffer {
    const n = this.u16(what);
    if (this.left < n) throw new MalformedPacket('MQTT-1.5.3', `${what}: length past the end of the packet`);
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  /** A UTF-8 string: well formed, no U+0000 [MQTT-1.5.3-1], [MQTT-1.5.3-2]. */
  string(what: string): string {
    const raw = this.bytes(what);
    let s: string;
    try {
      s = UTF8.decode(raw);
    } catch {
      throw new MalformedPacket('MQTT-1.5.3-1', `${what} is not well-formed UTF-8`);
    }
    if (s.includes('\u0000')) throw new MalformedPacket('MQTT-1.5.3-2', `${what} contains U+0000`);
    return s;
  }

  u32(what: string): number {
    if (this.left < 4) throw new MalformedPacket('MQTT-2.2.3', `${what}: packet too short`);
    const v = this.buf.readUInt32BE(this.pos);
    this.pos += 4;
    return v;
  }

  /** A Variable Byte Integer, minimally encoded [MQTT-1.5.5-1]. */
  varint(what: string): number {
    let value = 0;
    let multiplier = 1;
    for (let i = 0; i < 4; i++) {
      const b = this.u8(what);
      value += (b & 0x7f) * multiplier;
      if ((b & 0x80) === 0) {
        if (i > 0 && b === 0)
          throw new MalformedPacket('MQTT-1.5.5-1', `${what}: variable byte integer not minimally encoded`);
        return value;
      }
      multiplier *= 128;
    }
    throw new MalformedPacket('MQTT-1.5.5-1', `${what}: variable byte integer longer than 4 bytes`);
  }

  /**
   * MQTT 5 properties for `context`: each known [MQTT-2.2.2-2 … ], allowed in this packet, at
   * most once (but User Property), with a valid value; the property length must end exactly on
   * a property.
   */
  properties(context: PropertyContext): Properties {
    const length = this.varint('property length');
    if (length === 0) return NO_PROPERTIES; // the common case on the hot path: nothing to allocate
    if (this.left < length) throw new MalformedPacket('MQTT5-§2.2.2.1', 'property length past the end of the packet');
    const end = this.pos + length;
    const out: Properties = {};
    const set = out as Record<string, unknown>;
    const seen = new Set<number>();
    while (this.pos < end) {
      const id = this.varint('property identifier');
      const spec = PROPERTIES[id];
      if (spec === undefined || !spec[2].includes(context)) {
        throw new MalformedPacket(
          'MQTT5-§2.2.2.2',
          `property 0x${id.toString(16)} is not valid in ${context === 'will' ? 'a will' : `a ${context.toUpperCase()}`}`,
        );
      }
      const [name, type] = spec;
      if (id !== 0x26 && seen.has(id))
        throw new MalformedPacket('MQTT5-§2.2.2.2', `property ${name} more than once`, PROTOCOL_ERROR);
      seen.add(id);
      const what = `property ${name}`;
      switch (type) {
        case 'byte': {
          const v = this.u8(what);
          if (v > 1) throw new MalformedPacket('MQTT5-§2.2.2.2', `${what} is ${v} (0 or 1)`, PROTOCOL_ERROR);
          set[name] = v;
          break;
        }
        case 'u16':
          set[name] = this.u16(what);
          break;
        case 'u32':
          set[name] = this.u32(what);
          break;
        case 'varint':
          set[name] = this.varint(what);
          break;
        case 'string':
          set[name] = this.string(what);
          break;
        case 'binary':
          set[name] = Buffer.from(this.bytes(what));
          break;
        case 'pair': {
          const k = this.string('user property name');
          const v = this.string('user property value');
          (out.userProperties ??= []).push([k, v]);
          out.userPropertyBytes = (out.userPropertyBytes ?? 0) + Buffer.byteLength(k) + Buffer.byteLength(v);
          break;
        }
      }
      if (this.pos > end) throw new MalformedPacket('MQTT5-§2.2.2.1', `${what} runs past the property length`);
    }
    // Values the protocol forbids (Protocol Errors).
    if (out.receiveMaximum === 0) throw new MalformedPacket('MQTT5-§3.1.2.11.3', 'receive maximum 0', PROTOCOL_ERROR);
    if (out.maximumPacketSize === 0)
      throw new MalformedPacket('MQTT5-§3.1.2.11.4', 'maximum packet size 0', PROTOCOL_ERROR);
    if (out.subscriptionId === 0)
      throw new MalformedPacket('MQTT5-§3.8.2.1.2', 'subscription identifier 0', PROTOCOL_ERROR);
    if (out.authData !== undefined && out.authMethod === undefined)
      throw new MalformedPacket('MQTT5-§3.1.2.11.10', 'authentication data without a method', PROTOCOL_ERROR);
    return out;
  }

  end(what: string): void {
    if (this.left !== 0) throw new MalformedPacket('MQTT-2.2.3', `${what}: ${this.left} bytes after the end`);
  }
}

function flagsMustBe(first: number, flags: number, rule: string, what: string): void {
  if ((first & 0x0f) !== flags)
    throw new MalformedPacket(rule, `${what} with reserved flags 0x${(first & 0x0f).toString(16)}`);
}

function packetId(r: Reader, what: string): number {
  const id = r.u16(`${what} packet identifier`);
  if (id === 0) throw new MalformedPacket('MQTT-2.3.1-1', `${what} with packet identifier 0`);
  return id;
}

/** A topic filter: non-empty, `#` last and alone in its level, `+` alone in its level [MQTT-4.7.1-2], [MQTT-4.7.1-3], [MQTT-4.7.3-1]. */
export function validFilter(filter: string): boolean {
  if (filter.length === 0) return false;
  const levels = filter.split('/');
  for (let i = 0; i < levels.length; i++) {
    const l = levels[i] as string;
    if (l.includes('#') && (l !== '#' || i !== levels.length - 1)) return false;
    if (l.includes('+') && l !== '+') return false;
  }
  return true;
}

function decodeConnect(r: Reader): ConnectPacket {
  const protocolName = r.string('protocol name');
  const protocolLevel = r.u8('protocol level');
  if (
    !(
      (protocolName === 'MQTT' && (protocolLevel === 4 || protocolLevel === 5)) ||
      (protocolName === 'MQIsdp' && protocolLevel === 3)
    )
  ) {
    if (protocolName !== 'MQTT' && protocolName !== 'MQIsdp')
      throw new MalformedPacket('MQTT-3.1.2-1', `protocol name ${JSON.stringify(protocolName)}`);
  }
  const flags = r.u8('connect flags');
  if ((flags & 0x01) !== 0) throw new MalformedPacket('MQTT-3.1.2-3', 'CONNECT reserved flag set');
  const keepalive = r.u16('keepalive');
  const base = { type: 'connect' as const, protocolName, protocolLevel, cleanSession: (flags & 0x02) !== 0, keepalive };
  const v5 = protocolLevel === 5;
  const willFlag = (flags & 0x04) !== 0;
  const willQos = (flags >> 3) & 0x03;
  const willRetain = (flags & 0x20) !== 0;
  const hasPassword = (flags & 0x40) !== 0;
  const hasUsername = (flags & 0x80) !== 0;
  if (willQos === 3) throw new MalformedPacket(v5 ? 'MQTT-3.1.2-12' : 'MQTT-3.1.2-14', 'will QoS 3');
  if (!willFlag && (willQos !== 0 || willRetain))
    throw new MalformedPacket('MQTT-3.1.2-11', 'will QoS or retain set without the will flag');
  if (hasPassword && !hasUsername && protocolLevel === 4)
    throw new MalformedPacket('MQTT-3.1.2-22', 'password flag without the user name flag');
  const properties = v5 ? r.properties('connect') : undefined;
  const clientId = r.string('client identifier');
  let will: Will | undefined;
  if (willFlag) {
    const willProperties = v5 ? r.properties('will') : undefined;
    const topic = r.string('will topic');
    if (topic.length === 0 || topic.includes('+') || topic.includes('#'))
      throw new MalformedPacket(v5 ? 'MQTT-3.3.2-2' : 'MQTT-3.1.2-9', 'will topic empty or with wildcards');
    will = {
      topic,
      payload: Buffer.from(r.bytes('will message')),
      qos: willQos as 0 | 1 | 2,
      retain: willRetain,
      ...(willProperties && { properties: willProperties }),
    };
  }
  const username = hasUsername ? r.string('user name') : undefined;
  const password = hasPassword ? Buffer.from(r.bytes('password')) : undefined;
  r.end('CONNECT');
  return { ...base, clientId, will, username, password, ...(properties && { properties }) };
}

function decodePublish(first: number, r: Reader, v5: boolean): PublishPacket {
  const qos = (first >> 1) & 0x03;
  const dup = (first & 0x08) !== 0;
  if (qos === 3) throw new MalformedPacket('MQTT-3.3.1-4', 'PUBLISH with QoS 3');
  if (dup && qos === 0) throw new MalformedPacket('MQTT-3.3.1-2', 'DUP set on a QoS 0 PUBLISH');
  const topic = r.string('topic name');
  // MQTT 5: an empty topic name is allowed with a topic alias (checked by the plane, which knows the aliases).
  if (topic.length === 0 && !v5) throw new MalformedPacket('MQTT-4.7.3-1', 'empty topic name');
  if (topic.includes('+') || topic.includes('#')) throw new MalformedPacket('MQTT-3.3.2-2', 'wildcard in a topic name');
  const id = qos > 0 ? packetId(r, 'PUBLISH') : 0;
  if (!v5)
    return {
      type: 'publish',
      topic,
      payload: r.buf.subarray(r.pos),
      qos: qos as 0 | 1 | 2,
      retain: (first & 0x01) !== 0,
      dup,
      packetId: id,
    };
  const properties = r.properties('publish');
  if (properties === NO_PROPERTIES)
    return {
      type: 'publish',
      topic,
      payload: r.buf.subarray(r.pos),
      qos: qos as 0 | 1 | 2,
      retain: (first & 0x01) !== 0,
      dup,
      packetId: id,
    };
  if (
    properties.responseTopic !== undefined &&
    (properties.responseTopic.length === 0 || /[+#]/.test(properties.responseTopic))
  ) {
    throw new MalformedPacket('MQTT-3.3.2-14', 'response topic empty or with wildcards', PROTOCOL_ERROR);
  }
  return {
    type: 'publish',
    topic,
    payload: r.buf.subarray(r.pos),
    qos: qos as 0 | 1 | 2,
    retain: (first & 0x01) !== 0,
    dup,
    packetId: id,
    properties,
  };
}

function decodeSubscribe(r: Reader, v5: boolean): SubscribePacket {
  const id = packetId(r, 'SUBSCRIBE');
  const properties = v5 ? r.properties('subscribe') : undefined;
  const subscriptions: SubscribePacket['subscriptions'] = [];
  while (r.left > 0) {
    const filter = r.string('topic filter');
    if (!validFilter(filter))
      throw new MalformedPacket('MQTT-4.7.1-2', `invalid topic filter ${JSON.stringify(filter)}`, 0x8f);
    const q = r.u8(v5 ? 'subscription options' : 'requested QoS');
    if (v5) {
      if ((q & 0xc0) !== 0)
        throw new MalformedPacket('MQTT-3.8.3-5', `subscription options with reserved bits 0x${q.toString(16)}`);
      if ((q & 0x03) === 3) throw new MalformedPacket('MQTT-3.8.3-5', 'subscription options with QoS 3');
      if ((q & 0x30) === 0x30) throw new MalformedPacket('MQTT5-§3.8.3.1', 'retain handling 3', PROTOCOL_ERROR);
    } else if ((q & 0xfc) !== 0 || q === 3)
      throw new MalformedPacket('MQTT-3-8.3-4', `requested QoS byte 0x${q.toString(16)}`);
    subscriptions.push({ filter, qos: (q & 0x03) as 0 | 1 | 2, options: q });
  }
  if (subscriptions.length === 0)
    throw new MalformedPacket(v5 ? 'MQTT-3.8.3-2' : 'MQTT-3.8.3-3', 'SUBSCRIBE without a topic filter', PROTOCOL_ERROR);
  return { type: 'subscribe', packetId: id, subscriptions, ...(properties && { properties }) };
}

function decodeUnsubscribe(r: Reader, v5: boolean): UnsubscribePacket {
  const id = packetId(r, 'UNSUBSCRIBE');
  if (v5) r.properties('unsubscribe');
  const filters: string[] = [];
  while (r.left > 0) {
    const filter = r.string('topic filter');
    if (!validFilter(filter))
      throw new MalformedPacket('MQTT-4.7.1-2', `invalid topic filter ${JSON.stringify(filter)}`, 0x8f);
    filters.push(filter);
  }
  if (filters.length === 0)
    throw new MalformedPacket('MQTT-3.10.3-2', 'UNSUBSCRIBE without a topic filter', PROTOCOL_ERROR);
  return { type: 'unsubscribe', packetId: id, filters };
}

/** Reason codes a client may send, per packet (MQTT 5 §3.4.2.1, §3.5.2.1, §3.6.2.1, §3.7.2.1, §3.14.2.1). */
const CLIENT_REASONS = {
  puback: new Set([0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99]),
  pubrec: new Set([0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99]),
  pubrel: new Set([0x00, 0x92]),
  pubcomp: new Set([0x00, 0x92]),
  disconnect: new Set([0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x90, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99]),
} as const;
const REASON_RULE = {
  puback: 'MQTT-3.4.2-1',
  pubrec: 'MQTT-3.5.2-1',
  pubrel: 'MQTT-3.6.2-1',
  pubcomp: 'MQTT-3.7.2-1',
  disconnect: 'MQTT-3.14.2-1',
} as const;

/** A reason code and properties, both optional at the end of an MQTT 5 packet (absent: 0x00 Success). */
function reasonAndProperties(
  r: Reader,
  kind: keyof typeof CLIENT_REASONS,
  context: 'ack' | 'disconnect',
): { reasonCode: number; properties?: Properties } {
  if (r.left === 0) return { reasonCode: 0 };
  const reasonCode = r.u8('reason code');
  if (!CLIENT_REASONS[kind].has(reasonCode))
    throw new MalformedPacket(REASON_RULE[kind], `${kind.toUpperCase()} with reason code 0x${reasonCode.toString(16)}`);
  if (r.left === 0) return { reasonCode };
  const properties = r.properties(context);
  r.end(kind.toUpperCase());
  return { reasonCode, properties };
}

const ACKS = { 4: 'puback', 5: 'pubrec', 6: 'pubrel', 7: 'pubcomp' } as const;

/**
 * Decodes one framed packet strictly; throws {@link MalformedPacket}. `v5`: the connection
 * speaks MQTT 5 (known after its CONNECT, which says so itself).
 */
export function decode(first: number, body: Buffer, v5 = false): InboundPacket {
  const type = first >> 4;
  const r = new Reader(body);
  switch (type) {
    case TYPE.CONNECT:
      flagsMustBe(first, 0, 'MQTT-2.2.2-1', 'CONNECT');
      return decodeConnect(r);
    case TYPE.PUBLISH:
      return decodePublish(first, r, v5);
    case TYPE.PUBACK:
    case TYPE.PUBREC:
    case TYPE.PUBREL:
    case TYPE.PUBCOMP: {
      const name = ACKS[type];
      flagsMustBe(
        first,
        type === TYPE.PUBREL ? 0x02 : 0,
        type === TYPE.PUBREL ? 'MQTT-3.6.1-1' : 'MQTT-2.2.2-1',
        name.toUpperCase(),
      );
      const id = packetId(r, name.toUpperCase());
      if (v5) return { type: name, packetId: id, reasonCode: reasonAndProperties(r, name, 'ack').reasonCode };
      r.end(name.toUpperCase());
      return { type: name, packetId: id, reasonCode: 0 };
    }
    case TYPE.SUBSCRIBE:
      flagsMustBe(first, 0x02, 'MQTT-3.8.1-1', 'SUBSCRIBE');
      return decodeSubscribe(r, v5);
    case TYPE.UNSUBSCRIBE:
      flagsMustBe(first, 0x02, 'MQTT-3.10.1-1', 'UNSUBSCRIBE');
      return decodeUnsubscribe(r, v5);
    case TYPE.PINGREQ:
      flagsMustBe(first, 0, 'MQTT-2.2.2-1', 'PINGREQ');
      r.end('PINGREQ');
      return { type: 'pingreq' };
    case TYPE.DISCONNECT: {
      flagsMustBe(first, 0, v5 ? 'MQTT-3.14.1-1' : 'MQTT-2.2.2-1', 'DISCONNECT');
      if (v5) return { type: 'disconnect', ...reasonAndProperties(r, 'disconnect', 'disconnect') };
      r.end('DISCONNECT');
      return { type: 'disconnect', reasonCode: 0 };
    }
    case TYPE.AUTH:
      // Enhanced authentication is not offered (the identity is the certificate): a CONNECT asking
      // for it is refused 0x8C, so an AUTH can only be a protocol error.
      if (v5)
        throw new MalformedPacket('MQTT5-§4.12', 'AUTH without an authentication method in CONNECT', PROTOCOL_ERROR);
      throw new MalformedPacket('MQTT-2.2.1', `packet type ${type} may not be sent by a client`);
    default:
      throw new MalformedPacket(v5 ? 'MQTT5-§2.1.2' : 'MQTT-2.2.1', `packet type ${type} may not be sent by a client`);
  }
}
