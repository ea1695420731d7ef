import { type ChildProcess, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { dirname } from 'node:path';
import type { Logger } from 'pino';
import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';

/** The most workers one supervisor starts. */
export const MAX_WORKERS = 64;

/** `--workers`: a count from 1 to {@link MAX_WORKERS}, or `auto` (one per core this process may use). */
export function parseWorkers(value: string | undefined): number {
  if (value === undefined) return 1;
  if (value === 'auto') return Math.min(MAX_WORKERS, availableParallelism());
  const n = Number(value);
  if (!/^\d+$/.test(value) || n < 1 || n > MAX_WORKERS)
    throw new FleetgateError(
      'USAGE',
      `--workers is a number from 1 to ${MAX_WORKERS} or auto, not ${JSON.stringify(value)}`,
    );
  return n;
}

/** The command line a worker runs: `gateway` with the supervisor's own options but `--workers` and `--json`. */
export function workerArgs(args: readonly string[]): string[] {
  const out: string[] = ['gateway'];
  for (let i = 1; i < args.length; i++) {
    const a = args[i] as string;
    if (a === '--workers') i++;
    else if (a.startsWith('--workers=') || a === '--json') continue;
    else out.push(a);
  }
  return out;
}

/** What a worker tells its supervisor over the IPC channel once its listeners are up. */
export interface WorkerReady {
  type: 'ready';
  /** Its own admin listener (loopback, a port of its own). */
  adminPort: number;
  /** Its device listeners (the same for every worker: they share the ports). */
  endpoints: Record<string, string>;
}

export interface WorkerView {
  index: number;
  name: string;
  pid: number | undefined;
  state: 'starting' | 'running' | 'restarting' | 'stopped';
  adminPort: number | undefined;
  restarts: number;
  endpoints?: Record<string, string>;
}

interface Worker extends WorkerView {
  child: ChildProcess | undefined;
  startedAt: number;
  /** Consecutive starts that ended within a minute (the restart delay doubles with them). */
  quickExits: number;
}

/** How long a worker may take to start before the supervisor gives up on it. */
const READY_TIMEOUT_MS = 120_000;
/** A worker that ran this long before it died is restarted at once (then after 1, 2, 4 … 30 s). */
const HEALTHY_RUN_MS = 60_000;

/**
 * The gateway workers of one supervisor (`fleetgate gateway|up --workers N`): N processes running
 * `fleetgate gateway`, each a node of one cluster on the local bus, sharing every device listener's
 * port (SO_REUSEPORT). A worker that dies is restarted (logged, counted); the supervisor's SIGTERM
 * drains them all. A worker whose supervisor dies (even by SIGKILL: its IPC channel closes) stops
 * itself, and the first of them stops the local bus — nothing is left serving.
 */
export class Supervisor {
  readonly #workers: Worker[];
  readonly #argv: string[];
  readonly #env: (i: number) => Record<string, string>;
  readonly #log: Logger;
  #stopping = false;

  constructor(options: {
    count: number;
    args: readonly string[];
    name: (i: number) => string;
    env: (i: number) => Record<string, string>;
    log: Logger;
  }) {
    this.#argv = [...process.execArgv, process.argv[1] as string, ...workerArgs(options.args)];
    this.#env = options.env;
    this.#log = options.log;
    this.#workers = Array.from({ length: options.count }, (_, k) => ({
      index: k + 1,
      name: options.name(k + 1),
      pid: undefined,
      state: 'starting' as const,
      adminPort: undefined,
      restarts: 0,
      child: undefined,
      startedAt: 0,
      quickExits: 0,
    }));
  }

  get workers(): readonly WorkerView[] {
    return this.#workers;
  }

  /** Starts every worker; resolves when all are ready, or stops them all and rejects when one fails. */
  async start(): Promise<void> {
    try {
      await Promise.all(this.#workers.map((w) => this.#spawn(w)));
    } catch (err) {
      await this.stop();
      throw err;
    }
  }

  #spawn(w: Worker): Promise<void> {
    const child = spawn(process.execPath, this.#argv, {
      stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
      env: { ...process.env, ...this.#env(w.index), FLEETGATE_WORKER: String(w.index) },
    });
    w.child = child;
    w.pid = child.pid;
    w.state = 'starting';
    w.adminPort = undefined;
    w.startedAt = Date.now();
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        reject(new FleetgateError('WORKER_FAILED', `gateway worker ${w.name} was not ready within 120 s`));
      }, READY_TIMEOUT_MS);
      child.on('message', (m: unknown) => {
        const ready = m as Partial<WorkerReady>;
        if (ready?.type !== 'ready' || !Number.isInteger(ready.adminPort)) return;
        clearTimeout(timer);
        w.adminPort = ready.adminPort;
        if (typeof ready.endpoints === 'object' && ready.endpoints !== null) w.endpoints = ready.endpoints;
        w.state = 'running';
        resolve();
      });
      child.once('exit', (code, signal) => {
        clearTimeout(timer);
        const wasReady = w.state === 'running';
        w.state = this.#stopping ? 'stopped' : 'restarting';
        w.adminPort = undefined;
        if (!wasReady)
          reject(
            new FleetgateError(
              'WORKER_FAILED',
              `gateway worker ${w.name} stopped before it was ready (${signal ?? `exit code ${code}`}): its error is above`,
            ),
          );
        if (wasReady && !this.#stopping) this.#restart(w, code, signal);
      });
    });
  }

  /** A worker died after it was ready: started again, at once after a long run, later after quick deaths. */
  #restart(w: Worker, code: number | null, signal: NodeJS.Signals | null): void {
    w.restarts++;
    w.quickExits = Date.now() - w.startedAt < HEALTHY_RUN_MS ? w.quickExits + 1 : 0;
    const delayMs = w.quickExits === 0 ? 0 : Math.min(30_000, 1_000 * 2 ** (w.quickExits - 1));
    this.#log.error(
      { code: 'WORKER_FAILED', worker: w.name, pid: w.pid, exitCode: code, signal, restarts: w.restarts, delayMs },
      'a gateway worker died: starting it again',
    );
    setTimeout(() => {
      if (this.#stopping) return;
      this.#spawn(w).catch((err: unknown) => {
        this.#log.error({ worker: w.name, err: (err as Error).message }, 'a gateway worker could not be started again');
        if (!this.#stopping) this.#restart(w, null, null);
      });
    }, delayMs).unref();
  }

  /** SIGTERM to every worker (each drains as a gateway does); SIGKILL to one still running after 30 s. */
  async stop(): Promise<void> {
    this.#stopping = true;
    await Promise.all(
      this.#workers.map(async (w) => {
        const c = w.child;
        if (c === undefined || c.exitCode !== null || c.signalCode !== null) {
          w.state = 'stopped';
          return;
        }
        const exited = new Promise((r) => c.once('exit', r));
        c.kill('SIGTERM');
        const timer = setTimeout(() => {
          this.#log.error(
            { code: 'WORKER_FAILED', worker: w.name, pid: c.pid },
            'worker did not stop within 30 s: killed',
          );
          c.kill('SIGKILL');
        }, 30_000);
        await exited;
        clearTimeout(timer);
        w.state = 'stopped';
      }),
    );
  }
}

