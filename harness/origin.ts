import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

/** What the test origin saw of one request. */
export interface Seen {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  bytes: number;
}

/**
 * An origin behind the gateway (plain HTTP on loopback). `/echo` answers with every request
 * header echoed back as a response header, its own cookies (one carrying the assertion), and
 * a trailer with the assertion; `/slow` waits; `/upload` counts and discards the body.
 */
export async function startOrigin(t: {
  after(fn: () => unknown): void;
}): Promise<{ url: string; seen: Seen[]; server: Server }> {
  const seen: Seen[] = [];
  const server = createServer((req, res) => {
    let bytes = 0;
    req.on('data', (b: Buffer) => {
      bytes += b.length;
    });
    req.on('end', () => {
      seen.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, bytes });
      if (req.url?.includes('/slow')) {
        setTimeout(() => res.end('late'), 3_000).unref();
        return;
      }
      if (req.url?.includes('/echo')) {
        const assertion = String(req.headers['fleetgate-assertion'] ?? '');
        for (const [name, value] of Object.entries(req.headers)) {
          if (
            value !== undefined &&
            !['content-length', 'transfer-encoding', 'connection', 'host', 'keep-alive'].includes(name)
          )
            res.setHeader(name, value);
        }
        res.setHeader('x-echo-assertion', assertion);
        res.setHeader('set-cookie', ['origin-session=abc123; Path=/; HttpOnly', `leak=${assertion}; Path=/`]);
        res.setHeader('trailer', 'x-trailer-assertion');
        res.write(JSON.stringify({ ok: true, bytes }));
        res.addTrailers({ 'x-trailer-assertion': assertion });
        res.end();
        return;
      }
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ ok: true, bytes }));
    });
  });
  server.keepAliveTimeout = 1_000;
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(
    () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  );
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, seen, server };
}
