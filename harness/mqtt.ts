import { readFileSync } from 'node:fs';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import type { Credential } from './pki.ts';

export interface ConnectOptions {
  ca: string;
  clientId?: string;
  protocolVersion?: 3 | 4 | 5;
  keepalive?: number;
  timeoutMs?: number;
  /** Source address on loopback (127.0.0.0/8), for per-address limits. */
  localAddress?: string;
  /** false: resume (or start) a persistent session (3.1.1 clean session 0; MQTT 5: clean start 0 and a day's expiry). */
  clean?: boolean;
  /** MQTT 5 with `clean: false`: the session expiry interval asked for, in seconds (default a day). */
  sessionExpiry?: number;
}

/** An mqtt.js client over mqtts:// or wss:// with a device credential; rejects with the CONNACK code or TLS error. */
export async function connect(url: string, cred: Credential | undefined, opts: ConnectOptions): Promise<MqttClient> {
  const options: IClientOptions = {
    ca: readFileSync(opts.ca),
    ...(cred && { cert: cred.certPem, key: cred.keyPem }),
    clientId: opts.clientId ?? cred?.deviceId ?? 'anonymous',
    protocolVersion: opts.protocolVersion ?? 4,
    keepalive: opts.keepalive ?? 30,
    reconnectPeriod: 0,
    connectTimeout: opts.timeoutMs ?? 15_000,
    rejectUnauthorized: true,
    ...(opts.localAddress !== undefined && { localAddress: opts.localAddress }),
    ...(opts.clean === false && {
      clean: false,
      ...(opts.protocolVersion === 5 && { properties: { sessionExpiryInterval: opts.sessionExpiry ?? 86_400 } }),
    }),
  };
  // STACK-NOTES: without `false`, connectAsync never settles when the server closes before CONNACK.
  const client = await withTimeout(
    mqtt.connectAsync(url, options, false),
    (opts.timeoutMs ?? 15_000) + 1_000,
    'connect',
  );
  return client;
}

export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<T>((_r, reject) => {
      timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
    }),
  ]);
}

/** Resolves once `ok` holds, asked every `everyMs` (rejects after `ms`): a wait for a state, never for a duration. */
export async function until(
  what: string,
  ok: () => boolean | Promise<boolean>,
  ms = 20_000,
  everyMs = 20,
): Promise<void> {
  // The polling stops with the wait: a loop left running after a timeout would keep a failed
  // test file's process alive (its event loop never empties), and the runner would wait for it.
  let gaveUp = false;
  try {
    await withTimeout(
      (async () => {
        while (!gaveUp && !(await ok())) await new Promise((r) => setTimeout(r, everyMs));
      })(),
      ms,
      what,
    );
  } finally {
    gaveUp = true;
  }
}

/**
 * Resolves when the client's connection closes (rejects if it stays open for `ms`). The bound is
 * generous on purpose: it is a safety net for a busy machine, not a latency assertion (the
 * revoke→cut latency is measured by the benchmarks).
 */
export function closed(client: MqttClient, ms = 20_000): Promise<number> {
  const started = Date.now();
  if (!client.connected) return Promise.resolve(0);
  return withTimeout(
    new Promise((resolve) => client.once('close', () => resolve(Date.now() - started))),
    ms,
    'waiting for close',
  );
}

/** The next message on `topic` received by `client`. */
export function nextMessage(client: MqttClient, topic: string, ms = 15_000): Promise<string> {
  return withTimeout(
    new Promise((resolve) => {
      const on = (t: string, payload: Buffer) => {
        if (t !== topic) return;
        client.off('message', on);
        resolve(payload.toString());
      };
      client.on('message', on);
    }),
    ms,
    `message on ${topic}`,
  );
}

/** Collects the payloads `client` receives on topics starting with `prefix`, in order. */
export function collect(client: MqttClient, prefix: string): string[] {
  const got: string[] = [];
  client.on('message', (topic, payload) => {
    if (topic.startsWith(prefix)) got.push(payload.toString());
  });
  return got;
}

/**
 * Publishes probes (`probe-<n>`) from `from` on `topic` until `got` shows one: a subscription
 * made on another node has reached this one through NATS.
 */
export async function linked(from: MqttClient, topic: string, got: string[]): Promise<void> {
  let n = 0;
  await withTimeout(
    (async () => {
      while (!got.some((g) => g.startsWith('probe'))) {
        from.publish(topic, `probe-${n++}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    })(),
    20_000,
    'the first probe across nodes',
  );
}

export async function end(...clients: (MqttClient | undefined)[]): Promise<void> {
  await Promise.all(clients.map((c) => c?.endAsync(true).catch(() => undefined)));
}
