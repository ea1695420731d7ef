import { Worker } from 'node:worker_threads';
import { type ErrorCode, FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import type { AuditFilter, DenyFilter, DeviceFilter } from './queries.ts';

export type ConsoleQuery =
  | { name: 'devices'; filter: DeviceFilter }
  | { name: 'device'; id: string }
  | { name: 'counts' }
  | { name: 'expiring'; withinMs: number; after?: string; limit?: number }
  | { name: 'revoked'; before?: string; limit?: number }
  | { name: 'findings' }
  | { name: 'denylist'; filter: DenyFilter }
  | { name: 'audit'; filter: AuditFilter };

/** What an operator may do from the console: the CLI's registry operations, by name. */
export type ConsoleAction =
  | { name: 'suspend'; id: string; reason?: string }
  | { name: 'resume'; id: string }
  | { name: 'revoke'; id: string; reason: number }
  | { name: 'revokeCertificate'; serial: string; reason: number }
  | { name: 'deny'; kind: string; value: string; reason?: string; expiresAt?: number }
  | { name: 'allow'; kind: string; value: string }
  | { name: 'token'; id: string; ttlMs: number };

export type ToConsoleWorker =
  | { op: 'query'; id: number; query: ConsoleQuery }
  | { op: 'act'; id: number; action: ConsoleAction; actor: string }
  | { op: 'close' };

export type FromConsoleWorker =
  | { id: number; ok: true; value: unknown }
  | { id: number; ok: false; error: { code: ErrorCode; message: string } };

/**
 * The console's way to the registry: questions and actions handed to its own thread
 * (`store-worker.ts`), each with a deadline; a thread that dies is started again on the next call.
 */
export class ConsoleStore {
  readonly #file: string;
  readonly #timeoutMs: number;
  #worker: Worker | undefined;
  #nextId = 1;
  readonly #pending = new Map<
    number,
    { resolve(v: unknown): void; reject(e: FleetgateError): void; timer: NodeJS.Timeout }
  >();

  constructor(file: string, timeoutMs: number) {
    this.#file = file;
    this.#timeoutMs = timeoutMs;
  }

  #thread(): Worker {
    if (this.#worker !== undefined) return this.#worker;
    const worker = new Worker(new URL('./store-worker.ts', import.meta.url), { workerData: { file: this.#file } });
    worker.unref();
    worker.on('message', (m: FromConsoleWorker) => {
      const p = this.#pending.get(m.id);
      if (p === undefined) return;
      this.#pending.delete(m.id);
      clearTimeout(p.timer);
      if (m.ok) p.resolve(m.value);
      else p.reject(new FleetgateError(m.error.code, m.error.message));
    });
    worker.on('error', () => undefined); // the exit below answers what was pending
    worker.on('exit', () => {
      if (this.#worker === worker) this.#worker = undefined;
      for (const [id, p] of this.#pending) {
        clearTimeout(p.timer);
        this.#pending.delete(id);
        p.reject(new FleetgateError('REGISTRY_UNAVAILABLE', 'the console registry thread stopped'));
      }
    });
    this.#worker = worker;
    return worker;
  }

  #send<T>(message: Exclude<ToConsoleWorker, { op: 'close' }>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        if (this.#pending.delete(message.id))
          reject(new FleetgateError('REGISTRY_UNAVAILABLE', `registry did not answer within ${this.#timeoutMs} ms`));
      }, this.#timeoutMs);
      this.#pending.set(message.id, { resolve: resolve as (v: unknown) => void, reject, timer });
      this.#thread().postMessage(message);
    });
  }

  query<T>(query: ConsoleQuery): Promise<T> {
    return this.#send<T>({ op: 'query', id: this.#nextId++, query });
  }

  act<T>(action: ConsoleAction, actor: string): Promise<T> {
    return this.#send<T>({ op: 'act', id: this.#nextId++, action, actor });
  }

  async close(): Promise<void> {
    const worker = this.#worker;
    if (worker === undefined) return;
    this.#worker = undefined;
    const exited = new Promise((r) => worker.once('exit', r));
    worker.postMessage({ op: 'close' } satisfies ToConsoleWorker);
    await Promise.race([exited, new Promise((r) => setTimeout(r, 2_000).unref())]);
    await worker.terminate();
  }
}
