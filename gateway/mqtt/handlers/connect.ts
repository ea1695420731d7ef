import { isUtf8 } from 'node:buffer';
import type { TypeLimits } from '../../../config/config.ts';
import { FleetgateError } from '../../../firmware-sdk/protocol/errors.ts';
import { REASON, reasonCodeFor, reasonString } from '../../../firmware-sdk/protocol/mqtt5.ts';
import { mayPublish } from '../../policy/topics.ts';
import type { Session } from '../../sessions.ts';
import type { Broker } from '../broker.ts';
import { close } from '../close.ts';
import type { MqttConnection } from '../connection.ts';
import { decision } from '../decisions.ts';
import { deliverStored, pump } from '../delivery.ts';
import { encodeConnack, encodeConnack5 } from '../encode.ts';
import type { ConnectPacket } from '../packets.ts';
import { Message, MqttSession } from '../session.ts';

/** One CONNECT on its way through the steps: what each step decided, for the ones after it. */
interface Connecting {
  readonly b: Broker;
  readonly conn: MqttConnection;
  readonly p: ConnectPacket;
  readonly v5: boolean;
  /** The admitted device (set by `admissionVerdict`). */
  session: Session;
  limits: TypeLimits;
  keepalive: number;
  /** MQTT 5: the keepalive the server chose instead of the client's [MQTT-3.2.2-21]. */
  serverKeepAlive: number | undefined;
  requestedExpiry: number;
  expiryS: number;
  sessionPresent: boolean;
  /** This client id's session as the CONNECT found it (before the takeover closed its connection). */
  existing: MqttSession | undefined;
  mqtt: MqttSession;
}

/** Why a CONNECT is refused: the coded error, and the 3.1.1 return code / MQTT 5 reason code when not the catalogue's. */
interface Refusal {
  error: FleetgateError;
  returnCode?: number;
  reasonCode?: number;
}

type ConnectStep = (c: Connecting) => Refusal | undefined;

/**
 * CONNECT, as an ordered list of named steps (aedes keeps its `connectActions` the same way).
 * A step that returns a refusal ends the list: CONNACK with the refusal, then close
 * [MQTT-3.2.2-5]. Steps 1–3 of a connection (verify peer, identity, status) ran at admission
 * (`admission.ts`); this is step 4, bind the client id, and the MQTT session it opens.
 */
const CONNECT_STEPS: readonly ConnectStep[] = [
  checkProtocol,
  admissionVerdict,
  noEnhancedAuthentication,
  bindClientId,
  withinConnectRate,
  negotiateKeepalive,
  authorizeWill,
  sessionLifetime,
  cancelPendingWill,
  takeOver,
  bindSession,
  admit,
];

export function onConnect(b: Broker, conn: MqttConnection, p: ConnectPacket): void {
  conn.clientId = p.clientId;
  const v5 = p.protocolLevel === 5;
  conn.v5 = v5;
  const c = { b, conn, p, v5, keepalive: p.keepalive, serverKeepAlive: undefined } as Connecting;
  for (const step of CONNECT_STEPS) {
    const refusal = step(c);
    if (refusal !== undefined) return refuse(c, refusal);
  }
  sendConnack(c);
  pump(b, c.mqtt); // what a persistent session is owed [MQTT-4.4.0-1]
}

/** [MQTT-3.2.2-4] / [MQTT-3.2.2-6]: session present 0 with a refusal; MQTT 5 says why (reason code + string). */
function refuse(c: Connecting, { error, returnCode, reasonCode }: Refusal): void {
  const reason = reasonCode ?? reasonCodeFor(error.code);
  decision(c.b, 'refused', c.conn, error.code, { message: error.message, ...(c.v5 && { reasonCode: reason }) });
  c.conn.push(
    c.v5
      ? encodeConnack5(false, reason, { reasonString: reasonString(error.code, error.publicMessage) })
      : encodeConnack(false, returnCode ?? error.connackCode),
  );
  close(c.b, c.conn, 'refused'); // [MQTT-3.2.2-5], [MQTT-3.2.2-7]
}

