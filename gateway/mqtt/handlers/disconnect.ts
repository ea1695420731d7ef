import { REASON } from '../../../firmware-sdk/protocol/mqtt5.ts';
import type { Broker } from '../broker.ts';
import { close } from '../close.ts';
import type { MqttConnection } from '../connection.ts';
import { protocolError } from '../decisions.ts';
import type { DisconnectPacket } from '../packets.ts';

/**
 * DISCONNECT from the client: no will (MQTT 5: unless reason 0x04) [MQTT-3.1.2-10],
 * [MQTT-3.14.4-3]; MQTT 5 may change the session expiry.
 */
export function onDisconnect(b: Broker, conn: MqttConnection, p: DisconnectPacket): void {
  const expiry = p.properties?.sessionExpiry;
  if (expiry !== undefined && conn.mqtt !== undefined) {
    // Raising it from 0 is a protocol error (§3.14.2.2.2).
    if (conn.requestedExpiry === 0 && expiry > 0)
      return protocolError(b, conn, 'MQTT5-§3.14.2.2.2', 'DISCONNECT sets a session expiry on a session that had none');
    const s = Math.min(expiry, Math.floor(b.deps.mqtt.sessionExpiryMs / 1000));
    conn.mqtt.expiryMs = s * 1000;
    if (s === 0 && conn.mqtt.persistent) {
      b.store?.dropSession(conn.mqtt.clientId);
      b.state?.drop(conn.mqtt.clientId);
      conn.mqtt.persistent = false;
    }
  }
  if (p.reasonCode === REASON.DISCONNECT_WITH_WILL) return close(b, conn, 'disconnect_with_will');
  conn.will = undefined;
  return close(b, conn, 'disconnect');
}
