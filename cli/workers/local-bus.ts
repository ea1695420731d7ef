import { type ChildProcess, spawn } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, connect as netConnect } from 'node:net';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import type { NodeRole } from '../../firmware-sdk/protocol/node-id.ts';
import { natsConfig } from '../../gateway/cluster/nats-config.ts';
import { issueNodeCert } from '../../provisioning/ca/node.ts';
import type { CliContext } from '../context.ts';

/**
 * The workers' bus (`--workers N` without `cluster.nats`): a nats-server of the supervisor's own
 * on a loopback port, JetStream on (one replica) in `<data>/workers/jetstream`, configured by the
 * same generator as a cluster's (`fleetgate cluster nats-config`): TLS with the fleet's root as the
 * only client CA, `verify_and_map`, and per worker exactly the subjects a gateway node uses. Each
 * worker and the server get a node certificate from the fleet's issuing CA (recorded in the audit
 * log, kept in `<data>/workers/`, issued again when less than a week is left). Its PID is written
 * to `<data>/workers/nats.pid`: one left by a supervisor that was killed is stopped at the next start.
 */
export interface LocalBus {
  readonly url: string;
  readonly pid: number | undefined;
  /** Where its PID is written (each time it starts). */
  readonly pidFile: string;
  /** The environment that makes worker `i` (1-based) a node of the bus. */
  workerEnv(i: number): Record<string, string>;
  /** Worker `i`'s node name. */
  workerName(i: number): string;
  stop(): Promise<void>;
}

const CANDIDATES = ['/usr/sbin/nats-server', '/usr/bin/nats-server', '/usr/local/bin/nats-server'];
const VALIDITY_MS = 90 * 86_400_000;
const RENEW_BEFORE_MS = 7 * 86_400_000;
const READY_TIMEOUT_MS = 20_000;

/** The nats-server binary: `FLEETGATE_NATS_SERVER`, or where Debian and others put it. */
export function natsServerBinary(): string | undefined {
  const configured = process.env.FLEETGATE_NATS_SERVER;
  if (configured !== undefined && configured !== '') return existsSync(configured) ? configured : undefined;
  return CANDIDATES.find((p) => existsSync(p));
}

/** Worker names: the node's name (its host name by default), cut to leave room for `-w<i>`. */
function baseName(node: string): string {
  return node.slice(0, 56).replace(/[._-]+$/, '') || 'fleetgate';
}

export async function startLocalBus(ctx: CliContext, count: number, log: Logger): Promise<LocalBus> {
  const binary = natsServerBinary();
  if (binary === undefined)
    throw new FleetgateError(
      'CLUSTER_UNAVAILABLE',
      '--workers above 1 runs the workers as nodes of one cluster on a local nats-server, which is not installed (Debian: apt-get install nats-server; or set FLEETGATE_NATS_SERVER); one worker needs nothing',
    );
  const dir = join(ctx.paths.dataDir, 'workers');
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const base = baseName(ctx.config.cluster.node);
  const names = Array.from({ length: count }, (_, i) => `${base}-w${i + 1}`);
  const server = await identity(ctx, dir, 'server', `${base}-bus`);
  const gateways = await Promise.all(names.map((n) => identity(ctx, dir, 'gateway', n)));
  const pidFile = join(dir, 'nats.pid');
  await stopStale(pidFile, dir, log);
  const port = await freePort();
  const conf = join(dir, 'nats.conf');
  writeFileSync(
    conf,
    natsConfig({
      listen: `127.0.0.1:${port}`,
      serverCert: server.cert,
      serverKey: server.key,
      rootCert: ctx.paths.rootCert,
      gateways: names,
      operators: [],
      jetstream: { storeDir: join(dir, 'jetstream'), serverName: `${base}-bus` },
    }),
    { mode: 0o600 },
  );
  const proc = new BusProcess(binary, conf, port, pidFile, log);
  await proc.start();
  const url = `tls://127.0.0.1:${port}`;
  return {
    url,
    pidFile,
    get pid() {
      return proc.pid;
    },
    workerName: (i) => names[i - 1] as string,
    workerEnv: (i) => ({
      FLEETGATE_NATS: url,
      FLEETGATE_NODE: names[i - 1] as string,
      FLEETGATE_NODE_CERT: gateways[i - 1]!.cert,
      FLEETGATE_NODE_KEY: gateways[i - 1]!.key,
      FLEETGATE_CLUSTER_SESSIONS: 'jetstream',
      FLEETGATE_CLUSTER_REPLICAS: '1',
    }),
    stop: () => proc.stop(),
  };
}

