import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import { REASON, reasonCodeFor, reasonString } from '../../firmware-sdk/protocol/mqtt5.ts';
import type { Broker } from './broker.ts';
import type { MqttConnection } from './connection.ts';
import { route } from './delivery.ts';
import { encodeDisconnect5 } from './encode.ts';
import type { Will } from './packets.ts';
import { type MqttSession, newMessage } from './session.ts';

/** MQTT 5 DISCONNECT reason for why the gateway closes a connection. */
const CLOSE_REASONS: Record<string, number> = {
  takeover: REASON.SESSION_TAKEN_OVER,
  keepalive: REASON.KEEP_ALIVE_TIMEOUT,
  slow_consumer: REASON.QUOTA_EXCEEDED,
  shutdown: REASON.SERVER_SHUTTING_DOWN,
  store_failed: REASON.UNSPECIFIED,
  denied: REASON.NOT_AUTHORIZED,
  rate_limited: REASON.MESSAGE_RATE_TOO_HIGH,
};

/**
 * Closes a connection. An MQTT 5 client that had its CONNACK is told why first: a DISCONNECT
 * with the reason code and, as reason string, the catalogue code [MQTT-3.14.0-1], [MQTT-4.13].
 */
export function close(b: Broker, conn: MqttConnection, reason: string, reasonCode?: number, detail?: string): void {
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
  closed(b, conn);
}

/** The connection is gone (closed by us or by the peer): its session is detached, persisted or discarded; its will may go. */
export function closed(b: Broker, conn: MqttConnection): void {
  if (!b.connections.delete(conn)) return;
  b.doneWaiting(conn);
  const wasConnected = conn.state === 'connected';
  conn.state = 'closed';
  b.forgetDirty(conn);
  const session = conn.session;
  if (session !== undefined) {
    b.deps.sessions.remove(session);
    if (wasConnected) b.deps.metrics.connected.dec({ type: session.device.type, transport: conn.kind });
  }
  const mqtt = conn.mqtt;
  if (mqtt !== undefined && b.live.get(mqtt) === conn) {
    b.live.delete(mqtt);
    if (mqtt.persistent && b.state !== undefined) {
      // It lives on in the cluster (offline), unless another connection took it over: the taker writes it.
      mqtt.lastSeen = Date.now();
      // Released first: what the device acknowledged is purged from its inbox before the record
      // says it is offline (a node resuming it reads the record, then the inbox).
      b.release(mqtt);
      if (conn.closeReason !== 'takeover') b.state.save(mqtt, true);
    } else if (mqtt.persistent) {
      mqtt.requeueInflight();
      mqtt.lastSeen = Date.now();
      b.store?.saveSession(mqtt.clientId, mqtt.deviceId, mqtt.lastSeen);
    } else {
      b.discard(mqtt);
    }
  }
  // The will: on any close but DISCONNECT [MQTT-3.1.2-8] — and not for a device cut by revocation.
  const noWill = conn.closeReason === 'disconnect' || conn.closeReason === 'cut' || conn.closeReason === 'shutdown';
  if (wasConnected && conn.will !== undefined && !noWill && session?.cut === undefined) {
    const will = conn.will;
    conn.will = undefined;
    scheduleWill(b, conn, will, mqtt);
  }
}

/** MQTT 5 Will Delay Interval: the will is sent after the delay or when the session ends, whichever is first [MQTT-3.1.2-8]. */
function scheduleWill(b: Broker, conn: MqttConnection, will: Will, mqtt: MqttSession | undefined): void {
  const deviceId = conn.session?.device.id ?? '';
  const send = () => {
    b.pendingWills.delete(conn.clientId ?? '');
    const message = newMessage(will.topic, will.payload, will.qos, will.retain, deviceId, will.properties);
    if (will.retain) b.retain(conn, message);
    route(b, message);
    b.publishOut(message);
  };
  const delayMs = Math.min((will.properties?.willDelay ?? 0) * 1000, mqtt?.persistent === true ? mqtt.expiryMs : 0);
  if (delayMs > 0 && conn.clientId !== undefined) {
    const timer = setTimeout(send, delayMs);
    timer.unref();
    b.pendingWills.set(conn.clientId, timer);
  } else {
    send();
  }
}

/** How often {@link sweep} runs, and how late it may be before this process counts as stalled. */
export const SWEEP_MS = 1_000;
const STALL_MS = 2_000;

/** Keepalive (1.5×) [MQTT-3.1.2-24], CONNECT deadline, subscribers that stopped reading, expired persistent sessions. */
export function sweep(b: Broker, now = Date.now()): void {
  const { connectTimeoutMs } = b.deps.config;
  const { drainTimeoutMs, sessionExpiryMs } = b.deps.mqtt;
  const log = b.deps.log;
  // Due every second: much later means this process did not run meanwhile (starved of CPU, or
  // blocked), and what devices sent in that time waits unread in the kernel — they are not silent.
  // Deadlines are judged again at the next sweep, once that is read.
  const stalledMs = now - b.lastSweep - SWEEP_MS;
  b.lastSweep = now;
  const judge = stalledMs < STALL_MS;
  if (!judge)
    log.warn(
      { code: 'GATEWAY_STALLED', stalledMs },
      'the gateway did not run for a while (CPU starved or blocked): CONNECT and keepalive deadlines wait for what arrived meanwhile',
    );
  for (const conn of b.connections) {
    if (judge && conn.state === 'connecting' && now - conn.since > connectTimeoutMs) {
      close(b, conn, 'connect_timeout');
    } else if (
      judge &&
      conn.state === 'connected' &&
      conn.keepaliveMs > 0 &&
      now - conn.lastReceived > conn.keepaliveMs * 1.5
    ) {
      const line = { code: 'KEEPALIVE_TIMEOUT', deviceId: conn.session?.device.id, transport: conn.kind };
      log.info(line, 'keepalive expired: connection closed');
      close(b, conn, 'keepalive');
    } else if (conn.overSince !== 0) {
      // It hit the outbound bound: it must drain (to half of it) within the drain timeout.
      if (conn.transport.buffered <= conn.maxOutbound / 2) conn.overSince = 0;
      else if (now - conn.overSince > drainTimeoutMs) {
        b.deps.metrics.slowConsumers.inc();
        const line = {
          code: 'SLOW_CONSUMER',
          deviceId: conn.session?.device.id,
          transport: conn.kind,
          buffered: conn.transport.buffered,
        };
        log.warn(line, 'subscriber does not read: connection closed');
        close(b, conn, 'slow_consumer');
      }
    }
  }
  for (const mqtt of b.mqttSessions.values()) {
    if (mqtt.persistent && !b.live.has(mqtt) && now - mqtt.lastSeen > Math.min(mqtt.expiryMs, sessionExpiryMs)) {
      log.info({ clientId: mqtt.clientId }, 'persistent session expired');
      b.discard(mqtt);
    }
  }
  // The cluster's offline and orphaned sessions, wherever they were attached (every record is looked at).
  if (b.state !== undefined && now - b.lastClusterExpiry >= b.state.expireEveryMs) {
    b.lastClusterExpiry = now;
    const n = b.state.expire(now);
    if (n > 0) log.info({ sessions: n }, 'persistent sessions expired in the cluster');
  }
}
