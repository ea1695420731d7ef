import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import { startProvisioning } from '../../provisioning/api/server.ts';
import { allocatorInUse } from '../../runtime/allocator.ts';
import type { CliContext, CommonOptions } from '../context.ts';
import { emit } from '../output.ts';
import { stopWithin } from '../shutdown.ts';
import { startWorkersAdmin } from './admin.ts';
import { startLocalBus } from './local-bus.ts';
import { Supervisor } from './supervisor.ts';

/**
 * `fleetgate gateway|up --workers N` (N > 1): this process is the supervisor — the PID to signal.
 * It starts the local bus, N gateway workers sharing the device listeners' ports, the combined
 * admin listener, and (`up`) the provisioning service in itself; runs until SIGINT/SIGTERM, then
 * drains the workers and stops the bus.
 */
export async function runWorkers(p: {
  ctx: CliContext;
  opts: CommonOptions;
  which: 'up' | 'gateway';
  count: number;
  log: Logger;
  stopped: Promise<NodeJS.Signals>;
  created: string[];
  logFormat: 'json' | 'pretty';
}): Promise<void> {
  const { ctx, which, count, log } = p;
  if (ctx.config.cluster.nats !== '')
    throw new FleetgateError(
      'USAGE',
      '--workers with cluster.nats set is not supported yet: each worker would need its own node certificate and NATS user — run one `fleetgate gateway` per core as nodes of that cluster instead (docs/scale-out.md)',
    );
  const bus = await startLocalBus(ctx, count, log.child({ component: 'workers' }));
  const token = randomBytes(24).toString('base64url');
  const supervisor = new Supervisor({
    count,
    args: process.argv.slice(2),
    name: (i) => bus.workerName(i),
    env: (i) => ({
      ...bus.workerEnv(i),
      FLEETGATE_REUSE_PORT: '1',
      FLEETGATE_ADMIN_HOST: '127.0.0.1',
      FLEETGATE_ADMIN_PORT: '0',
      FLEETGATE_BUS_PIDFILE: bus.pidFile,
      FLEETGATE_SUPERVISOR_TOKEN: token,
      FLEETGATE_LOG_FORMAT: p.logFormat,
    }),
    log: log.child({ component: 'workers' }),
  });
  const closers: (() => Promise<unknown>)[] = [() => bus.stop()];
  const stopAll = async () => {
    for (const close of closers.reverse()) await close().catch(() => undefined);
    ctx.close();
  };
  let adminPort: number;
  let provisioning: Awaited<ReturnType<typeof startProvisioning>> | undefined;
  try {
    await supervisor.start();
    closers.push(() => supervisor.stop());
    const admin = await startWorkersAdmin(ctx.config, ctx.paths, supervisor, log, token);
    closers.push(() => admin.close());
    adminPort = admin.port;
    if (which === 'up') {
      const started = await startProvisioning(ctx.config, { log });
      provisioning = started;
      closers.push(() => started.close());
    }
  } catch (err) {
    await stopAll();
    throw err;
  }
  banner(p, supervisor, bus.url, adminPort, provisioning?.endpoint);
  const signal = await p.stopped;
  log.info({ signal }, 'stopping the workers');
  // Longer than a gateway's 30 s: the workers drain first (each within its own 30 s), then the bus.
  await stopWithin(log, 45_000, stopAll);
}

function banner(
  p: { ctx: CliContext; opts: CommonOptions; which: string; created: string[] },
  supervisor: Supervisor,
  busUrl: string,
  adminPort: number,
  provisioning: string | undefined,
): void {
  const { ctx, opts, which, created } = p;
  const endpoints = { ...(supervisor.workers[0]?.endpoints ?? {}) };
  endpoints.admin = `https://${ctx.config.gateway.adminHost}:${adminPort}`;
  if (provisioning !== undefined) endpoints.provision = `${provisioning} (JSON /v1, EST /.well-known/est)`;
  const services = Object.entries(endpoints).map(([name, endpoint]) => ({
    name: name === 'mqtts' ? 'mqtt+tls' : name === 'wss' ? 'mqtt+wss' : name,
    endpoint,
  }));
  const workers = supervisor.workers.map((w) => ({ name: w.name, pid: w.pid }));
  emit(
    opts,
    {
      dataDir: ctx.paths.dataDir,
      created,
      allocator: allocatorInUse(),
      supervisor: process.pid,
      workers,
      bus: busUrl,
      services,
    },
    () =>
      [
        `fleetgate ${which}: data ${ctx.paths.dataDir}${created.length > 0 ? ` (created ${created.join(', ')})` : ''}`,
        `${workers.length} gateway workers (${workers.map((w) => `${w.name} pid ${w.pid}`).join(', ')}) sharing each listener; supervisor pid ${process.pid}`,
        `workers' bus: ${busUrl} (local nats-server, mTLS with node certificates from the fleet's CA)`,
        `root CA (what devices trust): ${ctx.paths.rootCert}`,
        ...services.map((s) => `  ${s.name.padEnd(10)} ${s.endpoint}`),
        'press Ctrl-C to stop',
      ].join('\n'),
  );
}
