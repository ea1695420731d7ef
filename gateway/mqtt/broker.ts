import { isUtf8 } from 'node:buffer';
import type { IncomingMessage } from 'node:http';
import type { TLSSocket } from 'node:tls';
import type { Logger } from 'pino';
import type { WebSocket } from 'ws';
import type { GatewayConfig, MqttConfig } from '../../config/config.ts';
import { socketIdentity } from '../../edge/admission.ts';
import type { PeerIdentity } from '../../firmware-sdk/protocol/certificate-identity.ts';
import { type ErrorCode, FleetgateError, toFleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import { REASON, reasonCodeFor, reasonString } from '../../firmware-sdk/protocol/mqtt5.ts';
import type { DeviceRecord, StatusEvent } from '../../provisioning/registry/records.ts';
import type { Metrics } from '../metrics.ts';
import { mayPublish, maySubscribe, scopeFor } from '../policy/topics.ts';
import type { Session, SessionTable, Transport } from '../sessions.ts';
import type { RegistryLink } from '../status/registry-link.ts';
import {
  type AckPacket,
  type ConnectPacket,
  type DisconnectPacket,
  decode,
  type EncodedPublish,
  encodeAck,
  encodeAck5,
  encodeConnack,
  encodeConnack5,
  encodeDisconnect5,
  encodeSuback,
  encodeSuback5,
  encodeUnsuback,
  encodeUnsuback5,
  type ForwardedProperties,
  type InboundPacket,
  MalformedPacket,
  PINGRESP,
  type Properties,
  type PublishPacket,
  packetIdBytes,
  publishSize,
  SUB,
  type SubscribePacket,
  TooLarge,
  type UnsubscribePacket,
  withDup,
} from './codec.ts';
import { MqttConnection } from './connection.ts';
import { RetainedStore } from './retained.ts';
import { type Delivery, Message, MqttSession } from './session.ts';
import { DurableStore } from './store.ts';
import { type MqttTransport, tlsTransport, wsTransport } from './transport.ts';
import { filterMatches, OVERLAP, SubscriptionTrie } from './trie.ts';

export interface BrokerDeps {
  config: GatewayConfig;
  mqtt: MqttConfig;
  /** `data/mqtt.db` (disk durability). */
  storeFile: string;
  registry: RegistryLink;
  sessions: SessionTable;
  metrics: Metrics;
  log: Logger;
  /** Other gateway nodes (NATS): every accepted message goes to them, theirs come back through {@link MqttPlane.routeRemote}. */
  bus?: ClusterLink;
}

/** What the MQTT core needs of the cluster: the fan-out to other nodes and the filters it must hear. */
export interface ClusterLink {
  publish(message: Message): void;
  filterAdded(filter: string): void;
  filterRemoved(filter: string): void;
  /** This client id connected here: the other nodes close theirs (takeover across nodes). */
  announceSession(clientId: string): void;
  /** A retained message kept here (or cleared): every other node keeps it too. */
  publishRetained(message: Message): void;
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

/** MQTT 5 DISCONNECT reason for why the gateway closes a connection. */
const CLOSE_REASONS: Record<string, number> = {
  takeover: REASON.SESSION_TAKEN_OVER,
  keepalive: REASON.KEEP_ALIVE_TIMEOUT,
  slow_consumer: REASON.QUOTA_EXCEEDED,
  shutdown: REASON.SERVER_SHUTTING_DOWN,
  store_failed: REASON.UNSPECIFIED,
  denied: REASON.NOT_AUTHORIZED,
};

/** The MQTT 5 properties a PUBLISH (or will) forwards to subscribers. */
function forwarded(p: Properties | undefined): ForwardedProperties | undefined {
  if (p === undefined) return undefined;
  const f: ForwardedProperties = {};
  if (p.payloadFormat !== undefined) f.payloadFormat = p.payloadFormat;
  if (p.contentType !== undefined) f.contentType = p.contentType;
  if (p.responseTopic !== undefined) f.responseTopic = p.responseTopic;
  if (p.correlationData !== undefined) f.correlationData = p.correlationData;
  if (p.userProperties !== undefined) f.userProperties = p.userProperties;
  return Object.keys(f).length === 0 ? undefined : f;
}

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
  /** MQTT 5 wills waiting out their Will Delay Interval, by client id [MQTT-3.1.3-9]. */
  readonly #pendingWills = new Map<string, NodeJS.Timeout>();
  readonly #m;

  constructor(deps: BrokerDeps) {
    this.#deps = deps;
    const q = deps.mqtt;
    this.#retained = new RetainedStore({
      perDevice: q.retainedPerDevice,
      bytesPerDevice: q.retainedBytesPerDevice,
      total: q.retainedTotal,
      bytesTotal: q.retainedBytesTotal,
    });
    this.#minPacketLimit = Math.min(...Object.values(deps.config.limits).map((l) => l.maxPacketBytes));
    const m = deps.metrics;
    // Label children resolved once: a label lookup per message costs more than the routing.
    this.#m = {
      hot: m.hot,
      dropSlow: m.mqttDropped.labels({ reason: 'slow_consumer' }),
      dropTooLarge: m.mqttDropped.labels({ reason: 'over_client_maximum_packet_size' }),
      dropQueue: m.mqttDropped.labels({ reason: 'queue_full' }),
    };
    if (q.durability === 'disk') {
      this.#store = new DurableStore(deps.storeFile);
      this.#restore(this.#store);
    }
    this.#sweep = setInterval(() => this.#sweepConnections(), 1_000);
    this.#sweep.unref();
  }

  /** Sessions holding each filter, for the cluster link: it hears a filter while one session here holds it. */
  readonly #filterHolders = new Map<string, number>();

  #trieAdd(filter: string, session: MqttSession, value: number, isNew: boolean): void {
    this.#trie.add(filter, session, value);
    if (!isNew || this.#deps.bus === undefined) return;
    const n = (this.#filterHolders.get(filter) ?? 0) + 1;
    this.#filterHolders.set(filter, n);
    if (n === 1) this.#deps.bus.filterAdded(filter);
  }

  #trieRemove(filter: string, session: MqttSession): void {
    if (!this.#trie.remove(filter, session) || this.#deps.bus === undefined) return;
    const n = (this.#filterHolders.get(filter) ?? 1) - 1;
    if (n > 0) this.#filterHolders.set(filter, n);
    else {
      this.#filterHolders.delete(filter);
      this.#deps.bus.filterRemoved(filter);
    }
  }

  /**
   * The same client id connected to another node: its connection here is closed as a takeover
   * [MQTT-3.1.4-2], and its session here is forgotten (sessions are node-local: the device now
   * lives on the other node, and this one stops queuing for it).
   */
  takenOverElsewhere(clientId: string, node: string): void {
    const mqtt = this.#mqttSessions.get(clientId);
    if (mqtt === undefined) return;
    const conn = this.#live.get(mqtt);
    if (conn !== undefined) {
      this.#deps.log.info(
        { deviceId: conn.session?.device.id, clientId, node, transport: conn.kind },
        'session taken over on another node',
      );
      this.#close(conn, 'takeover');
    }
    if (this.#mqttSessions.get(clientId) === mqtt) this.#discard(mqtt);
  }

  /** A message accepted by another node: delivered to this node's subscribers (not sent on again, not retained here). */
  routeRemote(message: Message): void {
    this.#route(message);
  }

  /** Persistent sessions, their queues and retained messages, as the last run left them on disk. */
  #restore(store: DurableStore): void {
    const { sessions, queue, retained } = store.load();
    for (const s of sessions) {
      const session = new MqttSession(s.clientId, s.deviceId, true);
      session.lastSeen = s.lastSeen;
      session.expiryMs = this.#deps.mqtt.sessionExpiryMs;
      for (const sub of s.subscriptions) {
        // The stored value is the subscription's options (+ 256 × its MQTT 5 identifier).
        session.subscriptions.set(sub.filter, sub.qos % 256);
        if (sub.qos >= 256) session.subscriptionIds.set(sub.filter, Math.floor(sub.qos / 256));
        this.#trieAdd(sub.filter, session, sub.qos, true);
      }
      for (const id of s.qos2In) session.qos2In.add(id);
      this.#mqttSessions.set(s.clientId, session);
    }
    for (const row of queue) {
      const session = this.#mqttSessions.get(row.clientId);
      if (session === undefined) continue;
      session.queue.push({
        message: new Message(row.topic, row.payload, row.qos, false, ''),
        qos: row.qos,
        retain: false,
        rowId: row.id,
        dup: true,
        released: false,
        packetId: undefined,
      });
    }
    for (const r of retained) this.#retained.set(r);
    this.#deps.log.info(
      { sessions: sessions.length, queued: queue.length, retained: retained.length },
      'mqtt state restored',
    );
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
      transport,
      kind,
      remoteAddress: socket.remoteAddress ?? 'unknown',
      limit: () =>
        conn.session === undefined
          ? this.#minPacketLimit
          : this.#deps.config.limits[conn.session.device.type].maxPacketBytes,
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
    this.#deps.registry
      .status(identity)
      .then(async (device) =>
        this.#newSession(conn, identity, device, device.type === 'gateway' ? await this.#children(device.id) : []),
      )
      .then(
        (session) => this.#admitted(conn, session),
        (err: unknown) => this.#admitted(conn, toFleetgateError(err)),
      )
      .finally(stop);
  }

  #newSession(conn: MqttConnection, identity: PeerIdentity, device: DeviceRecord, children: string[]): Session {
    return this.#deps.sessions.create({
      identity,
      device,
      transport: conn.kind,
      remoteAddress: conn.remoteAddress,
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
      if (conn.held.length >= MAX_HELD_PACKETS)
        return this.#protocolError(conn, 'MQTT-3.1.0-1', `more than ${MAX_HELD_PACKETS} packets before the CONNACK`);
      conn.held.push([first, body]);
      return;
    }
    let packet: InboundPacket;
    try {
      packet = decode(first, body, conn.v5);
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
      case 'publish':
        return this.#publish(conn, packet);
      case 'puback':
        return this.#puback(conn, packet);
      case 'pubrec':
        return this.#pubrec(conn, packet);
      case 'pubrel':
        return this.#pubrel(conn, packet);
      case 'pubcomp':
        return this.#pubcomp(conn, packet);
      case 'subscribe':
        return this.#subscribe(conn, packet);
      case 'unsubscribe':
        return this.#unsubscribe(conn, packet);
      case 'pingreq':
        conn.push(PINGRESP);
        return this.#markDirty(conn);
      case 'disconnect':
        return this.#disconnect(conn, packet);
    }
  }

  #malformed(conn: MqttConnection, err: unknown): void {
    const e = err instanceof MalformedPacket ? err : new MalformedPacket('MQTT-2.2', (err as Error).message);
    const code: ErrorCode = e instanceof TooLarge ? 'PAYLOAD_TOO_LARGE' : 'BAD_REQUEST';
    if (conn.state === 'connecting' && e instanceof TooLarge) {
      this.#decision('refused', conn, code, { reason: e.message });
      // An MQTT 5 CONNECT over the limit is told so: CONNACK 0x95 Packet too large [MQTT-3.2.2-8].
      if (e.isMqtt5Connect)
        conn.push(
          encodeConnack5(false, REASON.PACKET_TOO_LARGE, {
            reasonString: reasonString(code, new FleetgateError(code).publicMessage),
          }),
        );
    } else
      this.#deps.log.warn(
        {
          decision: 'closed',
          code,
          rule: e.rule,
          reason: e.message,
          deviceId: conn.session?.device.id,
          transport: conn.kind,
          remoteAddress: conn.remoteAddress,
        },
        'malformed mqtt packet: connection closed',
      );
    // MQTT 5 says why before closing [MQTT-4.13]: 0x81 Malformed Packet, 0x82 Protocol Error, 0x95 Packet too large, …
    this.#close(conn, 'malformed', e.reasonCode, e.message);
  }

  #protocolError(conn: MqttConnection, rule: string, what: string, reasonCode: number = REASON.PROTOCOL_ERROR): void {
    this.#malformed(conn, new MalformedPacket(rule, `protocol violation: ${what}`, reasonCode));
  }

  /** Step 4 at CONNECT: the client id must be the certificate's device id [MQTT-3.1.3-8]. */
  #connect(conn: MqttConnection, p: ConnectPacket): void {
    conn.clientId = p.clientId;
    const v5 = p.protocolLevel === 5;
    conn.v5 = v5;
    const refuse = (
      err: FleetgateError,
      returnCode: number = err.connackCode,
      reasonCode: number = reasonCodeFor(err.code),
    ) => {
      this.#decision('refused', conn, err.code, { message: err.message, ...(v5 && { reasonCode }) });
      // [MQTT-3.2.2-4] / [MQTT-3.2.2-6]: session present 0 with a refusal; MQTT 5 says why (reason code + string).
      conn.push(
        v5
          ? encodeConnack5(false, reasonCode, { reasonString: reasonString(err.code, err.publicMessage) })
          : encodeConnack(false, returnCode),
      );
      this.#close(conn, 'refused'); // [MQTT-3.2.2-5], [MQTT-3.2.2-7]
    };
    if (
      !(
        (p.protocolName === 'MQTT' && (p.protocolLevel === 4 || v5)) ||
        (p.protocolName === 'MQIsdp' && p.protocolLevel === 3)
      )
    ) {
      return refuse(
        new FleetgateError('PROTOCOL_UNSUPPORTED', `protocol ${p.protocolName} level ${p.protocolLevel}`),
        1,
      ); // [MQTT-3.1.2-2]
    }
    const props = p.properties ?? {};
    if (conn.refusal !== undefined) return refuse(conn.refusal);
    const session = conn.session as Session;
    if (session.cut !== undefined) return refuse(new FleetgateError(session.cut));
    // The identity is the certificate: no enhanced authentication, no assigned client ids.
    if (props.authMethod !== undefined) {
      return refuse(
        new FleetgateError(
          'NOT_AUTHORIZED',
          `authentication method ${JSON.stringify(props.authMethod)} not supported: the identity is the client certificate`,
        ),
        5,
        REASON.BAD_AUTHENTICATION_METHOD,
      );
    }
    if (p.clientId !== session.device.id) {
      return refuse(
        new FleetgateError(
          'CLIENT_ID_MISMATCH',
          `client id ${JSON.stringify(p.clientId)} is not the device id ${session.device.id}`,
        ),
      );
    }
    const limits = this.#deps.config.limits[session.device.type];
    let keepalive = p.keepalive;
    let serverKeepAlive: number | undefined;
    if (keepalive < limits.keepaliveMinS || keepalive > limits.keepaliveMaxS) {
      // MQTT 3.1.1 cannot tell a client which keepalive to use; like Mosquitto, identifier rejected.
      if (!v5)
        return refuse(
          new FleetgateError(
            'KEEPALIVE_OUT_OF_RANGE',
            `keepalive ${p.keepalive}s outside [${limits.keepaliveMinS}, ${limits.keepaliveMaxS}]`,
          ),
        );
      // MQTT 5 can: the CONNACK's Server Keep Alive [MQTT-3.2.2-21].
      keepalive =
        keepalive === 0
          ? limits.keepaliveMaxS
          : Math.min(Math.max(keepalive, limits.keepaliveMinS), limits.keepaliveMaxS);
      serverKeepAlive = keepalive;
    }
    // The will is a PUBLISH the device makes in advance: the same topic policy, checked now.
    if (p.will !== undefined) {
      const wp = p.will.properties;
      if (
        !mayPublish(session.scope, p.will.topic) ||
        (wp?.responseTopic !== undefined && !mayPublish(session.scope, wp.responseTopic))
      ) {
        return refuse(new FleetgateError('TOPIC_DENIED', `will topic ${p.will.topic} outside the device's topics`));
      }
      if (wp?.payloadFormat === 1 && !isUtf8(p.will.payload)) {
        return refuse(
          new FleetgateError('BAD_REQUEST', 'will payload is not UTF-8 although its payload format says so'),
          5,
          REASON.PAYLOAD_FORMAT_INVALID,
        );
      }
      if ((wp?.userPropertyBytes ?? 0) > this.#deps.mqtt.maxUserPropertyBytes) {
        return refuse(
          new FleetgateError(
            'PAYLOAD_TOO_LARGE',
            `will user properties over ${this.#deps.mqtt.maxUserPropertyBytes} bytes`,
          ),
          5,
          REASON.QUOTA_EXCEEDED,
        );
      }
    }
    // Session lifetime: 3.1.1 clean session 0 → the configured expiry; MQTT 5 → what the client asks, bounded.
    const maxExpiryS = Math.floor(this.#deps.mqtt.sessionExpiryMs / 1000);
    const requestedExpiry = v5 ? (props.sessionExpiry ?? 0) : p.cleanSession ? 0 : maxExpiryS;
    const expiryS = Math.min(requestedExpiry, maxExpiryS);
    const persistent = expiryS > 0;
    // A reconnection before the will delay has passed: that will is not sent [MQTT-3.1.3-9].
    const pendingWill = this.#pendingWills.get(p.clientId);
    if (pendingWill !== undefined) {
      clearTimeout(pendingWill);
      this.#pendingWills.delete(p.clientId);
    }
    // Takeover: the older connection of this client id is closed [MQTT-3.1.4-2].
    const existing = this.#mqttSessions.get(p.clientId);
    const older = existing === undefined ? undefined : this.#live.get(existing);
    if (older !== undefined) {
      this.#deps.log.info(
        { deviceId: session.device.id, sessionId: session.id, transport: conn.kind },
        'new session takes over the previous one',
      );
      this.#close(older, 'takeover');
    }
    this.#deps.bus?.announceSession(p.clientId);
    let mqtt = existing;
    // 3.1.1: clean session 0 resumes; MQTT 5: clean start 0 resumes [MQTT-3.2.2-3].
    const sessionPresent = !p.cleanSession && existing !== undefined && existing.persistent;
    if (mqtt !== undefined && (p.cleanSession || !mqtt.persistent)) {
      this.#discard(mqtt); // [MQTT-3.1.2-6]
      mqtt = undefined;
    }
    if (mqtt === undefined) {
      mqtt = new MqttSession(p.clientId, session.device.id, persistent);
      this.#mqttSessions.set(p.clientId, mqtt);
    } else if (!persistent) {
      // Resumed (only a persistent session is), but it now ends with this connection.
      this.#store?.dropSession(mqtt.clientId);
      mqtt.persistent = false;
    }
    mqtt.expiryMs = expiryS * 1000;
    mqtt.maxQueued = limits.maxQueuedMessages ?? this.#deps.mqtt.maxQueuedMessages;
    conn.maxOutbound = limits.maxOutboundBytes ?? this.#deps.mqtt.maxOutboundBytes;
    if (mqtt.persistent) this.#store?.saveSession(mqtt.clientId, mqtt.deviceId, Date.now());
    conn.mqtt = mqtt;
    conn.will = p.will;
    conn.keepaliveMs = keepalive * 1000;
    conn.state = 'connected';
    if (v5) {
      conn.receiveMax = props.receiveMaximum ?? 65_535;
      if (props.maximumPacketSize !== undefined) conn.maxPacket = props.maximumPacketSize;
      conn.problemInfo = props.requestProblemInfo !== 0;
      conn.requestedExpiry = requestedExpiry;
    }
    this.#live.set(mqtt, conn);
    this.#decision('admitted', conn, undefined, {
      cleanSession: p.cleanSession,
      sessionPresent,
      ...(v5 && { protocol: 5, sessionExpiry: expiryS }),
    });
    this.#deps.metrics.connected.inc({ type: session.device.type, transport: conn.kind });
    if (v5) {
      const q = this.#deps.mqtt;
      conn.push(
        encodeConnack5(sessionPresent, 0, {
          receiveMaximum: q.receiveMaximum,
          maximumPacketSize: limits.maxPacketBytes,
          topicAliasMaximum: q.topicAliasMaximum,
          sharedSubscriptionAvailable: false,
          ...(expiryS !== requestedExpiry && { sessionExpiryInterval: expiryS }),
          ...(serverKeepAlive !== undefined && { serverKeepAlive }),
        }),
      );
    } else {
      conn.push(encodeConnack(sessionPresent, 0));
    }
    this.#markDirty(conn);
    this.#pump(mqtt); // what a persistent session is owed [MQTT-4.4.0-1]
  }

  /** DISCONNECT from the client: no will (MQTT 5: unless reason 0x04) [MQTT-3.1.2-10], [MQTT-3.14.4-3]; MQTT 5 may change the session expiry. */
  #disconnect(conn: MqttConnection, p: DisconnectPacket): void {
    const expiry = p.properties?.sessionExpiry;
    if (expiry !== undefined && conn.mqtt !== undefined) {
      // Raising it from 0 is a protocol error (§3.14.2.2.2).
      if (conn.requestedExpiry === 0 && expiry > 0)
        return this.#protocolError(
          conn,
          'MQTT5-§3.14.2.2.2',
          'DISCONNECT sets a session expiry on a session that had none',
        );
      const s = Math.min(expiry, Math.floor(this.#deps.mqtt.sessionExpiryMs / 1000));
      conn.mqtt.expiryMs = s * 1000;
      if (s === 0 && conn.mqtt.persistent) {
        this.#store?.dropSession(conn.mqtt.clientId);
        conn.mqtt.persistent = false;
      }
    }
    if (p.reasonCode === REASON.DISCONNECT_WITH_WILL) return this.#close(conn, 'disconnect_with_will');
    conn.will = undefined;
    return this.#close(conn, 'disconnect');
  }

  #discard(mqtt: MqttSession): void {
    for (const filter of mqtt.subscriptions.keys()) this.#trieRemove(filter, mqtt);
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
    let topic = p.topic;
    const props = p.properties;
    if (conn.v5) {
      // Topic aliases of this connection [MQTT-3.3.2-8 … 12].
      const alias = props?.topicAlias;
      if (alias !== undefined) {
        if (alias === 0 || alias > this.#deps.mqtt.topicAliasMaximum)
          return this.#protocolError(
            conn,
            'MQTT-3.3.2-12',
            `topic alias ${alias} outside 1–${this.#deps.mqtt.topicAliasMaximum}`,
            REASON.TOPIC_ALIAS_INVALID,
          );
        if (topic.length > 0) (conn.aliases ??= new Map()).set(alias, topic);
        else {
          const known = conn.aliases?.get(alias);
          if (known === undefined)
            return this.#protocolError(conn, 'MQTT5-§3.3.2.3.4', `topic alias ${alias} not set on this connection`);
          topic = known;
        }
      } else if (topic.length === 0) {
        return this.#protocolError(conn, 'MQTT5-§3.3.2.1', 'empty topic name without a topic alias');
      }
      // Flow control: no more unacknowledged QoS 1/2 PUBLISHes than our Receive Maximum (§3.3.4).
      if (
        p.qos > 0 &&
        conn.inboundPending + (conn.mqtt as MqttSession).qos2In.size >= this.#deps.mqtt.receiveMaximum &&
        !(p.qos === 2 && (conn.mqtt as MqttSession).qos2In.has(p.packetId))
      ) {
        return this.#protocolError(
          conn,
          'MQTT-3.3.4-7',
          `more than ${this.#deps.mqtt.receiveMaximum} unacknowledged QoS 1/2 PUBLISHes`,
          REASON.RECEIVE_MAXIMUM_EXCEEDED,
        );
      }
    }
    const code = this.#packetCheck(
      conn,
      (s) => publishable(s, topic) && (props?.responseTopic === undefined || publishable(s, props.responseTopic)),
    );
    if (code !== undefined) {
      this.#denied('publish', conn, code, topic);
      // MQTT 3.1.1 has no negative PUBACK: an unauthorized PUBLISH closes the connection. MQTT 5
      // says no (PUBACK/PUBREC 0x87; QoS 0: dropped) and keeps the connection — unless the
      // session itself was cut (revoked, suspended, denylisted): then DISCONNECT with the reason.
      if (!conn.v5 || conn.session?.cut !== undefined || code !== 'TOPIC_DENIED') return this.#close(conn, 'denied');
      return this.#refusePublish(conn, p, REASON.NOT_AUTHORIZED, code);
    }
    if (conn.v5 && props !== undefined) {
      if (props.payloadFormat === 1 && !isUtf8(p.payload))
        return this.#refusePublish(conn, p, REASON.PAYLOAD_FORMAT_INVALID, 'BAD_REQUEST');
      if ((props.userPropertyBytes ?? 0) > this.#deps.mqtt.maxUserPropertyBytes)
        return this.#refusePublish(conn, p, REASON.QUOTA_EXCEEDED, 'PAYLOAD_TOO_LARGE');
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
    const payload =
      p.qos > 0 && p.payload.buffer.byteLength > p.payload.length * 4 + 1024 ? Buffer.from(p.payload) : p.payload;
    const message =
      props === undefined
        ? new Message(topic, payload, p.qos, p.retain, deviceId)
        : new Message(topic, payload, p.qos, p.retain, deviceId, {
            fwd: forwarded(props),
            expiresAt: props.messageExpiry === undefined ? undefined : Date.now() + props.messageExpiry * 1000,
          });
    if (p.retain) this.#retain(conn, message);
    this.#route(message);
    this.#deps.bus?.publish(message);
    if (p.qos === 1) this.#ackAfterCommit(conn, 'puback', p.packetId);
    else if (p.qos === 2) {
      mqtt.qos2In.add(p.packetId);
      if (mqtt.persistent) this.#store?.receivedQos2(mqtt.clientId, p.packetId);
      this.#ackAfterCommit(conn, 'pubrec', p.packetId);
    }
  }

  /** MQTT 5: a PUBLISH refused without closing — PUBACK/PUBREC with the reason (QoS 0 is dropped; both are logged). */
  #refusePublish(conn: MqttConnection, p: PublishPacket, reasonCode: number, code: ErrorCode): void {
    if (p.qos === 0) return;
    const e = new FleetgateError(code);
    conn.push(
      encodeAck5(
        p.qos === 1 ? 'puback' : 'pubrec',
        p.packetId,
        reasonCode,
        conn.problemInfo ? { reasonString: reasonString(code, e.publicMessage) } : undefined,
      ),
    );
    this.#markDirty(conn);
  }

  /** PUBACK / PUBREC promise the message is stored for every persistent session owed it (PUBCOMP: that its id is released): sent after the commit. */
  #ackAfterCommit(conn: MqttConnection, type: 'puback' | 'pubrec' | 'pubcomp', id: number): void {
    if (type === 'puback') conn.inboundPending++;
    const send = (err: Error | undefined) => {
      if (type === 'puback') conn.inboundPending--;
      if (err !== undefined) {
        this.#deps.log.error(
          { err: err.message, deviceId: conn.session?.device.id },
          'mqtt store commit failed: connection closed without acknowledgement',
        );
        return this.#close(conn, 'store_failed');
      }
      conn.push(encodeAck(type, id));
      this.#markDirty(conn);
    };
    if (this.#store === undefined) send(undefined);
    else this.#store.afterCommit(send);
  }

  #retain(conn: MqttConnection, message: Message): void {
    if (this.#keepRetained(message, conn.kind)) this.#deps.bus?.publishRetained(message);
  }

  /** Keeps (or, empty, clears) a retained message within the quotas, on disk too; false when over a quota. */
  #keepRetained(message: Message, transport: string): boolean {
    const r = {
      topic: message.topic,
      payload: message.payload,
      qos: message.qos,
      deviceId: message.from,
      ...((message.fwd !== undefined || message.expiresAt !== undefined) && { message }),
    };
    if (!this.#retained.set(r)) {
      this.#deps.metrics.retainedRefused.inc();
      this.#deps.log.warn(
        { code: 'PAYLOAD_TOO_LARGE', deviceId: message.from, topic: message.topic, transport },
        'retained message over quota: delivered, not retained',
      );
      return false;
    }
    if (message.payload.length === 0) this.#store?.deleteRetained(message.topic);
    else this.#store?.putRetained(message.topic, message.payload, message.qos, message.from);
    return true;
  }

  /** A retained message (or its clearing) kept by another node: kept here too, for subscribers that come later. */
  retainRemote(message: Message): void {
    this.#keepRetained(message, 'cluster');
  }

  /** Drops every retained message whose topic `keep` refuses, here and on disk; how many went. */
  keepRetainedOnly(keep: (topic: string) => boolean): number {
    let n = 0;
    for (const r of this.#retained.all()) {
      if (keep(r.topic)) continue;
      this.#retained.delete(r.topic);
      this.#store?.deleteRetained(r.topic);
      n++;
    }
    return n;
  }

  /** Every retained message this node holds and that has not expired (the snapshot a joining node asks for). */
  retainedMessages(now = Date.now()): Message[] {
    const out: Message[] = [];
    for (const r of this.#retained.all()) {
      if (r.message?.expired(now) === true) continue;
      out.push(r.message instanceof Message ? r.message : new Message(r.topic, r.payload, r.qos, true, r.deviceId));
    }
    return out;
  }

  /** Delivers a message to every matching session, each once at the highest QoS its subscriptions grant, never above the publish QoS. */
  #route(message: Message): void {
    const matches = this.#trie.match(message.topic);
    for (const [mqtt, sub] of matches) {
      // No Local [MQTT-3.8.3-3]: client id = device id, so the publisher is `from`.
      if ((sub & SUB.NO_LOCAL) !== 0 && mqtt.clientId === message.from) continue;
      const qos = Math.min(sub & SUB.QOS, message.qos) as 0 | 1 | 2; // [MQTT-3.8.4-6]
      const conn = this.#live.get(mqtt);
      if (conn !== undefined && conn.session?.cut !== undefined) continue;
      // Retain As Published [MQTT-3.3.1-12], [MQTT-3.3.1-13]; 3.1.1: always 0 on a live delivery.
      const retain = (sub & SUB.RETAIN_AS_PUBLISHED) !== 0 && message.retain;
      const ids = mqtt.subscriptionIds.size === 0 ? undefined : this.#subscriptionIds(mqtt, sub, message.topic);
      if (qos === 0) {
        if (conn !== undefined) this.#sendQos0(conn, message, retain, ids);
        continue;
      }
      if (conn === undefined && !mqtt.persistent) continue;
      this.#enqueue(mqtt, {
        message,
        qos,
        retain,
        rowId: undefined,
        dup: false,
        released: false,
        packetId: undefined,
        ...(ids && { subscriptionIds: ids }),
      });
    }
  }

  /** The MQTT 5 subscription identifiers of a session's subscriptions matching `topic` [MQTT-3.3.4-3], [MQTT-3.3.4-4]. */
  #subscriptionIds(mqtt: MqttSession, sub: number, topic: string): number[] | undefined {
    if ((sub & OVERLAP) === 0) {
      const id = Math.floor(sub / 256);
      return id === 0 ? undefined : [id];
    }
    const ids: number[] = [];
    for (const [filter, id] of mqtt.subscriptionIds) if (filterMatches(filter, topic)) ids.push(id);
    return ids.length === 0 ? undefined : ids;
  }

  /** The wire form of a message for this connection's protocol; undefined when it must not be sent (expired, or larger than the client accepts). */
  #wire(
    conn: MqttConnection,
    message: Message,
    qos: 0 | 1 | 2,
    retain: boolean,
    ids: number[] | undefined,
    dup = false,
  ): EncodedPublish | undefined {
    if (!conn.v5) return message.expired() && !dup ? undefined : message.encoded(qos, retain);
    // Once sent, a QoS 2 message is not expired any more [MQTT-4.3.3-7]: a resend keeps going.
    const e = message.encoded5(
      qos,
      retain,
      ids,
      dup && message.expiresAt !== undefined ? Math.min(Date.now(), message.expiresAt - 1000) : undefined,
    );
    if (e === undefined) return undefined;
    if (conn.maxPacket !== Number.POSITIVE_INFINITY && publishSize(e) > conn.maxPacket) {
      this.#m.dropTooLarge.inc(); // discarded as if sent [MQTT-3.1.2-25]
      return undefined;
    }
    return e;
  }

  #sendQos0(conn: MqttConnection, message: Message, retain: boolean, ids?: number[]): void {
    if (conn.transport.buffered + conn.outBytes > conn.maxOutbound) {
      this.#m.dropSlow.inc(); // a subscriber that does not read loses QoS 0, and slows nobody
      if (conn.overSince === 0) conn.overSince = Date.now(); // its drain deadline starts
      return;
    }
    const e =
      conn.v5 || message.expiresAt !== undefined
        ? this.#wire(conn, message, 0, retain, ids)
        : message.encoded(0, retain);
    if (e === undefined) return;
    conn.pushPublish(e, undefined);
    this.#m.hot.out++;
    this.#markDirty(conn);
  }

  #enqueue(mqtt: MqttSession, d: Delivery): void {
    if (mqtt.queue.length >= (Number.isFinite(mqtt.maxQueued) ? mqtt.maxQueued : this.#deps.mqtt.maxQueuedMessages)) {
      const dropped = mqtt.queue.shift();
      if (dropped?.rowId !== undefined) this.#store?.dequeue(dropped.rowId);
      this.#m.dropQueue.inc();
    }
    if (mqtt.persistent && this.#store !== undefined)
      d.rowId = this.#store.enqueue(mqtt.clientId, d.message.topic, d.message.payload, d.qos);
    mqtt.queue.push(d);
    this.#pump(mqtt);
  }

  /** Moves queued deliveries into flight, up to the window (and the client's Receive Maximum), while the client reads. */
  #pump(mqtt: MqttSession): void {
    const conn = this.#live.get(mqtt);
    if (conn === undefined || conn.state !== 'connected') return;
    const maxOutboundBytes = conn.maxOutbound;
    const window = Math.min(this.#deps.mqtt.maxInflight, conn.receiveMax); // [MQTT-3.3.4-9]
    if (mqtt.queue.length > 0 && conn.transport.buffered + conn.outBytes > maxOutboundBytes && conn.overSince === 0)
      conn.overSince = Date.now();
    while (
      mqtt.inflight.size < window &&
      mqtt.queue.length > 0 &&
      conn.transport.buffered + conn.outBytes <= maxOutboundBytes
    ) {
      const d = mqtt.queue.shift() as Delivery;
      let wire: EncodedPublish | undefined;
      if (!d.released) {
        wire = this.#wire(conn, d.message, d.qos, d.retain, d.subscriptionIds, d.dup);
        if (wire === undefined) {
          // Expired before onward delivery started [MQTT-3.3.2-5], or too large for this client [MQTT-3.1.2-25].
          if (d.rowId !== undefined) this.#store?.dequeue(d.rowId);
          continue;
        }
      }
      const id = d.packetId !== undefined && !mqtt.inflight.has(d.packetId) ? d.packetId : mqtt.nextPacketId();
      if (id === undefined) {
        mqtt.queue.unshift([d]);
        break;
      }
      d.packetId = id;
      mqtt.inflight.set(id, d);
      if (wire === undefined) {
        conn.push(encodeAck('pubrel', id)); // [MQTT-4.4.0-1]: resend PUBREL, not the PUBLISH
      } else {
        conn.pushPublish(d.dup ? withDup(wire) : wire, packetIdBytes(id));
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
    // MQTT 5: a PUBREC with a failure reason ends the exchange, no PUBREL [MQTT-4.3.3-4], [MQTT-4.4.0-2].
    if (p.reasonCode >= 0x80) return this.#done(conn.mqtt as MqttSession, p.packetId, d);
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
    const mqtt = conn.mqtt as MqttSession;
    // A persistent session's stored id is forgotten on disk before the PUBCOMP lets the client use it again.
    if (mqtt.qos2In.delete(p.packetId) && mqtt.persistent && this.#store !== undefined) {
      this.#store.releasedQos2(mqtt.clientId, p.packetId);
      return this.#ackAfterCommit(conn, 'pubcomp', p.packetId);
    }
    conn.push(encodeAck('pubcomp', p.packetId)); // also for an id we no longer know [MQTT-4.3.3-2]
    this.#markDirty(conn);
  }

  #subscribe(conn: MqttConnection, p: SubscribePacket): void {
    const mqtt = conn.mqtt as MqttSession;
    const granted: number[] = [];
    const retained: { qos: 0 | 1 | 2; filter: string; ids: number[] | undefined }[] = [];
    const subscriptionId = p.properties?.subscriptionId;
    let refusal: ErrorCode | undefined;
    for (const { filter, qos, options } of p.subscriptions) {
      if (conn.v5 && filter.startsWith('$share/')) {
        granted.push(REASON.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED); // shared subscriptions are not offered (CONNACK says so)
        continue;
      }
      const code = this.#packetCheck(conn, (s) => maySubscribe(s.scope, filter));
      if (code !== undefined && code !== 'TOPIC_DENIED') {
        this.#denied('subscribe', conn, code, filter);
        return this.#close(conn, 'denied');
      }
      if (code === 'TOPIC_DENIED') {
        this.#denied('subscribe', conn, code, filter);
        granted.push(conn.v5 ? REASON.NOT_AUTHORIZED : 0x80); // [MQTT-3.9.3-2]; MQTT 5: 0x87
        refusal = code;
        continue;
      }
      const existed = mqtt.subscriptions.has(filter);
      const value = options + (subscriptionId ?? 0) * 256;
      mqtt.subscriptions.set(filter, options); // replaces an identical filter's subscription [MQTT-3.8.4-3]
      if (subscriptionId !== undefined) mqtt.subscriptionIds.set(filter, subscriptionId);
      else mqtt.subscriptionIds.delete(filter);
      this.#trieAdd(filter, mqtt, value, !existed);
      if (mqtt.persistent) this.#store?.addSubscription(mqtt.clientId, filter, value as 0 | 1 | 2);
      granted.push(qos);
      // Retain Handling [MQTT-3.3.1-9 … 11]: 0 always, 1 only for a new subscription, 2 never.
      const handling = (options & SUB.RETAIN_HANDLING) >> 4;
      if (handling === 0 || (handling === 1 && !existed))
        retained.push({ filter, qos, ids: subscriptionId === undefined ? undefined : [subscriptionId] });
    }
    conn.push(
      conn.v5
        ? encodeSuback5(
            p.packetId,
            granted,
            refusal !== undefined && conn.problemInfo
              ? { reasonString: reasonString(refusal, new FleetgateError(refusal).publicMessage) }
              : undefined,
          )
        : encodeSuback(p.packetId, granted),
    );
    // Retained messages matching a new subscription follow the SUBACK, with the retain flag [MQTT-3.3.1-6], [MQTT-3.3.1-8].
    for (const { filter, qos, ids } of retained) {
      for (const r of this.#retained.match(filter)) {
        const message =
          r.message instanceof Message
            ? r.message.asRetained()
            : new Message(r.topic, r.payload, r.qos, true, r.deviceId);
        if (message.expired()) continue;
        const q = Math.min(qos, r.qos) as 0 | 1 | 2;
        if (q === 0) this.#sendQos0(conn, message, true, ids);
        else
          this.#enqueue(mqtt, {
            message,
            qos: q,
            retain: true,
            rowId: undefined,
            dup: false,
            released: false,
            packetId: undefined,
            ...(ids && { subscriptionIds: ids }),
          });
      }
    }
    this.#markDirty(conn);
  }

  #unsubscribe(conn: MqttConnection, p: UnsubscribePacket): void {
    const mqtt = conn.mqtt as MqttSession;
    const codes: number[] = [];
    for (const filter of p.filters) {
      if (!mqtt.subscriptions.delete(filter)) {
        codes.push(REASON.NO_SUBSCRIPTION_EXISTED);
        continue;
      }
      mqtt.subscriptionIds.delete(filter);
      this.#trieRemove(filter, mqtt);
      if (mqtt.persistent) this.#store?.removeSubscription(mqtt.clientId, filter);
      codes.push(REASON.SUCCESS);
    }
    conn.push(conn.v5 ? encodeUnsuback5(p.packetId, codes) : encodeUnsuback(p.packetId)); // [MQTT-3.10.4-4], [MQTT-3.11.3-1]
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

  /**
   * Closes a connection. An MQTT 5 client that had its CONNACK is told why first: a DISCONNECT
   * with the reason code and, as reason string, the catalogue code [MQTT-3.14.0-1], [MQTT-4.13].
   */
  #close(conn: MqttConnection, reason: string, reasonCode?: number, detail?: string): void {
    if (conn.state === 'closed') return;
    conn.closeReason ??= reason;
    if (conn.v5 && conn.state === 'connected' && reason !== 'disconnect' && reason !== 'disconnect_with_will') {
      const cut = conn.session?.cut;
      let code = reasonCode ?? CLOSE_REASONS[reason] ?? REASON.UNSPECIFIED;
      let text = detail;
      if ((reason === 'cut' || reason === 'denied') && cut !== undefined) {
        // A kick is the operator's act; the rest are the registry's verdict on the certificate or device.
        code = cut === 'NOT_AUTHORIZED' ? REASON.ADMINISTRATIVE_ACTION : reasonCodeFor(cut, 'disconnect');
        text = reasonString(cut, new FleetgateError(cut).publicMessage);
      }
      conn.push(encodeDisconnect5(code, text === undefined ? undefined : { reasonString: text.slice(0, 200) }));
    }
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
      const deviceId = session?.device.id ?? '';
      const wp = w.properties;
      const send = () => {
        this.#pendingWills.delete(conn.clientId ?? '');
        const message =
          wp === undefined
            ? new Message(w.topic, w.payload, w.qos, w.retain, deviceId)
            : new Message(w.topic, w.payload, w.qos, w.retain, deviceId, {
                fwd: forwarded(wp),
                expiresAt: wp.messageExpiry === undefined ? undefined : Date.now() + wp.messageExpiry * 1000,
              });
        if (w.retain) this.#retain(conn, message);
        this.#route(message);
        this.#deps.bus?.publish(message);
      };
      // MQTT 5 Will Delay Interval: sent after the delay or when the session ends, whichever is first [MQTT-3.1.2-8].
      const delayMs = Math.min((wp?.willDelay ?? 0) * 1000, mqtt?.persistent === true ? mqtt.expiryMs : 0);
      if (delayMs > 0 && conn.clientId !== undefined) {
        const timer = setTimeout(send, delayMs);
        timer.unref();
        this.#pendingWills.set(conn.clientId, timer);
      } else {
        send();
      }
    }
  }

  /** Keepalive (1.5×) [MQTT-3.1.2-24], CONNECT deadline, and subscribers that stopped reading. */
  #sweepConnections(now = Date.now()): void {
    const { connectTimeoutMs } = this.#deps.config;
    const { drainTimeoutMs, sessionExpiryMs } = this.#deps.mqtt;
    for (const conn of this.#connections) {
      if (conn.state === 'connecting' && now - conn.since > connectTimeoutMs) {
        this.#close(conn, 'connect_timeout');
      } else if (
        conn.state === 'connected' &&
        conn.keepaliveMs > 0 &&
        now - conn.lastReceived > conn.keepaliveMs * 1.5
      ) {
        this.#deps.log.info(
          { code: 'KEEPALIVE_TIMEOUT', deviceId: conn.session?.device.id, transport: conn.kind },
          'keepalive expired: connection closed',
        );
        this.#close(conn, 'keepalive');
      } else if (conn.overSince !== 0) {
        // It hit the outbound bound: it must drain (to half of it) within the drain timeout.
        if (conn.transport.buffered <= conn.maxOutbound / 2) conn.overSince = 0;
        else if (now - conn.overSince > drainTimeoutMs) {
          this.#deps.metrics.slowConsumers.inc();
          this.#deps.log.warn(
            {
              code: 'SLOW_CONSUMER',
              deviceId: conn.session?.device.id,
              transport: conn.kind,
              buffered: conn.transport.buffered,
            },
            'subscriber does not read: connection closed',
          );
          this.#close(conn, 'slow_consumer');
        }
      }
    }
    // Abandoned persistent sessions expire.
    for (const mqtt of this.#mqttSessions.values()) {
      if (mqtt.persistent && !this.#live.has(mqtt) && now - mqtt.lastSeen > Math.min(mqtt.expiryMs, sessionExpiryMs)) {
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
    if (topics.length > 0)
      this.#deps.log.info(
        { deviceId: event.deviceId, retained: topics.length },
        'retained messages of a revoked device removed',
      );
  }

  #denied(action: 'publish' | 'subscribe', conn: MqttConnection, code: ErrorCode, topic: string): void {
    this.#deps.metrics.denied.inc({ action, code });
    this.#deps.log.warn(
      { action, code, topic, deviceId: conn.session?.device.id, serial: conn.session?.identity.serial },
      `${action} refused`,
    );
  }

  /** One decision line per connection, with the code, serial and fingerprint. */
  #decision(
    outcome: 'admitted' | 'refused',
    conn: MqttConnection,
    code: ErrorCode | undefined,
    extra: Record<string, unknown>,
  ): void {
    const identity =
      conn.session?.identity ??
      (conn.refusal?.detail as { serial?: string; fingerprint?: string; deviceId?: string } | undefined);
    this.#deps.metrics.handshakes.inc({ transport: conn.kind, outcome, code: code ?? 'OK' });
    if (outcome === 'refused' && code !== undefined)
      this.#deps.metrics.refusedDevices.record(identity?.deviceId, identity?.serial, code);
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
    if (outcome === 'admitted') this.#deps.log.info(line, 'mqtt connection admitted');
    else this.#deps.log.warn(line, 'mqtt connection refused');
  }

  /** The gateway is stopping: every connection is closed (MQTT 5: DISCONNECT 0x8B), no will is sent. */
  disconnectAll(): void {
    for (const conn of [...this.#connections]) this.#close(conn, 'shutdown');
  }

  async close(): Promise<void> {
    clearInterval(this.#sweep);
    for (const timer of this.#pendingWills.values()) clearTimeout(timer);
    this.#pendingWills.clear();
    this.disconnectAll();
    this.#store?.close();
  }
}
