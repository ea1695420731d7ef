import type { Broker } from '../broker.ts';
import type { MqttConnection } from '../connection.ts';
import { PINGRESP } from '../encode.ts';

/** PINGREQ → PINGRESP [MQTT-3.12.4-1]; any packet already counted as keepalive traffic when it arrived. */
export function onPingreq(b: Broker, conn: MqttConnection): void {
  conn.push(PINGRESP);
  b.markDirty(conn);
}