/** A node certificate and key in `dir`, issued (and recorded) when missing or within a week of its end. */
async function identity(
  ctx: CliContext,
  dir: string,
  role: NodeRole,
  name: string,
): Promise<{ cert: string; key: string }> {
  const cert = join(dir, `${role}-${name}.crt`);
  const key = join(dir, `${role}-${name}.key`);
  if (existsSync(cert) && existsSync(key)) {
    try {
      const x = new X509Certificate(readFileSync(cert));
      if (new Date(x.validTo).getTime() - Date.now() > RENEW_BEFORE_MS) return { cert, key };
    } catch {
      // unreadable: issued again below
    }
  }
  let issued: Awaited<ReturnType<typeof issueNodeCert>>;
  try {
    issued = await issueNodeCert(await ctx.ca(), { role, name, validityMs: VALIDITY_MS });
  } catch (err) {
    if (!(err instanceof FleetgateError)) throw err;
    throw new FleetgateError(
      err.code,
      `--workers gives each worker a node certificate for the local bus, from the fleet's issuing CA: ${err.message}`,
      { cause: err },
    );
  }
  // Recorded before it is written: no certificate issued unrecorded.
  ctx.registry().appendAudit(ctx.actor, 'node.issue', `${role}:${name}`, {
    serial: issued.serial,
    notAfter: issued.notAfter,
    keyMadeHere: true,
    for: 'workers',
  });
  writeFileSync(key, issued.keyPem!, { mode: 0o600 });
  writeFileSync(cert, issued.certPem, { mode: 0o644 });
  return { cert, key };
}

/** A nats-server left running by a supervisor that was killed (its PID file names it, its command line our directory). */
async function stopStale(pidFile: string, dir: string, log: Logger): Promise<void> {
  if (!existsSync(pidFile)) return;
  const pid = Number(readFileSync(pidFile, 'utf8').trim());
  rmSync(pidFile, { force: true });
  if (!Number.isInteger(pid) || pid <= 1) return;
  let cmdline = '';
  try {
    cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
  } catch {
    return; // gone
  }
  if (!cmdline.includes('nats-server') || !cmdline.includes(dir)) return;
  log.warn({ pid }, 'a local bus nats-server left by an earlier run: stopping it');
  process.kill(pid, 'SIGKILL');
  for (let i = 0; i < 100 && existsSync(`/proc/${pid}`); i++) await new Promise((r) => setTimeout(r, 50));
}

/** A free loopback port (the bus is started on it at once). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}

/** The nats-server process: started, restarted on the same port when it dies, stopped by PID. */
class BusProcess {
  readonly #binary: string;
  readonly #conf: string;
  readonly #port: number;
  readonly #pidFile: string;
  readonly #log: Logger;
  #child: ChildProcess | undefined;
  #stopping = false;
  #output = '';
  #restarts = 0;

  constructor(binary: string, conf: string, port: number, pidFile: string, log: Logger) {
    this.#binary = binary;
    this.#conf = conf;
    this.#port = port;
    this.#pidFile = pidFile;
    this.#log = log;
  }

  get pid(): number | undefined {
    return this.#child?.pid;
  }

  async start(): Promise<void> {
    this.#output = '';
    const child = spawn(this.#binary, ['-c', this.#conf], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.#child = child;
    const keep = (b: Buffer) => {
      this.#output = (this.#output + b.toString()).slice(-16_384);
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
    const exited = new Promise<never>((_r, reject) =>
      child.once('exit', (code, signal) =>
        reject(
          new FleetgateError(
            'CLUSTER_UNAVAILABLE',
            `the workers' nats-server stopped as it started (${signal ?? `exit code ${code}`}): ${this.#output.trim().split('\n').slice(-3).join(' | ')}`,
          ),
        ),
      ),
    );
    exited.catch(() => undefined);
    await Promise.race([untilListening(this.#port), exited]);
    if (child.pid !== undefined) writeFileSync(this.#pidFile, `${child.pid}\n`);
    child.once('exit', (code, signal) => {
      if (this.#stopping) return;
      this.#restarts++;
      this.#log.error(
        { code: 'CLUSTER_UNAVAILABLE', exitCode: code, signal, restarts: this.#restarts },
        "the workers' nats-server died: starting it again",
      );
      setTimeout(
        () => {
          if (!this.#stopping)
            this.start().catch((err: unknown) =>
              this.#log.error({ err: (err as Error).message }, "the workers' nats-server could not be started again"),
            );
        },
        Math.min(10_000, 500 * this.#restarts),
      ).unref();
    });
  }

  async stop(): Promise<void> {
    this.#stopping = true;
    const c = this.#child;
    if (c === undefined || c.exitCode !== null || c.signalCode !== null) return;
    const exited = new Promise((r) => c.once('exit', r));
    c.kill('SIGTERM');
    const timer = setTimeout(() => c.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(timer);
    rmSync(this.#pidFile, { force: true });
  }
}

/** Resolves once something accepts connections on the loopback port (at most {@link READY_TIMEOUT_MS}). */
async function untilListening(port: number): Promise<void> {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = netConnect(port, '127.0.0.1');
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline)
      throw new FleetgateError(
        'CLUSTER_UNAVAILABLE',
        `the workers' nats-server did not listen on 127.0.0.1:${port} within 20 s`,
      );
    await new Promise((r) => setTimeout(r, 100));
  }
}
