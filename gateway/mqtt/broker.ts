import { Aedes, type AedesPublishPacket, type AuthenticateError, type Client, type Subscription } from 'aedes';
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import type { Logger } from 'pino';
import type { GatewayConfig } from '../../config/config.ts';
import { FleetgateError, toFleetgateError, type ErrorCode } from '../../firmware-sdk/protocol/errors.ts';
import { admit } from '../../edge/admission.ts';
import type { Metrics } from '../metrics.ts';
import { mayPublish, maySubscribe, scopeFor } from '../policy/topics.ts';
import type { Session, SessionTable, Transport } from '../sessions.ts';
import type { StatusChecker } from '../status/check.ts';
import { LimitedStream } from './packet-limit.ts';

export interface BrokerDeps {
  config: GatewayConfig;
  checker: StatusChecker;
  sessions: SessionTable;
  metrics: Metrics;
  log: Logger;
}

/** What the gateway knows about one MQTT connection, before and after CONNECT. */
interface Connection {
  transport: Transport;
  remoteAddress: string;
  /** Set when the certificate passed every check at the handshake. */
  session?: Session;
  /** Set when it did not: CONNECT is answered with this error's CONNACK code. */
  refusal?: FleetgateError;
  clientId?: string;
  keepalive?: number;
  /** CONNECT accepted: counted in the connected-clients gauge. */
  admitted?: boolean;
  stream: LimitedStream;
}

const connectionOf = new WeakMap<Client, Connection>();

function authError(err: FleetgateError): AuthenticateError {
  return Object.assign(new Error(err.publicMessage), { returnCode: err.connackCode }) as AuthenticateError;
}

/**
 * The MQTT plane on aedes. One connection flows through named steps:
 * verify peer (TLS) → resolve identity → check status → (CONNECT) bind client id → authorize
 * each PUBLISH/SUBSCRIBE against the session's in-memory state and topic scope.
 */
export class MqttPlane {
  readonly broker: Aedes;
  readonly #deps: BrokerDeps;
  readonly #minPacketLimit: number;

  private constructor(broker: Aedes, deps: BrokerDeps) {
    this.broker = broker;
    this.#deps = deps;
    this.#minPacketLimit = Math.min(...Object.values(deps.config.limits).map((l) => l.maxPacketBytes));
  }

