import type { IncomingMessage } from 'node:http';
import type { TLSSocket } from 'node:tls';
import type { Logger } from 'pino';
import type { WebSocket } from 'ws';
import type { GatewayConfig, MqttConfig } from '../../config/config.ts';
import { socketIdentity } from '../../edge/admission.ts';
import type { PeerIdentity } from '../../firmware-sdk/protocol/certificate-identity.ts';
import type { DeviceRecord } from '../../provisioning/registry/records.ts';
import { FleetgateError, toFleetgateError, type ErrorCode } from '../../firmware-sdk/protocol/errors.ts';
import type { StatusEvent } from '../../provisioning/registry/records.ts';
import type { Metrics } from '../metrics.ts';
import { mayPublish, maySubscribe, scopeFor } from '../policy/topics.ts';
import type { Session, SessionTable, Transport } from '../sessions.ts';
import type { RegistryLink } from '../status/registry-link.ts';
import {
  decode, encodeAck, encodeConnack, encodeSuback, encodeUnsuback, MalformedPacket, packetIdBytes, PINGRESP, withDup,
  type AckPacket, type ConnectPacket, type PublishPacket, type SubscribePacket, type UnsubscribePacket,
} from './codec.ts';
import { MqttConnection } from './connection.ts';
import { RetainedStore } from './retained.ts';
import { Message, MqttSession, type Delivery } from './session.ts';
import { DurableStore } from './store.ts';
import { tlsTransport, wsTransport, type MqttTransport } from './transport.ts';
import { SubscriptionTrie } from './trie.ts';

export interface BrokerDeps {
  config: GatewayConfig;
  mqtt: MqttConfig;
  /** `data/mqtt.db` (disk durability). */
  storeFile: string;
  registry: RegistryLink;
  sessions: SessionTable;
  metrics: Metrics;
  log: Logger;
}

/**
 * The topic policy for a PUBLISH, remembered per session for the few topics a device uses (the
 * scope only changes through `refreshScope`, which forgets). Status is checked on every packet
 * regardless, before this.
 */
function publishable(session: Session, topic: string): boolean {
  let cache = session.publishable;
  if (cache === undefined) session.publishable = cache = new Map();
  let ok = cache.get(topic);
  if (ok === undefined) {
    ok = mayPublish(session.scope, topic);
    if (cache.size >= 64) cache.clear();
    cache.set(topic, ok);
  }
  return ok;
}

/** Packets a client may send before its admission is decided (CONNECT and what it pipelines after it). */
const MAX_HELD_PACKETS = 32;

/**
 * fleetgate's MQTT core (3.1.1 and 3.1). One connection flows through named steps:
 * verify peer (TLS) → resolve identity → check status → (CONNECT) bind client id → authorize
 * each PUBLISH/SUBSCRIBE against the session's in-memory state and topic scope.
 *
 * Messages are routed synchronously through a topic trie, each outgoing PUBLISH is encoded once
 * for every subscriber that gets it, and every connection's packets of one event-loop turn leave
 * in one write. QoS 1/2 to persistent sessions is committed to disk before it is acknowledged
 * (group commit, `store.ts`). Everything a client can make the gateway hold is bounded: packet
 * size, in-flight window, queued messages, unsent bytes (a subscriber that does not read is
 * dropped, never slowing the others), retained messages per device and in total.
 */
export class MqttPlane {
  readonly #deps: BrokerDeps;
  readonly #trie = new SubscriptionTrie<MqttSession>();
  readonly #mqttSessions = new Map<string, MqttSession>();
  readonly #live = new Map<MqttSession, MqttConnection>();
  readonly #connections = new Set<MqttConnection>();
  readonly #retained: RetainedStore;
  readonly #store: DurableStore | undefined;
  readonly #dirty = new Set<MqttConnection>();
  readonly #minPacketLimit: number;
  readonly #sweep: NodeJS.Timeout;
  #flushScheduled = false;
  readonly #m;

