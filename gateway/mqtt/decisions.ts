import { type ErrorCode, FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import { REASON, reasonString } from '../../firmware-sdk/protocol/mqtt5.ts';
import type { Broker } from './broker.ts';
import { close } from './close.ts';
import type { MqttConnection } from './connection.ts';
import { encodeConnack5 } from './encode.ts';
import { MalformedPacket, TooLarge } from './packets.ts';

/**
 * The MQTT core's decisions as log lines and metrics: one line per connection (admitted or
 * refused, with the code, serial and fingerprint), one per refused PUBLISH/SUBSCRIBE, one per
 * connection closed for a malformed packet or a protocol violation.
 */

/** One decision line per connection, with the code, serial and fingerprint. */
export function decision(
  b: Broker,
  outcome: 'admitted' | 'refused',
  conn: MqttConnection,
  code: ErrorCode | undefined,
  extra: Record<string, unknown>,
): void {
  const identity =
    conn.session?.identity ??
    (conn.refusal?.detail as { serial?: string; fingerprint?: string; deviceId?: string } | undefined);
  b.deps.metrics.handshakes.inc({ transport: conn.kind, outcome, code: code ?? 'OK' });
  if (outcome === 'refused' && code !== undefined)
    b.deps.metrics.refusedDevices.record(identity?.deviceId, identity?.serial, code);
  const line = {
    decision: outcome,
    code,
    transport: conn.kind,
    remoteAddress: conn.remoteAddress,
    clientId: conn.clientId,
    deviceId: identity?.deviceId,
    serial: identity?.serial,
    fingerprint: identity?.fingerprint,
    ...extra,
  };
  if (outcome === 'admitted') b.deps.log.info(line, 'mqtt connection admitted');
  else b.deps.log.warn(line, 'mqtt connection refused');
}

/** A PUBLISH or SUBSCRIBE refused: counted and logged with the topic. */
export function denied(
  b: Broker,
  action: 'publish' | 'subscribe',
  conn: MqttConnection,
  code: ErrorCode,
  topic: string,
): void {
  b.deps.metrics.denied.inc({ action, code });
  // A device over a quota may keep trying thousands of times a second: counted every time,
  // logged at most once a second per connection.
  if (code === 'QUOTA_EXCEEDED' || code === 'RATE_LIMITED') {
    const now = Date.now();
    if (now - conn.lastQuotaLog < 1_000) return;
    conn.lastQuotaLog = now;
  }
  const line = { action, code, topic, deviceId: conn.session?.device.id, serial: conn.session?.identity.serial };
  b.deps.log.warn(line, `${action} refused`);
}

/** A packet that cannot be decoded, or is too large: the connection is closed (MQTT 5 says why first [MQTT-4.13]). */
export function malformed(b: Broker, conn: MqttConnection, err: unknown): void {
  const e = err instanceof MalformedPacket ? err : new MalformedPacket('MQTT-2.2', (err as Error).message);
  const code: ErrorCode = e instanceof TooLarge ? 'PAYLOAD_TOO_LARGE' : 'BAD_REQUEST';
  if (conn.state === 'connecting' && e instanceof TooLarge) {
    decision(b, 'refused', conn, code, { reason: e.message });
    // An MQTT 5 CONNECT over the limit is told so: CONNACK 0x95 Packet too large [MQTT-3.2.2-8].
    if (e.isMqtt5Connect) {
      const reason = reasonString(code, new FleetgateError(code).publicMessage);
      conn.push(encodeConnack5(false, REASON.PACKET_TOO_LARGE, { reasonString: reason }));
    }
  } else {
    const line = {
      decision: 'closed',
      code,
      rule: e.rule,
      reason: e.message,
      deviceId: conn.session?.device.id,
      transport: conn.kind,
      remoteAddress: conn.remoteAddress,
    };
    b.deps.log.warn(line, 'malformed mqtt packet: connection closed');
  }
  // 0x81 Malformed Packet, 0x82 Protocol Error, 0x95 Packet too large, …
  close(b, conn, 'malformed', e.reasonCode, e.message);
}

/** A well-formed packet the protocol does not allow here: closed as a protocol error (MQTT 5: 0x82 unless said otherwise). */
export function protocolError(
  b: Broker,
  conn: MqttConnection,
  rule: string,
  what: string,
  reasonCode: number = REASON.PROTOCOL_ERROR,
): void {
  malformed(b, conn, new MalformedPacket(rule, `protocol violation: ${what}`, reasonCode));
}
