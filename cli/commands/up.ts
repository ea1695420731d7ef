import { existsSync } from 'node:fs';
import type { Command } from 'commander';
import pino from 'pino';
import pretty from 'pino-pretty';
import { isLogFormat, LOG_FORMATS, type LogFormat } from '../../config/config.ts';
import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import { startGateway } from '../../gateway/gateway.ts';
import { startProvisioning } from '../../provisioning/api/server.ts';
import { rootKeyOnDisk } from '../../provisioning/ca/authority.ts';
import { isPostgresUrl, redactLocation } from '../../provisioning/registry/sql.ts';
import { initDataDir } from '../../provisioning/setup.ts';
import { allocatorInUse } from '../../runtime/allocator.ts';
import type { ClusterLinks, LinkSecurity } from '../../runtime/cluster-links.ts';
import { CliContext, type CommonOptions } from '../context.ts';
import type { CommonFlags } from '../flags.ts';
import { emit } from '../output.ts';
import { stopWithin } from '../shutdown.ts';
import { runWorkers } from '../workers/run.ts';
import { parseWorkers, workerReady, workerStarting, workerStopped } from '../workers/supervisor.ts';

/** A running service: what to print, and how to stop it. */
interface RunningService {
  name: string;
  endpoint: string;
  close(): Promise<void>;
}

/**
 * The root logger on stderr (stdout carries the banner / --json), level from the config
 * (`log.level`). Format (`log.format`, `--log-format`): `auto` follows the command's own output —
 * with `--json`, one JSON object per line for machines; without it, readable lines for people
 * (coloured on a terminal), so the banner and the log never mix two formats in one stream
 * (`npm start 2>&1 | tee`, an IDE's console). `json` or `pretty` always.
 */
function rootLogger(level: string, format: LogFormat, jsonOutput: boolean) {
  const options = {
    level,
    redact: ['token', '*.token', 'assertion', '*.assertion', 'key', '*.key', 'headers.authorization'],
  };
  const readable = format === 'pretty' || (format === 'auto' && !jsonOutput);
  if (!readable) return pino(options, pino.destination(2));
  return pino(
    options,
    pretty({
      destination: 2,
      sync: true,
      colorize: process.stderr.isTTY === true,
      translateTime: 'SYS:HH:MM:ss.l',
      ignore: 'pid,hostname',
    }),
  );
}

type ServeOptions = CommonOptions & { logFormat?: string; workers?: string };

async function serve(opts: ServeOptions, which: 'up' | 'gateway' | 'provision'): Promise<void> {
  const count = parseWorkers(opts.workers);
  workerStarting();
  const ctx = new CliContext(opts);
  const stopped = waitForSignal(); // before anything is printed: a signal may follow at once
  const { created } = which === 'up' ? await initDataDir(ctx.config) : { created: [] };
  const format = opts.logFormat ?? ctx.config.log.format;
  if (!isLogFormat(format))
    throw new FleetgateError('USAGE', `--log-format is auto, json or pretty, not ${JSON.stringify(format)}`);
  const log = rootLogger(ctx.config.log.level, format, opts.json === true);
  const rootKey = rootKeyOnDisk(ctx.paths);
  if (rootKey !== undefined)
    log.warn(
      { file: rootKey },
      'the root CA key is still in the data directory: move it off this machine (the services never read it)',
    );
  if (count > 1 && which !== 'provision')
    // The workers log as this process does (their own stdout is not a terminal's, nor --json's).
    return runWorkers({
      ...{ ctx, opts, which, count, log, stopped: stopped.signal, created },
      logFormat: format === 'auto' ? (opts.json === true ? 'json' : 'pretty') : format,
    }).catch((err: unknown) => {
      stopped.cancel();
      throw err;
    });
  const services: RunningService[] = [];
  let links: string[] = [];
  try {
    if (which !== 'provision') {
      const gateway = await startGateway(ctx.config, { log });
      links = linkLines(gateway.links, ctx.config.cluster.nats !== '');
      if (which === 'gateway' && existsSync(ctx.paths.intermediateKey))
        links.push(
          `issuing CA key here (${ctx.paths.intermediateKey}): a gateway node never uses it — keep it on provisioning hosts only (fleetgate cluster host-files)`,
        );
      workerReady(gateway.ports.admin, gateway.endpoints);
      services.push(
        { name: 'mqtt+tls', endpoint: gateway.endpoints.mqtts, close: () => gateway.close() },
        { name: 'mqtt+wss', endpoint: gateway.endpoints.wss, close: async () => undefined },
        { name: 'https', endpoint: gateway.endpoints.https, close: async () => undefined },
        { name: 'admin', endpoint: gateway.endpoints.admin, close: async () => undefined },
        ...(gateway.endpoints.console === undefined
          ? []
          : [
              {
                name: 'console',
                endpoint: `${gateway.endpoints.console} (operator certificate: fleetgate operator issue)`,
                close: async () => undefined,
              },
            ]),
      );
    }
    if (which !== 'gateway') {
      const provisioning = await startProvisioning(ctx.config, { log });
      services.push({
        name: 'provision',
        endpoint: `${provisioning.endpoint} (JSON /v1, EST /.well-known/est)`,
        close: () => provisioning.close(),
      });
    }
  } catch (err) {
    // Nothing half-started stays behind: close what started, give the signals back, report.
    await Promise.allSettled(services.map((s) => s.close()));
    stopped.cancel();
    ctx.close();
    throw err;
  }
  const registry = redactLocation(ctx.paths.registry);
  const allocator = allocatorInUse();
  emit(
    opts,
    {
      dataDir: ctx.paths.dataDir,
      registry,
      created,
      allocator,
      links,
      services: services.map(({ name, endpoint }) => ({ name, endpoint })),
    },
    () =>
      [
        `fleetgate ${which}: data ${ctx.paths.dataDir}${created.length > 0 ? ` (created ${created.join(', ')})` : ''}`,
        ...(isPostgresUrl(ctx.paths.registry) ? [`registry: ${registry}`] : []),
        ...links,
        `root CA (what devices trust): ${ctx.paths.rootCert}`,
        ...(allocator === 'jemalloc'
          ? []
          : [
              process.env.FLEETGATE_ALLOCATOR === 'system'
                ? 'memory allocator: glibc malloc (FLEETGATE_ALLOCATOR=system)'
                : 'memory allocator: glibc malloc — install jemalloc (Debian: libjemalloc2) so memory goes back to the system after connections close',
            ]),
        ...services.map((s) => `  ${s.name.padEnd(10)} ${s.endpoint}`),
        'press Ctrl-C to stop',
      ].join('\n'),
  );
  const signal = await stopped.signal;
  log.info({ signal }, 'stopping');
  await stopWithin(log, 30_000, async () => {
    await Promise.allSettled(services.map((s) => s.close()));
    ctx.close();
  });
  workerStopped();
}