/** MQTT 3.1 (MQIsdp, level 3), 3.1.1 (level 4) or 5 [MQTT-3.1.2-2]. */
function checkProtocol({ p, v5 }: Connecting): Refusal | undefined {
  if (
    (p.protocolName === 'MQTT' && (p.protocolLevel === 4 || v5)) ||
    (p.protocolName === 'MQIsdp' && p.protocolLevel === 3)
  )
    return undefined;
  const error = new FleetgateError('PROTOCOL_UNSUPPORTED', `protocol ${p.protocolName} level ${p.protocolLevel}`);
  return { error, returnCode: 1 };
}

/** What the handshake decided: a refusal (certificate, status, registry) is told now; a session cut since then too. */
function admissionVerdict(c: Connecting): Refusal | undefined {
  if (c.conn.refusal !== undefined) return { error: c.conn.refusal };
  c.session = c.conn.session as Session;
  if (c.session.cut !== undefined) return { error: new FleetgateError(c.session.cut) };
  c.limits = c.b.deps.config.limits[c.session.device.type];
  return undefined;
}

/** The identity is the certificate: no enhanced authentication (MQTT 5 §4.12). */
function noEnhancedAuthentication({ p }: Connecting): Refusal | undefined {
  const method = p.properties?.authMethod;
  if (method === undefined) return undefined;
  const what = `authentication method ${JSON.stringify(method)} not supported: the identity is the client certificate`;
  return {
    error: new FleetgateError('NOT_AUTHORIZED', what),
    returnCode: 5,
    reasonCode: REASON.BAD_AUTHENTICATION_METHOD,
  };
}

/** The client id must be the certificate's device id: no assigned or chosen ids [MQTT-3.1.3-8]. */
function bindClientId({ p, session }: Connecting): Refusal | undefined {
  if (p.clientId === session.device.id) return undefined;
  const what = `client id ${JSON.stringify(p.clientId)} is not the device id ${session.device.id}`;
  return { error: new FleetgateError('CLIENT_ID_MISMATCH', what) };
}

/** A device reconnecting in a loop is refused past its connects a minute (MQTT 5: 0x9F Connection rate exceeded). */
function withinConnectRate(c: Connecting): Refusal | undefined {
  const device = c.session.device;
  const quota = c.b.deps.quotas.of(device.id, device.type, c.conn.lastReceived);
  c.conn.quota = quota;
  if (quota === undefined || quota.connects.take(1, c.conn.lastReceived)) return undefined;
  const what = `more than ${c.limits.connectsPerMinute} connects a minute from ${device.id}`;
  return { error: new FleetgateError('RATE_LIMITED', what), returnCode: 3 };
}

/** The keepalive within the device type's range: 3.1.1 is refused outside it; MQTT 5 is told the server's [MQTT-3.2.2-21]. */
function negotiateKeepalive(c: Connecting): Refusal | undefined {
  const { keepaliveMinS: min, keepaliveMaxS: max } = c.limits;
  const asked = c.p.keepalive;
  if (asked >= min && asked <= max) return undefined;
  // MQTT 3.1.1 cannot tell a client which keepalive to use; like Mosquitto, identifier rejected.
  if (!c.v5)
    return { error: new FleetgateError('KEEPALIVE_OUT_OF_RANGE', `keepalive ${asked}s outside [${min}, ${max}]`) };
  c.keepalive = asked === 0 ? max : Math.min(Math.max(asked, min), max);
  c.serverKeepAlive = c.keepalive;
  return undefined;
}

