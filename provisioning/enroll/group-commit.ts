import type { RegistryWriter } from '../registry/writer.ts';

interface Queued {
  change: () => unknown;
  resolve(value: unknown): void;
  reject(error: unknown): void;
}

/**
 * Group commit for enrollments. Each enrollment's record step (re-check, insert, consume the
 * token, audit) is queued; at the end of the event-loop turn every queued step runs in one
 * transaction, each in its own savepoint, and is committed with one fsync. Each caller is
 * answered only after that commit — never before its certificate is durable — with its own
 * result or its own error (a used token fails that enrollment alone).
 *
 * Under load the requests that arrived in one turn share a commit (16 clients: a handful per
 * fsync instead of one); alone, a request waits for nothing but its own commit.
 */
export class GroupCommit {
  readonly #registry: RegistryWriter;
  readonly #maxBatch: number;
  #queue: Queued[] = [];
  #scheduled = false;
  /** Commits made and changes they carried (for metrics and the benchmark). */
  readonly stats = { commits: 0, changes: 0 };

  constructor(registry: RegistryWriter, maxBatch = 128) {
    this.#registry = registry;
    this.#maxBatch = maxBatch;
  }

  run<T>(change: () => T): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.#queue.push({ change, resolve: resolve as (v: unknown) => void, reject });
      if (!this.#scheduled) {
        this.#scheduled = true;
        setImmediate(() => this.#flush());
      }
    });
  }

  #flush(): void {
    this.#scheduled = false;
    const batch = this.#queue.splice(0, this.#maxBatch);
    if (this.#queue.length > 0) {
      this.#scheduled = true;
      setImmediate(() => this.#flush());
    }
    if (batch.length === 0) return;
    let results: ReturnType<RegistryWriter['batch']>;
    try {
      results = this.#registry.batch(batch.map((q) => q.change));
    } catch (err) {
      for (const q of batch) q.reject(err); // the commit failed: nothing of this batch is recorded
      return;
    }
    this.stats.commits++;
    this.stats.changes += batch.length;
    for (const [i, r] of results.entries()) {
      if (r.ok) batch[i]!.resolve(r.value);
      else batch[i]!.reject(r.error);
    }
  }
}
