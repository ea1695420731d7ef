import type { TLSSocket } from 'node:tls';
import type { WebSocket } from 'ws';

/**
 * What the MQTT core needs of a connection, over TLS or a WebSocket: bytes in, a batch of
 * chunks out per event-loop turn (corked into as few TLS records / one WebSocket frame), how
 * much is still unsent (for the slow-consumer bound), close.
 */
export interface MqttTransport {
  write(chunks: Buffer[]): void;
  /** Bytes written but not yet handed to the kernel. */
  readonly buffered: number;
  close(): void;
  onData(fn: (chunk: Buffer) => void): void;
  onClose(fn: () => void): void;
  onDrain(fn: () => void): void;
  /**
   * The connection was admitted (CONNECT accepted) for a device whose packets may be up to
   * `bytes`: a WebSocket may now carry frames that large. Before, its frames are bounded by the
   * pre-CONNECT limit, checked from the frame header, before the payload is buffered.
   */
  admitted(maxPacketBytes: number): void;
}

export function tlsTransport(socket: TLSSocket): MqttTransport {
  socket.on('error', () => undefined); // a reset peer: 'close' follows
  return {
    write(chunks) {
      if (socket.destroyed) return;
      if (chunks.length === 1) {
        socket.write(chunks[0] as Buffer);
        return;
      }
      socket.cork();
      for (const c of chunks) socket.write(c);
      socket.uncork();
    },
    get buffered() {
      return socket.writableLength;
    },
    // Graceful: what was written (a CONNACK refusal) goes out first; a peer that does not read
    // cannot hold the socket open past the timer.
    close: () => {
      socket.end();
      setTimeout(() => socket.destroy(), 2_000).unref();
    },
    onData: (fn) => socket.on('data', fn),
    onClose: (fn) => socket.once('close', fn),
    onDrain: (fn) => socket.on('drain', fn),
    admitted: () => undefined, // the framer bounds each packet from its fixed header
  };
}

/** MQTT over WebSocket: binary frames only [MQTT-6.0.0-1]; a packet may span frames and a frame hold several. */
export function wsTransport(ws: WebSocket): MqttTransport {
  ws.on('error', () => undefined);
  const drainers: (() => void)[] = [];
  return {
    write(chunks) {
      if (ws.readyState !== ws.OPEN) return;
      ws.send(chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks), { binary: true }, () => {
        if (ws.bufferedAmount === 0) for (const fn of drainers) fn();
      });
    },
    get buffered() {
      return ws.bufferedAmount;
    },
    close: () => {
      ws.close();
      setTimeout(() => ws.terminate(), 2_000).unref();
    },
    onData: (fn) =>
      ws.on('message', (data, isBinary) => {
        if (!isBinary) {
          ws.terminate(); // text frames are not MQTT
          return;
        }
        fn(Array.isArray(data) ? Buffer.concat(data) : Buffer.isBuffer(data) ? data : Buffer.from(data as ArrayBuffer));
      }),
    onClose: (fn) => ws.once('close', fn),
    onDrain: (fn) => drainers.push(fn),
    admitted: (maxPacketBytes) => raiseFrameLimit(ws, wsFrameLimit(maxPacketBytes)),
  };
}

/**
 * The largest WebSocket frame (message) for a connection whose packets may be `maxPacketBytes`:
 * twice that, so a packet somewhat over the limit still reaches the MQTT framer, which refuses it
 * from its fixed header with the protocol's answer (CONNACK / DISCONNECT 0x95 Packet too large);
 * anything larger is refused by ws from the frame header (close 1009), never buffered.
 */
export function wsFrameLimit(maxPacketBytes: number): number {
  return 2 * maxPacketBytes;
}

/**
 * ws bounds each message by the server's `maxPayload`, checked from each frame's header before
 * its payload is buffered; it has no per-connection setting, so the admitted connection's
 * receiver is given the device type's bound. ws 8's receiver keeps it in `_maxPayload`; if a
 * later ws names it otherwise, the connection keeps the pre-CONNECT bound (safe, and the
 * conformance tests sending large packets over WSS fail loudly).
 */
function raiseFrameLimit(ws: WebSocket, bytes: number): void {
  const receiver = (ws as unknown as { _receiver?: { _maxPayload?: number } })._receiver;
  if (receiver !== undefined && typeof receiver._maxPayload === 'number') receiver._maxPayload = bytes;
}
