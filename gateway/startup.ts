/**
 * Starts a server's parts one by one. If one fails (a port that cannot be bound, …), everything
 * already started is stopped in reverse order, then `stopCore` (what was opened before the
 * first step), and the coded error goes up: no half-started server keeps the process alive.
 */
export class Startup {
  readonly #started: (() => Promise<unknown>)[] = [];
  readonly #stopCore: () => Promise<unknown>;

  constructor(stopCore: () => Promise<unknown>) {
    this.#stopCore = stopCore;
  }

  async step<T>(start: () => Promise<T>, stop: (v: T) => Promise<unknown>): Promise<T> {
    try {
      const v = await start();
      this.#started.push(() => stop(v));
      return v;
    } catch (err) {
      for (const s of this.#started.reverse()) await s().catch(() => undefined);
      await this.#stopCore().catch(() => undefined);
      throw err;
    }
  }

  /** Stops what was opened before the first step (the steps' own parts are the caller's to close). */
  async stopCore(): Promise<void> {
    await this.#stopCore();
  }
}