  static async create(deps: BrokerDeps): Promise<MqttPlane> {
    const broker = await Aedes.createBroker({ connectTimeout: deps.config.connectTimeoutMs, heartbeatInterval: 60_000 });
    const plane = new MqttPlane(broker, deps);
    broker.preConnect = (client, packet, cb) => plane.#preConnect(client, packet.clientId, packet.keepalive ?? 0, cb);
    broker.authenticate = (client, _u, _p, done) => plane.#authenticate(client, done);
    broker.authorizePublish = (client, packet, cb) => plane.#authorizePublish(client, packet.topic, packet.qos, cb);
    broker.authorizeSubscribe = (client, sub, cb) => plane.#authorizeSubscribe(client, sub, cb);
    broker.authorizeForward = (client, packet) => plane.#authorizeForward(client, packet);
    broker.on('connectionError', (client, err) => plane.#connectionError(client, err));
    broker.on('clientError', (client, err) => plane.#connectionError(client, err));
    return plane;
  }

  /** Steps 1–3, right after the TLS handshake: identity and status, before any MQTT byte. */
  handle(socket: TLSSocket, transport: Transport, stream: Duplex, req?: IncomingMessage): void {
    const { checker, sessions, metrics, config } = this.#deps;
    const remoteAddress = socket.remoteAddress ?? 'unknown';
    let session: Session | undefined;
    let refusal: FleetgateError | undefined;
    try {
      const stop = metrics.statusCheck.startTimer();
      const { device, identity } = admit(socket, checker);
      stop();
      session = {
        id: sessions.nextId(), identity, device, transport, remoteAddress, since: Date.now(), cut: undefined,
        scope: scopeFor(config.topics[device.type], device, device.type === 'gateway' ? this.#children(device.id) : []),
        close: () => limited.destroy(),
      };
    } catch (err) {
      refusal = toFleetgateError(err);
    }
    const limit = session === undefined ? this.#minPacketLimit : config.limits[session.device.type].maxPacketBytes;
    const limited: LimitedStream = new LimitedStream(stream, limit, (reason) => {
      this.#decision('refused', conn, 'PAYLOAD_TOO_LARGE', { reason });
    });
    const conn: Connection = { transport, remoteAddress, stream: limited, ...(session && { session }), ...(refusal && { refusal }) };
    // Registered before CONNECT so a revocation landing in between still finds and cuts it.
    if (session !== undefined) sessions.add(session);
    limited.on('close', () => this.#closed(conn));
    const client = this.broker.handle(limited, req as IncomingMessage);
    connectionOf.set(client, conn);
  }

  #children(deviceId: string): string[] {
    try {
      return this.#deps.checker.reader().listChildren(deviceId).filter((c) => c.status !== 'revoked').map((c) => c.id);
    } catch {
      return []; // fail closed: no child scope
    }
  }

  /** A gateway device's children changed. */
  refreshScope(session: Session): void {
    session.scope = scopeFor(this.#deps.config.topics[session.device.type], session.device, this.#children(session.device.id));
  }

  #preConnect(client: Client, clientId: string, keepalive: number, cb: (err: Error | null, ok: boolean) => void): void {
    const conn = connectionOf.get(client);
    if (conn === undefined) return cb(new Error('unknown connection'), false);
    conn.clientId = clientId;
    conn.keepalive = keepalive;
    cb(null, true);
  }

  /** Step 4 at CONNECT: the client id must be the certificate's device id [MQTT-3.1.3-8]. */
  #authenticate(client: Client, done: (err: AuthenticateError | null, ok: boolean | null) => void): void {
    const conn = connectionOf.get(client);
    const refuse = (err: FleetgateError) => {
      this.#decision('refused', conn, err.code, { message: err.message });
      done(authError(err), null);
    };
    if (conn === undefined) return refuse(new FleetgateError('INTERNAL', 'connection state lost'));
    if (conn.refusal !== undefined) return refuse(conn.refusal);
    const session = conn.session as Session;
    if (session.cut !== undefined) return refuse(new FleetgateError(session.cut));
    if (conn.clientId !== session.device.id) {
      return refuse(new FleetgateError('CLIENT_ID_MISMATCH', `client id ${JSON.stringify(conn.clientId)} is not the device id ${session.device.id}`));
    }
    const limits = this.#deps.config.limits[session.device.type];
    const keepalive = conn.keepalive ?? 0;
    if (keepalive < limits.keepaliveMinS || keepalive > limits.keepaliveMaxS) {
      // MQTT 3.1.1 cannot tell a client which keepalive to use; like Mosquitto, identifier rejected.
      return refuse(new FleetgateError('KEEPALIVE_OUT_OF_RANGE', `keepalive ${keepalive}s outside [${limits.keepaliveMinS}, ${limits.keepaliveMaxS}]`));
    }
    if (this.#deps.sessions.ofDevice(session.device.id).length > 1) {
      this.#deps.log.info({ deviceId: session.device.id, sessionId: session.id }, 'new session takes over the previous one');
    }
    this.#decision('admitted', conn, undefined, {});
    conn.admitted = true;
    this.#deps.metrics.connected.inc({ type: session.device.type, transport: conn.transport });
    done(null, true);
  }

  #authorizePublish(client: Client | null, topic: string, qos: number, cb: (err?: Error | null) => void): void {
    if (client === null) return cb(null); // the broker's own ($SYS heartbeat)
    const session = connectionOf.get(client)?.session;
    const code = this.#packetCheck(session, () => mayPublish(session!.scope, topic));
    if (code === undefined) {
      this.#deps.metrics.messagesIn.inc({ qos });
      return cb(null);
    }
    // MQTT 3.1.1 has no negative PUBACK: an unauthorized PUBLISH closes the connection.
    this.#denied('publish', client, code, topic);
    cb(new FleetgateError(code));
  }

  #authorizeSubscribe(client: Client, sub: Subscription, cb: (err: Error | null, sub?: Subscription | null) => void): void {
    const session = connectionOf.get(client)?.session;
    const code = this.#packetCheck(session, () => maySubscribe(session!.scope, sub.topic));
    if (code === undefined) return cb(null, sub);
    this.#denied('subscribe', client, code, sub.topic);
    if (code === 'TOPIC_DENIED') return cb(null, null); // SUBACK 0x80 for this filter [MQTT-3.9.3]
    cb(new FleetgateError(code));
  }