  constructor(deps: BrokerDeps) {
    this.#deps = deps;
    const q = deps.mqtt;
    this.#retained = new RetainedStore({ perDevice: q.retainedPerDevice, bytesPerDevice: q.retainedBytesPerDevice, total: q.retainedTotal, bytesTotal: q.retainedBytesTotal });
    this.#minPacketLimit = Math.min(...Object.values(deps.config.limits).map((l) => l.maxPacketBytes));
    const m = deps.metrics;
    // Label children resolved once: a label lookup per message costs more than the routing.
    this.#m = {
      hot: m.hot,
      dropSlow: m.mqttDropped.labels({ reason: 'slow_consumer' }),
      dropQueue: m.mqttDropped.labels({ reason: 'queue_full' }),
    };
    if (q.durability === 'disk') {
      this.#store = new DurableStore(deps.storeFile);
      this.#restore(this.#store);
    }
    this.#sweep = setInterval(() => this.#sweepConnections(), 1_000);
    this.#sweep.unref();
  }

  /** Persistent sessions, their queues and retained messages, as the last run left them on disk. */
  #restore(store: DurableStore): void {
    const { sessions, queue, retained } = store.load();
    for (const s of sessions) {
      const session = new MqttSession(s.clientId, s.deviceId, true);
      session.lastSeen = s.lastSeen;
      for (const sub of s.subscriptions) {
        session.subscriptions.set(sub.filter, sub.qos);
        this.#trie.add(sub.filter, session, sub.qos);
      }
      this.#mqttSessions.set(s.clientId, session);
    }
    for (const row of queue) {
      const session = this.#mqttSessions.get(row.clientId);
      if (session === undefined) continue;
      session.queue.push({ message: new Message(row.topic, row.payload, row.qos, false, ''), qos: row.qos, retain: false, rowId: row.id, dup: true, released: false, packetId: undefined });
    }
    for (const r of retained) this.#retained.set(r);
    this.#deps.log.info({ sessions: sessions.length, queued: queue.length, retained: retained.length }, 'mqtt state restored');
  }

  get retainedCount(): number {
    return this.#retained.size;
  }

  // --- accepting connections ---

  handleTls(socket: TLSSocket): void {
    this.#accept(tlsTransport(socket), 'mqtts', socket);
  }

  handleWs(ws: WebSocket, req: IncomingMessage): void {
    this.#accept(wsTransport(ws), 'wss', req.socket as TLSSocket);
  }

  /**
   * Steps 1–3, right after the TLS handshake: identity, then status — from memory when this
   * certificate was admitted before (kept current by the status feed), else from the registry
   * thread; packets that arrive meanwhile wait (bounded). The event loop never waits on the
   * registry: a check it cannot answer in `gateway.registryTimeout` refuses (CONNACK 3).
   */
  #accept(transport: MqttTransport, kind: Transport, socket: TLSSocket): void {
    const conn: MqttConnection = new MqttConnection({
      transport, kind, remoteAddress: socket.remoteAddress ?? 'unknown',
      limit: () => conn.session === undefined ? this.#minPacketLimit : this.#deps.config.limits[conn.session.device.type].maxPacketBytes,
      onPacket: (first, body) => this.#onPacket(conn, first, body),
    });
    this.#connections.add(conn);
    transport.onData((chunk) => {
      if (conn.state === 'closed') return;
      conn.lastReceived = Date.now();
      try {
        conn.framer.push(chunk);
      } catch (err) {
        this.#malformed(conn, err);
      }
    });
    transport.onClose(() => this.#closed(conn));
    transport.onDrain(() => {
      if (conn.mqtt !== undefined) this.#pump(conn.mqtt);
    });
    let identity: PeerIdentity;
    try {
      identity = socketIdentity(socket);
    } catch (err) {
      return this.#admitted(conn, toFleetgateError(err));
    }
    const remembered = this.#deps.registry.cached(identity);
    if (remembered !== undefined && remembered.type !== 'gateway') {
      return this.#admitted(conn, this.#newSession(conn, identity, remembered, []));
    }
    conn.admitting = true;
    const stop = this.#deps.metrics.statusCheck.startTimer();
    this.#deps.registry.status(identity)
      .then(async (device) => this.#newSession(conn, identity, device, device.type === 'gateway' ? await this.#children(device.id) : []))
      .then((session) => this.#admitted(conn, session), (err: unknown) => this.#admitted(conn, toFleetgateError(err)))
      .finally(stop);
  }

  #newSession(conn: MqttConnection, identity: PeerIdentity, device: DeviceRecord, children: string[]): Session {
    return this.#deps.sessions.create({
      identity, device, transport: conn.kind, remoteAddress: conn.remoteAddress,
      scope: scopeFor(this.#deps.config.topics[device.type], device, children),
      close: () => this.#close(conn, 'cut'),
    });
  }

  /** The admission is decided: a session (registered at once, so a revocation landing before CONNECT still finds and cuts it) or a refusal. */
  #admitted(conn: MqttConnection, outcome: Session | FleetgateError): void {
    conn.admitting = false;
    if (outcome instanceof FleetgateError) conn.refusal = outcome;
    else conn.session = outcome;
    if (conn.state === 'closed') return;
    if (conn.session !== undefined) this.#deps.sessions.add(conn.session);
    const held = conn.held;
    conn.held = [];
    for (const [first, body] of held) this.#onPacket(conn, first, body);
  }

  /** The registered, unrevoked children of a gateway device; none when the registry cannot say (fail closed). */
  async #children(deviceId: string): Promise<string[]> {
    try {
      return await this.#deps.registry.children(deviceId);
    } catch {
      return [];
    }
  }

  /** A gateway device's children changed. */
  refreshScope(session: Session): void {
    void this.#children(session.device.id).then((children) => {
      session.scope = scopeFor(this.#deps.config.topics[session.device.type], session.device, children);
      session.publishable = undefined;
    });
  }

  // --- inbound packets ---

  #onPacket(conn: MqttConnection, first: number, body: Buffer): void {
    if (conn.state === 'closed') return;
    if (conn.admitting) {
      if (conn.held.length >= MAX_HELD_PACKETS) return this.#protocolError(conn, 'MQTT-3.1.0-1', `more than ${MAX_HELD_PACKETS} packets before the CONNACK`);
      conn.held.push([first, body]);
      return;
    }
    let packet;
    try {
      packet = decode(first, body);
    } catch (err) {
      return this.#malformed(conn, err);
    }
    if (conn.state === 'connecting' && packet.type !== 'connect') {
      return this.#protocolError(conn, 'MQTT-3.1.0-1', `${packet.type.toUpperCase()} before CONNECT`);
    }
    switch (packet.type) {
      case 'connect':
        if (conn.state !== 'connecting') return this.#protocolError(conn, 'MQTT-3.1.0-2', 'a second CONNECT');
        return this.#connect(conn, packet);
      case 'publish': return this.#publish(conn, packet);
      case 'puback': return this.#puback(conn, packet);
      case 'pubrec': return this.#pubrec(conn, packet);
      case 'pubrel': return this.#pubrel(conn, packet);
      case 'pubcomp': return this.#pubcomp(conn, packet);
      case 'subscribe': return this.#subscribe(conn, packet);
      case 'unsubscribe': return this.#unsubscribe(conn, packet);
      case 'pingreq':
        conn.push(PINGRESP);
        return this.#markDirty(conn);
      case 'disconnect':
        conn.will = undefined; // [MQTT-3.1.2-10]
        return this.#close(conn, 'disconnect');
    }
  }

  #malformed(conn: MqttConnection, err: unknown): void {
    const e = err instanceof MalformedPacket ? err : new MalformedPacket('MQTT-2.2', (err as Error).message);
    const code: ErrorCode = e.rule === 'MQTT-2.2.3' && /exceeds the limit/.test(e.message) ? 'PAYLOAD_TOO_LARGE' : 'BAD_REQUEST';
    if (conn.state === 'connecting' && code === 'PAYLOAD_TOO_LARGE') this.#decision('refused', conn, code, { reason: e.message });
    else this.#deps.log.warn({ decision: 'closed', code, rule: e.rule, reason: e.message, deviceId: conn.session?.device.id, transport: conn.kind, remoteAddress: conn.remoteAddress }, 'malformed mqtt packet: connection closed');
    this.#close(conn, 'malformed');
  }

  #protocolError(conn: MqttConnection, rule: string, what: string): void {
    this.#malformed(conn, new MalformedPacket(rule, `protocol violation: ${what}`));
  }

  /** Step 4 at CONNECT: the client id must be the certificate's device id [MQTT-3.1.3-8]. */
  #connect(conn: MqttConnection, p: ConnectPacket): void {
    conn.clientId = p.clientId;
    const refuse = (err: FleetgateError, returnCode: number = err.connackCode) => {
      this.#decision('refused', conn, err.code, { message: err.message });
      conn.push(encodeConnack(false, returnCode)); // [MQTT-3.2.2-4]: session present 0 with a non-zero code
      this.#close(conn, 'refused'); // [MQTT-3.2.2-5]
    };
    if (p.protocolLevel === 5) return refuse(new FleetgateError('PROTOCOL_UNSUPPORTED', 'MQTT 3.1.1 and 3.1 only (MQTT 5 is not supported yet)'), 1);
    if (!((p.protocolName === 'MQTT' && p.protocolLevel === 4) || (p.protocolName === 'MQIsdp' && p.protocolLevel === 3))) {
      return refuse(new FleetgateError('PROTOCOL_UNSUPPORTED', `protocol ${p.protocolName} level ${p.protocolLevel}`), 1); // [MQTT-3.1.2-2]
    }
    if (conn.refusal !== undefined) return refuse(conn.refusal);
    const session = conn.session as Session;
    if (session.cut !== undefined) return refuse(new FleetgateError(session.cut));
    if (p.clientId !== session.device.id) {
      return refuse(new FleetgateError('CLIENT_ID_MISMATCH', `client id ${JSON.stringify(p.clientId)} is not the device id ${session.device.id}`));
    }
    const limits = this.#deps.config.limits[session.device.type];
    if (p.keepalive < limits.keepaliveMinS || p.keepalive > limits.keepaliveMaxS) {
      // MQTT 3.1.1 cannot tell a client which keepalive to use; like Mosquitto, identifier rejected.
      return refuse(new FleetgateError('KEEPALIVE_OUT_OF_RANGE', `keepalive ${p.keepalive}s outside [${limits.keepaliveMinS}, ${limits.keepaliveMaxS}]`));
    }
    // The will is a PUBLISH the device makes in advance: the same topic policy, checked now.
    if (p.will !== undefined && !mayPublish(session.scope, p.will.topic)) {
      return refuse(new FleetgateError('TOPIC_DENIED', `will topic ${p.will.topic} outside the device's topics`));
    }
    // Takeover: the older connection of this client id is closed [MQTT-3.1.4-2].
    const existing = this.#mqttSessions.get(p.clientId);
    const older = existing === undefined ? undefined : this.#live.get(existing);
    if (older !== undefined) {
      this.#deps.log.info({ deviceId: session.device.id, sessionId: session.id, transport: conn.kind }, 'new session takes over the previous one');
      this.#close(older, 'takeover');
    }
    let mqtt = existing;
    const sessionPresent = !p.cleanSession && existing !== undefined && existing.persistent;
    if (mqtt !== undefined && (p.cleanSession || !mqtt.persistent)) {
      this.#discard(mqtt); // [MQTT-3.1.2-6]
      mqtt = undefined;
    }
    if (mqtt === undefined) {
      mqtt = new MqttSession(p.clientId, session.device.id, !p.cleanSession);
      this.#mqttSessions.set(p.clientId, mqtt);
    }
    if (mqtt.persistent) this.#store?.saveSession(mqtt.clientId, mqtt.deviceId, Date.now());
    conn.mqtt = mqtt;
    conn.will = p.will;
    conn.keepaliveMs = p.keepalive * 1000;
    conn.state = 'connected';
    this.#live.set(mqtt, conn);
    this.#decision('admitted', conn, undefined, { cleanSession: p.cleanSession, sessionPresent });
    this.#deps.metrics.connected.inc({ type: session.device.type, transport: conn.kind });
    conn.push(encodeConnack(sessionPresent, 0));
    this.#markDirty(conn);
    this.#pump(mqtt); // what a persistent session is owed [MQTT-4.4.0-1]
  }

  #discard(mqtt: MqttSession): void {
    for (const filter of mqtt.subscriptions.keys()) this.#trie.remove(filter, mqtt);
    if (mqtt.persistent) this.#store?.dropSession(mqtt.clientId);
    this.#mqttSessions.delete(mqtt.clientId);
  }

  /** The per-packet check: the session's in-memory status (kept current by the watcher), then the topic scope. */
  #packetCheck(conn: MqttConnection, allowed: (s: Session) => boolean): ErrorCode | undefined {
    const session = conn.session;
    if (session === undefined) return 'NOT_AUTHORIZED';
    if (session.cut !== undefined) return session.cut;
    return allowed(session) ? undefined : 'TOPIC_DENIED';
  }

  #publish(conn: MqttConnection, p: PublishPacket): void {
    const code = this.#packetCheck(conn, (s) => publishable(s, p.topic));
    if (code !== undefined) {
      // MQTT 3.1.1 has no negative PUBACK: an unauthorized PUBLISH closes the connection.
      this.#denied('publish', conn, code, p.topic);
      return this.#close(conn, 'denied');
    }
    const mqtt = conn.mqtt as MqttSession;
    (this.#m.hot.in[p.qos] as number)++;
    if (p.qos === 2 && mqtt.qos2In.has(p.packetId)) {
      // A resent QoS 2 PUBLISH we already have: acknowledge, do not deliver again [MQTT-4.3.3-2].
      return this.#ackAfterCommit(conn, 'pubrec', p.packetId);
    }
    const deviceId = (conn.session as Session).device.id;
    // A QoS 1/2 message may wait in session queues: give it its own bytes rather than keeping the
    // whole socket read (up to 64 KiB) alive for a short payload.
    const payload = p.qos > 0 && p.payload.buffer.byteLength > p.payload.length * 4 + 1024 ? Buffer.from(p.payload) : p.payload;
    const message = new Message(p.topic, payload, p.qos, p.retain, deviceId);
    if (p.retain) this.#retain(conn, message);
    this.#route(message);
    if (p.qos === 1) this.#ackAfterCommit(conn, 'puback', p.packetId);
    else if (p.qos === 2) {
      mqtt.qos2In.add(p.packetId);
      this.#ackAfterCommit(conn, 'pubrec', p.packetId);
    }
  }

  /** PUBACK / PUBREC promise the message is stored for every persistent session owed it: sent after the commit. */
  #ackAfterCommit(conn: MqttConnection, type: 'puback' | 'pubrec', id: number): void {
    const send = (err: Error | undefined) => {
      if (err !== undefined) {
        this.#deps.log.error({ err: err.message, deviceId: conn.session?.device.id }, 'mqtt store commit failed: connection closed without acknowledgement');
        return this.#close(conn, 'store_failed');
      }
      conn.push(encodeAck(type, id));
      this.#markDirty(conn);
    };
    if (this.#store === undefined) send(undefined);
    else this.#store.afterCommit(send);
  }

  #retain(conn: MqttConnection, message: Message): void {
    const r = { topic: message.topic, payload: message.payload, qos: message.qos, deviceId: message.from };
    if (!this.#retained.set(r)) {
      this.#deps.metrics.retainedRefused.inc();
      this.#deps.log.warn({ code: 'PAYLOAD_TOO_LARGE', deviceId: message.from, topic: message.topic, transport: conn.kind }, 'retained message over quota: delivered, not retained');
      return;
    }
    if (message.payload.length === 0) this.#store?.deleteRetained(message.topic);
    else this.#store?.putRetained(message.topic, message.payload, message.qos, message.from);
  }

  /** Delivers a message to every matching session, each once at the highest QoS its subscriptions grant, never above the publish QoS. */
  #route(message: Message): void {
    const matches = this.#trie.match(message.topic);
    for (const [mqtt, granted] of matches) {
      const qos = Math.min(granted, message.qos) as 0 | 1 | 2; // [MQTT-3.8.4-6]
      const conn = this.#live.get(mqtt);
      if (conn !== undefined && conn.session?.cut !== undefined) continue;
      if (qos === 0) {
        if (conn !== undefined) this.#sendQos0(conn, message, false);
        continue;
      }
      if (conn === undefined && !mqtt.persistent) continue;
      this.#enqueue(mqtt, { message, qos, retain: false, rowId: undefined, dup: false, released: false, packetId: undefined });
    }
  }

  #sendQos0(conn: MqttConnection, message: Message, retain: boolean): void {
    if (conn.transport.buffered + conn.outBytes > this.#deps.mqtt.maxOutboundBytes) {
      this.#m.dropSlow.inc(); // a subscriber that does not read loses QoS 0, and slows nobody
      if (conn.overSince === 0) conn.overSince = Date.now(); // its drain deadline starts
      return;
    }
    conn.pushPublish(message.encoded(0, retain), undefined);
    this.#m.hot.out++;
    this.#markDirty(conn);
  }

  #enqueue(mqtt: MqttSession, d: Delivery): void {
    if (mqtt.queue.length >= this.#deps.mqtt.maxQueuedMessages) {
      const dropped = mqtt.queue.shift();
      if (dropped?.rowId !== undefined) this.#store?.dequeue(dropped.rowId);
      this.#m.dropQueue.inc();
    }
    if (mqtt.persistent && this.#store !== undefined) d.rowId = this.#store.enqueue(mqtt.clientId, d.message.topic, d.message.payload, d.qos);
    mqtt.queue.push(d);
    this.#pump(mqtt);
  }

  /** Moves queued deliveries into flight, up to the window, while the client reads. */
  #pump(mqtt: MqttSession): void {
    const conn = this.#live.get(mqtt);
    if (conn === undefined || conn.state !== 'connected') return;
    const { maxInflight, maxOutboundBytes } = this.#deps.mqtt;
    if (mqtt.queue.length > 0 && conn.transport.buffered + conn.outBytes > maxOutboundBytes && conn.overSince === 0) conn.overSince = Date.now();
    while (mqtt.inflight.size < maxInflight && mqtt.queue.length > 0 && conn.transport.buffered + conn.outBytes <= maxOutboundBytes) {
      const d = mqtt.queue.shift() as Delivery;
      const id = d.packetId !== undefined && !mqtt.inflight.has(d.packetId) ? d.packetId : mqtt.nextPacketId();
      if (id === undefined) {
        mqtt.queue.unshift([d]);
        break;
      }
      d.packetId = id;
      mqtt.inflight.set(id, d);
      if (d.released) {
        conn.push(encodeAck('pubrel', id)); // [MQTT-4.4.0-1]: resend PUBREL, not the PUBLISH
      } else {
        const encoded = d.message.encoded(d.qos, d.retain);
        conn.pushPublish(d.dup ? withDup(encoded) : encoded, packetIdBytes(id));
        this.#m.hot.out++;
      }
    }
    this.#markDirty(conn);
  }

  #settle(conn: MqttConnection, p: AckPacket, expect: 'publish' | 'released'): Delivery | undefined {
    const mqtt = conn.mqtt as MqttSession;
    const d = mqtt.inflight.get(p.packetId);
    if (d === undefined || (expect === 'released') !== d.released) return undefined; // unknown id: ignore
    return d;
  }

  #puback(conn: MqttConnection, p: AckPacket): void {
    const d = this.#settle(conn, p, 'publish');
    if (d === undefined || d.qos !== 1) return;
    this.#done(conn.mqtt as MqttSession, p.packetId, d);
  }

  #pubrec(conn: MqttConnection, p: AckPacket): void {
    const d = this.#settle(conn, p, 'publish');
    if (d === undefined || d.qos !== 2) return;
    d.released = true;
    conn.push(encodeAck('pubrel', p.packetId));
    this.#markDirty(conn);
  }

  #pubcomp(conn: MqttConnection, p: AckPacket): void {
    const d = this.#settle(conn, p, 'released');
    if (d === undefined) return;
    this.#done(conn.mqtt as MqttSession, p.packetId, d);
  }

  #done(mqtt: MqttSession, id: number, d: Delivery): void {
    mqtt.inflight.delete(id);
    if (d.rowId !== undefined) this.#store?.dequeue(d.rowId);
    this.#pump(mqtt);
  }

  #pubrel(conn: MqttConnection, p: AckPacket): void {
    (conn.mqtt as MqttSession).qos2In.delete(p.packetId);
    conn.push(encodeAck('pubcomp', p.packetId)); // also for an id we no longer know [MQTT-4.3.3-2]
    this.#markDirty(conn);
  }

  #subscribe(conn: MqttConnection, p: SubscribePacket): void {
    const mqtt = conn.mqtt as MqttSession;
    const granted: number[] = [];
    const retained: { qos: 0 | 1 | 2; filter: string }[] = [];
    for (const { filter, qos } of p.subscriptions) {
      const code = this.#packetCheck(conn, (s) => maySubscribe(s.scope, filter));
      if (code !== undefined && code !== 'TOPIC_DENIED') {
        this.#denied('subscribe', conn, code, filter);
        return this.#close(conn, 'denied');
      }
      if (code === 'TOPIC_DENIED') {
        this.#denied('subscribe', conn, code, filter);
        granted.push(0x80); // [MQTT-3.9.3-2]
        continue;
      }
      mqtt.subscriptions.set(filter, qos); // replaces an identical filter's QoS [MQTT-3.8.4-3]
      this.#trie.add(filter, mqtt, qos);
      if (mqtt.persistent) this.#store?.addSubscription(mqtt.clientId, filter, qos);
      granted.push(qos);
      retained.push({ filter, qos });
    }
    conn.push(encodeSuback(p.packetId, granted));
    // Retained messages matching a new subscription follow the SUBACK, with the retain flag [MQTT-3.3.1-6], [MQTT-3.3.1-8].
    for (const { filter, qos } of retained) {
      for (const r of this.#retained.match(filter)) {
        const message = new Message(r.topic, r.payload, r.qos, true, r.deviceId);
        const q = Math.min(qos, r.qos) as 0 | 1 | 2;
        if (q === 0) this.#sendQos0(conn, message, true);
        else this.#enqueue(mqtt, { message, qos: q, retain: true, rowId: undefined, dup: false, released: false, packetId: undefined });
      }
    }
    this.#markDirty(conn);
  }

  #unsubscribe(conn: MqttConnection, p: UnsubscribePacket): void {
    const mqtt = conn.mqtt as MqttSession;
    for (const filter of p.filters) {
      if (!mqtt.subscriptions.delete(filter)) continue;
      this.#trie.remove(filter, mqtt);
      if (mqtt.persistent) this.#store?.removeSubscription(mqtt.clientId, filter);
    }
    conn.push(encodeUnsuback(p.packetId)); // [MQTT-3.10.4-4]
    this.#markDirty(conn);
  }

  // --- output ---

  #markDirty(conn: MqttConnection): void {
    if (conn.out.length === 0) return;
    this.#dirty.add(conn);
    if (this.#flushScheduled) return;
    this.#flushScheduled = true;
    setImmediate(() => this.#flushAll());
  }

  /** One write per connection per event-loop turn. */
  #flushAll(): void {
    this.#flushScheduled = false;
    const dirty = [...this.#dirty];
    this.#dirty.clear();
    for (const conn of dirty) conn.flush();
  }

  // --- closing ---

  #close(conn: MqttConnection, reason: string): void {
    if (conn.state === 'closed') return;
    conn.closeReason ??= reason;
    conn.flush();
    conn.transport.close();
    this.#closed(conn);
  }

  #closed(conn: MqttConnection): void {
    if (!this.#connections.delete(conn)) return;
    const wasConnected = conn.state === 'connected';
    conn.state = 'closed';
    this.#dirty.delete(conn);
    const session = conn.session;
    if (session !== undefined) {
      this.#deps.sessions.remove(session);
      if (wasConnected) this.#deps.metrics.connected.dec({ type: session.device.type, transport: conn.kind });
    }
    const mqtt = conn.mqtt;
    if (mqtt !== undefined && this.#live.get(mqtt) === conn) {
      this.#live.delete(mqtt);
      if (mqtt.persistent) {
        mqtt.requeueInflight();
        mqtt.lastSeen = Date.now();
        this.#store?.saveSession(mqtt.clientId, mqtt.deviceId, mqtt.lastSeen);
      } else {
        this.#discard(mqtt);
      }
    }
    // The will: on any close but DISCONNECT [MQTT-3.1.2-8] — and not for a device cut by revocation.
    const noWill = conn.closeReason === 'disconnect' || conn.closeReason === 'cut' || conn.closeReason === 'shutdown';
    if (wasConnected && conn.will !== undefined && !noWill && session?.cut === undefined) {
      const w = conn.will;
      conn.will = undefined;
      const message = new Message(w.topic, w.payload, w.qos, w.retain, session?.device.id ?? '');
      if (w.retain) this.#retain(conn, message);
      this.#route(message);
    }
  }

  /** Keepalive (1.5×) [MQTT-3.1.2-24], CONNECT deadline, and subscribers that stopped reading. */
  #sweepConnections(now = Date.now()): void {
    const { connectTimeoutMs } = this.#deps.config;
    const { maxOutboundBytes, drainTimeoutMs, sessionExpiryMs } = this.#deps.mqtt;
    for (const conn of this.#connections) {
      if (conn.state === 'connecting' && now - conn.since > connectTimeoutMs) {
        this.#close(conn, 'connect_timeout');
      } else if (conn.state === 'connected' && conn.keepaliveMs > 0 && now - conn.lastReceived > conn.keepaliveMs * 1.5) {
        this.#deps.log.info({ code: 'KEEPALIVE_TIMEOUT', deviceId: conn.session?.device.id, transport: conn.kind }, 'keepalive expired: connection closed');
        this.#close(conn, 'keepalive');
      } else if (conn.overSince !== 0) {
        // It hit the outbound bound: it must drain (to half of it) within the drain timeout.
        if (conn.transport.buffered <= maxOutboundBytes / 2) conn.overSince = 0;
        else if (now - conn.overSince > drainTimeoutMs) {
          this.#deps.metrics.slowConsumers.inc();
          this.#deps.log.warn({ code: 'SLOW_CONSUMER', deviceId: conn.session?.device.id, transport: conn.kind, buffered: conn.transport.buffered }, 'subscriber does not read: connection closed');
          this.#close(conn, 'slow_consumer');
        }
      }
    }
    // Abandoned persistent sessions expire.
    for (const mqtt of this.#mqttSessions.values()) {
      if (mqtt.persistent && !this.#live.has(mqtt) && now - mqtt.lastSeen > sessionExpiryMs) {
        this.#deps.log.info({ clientId: mqtt.clientId }, 'persistent session expired');
        this.#discard(mqtt);
      }
    }
  }

  /**
   * A status event from the registry feed: a revoked device's retained messages and persistent
   * session go with it (what it published is no longer vouched for; nobody may resume it).
   */
  onStatusEvent(event: StatusEvent): void {
    if (event.kind !== 'device.revoke' || event.deviceId === null) return;
    const topics = this.#retained.deleteDevice(event.deviceId);
    for (const t of topics) this.#store?.deleteRetained(t);
    const mqtt = this.#mqttSessions.get(event.deviceId);
    if (mqtt !== undefined && !this.#live.has(mqtt)) this.#discard(mqtt);
    if (topics.length > 0) this.#deps.log.info({ deviceId: event.deviceId, retained: topics.length }, 'retained messages of a revoked device removed');
  }

  #denied(action: 'publish' | 'subscribe', conn: MqttConnection, code: ErrorCode, topic: string): void {
    this.#deps.metrics.denied.inc({ action, code });
    this.#deps.log.warn({ action, code, topic, deviceId: conn.session?.device.id, serial: conn.session?.identity.serial }, `${action} refused`);
  }

  /** One decision line per connection, with the code, serial and fingerprint. */
  #decision(outcome: 'admitted' | 'refused', conn: MqttConnection, code: ErrorCode | undefined, extra: Record<string, unknown>): void {
    const identity = conn.session?.identity ?? (conn.refusal?.detail as { serial?: string; fingerprint?: string; deviceId?: string } | undefined);
    this.#deps.metrics.handshakes.inc({ transport: conn.kind, outcome, code: code ?? 'OK' });
    const line = {
      decision: outcome, code, transport: conn.kind, remoteAddress: conn.remoteAddress, clientId: conn.clientId,
      deviceId: identity?.deviceId, serial: identity?.serial, fingerprint: identity?.fingerprint, ...extra,
    };
    if (outcome === 'admitted') this.#deps.log.info(line, 'mqtt connection admitted');
    else this.#deps.log.warn(line, 'mqtt connection refused');
  }

  async close(): Promise<void> {
    clearInterval(this.#sweep);
    for (const conn of [...this.#connections]) this.#close(conn, 'shutdown');
    this.#store?.close();
  }
}
