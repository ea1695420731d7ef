import type { TLSSocket } from 'node:tls';
import type { PeerIdentity } from '../../firmware-sdk/protocol/certificate-identity.ts';
import { FleetgateError, toFleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import { socketIdentity } from '../../listeners/admission.ts';
import { peerAddress } from '../../listeners/proxy-protocol.ts';
import type { DeviceRecord } from '../../provisioning/registry/records.ts';
import { scopeFor } from '../policy/topics.ts';
import type { Session, Transport } from '../sessions.ts';
import type { Broker } from './broker.ts';
import { close, closed } from './close.ts';
import { MqttConnection } from './connection.ts';
import { malformed } from './decisions.ts';
import { pump } from './delivery.ts';
import { onPacket } from './dispatch.ts';
import type { MqttTransport } from './transport.ts';

/**
 * A connection's admission, right after the TLS handshake, in order:
 *
 * 1. verify peer — the TLS handshake itself (`requestCert`, `rejectUnauthorized`, no resumption: listeners/tls.ts);
 * 2. attach — framing, close and drain wired to the broker;
 * 3. resolve identity — from the verified certificate, never from anything the client chose;
 * 4. check status — from memory when this certificate was admitted before (kept current by the
 *    status feed), else on the registry thread; packets that arrive meanwhile wait (bounded). The
 *    event loop never waits on the registry: a check it cannot answer within
 *    `gateway.registryTimeout` refuses (CONNACK 3);
 * 5. open session — the device's topic scope (a `gateway` device's includes its children);
 * 6. register — the session joins the table at once, so a revocation landing before CONNECT still
 *    finds and cuts it; the held packets are replayed.
 *
 * CONNECT then binds the client id and the MQTT session (`handlers/connect.ts`).
 */
export function accept(b: Broker, transport: MqttTransport, kind: Transport, socket: TLSSocket): void {
  const conn = attach(b, transport, kind, socket);
  if (!b.mayWaitForConnect(conn)) return close(b, conn, 'connect_limit');
  const identity = resolveIdentity(socket);
  if (identity instanceof FleetgateError) return register(b, conn, identity);
  const remembered = statusFromMemory(b, identity);
  if (remembered !== undefined) return register(b, conn, openSession(b, conn, identity, remembered, []));
  statusFromRegistry(b, conn, identity); // then open session and register, when the registry answers
}

function attach(b: Broker, transport: MqttTransport, kind: Transport, socket: TLSSocket): MqttConnection {
  const conn: MqttConnection = new MqttConnection({
    transport,
    kind,
    remoteAddress: peerAddress(socket),
    limit: () =>
      conn.session === undefined ? b.minPacketLimit : b.deps.config.limits[conn.session.device.type].maxPacketBytes,
    onPacket: (first, body) => onPacket(b, conn, first, body),
  });
  b.connections.add(conn);
  transport.onData((chunk) => {
    if (conn.state === 'closed') return;
    conn.lastReceived = Date.now();
    try {
      conn.framer.push(chunk);
    } catch (err) {
      malformed(b, conn, err);
    }
  });
  transport.onClose(() => closed(b, conn));
  transport.onDrain(() => {
    if (conn.mqtt !== undefined) pump(b, conn.mqtt);
  });
  return conn;
}

function resolveIdentity(socket: TLSSocket): PeerIdentity | FleetgateError {
  try {
    return socketIdentity(socket);
  } catch (err) {
    return toFleetgateError(err);
  }
}

/** The status remembered for this certificate; a `gateway` device always asks the registry (its children may have changed). */
function statusFromMemory(b: Broker, identity: PeerIdentity): DeviceRecord | undefined {
  const remembered = b.deps.registry.cached(identity);
  return remembered !== undefined && remembered.type !== 'gateway' ? remembered : undefined;
}

function statusFromRegistry(b: Broker, conn: MqttConnection, identity: PeerIdentity): void {
  conn.admitting = true;
  const stop = b.deps.metrics.statusCheck.startTimer();
  b.deps.registry
    .status(identity)
    .then(async (device) => {
      // Its persistent session, if it has one anywhere in the cluster, as the cluster has it now
      // (the client id is the device id): held packets — the CONNECT — wait for that read.
      await b.state?.refresh(device.id);
      return openSession(b, conn, identity, device, device.type === 'gateway' ? await children(b, device.id) : []);
    })
    .then(
      (session) => register(b, conn, session),
      (err: unknown) => register(b, conn, toFleetgateError(err)),
    )
    .finally(stop);
}

function openSession(
  b: Broker,
  conn: MqttConnection,
  identity: PeerIdentity,
  device: DeviceRecord,
  children: string[],
): Session {
  return b.deps.sessions.create({
    identity,
    device,
    transport: conn.kind,
    remoteAddress: conn.remoteAddress,
    scope: scopeFor(b.deps.config.topics[device.type], device, children),
    close: () => close(b, conn, 'cut'),
  });
}

/** The admission is decided: a session (registered at once) or a refusal (told at CONNECT); held packets go on. */
function register(b: Broker, conn: MqttConnection, outcome: Session | FleetgateError): void {
  conn.admitting = false;
  if (outcome instanceof FleetgateError) conn.refusal = outcome;
  else conn.session = outcome;
  if (conn.state === 'closed') return;
  if (conn.session !== undefined) b.deps.sessions.add(conn.session);
  const held = conn.held;
  conn.held = [];
  for (const [first, body] of held) onPacket(b, conn, first, body);
}

/** The registered, unrevoked children of a gateway device; none when the registry cannot say (fail closed). */
export async function children(b: Broker, deviceId: string): Promise<string[]> {
  try {
    return await b.deps.registry.children(deviceId);
  } catch {
    return [];
  }
}
