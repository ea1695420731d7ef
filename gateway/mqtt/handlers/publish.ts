import { isUtf8 } from 'node:buffer';
import { type ErrorCode, FleetgateError } from '../../../firmware-sdk/protocol/errors.ts';
import { REASON, reasonString } from '../../../firmware-sdk/protocol/mqtt5.ts';
import type { Session } from '../../sessions.ts';
import type { Broker } from '../broker.ts';
import { close } from '../close.ts';
import type { MqttConnection } from '../connection.ts';
import { denied, protocolError } from '../decisions.ts';
import { route } from '../delivery.ts';
import { encodeAck5 } from '../encode.ts';
import type { PublishPacket } from '../packets.ts';
import { type MqttSession, newMessage } from '../session.ts';
import { ackAfterCommit } from './acks.ts';
import { packetCheck, publishable } from './authorize.ts';

/**
 * PUBLISH from a client, in order: resolve the topic (MQTT 5 aliases) → flow control (MQTT 5
 * Receive Maximum) → authorize (status + topic policy, response topic too) → check the MQTT 5
 * payload rules → retain → route here and to the other nodes → acknowledge after the commit.
 */
export function onPublish(b: Broker, conn: MqttConnection, p: PublishPacket): void {
  const topic = conn.v5 ? topicOf(b, conn, p) : p.topic;
  if (topic === undefined) return; // closed: a protocol error
  if (conn.v5 && !withinReceiveMaximum(b, conn, p)) return;
  const props = p.properties;
  const code = packetCheck(
    conn,
    (s) => publishable(s, topic) && (props?.responseTopic === undefined || publishable(s, props.responseTopic)),
  );
  if (code !== undefined) return refuse(b, conn, p, code, topic);
  const quota = conn.quota;
  if (quota !== undefined && !quota.message(p.payload.length + topic.length, conn.lastReceived))
    return overRate(b, conn, p, topic);
  if (conn.v5 && props !== undefined) {
    if (props.payloadFormat === 1 && !isUtf8(p.payload))
      return refusePublish(b, conn, p, REASON.PAYLOAD_FORMAT_INVALID, 'BAD_REQUEST');
    if ((props.userPropertyBytes ?? 0) > b.deps.mqtt.maxUserPropertyBytes)
      return refusePublish(b, conn, p, REASON.QUOTA_EXCEEDED, 'PAYLOAD_TOO_LARGE');
  }
  const mqtt = conn.mqtt as MqttSession;
  (b.m.hot.in[p.qos] as number)++;
  if (p.qos === 2 && mqtt.qos2In.has(p.packetId)) {
    // A resent QoS 2 PUBLISH we already have: acknowledge, do not deliver again [MQTT-4.3.3-2].
    return ackAfterCommit(b, conn, 'pubrec', p.packetId);
  }
  accept(b, conn, p, topic);
  if (p.qos === 1) ackAfterCommit(b, conn, 'puback', p.packetId);
  else if (p.qos === 2) {
    mqtt.qos2In.add(p.packetId);
    if (mqtt.persistent) {
      b.store?.receivedQos2(mqtt.clientId, p.packetId);
      b.state?.save(mqtt);
    }
    ackAfterCommit(b, conn, 'pubrec', p.packetId);
  }
}

/** The accepted message: retained when asked, routed to this node's subscribers and to the other nodes. */
function accept(b: Broker, conn: MqttConnection, p: PublishPacket, topic: string): void {
  const deviceId = (conn.session as Session).device.id;
  // A QoS 1/2 message may wait in session queues: give it its own bytes rather than keeping the
  // whole socket read (up to 64 KiB) alive for a short payload.
  const payload =
    p.qos > 0 && p.payload.buffer.byteLength > p.payload.length * 4 + 1024 ? Buffer.from(p.payload) : p.payload;
  const message = newMessage(topic, payload, p.qos, p.retain, deviceId, p.properties);
  if (p.retain) b.retain(conn, message);
  route(b, message);
  b.publishOut(message);
}