const LINK_WORDS: Record<LinkSecurity, string> = {
  mtls: 'authenticated (mTLS, node certificate)',
  loopback: 'loopback only (this host)',
  insecure: 'NOT AUTHENTICATED (cluster.allowInsecure)',
  none: '',
};

/** The banner's lines on the cluster links: how each proves who it is. */
function linkLines(links: ClusterLinks, clustered: boolean): string[] {
  return [
    ...(clustered ? [`cluster link to NATS: ${LINK_WORDS[links.nats]}`] : []),
    ...(links.registry === 'none' ? [] : [`registry link: ${LINK_WORDS[links.registry]}`]),
  ];
}

/** The services' commands: the common flags plus --log-format. */
function serviceCommand(common: CommonFlags, command: Command): Command {
  return common(command).option(
    '--log-format <format>',
    `${LOG_FORMATS.join(', ')}: auto is readable lines on a terminal, else JSON lines (config log.format, FLEETGATE_LOG_FORMAT)`,
  );
}

/** `up` and `gateway`: --workers too. */
function gatewayCommand(common: CommonFlags, command: Command): Command {
  return serviceCommand(common, command).option(
    '--workers <count>',
    'gateway processes sharing each device listener (SO_REUSEPORT), 1–64 or auto (one per core); above 1 they run as one cluster on a local nats-server (docs/operations.md#workers)',
  );
}

export function registerUp(program: Command, common: CommonFlags): void {
  gatewayCommand(common, program.command('up'))
    .description('initialize the data directory if needed, start every service, run until SIGINT/SIGTERM')
    .action((opts: ServeOptions) => serve(opts, 'up'));
  gatewayCommand(common, program.command('gateway'))
    .description(
      'run the gateway only (MQTT 5 and 3.1.1 over TLS and WSS, the HTTPS plane, the admin listener) on an initialized data directory',
    )
    .action((opts: ServeOptions) => serve(opts, 'gateway'));
  serviceCommand(common, program.command('provision'))
    .description('run the provisioning service only (enrollment JSON API and EST) on an initialized data directory')
    .action((opts: CommonOptions & { logFormat?: string }) => serve(opts, 'provision'));
}

function waitForSignal(): { signal: Promise<NodeJS.Signals>; cancel(): void } {
  let stop: (signal: NodeJS.Signals) => void = () => undefined;
  const signal = new Promise<NodeJS.Signals>((resolve) => {
    // The listening servers keep the event loop alive; if start-up fails, nothing does.
    stop = (s: NodeJS.Signals) => {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      resolve(s);
    };
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
  return {
    signal,
    cancel: () => {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
    },
  };
}
