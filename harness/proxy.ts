import { createConnection, createServer, type Server, type Socket } from 'node:net';

export interface RoundRobinProxy {
  port: number;
  /** Connections handed to each upstream port so far. */
  counts: Map<number, number>;
  close(): Promise<void>;
}

/**
 * A TCP load balancer of the plainest kind, on loopback: each new connection goes to the next
 * upstream in turn; an upstream that refuses the connection (a node that died) is skipped for
 * the next one. Bytes are piped both ways untouched (TLS ends at the gateway node).
 */
export async function startRoundRobinProxy(upstreams: () => number[]): Promise<RoundRobinProxy> {
  let next = 0;
  const counts = new Map<number, number>();
  const sockets = new Set<Socket>();
  const server: Server = createServer((client) => {
    sockets.add(client);
    client.on('close', () => sockets.delete(client));
    client.pause();
    const ports = upstreams();
    const attempt = (tries: number) => {
      if (tries >= ports.length) {
        client.destroy();
        return;
      }
      const port = ports[next++ % ports.length]!;
      const upstream = createConnection({ host: '127.0.0.1', port });
      let connected = false;
      upstream.once('connect', () => {
        connected = true;
        counts.set(port, (counts.get(port) ?? 0) + 1);
        sockets.add(upstream);
        upstream.on('close', () => sockets.delete(upstream));
        client.pipe(upstream);
        upstream.pipe(client);
        client.resume();
        upstream.on('error', () => client.destroy());
        client.on('error', () => upstream.destroy());
        upstream.on('close', () => client.destroy());
        client.on('close', () => upstream.destroy());
      });
      upstream.once('error', () => {
        if (!connected) attempt(tries + 1); // refused: this node is down, try the next
      });
    };
    attempt(0);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as { port: number }).port,
    counts,
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}
