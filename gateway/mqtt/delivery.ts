import type { Broker } from './broker.ts';
import type { MqttConnection } from './connection.ts';
import { type EncodedPublish, encodeAck, packetIdBytes, publishSize, withDup } from './encode.ts';
import { SUB } from './packets.ts';
import { type Delivery, INBOX_IDS, inboxPacketId, Message, type MqttSession, type SharedAck } from './session.ts';
import type { SharedGroup } from './shared.ts';
import { filterMatches, OVERLAP } from './trie.ts';

/**
 * How a message reaches its subscribers: synchronously through the topic trie, each outgoing
 * PUBLISH encoded once for every subscriber that gets it at the same QoS and retain flag; QoS 0
 * straight to the connection, QoS 1/2 through the session's queue into its in-flight window.
 */

/**
 * Delivers a message to every matching session, each once at the highest QoS its subscriptions
 * grant, never above the publish QoS; and to one member of every shared group whose filter
 * matches — here, unless the cluster's bus distributes the groups (then through NATS queue groups,
 * see {@link routeShared}).
 */
export function route(b: Broker, message: Message): void {
  const matches = b.trie.match(message.topic);
  for (const [mqtt, sub] of matches) {
    // No Local [MQTT-3.8.3-3]: client id = device id, so the publisher is `from`.
    if ((sub & SUB.NO_LOCAL) !== 0 && mqtt.clientId === message.from) continue;
    deliver(b, mqtt, sub, message, undefined);
  }
  if (b.shared.size > 0 && !b.sharedOverBus())
    for (const [group] of b.shared.trie.match(message.topic)) {
      // A durable group's QoS 1/2 messages come back from JetStream (fanOut wrote them there).
      if (message.qos > 0 && b.state?.durableShare(group.key) === true) continue;
      toGroup(b, group, message);
    }
}

/** A message the bus gave this node for one shared group (its NATS queue group chose this node). */
export function routeShared(b: Broker, key: string, message: Message): void {
  const group = b.shared.get(key);
  if (group !== undefined && filterMatches(group.filter, message.topic)) toGroup(b, group, message);
}

/**
 * A message of a durable shared group (a persistent member somewhere: `cluster.sessions:
 * jetstream`), from the group's JetStream queue: to one member here, acknowledged to JetStream
 * once the member has it; given back (to another node, or here later) when none here can take it.
 */
export function routeDurableShare(b: Broker, key: string, message: Message, ack: SharedAck): void {
  const group = b.shared.get(key);
  if (group === undefined || !filterMatches(group.filter, message.topic) || !toGroup(b, group, message, undefined, ack))
    ack.nak();
}

/** One member of `group` gets the message (round robin over those connected; QoS 1/2 queued for a persistent one if none is). */
export function toGroup(b: Broker, group: SharedGroup, message: Message, skip?: MqttSession, ack?: SharedAck): boolean {
  const ready = (m: MqttSession) => {
    if (m === skip) return false;
    const conn = b.live.get(m);
    return conn !== undefined && conn.state === 'connected' && conn.session?.cut === undefined;
  };
  // From JetStream: only a member connected here (one that is not goes back to JetStream).
  const picked = group.pick(ready, message.qos > 0 && ack === undefined);
  if (picked === undefined) {
    if (ack === undefined) b.m.dropNoMember.inc();
    return false;
  }
  deliver(b, picked, group.members.get(picked)!, message, group.key, ack);
  return true;
}

function deliver(
  b: Broker,
  mqtt: MqttSession,
  sub: number,
  message: Message,
  group: string | undefined,
  ack?: SharedAck,
): void {
  const qos = Math.min(sub & SUB.QOS, message.qos) as 0 | 1 | 2; // [MQTT-3.8.4-6]
  const conn = b.live.get(mqtt);
  if (conn !== undefined && conn.session?.cut !== undefined) return ack?.nak();
  // Retain As Published [MQTT-3.3.1-12], [MQTT-3.3.1-13]; 3.1.1: always 0 on a live delivery.
  const retain = (sub & SUB.RETAIN_AS_PUBLISHED) !== 0 && message.retain;
  const ids =
    group !== undefined
      ? sharedIds(sub)
      : mqtt.subscriptionIds.size === 0
        ? undefined
        : subscriptionIds(mqtt, sub, message.topic);
  if (qos === 0) {
    if (conn !== undefined) sendQos0(b, conn, message, retain, ids);
    return ack?.ack();
  }
  if (conn === undefined && !mqtt.persistent) return ack?.nak();
  // In the cluster's durable state, a persistent session gets QoS 1/2 from its inbox (deliverStored).
  if (mqtt.persistent && b.state !== undefined && group === undefined) return;
  enqueue(b, mqtt, {
    message,
    qos,
    retain,
    rowId: undefined,
    dup: false,
    released: false,
    packetId: undefined,
    ...(ids && { subscriptionIds: ids }),
    ...(group !== undefined && { group }),
    ...(ack !== undefined && { shareAck: ack }),
  });
}

