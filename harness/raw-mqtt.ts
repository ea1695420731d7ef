// A raw MQTT client for conformance tests: writes bytes we choose (malformed ones included) over
// TLS or a secure WebSocket, and reads what the server sends with mqtt-packet's parser (not the
// gateway's own codec, so the two are checked against each other).

import { connect as tlsConnect } from 'node:tls';
import mqttPacket, { type Packet } from 'mqtt-packet';
import { WebSocket } from 'ws';
import type { Credential } from './pki.ts';

export interface RawClient {
  send(bytes: Buffer | number[]): void;
  /** The next packet from the server (of `cmd`, skipping others when given). */
  next(cmd?: string, ms?: number): Promise<Packet>;
  /** Resolves true when the server closes the connection within `ms`. */
  closed(ms?: number): Promise<boolean>;
  readonly isClosed: boolean;
  end(): void;
}

export async function rawClient(
  url: string,
  cred: Credential,
  ca: string | Buffer,
  options: { v5?: boolean } = {},
): Promise<RawClient> {
  const parser = mqttPacket.parser({ protocolVersion: options.v5 === true ? 5 : 4 });
  const packets: Packet[] = [];
  const waiters: (() => void)[] = [];
  let isClosed = false;
  const closeWaiters: (() => void)[] = [];
  parser.on('packet', (p: Packet) => {
    packets.push(p);
    for (const w of waiters.splice(0)) w();
  });
  parser.on('error', () => undefined);
  const onClose = () => {
    isClosed = true;
    for (const w of closeWaiters.splice(0)) w();
    for (const w of waiters.splice(0)) w();
  };
  const u = new URL(url);
  let write: (b: Buffer) => void;
  let end: () => void;
  if (u.protocol === 'mqtts:') {
    const socket = tlsConnect({
      host: u.hostname,
      port: Number(u.port),
      ca,
      cert: cred.certPem,
      key: cred.keyPem,
      servername: 'localhost',
    });
    await new Promise<void>((resolve, reject) => {
      socket.once('secureConnect', () => resolve());
      socket.once('error', reject);
    });
    socket.on('error', () => undefined);
    socket.on('data', (b: Buffer) => parser.parse(b));
    socket.on('close', onClose);
    write = (b) => {
      if (!socket.destroyed) socket.write(b);
    };
    end = () => socket.destroy();
  } else {
    const ws = new WebSocket(url, 'mqtt', { ca, cert: cred.certPem, key: cred.keyPem });
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('error', reject);
    });
    ws.on('error', () => undefined);
    ws.on('message', (data: Buffer) => parser.parse(data));
    ws.on('close', onClose);
    write = (b) => {
      if (ws.readyState === ws.OPEN) ws.send(b);
    };
    end = () => ws.terminate();
  }
  return {
    send: (bytes) => write(Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes)),
    async next(cmd, ms = 15_000) {
      const deadline = Date.now() + ms;
      for (;;) {
        const i = packets.findIndex((p) => cmd === undefined || p.cmd === cmd);
        if (i !== -1) return packets.splice(i, 1)[0] as Packet;
        if (isClosed) throw new Error(`connection closed while waiting for ${cmd ?? 'a packet'}`);
        if (Date.now() > deadline) throw new Error(`no ${cmd ?? 'packet'} within ${ms} ms`);
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, Math.max(0, deadline - Date.now()));
          waiters.push(() => {
            clearTimeout(timer);
            resolve();
          });
        });
      }
    },
    closed(ms = 15_000) {
      if (isClosed) return Promise.resolve(true);
      return new Promise((resolve) => {
        const timer = setTimeout(() => resolve(false), ms);
        closeWaiters.push(() => {
          clearTimeout(timer);
          resolve(true);
        });
      });
    },
    get isClosed() {
      return isClosed;
    },
    end,
  };
}

/** Bytes of a packet from mqtt-packet (for well-formed packets and as a base to corrupt). */
export function bytes(packet: Record<string, unknown>): Buffer {
  return mqttPacket.generate(packet as unknown as Packet);
}

/** Bytes of an MQTT 5 packet from mqtt-packet. */
export function bytes5(packet: Record<string, unknown>): Buffer {
  return mqttPacket.generate(packet as unknown as Packet, { protocolVersion: 5 });
}

/** An MQTT 5 CONNECT for this client id (clean start, keepalive 30). */
export function connect5Bytes(clientId: string, extra: Record<string, unknown> = {}): Buffer {
  return bytes5({
    cmd: 'connect',
    protocolId: 'MQTT',
    protocolVersion: 5,
    clean: true,
    keepalive: 30,
    clientId,
    ...extra,
  });
}

/** A CONNECT for this client id (MQTT 3.1.1, clean session, keepalive 30). */
export function connectBytes(clientId: string, extra: Record<string, unknown> = {}): Buffer {
  return bytes({
    cmd: 'connect',
    protocolId: 'MQTT',
    protocolVersion: 4,
    clean: true,
    keepalive: 30,
    clientId,
    ...extra,
  });
}

/** A packet with a hand-made fixed header: type/flags byte, then the body (remaining length computed). */
export function frame(first: number, body: number[] | Buffer): Buffer {
  const b = Buffer.isBuffer(body) ? body : Buffer.from(body);
  const len: number[] = [];
  let n = b.length;
  do {
    let x = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) x |= 0x80;
    len.push(x);
  } while (n > 0);
  return Buffer.concat([Buffer.from([first, ...len]), b]);
}

/** A length-prefixed MQTT string from raw bytes (to write invalid UTF-8). */
export function str(raw: Buffer | string): Buffer {
  const b = Buffer.isBuffer(raw) ? raw : Buffer.from(raw, 'utf8');
  return Buffer.concat([Buffer.from([b.length >> 8, b.length & 0xff]), b]);
}
