import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dataPaths } from '../config/paths.ts';
import { natsConfig } from '../gateway/cluster/nats-config.ts';
import { loadCa } from '../provisioning/ca/authority.ts';
import { issueNodeCert, type NodeRole } from '../provisioning/ca/node.ts';
import { stablePort, untilListening } from './services.ts';

export const NATS_SERVER = process.env.FLEETGATE_NATS_SERVER ?? '/usr/sbin/nats-server';

/** Whether the NATS server binary is here (Debian `nats-server`; `.ci/run` installs it). */
export function natsAvailable(): boolean {
  return existsSync(NATS_SERVER);
}

export interface NatsServer {
  url: string;
  port: number;
  /**
   * With TLS: the environment that makes a gateway node `name` (one of `gateways`) connect as
   * itself — URL, node name, its certificate and key (issued on first use into the data directory).
   * Without: the URL and the name.
   */
  node(name: string): Promise<Record<string, string>>;
  pid(): number | undefined;
  /** What it printed since it last started. */
  output(): string;
  /** Stops it (SIGTERM, or `signal`; SIGKILL after 5 s) and waits for the exit. */
  stop(signal?: NodeJS.Signals): Promise<void>;
  /** Starts it again on the same port. */
  start(): Promise<void>;
}

/** The cluster links as production runs them: the fleet's CA, node certificates, `verify_and_map`, per-node permissions. */
export interface NatsTls {
  /** The test fleet's data directory (its CA signs the server's and the nodes' certificates). */
  dataDir: string;
  gateways: readonly string[];
  operators?: readonly string[];
}

/** A node certificate for `role:name` from the fleet in `dataDir`, written as `node/<name>.crt|key`; the env that uses it. */
export async function nodeIdentity(dataDir: string, role: NodeRole, name: string): Promise<Record<string, string>> {
  const paths = dataPaths(dataDir);
  const cert = join(dataDir, 'node', `${role}-${name}.crt`);
  const key = join(dataDir, 'node', `${role}-${name}.key`);
  if (!existsSync(cert)) {
    const issued = await issueNodeCert(await loadCa(paths), { role, name, validityMs: 86_400_000 });
    mkdirSync(join(dataDir, 'node'), { recursive: true, mode: 0o700 });
    writeFileSync(key, issued.keyPem!, { mode: 0o600 });
    writeFileSync(cert, issued.certPem);
  }
  return { FLEETGATE_NODE_CERT: cert, FLEETGATE_NODE_KEY: key };
}