/**
 * A message from a persistent session's inbox in the cluster's durable state (`seq`: its place
 * there): at the highest QoS its subscriptions grant now, and settled at once when none matches
 * any more, or when it goes at QoS 0.
 */
export function deliverStored(b: Broker, mqtt: MqttSession, message: Message, seq: number): void {
  // Released before (its record says so): its PUBREL is queued already, not the message again.
  if (mqtt.qos2Out.has(seq)) return;
  let sub = -1;
  for (const [filter, options] of mqtt.subscriptions) {
    if (filter.startsWith('$share/') || !filterMatches(filter, message.topic)) continue;
    if ((options & SUB.NO_LOCAL) !== 0 && mqtt.clientId === message.from) continue;
    sub =
      sub === -1 ? options : Math.max(sub & SUB.QOS, options & SUB.QOS) | ((sub | options) & SUB.RETAIN_AS_PUBLISHED);
  }
  const qos = sub === -1 ? 0 : (Math.min(sub & SUB.QOS, message.qos) as 0 | 1 | 2);
  const conn = b.live.get(mqtt);
  if (qos === 0 || conn === undefined) {
    if (sub !== -1 && conn !== undefined) sendQos0(b, conn, message, false, undefined);
    b.state?.settled(mqtt.clientId, seq);
    return;
  }
  const ids = mqtt.subscriptionIds.size === 0 ? undefined : subscriptionIds(mqtt, OVERLAP, message.topic);
  enqueue(b, mqtt, {
    message,
    qos,
    retain: (sub & SUB.RETAIN_AS_PUBLISHED) !== 0 && message.retain,
    rowId: undefined,
    seq,
    dup: false,
    released: false,
    packetId: inboxPacketId(seq),
    ...(ids && { subscriptionIds: ids }),
  });
}

/** A shared subscription's own identifier (its value carries it like any subscription's). */
function sharedIds(sub: number): number[] | undefined {
  const id = Math.floor(sub / 256);
  return id === 0 ? undefined : [id];
}

/**
 * A member's session ended (a clean session closed, taken over, expired): what it was owed from
 * its groups goes to another member — QoS 1/2 are redelivered to the group, not lost [§4.8.2].
 */
export function rerouteShared(b: Broker, owed: Delivery[]): number {
  let n = 0;
  for (const d of owed) {
    const group = d.group === undefined ? undefined : b.shared.get(d.group);
    if (group !== undefined && toGroup(b, group, d.message, undefined, d.shareAck)) n++;
    else d.shareAck?.nak();
  }
  return n;
}

/** The retained messages matching a new subscription, after its SUBACK, with the retain flag [MQTT-3.3.1-6], [MQTT-3.3.1-8]. */
export function sendRetained(
  b: Broker,
  conn: MqttConnection,
  sub: { filter: string; qos: 0 | 1 | 2; ids: number[] | undefined },
): void {
  const mqtt = conn.mqtt as MqttSession;
  for (const r of b.retained.match(sub.filter)) {
    const message =
      r.message instanceof Message ? r.message.asRetained() : new Message(r.topic, r.payload, r.qos, true, r.deviceId);
    if (message.expired()) continue;
    const qos = Math.min(sub.qos, r.qos) as 0 | 1 | 2;
    const ids = sub.ids;
    if (qos === 0) sendQos0(b, conn, message, true, ids);
    else
      enqueue(b, mqtt, {
        message,
        qos,
        retain: true,
        rowId: undefined,
        dup: false,
        released: false,
        packetId: undefined,
        ...(ids && { subscriptionIds: ids }),
      });
  }
}

/** The MQTT 5 subscription identifiers of a session's subscriptions matching `topic` [MQTT-3.3.4-3], [MQTT-3.3.4-4]. */
function subscriptionIds(mqtt: MqttSession, sub: number, topic: string): number[] | undefined {
  if ((sub & OVERLAP) === 0) {
    const id = Math.floor(sub / 256);
    return id === 0 ? undefined : [id];
  }
  const ids: number[] = [];
  for (const [filter, id] of mqtt.subscriptionIds) if (filterMatches(filter, topic)) ids.push(id);
  return ids.length === 0 ? undefined : ids;
}

/**
 * The wire form of a message for this connection's protocol; undefined when it must not be sent
 * (expired, or larger than the client accepts). Positional parameters: it runs once per message
 * and subscriber, and an options object would be one more allocation each time.
 */
