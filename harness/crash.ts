import { createWriteStream, readFileSync, writeFileSync } from 'node:fs';
import mqtt, { type MqttClient } from 'mqtt';
import { type Haproxy, startHaproxy } from './haproxy.ts';
import { https } from './https.ts';
import { type NatsCluster, startNatsCluster } from './nats.ts';
import { type Credential, enrollDevice } from './pki.ts';
import { benchFleet, type GatewayProcess, spawnService, stablePort } from './services.ts';

/**
 * The cluster crash test (issue #27), shared by `test/cluster-crash.test.ts` (100 devices, one
 * round of each kill) and `npm run soak:cluster` (1,000 devices, five rounds of each): three
 * gateway nodes on JetStream (three nats-servers, replicas 3) and one registry, behind HAProxy
 * (`send-proxy-v2`, health checks); persistent-session devices (clean session 0) connected
 * through it, QoS 1 traffic both ways — every device publishes telemetry to a persistent service,
 * the service sends every device commands — and in each round, at a random moment, `kill -9` of the
 * gateway node holding the most devices or of a NATS server picked at random. The clients are mqtt.js with automatic reconnection (through
 * HAProxy, to whichever node it gives) and resending what was not acknowledged, as devices do.
 *
 * Checked after each round: every PUBACKed message reached its subscriber at least once, and the
 * first arrivals of each publisher's messages at each subscriber are in the order they were
 * published. Reported: duplicates, and the time from the kill until every device that lost its
 * connection was connected again.
 */
export interface CrashOptions {
  devices: number;
  rounds: { gateway: number; nats: number };
  /** Messages each device publishes, and the service sends each device, per round. */
  messages: number;
  /** The registry URL (PostgreSQL), or undefined for the shared SQLite file. */
  registry?: string;
  log: (line: string) => void;
}

export interface RoundResult {
  round: number;
  kill: string;
  acked: number;
  delivered: number;
  duplicates: number;
  reconnected: number;
  backMs: number;
  /** From the end of the traffic until every acknowledged message had arrived. */
  drainMs: number;
}

interface Device {
  cred: Credential;
  client: MqttClient;
  /** Commands received (payloads), in arrival order. */
  got: string[];
  droppedAt: number | undefined;
  backAt: number | undefined;
  /** With CRASH_LOG: the client's events since the round began (close, reconnect, error, connect), for the slowest device's account. */
  events: string[];
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const NAMES = ['n1', 'n2', 'n3'];

const connected = (c: MqttClient) =>
  c.connected ? Promise.resolve() : new Promise<void>((resolve) => c.once('connect', () => resolve()));

/** A QoS 1 publish; its payload goes into `acked` once PUBACKed. */
const publish = (c: MqttClient, topic: string, payload: string, acked: string[]) =>
  new Promise<void>((resolve) =>
    c.publish(topic, payload, { qos: 1 }, (err) => {
      if (err === undefined || err === null) acked.push(payload);
      resolve();
    }),
  );

/** What one round's traffic was acknowledged: payloads by device id, both ways. */
interface Acked {
  telemetry: Map<string, string[]>;
  commands: Map<string, string[]>;
}

export class CrashCluster {
  readonly #options: CrashOptions;
  readonly #fleet: Awaited<ReturnType<typeof benchFleet>>;
  readonly #nats: NatsCluster;
  readonly #ports: { mqtt: number; admin: number }[];
  #nodes: GatewayProcess[] = [];
  #proxy: Haproxy | undefined;
  #service: MqttClient | undefined;
  readonly #devices: Device[] = [];
  /** Telemetry at the service, by device id. */
  readonly #telemetry = new Map<string, string[]>();

  private constructor(
    options: CrashOptions,
    fleet: Awaited<ReturnType<typeof benchFleet>>,
    nats: NatsCluster,
    ports: { mqtt: number; admin: number }[],
  ) {
    this.#options = options;
    this.#fleet = fleet;
    this.#nats = nats;
    this.#ports = ports;
  }

