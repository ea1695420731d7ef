import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import type { TestContext } from 'node:test';
import pino from 'pino';
import { type FleetgateConfig, loadConfig } from '../config/config.ts';
import { dataPaths } from '../config/paths.ts';
import { type RunningGateway, startGateway } from '../gateway/gateway.ts';
import { startProvisioning } from '../provisioning/api/server.ts';
import { type CertificateAuthority, loadCa } from '../provisioning/ca/authority.ts';
import type { AuditRecord } from '../provisioning/registry/records.ts';
import { RegistryWriter } from '../provisioning/registry/writer.ts';
import { initDataDir } from '../provisioning/setup.ts';
import { tempDir } from './run.ts';

/** Log lines the gateway wrote, parsed; `find` waits for one to appear. */
export class LogCapture {
  readonly lines: Record<string, unknown>[] = [];
  readonly stream = new Writable({
    write: (chunk: Buffer, _enc, cb) => {
      for (const line of chunk.toString().split('\n'))
        if (line.trim() !== '') this.lines.push(JSON.parse(line) as Record<string, unknown>);
      cb();
    },
  });

  async find(match: (l: Record<string, unknown>) => boolean, timeoutMs = 15_000): Promise<Record<string, unknown>> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const hit = this.lines.find(match);
      if (hit !== undefined) return hit;
      if (Date.now() > deadline)
        throw new Error(
          `no matching log line in ${this.lines.length} lines:\n${this.lines.map((l) => JSON.stringify(l)).join('\n')}`,
        );
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

export interface TestFleet {
  dir: string;
  config: FleetgateConfig;
  registry: RegistryWriter;
  ca: CertificateAuthority;
  rootFile: string;
  gateway: RunningGateway;
  log: LogCapture;
  mqttsUrl: string;
  wssUrl: string;
  httpsUrl: string;
}

/** A data dir with a CA and registry, and a gateway on ephemeral loopback ports; all closed after the test. */
export async function startTestFleet(
  t: TestContext | { after(fn: () => unknown): void },
  env: NodeJS.ProcessEnv = {},
  file?: Record<string, unknown>,
  /** Runs once the data directory has its CA, before the gateway starts; its environment is added (a cluster's NATS, say). */
  prepare?: (dataDir: string) => Promise<NodeJS.ProcessEnv>,
): Promise<TestFleet> {
  const dir = tempDir(t as TestContext);
  if (file !== undefined) {
    mkdirSync(join(dir, 'data'), { recursive: true, mode: 0o700 });
    writeFileSync(join(dir, 'data', 'fleetgate.json'), JSON.stringify(file));
  }
  const load = (extra: NodeJS.ProcessEnv) =>
    loadConfig({
      dataDir: join(dir, 'data'),
      env: {
        FLEETGATE_MQTT_PORT: '0',
        FLEETGATE_WSS_PORT: '0',
        FLEETGATE_ADMIN_PORT: '0',
        FLEETGATE_CONSOLE_PORT: '0',
        FLEETGATE_HTTPS_PORT: '0',
        FLEETGATE_ACTOR: 'test',
        ...env,
        ...extra,
      },
    });
  let config = load({});
  await initDataDir(config);
  if (prepare !== undefined) config = load(await prepare(config.dataDir));
  const paths = dataPaths(config.dataDir, config.registry);
  const registry = new RegistryWriter(paths.registry);
  const ca = await loadCa(paths);
  const log = new LogCapture();
  const gateway = await startGateway(config, { log: pino({ level: 'debug' }, log.stream) });
  t.after(async () => {
    await gateway.close();
    registry.close();
  });
  return {
    dir,
    config,
    registry,
    ca,
    rootFile: paths.rootCert,
    gateway,
    log,
    mqttsUrl: `mqtts://127.0.0.1:${gateway.ports.mqtts}`,
    wssUrl: `wss://127.0.0.1:${gateway.ports.wss}/mqtt`,
    httpsUrl: `https://127.0.0.1:${gateway.ports.https}`,
  };
}

export interface TestProvisioning {
  dir: string;
  config: FleetgateConfig;
  registry: RegistryWriter;
  ca: CertificateAuthority;
  rootFile: string;
  url: string;
  port: number;
  log: LogCapture;
}

/** A data dir and the provisioning service on an ephemeral loopback port; closed after the test. */
export async function startTestProvisioning(
  t: TestContext | { after(fn: () => unknown): void },
  env: NodeJS.ProcessEnv = {},
): Promise<TestProvisioning> {
  const dir = tempDir(t as TestContext);
  const config = loadConfig({
    dataDir: join(dir, 'data'),
    env: { FLEETGATE_PROVISION_PORT: '0', FLEETGATE_ACTOR: 'test', ...env },
  });
  await initDataDir(config);
  const paths = dataPaths(config.dataDir, config.registry);
  const registry = new RegistryWriter(paths.registry);
  const log = new LogCapture();
  const service = await startProvisioning(config, { log: pino({ level: 'debug' }, log.stream) });
  t.after(async () => {
    await service.close();
    registry.close();
  });
  return {
    dir,
    config,
    registry,
    ca: await loadCa(paths),
    rootFile: paths.rootCert,
    url: service.endpoint,
    port: service.port,
    log,
  };
}

/**
 * The audit rows matching `match`, once there are at least `count` of them (the gateway appends
 * its rows on its registry thread, just after the event it records). Gives up after `ms`.
 */
export async function auditRows(
  registry: RegistryWriter,
  match: (a: AuditRecord) => boolean,
  count = 1,
  ms = 15_000,
): Promise<AuditRecord[]> {
  const deadline = Date.now() + ms;
  for (;;) {
    const rows = registry.listAudit().filter(match);
    if (rows.length >= count || Date.now() > deadline) return rows;
    await new Promise((r) => setTimeout(r, 20));
  }
}
