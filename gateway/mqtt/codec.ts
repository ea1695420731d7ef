import mqttPacket from 'mqtt-packet';

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

export class MalformedPacket extends Error {
  /** The normative statement broken, e.g. `MQTT-3.3.1-4`. */
  readonly rule: string;
  constructor(rule: string, message: string) {
    super(`${message} [${rule}]`);
    this.rule = rule;
  }
}

export const TYPE = { CONNECT: 1, CONNACK: 2, PUBLISH: 3, PUBACK: 4, PUBREC: 5, PUBREL: 6, PUBCOMP: 7, SUBSCRIBE: 8, SUBACK: 9, UNSUBSCRIBE: 10, UNSUBACK: 11, PINGREQ: 12, PINGRESP: 13, DISCONNECT: 14 } as const;

export interface Will {
  topic: string;
  payload: Buffer;
  qos: 0 | 1 | 2;
  retain: boolean;
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
}

export interface PublishPacket {
  type: 'publish';
  topic: string;
  payload: Buffer;
  qos: 0 | 1 | 2;
  retain: boolean;
  dup: boolean;
  packetId: number;
}

export interface AckPacket {
  type: 'puback' | 'pubrec' | 'pubrel' | 'pubcomp';
  packetId: number;
}

export interface SubscribePacket {
  type: 'subscribe';
  packetId: number;
  subscriptions: { filter: string; qos: 0 | 1 | 2 }[];
}

export interface UnsubscribePacket {
  type: 'unsubscribe';
  packetId: number;
  filters: string[];
}

export type InboundPacket = ConnectPacket | PublishPacket | AckPacket | SubscribePacket | UnsubscribePacket | { type: 'pingreq' } | { type: 'disconnect' };

/**
 * Incremental framing from the fixed header. `push` takes bytes as they arrive and calls
 * `onPacket(firstByte, body)` for each whole packet; a remaining length over `limit()` or a
 * malformed length throws before anything more is buffered.
 */
export class Framer {
  readonly #limit: () => number;
  readonly #onPacket: (first: number, body: Buffer) => void;
  /** Bytes of an unfinished packet, kept as received (joined once, when the packet is whole). */
  #chunks: Buffer[] = [];
  #length = 0;
  /** Bytes the unfinished packet needs in total (-1: its fixed header is not whole yet). */
  #need = -1;

  constructor(limit: () => number, onPacket: (first: number, body: Buffer) => void) {
    this.#limit = limit;
    this.#onPacket = onPacket;
  }

  push(chunk: Buffer): void {
    this.#chunks.push(chunk);
    this.#length += chunk.length;
    if (this.#need === -1 || this.#length >= this.#need) this.#drain();
  }

  #drain(): void {
    const buf = this.#chunks.length === 1 ? this.#chunks[0] as Buffer : Buffer.concat(this.#chunks, this.#length);
    this.#chunks = [];
    this.#length = 0;
    this.#need = -1;
    let offset = 0;
    while (offset < buf.length) {
      const header = readFixedHeader(buf, offset);
      if (header === undefined) break; // length bytes not all here yet
      if (header.remaining > this.#limit()) {
        throw new MalformedPacket('MQTT-2.2.3', `packet of ${header.remaining} bytes exceeds the limit of ${this.#limit()}`);
      }
      const end = header.bodyStart + header.remaining;
      if (end > buf.length) {
        this.#need = end - offset;
        break;
      }
      this.#onPacket(buf[offset] as number, buf.subarray(header.bodyStart, end));
      offset = end;
    }
    if (offset < buf.length) {
      const rest = buf.subarray(offset);
      this.#chunks = [rest];
      this.#length = rest.length;
    }
  }
}

function readFixedHeader(buf: Buffer, offset: number): { remaining: number; bodyStart: number } | undefined {
  let remaining = 0;
  let multiplier = 1;
  for (let i = 1; i <= 4; i++) {
    if (offset + i >= buf.length) return undefined;
    const b = buf[offset + i] as number;
    remaining += (b & 0x7f) * multiplier;
    if ((b & 0x80) === 0) {
      if (i > 1 && b === 0) throw new MalformedPacket('MQTT-1.5.5-1', 'remaining length not minimally encoded');
      return { remaining, bodyStart: offset + i + 1 };
    }
    multiplier *= 128;
  }
  throw new MalformedPacket('MQTT-2.2.3', 'remaining length longer than 4 bytes');
}

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

  end(what: string): void {
    if (this.left !== 0) throw new MalformedPacket('MQTT-2.2.3', `${what}: ${this.left} bytes after the end`);
  }
}

