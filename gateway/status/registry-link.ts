import { Worker } from 'node:worker_threads';
import type { PeerIdentity } from '../../firmware-sdk/protocol/certificate-identity.ts';
import { type ErrorCode, FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import type { DeviceRecord, StatusEvent } from '../../provisioning/registry/records.ts';

interface WireError {
  code: ErrorCode;
  message: string;
  detail?: Record<string, unknown> | undefined;
}

/** Main thread → registry thread. */
export type ToWorker =
  | { op: 'status'; id: number; identity: PeerIdentity; now?: number }
  | { op: 'children'; id: number; deviceId: string }
  | { op: 'ping'; id: number }
  | { op: 'audit'; id: number; actor: string; action: string; subject: string | null; detail: Record<string, unknown> }
  | { op: 'close' };

/** Registry thread → main thread. */
export type FromWorker =
  | { id: number; ok: true; value: unknown }
  | { id: number; ok: false; error: WireError }
  | { events: StatusEvent[] }
  | { feed: 'up' }
  | { feed: 'down'; error: WireError }
  | { ready: number; error?: WireError };

export interface RegistryLinkOptions {
  /** How often the registry thread reads the status feed while the registry is being written (bounds revoke → cut). */
  pollMs: number;
  /** How often it reads the feed while the registry file is quiet (the kernel announces writes; this is the safety net). */
  idlePollMs: number;
  /** How long a status question may wait for the registry before the answer is REGISTRY_UNAVAILABLE. */
  timeoutMs: number;
  /** Admitted certificates remembered (their status kept current by the feed). */
  cacheMax: number;
  /** New status events, in feed order, after the cache has forgotten what they touch. */
  onEvents(events: StatusEvent[]): void;
  /** The feed stopped (once per outage) or came back. */
  onFeed(state: 'down' | 'up', error?: FleetgateError): void;
  /** An audit row could not be written. */
  onAuditError(error: FleetgateError): void;
}

const toError = (e: WireError) =>
  new FleetgateError(e.code, e.message, e.detail === undefined ? {} : { detail: e.detail });

/**
 * The gateway's view of the registry, on the main thread; the registry itself is read by a
 * worker thread (`registry-worker.ts`), so the event loop that serves devices never waits on
 * SQLite.
 *
 * - **In memory first.** A certificate admitted once is remembered (by fingerprint) with its
 *   device record; the status feed makes the cache forget everything an event touches (the
 *   device; a denylisted fingerprint or key) before the event is handled, so a remembered answer
 *   is never older than the feed. Only admissions are remembered; refusals are asked again.
 * - **Bounded waiting, fail closed.** A question the registry thread does not answer within
 *   `timeoutMs` is refused REGISTRY_UNAVAILABLE, and until it answers again (or while the feed is
 *   down) new questions are refused at once, remembered answers included. Live sessions are
 *   never cut because the registry is unavailable.
 * - The thread is restarted if it dies, reading the feed from where the last one stopped.
 */
export class RegistryLink {
  readonly #file: string;
  readonly #options: RegistryLinkOptions;
  #worker!: Worker;
  #nextId = 1;
  readonly #pending = new Map<
    number,
    { resolve(v: unknown): void; reject(e: FleetgateError): void; timer: NodeJS.Timeout }
  >();
  readonly #cache = new Map<string, DeviceRecord>();
  readonly #byDevice = new Map<string, Set<string>>();
  #lastSeq = -1;
  /** Status-feed reads by the registry thread (every thread this link has started), for metrics. */
  readonly #feedReads = new Int32Array(new SharedArrayBuffer(4));

  get feedReads(): number {
    return Atomics.load(this.#feedReads, 0);
  }
  #stalled = false;
  #feedDown: FleetgateError | undefined;
  #closing = false;

  private constructor(file: string, options: RegistryLinkOptions) {
    this.#file = file;
    this.#options = options;
  }

  /** Starts the registry thread; rejects (REGISTRY_UNAVAILABLE) if the registry cannot be read. */
  static async open(file: string, options: RegistryLinkOptions): Promise<RegistryLink> {
    const link = new RegistryLink(file, options);
    await link.#spawn();
    return link;
  }

  #spawn(): Promise<void> {
    const worker = new Worker(new URL('./registry-worker.ts', import.meta.url), {
      workerData: {
        file: this.#file,
        pollMs: this.#options.pollMs,
        idlePollMs: this.#options.idlePollMs,
        since: this.#lastSeq,
        feedReads: this.#feedReads,
      },
    });
    this.#worker = worker;
    return new Promise((resolve, reject) => {
      let started = false; // ready without an error: only a thread that was serving is restarted when it dies
      worker.on('message', (m: FromWorker) => {
        if ('ready' in m) {
          if (m.error !== undefined) {
            void worker.terminate();
            reject(toError(m.error));
            return;
          }
          started = true;
          if (this.#lastSeq < 0) this.#lastSeq = m.ready;
          this.#feedChanged('up'); // a restarted thread reads the feed again: refusing everything would never end otherwise
          resolve();
          return;
        }
        this.#receive(m);
      });
      worker.on('error', (err) => {
        if (!started) reject(new FleetgateError('REGISTRY_UNAVAILABLE', `registry thread failed: ${err.message}`));
      });
      worker.on('exit', () => {
        if (worker !== this.#worker) return;
        this.#failPending(new FleetgateError('REGISTRY_UNAVAILABLE', 'registry thread stopped'));
        if (!started) reject(new FleetgateError('REGISTRY_UNAVAILABLE', 'registry thread stopped before it was ready'));
        if (started && !this.#closing) {
          this.#feedChanged(
            'down',
            new FleetgateError('REGISTRY_UNAVAILABLE', 'registry thread stopped; restarting it'),
          );
          this.#respawn();
        }
      });
    });
  }

  /** Starts a new registry thread; while that fails (the registry cannot be read), tries again once a second. */
  #respawn(): void {
    if (this.#closing) return;
    this.#spawn().catch(() => setTimeout(() => this.#respawn(), 1_000).unref());
  }

  #receive(m: FromWorker): void {
    if ('events' in m) {
      for (const event of m.events) this.#forget(event);
      this.#lastSeq = m.events[m.events.length - 1]!.seq;
      this.#options.onEvents(m.events);
      return;
    }
    if ('feed' in m) {
      this.#feedChanged(m.feed, m.feed === 'down' ? toError(m.error) : undefined);
      return;
    }
    if ('id' in m) {
      this.#stalled = false;
      const p = this.#pending.get(m.id);
      if (p === undefined) return;
      this.#pending.delete(m.id);
      clearTimeout(p.timer);
      if (m.ok) p.resolve(m.value);
      else p.reject(toError(m.error));
    }
  }

  #feedChanged(state: 'down' | 'up', error?: FleetgateError): void {
    if (state === 'down') {
      if (this.#feedDown !== undefined) return;
      this.#feedDown = error;
      this.#options.onFeed('down', error);
    } else if (this.#feedDown !== undefined) {
      this.#feedDown = undefined;
      this.#options.onFeed('up');
    }
  }

  #failPending(error: FleetgateError): void {
    for (const [id, p] of this.#pending) {
      clearTimeout(p.timer);
      this.#pending.delete(id);
      p.reject(error);
    }
  }

  #ask<T>(message: ToWorker & { id: number }): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        if (!this.#pending.delete(message.id)) return;
        this.#stalled = true;
        reject(
          new FleetgateError('REGISTRY_UNAVAILABLE', `registry did not answer within ${this.#options.timeoutMs} ms`),
        );
      }, this.#options.timeoutMs);
      this.#pending.set(message.id, { resolve: resolve as (v: unknown) => void, reject, timer });
      this.#worker.postMessage(message);
    });
  }

  /** Why new questions are refused at once right now, if they are. */
  #unavailable(): FleetgateError | undefined {
    if (this.#feedDown !== undefined)
      return new FleetgateError('REGISTRY_UNAVAILABLE', `registry unavailable: ${this.#feedDown.message}`);
    if (this.#stalled)
      return new FleetgateError(
        'REGISTRY_UNAVAILABLE',
        'registry unavailable (it has not answered in time; asked again when it does)',
      );
    return undefined;
  }

  /** The remembered admission of this certificate, if it still holds now; never asks the registry. */
  cached(identity: PeerIdentity, now = Date.now()): DeviceRecord | undefined {
    if (now < identity.notBefore || now >= identity.notAfter || this.#unavailable() !== undefined) return undefined;
    const device = this.#cache.get(identity.fingerprint);
    return device !== undefined && device.id === identity.deviceId ? device : undefined;
  }

  /** The status of a certificate now: from memory when remembered, else from the registry. Rejects with the coded refusal. */
  async status(identity: PeerIdentity, now = Date.now()): Promise<DeviceRecord> {
    const hit = this.cached(identity, now);
    if (hit !== undefined) return hit;
    return this.check(identity, now);
  }

  /** The status from the registry itself (a remembered answer is not used), remembered if admitted. */
  async check(identity: PeerIdentity, now = Date.now()): Promise<DeviceRecord> {
    const down = this.#unavailable();
    if (down !== undefined) throw down;
    const device = await this.#ask<DeviceRecord>({ op: 'status', id: this.#nextId++, identity, now });
    this.#remember(identity.fingerprint, device);
    return device;
  }

  /** The registered, unrevoked children of a gateway device. */
  children(deviceId: string): Promise<string[]> {
    const down = this.#unavailable();
    if (down !== undefined) return Promise.reject(down);
    return this.#ask<string[]>({ op: 'children', id: this.#nextId++, deviceId });
  }

  /** Resolves when the registry answers a question now (health checks). */
  async ping(): Promise<void> {
    const down = this.#unavailable();
    if (down !== undefined) throw down;
    await this.#ask<null>({ op: 'ping', id: this.#nextId++ });
  }

  /** Appends an audit row on the registry thread; the caller does not wait. */
  audit(actor: string, action: string, subject: string | null, detail: Record<string, unknown> = {}): void {
    this.#ask<null>({ op: 'audit', id: this.#nextId++, actor, action, subject, detail }).catch((err: FleetgateError) =>
      this.#options.onAuditError(err),
    );
  }

  #remember(fingerprint: string, device: DeviceRecord): void {
    if (this.#options.cacheMax <= 0) return;
    if (!this.#cache.has(fingerprint) && this.#cache.size >= this.#options.cacheMax) {
      const oldest = this.#cache.keys().next().value as string;
      const gone = this.#cache.get(oldest);
      this.#cache.delete(oldest);
      if (gone !== undefined) this.#byDevice.get(gone.id)?.delete(oldest);
    }
    this.#cache.set(fingerprint, device);
    let set = this.#byDevice.get(device.id);
    if (set === undefined) this.#byDevice.set(device.id, (set = new Set()));
    set.add(fingerprint);
  }

  /** Forgets every remembered admission an event may change. */
  #forget(event: StatusEvent): void {
    if (event.deviceId !== null) {
      for (const fp of this.#byDevice.get(event.deviceId) ?? []) this.#cache.delete(fp);
      this.#byDevice.delete(event.deviceId);
    } else if (event.value !== null) {
      // A fingerprint or key denylisted (or allowed again): rare; dropping the whole cache is cheaper than indexing it by key.
      this.#cache.clear();
      this.#byDevice.clear();
    }
  }

  async close(): Promise<void> {
    this.#closing = true;
    this.#failPending(new FleetgateError('REGISTRY_UNAVAILABLE', 'gateway closing'));
    const exited = new Promise((r) => this.#worker.once('exit', r));
    this.#worker.postMessage({ op: 'close' } satisfies ToWorker);
    await Promise.race([exited, new Promise((r) => setTimeout(r, 2_000).unref())]);
    await this.#worker.terminate();
  }
}