/** The will is a PUBLISH the device makes in advance: the same topic policy and payload rules, checked now. */
function authorizeWill({ b, p, session }: Connecting): Refusal | undefined {
  const will = p.will;
  if (will === undefined) return undefined;
  const wp = will.properties;
  if (
    !mayPublish(session.scope, will.topic) ||
    (wp?.responseTopic !== undefined && !mayPublish(session.scope, wp.responseTopic))
  ) {
    return { error: new FleetgateError('TOPIC_DENIED', `will topic ${will.topic} outside the device's topics`) };
  }
  if (wp?.payloadFormat === 1 && !isUtf8(will.payload)) {
    const error = new FleetgateError('BAD_REQUEST', 'will payload is not UTF-8 although its payload format says so');
    return { error, returnCode: 5, reasonCode: REASON.PAYLOAD_FORMAT_INVALID };
  }
  const maxBytes = b.deps.mqtt.maxUserPropertyBytes;
  if ((wp?.userPropertyBytes ?? 0) > maxBytes) {
    const error = new FleetgateError('PAYLOAD_TOO_LARGE', `will user properties over ${maxBytes} bytes`);
    return { error, returnCode: 5, reasonCode: REASON.QUOTA_EXCEEDED };
  }
  return undefined;
}

/** Session lifetime: 3.1.1 clean session 0 → the configured expiry; MQTT 5 → what the client asks, bounded. */
function sessionLifetime(c: Connecting): undefined {
  const maxExpiryS = Math.floor(c.b.deps.mqtt.sessionExpiryMs / 1000);
  c.requestedExpiry = c.v5 ? (c.p.properties?.sessionExpiry ?? 0) : c.p.cleanSession ? 0 : maxExpiryS;
  c.expiryS = Math.min(c.requestedExpiry, maxExpiryS);
  return undefined;
}

/** A reconnection before the will delay has passed: that will is not sent [MQTT-3.1.3-9]. */
function cancelPendingWill({ b, p }: Connecting): undefined {
  const pending = b.pendingWills.get(p.clientId);
  if (pending !== undefined) {
    clearTimeout(pending);
    b.pendingWills.delete(p.clientId);
  }
  return undefined;
}

/** Takeover: the older connection of this client id is closed, here and on every other node [MQTT-3.1.4-2]. */
function takeOver(c: Connecting): undefined {
  const { b, conn, p, session } = c;
  const existing = b.mqttSessions.get(p.clientId);
  c.existing = existing;
  const older = existing === undefined ? undefined : b.live.get(existing);
  if (older !== undefined) {
    const line = { deviceId: session.device.id, sessionId: session.id, transport: conn.kind };
    b.deps.log.info(line, 'new session takes over the previous one');
    close(b, older, 'takeover');
  }
  b.deps.bus?.announceSession(p.clientId);
  return undefined;
}

/** 3.1.1: clean session 0 resumes; MQTT 5: clean start 0 resumes [MQTT-3.2.2-3]; otherwise a new session [MQTT-3.1.2-6]. */
function bindSession(c: Connecting): undefined {
  const { b, conn, p } = c;
  const persistent = c.expiryS > 0;
  // In the cluster's durable state a persistent session lives in the cluster, wherever it was attached.
  let mqtt = b.state === undefined ? c.existing : (b.mqttSessions.get(p.clientId) ?? fromCluster(b, p.clientId));
  c.sessionPresent = !p.cleanSession && mqtt !== undefined && mqtt.persistent;
  if (mqtt !== undefined && (p.cleanSession || !mqtt.persistent)) {
    b.discard(mqtt);
    mqtt = undefined;
  }
  if (mqtt === undefined) {
    mqtt = new MqttSession(p.clientId, c.session.device.id, persistent);
    b.mqttSessions.set(p.clientId, mqtt);
  } else if (!persistent) {
    // Resumed (only a persistent session is), but it now ends with this connection.
    b.store?.dropSession(mqtt.clientId);
    b.state?.drop(mqtt.clientId);
    mqtt.persistent = false;
  }
  mqtt.expiryMs = c.expiryS * 1000;
  mqtt.maxQueued = c.limits.maxQueuedMessages ?? b.deps.mqtt.maxQueuedMessages;
  if (mqtt.persistent) {
    b.store?.saveSession(mqtt.clientId, mqtt.deviceId, Date.now());
    if (b.state !== undefined) {
      const attached = mqtt;
      b.state.save(attached);
      b.state.attach(attached.clientId, (message, seq) => deliverStored(b, attached, message, seq));
    }
  }
  conn.mqtt = mqtt;
  c.mqtt = mqtt;
  return undefined;
}