/** MQTT 5 topic aliases of this connection [MQTT-3.3.2-8 … 12]; undefined when the connection was closed for misusing them. */
function topicOf(b: Broker, conn: MqttConnection, p: PublishPacket): string | undefined {
  const alias = p.properties?.topicAlias;
  const max = b.deps.mqtt.topicAliasMaximum;
  if (alias === undefined) {
    if (p.topic.length > 0) return p.topic;
    protocolError(b, conn, 'MQTT5-§3.3.2.1', 'empty topic name without a topic alias');
    return undefined;
  }
  if (alias === 0 || alias > max) {
    protocolError(b, conn, 'MQTT-3.3.2-12', `topic alias ${alias} outside 1–${max}`, REASON.TOPIC_ALIAS_INVALID);
    return undefined;
  }
  if (p.topic.length > 0) {
    (conn.aliases ??= new Map()).set(alias, p.topic);
    return p.topic;
  }
  const known = conn.aliases?.get(alias);
  if (known === undefined)
    protocolError(b, conn, 'MQTT5-§3.3.2.3.4', `topic alias ${alias} not set on this connection`);
  return known;
}

/** MQTT 5 flow control: no more unacknowledged QoS 1/2 PUBLISHes than our Receive Maximum (§3.3.4); false when closed for it. */
function withinReceiveMaximum(b: Broker, conn: MqttConnection, p: PublishPacket): boolean {
  if (p.qos === 0) return true;
  const qos2In = (conn.mqtt as MqttSession).qos2In;
  const max = b.deps.mqtt.receiveMaximum;
  if (conn.inboundPending + qos2In.size < max || (p.qos === 2 && qos2In.has(p.packetId))) return true;
  const what = `more than ${max} unacknowledged QoS 1/2 PUBLISHes`;
  protocolError(b, conn, 'MQTT-3.3.4-7', what, REASON.RECEIVE_MAXIMUM_EXCEEDED);
  return false;
}

/**
 * An unauthorized PUBLISH. MQTT 3.1.1 has no negative PUBACK: the connection closes. MQTT 5
 * says no (PUBACK/PUBREC 0x87; QoS 0: dropped) and keeps the connection — unless the session
 * itself was cut (revoked, suspended, denylisted): then DISCONNECT with the reason.
 */
function refuse(b: Broker, conn: MqttConnection, p: PublishPacket, code: ErrorCode, topic: string): void {
  denied(b, 'publish', conn, code, topic);
  if (!conn.v5 || conn.session?.cut !== undefined || code !== 'TOPIC_DENIED') return close(b, conn, 'denied');
  refusePublish(b, conn, p, REASON.NOT_AUTHORIZED, code);
}

/**
 * A device over its messages or bytes a second (`gateway.quotaAction`): `disconnect` — MQTT 5
 * DISCONNECT 0x96 Message rate too high, 3.1.1 closed; `drop` — the message goes nowhere (QoS 1/2
 * on MQTT 5: PUBACK/PUBREC 0x97; on 3.1.1 no acknowledgement, so the client keeps it).
 */
function overRate(b: Broker, conn: MqttConnection, p: PublishPacket, topic: string): void {
  denied(b, 'publish', conn, 'RATE_LIMITED', topic); // counted always, logged at most once a second
  const device = conn.session?.device;
  if (device !== undefined && conn.quota?.shouldAudit(conn.lastReceived) === true)
    b.deps.registry.audit('gateway', 'quota.exceeded', device.id, { quota: 'messages', transport: conn.kind });
  if (b.deps.config.quotaAction === 'disconnect') return close(b, conn, 'rate_limited');
  if (conn.v5) refusePublish(b, conn, p, REASON.QUOTA_EXCEEDED, 'RATE_LIMITED');
}

/** MQTT 5: a PUBLISH refused without closing — PUBACK/PUBREC with the reason (QoS 0 is dropped; both are logged). */
function refusePublish(b: Broker, conn: MqttConnection, p: PublishPacket, reasonCode: number, code: ErrorCode): void {
  if (p.qos === 0) return;
  const why = conn.problemInfo
    ? { reasonString: reasonString(code, new FleetgateError(code).publicMessage) }
    : undefined;
  conn.push(encodeAck5(p.qos === 1 ? 'puback' : 'pubrec', p.packetId, reasonCode, why));
  b.markDirty(conn);
}
