// npm run bench:tls-memory — the floor under the gateway's memory per idle connection: RSS per
// idle mutual-TLS connection of a bare Node `tls.createServer` (same certificates, nothing else:
// no MQTT, no sessions), measured in a child process after a GC. Compare with bench:mqtt's idle
// RSS per connection (fleetgate and Mosquitto). Loopback only; BENCH_TLS_CONNECTIONS (3,000).

import { fork } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { connect, createServer } from 'node:tls';

const N = Number(process.env.BENCH_TLS_CONNECTIONS ?? 3_000);
if (process.argv[2] === 'server') {
  const [cert, key, ca] = JSON.parse(process.env.MAT!) as string[];
  const socks: unknown[] = [];
  const s = createServer({ cert, key, ca, requestCert: true, rejectUnauthorized: true }, (sock) => {
    socks.push(sock);
    sock.on('error', () => {});
  });
  s.listen(0, '127.0.0.1', () => process.send!({ port: (s.address() as { port: number }).port }));
  process.on('message', () => {
    global.gc?.();
    setTimeout(() => process.send!({ rss: process.memoryUsage().rss, n: socks.length }), 500);
  });
} else {
  // Imported here, not above: the server process loads nothing but `node:tls` (bench:scale forks
  // it too, and its RSS before the connections is part of the floor).
  const { enrollDevice } = await import('../harness/pki.ts');
  const { benchFleet } = await import('./lib.ts');
  const fleet = await benchFleet();
  const dev = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'm1' });
  const serverCert = readFileSync(fleet.paths.serverCert, 'utf8');
  const serverKey = readFileSync(fleet.paths.serverKey, 'utf8');
  const ca = readFileSync(fleet.paths.rootCert, 'utf8') + readFileSync(fleet.paths.intermediateCert, 'utf8');
  const child = fork(process.argv[1]!, ['server'], {
    env: { ...process.env, MAT: JSON.stringify([serverCert, serverKey, ca]) },
    execArgv: ['--expose-gc', ...process.execArgv],
  });
  const msg = () =>
    new Promise<{ port: number; rss: number; n: number }>((r) => child.once('message', r as (m: unknown) => void));
  const { port } = await msg();
  child.send('m');
  const r0 = await msg();
  const clients: unknown[] = [];
  for (let i = 0; i < N; i++) {
    clients.push(
      await new Promise((res, rej) => {
        const c = connect(
          { port, host: '127.0.0.1', ca, cert: dev.certPem, key: dev.keyPem, servername: 'localhost' },
          () => res(c),
        );
        c.on('error', rej);
      }),
    );
  }
  await new Promise((r) => setTimeout(r, 1000));
  child.send('m');
  const r1 = await msg();
  console.log(
    `bare Node TLS: ${((r1.rss - r0.rss) / r1.n / 1024).toFixed(1)} KiB RSS per idle mTLS connection (${r1.n})`,
  );
  child.kill();
  fleet.cleanup();
  process.exit(0);
}