/** A persistent session the cluster keeps (attached to another node, or to none), rebuilt here to resume. */
function fromCluster(b: Broker, clientId: string): MqttSession | undefined {
  const r = b.state?.lookup(clientId);
  if (r === undefined) return undefined;
  const mqtt = new MqttSession(r.clientId, r.deviceId, true);
  mqtt.lastSeen = r.lastSeen;
  for (const [filter, value] of r.subs) {
    mqtt.subscriptions.set(filter, value % 256);
    if (value >= 256) mqtt.subscriptionIds.set(filter, Math.floor(value / 256));
    b.addFilter(filter, mqtt, value, true);
  }
  for (const id of r.qos2In) mqtt.qos2In.add(id);
  // Released on the node it was on: the PUBREL is sent again first, under the same id [MQTT-4.4.0-1].
  for (const [seq, packetId] of r.qos2Out) {
    mqtt.qos2Out.set(seq, packetId);
    const placeholder = new Message('', Buffer.alloc(0), 2, false, r.deviceId);
    mqtt.queue.push({
      message: placeholder,
      qos: 2,
      retain: false,
      rowId: undefined,
      seq,
      dup: true,
      released: true,
      packetId,
    });
  }
  b.mqttSessions.set(clientId, mqtt);
  return mqtt;
}

/** The connection is connected: its limits and MQTT 5 options set, its decision logged and counted. */
function admit(c: Connecting): undefined {
  const { b, conn, p, v5 } = c;
  conn.maxOutbound = c.limits.maxOutboundBytes ?? b.deps.mqtt.maxOutboundBytes;
  conn.maxSubscriptions = c.limits.maxSubscriptions;
  conn.transport.admitted(c.limits.maxPacketBytes);
  conn.will = p.will;
  conn.keepaliveMs = c.keepalive * 1000;
  conn.state = 'connected';
  b.doneWaiting(conn);
  if (v5) {
    const props = p.properties ?? {};
    conn.receiveMax = props.receiveMaximum ?? 65_535;
    if (props.maximumPacketSize !== undefined) conn.maxPacket = props.maximumPacketSize;
    conn.problemInfo = props.requestProblemInfo !== 0;
    conn.requestedExpiry = c.requestedExpiry;
  }
  b.live.set(c.mqtt, conn);
  const extra = {
    cleanSession: p.cleanSession,
    sessionPresent: c.sessionPresent,
    ...(v5 && { protocol: 5, sessionExpiry: c.expiryS }),
  };
  decision(b, 'admitted', conn, undefined, extra);
  b.deps.metrics.connected.inc({ type: c.session.device.type, transport: conn.kind });
  return undefined;
}

/** CONNACK 0; MQTT 5 with the server's limits, and the expiry or keepalive it chose when not the client's. */
function sendConnack(c: Connecting): void {
  const { b, conn } = c;
  if (c.v5) {
    const q = b.deps.mqtt;
    conn.push(
      encodeConnack5(c.sessionPresent, 0, {
        receiveMaximum: q.receiveMaximum,
        maximumPacketSize: c.limits.maxPacketBytes,
        topicAliasMaximum: q.topicAliasMaximum,
        sharedSubscriptionAvailable: true, // $share/<name>/<filter>, for backend services (shared.ts)
        ...(c.expiryS !== c.requestedExpiry && { sessionExpiryInterval: c.expiryS }),
        ...(c.serverKeepAlive !== undefined && { serverKeepAlive: c.serverKeepAlive }),
      }),
    );
  } else {
    conn.push(encodeConnack(c.sessionPresent, 0));
  }
  b.markDirty(conn);
}
