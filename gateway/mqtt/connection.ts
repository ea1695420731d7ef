import type { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import type { DeviceQuota } from '../quotas.ts';
import type { Session, Transport } from '../sessions.ts';
import type { EncodedPublish } from './encode.ts';
import { Framer } from './framer.ts';
import type { Will } from './packets.ts';
import type { MqttSession } from './session.ts';
import type { MqttTransport } from './transport.ts';

/**
 * One MQTT network connection, from the TLS handshake to close: what the handshake decided
 * (`session` or `refusal`), then after CONNECT its MQTT session, keepalive and will. Outgoing
 * packets are collected during an event-loop turn and written in one batch by the plane.
 */
export class MqttConnection {
  readonly transport: MqttTransport;
  readonly kind: Transport;
  readonly remoteAddress: string;
  readonly framer: Framer;
  /** The admitted device (identity + live status), when the handshake passed every check. */
  session: Session | undefined;
  refusal: FleetgateError | undefined;
  /** The status check is still running; packets wait in `held`. */
  admitting = false;
  held: [number, Buffer][] = [];
  readonly since = Date.now();
  state: 'connecting' | 'connected' | 'closed' = 'connecting';
  mqtt: MqttSession | undefined;
  clientId: string | undefined;
  keepaliveMs = 0;
  lastReceived = Date.now();
  will: Will | undefined;
  /** Outgoing chunks of this turn. */
  out: Buffer[] = [];
  outBytes = 0;
  /** Since when the socket has held more than the outbound bound (0: it does not). */
  overSince = 0;
  /** This connection's outbound bound in bytes (its device type's, set at CONNECT). */
  maxOutbound = 1024 * 1024;
  /** Subscriptions its session may hold (its device type's, set at CONNECT). */
  maxSubscriptions = 0;
  /** The device's rate quota (set at CONNECT; absent when quotas are off). */
  quota: DeviceQuota | undefined;
  /** Counted among the connections waiting for their CONNECT (see Broker.mayWaitForConnect). */
  pendingCounted = false;
  /** When a quota refusal of this connection was last logged (they are throttled: counted always, logged once a second). */
  lastQuotaLog = 0;
  /** Why the gateway closed it (for the log and the will decision). */
  closeReason: string | undefined;
  // MQTT 5 (set at CONNECT)
  v5 = false;
  /** The client's Receive Maximum: QoS 1/2 PUBLISHes we may have unacknowledged to it. */
  receiveMax = 65_535;
  /** The client's Maximum Packet Size: larger PUBLISHes are not sent to it [MQTT-3.1.2-24]. */
  maxPacket = Number.POSITIVE_INFINITY;
  /** The client wants reason strings on acknowledgements (Request Problem Information). */
  problemInfo = true;
  /** Inbound topic aliases of this connection (never carried to another [MQTT-3.3.2-7]). */
  aliases: Map<number, string> | undefined;
  /** Inbound QoS 1 PUBLISHes not yet acknowledged (waiting for the store's commit). */
  inboundPending = 0;
  /** The Session Expiry Interval the CONNECT asked for, in seconds (a DISCONNECT may not raise it from 0). */
  requestedExpiry = 0;

  constructor(init: {
    transport: MqttTransport;
    kind: Transport;
    remoteAddress: string;
    limit: () => number;
    onPacket: (first: number, body: Buffer) => void;
  }) {
    this.transport = init.transport;
    this.kind = init.kind;
    this.remoteAddress = init.remoteAddress;
    this.framer = new Framer(init.limit, init.onPacket);
  }

  push(chunk: Buffer): void {
    this.out.push(chunk);
    this.outBytes += chunk.length;
  }

  pushPublish(p: EncodedPublish, packetId: Buffer | undefined): void {
    this.out.push(p.head);
    if (packetId !== undefined) this.out.push(packetId);
    if (p.props !== undefined) this.out.push(p.props);
    if (p.payload.length > 0) this.out.push(p.payload);
    this.outBytes += p.head.length + (packetId?.length ?? 0) + (p.props?.length ?? 0) + p.payload.length;
  }

  /** Writes this turn's packets in one batch. */
  flush(): void {
    if (this.out.length === 0) return;
    const chunks = this.out;
    this.out = [];
    this.outBytes = 0;
    if (this.state !== 'closed') this.transport.write(chunks);
  }
}
