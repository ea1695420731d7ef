import { isDeviceId } from '../../firmware-sdk/protocol/device-id.ts';
import { NODE_NAME } from '../../firmware-sdk/protocol/node-id.ts';
import { validFilter } from '../mqtt/decode.ts';
import type { ForwardedProperties } from '../mqtt/encode.ts';
import { Message } from '../mqtt/session.ts';
import { encodeLevel, isLongSubject, longSubjectHash, subjectToTopic, topicHash } from './subjects.ts';

/**
 * What travels between gateway nodes on NATS, and how every byte of it is checked on arrival.
 * Everything read from NATS is input from another process: each decoder here returns the value
 * or the reason it is refused (`{ invalid }`), never throws, and the bus counts and drops what is
 * refused (`fleetgate_cluster_messages_total{direction="invalid"}`).
 */
export type Read<T> = { ok: T } | { invalid: string };

const invalid = (reason: string): { invalid: string } => ({ invalid: reason });

/** Session announcements: `fg.s.<node>`, the client id as the payload (any length a client id has). */
export const SESSION_PREFIX = 'fg.s';
/** Operator questions to every node (request, many replies). */
export const ADMIN_PREFIX = 'fg.admin';
/** A joining node asks every node how many retained messages it holds… */
export const RETAINED_OFFER = 'fg.sync.retained.offer';
/** …then asks the one holding most to stream them to the request's reply inbox. */
export const RETAINED_SEND_PREFIX = 'fg.sync.retained.send';
/** A node name as one subject token. */
export const nodeToken = (node: string): string => encodeLevel(node);
export const sessionSubject = (node: string): string => `${SESSION_PREFIX}.${nodeToken(node)}`;
export const retainedSend = (node: string): string => `${RETAINED_SEND_PREFIX}.${nodeToken(node)}`;
/** Each node's reply inboxes: its permissions let it subscribe to these and no other node's. */
export const inboxPrefix = (node: string): string => `_INBOX.${nodeToken(node)}`;

const UTF8 = new TextDecoder('utf-8', { fatal: true });

function utf8(b: Buffer, start: number, end: number): string | undefined {
  try {
    return UTF8.decode(b.subarray(start, end));
  } catch {
    return undefined;
  }
}

/**
 * A message between nodes: a few bytes of envelope before the payload (NATS headers cost more
 * CPU per message than the routing):
 *   version (1) · flags (bits 0–1 QoS, 2 retain, 3 expiry, 4 forwarded MQTT 5 properties, 5 topic) ·
 *   publisher id length (1) · publisher id · [expiry: 8 bytes, ms since epoch] ·
 *   [properties: 4-byte length + JSON] · [topic: 2-byte length + UTF-8, for a long topic's hashed subject] · payload
 */
const ENVELOPE_VERSION = 2;
const KNOWN_FLAGS = 0x3f;

function encodeFwd(fwd: ForwardedProperties): Buffer {
  const correlationData = fwd.correlationData?.toString('base64');
  return Buffer.from(JSON.stringify({ ...fwd, ...(correlationData !== undefined && { correlationData }) }), 'utf8');
}

export function encodeEnvelope(m: Message, withTopic = false): Buffer {
  const from = Buffer.from(m.from, 'utf8');
  const fwd = m.fwd === undefined ? undefined : encodeFwd(m.fwd);
  const topic = withTopic ? Buffer.from(m.topic, 'utf8') : undefined;
  const size =
    3 +
    from.length +
    (m.expiresAt === undefined ? 0 : 8) +
    (fwd === undefined ? 0 : 4 + fwd.length) +
    (topic === undefined ? 0 : 2 + topic.length) +
    m.payload.length;
  const out = Buffer.allocUnsafe(size);
  out[0] = ENVELOPE_VERSION;
  out[1] =
    m.qos |
    (m.retain ? 4 : 0) |
    (m.expiresAt === undefined ? 0 : 8) |
    (fwd === undefined ? 0 : 16) |
    (topic === undefined ? 0 : 32);
  out[2] = from.length;
  let at = 3 + from.copy(out, 3);
  if (m.expiresAt !== undefined) at = out.writeDoubleBE(m.expiresAt, at);
  if (fwd !== undefined) {
    at = out.writeUInt32BE(fwd.length, at);
    at += fwd.copy(out, at);
  }
  if (topic !== undefined) {
    at = out.writeUInt16BE(topic.length, at);
    at += topic.copy(out, at);
  }
  m.payload.copy(out, at);
  return out;
}

