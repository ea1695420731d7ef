import type { Broker } from './broker.ts';
import type { MqttConnection } from './connection.ts';
import { malformed, protocolError } from './decisions.ts';
import { decode } from './decode.ts';
import { onPuback, onPubcomp, onPubrec, onPubrel } from './handlers/acks.ts';
import { onConnect } from './handlers/connect.ts';
import { onDisconnect } from './handlers/disconnect.ts';
import { onPingreq } from './handlers/pingreq.ts';
import { onPublish } from './handlers/publish.ts';
import { onSubscribe } from './handlers/subscribe.ts';
import { onUnsubscribe } from './handlers/unsubscribe.ts';
import type { InboundPacket } from './packets.ts';

/** Packets a client may send before its admission is decided (CONNECT and what it pipelines after it). */
const MAX_HELD_PACKETS = 32;

/**
 * One framed packet from a client: held while the admission is being decided, then decoded
 * strictly and handed to its packet type's handler (`handlers/`, one module each, as aedes
 * splits its own). AUTH never reaches a handler: enhanced authentication is not offered (the
 * identity is the certificate), so the decoder refuses it as a protocol error.
 */
export function onPacket(b: Broker, conn: MqttConnection, first: number, body: Buffer): void {
  if (conn.state === 'closed') return;
  if (conn.admitting) {
    if (conn.held.length >= MAX_HELD_PACKETS)
      return protocolError(b, conn, 'MQTT-3.1.0-1', `more than ${MAX_HELD_PACKETS} packets before the CONNACK`);
    conn.held.push([first, body]);
    return;
  }
  let packet: InboundPacket;
  try {
    packet = decode(first, body, conn.v5);
  } catch (err) {
    return malformed(b, conn, err);
  }
  if (conn.state === 'connecting' && packet.type !== 'connect') {
    return protocolError(b, conn, 'MQTT-3.1.0-1', `${packet.type.toUpperCase()} before CONNECT`);
  }
  switch (packet.type) {
    case 'connect':
      if (conn.state !== 'connecting') return protocolError(b, conn, 'MQTT-3.1.0-2', 'a second CONNECT');
      return onConnect(b, conn, packet);
    case 'publish':
      return onPublish(b, conn, packet);
    case 'puback':
      return onPuback(b, conn, packet);
    case 'pubrec':
      return onPubrec(b, conn, packet);
    case 'pubrel':
      return onPubrel(b, conn, packet);
    case 'pubcomp':
      return onPubcomp(b, conn, packet);
    case 'subscribe':
      return onSubscribe(b, conn, packet);
    case 'unsubscribe':
      return onUnsubscribe(b, conn, packet);
    case 'pingreq':
      return onPingreq(b, conn);
    case 'disconnect':
      return onDisconnect(b, conn, packet);
  }
}
