import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
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
        ['-D', data, '-p', String(port), '-k', dir, '-c', 'listen_addresses=127.0.0.1', ...speed],
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
  };
  await server.start();
  return server;
}