function wire(
  b: Broker,
  conn: MqttConnection,
  message: Message,
  qos: 0 | 1 | 2,
  retain: boolean,
  ids: number[] | undefined,
  dup: boolean,
): EncodedPublish | undefined {
  if (!conn.v5) return message.expired() && !dup ? undefined : message.encoded(qos, retain);
  // Once sent, a QoS 2 message is not expired any more [MQTT-4.3.3-7]: a resend keeps going.
  const now = dup && message.expiresAt !== undefined ? Math.min(Date.now(), message.expiresAt - 1000) : undefined;
  const e = message.encoded5(qos, retain, ids, now);
  if (e === undefined) return undefined;
  if (conn.maxPacket !== Number.POSITIVE_INFINITY && publishSize(e) > conn.maxPacket) {
    b.m.dropTooLarge.inc(); // discarded as if sent [MQTT-3.1.2-25]
    return undefined;
  }
  return e;
}

export function sendQos0(b: Broker, conn: MqttConnection, message: Message, retain: boolean, ids?: number[]): void {
  if (conn.transport.buffered + conn.outBytes > conn.maxOutbound) {
    b.m.dropSlow.inc(); // a subscriber that does not read loses QoS 0, and slows nobody
    if (conn.overSince === 0) conn.overSince = Date.now(); // its drain deadline starts
    return;
  }
  const e =
    conn.v5 || message.expiresAt !== undefined
      ? wire(b, conn, message, 0, retain, ids, false)
      : message.encoded(0, retain);
  if (e === undefined) return;
  conn.pushPublish(e, undefined);
  b.m.hot.out++;
  b.markDirty(conn);
}

export function enqueue(b: Broker, mqtt: MqttSession, d: Delivery): void {
  if (mqtt.queue.length >= (Number.isFinite(mqtt.maxQueued) ? mqtt.maxQueued : b.deps.mqtt.maxQueuedMessages)) {
    const dropped = mqtt.queue.shift();
    if (dropped?.rowId !== undefined) b.store?.dequeue(dropped.rowId);
    if (dropped?.seq !== undefined) {
      mqtt.qos2Out.delete(dropped.seq);
      b.state?.settled(mqtt.clientId, dropped.seq);
    }
    dropped?.shareAck?.ack();
    b.m.dropQueue.inc();
  }
  if (mqtt.persistent && b.store !== undefined)
    d.rowId = b.store.enqueue(mqtt.clientId, d.message.topic, d.message.payload, d.qos);
  mqtt.queue.push(d);
  pump(b, mqtt);
}

/** Moves queued deliveries into flight, up to the window (and the client's Receive Maximum), while the client reads. */
export function pump(b: Broker, mqtt: MqttSession): void {
  const conn = b.live.get(mqtt);
  if (conn === undefined || conn.state !== 'connected') return;
  const maxOutboundBytes = conn.maxOutbound;
  const window = Math.min(b.deps.mqtt.maxInflight, conn.receiveMax); // [MQTT-3.3.4-9]
  const low = mqtt.persistent && b.state !== undefined ? INBOX_IDS + 1 : 1;
  if (mqtt.queue.length > 0 && conn.transport.buffered + conn.outBytes > maxOutboundBytes && conn.overSince === 0)
    conn.overSince = Date.now();
  while (
    mqtt.inflight.size < window &&
    mqtt.queue.length > 0 &&
    conn.transport.buffered + conn.outBytes <= maxOutboundBytes
  ) {
    const d = mqtt.queue.shift() as Delivery;
    let e: EncodedPublish | undefined;
    if (!d.released) {
      e = wire(b, conn, d.message, d.qos, d.retain, d.subscriptionIds, d.dup);
      if (e === undefined) {
        // Expired before onward delivery started [MQTT-3.3.2-5], or too large for this client [MQTT-3.1.2-25].
        if (d.rowId !== undefined) b.store?.dequeue(d.rowId);
        if (d.seq !== undefined) b.state?.settled(mqtt.clientId, d.seq);
        d.shareAck?.ack();
        continue;
      }
    }
    const id = d.packetId !== undefined && !mqtt.inflight.has(d.packetId) ? d.packetId : mqtt.nextPacketId(low);
    if (id === undefined) {
      mqtt.queue.unshift([d]);
      break;
    }
    d.packetId = id;
    mqtt.inflight.set(id, d);
    if (e === undefined) {
      conn.push(encodeAck('pubrel', id)); // [MQTT-4.4.0-1]: resend PUBREL, not the PUBLISH
    } else {
      conn.pushPublish(d.dup ? withDup(e) : e, packetIdBytes(id));
      b.m.hot.out++;
    }
  }
  b.markDirty(conn);
}
