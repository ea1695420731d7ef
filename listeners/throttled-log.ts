import type { Logger } from 'pino';

/**
 * Log lines about unauthenticated peers, throttled: at most `perWindow` lines per kind in each
 * window, then one line saying how many were suppressed. A flood of anonymous refusals must not
 * grow the logs (or the audit log: anonymous refusals are counted in metrics, never audited)
 * faster than an operator can read them.
 */
export class ThrottledLog {
  readonly #log: Logger;
  readonly #perWindow: number;
  readonly #windowMs: number;
  readonly #windows = new Map<string, { start: number; count: number; suppressed: number }>();

  constructor(log: Logger, options: { perWindow?: number; windowMs?: number } = {}) {
    this.#log = log;
    this.#perWindow = options.perWindow ?? 20;
    this.#windowMs = options.windowMs ?? 10_000;
  }

  warn(kind: string, fields: Record<string, unknown>, message: string, now = Date.now()): void {
    let w = this.#windows.get(kind);
    if (w === undefined || now - w.start >= this.#windowMs) {
      if (w !== undefined && w.suppressed > 0)
        this.#log.warn(
          { kind, suppressed: w.suppressed, windowMs: this.#windowMs },
          `${w.suppressed} more "${kind}" lines suppressed`,
        );
      w = { start: now, count: 0, suppressed: 0 };
      this.#windows.set(kind, w);
    }
    if (w.count < this.#perWindow) {
      w.count++;
      this.#log.warn(fields, message);
    } else {
      w.suppressed++;
    }
  }
}
