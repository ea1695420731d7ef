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
  /** Stops it (SIGTERM, then SIGKILL) and waits for the exit. */
  stop(): Promise<void>;
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

/**
 * A nats-server of its own on a loopback port (no JetStream, no persistence), stopped by PID.
 * With `tls`: configured by `fleetgate cluster nats-config`'s generator, its certificate from the
 * test fleet's CA, `tls://` URL.
 */
export async function startNats(options: { tls?: NatsTls } = {}): Promise<NatsServer> {
  const port = await stablePort(); // restarted on the same port
  let child: ChildProcess | undefined;
  let output = '';
  const tls = options.tls;
  let args = ['-a', '127.0.0.1', '-p', String(port)];
  let dir: string | undefined;
  if (tls !== undefined) {
    dir = mkdtempSync(join(tmpdir(), 'fleetgate-nats-'));
    const paths = dataPaths(tls.dataDir);
    const issued = await issueNodeCert(await loadCa(paths), {
      role: 'server',
      name: 'nats',
      validityMs: 86_400_000,
    });
    writeFileSync(join(dir, 'nats.key'), issued.keyPem!, { mode: 0o600 });
    writeFileSync(join(dir, 'nats.crt'), issued.certPem);
    const conf = natsConfig({
      listen: `127.0.0.1:${port}`,
      serverCert: join(dir, 'nats.crt'),
      serverKey: join(dir, 'nats.key'),
      rootCert: paths.rootCert,
      gateways: tls.gateways,
      operators: tls.operators ?? [],
    });
    writeFileSync(join(dir, 'nats.conf'), conf);
    args = ['-c', join(dir, 'nats.conf')];
    const made = dir;
    process.once('exit', () => rmSync(made, { recursive: true, force: true })); // kept across restarts
  }
  const url = `${tls === undefined ? 'nats' : 'tls'}://127.0.0.1:${port}`;
  const server: NatsServer = {
    url,
    port,
    async node(name) {
      if (tls === undefined) return { FLEETGATE_NATS: url, FLEETGATE_NODE: name };
      if (!tls.gateways.includes(name)) throw new Error(`gateway ${name} is not in this NATS server's configuration`);
      return { FLEETGATE_NATS: url, FLEETGATE_NODE: name, ...(await nodeIdentity(tls.dataDir, 'gateway', name)) };
    },
    pid: () => child?.pid,
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
    async stop() {
      const c = child;
      if (c === undefined || c.exitCode !== null || c.signalCode !== null) return;
      const exited = new Promise((r) => c.once('exit', r));
      c.kill('SIGTERM');
      const timer = setTimeout(() => c.kill('SIGKILL'), 5_000);
      await exited;
      clearTimeout(timer);
    },
  };
  await server.start();
  return server;
}
