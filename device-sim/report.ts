import cliProgress from 'cli-progress';
import * as hdr from 'hdr-histogram-js';

/** Latencies in microseconds, HDR (no sampling, bounded memory). */
function histogram(): hdr.Histogram {
  return hdr.build({
    lowestDiscernibleValue: 1,
    highestTrackableValue: 600_000_000,
    numberOfSignificantValueDigits: 3,
  });
}

function summary(h: hdr.Histogram) {
  const ms = (us: number) => Math.round(us / 10) / 100;
  return {
    count: h.totalCount,
    p50: ms(h.getValueAtPercentile(50)),
    p90: ms(h.getValueAtPercentile(90)),
    p99: ms(h.getValueAtPercentile(99)),
    max: ms(h.maxValue),
  };
}

/** Everything a run measures; printed at the end, and as JSON with --json FILE. */
export class Report {
  readonly started = Date.now();
  readonly connect = histogram();
  readonly https = histogram();
  readonly cutLatency: number[] = [];
  connected = 0;
  planned = 0;
  handshakes = 0;
  published = 0;
  received = 0;
  /** Messages the gateway acknowledged (QoS 1), and of those, how many never reached the service. */
  acknowledged = 0;
  lostAcknowledged = 0;
  httpsOk = 0;
  uploadsSkipped = 0;
  readonly errors = new Map<string, number>();
  readonly checks: { name: string; ok: boolean; detail: string }[] = [];
  gatewayRss: { startBytes: number; endBytes: number } | undefined;
  /** How long the ramp took (connections made / this = handshakes per second achieved). */
  rampSeconds = 0;
  /** When the first device started connecting: message rates count from here, not from enrollment. */
  loadStarted: number | undefined;
  enrollment: { enrolled: number; cached: number; seconds: number } | undefined;

  error(code: string): void {
    this.errors.set(code, (this.errors.get(code) ?? 0) + 1);
  }

  check(name: string, ok: boolean, detail: string): void {
    this.checks.push({ name, ok, detail });
  }

  get failed(): boolean {
    return this.checks.some((c) => !c.ok);
  }

  toJSON() {
    const seconds = (Date.now() - this.started) / 1000;
    const load = Math.max(1, (Date.now() - (this.loadStarted ?? this.started)) / 1000);
    const cuts = [...this.cutLatency].sort((a, b) => a - b);
    return {
      seconds: Math.round(seconds * 10) / 10,
      devices: { planned: this.planned, connected: this.connected },
      enrollment: this.enrollment,
      connect: {
        ...summary(this.connect),
        handshakesPerSecond: Math.round((this.connected / Math.max(this.rampSeconds, 0.001)) * 10) / 10,
        rampSeconds: this.rampSeconds,
      },
      mqtt: {
        published: this.published,
        acknowledged: this.acknowledged,
        received: this.received,
        lostAcknowledged: this.lostAcknowledged,
        notAcknowledged: Math.max(0, this.published - this.acknowledged),
        publishedPerSecond: Math.round(this.published / load),
        receivedPerSecond: Math.round(this.received / load),
      },
      https: {
        ok: this.httpsOk,
        perSecond: Math.round((this.httpsOk / load) * 10) / 10,
        latency: summary(this.https),
        uploadsSkipped: this.uploadsSkipped,
      },
      revocationCut:
        cuts.length === 0
          ? undefined
          : {
              count: cuts.length,
              p50: cuts[Math.floor(cuts.length / 2)],
              max: cuts.at(-1),
              from: 'registry commit → device sees the disconnect',
            },
      gatewayRss: this.gatewayRss && {
        ...this.gatewayRss,
        perConnectionKiB:
          this.connected > 0
            ? Math.round((this.gatewayRss.endBytes - this.gatewayRss.startBytes) / this.connected / 102.4) / 10
            : undefined,
      },
      errors: Object.fromEntries(this.errors),
      checks: this.checks,
      ok: !this.failed,
    };
  }

