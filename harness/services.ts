// What tests and benchmarks share (neither imports the other): fleetgate services in their own
// processes on ephemeral loopback ports, a throwaway fleet, and the PKI in ./pki.ts.
import { type ChildProcess, spawn } from 'node:child_process';
import { createWriteStream, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { type AddressInfo, createServer, connect as netConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { connect as tlsConnect } from 'node:tls';
import { loadConfig } from '../config/config.ts';
import { dataPaths } from '../config/paths.ts';
import { loadCa } from '../provisioning/ca/authority.ts';
import { RegistryWriter } from '../provisioning/registry/writer.ts';
import { initDataDir } from '../provisioning/setup.ts';
import { allocatorEnv, type ServerCommand } from '../runtime/allocator.ts';

export const ROOT = resolve(import.meta.dirname, '..');

/** The flags `bin/fleetgate.ts` runs servers with (V8 young generation, OpenSSL config): servers spawned by path get them too. */
export const SERVER_NODE_FLAGS = [
  '--max-semi-space-size=2',
  `--openssl-config=${join(resolve(import.meta.dirname, '..'), 'config', 'openssl.cnf')}`,
];

/** A loopback port nothing listens on right now (for peers that need a fixed port in their config). */
export async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const { port } = s.address() as AddressInfo;
  await new Promise((r) => s.close(r));
  return port;
}

/**
 * A free loopback port below the kernel's ephemeral range, for a server that is stopped and
 * started again on the same port (a crash test, a NATS or PostgreSQL restart): a port from
 * `freePort` can be taken, while the server is down, by anything else on the machine binding
 * port 0 — another test run beside this one, for one.
 */
export async function stablePort(): Promise<number> {
  let low = 32768;
  try {
    low = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]) || low;
  } catch {
    // not Linux: the usual default
  }
  for (let i = 0; i < 100; i++) {
    const port = 10_000 + Math.floor(Math.random() * Math.max(1, low - 10_000));
    const s = createServer();
    const ok = await new Promise<boolean>((r) => {
      s.once('error', () => r(false));
      s.listen(port, '127.0.0.1', () => r(true));
    });
    if (ok) {
      await new Promise((r) => s.close(r));
      return port;
    }
  }
  throw new Error('no free port below the ephemeral range');
}

/** Whether something on the loopback port accepts a connection now (with `tls`: completes a handshake). */
export function accepts(port: number, tls = false): Promise<boolean> {
  return new Promise((resolve) => {
    const s = tls
      ? tlsConnect({ host: '127.0.0.1', port, rejectUnauthorized: false }, () => {
          s.destroy();
          resolve(true);
        })
      : netConnect(port, '127.0.0.1', () => {
          s.destroy();
          resolve(true);
        });
    s.on('error', () => resolve(false));
  });
}

/**
 * Resolves once something answers on 127.0.0.1:`port` (a peer server started as `child`): a TCP
 * connection, or with `tls` a TLS handshake, and `ready()` (e.g. a line the server printed);
 * rejects with what it printed if the child exits first, or after `attempts` × 50 ms.
 */
