// Shared by the benchmark scripts: a gateway in its own process (so its CPU can be measured),
// a fleet of enrolled devices, message counting, and small statistics helpers. Loopback only; bounded loops.
import './unmetered.ts';
import { type ChildProcess, spawn } from 'node:child_process';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { MqttClient } from 'mqtt';
import { type Credential, csrPem, keyPem, newKeys } from '../harness/pki.ts';
import { type benchFleet, measured, procStat, untilTlsListening } from '../harness/services.ts';
import { enroll } from '../provisioning/enroll/pipeline.ts';

export {
  benchFleet,
  freePort,
  type GatewayProcess,
  procStat,
  spawnGateway,
  spawnService,
  untilTlsListening,
} from '../harness/services.ts';

export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

export function fmt(n: number, digits = 1): string {
  return n.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

/**
 * Counts the messages `client` receives that `counts` accepts. `done` resolves when `total` have
 * arrived, or when none has for 3 s (QoS 0 may be dropped for a subscriber that cannot keep up;
 * waiting longer would only add idle CPU).
 */
export function countArrivals(
  client: MqttClient,
  total: number,
  counts: (topic: string, payload: Buffer) => boolean,
): { done: Promise<void>; received(): number } {
  let received = 0;
  let last = performance.now();
  const done = new Promise<void>((resolve) => {
    const quiet = setInterval(() => {
      if (performance.now() - last > 3_000) {
        clearInterval(quiet);
        resolve();
      }
    }, 250);
    client.on('message', (topic, payload) => {
      if (!counts(topic, payload)) return;
      last = performance.now();
      if (++received === total) {
        clearInterval(quiet);
        resolve();
      }
    });
  });
  return { done, received: () => received };
}

/** Each publisher `i` sends `messages` to `devices/bench-<i>/<topic>` (QoS 1: one at a time; QoS 0: yielding every 200). */
export async function publishFromEach(
  publishers: MqttClient[],
  topic: string,
  messages: number,
  qos: 0 | 1,
): Promise<void> {
  await Promise.all(
    publishers.map(async (p, i) => {
      for (let n = 0; n < messages; n++) {
        if (qos === 1) await p.publishAsync(`devices/bench-${i}/${topic}`, String(n), { qos });
        else {
          p.publish(`devices/bench-${i}/${topic}`, String(n), { qos });
          if (n % 200 === 199) await new Promise((r) => setImmediate(r));
        }
      }
    }),
  );
}

export type BenchFleet = Awaited<ReturnType<typeof benchFleet>>;

/** A server under test: its URL and how to read its CPU and RSS. */
export interface BenchServer {
  name: string;
  url: string;
  cpuSeconds(): number;
  rssBytes(): number;
  stop(): Promise<void>;
  /** Its process (for its system-call counts; one process only). */
  pid?: number;
}

/**
 * Mosquitto on a loopback port with the fleet's server certificate and trust, every connection
 * presenting a client certificate (the peer every MQTT benchmark runs beside fleetgate).
 * `logErrors`: its error and warning lines go to `stderrTail()` (where it stops, and why).
 */
export async function startMosquitto(
  fleet: BenchFleet,
  port: number,
  logErrors = false,
): Promise<BenchServer & { stderrTail(): string }> {
  const conf = join(fleet.dir, 'mosquitto.conf');
  writeFileSync(
    conf,
    [
      'user root',
      'persistence false',
      ...(logErrors ? ['log_dest stderr', 'log_type error', 'log_type warning'] : ['log_dest none']),
      'set_tcp_nodelay true',
      'per_listener_settings false',
      `listener ${port} 127.0.0.1`,
      `cafile ${fleet.paths.rootCert}`,
      `certfile ${fleet.paths.serverCert}`,
      `keyfile ${fleet.paths.serverKey}`,
      'require_certificate true',
      'use_identity_as_username true',
      'allow_anonymous false',
      '',
    ].join('\n'),
  );
  const child: ChildProcess = spawn('mosquitto', ['-c', conf], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr!.on('data', (b: Buffer) => {
    err = (err + b.toString()).slice(-20_000);
  });
  await untilTlsListening(port, child, 'mosquitto', () => err);
  return {
    name: 'mosquitto',
    url: `mqtts://127.0.0.1:${port}`,
    ...measured(child),
    pid: child.pid,
    stderrTail: () => err,
  };
}

/**
 * Sensors enrolled through the enrollment pipeline with one key for all (the registry allows
 * it; the key is not what is measured), so a hundred thousand certificates take minutes, not hours.
 */
export async function sharedKeyEnroller(fleet: BenchFleet) {
  const keys = await newKeys();
  const csr = await csrPem(keys, 'bench');
  return {
    keyPem: await keyPem(keys),
    async enroll(id: string): Promise<Credential> {
      fleet.registry.addDevice({ id, type: 'sensor' }, 'bench');
      const r = await enroll(
        { registry: fleet.registry, ca: fleet.ca, defaultValidityMs: 86_400_000 },
        { csr, auth: { method: 'operator', deviceId: id }, actor: 'bench' },
      );
      return {
        deviceId: id,
        certPem: r.certificate + r.chain,
        keyPem: '',
        certFile: '',
        keyFile: '',
        serial: r.serial,
        fingerprint: r.fingerprint,
        spki: '',
        keys,
      };
    },
  };
}

/** The PIDs of a process and all its descendants (a supervisor, its workers, their nats-server). */
export function processTree(root: number): number[] {
  const children = new Map<number, number[]>();
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const ppid = Number(readFileSync(`/proc/${d}/stat`, 'utf8').split(') ')[1]!.split(' ')[1]);
      children.set(ppid, [...(children.get(ppid) ?? []), Number(d)]);
    } catch {
      // gone meanwhile
    }
  }
  const out: number[] = [];
  const walk = (pid: number) => {
    out.push(pid);
    for (const c of children.get(pid) ?? []) walk(c);
  };
  walk(root);
  return out;
}

/** CPU seconds and RSS bytes of the processes `pids` together (those that `only` accepts by command line). */
export function treeStat(
  pids: number[],
  only: (cmdline: string) => boolean = () => true,
): { cpu: number; rss: number } {
  let cpu = 0;
  let rss = 0;
  for (const pid of pids) {
    try {
      if (!only(readFileSync(`/proc/${pid}/cmdline`, 'utf8'))) continue;
      const s = procStat(pid);
      cpu += s.cpu;
      rss += s.rss;
    } catch {
      // gone meanwhile
    }
  }
  return { cpu, rss };
}
