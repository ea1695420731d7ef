import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import type { Server as NetServer } from 'node:net';
import { createServer as createTlsServer, type TlsOptions, type Server as TlsServer } from 'node:tls';
import type { Logger } from 'pino';
import { WebSocketServer } from 'ws';
import type { GatewayConfig } from '../../config/config.ts';
import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import type { ConnectionGuard } from '../../listeners/guard.ts';
import { onTlsClientError } from '../../listeners/handshake-errors.ts';
import { listen } from '../../listeners/listen.ts';
import { proxyFront, trustedBalancers } from '../../listeners/proxy-protocol.ts';
import type { ThrottledLog } from '../../listeners/throttled-log.ts';
import type { Metrics } from '../metrics.ts';
import type { MqttPlane } from './plane.ts';
import { wsFrameLimit } from './transport.ts';

export interface Listening {
  mqtts: TlsServer;
  wss: HttpsServer;
  ports: { mqtts: number; wss: number };
}

export interface ListenerDeps {
  guard: ConnectionGuard;
  log: Logger;
  refusals: ThrottledLog;
  metrics: Metrics;
}

/** PROXY-protocol fronts for `servers` when `gateway.proxyProtocolFrom` names balancers; undefined otherwise. */
function behindBalancers(config: GatewayConfig, deps: ListenerDeps, servers: TlsServer[]): NetServer[] | undefined {
  let balancers: ReturnType<typeof trustedBalancers>;
  try {
    balancers = trustedBalancers(config.proxyProtocolFrom);
  } catch (err) {
    throw new FleetgateError('CONFIG_INVALID', `gateway.proxyProtocolFrom: ${(err as Error).message}`);
  }
  if (balancers === undefined) return undefined;
  const options = {
    balancers,
    timeoutMs: config.handshakeTimeoutMs,
    maxPending: config.maxPendingHandshakes,
    onRefused: (reason: string, remoteAddress: string) => {
      deps.metrics.unauthenticatedClosed.inc({ listener: 'proxy', reason: 'proxy_protocol' });
      deps.refusals.warn(
        `proxy|${reason}`,
        { decision: 'closed', reason, remoteAddress },
        'PROXY protocol: connection refused',
      );
    },
  };
  return servers.map((server) => proxyFront(server, options));
}

/** MQTT over TLS (8883) and MQTT over WSS (8884, `/mqtt`): the same TLS options, the same plane. */
export async function startMqttListeners(
  plane: MqttPlane,
  tls: TlsOptions,
  config: GatewayConfig,
  deps: ListenerDeps,
): Promise<Listening> {
  const { guard, refusals, metrics } = deps;
  const failed = (transport: string) =>
    onTlsClientError(refusals, (code) => metrics.handshakes.inc({ transport, outcome: 'tls_failed', code }), {
      transport,
    });
  const mqtts = createTlsServer({ ...tls, noDelay: true }, (socket) => plane.handleTls(socket));
  mqtts.on('tlsClientError', failed('mqtts'));
  guard.attach(mqtts, 'mqtts');

  const wss = createHttpsServer({ ...tls, noDelay: true }, (_req, res) => {
    res
      .writeHead(426, { 'content-type': 'text/plain', upgrade: 'websocket' })
      .end(`MQTT over WebSocket only, at ${config.wssPath}\n`);
  });
  wss.on('tlsClientError', failed('wss'));
  guard.attach(wss, 'wss');
  // Before the upgrade the connection is HTTP: it must send its upgrade request promptly. After
  // the upgrade, the MQTT CONNECT timeout and keepalive take over.
  wss.headersTimeout = config.handshakeTimeoutMs;
  wss.requestTimeout = config.handshakeTimeoutMs;
  wss.timeout = config.handshakeTimeoutMs;
  wss.keepAliveTimeout = 1_000;
  // Before CONNECT, a frame is bounded by the smallest device type's packet (wsFrameLimit): ws
  // checks it from the frame header, before buffering the payload (a revoked certificate passes
  // TLS — its status is checked after — and must not make the gateway hold megabytes).
  // Admission raises it to the device type's.
  const maxPayload = wsFrameLimit(Math.min(...Object.values(config.limits).map((l) => l.maxPacketBytes)));
  const ws = new WebSocketServer({
    server: wss,
    path: config.wssPath,
    maxPayload,
    handleProtocols: (protocols) => (protocols.has('mqtt') ? 'mqtt' : false),
  });
  // ws re-emits the HTTPS server's errors (a busy port among them): the bind below reports those.
  ws.on('error', () => undefined);
  ws.on('connection', (socket, req) => {
    req.socket.setTimeout(0); // the idle timer above was for the upgrade request only
    plane.handleWs(socket, req);
  });
  // Behind a TCP balancer speaking the PROXY protocol, a front reads its header and hands the
  // connection on: the listeners see the device's address (peerAddress).
  const fronts = behindBalancers(config, deps, [mqtts, wss]);
  const bound = await Promise.allSettled([
    listen(fronts?.[0] ?? mqtts, config.mqttPort, config.host, 'gateway.mqttPort (FLEETGATE_MQTT_PORT)'),
    listen(fronts?.[1] ?? wss, config.wssPort, config.host, 'gateway.wssPort (FLEETGATE_WSS_PORT)'),
  ]);
  const failure = bound.find((b) => b.status === 'rejected');
  if (failure !== undefined) {
    for (const f of fronts ?? []) f.close();
    mqtts.close();
    wss.close();
    throw failure.reason;
  }
  if (fronts !== undefined) {
    // Closing a listener closes its front (the servers themselves never listened).
    const [mqttsFront, wssFront] = fronts;
    mqtts.close = ((close) => (cb?: (err?: Error) => void) => {
      mqttsFront!.close();
      return close.call(mqtts, () => cb?.());
    })(mqtts.close);
    wss.close = ((close) => (cb?: (err?: Error) => void) => {
      wssFront!.close();
      return close.call(wss, () => cb?.());
    })(wss.close);
  }
  const [mqttsPort, wssPort] = bound.map((b) => (b as PromiseFulfilledResult<number>).value) as [number, number];
  return { mqtts, wss, ports: { mqtts: mqttsPort, wss: wssPort } };
}