const isStr = (v: unknown, max: number): v is string => typeof v === 'string' && Buffer.byteLength(v) <= max;

/** MQTT 5 properties forwarded between nodes: exactly the shapes the MQTT core writes, each bounded as MQTT bounds it. */
function readFwd(json: string | undefined): ForwardedProperties | undefined {
  if (json === undefined) return undefined;
  let raw: unknown;
  try {
    raw = JSON.parse(json);
  } catch {
    return undefined;
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return undefined;
  const r = raw as Record<string, unknown>;
  const fwd: ForwardedProperties = {};
  for (const key of Object.keys(r)) {
    const v = r[key];
    if (key === 'payloadFormat' && (v === 0 || v === 1)) fwd.payloadFormat = v;
    else if (key === 'contentType' && isStr(v, 65_535)) fwd.contentType = v;
    else if (key === 'responseTopic' && isStr(v, 65_535) && v !== '' && !/[+#]/.test(v)) fwd.responseTopic = v;
    else if (key === 'correlationData' && isStr(v, 90_000) && /^[A-Za-z0-9+/]*={0,2}$/.test(v))
      fwd.correlationData = Buffer.from(v, 'base64');
    else if (
      key === 'userProperties' &&
      Array.isArray(v) &&
      v.length <= 1_000 &&
      v.every((p) => Array.isArray(p) && p.length === 2 && isStr(p[0], 65_535) && isStr(p[1], 65_535))
    )
      fwd.userProperties = v as [string, string][];
    else return undefined;
  }
  return fwd;
}

function validTopic(topic: string): boolean {
  return topic !== '' && Buffer.byteLength(topic) <= 65_535 && !/[+#\0]/.test(topic);
}

/** Reads the optional parts after the publisher id; `at` advances. */
function readOptionals(
  b: Buffer,
  flags: number,
  start: number,
): Read<{ at: number; expiresAt?: number; fwd?: ForwardedProperties; topic?: string }> {
  let at = start;
  let expiresAt: number | undefined;
  if ((flags & 8) !== 0) {
    if (at + 8 > b.length) return invalid('expiry past the end');
    expiresAt = b.readDoubleBE(at);
    if (!Number.isFinite(expiresAt) || expiresAt <= 0) return invalid('expiry not a time');
    at += 8;
  }
  let fwd: ForwardedProperties | undefined;
  if ((flags & 16) !== 0) {
    if (at + 4 > b.length) return invalid('properties length past the end');
    const n = b.readUInt32BE(at);
    at += 4;
    if (at + n > b.length) return invalid('properties past the end');
    fwd = readFwd(utf8(b, at, at + n));
    if (fwd === undefined) return invalid('properties not the forwarded MQTT 5 shape');
    at += n;
  }
  let topic: string | undefined;
  if ((flags & 32) !== 0) {
    if (at + 2 > b.length) return invalid('topic length past the end');
    const n = b.readUInt16BE(at);
    at += 2;
    if (at + n > b.length) return invalid('topic past the end');
    topic = utf8(b, at, at + n);
    if (topic === undefined || !validTopic(topic)) return invalid('topic not a valid MQTT topic');
    at += n;
  }
  return { ok: { at, expiresAt, fwd, topic } };
}

/**
 * The message in an envelope from another node, checked: version, flags, every length against
 * the bytes there are, UTF-8, the topic (from the subject, or from the envelope when the subject is
 * a hash — then the hash must be the topic's), the MQTT 5 properties' shapes.
 */
export function decodeEnvelope(subject: string, data: Uint8Array): Read<Message> {
  const body = decodeBody(data);
  if ('invalid' in body) return body;
  const { b, flags, from, at, expiresAt, fwd } = body.ok;
  let topic: string | undefined;
  if (isLongSubject(subject)) {
    topic = body.ok.topic;
    if (topic === undefined || topicHash(topic) !== longSubjectHash(subject))
      return invalid('hashed subject without its topic');
  } else {
    if (body.ok.topic !== undefined) return invalid('topic in the envelope of a plain subject');
    topic = subjectToTopic(subject);
    if (topic === undefined) return invalid('subject is no topic');
  }
  return {
    ok: new Message(topic, b.subarray(at), (flags & 3) as 0 | 1 | 2, (flags & 4) !== 0, from, { fwd, expiresAt }),
  };
}

/**
 * A message read back from JetStream (a session's inbox, the retained bucket): the same envelope,
 * its topic always inside it (the subject names a session or a hash, not the topic).
 */
export function decodeStored(data: Uint8Array): Read<Message> {
  const body = decodeBody(data);
  if ('invalid' in body) return body;
  const { b, flags, from, at, expiresAt, fwd, topic } = body.ok;
  if (topic === undefined) return invalid('stored message without its topic');
  return {
    ok: new Message(topic, b.subarray(at), (flags & 3) as 0 | 1 | 2, (flags & 4) !== 0, from, { fwd, expiresAt }),
  };
}

/** The envelope's header and optional parts, every length checked against the bytes there are. */
function decodeBody(data: Uint8Array): Read<{
  b: Buffer;
  flags: number;
  from: string;
  at: number;
  expiresAt?: number | undefined;
  fwd?: ForwardedProperties | undefined;
  topic?: string | undefined;
}> {
  const b = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  if (b.length < 3) return invalid('envelope shorter than its header');
  if (b[0] !== ENVELOPE_VERSION) return invalid(`envelope version ${b[0]}`);
  const flags = b[1]!;
  if ((flags & ~KNOWN_FLAGS) !== 0 || (flags & 3) === 3) return invalid('envelope flags unknown');
  const fromEnd = 3 + b[2]!;
  if (fromEnd > b.length) return invalid('publisher id past the end');
  const from = utf8(b, 3, fromEnd);
  if (from === undefined) return invalid('publisher id not UTF-8');
  const opt = readOptionals(b, flags, fromEnd);
  if ('invalid' in opt) return opt;
  return { ok: { b, flags, from, ...opt.ok } };
}

/** A session announcement on `fg.s.<node>`: the node (from the subject, which its permissions bind) and the client id. */
export function decodeAnnouncement(
  subject: string,
  data: Uint8Array,
  self: string,
): Read<{ node: string; clientId: string }> {
  const token = subject.slice(SESSION_PREFIX.length + 1);
  const node = token.startsWith('~') ? utf8(Buffer.from(token.slice(1), 'base64url'), 0, Infinity) : token;
  if (node === undefined || !NODE_NAME.test(node) || nodeToken(node) !== token)
    return invalid('session subject names no node');
  if (node === self) return invalid('an announcement under this node’s own name');
  const b = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  const clientId = b.length <= 65_535 ? utf8(b, 0, b.length) : undefined;
  if (clientId === undefined || clientId === '') return invalid('client id not UTF-8 of 1–65,535 bytes');
  return { ok: { node, clientId } };
}

/** JSON from another node: an object, or the reason not. */
export function readJson(data: Uint8Array, maxBytes = 64 * 1024): Read<Record<string, unknown>> {
  if (data.length > maxBytes) return invalid(`JSON over ${maxBytes} bytes`);
  let v: unknown;
  try {
    v = JSON.parse(utf8(Buffer.from(data.buffer, data.byteOffset, data.byteLength), 0, data.length) ?? '');
  } catch {
    return invalid('not JSON');
  }
  return typeof v === 'object' && v !== null && !Array.isArray(v)
    ? { ok: v as Record<string, unknown> }
    : invalid('not a JSON object');
}

export const json = (value: unknown): Uint8Array => new TextEncoder().encode(JSON.stringify(value));

/** The questions one node asks the others, and the shape each answer must have to be used. */
export type Question = 'connections' | 'kick' | 'overview' | 'refused';

const ANSWER_FIELD: Record<Question, (v: unknown) => boolean> = {
  connections: (v) => Array.isArray(v),
  kick: (v) => Number.isSafeInteger(v) && (v as number) >= 0,
  overview: (v) => typeof v === 'object' && v !== null && !Array.isArray(v),
  refused: (v) => Array.isArray(v),
};
const ANSWER_KEY: Record<Question, string> = {
  connections: 'connections',
  kick: 'closed',
  overview: 'totals',
  refused: 'refused',
};

/** An answer to `question`: `{ node, <field> }` with a valid node name and the field's shape. */
export function readAnswer(question: Question, data: Uint8Array): Read<Record<string, unknown>> {
  const r = readJson(data, 16 * 1024 * 1024);
  if ('invalid' in r) return r;
  const node = r.ok.node;
  if (typeof node !== 'string' || !NODE_NAME.test(node)) return invalid('answer names no node');
  if (!ANSWER_FIELD[question](r.ok[ANSWER_KEY[question]])) return invalid(`answer to ${question} without its shape`);
  return r;
}

/**
 * A retained snapshot travels as chunks on the asker's inbox: `1` · records
 * (`subject length (2) · subject · envelope length (4) · envelope`), then `2` · record count (4): the end.
 */
export const CHUNK_RECORDS = 1;
export const CHUNK_END = 2;

export function encodeRecord(subject: string, envelope: Buffer): Buffer[] {
  const s = Buffer.from(subject, 'utf8');
  const head = Buffer.allocUnsafe(6);
  head.writeUInt16BE(s.length, 0);
  head.writeUInt32BE(envelope.length, 2);
  return [head.subarray(0, 2), s, head.subarray(2), envelope];
}

export function endChunk(count: number): Buffer {
  const b = Buffer.allocUnsafe(5);
  b[0] = CHUNK_END;
  b.writeUInt32BE(count, 1);
  return b;
}

/** The records of one chunk, each a retained message (the retain flag set, the subject a retained one); any fault refuses the chunk. */
export function decodeRecords(b: Buffer, retainedPrefix: string): Read<Message[]> {
  const out: Message[] = [];
  let at = 1;
  while (at < b.length) {
    if (at + 2 > b.length) return invalid('record header past the end');
    const subjectEnd = at + 2 + b.readUInt16BE(at);
    if (subjectEnd + 4 > b.length) return invalid('record subject past the end');
    const subject = utf8(b, at + 2, subjectEnd);
    const envelopeEnd = subjectEnd + 4 + b.readUInt32BE(subjectEnd);
    if (envelopeEnd > b.length) return invalid('record envelope past the end');
    if (subject === undefined || !subject.startsWith(`${retainedPrefix}.`))
      return invalid('record subject not retained');
    // Copied: the chunk's buffer is not kept alive by every retained message in it.
    const m = decodeEnvelope(subject, Buffer.from(b.subarray(subjectEnd + 4, envelopeEnd)));
    if ('invalid' in m) return m;
    if (!m.ok.retain) return invalid('record without the retain flag');
    out.push(m.ok);
    at = envelopeEnd;
  }
  return { ok: out };
}

/**
 * A persistent MQTT session as the cluster keeps it (JetStream key-value bucket, key `s.<hash of
 * the client id>`): who it is, where it is attached (`node`, null while offline), when it was last
 * seen, how long it outlives its connection, its subscriptions (filter, options + 256 × MQTT 5
 * identifier), its inbound QoS 2 packet ids awaiting PUBREL, and its outbound QoS 2 messages
 * released (PUBREC received, PUBREL sent) awaiting PUBCOMP: `[inbox sequence, packet id]`. Every
 * node reads every record.
 */
export interface SessionRecord {
  clientId: string;
  deviceId: string;
  node: string | null;
  lastSeen: number;
  expiryS: number;
  subs: [string, number][];
  qos2In: number[];
  qos2Out: [number, number][];
}

const SESSION_RECORD_VERSION = 1;
/** Subscriptions one record may hold (far above any device type's `maxSubscriptions`). */
const RECORD_MAX_SUBS = 100_000;

/** The key a session's record and its inbox subject are named by (a client id may hold any character). */
export const sessionKey = (clientId: string): string => topicHash(clientId);

export function encodeSessionRecord(r: SessionRecord): Uint8Array {
  return json({ v: SESSION_RECORD_VERSION, ...r });
}

const isInt = (v: unknown, min: number, max: number): v is number =>
  Number.isSafeInteger(v) && (v as number) >= min && (v as number) <= max;

/** A session record read from JetStream, checked whole: its key must be its client id's, every field its shape. */
export function decodeSessionRecord(key: string, data: Uint8Array): Read<SessionRecord> {
  const parsed = readJson(data, 16 * 1024 * 1024);
  if ('invalid' in parsed) return parsed;
  const { v, clientId, deviceId, node, lastSeen, expiryS, subs, qos2In, qos2Out = [] } = parsed.ok;
  if (v !== SESSION_RECORD_VERSION) return invalid(`session record version ${String(v)}`);
  if (!isStr(clientId, 65_535) || clientId === '' || sessionKey(clientId) !== key)
    return invalid('session record whose client id is not its key');
  if (!isDeviceId(deviceId)) return invalid('session record without a device id');
  if (node !== null && (typeof node !== 'string' || !NODE_NAME.test(node))) return invalid('session record node');
  if (!isInt(lastSeen, 0, Number.MAX_SAFE_INTEGER) || !isInt(expiryS, 0, 0xffff_ffff))
    return invalid('session record times');
  if (
    !Array.isArray(subs) ||
    subs.length > RECORD_MAX_SUBS ||
    !subs.every(
      (s) =>
        Array.isArray(s) &&
        s.length === 2 &&
        isStr(s[0], 65_535) &&
        validFilter(s[0]) &&
        isInt(s[1], 0, 268_435_455 * 256 + 0x3f),
    )
  )
    return invalid('session record subscriptions');
  if (!Array.isArray(qos2In) || qos2In.length > 65_535 || !qos2In.every((id) => isInt(id, 1, 65_535)))
    return invalid('session record QoS 2 ids');
  // Written before this field existed: none.
  if (
    !Array.isArray(qos2Out) ||
    qos2Out.length > 65_535 ||
    !qos2Out.every(
      (e) => Array.isArray(e) && e.length === 2 && isInt(e[0], 1, Number.MAX_SAFE_INTEGER) && isInt(e[1], 1, 65_535),
    )
  )
    return invalid('session record released QoS 2 messages');
  const out = qos2Out as [number, number][];
  return {
    ok: { clientId, deviceId, node, lastSeen, expiryS, subs: subs as [string, number][], qos2In, qos2Out: out },
  };
}

/**
 * A gateway node saying it is alive (`fleetgate_nodes`, key `n.<node token>`, written every few
 * seconds by the node itself): a session record attached to a node not heard from for a while is
 * an orphan — its node died with the device attached — and ages like an offline session.
 */
export interface NodeBeat {
  node: string;
  at: number;
}

const NODE_BEAT_VERSION = 1;
export const nodeBeatKey = (node: string): string => `n.${nodeToken(node)}`;

export function encodeNodeBeat(b: NodeBeat): Uint8Array {
  return json({ v: NODE_BEAT_VERSION, ...b });
}

export function decodeNodeBeat(key: string, data: Uint8Array): Read<NodeBeat> {
  const parsed = readJson(data, 1024);
  if ('invalid' in parsed) return parsed;
  const { v, node, at } = parsed.ok;
  if (v !== NODE_BEAT_VERSION) return invalid(`node beat version ${String(v)}`);
  if (typeof node !== 'string' || !NODE_NAME.test(node) || nodeBeatKey(node) !== key)
    return invalid('node beat whose node is not its key');
  if (!isInt(at, 0, Number.MAX_SAFE_INTEGER)) return invalid('node beat time');
  return { ok: { node, at } };
}
