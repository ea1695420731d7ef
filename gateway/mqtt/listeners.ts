import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { createServer as createTlsServer, type Server as TlsServer, type TLSSocket, type TlsOptions } from 'node:tls';
import type { Logger } from 'pino';
import { createWebSocketStream, WebSocketServer } from 'ws';
import type { GatewayConfig } from '../../config/config.ts';
import type { Metrics } from '../metrics.ts';
import { handshakeErrorCode } from '../tls/handshake-errors.ts';
import type { MqttPlane } from './broker.ts';

export interface Listening {
  mqtts: TlsServer;
  wss: HttpsServer;
  ports: { mqtts: number; wss: number };
}

function onTlsClientError(transport: string, log: Logger, metrics: Metrics) {
  return (err: Error & { code?: string }, socket: TLSSocket) => {
    const code = handshakeErrorCode(err, socket.authorizationError);
    metrics.handshakes.inc({ transport, outcome: 'tls_failed', code });
    log.warn({
      decision: 'refused', code, transport, remoteAddress: socket.remoteAddress,
      verify: socket.authorizationError ?? undefined, err: err.message,
    }, 'tls handshake failed');
  };
}

function listen(server: TlsServer | HttpsServer, port: number, host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve((server.address() as AddressInfo).port);
    });
  });
}

/** MQTT over TLS (8883) and MQTT over WSS (8884, `/mqtt`): the same TLS options, the same plane. */
export async function startMqttListeners(plane: MqttPlane, tls: TlsOptions, config: GatewayConfig, log: Logger, metrics: Metrics): Promise<Listening> {
  const mqtts = createTlsServer({ ...tls, noDelay: true }, (socket) => plane.handle(socket, 'mqtts', socket));
  mqtts.on('tlsClientError', onTlsClientError('mqtts', log, metrics));

  const wss = createHttpsServer({ ...tls, noDelay: true }, (_req, res) => {
    res.writeHead(426, { 'content-type': 'text/plain', upgrade: 'websocket' }).end(`MQTT over WebSocket only, at ${config.wssPath}\n`);
  });
  wss.on('tlsClientError', onTlsClientError('wss', log, metrics));
  const maxPayload = Math.max(...Object.values(config.limits).map((l) => l.maxPacketBytes)) + 8;
  const ws = new WebSocketServer({ server: wss, path: config.wssPath, maxPayload, handleProtocols: (protocols) => (protocols.has('mqtt') ? 'mqtt' : false) });
  ws.on('connection', (socket, req) => {
    const stream = createWebSocketStream(socket);
    stream.on('error', () => undefined); // surfaced through aedes and the close handler
    plane.handle(req.socket as TLSSocket, 'wss', stream, req);
  });
  const [mqttsPort, wssPort] = await Promise.all([listen(mqtts, config.mqttPort, config.host), listen(wss, config.wssPort, config.host)]);
  return { mqtts, wss, ports: { mqtts: mqttsPort, wss: wssPort } };
}
