import type { TypeLimits } from '../config/config.ts';

/**
 * A token bucket: `rate` tokens a second, at most `burst` saved up. Plain numbers, no allocation
 * per take: it runs on every PUBLISH.
 */
export class TokenBucket {
  readonly rate: number;
  readonly burst: number;
  #tokens: number;
  #last: number;

  constructor(rate: number, burst: number, now: number) {
    this.rate = rate;
    this.burst = Math.max(burst, 1);
    this.#tokens = this.burst;
    this.#last = now;
  }

  /** Takes `n` tokens if there are that many (after refilling to `now`); false otherwise, taking none. */
  take(n: number, now: number): boolean {
    if (now > this.#last) {
      this.#tokens = Math.min(this.burst, this.#tokens + ((now - this.#last) * this.rate) / 1000);
      this.#last = now;
    }
    if (this.#tokens < n) return false;
    this.#tokens -= n;
    return true;
  }

  /** Seconds until `n` tokens are there (for `Retry-After`). */
  secondsUntil(n: number): number {
    return Math.max(0, (Math.min(n, this.burst) - this.#tokens) / this.rate);
  }
}

/** One device's buckets, shared by all its connections on this node (MQTT and HTTPS). */
export class DeviceQuota {
  readonly messages: TokenBucket;
  readonly bytes: TokenBucket;
  readonly requests: TokenBucket;
  readonly connects: TokenBucket;
  lastUsed: number;
  #lastAudit = 0;

  constructor(l: TypeLimits, now: number) {
    // Bursts: ten seconds' worth of messages and requests, and never less than one largest packet
    // of bytes; a minute's worth of connects. A device that keeps to its rate never meets them.
    this.messages = new TokenBucket(l.messagesPerSecond, l.messagesPerSecond * 10, now);
    this.bytes = new TokenBucket(l.bytesPerSecond, Math.max(l.bytesPerSecond * 10, l.maxPacketBytes), now);
    this.requests = new TokenBucket(l.requestsPerSecond, l.requestsPerSecond * 10, now);
    this.connects = new TokenBucket(l.connectsPerMinute / 60, l.connectsPerMinute, now);
    this.lastUsed = now;
  }

  /** An audit row for this device's refusals, at most once a minute (the metrics count every one). */
  shouldAudit(now: number): boolean {
    if (now - this.#lastAudit < 60_000) return false;
    this.#lastAudit = now;
    return true;
  }

  /** One inbound PUBLISH of `bytes` (its payload and topic). */
  message(bytes: number, now: number): boolean {
    this.lastUsed = now;
    return this.messages.take(1, now) && this.bytes.take(bytes, now);
  }
}

/**
 * Per-device quotas (#25): messages and bytes a second in over MQTT, HTTPS requests a second,
 * connects a minute — per device type (`gateway.limits.<type>`), token buckets in memory on each
 * node. `gateway.quotas: "off"` turns them off. A device's buckets outlive its connections for
 * a while (a reconnect loop is exactly what the connect bucket is for), then are forgotten.
 */
export class DeviceQuotas {
  readonly enabled: boolean;
  readonly #limits: Readonly<Record<string, TypeLimits>>;
  readonly #devices = new Map<string, DeviceQuota>();
  readonly #sweep: NodeJS.Timeout;

  constructor(limits: Readonly<Record<string, TypeLimits>>, enabled: boolean) {
    this.enabled = enabled;
    this.#limits = limits;
    this.#sweep = setInterval(() => this.#forget(Date.now()), 60_000);
    this.#sweep.unref();
  }

  /** The device's buckets; undefined when quotas are off (callers skip every check then). */
  of(deviceId: string, type: string, now = Date.now()): DeviceQuota | undefined {
    if (!this.enabled) return undefined;
    let q = this.#devices.get(deviceId);
    if (q === undefined) {
      const limits = this.#limits[type];
      if (limits === undefined) return undefined;
      q = new DeviceQuota(limits, now);
      this.#devices.set(deviceId, q);
    }
    q.lastUsed = now;
    return q;
  }

  /** Devices unheard of for ten minutes: their buckets are full again anyway. */
  #forget(now: number): void {
    for (const [id, q] of this.#devices) if (now - q.lastUsed > 600_000) this.#devices.delete(id);
  }

  close(): void {
    clearInterval(this.#sweep);
  }
}
