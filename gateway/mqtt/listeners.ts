import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import { createServer as createTlsServer, type TlsOptions, type Server as TlsServer } from 'node:tls';
import type { Logger } from 'pino';
import { WebSocketServer } from 'ws';
import type { GatewayConfig } from '../../config/config.ts';
import type { ConnectionGuard } from '../../listeners/guard.ts';
import { onTlsClientError } from '../../listeners/handshake-errors.ts';
import { listen } from '../../listeners/listen.ts';
import { behindProxy, proxyOptions } from '../../listeners/proxy-protocol.ts';
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
  const proxy = proxyOptions(config, deps);
  if (proxy !== undefined) behindProxy([mqtts, wss], proxy);
  const bound = await Promise.allSettled([
    listen(mqtts, config.mqttPort, config.host, 'gateway.mqttPort (FLEETGATE_MQTT_PORT)'),
    listen(wss, config.wssPort, config.host, 'gateway.wssPort (FLEETGATE_WSS_PORT)'),
  ]);
  const failure = bound.find((b) => b.status === 'rejected');
  if (failure !== undefined) {
    mqtts.close();
    wss.close();
    throw failure.reason;
  }
  const [mqttsPort, wssPort] = bound.map((b) => (b as PromiseFulfilledResult<number>).value) as [number, number];
  return { mqtts, wss, ports: { mqtts: mqttsPort, wss: wssPort } };
}