  static async start(options: CrashOptions): Promise<CrashCluster> {
    const fleet = await benchFleet(options.registry);
    const nats = await startNatsCluster({ tls: { dataDir: fleet.config.dataDir, gateways: NAMES } });
    const ports = await Promise.all(NAMES.map(async () => ({ mqtt: await stablePort(), admin: await stablePort() })));
    const cluster = new CrashCluster(options, fleet, nats, ports);
    cluster.#nodes = await Promise.all(NAMES.map((_, i) => cluster.#startNode(i)));
    cluster.#proxy = await startHaproxy([
      {
        proxy: 'v2',
        upstreams: ports.map((p) => p.mqtt),
        source: '127.0.0.2',
        check: { path: '/healthz', ports: ports.map((p) => p.admin) },
      },
    ]);
    await cluster.#connectAll();
    return cluster;
  }

  /** Gateway node `i` on its fixed ports (HAProxy's backends); with CRASH_LOG=<file>, its log in `<file>.<node>`. */
  async #startNode(i: number): Promise<GatewayProcess> {
    const port = this.#ports[i]!;
    const node = await spawnService('gateway', this.#fleet.config.dataDir, {
      ...(await this.#nats.node(NAMES[i]!)),
      ...(this.#options.registry !== undefined && { FLEETGATE_REGISTRY: this.#options.registry }),
      FLEETGATE_MQTT_PORT: String(port.mqtt),
      FLEETGATE_ADMIN_PORT: String(port.admin),
      FLEETGATE_PROXY_PROTOCOL_FROM: '127.0.0.2',
      FLEETGATE_REGISTRY_TIMEOUT: '10s',
      ...(process.env.CRASH_LOG !== undefined && { FLEETGATE_LOG_LEVEL: 'info' }),
    });
    const file = process.env.CRASH_LOG;
    if (file !== undefined) {
      const out = createWriteStream(`${file}.${NAMES[i]}`, { flags: 'a' });
      node.child.stderr?.pipe(out);
      node.child.stdout?.pipe(out);
    }
    return node;
  }

  /**
   * mqtt.js through HAProxy, persistent session, reconnecting by itself and resending what was not
   * acknowledged. Device `index` connects from an address of its own on loopback (127.2.x.y), as
   * devices do from their own networks: the per-address limits the gateways apply to what HAProxy's
   * PROXY header reports are each device's, not the whole fleet's.
   */
  #open(cred: Credential, index?: number): MqttClient {
    return mqtt.connect(`mqtts://127.0.0.1:${this.#proxy!.ports[0]}`, {
      ...(index !== undefined && { localAddress: `127.2.${Math.floor(index / 250)}.${(index % 250) + 1}` }),
      ca: readFileSync(this.#fleet.paths.rootCert),
      cert: cred.certPem,
      key: cred.keyPem,
      clientId: cred.deviceId,
      protocolVersion: 4,
      clean: false,
      keepalive: 10,
      // A PINGREQ every keepalive, as the SDK's devices (firmware-sdk/device.ts): mqtt.js otherwise
      // puts its ping off whenever a PUBACK arrives, and a device waiting for slow PUBACKs (a NATS
      // server's death) sent nothing for 15 s and was closed for keepalive by the gateway.
      reschedulePings: false,
      reconnectPeriod: 250,
      connectTimeout: 15_000,
      rejectUnauthorized: true,
    });
  }

  async #connectAll(): Promise<void> {
    const { fleet, log } = { fleet: this.#fleet, log: this.#options.log };
    log(`enrolling ${this.#options.devices} devices and the service`);
    const serviceCred = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'crash-svc', type: 'service' });
    for (let i = 0; i < this.#options.devices; i++) {
      const cred = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: `crash-${i}` });
      this.#devices.push({
        cred,
        client: undefined as unknown as MqttClient,
        got: [],
        droppedAt: undefined,
        backAt: undefined,
        events: [],
      });
    }
    const service = this.#open(serviceCred);
    this.#service = service;
    service.on('message', (topic, payload) => {
      const id = topic.split('/')[1]!;
      let list = this.#telemetry.get(id);
      if (list === undefined) this.#telemetry.set(id, (list = []));
      list.push(payload.toString());
    });
    await connected(service);
    await service.subscribeAsync('devices/+/telemetry', { qos: 1 });
    log(`connecting ${this.#options.devices} devices through HAProxy (persistent sessions)`);
    for (let i = 0; i < this.#devices.length; i += 50)
      await Promise.all(this.#devices.slice(i, i + 50).map((d, j) => this.#connectDevice(d, i + j)));
  }

  async #connectDevice(d: Device, index: number): Promise<void> {
    d.client = this.#open(d.cred, index);
    d.client.on('message', (_t, payload) => d.got.push(payload.toString()));
    const note = (what: string) => {
      if (process.env.CRASH_LOG !== undefined && d.events.length < 200) d.events.push(`${Date.now()} ${what}`);
    };
    d.client.on('close', () => {
      d.droppedAt ??= Date.now();
      note('close');
    });
    d.client.on('connect', (connack) => {
      if (d.droppedAt !== undefined) d.backAt = Date.now();
      note(`connack sessionPresent=${connack.sessionPresent}`);
    });
    d.client.on('reconnect', () => note('reconnect'));
    d.client.on('error', (err) => note(`error ${err.message}`));
    d.client.on('offline', () => note('offline'));
    await connected(d.client);
    await d.client.subscribeAsync(`devices/${d.cred.deviceId}/commands/#`, { qos: 1 });
  }

  /**
   * The gateway node holding the most device connections (its `/metrics`): killing it drops a
   * share of the fleet every round — devices stay where they reconnected, so a node started again
   * after an earlier round may hold next to none, and killing that one would test little.
   */
  async #busiest(): Promise<number> {
    const ca = readFileSync(this.#fleet.paths.rootCert);
    const held = await Promise.all(
      this.#nodes.map(async (node) => {
        const body = (await https(`${node.endpoints.admin}/metrics`, { ca })).body;
        return [...body.matchAll(/^fleetgate_connected_clients\{[^}]*\} (\d+)$/gm)].reduce(
          (s, m) => s + Number(m[1]),
          0,
        );
      }),
    );
    return held.indexOf(Math.max(...held));
  }

  /** Kills one gateway node or one NATS server (SIGKILL); what was killed. */
  async #kill(kind: 'gateway' | 'nats', victim: number): Promise<string> {
    if (kind === 'gateway') {
      this.#nodes[victim]!.child.kill('SIGKILL');
      return `gateway ${NAMES[victim]}`;
    }
    await this.#nats.servers[victim]!.stop('SIGKILL');
    return `nats-server ${victim}`;
  }

  /** Round `n`'s traffic, with the kill at a random step; resolves once every publish settled (mqtt.js resends after reconnecting). */
  async #traffic(
    n: number,
    kind: 'gateway' | 'nats',
    victim: number,
  ): Promise<{ acked: Acked; kill: string; killedAt: number }> {
    const { messages, log } = this.#options;
    const acked: Acked = {
      telemetry: new Map(this.#devices.map((d) => [d.cred.deviceId, []])),
      commands: new Map(this.#devices.map((d) => [d.cred.deviceId, []])),
    };
    const killAt = Math.floor(messages / 4 + Math.random() * (messages / 2));
    let kill = '';
    let killedAt = 0;
    const inFlight: Promise<void>[] = [];
    for (let i = 0; i < messages; i++) {
      if (i === killAt) {
        killedAt = Date.now();
        kill = await this.#kill(kind, victim);
        log(`  round ${n}: kill -9 ${kill} at step ${i} of ${messages}`);
      }
      for (const d of this.#devices) {
        const id = d.cred.deviceId;
        inFlight.push(publish(d.client, `devices/${id}/telemetry`, `${n}:${i}`, acked.telemetry.get(id)!));
        inFlight.push(publish(this.#service!, `devices/${id}/commands/c`, `${n}:${i}`, acked.commands.get(id)!));
      }
      await sleep(50);
    }
    await Promise.all(inFlight);
    return { acked, kill, killedAt };
  }

  /** Acknowledged messages not (yet) at their subscriber; the first few named in `sample`. */
  #missing(acked: Acked, sample?: string[]): number {
    let missing = 0;
    for (const d of this.#devices) {
      const id = d.cred.deviceId;
      const gotT = new Set(this.#telemetry.get(id) ?? []);
      const gotC = new Set(d.got);
      for (const m of acked.telemetry.get(id)!) if (!gotT.has(m) && missing++ < 5) sample?.push(`telemetry ${id} ${m}`);
      for (const m of acked.commands.get(id)!) if (!gotC.has(m) && missing++ < 5) sample?.push(`command ${id} ${m}`);
    }
    return missing;
  }

  /** Waits (at most 3 minutes) until every acknowledged message arrived; throws naming some that did not. */
  async #drain(n: number, kill: string, acked: Acked): Promise<void> {
    const deadline = Date.now() + 180_000;
    let reported = Date.now();
    let missing = this.#missing(acked);
    while (missing > 0 && Date.now() < deadline) {
      await sleep(250);
      missing = this.#missing(acked);
      if (Date.now() - reported >= 10_000) {
        reported = Date.now();
        this.#options.log(`  round ${n}: ${missing} acknowledged messages not arrived yet`);
      }
    }
    if (missing === 0) return;
    if (process.env.CRASH_LOG !== undefined)
      for (const [i, server] of this.#nats.servers.entries())
        writeFileSync(`${process.env.CRASH_LOG}.nats-${i}`, server.output());
    const sample: string[] = [];
    this.#missing(acked, sample);
    throw new Error(`round ${n} (${kill}): ${missing} acknowledged messages never arrived, e.g. ${sample.join('; ')}`);
  }

  /** First arrivals of round `n` in publishing order, per publisher per subscriber; distinct and all arrivals. */
  #order(n: number): { delivered: number; total: number } {
    let delivered = 0;
    let total = 0;
    const check = (list: string[], what: string) => {
      const mine = list.filter((m) => m.startsWith(`${n}:`));
      const firsts = [...new Set(mine)].map((m) => Number(m.split(':')[1]));
      total += mine.length;
      delivered += firsts.length;
      for (let j = 1; j < firsts.length; j++)
        if (firsts[j]! < firsts[j - 1]!) throw new Error(`round ${n}: ${what} out of order at ${firsts[j]}`);
    };
    for (const d of this.#devices) {
      check(this.#telemetry.get(d.cred.deviceId) ?? [], `telemetry of ${d.cred.deviceId}`);
      check(d.got, `commands to ${d.cred.deviceId}`);
    }
    return { delivered, total };
  }

  async #round(n: number, kind: 'gateway' | 'nats'): Promise<RoundResult> {
    for (const d of this.#devices) {
      d.droppedAt = undefined;
      d.backAt = undefined;
      d.events = [];
    }
    const victim = kind === 'gateway' ? await this.#busiest() : Math.floor(Math.random() * 3);
    const { acked, kill, killedAt } = await this.#traffic(n, kind, victim);
    const trafficEnd = Date.now();
    await this.#drain(n, kill, acked);
    const drainMs = Date.now() - trafficEnd;
    const { delivered, total } = this.#order(n);
    const dropped = this.#devices.filter((d) => d.droppedAt !== undefined);
    const back = dropped.filter((d) => d.backAt !== undefined || d.client.connected);
    const lastBack = Math.max(killedAt, ...dropped.map((d) => d.backAt ?? killedAt));
    const slowest = dropped.find((d) => d.backAt === lastBack);
    if (process.env.CRASH_LOG !== undefined && slowest !== undefined)
      this.#options.log(
        `  round ${n}: the last device back, ${slowest.cred.deviceId} (kill at ${killedAt}): ${slowest.events.join(' | ')}`,
      );
    // The killed member comes back for the next round.
    if (kind === 'gateway') this.#nodes[victim] = await this.#startNode(victim);
    else await this.#nats.servers[victim]!.start();
    await Promise.all(this.#devices.map((d) => connected(d.client)));
    const count = (m: Map<string, string[]>) => [...m.values()].reduce((s, l) => s + l.length, 0);
    const result: RoundResult = {
      round: n,
      kill,
      acked: count(acked.telemetry) + count(acked.commands),
      delivered,
      duplicates: total - delivered,
      reconnected: back.length,
      backMs: lastBack - killedAt,
      drainMs,
    };
    this.#options.log(
      `  round ${n}: ${result.acked} acknowledged, all delivered (${result.duplicates} duplicates); ${back.length} devices reconnected, the last ${result.backMs} ms after the kill; drained ${drainMs} ms after the traffic`,
    );
    return result;
  }

  /** The rounds, alternating a gateway kill and a NATS server kill. */
  async run(): Promise<RoundResult[]> {
    const { rounds } = this.#options;
    const results: RoundResult[] = [];
    let n = 0;
    for (let i = 0; i < Math.max(rounds.gateway, rounds.nats); i++) {
      if (i < rounds.gateway) results.push(await this.#round(++n, 'gateway'));
      if (i < rounds.nats) results.push(await this.#round(++n, 'nats'));
    }
    return results;
  }

  async stop(): Promise<void> {
    for (const d of this.#devices) d.client?.end(true);
    this.#service?.end(true);
    await this.#proxy?.stop();
    await Promise.all(this.#nodes.map((node) => node.stop()));
    await this.#nats.stop();
    this.#fleet.registry.close();
    this.#fleet.cleanup();
  }
}
