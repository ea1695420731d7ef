import type { Broker } from '../broker.ts';
import { close } from '../close.ts';
import type { MqttConnection } from '../connection.ts';
import { pump } from '../delivery.ts';
import { encodeAck } from '../encode.ts';
import type { AckPacket } from '../packets.ts';
import type { Delivery, MqttSession } from '../session.ts';

/**
 * PUBACK, PUBREC, PUBREL and PUBCOMP: the acknowledgements of QoS 1 and 2 [MQTT-4.3]. Ours to
 * the client wait for the store's commit (`ackAfterCommit`); the client's settle what we sent.
 */

/** The in-flight delivery an acknowledgement settles; an unknown id, or one in the wrong phase, is ignored. */
function settles(conn: MqttConnection, p: AckPacket, expect: 'publish' | 'released'): Delivery | undefined {
  const d = (conn.mqtt as MqttSession).inflight.get(p.packetId);
  if (d === undefined || (expect === 'released') !== d.released) return undefined;
  return d;
}

function done(b: Broker, mqtt: MqttSession, id: number, d: Delivery): void {
  mqtt.inflight.delete(id);
  d.shareAck?.ack();
  if (d.rowId !== undefined) b.store?.dequeue(d.rowId);
  if (d.seq !== undefined) b.state?.settled(mqtt.clientId, d.seq);
  pump(b, mqtt);
}

export function onPuback(b: Broker, conn: MqttConnection, p: AckPacket): void {
  const d = settles(conn, p, 'publish');
  if (d === undefined || d.qos !== 1) return;
  done(b, conn.mqtt as MqttSession, p.packetId, d);
}

export function onPubrec(b: Broker, conn: MqttConnection, p: AckPacket): void {
  const d = settles(conn, p, 'publish');
  if (d === undefined || d.qos !== 2) return;
  // MQTT 5: a PUBREC with a failure reason ends the exchange, no PUBREL [MQTT-4.3.3-4], [MQTT-4.4.0-2].
  const mqtt = conn.mqtt as MqttSession;
  if (p.reasonCode >= 0x80) return done(b, mqtt, p.packetId, d);
  d.released = true;
  // The member has it (a released delivery is not given to another member when its session ends).
  d.shareAck?.ack();
  d.shareAck = undefined;
  // From a JetStream inbox: "released" goes in the session's record before the PUBREL, so a node
  // that resumes the session after this one died sends the PUBREL, not the message again.
  if (d.seq !== undefined && b.state !== undefined && mqtt.persistent) {
    mqtt.qos2Out.set(d.seq, p.packetId);
    b.state.save(mqtt);
    return ackAfterCommit(b, conn, 'pubrel', p.packetId);
  }
  conn.push(encodeAck('pubrel', p.packetId));
  b.markDirty(conn);
}

export function onPubcomp(b: Broker, conn: MqttConnection, p: AckPacket): void {
  const d = settles(conn, p, 'released');
  if (d === undefined) return;
  const mqtt = conn.mqtt as MqttSession;
  done(b, mqtt, p.packetId, d);
  // Purged from the inbox (once those before it are); the record need not name it any more.
  if (d.seq !== undefined && mqtt.qos2Out.delete(d.seq) && mqtt.persistent) b.state?.save(mqtt);
}

export function onPubrel(b: Broker, conn: MqttConnection, p: AckPacket): void {
  const mqtt = conn.mqtt as MqttSession;
  // A persistent session's stored id is forgotten on disk before the PUBCOMP lets the client use it again.
  if (mqtt.qos2In.delete(p.packetId) && mqtt.persistent && b.commits !== undefined) {
    b.store?.releasedQos2(mqtt.clientId, p.packetId);
    b.state?.save(mqtt);
    return ackAfterCommit(b, conn, 'pubcomp', p.packetId);
  }
  conn.push(encodeAck('pubcomp', p.packetId)); // also for an id we no longer know [MQTT-4.3.3-2]
  b.markDirty(conn);
}

/**
 * PUBACK / PUBREC promise the message is stored for every persistent session owed it (PUBCOMP:
 * that its id is released; PUBREL: that the session's record says it was released): sent after
 * the commit.
 */
export function ackAfterCommit(
  b: Broker,
  conn: MqttConnection,
  type: 'puback' | 'pubrec' | 'pubrel' | 'pubcomp',
  id: number,
): void {
  if (type === 'puback') conn.inboundPending++;
  const send = (err: Error | undefined) => {
    if (type === 'puback') conn.inboundPending--;
    if (err !== undefined) {
      const line = { err: err.message, deviceId: conn.session?.device.id };
      b.deps.log.error(line, 'mqtt store commit failed: connection closed without acknowledgement');
      return close(b, conn, 'store_failed');
    }
    conn.push(encodeAck(type, id));
    b.markDirty(conn);
  };
  const commits = b.commits;
  if (commits === undefined) send(undefined);
  else commits.afterCommit(send);
}
