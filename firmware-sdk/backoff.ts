/**
 * Exponential backoff with full jitter (AWS Architecture Blog, "Exponential Backoff And
 * Jitter"): the n-th retry waits a random time in [0, min(max, base · 2ⁿ)], so a fleet that
 * lost its gateway at once does not come back at once.
 *
 * @example
 * const backoff = new Backoff({ baseMs: 500, maxMs: 30_000 });
 * await sleep(backoff.next()); // … on success: backoff.reset()
 */
export class Backoff {
  readonly #base: number;
  readonly #max: number;
  readonly #random: () => number;
  #attempt = 0;

  constructor(opts: { baseMs?: number; maxMs?: number; random?: () => number } = {}) {
    this.#base = opts.baseMs ?? 500;
    this.#max = opts.maxMs ?? 30_000;
    this.#random = opts.random ?? Math.random;
  }

  /** The delay before the next attempt, in ms. */
  next(): number {
    const cap = Math.min(this.#max, this.#base * 2 ** this.#attempt);
    this.#attempt = Math.min(this.#attempt + 1, 30);
    return Math.floor(this.#random() * cap);
  }

  reset(): void {
    this.#attempt = 0;
  }

  get attempts(): number {
    return this.#attempt;
  }
}