function flagsMustBe(first: number, flags: number, rule: string, what: string): void {
  if ((first & 0x0f) !== flags) throw new MalformedPacket(rule, `${what} with reserved flags 0x${(first & 0x0f).toString(16)}`);
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
  if (!((protocolName === 'MQTT' && (protocolLevel === 4 || protocolLevel === 5)) || (protocolName === 'MQIsdp' && protocolLevel === 3))) {
    if (protocolName !== 'MQTT' && protocolName !== 'MQIsdp') throw new MalformedPacket('MQTT-3.1.2-1', `protocol name ${JSON.stringify(protocolName)}`);
  }
  const flags = r.u8('connect flags');
  if ((flags & 0x01) !== 0) throw new MalformedPacket('MQTT-3.1.2-3', 'CONNECT reserved flag set');
  const keepalive = r.u16('keepalive');
  const base = { type: 'connect' as const, protocolName, protocolLevel, cleanSession: (flags & 0x02) !== 0, keepalive };
  if (protocolLevel === 5) {
    // MQTT 5 is answered with CONNACK 1 (unacceptable protocol version) before its properties are read.
    return { ...base, clientId: '', will: undefined, username: undefined, password: undefined };
  }
  const willFlag = (flags & 0x04) !== 0;
  const willQos = (flags >> 3) & 0x03;
  const willRetain = (flags & 0x20) !== 0;
  const hasPassword = (flags & 0x40) !== 0;
  const hasUsername = (flags & 0x80) !== 0;
  if (willQos === 3) throw new MalformedPacket('MQTT-3.1.2-14', 'will QoS 3');
  if (!willFlag && (willQos !== 0 || willRetain)) throw new MalformedPacket('MQTT-3.1.2-11', 'will QoS or retain set without the will flag');
  if (hasPassword && !hasUsername && protocolLevel === 4) throw new MalformedPacket('MQTT-3.1.2-22', 'password flag without the user name flag');
  const clientId = r.string('client identifier');
  let will: Will | undefined;
  if (willFlag) {
    const topic = r.string('will topic');
    if (topic.length === 0 || topic.includes('+') || topic.includes('#')) throw new MalformedPacket('MQTT-3.1.2-9', 'will topic empty or with wildcards');
    will = { topic, payload: Buffer.from(r.bytes('will message')), qos: willQos as 0 | 1 | 2, retain: willRetain };
  }
  const username = hasUsername ? r.string('user name') : undefined;
  const password = hasPassword ? Buffer.from(r.bytes('password')) : undefined;
  r.end('CONNECT');
  return { ...base, clientId, will, username, password };
}

function decodePublish(first: number, r: Reader): PublishPacket {
  const qos = (first >> 1) & 0x03;
  const dup = (first & 0x08) !== 0;
  if (qos === 3) throw new MalformedPacket('MQTT-3.3.1-4', 'PUBLISH with QoS 3');
  if (dup && qos === 0) throw new MalformedPacket('MQTT-3.3.1-2', 'DUP set on a QoS 0 PUBLISH');
  const topic = r.string('topic name');
  if (topic.length === 0) throw new MalformedPacket('MQTT-4.7.3-1', 'empty topic name');
  if (topic.includes('+') || topic.includes('#')) throw new MalformedPacket('MQTT-3.3.2-2', 'wildcard in a topic name');
  const id = qos > 0 ? packetId(r, 'PUBLISH') : 0;
  return { type: 'publish', topic, payload: r.buf.subarray(r.pos), qos: qos as 0 | 1 | 2, retain: (first & 0x01) !== 0, dup, packetId: id };
}