  /** The per-packet check: the session's in-memory status (kept current by the watcher), then the topic scope. */
  #packetCheck(session: Session | undefined, topicAllowed: () => boolean): ErrorCode | undefined {
    if (session === undefined) return 'NOT_AUTHORIZED';
    if (session.cut !== undefined) return session.cut;
    return topicAllowed() ? undefined : 'TOPIC_DENIED';
  }

  #authorizeForward(client: Client, packet: AedesPublishPacket): AedesPublishPacket | null {
    const session = connectionOf.get(client)?.session;
    if (session === undefined || session.cut !== undefined) return null;
    this.#deps.metrics.messagesOut.inc();
    return packet;
  }

  #denied(action: 'publish' | 'subscribe', client: Client, code: ErrorCode, topic: string): void {
    const session = connectionOf.get(client)?.session;
    this.#deps.metrics.denied.inc({ action, code });
    this.#deps.log.warn({ action, code, topic, deviceId: session?.device.id, serial: session?.identity.serial }, `${action} refused`);
  }

  #connectionError(client: Client, err: Error & { errorCode?: number }): void {
    const conn = connectionOf.get(client);
    if (err.errorCode === 1) {
      this.#decision('refused', conn, 'PROTOCOL_UNSUPPORTED', { message: 'MQTT 3.1.1 and 3.1 only (MQTT 5 is not supported)' });
      return;
    }
    if (err.errorCode !== undefined) return; // CONNACK refusals are logged by #authenticate
    this.#deps.log.info({ deviceId: conn?.session?.device.id, transport: conn?.transport, remoteAddress: conn?.remoteAddress, err: err.message }, 'connection error');
  }

  #closed(conn: Connection): void {
    const session = conn.session;
    if (session === undefined || !this.#deps.sessions.remove(session)) return;
    if (conn.admitted === true) {
      this.#deps.metrics.connected.dec({ type: session.device.type, transport: conn.transport });
    }
  }

  /** One decision line per connection, with the code, serial and fingerprint. */
  #decision(outcome: 'admitted' | 'refused', conn: Connection | undefined, code: ErrorCode | undefined, extra: Record<string, unknown>): void {
    const identity = conn?.session?.identity ?? (conn?.refusal?.detail as { serial?: string; fingerprint?: string; deviceId?: string } | undefined);
    this.#deps.metrics.handshakes.inc({ transport: conn?.transport ?? 'unknown', outcome, code: code ?? 'OK' });
    const line = {
      decision: outcome, code, transport: conn?.transport, remoteAddress: conn?.remoteAddress, clientId: conn?.clientId,
      deviceId: identity?.deviceId, serial: identity?.serial, fingerprint: identity?.fingerprint, ...extra,
    };
    if (outcome === 'admitted') this.#deps.log.info(line, 'mqtt connection admitted');
    else this.#deps.log.warn(line, 'mqtt connection refused');
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.broker.close(() => resolve()));
  }
}
