// The floor any Node server pays per request, for bench:https: node:https with fleetgate's TLS
// options (client certificate required, no resumption, same suites) and the same allocator and
// flags as the gateway, answering `200 ok` and doing nothing else — no identity, registry, JWT,
// routing, logging or metrics. Prints {"port": N} when listening. Loopback only.
import { createServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { dataPaths } from '../config/paths.ts';
import { serverTlsOptions } from '../listeners/tls.ts';

const server = createServer(
  serverTlsOptions(dataPaths(process.argv[2]!), { handshakeTimeoutMs: 10_000, clientCert: 'required' }),
  (req, res) => {
    req.resume();
    res.end('ok');
  },
);
server.listen(0, '127.0.0.1', () =>
  process.stdout.write(`${JSON.stringify({ port: (server.address() as AddressInfo).port })}\n`),
);
process.on('SIGTERM', () => server.close(() => process.exit(0)));