export async function untilListening(
  port: number,
  child: ChildProcess,
  name: string,
  output: () => string,
  options: { tls?: boolean; ready?: () => boolean; attempts?: number } = {},
): Promise<void> {
  for (let i = 0; i < (options.attempts ?? 200); i++) {
    const up = (options.ready?.() ?? true) && (await accepts(port, options.tls === true));
    if (up) return;
    if (child.exitCode !== null) throw new Error(`${name} exited: ${output()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`${name} did not listen on ${port}: ${output()}`);
}

/** {@link untilListening} for a TLS server (~10 s). */
export function untilTlsListening(
  port: number,
  child: ChildProcess,
  name: string,
  stderr: () => string,
): Promise<void> {
  return untilListening(port, child, name, stderr, { tls: true });
}

/**
 * A data dir with a CA and registry in a temp dir (benchmarks); `cleanup` removes it.
 * `registry`: a `postgres://` URL to keep the registry there instead of the data dir's file.
 */
export async function benchFleet(registry?: string) {
  const dir = mkdtempSync(join(tmpdir(), 'fleetgate-bench-'));
  const config = loadConfig({
    dataDir: join(dir, 'data'),
    env: { FLEETGATE_ACTOR: 'bench', ...(registry !== undefined && { FLEETGATE_REGISTRY: registry }) },
  });
  await initDataDir(config);
  const paths = dataPaths(config.dataDir, config.registry);
  return {
    dir,
    config,
    paths,
    registry: new RegistryWriter(paths.registry),
    ca: await loadCa(paths),
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
}

/** User + system CPU seconds and RSS bytes of a process so far, from /proc (Linux; clock ticks at 100 Hz). */
export function procStat(pid: number): { cpu: number; rss: number } {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return { cpu: (Number(f[11]) + Number(f[12])) / 100, rss: Number(f[21]) * 4096 };
}

/** A server started as `child`: its CPU seconds and RSS so far, and a SIGTERM stop that resolves at its exit. */
export function measured(child: ChildProcess): { cpuSeconds(): number; rssBytes(): number; stop(): Promise<void> } {
  return {
    cpuSeconds: () => procStat(child.pid!).cpu,
    rssBytes: () => procStat(child.pid!).rss,
    stop: () =>
      new Promise((r) => {
        if (child.exitCode !== null || child.signalCode !== null) return r();
        child.once('exit', () => r());
        child.kill('SIGTERM');
      }),
  };
}

export interface GatewayProcess {
  child: ChildProcess;
  endpoints: Record<string, string>;
  /** User + system CPU seconds the gateway process has used so far (from /proc). */
  cpuSeconds(): number;
  rssBytes(): number;
  stop(): Promise<void>;
}

/**
 * `fleetgate up|gateway|provision --json` in its own process on ephemeral loopback ports
 * (unless `env` names them), with the servers' V8 flags; resolves once its banner lists the
 * endpoints (by service name: mqtt+tls, mqtt+wss, https, admin, provision). `root`: another
 * checkout of fleetgate to run instead of this one (a benchmark's before/after).
 */
export async function spawnService(
  command: ServerCommand,
  dataDir: string,
  env: NodeJS.ProcessEnv = {},
  root = ROOT,
  args: readonly string[] = [],
): Promise<GatewayProcess> {
  const child = spawn(
    process.execPath,
    [...SERVER_NODE_FLAGS, join(root, 'bin', 'fleetgate.ts'), command, '--json', '--data', dataDir, ...args],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
      // The allocator bin/fleetgate.ts would re-execute with, set here so the child is the server
      // itself (its PID is what tests signal and benchmarks measure).
      env: {
        ...process.env,
        ...allocatorEnv(command, { ...process.env, ...env }),
        FLEETGATE_MQTT_PORT: '0',
        FLEETGATE_WSS_PORT: '0',
        FLEETGATE_ADMIN_PORT: '0',
        FLEETGATE_CONSOLE_PORT: '0',
        FLEETGATE_HTTPS_PORT: '0',
        FLEETGATE_PROVISION_PORT: '0',
        FLEETGATE_LOG_LEVEL: process.env.FLEETGATE_TEST_LOG_DIR
          ? (process.env.FLEETGATE_TEST_LOG_LEVEL ?? 'info')
          : 'error',
        ...env,
      },
    },
  );
  let text = '';
  let stderr = '';
  child.stderr!.on('data', (b: Buffer) => {
    stderr = (stderr + b.toString()).slice(-2_000);
  }); // kept short: why it exited, if it does
  // FLEETGATE_TEST_LOG_DIR=<dir>: every spawned service's log, whole, in <dir>/<command>-<pid>.log
  // (with FLEETGATE_TEST_LOG_LEVEL, default info) — for finding why a cluster test failed.
  const logDir = process.env.FLEETGATE_TEST_LOG_DIR;
  if (logDir !== undefined && logDir !== '')
    child.stderr!.pipe(createWriteStream(join(logDir, `${command}-${child.pid}.log`)));
  for await (const line of createInterface({ input: child.stdout! })) {
    text += line;
    try {
      const banner = JSON.parse(text) as { services: { name: string; endpoint: string }[] };
      const endpoints = Object.fromEntries(banner.services.map((s) => [s.name, s.endpoint.split(' ')[0]!]));
      return { child, endpoints, ...measured(child) };
    } catch {
      // banner not complete yet
    }
  }
  throw new Error(`fleetgate ${command} exited before printing its endpoints: ${stderr.trim()}`);
}

export function spawnGateway(dataDir: string): Promise<GatewayProcess> {
  return spawnService('gateway', dataDir);
}
