// Shared by the benchmark scripts: a gateway in its own process (so its CPU can be measured),
// a fleet of enrolled devices, message counting, and small statistics helpers. Loopback only; bounded loops.
import './unmetered.ts';
import type { MqttClient } from 'mqtt';

export {
  benchFleet,
  freePort,
  type GatewayProcess,
  procStat,
  spawnGateway,
  spawnService,
  untilTlsListening,
} from '../harness/services.ts';

export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

export function fmt(n: number, digits = 1): string {
  return n.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

/**
 * Counts the messages `client` receives that `counts` accepts. `done` resolves when `total` have
 * arrived, or when none has for 3 s (QoS 0 may be dropped for a subscriber that cannot keep up;
 * waiting longer would only add idle CPU).
 */
export function countArrivals(
  client: MqttClient,
  total: number,
  counts: (topic: string, payload: Buffer) => boolean,
): { done: Promise<void>; received(): number } {
  let received = 0;
  let last = performance.now();
  const done = new Promise<void>((resolve) => {
    const quiet = setInterval(() => {
      if (performance.now() - last > 3_000) {
        clearInterval(quiet);
        resolve();
      }
    }, 250);
    client.on('message', (topic, payload) => {
      if (!counts(topic, payload)) return;
      last = performance.now();
      if (++received === total) {
        clearInterval(quiet);
        resolve();
      }
    });
  });
  return { done, received: () => received };
}

/** Each publisher `i` sends `messages` to `devices/bench-<i>/<topic>` (QoS 1: one at a time; QoS 0: yielding every 200). */
export async function publishFromEach(
  publishers: MqttClient[],
  topic: string,
  messages: number,
  qos: 0 | 1,
): Promise<void> {
  await Promise.all(
    publishers.map(async (p, i) => {
      for (let n = 0; n < messages; n++) {
        if (qos === 1) await p.publishAsync(`devices/bench-${i}/${topic}`, String(n), { qos });
        else {
          p.publish(`devices/bench-${i}/${topic}`, String(n), { qos });
          if (n % 200 === 199) await new Promise((r) => setImmediate(r));
        }
      }
    }),
  );
}
