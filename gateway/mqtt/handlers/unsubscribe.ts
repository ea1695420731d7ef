import { REASON } from '../../../firmware-sdk/protocol/mqtt5.ts';
import type { Broker } from '../broker.ts';
import type { MqttConnection } from '../connection.ts';
import { encodeUnsuback, encodeUnsuback5 } from '../encode.ts';
import type { UnsubscribePacket } from '../packets.ts';
import type { MqttSession } from '../session.ts';

/** UNSUBSCRIBE: each filter the session holds stops matching, here and on disk; UNSUBACK [MQTT-3.10.4-4], [MQTT-3.11.3-1]. */
export function onUnsubscribe(b: Broker, conn: MqttConnection, p: UnsubscribePacket): void {
  const mqtt = conn.mqtt as MqttSession;
  const codes: number[] = [];
  for (const filter of p.filters) {
    if (!mqtt.subscriptions.delete(filter)) {
      codes.push(REASON.NO_SUBSCRIPTION_EXISTED);
      continue;
    }
    mqtt.subscriptionIds.delete(filter);
    b.removeFilter(filter, mqtt);
    if (mqtt.persistent) {
      b.store?.removeSubscription(mqtt.clientId, filter);
      b.state?.save(mqtt);
    }
    codes.push(REASON.SUCCESS);
  }
  conn.push(conn.v5 ? encodeUnsuback5(p.packetId, codes) : encodeUnsuback(p.packetId));
  b.markDirty(conn);
}