/** A nats-server process on `port` started from `args`, restartable on the same port, stopped by PID. */
function natsProcess(url: string, port: number, args: string[], env: NatsServer['node']): NatsServer {
  let child: ChildProcess | undefined;
  let output = '';
  return {
    url,
    port,
    node: env,
    pid: () => child?.pid,
    output: () => output,
    async start() {
      output = '';
      child = spawn(NATS_SERVER, args, { stdio: ['ignore', 'pipe', 'pipe'] });
      child.stdout!.on('data', (b: Buffer) => {
        output += b.toString();
      });
      child.stderr!.on('data', (b: Buffer) => {
        output += b.toString();
      });
      await untilListening(port, child, 'nats-server', () => output);
    },
    async stop(signal: NodeJS.Signals = 'SIGTERM') {
      const c = child;
      if (c === undefined || c.exitCode !== null || c.signalCode !== null) return;
      const exited = new Promise((r) => c.once('exit', r));
      c.kill(signal);
      const timer = setTimeout(() => c.kill('SIGKILL'), 5_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

/** A certificate for a NATS server from the fleet in `dataDir` (serverAuth and clientAuth: it serves clients and routes). */
async function serverCert(dataDir: string, dir: string, name: string): Promise<{ cert: string; key: string }> {
  const issued = await issueNodeCert(await loadCa(dataPaths(dataDir)), {
    role: 'server',
    name,
    validityMs: 86_400_000,
  });
  const cert = join(dir, `${name}.crt`);
  const key = join(dir, `${name}.key`);
  writeFileSync(key, issued.keyPem!, { mode: 0o600 });
  writeFileSync(cert, issued.certPem);
  return { cert, key };
}

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'fleetgate-nats-'));
  process.once('exit', () => rmSync(dir, { recursive: true, force: true })); // kept across restarts
  return dir;
}

/** The env that makes gateway `name` connect to `servers` as itself (its node certificate, issued on first use). */
function tlsNodeEnv(tls: NatsTls, servers: string, extra: Record<string, string> = {}): NatsServer['node'] {
  return async (name) => {
    if (!tls.gateways.includes(name)) throw new Error(`gateway ${name} is not in this NATS server's configuration`);
    return {
      FLEETGATE_NATS: servers,
      FLEETGATE_NODE: name,
      ...extra,
      ...(await nodeIdentity(tls.dataDir, 'gateway', name)),
    };
  };
}

/**
 * A nats-server of its own on a loopback port, stopped by PID. Without options: no TLS, no
 * JetStream (its gateways' env says `cluster.sessions: node`). With `tls`: configured by `fleetgate cluster nats-config`'s generator, its certificate
 * from the test fleet's CA, `tls://` URL; with `jetstream` too, JetStream on (one server: replicas 1).
 */
export async function startNats(options: { tls?: NatsTls; jetstream?: boolean } = {}): Promise<NatsServer> {
  const port = await stablePort(); // restarted on the same port
  const tls = options.tls;
  if (tls === undefined) {
    const url = `nats://127.0.0.1:${port}`;
    const args = [
      '-a',
      '127.0.0.1',
      '-p',
      String(port),
      ...(options.jetstream === true ? ['-js', '-sd', tempDir()] : []),
    ];
    const extra = options.jetstream === true ? JETSTREAM_ENV(1) : NODE_SESSIONS_ENV;
    const server = natsProcess(url, port, args, async (name) => ({
      FLEETGATE_NATS: url,
      FLEETGATE_NODE: name,
      ...extra,
    }));
    await server.start();
    return server;
  }
  const dir = tempDir();
  const paths = dataPaths(tls.dataDir);
  const { cert, key } = await serverCert(tls.dataDir, dir, 'nats');
  const conf = natsConfig({
    listen: `127.0.0.1:${port}`,
    serverCert: cert,
    serverKey: key,
    rootCert: paths.rootCert,
    gateways: tls.gateways,
    operators: tls.operators ?? [],
    ...(options.jetstream === true && { jetstream: { storeDir: join(dir, 'js'), serverName: 'nats' } }),
  });
  writeFileSync(join(dir, 'nats.conf'), conf);
  const url = `tls://127.0.0.1:${port}`;
  const extra = options.jetstream === true ? JETSTREAM_ENV(1) : NODE_SESSIONS_ENV;
  const server = natsProcess(url, port, ['-c', join(dir, 'nats.conf')], tlsNodeEnv(tls, url, extra));
  await server.start();
  return server;
}

/** A server without JetStream: its gateways keep sessions on their own disks (`cluster.sessions: node`). */
const NODE_SESSIONS_ENV = { FLEETGATE_CLUSTER_SESSIONS: 'node' };

/** What makes a gateway keep its persistent sessions and retained messages on JetStream. */
const JETSTREAM_ENV = (replicas: number): Record<string, string> => ({
  FLEETGATE_CLUSTER_SESSIONS: 'jetstream',
  FLEETGATE_CLUSTER_REPLICAS: String(replicas),
});

export interface NatsCluster {
  servers: NatsServer[];
  /** Every server's URL, comma-separated (what a gateway is given). */
  url: string;
  node(name: string): Promise<Record<string, string>>;
  stop(): Promise<void>;
}

/**
 * `size` nats-servers routed to each other over mTLS (one route certificate of the fleet, as
 * `fleetgate cluster nats-config --routes` expects), JetStream on each; a gateway's env makes it
 * keep sessions on JetStream with `size` replicas (at most 3). Resolves once JetStream has a leader.
 */
export async function startNatsCluster(options: { tls: NatsTls; size?: number }): Promise<NatsCluster> {
  const size = options.size ?? 3;
  const tls = options.tls;
  const dir = tempDir();
  const paths = dataPaths(tls.dataDir);
  const { cert, key } = await serverCert(tls.dataDir, dir, 'nats-route');
  const ports = await Promise.all(Array.from({ length: size }, () => stablePort()));
  const routePorts = await Promise.all(Array.from({ length: size }, () => stablePort()));
  const url = ports.map((p) => `tls://127.0.0.1:${p}`).join(',');
  const env = tlsNodeEnv(tls, url, JETSTREAM_ENV(Math.min(3, size)));
  const servers = ports.map((port, i) => {
    const conf = natsConfig({
      listen: `127.0.0.1:${port}`,
      serverCert: cert,
      serverKey: key,
      rootCert: paths.rootCert,
      gateways: tls.gateways,
      operators: tls.operators ?? [],
      jetstream: { storeDir: join(dir, `js-${i}`), serverName: `nats-${i}` },
      routes: {
        listen: `127.0.0.1:${routePorts[i]}`,
        peers: routePorts.filter((_, j) => j !== i).map((p) => `127.0.0.1:${p}`),
        routeName: 'nats-route',
      },
    });
    const file = join(dir, `nats-${i}.conf`);
    writeFileSync(file, conf);
    return natsProcess(`tls://127.0.0.1:${port}`, port, ['-c', file], env);
  });
  await Promise.all(servers.map((s) => s.start()));
  return { servers, url, node: env, stop: async () => void (await Promise.all(servers.map((s) => s.stop()))) };
}
