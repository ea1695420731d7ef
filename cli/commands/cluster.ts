import { chmodSync, copyFileSync, existsSync, readdirSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Command } from 'commander';
import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import { natsConfig } from '../../gateway/cluster/nats-config.ts';
import { ensureKeyring } from '../../gateway/https/keyring.ts';
import { postgresSetup } from '../../provisioning/registry/roles.ts';
import { ensureDir } from '../../runtime/files.ts';
import { type CommonOptions, withContext } from '../context.ts';
import type { CommonFlags } from '../flags.ts';
import { emit } from '../output.ts';
import { parsePositiveInt } from '../parse.ts';

const names = (v: string, a: string[] = []) => [
  ...a,
  ...v
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean),
];

export function registerCluster(program: Command, common: CommonFlags): void {
  const cluster = program
    .command('cluster')
    .description('the server side of the cluster links (NATS, PostgreSQL) and what each host needs');
  natsConfigCommand(cluster, common);
  postgresSetupCommand(cluster, common);
  hostFilesCommand(cluster, common);
}

function natsConfigCommand(cluster: Command, common: CommonFlags): void {
  common(cluster.command('nats-config'))
    .description(
      "nats-server's configuration: TLS with the fleet's root as client CA, verify_and_map, one user per node with exactly its role's subjects, no anonymous user",
    )
    .requiredOption('--gateway <names>', 'gateway node names, comma-separated (repeatable)', names)
    .option('--operator <names>', 'operator tools that may ask every node (connections, kick), comma-separated', names)
    .option('--listen <host:port>', 'where nats-server listens', '127.0.0.1:4222')
    .option(
      '--server-cert <file>',
      "nats-server's certificate (default: node/servers/nats.crt, from `fleetgate node issue nats --role server`)",
    )
    .option('--server-key <file>', "nats-server's key (default: node/servers/nats.key)")
    .option(
      '--jetstream <dir>',
      'JetStream on, storing in <dir> (needed by cluster.sessions=jetstream: sessions and retained messages on NATS)',
    )
    .option('--server-name <name>', 'this server’s name in a JetStream cluster (unique per server)', 'nats-1')
    .option('--cluster-listen <host:port>', 'where this server listens for routes from the other NATS servers')
    .option('--routes <host:port,...>', 'the other NATS servers’ route addresses (mTLS)', names)
    .option(
      '--route-name <name>',
      'the server certificate name every NATS server presents on routes (`fleetgate node issue <name> --role server`; one name for all)',
      'nats',
    )
    .action(
      async (
        opts: CommonOptions & {
          gateway: string[];
          operator?: string[];
          listen: string;
          serverCert?: string;
          serverKey?: string;
          jetstream?: string;
          serverName: string;
          clusterListen?: string;
          routes?: string[];
          routeName: string;
        },
      ) => {
        await withContext(opts, (ctx) => {
          const servers = join(ctx.paths.dataDir, 'node', 'servers');
          const config = natsConfig({
            listen: opts.listen,
            serverCert: resolve(opts.serverCert ?? join(servers, 'nats.crt')),
            serverKey: resolve(opts.serverKey ?? join(servers, 'nats.key')),
            rootCert: resolve(ctx.paths.rootCert),
            gateways: opts.gateway,
            operators: opts.operator ?? [],
            ...(opts.jetstream !== undefined && {
              jetstream: { storeDir: resolve(opts.jetstream), serverName: opts.serverName },
            }),
            ...routesOption(opts),
          });
          emit(opts, { config }, () => config);
        });
      },
    );
}

/** `--cluster-listen` and `--routes` go together: a NATS server routed to the others over mTLS. */
function routesOption(opts: { clusterListen?: string; routes?: string[]; routeName: string }): {
  routes?: { listen: string; peers: string[]; routeName: string };
} {
  if (opts.clusterListen === undefined && opts.routes === undefined) return {};
  if (opts.clusterListen === undefined || opts.routes === undefined || opts.routes.length === 0)
    throw new FleetgateError('CONFIG_INVALID', '--cluster-listen and --routes go together (a NATS cluster)');
  for (const r of [opts.clusterListen, ...opts.routes])
    if (!/^[A-Za-z0-9.:[\]-]+:\d+$/.test(r)) throw new FleetgateError('CONFIG_INVALID', `${r}: host:port expected`);
  return { routes: { listen: opts.clusterListen, peers: opts.routes, routeName: opts.routeName } };
}

