import type { IncomingMessage } from 'node:http';
import type { TLSSocket } from 'node:tls';
import type { WebSocket } from 'ws';
import type { StatusEvent } from '../../provisioning/registry/records.ts';
import { scopeFor } from '../policy/topics.ts';
import type { Session } from '../sessions.ts';
import { accept, children } from './admission.ts';
import { Broker, type BrokerDeps } from './broker.ts';
import { close, SWEEP_MS, sweep } from './close.ts';
import { route, routeShared } from './delivery.ts';
import { Message } from './session.ts';
import { tlsTransport, wsTransport } from './transport.ts';

/**
 * fleetgate's MQTT core (5, 3.1.1 and 3.1), as the rest of the gateway sees it: the listeners
 * hand it connections, the status watcher and the cluster hand it events. Inside, one
 * connection flows through named steps — verify peer (TLS) → resolve identity → check status
 * (`admission.ts`) → bind client id (`handlers/connect.ts`) → authorize each PUBLISH/SUBSCRIBE
 * against the session's in-memory state and topic scope (`handlers/`).
 *
 * Messages are routed synchronously through a topic trie, each outgoing PUBLISH is encoded once
 * for every subscriber that gets it, and every connection's packets of one event-loop turn leave
 * in one write (`broker.ts`, `delivery.ts`). QoS 1/2 to persistent sessions is committed to disk
 * before it is acknowledged (group commit, `store.ts`). Everything a client can make the gateway
 * hold is bounded: packet size, in-flight window, queued messages, unsent bytes (a subscriber
 * that does not read is dropped, never slowing the others), retained messages per device and in
 * total.
 */
export class MqttPlane {
  readonly #b: Broker;
  readonly #sweep: NodeJS.Timeout;

  constructor(deps: BrokerDeps) {
    this.#b = new Broker(deps);
    this.#sweep = setInterval(() => sweep(this.#b), SWEEP_MS);
    this.#sweep.unref();
  }

  handleTls(socket: TLSSocket): void {
    accept(this.#b, tlsTransport(socket), 'mqtts', socket);
  }

  handleWs(ws: WebSocket, req: IncomingMessage): void {
    accept(this.#b, wsTransport(ws), 'wss', req.socket as TLSSocket);
  }

  /**
   * The same client id connected to another node: its connection here is closed as a takeover
   * [MQTT-3.1.4-2], and its session here is forgotten (sessions are node-local: the device now
   * lives on the other node, and this one stops queuing for it).
   */
  takenOverElsewhere(clientId: string, node: string): void {
    const b = this.#b;
    const mqtt = b.mqttSessions.get(clientId);
    if (mqtt === undefined) return;
    const conn = b.live.get(mqtt);
    if (conn !== undefined) {
      const line = { deviceId: conn.session?.device.id, clientId, node, transport: conn.kind };
      b.deps.log.info(line, 'session taken over on another node');
      close(b, conn, 'takeover');
    }
    // In the cluster's durable state the session moved with its device; otherwise this node's copy ends.
    if (b.mqttSessions.get(clientId) === mqtt) {
      if (b.state !== undefined) b.release(mqtt);
      else b.discard(mqtt);
    }
  }

  /** A message accepted by another node: delivered to this node's subscribers (not sent on again, not retained here). */
  routeRemote(message: Message): void {
    route(this.#b, message);
  }

  /** A message from another node's publisher (or this one's) for one shared group, chosen for this node by NATS. */
  routeShared(key: string, message: Message): void {
    routeShared(this.#b, key, message);
  }

  /** A gateway device's children changed. */
  refreshScope(session: Session): void {
    const b = this.#b;
    void children(b, session.device.id).then((ids) => {
      session.scope = scopeFor(b.deps.config.topics[session.device.type], session.device, ids);
      session.publishable = undefined;
    });
  }

  /**
   * A status event from the registry feed: a revoked device's retained messages and persistent
   * session go with it (what it published is no longer vouched for; nobody may resume it).
   */
  onStatusEvent(event: StatusEvent): void {
    if (event.kind !== 'device.revoke' || event.deviceId === null) return;
    const b = this.#b;
    const topics = b.retained.deleteDevice(event.deviceId);
    for (const t of topics) {
      b.store?.deleteRetained(t);
      b.state?.putRetained(new Message(t, Buffer.alloc(0), 0, true, event.deviceId));
    }
    const mqtt = b.mqttSessions.get(event.deviceId);
    if (mqtt !== undefined && !b.live.has(mqtt)) b.discard(mqtt);
    else if (mqtt === undefined && b.state?.lookup(event.deviceId) !== undefined) b.state.drop(event.deviceId);
    if (topics.length > 0)
      b.deps.log.info(
        { deviceId: event.deviceId, retained: topics.length },
        'retained messages of a revoked device removed',
      );
  }

  get retainedCount(): number {
    return this.#b.retained.size;
  }

  /** A retained message (or its clearing) kept by another node: kept here too, for subscribers that come later. */
  retainRemote(message: Message): void {
    this.#b.keepRetained(message, 'cluster');
  }

  /** Drops every retained message whose topic `keep` refuses, here and on disk; how many went. */
  keepRetainedOnly(keep: (topic: string) => boolean): number {
    const b = this.#b;
    let n = 0;
    for (const r of b.retained.all()) {
      if (keep(r.topic)) continue;
      b.retained.delete(r.topic);
      b.store?.deleteRetained(r.topic);
      n++;
    }
    return n;
  }

  /** Every retained message this node holds and that has not expired (the snapshot a joining node asks for). */
  retainedMessages(now = Date.now()): Message[] {
    const out: Message[] = [];
    for (const r of this.#b.retained.all()) {
      if (r.message?.expired(now) === true) continue;
      out.push(r.message instanceof Message ? r.message : new Message(r.topic, r.payload, r.qos, true, r.deviceId));
    }
    return out;
  }

  /** The gateway is stopping: every connection is closed (MQTT 5: DISCONNECT 0x8B), no will is sent. */
  disconnectAll(): void {
    for (const conn of [...this.#b.connections]) close(this.#b, conn, 'shutdown');
  }

  async close(): Promise<void> {
    clearInterval(this.#sweep);
    for (const timer of this.#b.pendingWills.values()) clearTimeout(timer);
    this.#b.pendingWills.clear();
    this.disconnectAll();
    this.#b.store?.close();
  }
}
