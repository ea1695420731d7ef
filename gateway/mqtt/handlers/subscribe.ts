import { type ErrorCode, FleetgateError } from '../../../firmware-sdk/protocol/errors.ts';
import { REASON, reasonString } from '../../../firmware-sdk/protocol/mqtt5.ts';
import { maySubscribe } from '../../policy/topics.ts';
import type { Broker } from '../broker.ts';
import { close } from '../close.ts';
import type { MqttConnection } from '../connection.ts';
import { denied } from '../decisions.ts';
import { sendRetained } from '../delivery.ts';
import { encodeSuback, encodeSuback5 } from '../encode.ts';
import { SUB, type SubscribePacket } from '../packets.ts';
import type { MqttSession } from '../session.ts';
import { parseShared, SHARED_SUBSCRIBER_TYPES } from '../shared.ts';
import { packetCheck } from './authorize.ts';

type RetainedOwed = { filter: string; qos: 0 | 1 | 2; ids: number[] | undefined };

/**
 * SUBSCRIBE: each filter authorized against the session's status and topic scope; granted ones
 * join the trie (and the store, for a persistent session); SUBACK with a code per filter; then
 * the retained messages the new subscriptions are owed.
 */
export function onSubscribe(b: Broker, conn: MqttConnection, p: SubscribePacket): void {
  const mqtt = conn.mqtt as MqttSession;
  const granted: number[] = [];
  const retained: RetainedOwed[] = [];
  const subscriptionId = p.properties?.subscriptionId;
  let refusal: ErrorCode | undefined;
  for (const { filter, qos, options } of p.subscriptions) {
    const shared = parseShared(filter);
    const refused = sharedRefusal(conn, shared);
    if (refused !== undefined) {
      denied(b, 'subscribe', conn, refused, filter);
      granted.push(conn.v5 ? (refused === 'BAD_REQUEST' ? REASON.TOPIC_FILTER_INVALID : REASON.NOT_AUTHORIZED) : 0x80);
      refusal = refused;
      continue;
    }
    // Topic policy applies to the filter inside `$share/<name>/…`.
    const inner = typeof shared === 'object' ? shared.filter : filter;
    const code = packetCheck(conn, (s) => maySubscribe(s.scope, inner));
    if (code !== undefined) {
      denied(b, 'subscribe', conn, code, filter);
      // The session itself was cut (revoked, suspended, denylisted): the connection goes.
      if (code !== 'TOPIC_DENIED') return close(b, conn, 'denied');
      granted.push(conn.v5 ? REASON.NOT_AUTHORIZED : 0x80); // [MQTT-3.9.3-2]; MQTT 5: 0x87
      refusal = code;
      continue;
    }
    if (!mqtt.subscriptions.has(filter) && mqtt.subscriptions.size >= conn.maxSubscriptions) {
      // Each filter costs a trie node, a cluster interest and a stored row: bounded per device type.
      denied(b, 'subscribe', conn, 'QUOTA_EXCEEDED', filter);
      granted.push(conn.v5 ? REASON.QUOTA_EXCEEDED : 0x80); // MQTT 5 0x97; 3.1.1 has only 0x80 [MQTT-3.9.3-2]
      refusal = 'QUOTA_EXCEEDED';
      continue;
    }
    const existed = subscribe(b, mqtt, filter, options, subscriptionId);
    granted.push(qos);
    // Retained messages are not sent on a shared subscription [§4.8.2].
    if (shared !== undefined) continue;
    // Retain Handling [MQTT-3.3.1-9 … 11]: 0 always, 1 only for a new subscription, 2 never.
    const handling = (options & SUB.RETAIN_HANDLING) >> 4;
    if (handling === 0 || (handling === 1 && !existed))
      retained.push({ filter, qos, ids: subscriptionId === undefined ? undefined : [subscriptionId] });
  }
  const why =
    refusal !== undefined && conn.problemInfo
      ? { reasonString: reasonString(refusal, new FleetgateError(refusal).publicMessage) }
      : undefined;
  const suback = () => {
    if (conn.state !== 'connected') return;
    conn.push(conn.v5 ? encodeSuback5(p.packetId, granted, why) : encodeSuback(p.packetId, granted));
    for (const owed of retained) sendRetained(b, conn, owed);
    b.markDirty(conn);
  };
  // In the cluster's durable state, a persistent session's SUBACK promises its record is replicated.
  if (mqtt.persistent && b.state !== undefined) b.state.afterCommit(suback);
  else suback();
}

/**
 * Why a `$share/…` filter is refused before topic policy: malformed (`$share/name` without a
 * filter, a wildcard in the name: BAD_REQUEST → 0x8F), or a device type that may not join groups
 * (only backend services may: NOT_AUTHORIZED → 0x87). Undefined for an acceptable one, or any other filter.
 */
function sharedRefusal(conn: MqttConnection, shared: ReturnType<typeof parseShared>): ErrorCode | undefined {
  if (shared === undefined) return undefined;
  if (shared === 'invalid') return 'BAD_REQUEST';
  return SHARED_SUBSCRIBER_TYPES.includes(conn.session?.device.type ?? '') ? undefined : 'NOT_AUTHORIZED';
}

/** Adds (or replaces [MQTT-3.8.4-3]) one subscription; whether the session already had this filter. */
function subscribe(
  b: Broker,
  mqtt: MqttSession,
  filter: string,
  options: number,
  subscriptionId: number | undefined,
): boolean {
  const existed = mqtt.subscriptions.has(filter);
  const value = options + (subscriptionId ?? 0) * 256;
  mqtt.subscriptions.set(filter, options);
  if (subscriptionId !== undefined) mqtt.subscriptionIds.set(filter, subscriptionId);
  else mqtt.subscriptionIds.delete(filter);
  b.addFilter(filter, mqtt, value, !existed);
  if (mqtt.persistent) {
    b.store?.addSubscription(mqtt.clientId, filter, value as 0 | 1 | 2);
    b.state?.save(mqtt);
  }
  return existed;
}