function decodeSubscribe(r: Reader): SubscribePacket {
  const id = packetId(r, 'SUBSCRIBE');
  const subscriptions: SubscribePacket['subscriptions'] = [];
  while (r.left > 0) {
    const filter = r.string('topic filter');
    if (!validFilter(filter)) throw new MalformedPacket('MQTT-4.7.1-2', `invalid topic filter ${JSON.stringify(filter)}`);
    const q = r.u8('requested QoS');
    if ((q & 0xfc) !== 0 || q === 3) throw new MalformedPacket('MQTT-3-8.3-4', `requested QoS byte 0x${q.toString(16)}`);
    subscriptions.push({ filter, qos: q as 0 | 1 | 2 });
  }
  if (subscriptions.length === 0) throw new MalformedPacket('MQTT-3.8.3-3', 'SUBSCRIBE without a topic filter');
  return { type: 'subscribe', packetId: id, subscriptions };
}

function decodeUnsubscribe(r: Reader): UnsubscribePacket {
  const id = packetId(r, 'UNSUBSCRIBE');
  const filters: string[] = [];
  while (r.left > 0) {
    const filter = r.string('topic filter');
    if (!validFilter(filter)) throw new MalformedPacket('MQTT-4.7.1-2', `invalid topic filter ${JSON.stringify(filter)}`);
    filters.push(filter);
  }
  if (filters.length === 0) throw new MalformedPacket('MQTT-3.10.3-2', 'UNSUBSCRIBE without a topic filter');
  return { type: 'unsubscribe', packetId: id, filters };
}

const ACKS = { 4: 'puback', 5: 'pubrec', 6: 'pubrel', 7: 'pubcomp' } as const;

/** Decodes one framed packet strictly; throws {@link MalformedPacket}. */
export function decode(first: number, body: Buffer): InboundPacket {
  const type = first >> 4;
  const r = new Reader(body);
  switch (type) {
    case TYPE.CONNECT:
      flagsMustBe(first, 0, 'MQTT-2.2.2-1', 'CONNECT');
      return decodeConnect(r);
    case TYPE.PUBLISH:
      return decodePublish(first, r);
    case TYPE.PUBACK:
    case TYPE.PUBREC:
    case TYPE.PUBREL:
    case TYPE.PUBCOMP: {
      const name = ACKS[type];
      flagsMustBe(first, type === TYPE.PUBREL ? 0x02 : 0, type === TYPE.PUBREL ? 'MQTT-3.6.1-1' : 'MQTT-2.2.2-1', name.toUpperCase());
      const id = packetId(r, name.toUpperCase());
      r.end(name.toUpperCase());
      return { type: name, packetId: id };
    }
    case TYPE.SUBSCRIBE:
      flagsMustBe(first, 0x02, 'MQTT-3.8.1-1', 'SUBSCRIBE');
      return decodeSubscribe(r);
    case TYPE.UNSUBSCRIBE:
      flagsMustBe(first, 0x02, 'MQTT-3.10.1-1', 'UNSUBSCRIBE');
      return decodeUnsubscribe(r);
    case TYPE.PINGREQ:
      flagsMustBe(first, 0, 'MQTT-2.2.2-1', 'PINGREQ');
      r.end('PINGREQ');
      return { type: 'pingreq' };
    case TYPE.DISCONNECT:
      flagsMustBe(first, 0, 'MQTT-2.2.2-1', 'DISCONNECT');
      r.end('DISCONNECT');
      return { type: 'disconnect' };
    default:
      throw new MalformedPacket('MQTT-2.2.1', `packet type ${type} may not be sent by a client`);
  }
}

// --- encoding ---

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
  payload: Buffer;
  qos: 0 | 1 | 2;
}

export function encodePublish(topic: string, payload: Buffer, qos: 0 | 1 | 2, retain: boolean, topicBytes?: Buffer): EncodedPublish {
  const t = topicBytes ?? Buffer.from(topic, 'utf8');
  const remaining = 2 + t.length + (qos > 0 ? 2 : 0) + payload.length;
  const len = varint(remaining);
  const head = Buffer.allocUnsafe(1 + len.length + 2 + t.length);
  head[0] = (TYPE.PUBLISH << 4) | (qos << 1) | (retain ? 1 : 0);
  for (let i = 0; i < len.length; i++) head[1 + i] = len[i] as number;
  head.writeUInt16BE(t.length, 1 + len.length);
  t.copy(head, 3 + len.length);
  return { head, payload, qos };
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