function postgresSetupCommand(cluster: Command, common: CommonFlags): void {
  common(cluster.command('postgres-setup'))
    .description(
      "PostgreSQL for the registry: the roles (operator owns the schema, provisioning writes rows, gateway reads and appends audit), TLS settings, pg_hba and pg_ident lines for certificate authentication, and each member's registry URL",
    )
    .option('--database <name>', 'database name', 'fleetgate')
    .option('--host <host>', 'where members reach PostgreSQL (must be in its certificate)', '127.0.0.1')
    .option('--port <port>', 'PostgreSQL port', parsePositiveInt('--port'), 5432)
    .option('--server-cert <file>', "PostgreSQL's certificate (default: node/servers/postgres.crt)")
    .option(
      '--server-key <file>',
      "PostgreSQL's key (default: node/servers/postgres.key; PostgreSQL wants it 0600 and its own)",
    )
    .option('--ca-file <file>', "the fleet root as PostgreSQL reads it (default: this data directory's ca/root.crt)")
    .action(
      async (
        opts: CommonOptions & {
          database: string;
          host: string;
          port: number;
          serverCert?: string;
          serverKey?: string;
          caFile?: string;
        },
      ) => {
        await withContext(opts, (ctx) => {
          if (!/^[a-z_][a-z0-9_]{0,62}$/.test(opts.database))
            throw new FleetgateError(
              'CONFIG_INVALID',
              '--database: lower-case letters, digits and _ (a plain SQL name)',
            );
          const servers = join(ctx.paths.dataDir, 'node', 'servers');
          const setup = postgresSetup({
            database: opts.database,
            host: opts.host,
            port: opts.port,
            serverCert: resolve(opts.serverCert ?? join(servers, 'postgres.crt')),
            serverKey: resolve(opts.serverKey ?? join(servers, 'postgres.key')),
            rootCert: resolve(opts.caFile ?? ctx.paths.rootCert),
            dataDir: resolve(ctx.paths.dataDir),
          });
          emit(opts, setup, () =>
            [
              '-- 1. as a superuser (psql):',
              setup.sql,
              '',
              '# 2. postgresql.conf:',
              setup.conf,
              '',
              '# 3. pg_hba.conf, before any broader line:',
              setup.hba,
              '',
              '# 4. pg_ident.conf:',
              setup.ident,
              '',
              '# 5. reload PostgreSQL, then each member uses its role (node certificates from `fleetgate node issue`):',
              `#    operator (runs \`fleetgate init\` once: schema and GRANTs): FLEETGATE_REGISTRY='${setup.urls.operator}'`,
              `#    provisioning: FLEETGATE_REGISTRY='${setup.urls.provisioning}'`,
              `#    gateway:      FLEETGATE_REGISTRY='${setup.urls.gateway}'`,
            ].join('\n'),
          );
        });
      },
    );
}

/** What a gateway host needs from the CA host's data directory, and never the issuing CA's key. */
const GATEWAY_FILES = ['ca/root.crt', 'ca/intermediate.crt', 'tls/server.crt', 'tls/server.key', 'fleetgate.json'];

function hostFilesCommand(cluster: Command, common: CommonFlags): void {
  common(cluster.command('host-files'))
    .description(
      "copy exactly what a gateway host needs into a new data directory: the fleet chain, the gateway's TLS key and certificate, the HTTPS assertion keys, the configuration — never the issuing CA key or the root key. Its node certificate is made there (fleetgate node request / install)",
    )
    .requiredOption('--out <dir>', 'the new data directory (must not exist or be empty)')
    .action(async (opts: CommonOptions & { out: string }) => {
      await withContext(opts, (ctx) => {
        const out = resolve(opts.out);
        if (existsSync(out) && readdirSync(out).length > 0)
          throw new FleetgateError('CONFIG_INVALID', `${out} is not empty: host files go to a new directory`);
        // Every gateway signs HTTPS assertions with the same keys (one JWKS for the origin): made here if not yet.
        ensureKeyring(ctx.paths);
        const copied: string[] = [];
        const copy = (rel: string) => {
          const from = join(ctx.paths.dataDir, rel);
          if (!existsSync(from) || !statSync(from).isFile()) return;
          ensureDir(join(out, rel, '..'));
          copyFileSync(from, join(out, rel));
          chmodSync(
            join(out, rel),
            statSync(from).mode & 0o777 & (rel.endsWith('.key') || rel.startsWith('jwt/') ? 0o600 : 0o644),
          );
          copied.push(rel);
        };
        for (const rel of GATEWAY_FILES) copy(rel);
        const jwt = join(ctx.paths.dataDir, 'jwt');
        if (existsSync(jwt)) for (const f of readdirSync(jwt)) copy(join('jwt', f));
        emit(
          opts,
          { out, files: copied, excluded: ['ca/intermediate.key', 'offline/', 'operator/', 'node/', 'registry.db'] },
          () =>
            [
              `${copied.length} files → ${out} (no issuing CA key, no root key, no registry, no node identity):`,
              ...copied.map((f) => `  ${f}`),
              `then on that host: fleetgate node request <name> --role gateway --data ${out} --out node.csr; here: fleetgate node issue <name> --role gateway --csr node.csr --out node.crt; there: fleetgate node install node.crt --data ${out}`,
            ].join('\n'),
        );
      });
    });
}