  text(): string {
    const r = this.toJSON();
    const lines = [
      `devices      ${r.devices.connected}/${r.devices.planned} connected${r.enrollment ? `; enrolled ${r.enrollment.enrolled} (${r.enrollment.cached} cached) in ${r.enrollment.seconds} s` : ''}`,
      `connect      p50 ${r.connect.p50} ms, p90 ${r.connect.p90} ms, p99 ${r.connect.p99} ms, max ${r.connect.max} ms; ${r.connect.handshakesPerSecond} full handshakes/s over the ${r.connect.rampSeconds} s ramp`,
      `mqtt         published ${r.mqtt.published} (${r.mqtt.publishedPerSecond}/s), received by the service ${r.mqtt.received} (${r.mqtt.receivedPerSecond}/s)`,
      `delivery     ${r.mqtt.acknowledged} acknowledged by the gateway, ${r.mqtt.lostAcknowledged === 0 ? 'all received' : `${r.mqtt.lostAcknowledged} NOT RECEIVED (lost)`}; ${r.mqtt.notAcknowledged} published without an acknowledgement (QoS 0, or unacknowledged when the run ended or the connection dropped)`,
      `https        ${r.https.ok} ok (${r.https.perSecond}/s), p50 ${r.https.latency.p50} ms, p99 ${r.https.latency.p99} ms${r.https.uploadsSkipped > 0 ? `; ${r.https.uploadsSkipped} uploads skipped (no upload route on the gateway)` : ''}`,
    ];
    if (r.revocationCut)
      lines.push(
        `revoke→cut   ${r.revocationCut.count} devices: p50 ${r.revocationCut.p50} ms, max ${r.revocationCut.max} ms (registry commit → the device sees the disconnect)`,
      );
    if (r.gatewayRss)
      lines.push(
        `gateway RSS  ${(r.gatewayRss.startBytes / 2 ** 20).toFixed(1)} → ${(r.gatewayRss.endBytes / 2 ** 20).toFixed(1)} MiB${r.gatewayRss.perConnectionKiB !== undefined ? ` (${r.gatewayRss.perConnectionKiB} KiB per connection)` : ''}`,
      );
    lines.push(
      `errors       ${
        Object.keys(r.errors).length === 0
          ? 'none'
          : Object.entries(r.errors)
              .map(([k, v]) => `${k}×${v}`)
              .join(', ')
      }`,
    );
    for (const c of r.checks) lines.push(`check        ${c.ok ? 'PASS' : 'FAIL'} ${c.name}: ${c.detail}`);
    lines.push(
      `result       ${r.ok ? (r.mqtt.lostAcknowledged > 0 ? `completed — ${r.mqtt.lostAcknowledged} acknowledged messages LOST` : 'ok') : 'FAILED'} after ${r.seconds} s`,
    );
    return lines.join('\n');
  }
}

/**
 * Live progress: a bar on a terminal (cli-progress), plain lines every `everyMs` otherwise —
 * no control characters when there is no terminal.
 */
export class Progress {
  readonly #tty = process.stdout.isTTY === true;
  #bar: cliProgress.SingleBar | undefined;
  #lastLine = 0;
  readonly #everyMs: number;

  constructor(everyMs = 5_000) {
    this.#everyMs = everyMs;
  }

  start(label: string, total: number): void {
    if (!this.#tty) return void process.stdout.write(`${label}: 0/${total}\n`);
    this.#bar = new cliProgress.SingleBar(
      { format: `${label} [{bar}] {value}/{total} {rate}`, hideCursor: true },
      cliProgress.Presets.shades_classic,
    );
    this.#bar.start(total, 0, { rate: '' });
  }

  update(label: string, value: number, total: number, rate: string): void {
    if (this.#bar !== undefined) return void this.#bar.update(value, { rate });
    const now = Date.now();
    if (now - this.#lastLine < this.#everyMs && value !== total) return;
    this.#lastLine = now;
    process.stdout.write(`${label}: ${value}/${total} ${rate}\n`);
  }

  #live = false;

  /** A status line: rewritten in place on a terminal (4× a second), a plain line every `everyMs` otherwise. */
  line(text: string): void {
    if (this.#bar !== undefined) return;
    const now = Date.now();
    if (now - this.#lastLine < (this.#tty ? 250 : this.#everyMs)) return;
    this.#lastLine = now;
    if (this.#tty) {
      process.stdout.write(`\r\x1b[2K${text}`);
      this.#live = true;
    } else {
      process.stdout.write(`${text}\n`);
    }
  }

  /** Ends a live status line so what follows starts on its own line. */
  endLine(): void {
    if (this.#live) process.stdout.write('\n');
    this.#live = false;
  }

  stop(): void {
    this.#bar?.stop();
    this.#bar = undefined;
  }
}
