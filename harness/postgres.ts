import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import {
  chmodSync,
  chownSync,
  copyFileSync,
  existsSync,
  mkdtempSync,
  readdirSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { dataPaths } from '../config/paths.ts';
import { loadCa } from '../provisioning/ca/authority.ts';
import { issueNodeCert } from '../provisioning/ca/node.ts';
import { postgresSetup } from '../provisioning/registry/roles.ts';
import { stablePort, untilListening } from './services.ts';

/** Debian's PostgreSQL server binaries (the newest installed major version), if any. */
export function postgresBin(): string | undefined {
  const root = '/usr/lib/postgresql';
  if (!existsSync(root)) return undefined;
  const versions = readdirSync(root)
    .filter((v) => existsSync(join(root, v, 'bin', 'postgres')))
    .sort((a, b) => Number(b) - Number(a));
  return versions[0] === undefined ? undefined : join(root, versions[0], 'bin');
}

export interface PostgresServer {
  url: string;
  port: number;
  pid(): number | undefined;
  stop(): Promise<void>;
  start(): Promise<void>;
  /** Stops it and removes its data directory. */
  destroy(): Promise<void>;
  /**
   * The registry links as production runs them (`fleetgate cluster postgres-setup`): the three
   * roles, TLS with a server certificate from the fleet in `dataDir`, `hostssl … cert` with the
   * generated `pg_ident` map; the superuser keeps trust on loopback for the tests' own setup. Restarts.
   */
  enableTls(dataDir: string): Promise<void>;
  /** The URL a member of `role` uses over mTLS to `database`, presenting `cert`/`key`. */
  roleUrl(
    role: 'gateway' | 'provisioning' | 'operator',
    database: string,
    files: { cert: string; key: string; root: string },
  ): string;
}

/**
 * A PostgreSQL server of its own for tests and benchmarks: `initdb` into a temp dir, its own
 * loopback port, `fsync=off` (tests only: nothing here must survive a power cut; `durable` keeps
 * PostgreSQL's defaults, for benchmarks), stopped by PID.
 * PostgreSQL refuses to run as root; as root (CI) its processes run as the `postgres` user
 * Debian's package creates (spawn's uid/gid: no wrapper between us and the server's PID).
 */
export async function startPostgres(options: { durable?: boolean } = {}): Promise<PostgresServer> {
  const bin = postgresBin();
  if (bin === undefined) throw new Error('PostgreSQL is not installed (Debian: apt-get install postgresql)');
  const dir = mkdtempSync(join(tmpdir(), 'fleetgate-pg-'));
  const data = join(dir, 'data');
  const asRoot = process.getuid?.() === 0;
  const uid = asRoot ? Number(spawnSync('id', ['-u', 'postgres']).stdout.toString().trim()) : undefined;
  const gid = asRoot ? Number(spawnSync('id', ['-g', 'postgres']).stdout.toString().trim()) : undefined;
  if (uid !== undefined && gid !== undefined) {
    chownSync(dir, uid, gid);
    chmodSync(dir, 0o700);
  }
  const as = uid !== undefined && gid !== undefined ? { uid, gid } : {};
  const init = spawnSync(
    join(bin, 'initdb'),
    ['-D', data, '-U', 'postgres', '--auth=trust', '--no-sync', '-E', 'UTF8'],
    { encoding: 'utf8', cwd: dir, ...as },
  );
  if (init.status !== 0) throw new Error(`initdb failed: ${init.stderr}`);
  const port = await stablePort(); // restarted on the same port
  let child: ChildProcess | undefined;
  let output = '';
  let tlsArgs: string[] = [];
  const own = (file: string, mode: number) => {
    chmodSync(file, mode);
    if (uid !== undefined && gid !== undefined) chownSync(file, uid, gid);
  };
  const server: PostgresServer = {
    url: `postgres://postgres@127.0.0.1:${port}/postgres`,
    port,
    pid: () => child?.pid,
    async start() {
      output = '';
      // durable: PostgreSQL's defaults (fsync, synchronous commit), for benchmarks that measure a commit.
      const speed =
        options.durable === true
          ? []
          : ['-c', 'fsync=off', '-c', 'synchronous_commit=off', '-c', 'full_page_writes=off'];
      child = spawn(
        join(bin, 'postgres'),
        ['-D', data, '-p', String(port), '-k', dir, '-c', 'listen_addresses=127.0.0.1', ...speed, ...tlsArgs],
        {
          stdio: ['ignore', 'pipe', 'pipe'],
          cwd: dir,
          ...as,
        },
      );
      child.stdout!.on('data', (b: Buffer) => {
        output += b.toString();
      });
      child.stderr!.on('data', (b: Buffer) => {
        output += b.toString();
      });
      await untilListening(port, child, 'postgres', () => output, {
        ready: () => /ready to accept connections/.test(output),
        attempts: 300,
      });
    },
    async stop() {
      const c = child;
      if (c === undefined || c.exitCode !== null || c.signalCode !== null) return;
      const exited = new Promise((r) => c.once('exit', r));
      c.kill('SIGINT'); // fast shutdown
      const timer = setTimeout(() => c.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    },
    async destroy() {
      await server.stop();
      rmSync(dir, { recursive: true, force: true });
    },
    async enableTls(fleetDir) {
      const paths = dataPaths(fleetDir);
      const issued = await issueNodeCert(await loadCa(paths), {
        role: 'server',
        name: 'postgres',
        validityMs: 86_400_000,
      });
      const files = { cert: join(dir, 'server.crt'), key: join(dir, 'server.key'), root: join(dir, 'root.crt') };
      writeFileSync(files.key, issued.keyPem!);
      own(files.key, 0o600);
      writeFileSync(files.cert, issued.certPem);
      own(files.cert, 0o644);
      copyFileSync(paths.rootCert, files.root);
      own(files.root, 0o644);
      const setup = postgresSetup({
        database: 'all',
        host: '127.0.0.1',
        port,
        serverCert: files.cert,
        serverKey: files.key,
        rootCert: files.root,
        dataDir: fleetDir,
      });
      const admin = new pg.Client({ connectionString: server.url });
      await admin.connect();
      try {
        for (const line of setup.sql.split('\n').filter((l) => l.startsWith('CREATE ROLE')))
          await admin.query(line).catch((e: { code?: string }) => {
            if (e.code !== '42710') throw e; // the role exists already
          });
      } finally {
        await admin.end();
      }
      // The superuser (the tests' own setup and CLI) over loopback as before; the members by certificate only.
      writeFileSync(
        join(data, 'pg_hba.conf'),
        `local all postgres trust\nhost all postgres 127.0.0.1/32 trust\n${setup.hba}\n`,
      );
      writeFileSync(join(data, 'pg_ident.conf'), `${setup.ident}\n`);
      tlsArgs = setup.conf.split('\n').flatMap((l) => ['-c', l.replace(/ = /, '=').replaceAll("'", '')]);
      await server.stop();
      await server.start();
    },
    roleUrl(role, database, files) {
      return `postgres://fleetgate_${role}@127.0.0.1:${port}/${database}?sslmode=verify-full&sslrootcert=${files.root}&sslcert=${files.cert}&sslkey=${files.key}`;
    },
  };
  await server.start();
  return server;
}