/** Whether this process is a worker of a supervisor (`--workers`), with its IPC channel. */
const isWorker = (): boolean => process.env.FLEETGATE_WORKER !== undefined && typeof process.send === 'function';

/**
 * In a worker, first thing: stop this process when the supervisor is gone (its IPC channel
 * closed: it exited or was killed, SIGKILL included) — first stopping the local bus, whose PID
 * file the supervisor named (`FLEETGATE_BUS_PIDFILE`: read then, so a bus started again since
 * counts), and only when that PID is still a nats-server of this data directory — so nothing of a
 * killed supervisor keeps serving, and no other process is ever signalled.
 */
export function workerStarting(): void {
  if (!isWorker()) return;
  process.once('disconnect', () => {
    stopBus(process.env.FLEETGATE_BUS_PIDFILE);
    process.kill(process.pid, 'SIGTERM');
  });
}

/**
 * In a worker whose gateway has stopped: the IPC channel no longer keeps the process alive (its
 * `disconnect` listener did: a drained worker waited for the supervisor's SIGKILL, 30 s later).
 */
export function workerStopped(): void {
  if (!isWorker()) return;
  process.removeAllListeners('disconnect');
  process.channel?.unref();
}

function stopBus(pidFile: string | undefined): void {
  if (pidFile === undefined || pidFile === '') return;
  try {
    const pid = Number(readFileSync(pidFile, 'utf8').trim());
    const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    if (Number.isInteger(pid) && pid > 1 && cmdline.includes('nats-server') && cmdline.includes(dirname(pidFile)))
      process.kill(pid, 'SIGTERM');
  } catch {
    // no PID file, or the process is gone (another worker stopped it)
  }
}

/** In a worker: tells the supervisor its listeners are up. */
export function workerReady(adminPort: number, endpoints: Record<string, string>): void {
  if (isWorker()) process.send?.({ type: 'ready', adminPort, endpoints } satisfies WorkerReady);
}
