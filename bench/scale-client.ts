// One load process of `npm run bench:scale` (forked by bench/scale.ts, driven over IPC). It holds
// up to ~19,000 mutual-TLS connections (the descriptor limit is per process) from source addresses
// of its own (127.<10 + process>.0.1–250, a few dozen connections each: binding a source address
// makes the kernel pick the port at bind(), not per destination, and with thousands of ports taken
// on one address each bind() scanned for a free one — measured: 29 % of a load process's CPU in
// `inet_bhash2_conflict` at 64,000 connections over 7 addresses, the ramp down to 60/s), each a device speaking
// just enough MQTT 3.1.1 to be one: CONNECT (clean session), PINGREQ within its keepalive,
// PUBLISH QoS 1 when told. No MQTT library: a client's own cost per connection would share the
// two cores with the gateway, and mqtt.js holds far more per connection than a device does.
// In `tls` mode a connection is only the handshake (the bare Node TLS floor's clients).
import { readFileSync } from 'node:fs';
import { type ConnectionOptions, connect, createSecureContext, type SecureContext, type TLSSocket } from 'node:tls';

/** What the parent asks; every command but `watch` is answered with `{ reply: id, ... }`. */
export type ScaleCommand =
  | { op: 'init'; file: string; sourceNet: number; keepaliveSeconds: number }
  | {
      op: 'connect';
      id: number;
      port: number;
      mqtt: boolean;
      from: number;
      to: number;
      inflight: number;
      /** Stop trying once this many have failed in this process (a server at its limit); default never. */
      giveUpAfter?: number;
      /** Per attempt; default 30 s. */
      timeoutMs?: number;
    }
  | { op: 'drop'; id: number; from: number; to: number }
  | { op: 'reconnect'; id: number; on: boolean; port: number; inflight: number }
  | { op: 'watch'; device: string }
  | { op: 'publish'; id: number; from: number; to: number; seconds: number }
  | { op: 'stats'; id: number };

/** Devices of this process: `ids[i]`, `certs[i]` are global device index `indices[i]`. */
export interface ClientShare {
  indices: number[];
  ids: string[];
  certs: string[];
  ca: string;
  key: string;
}

interface Device {
  index: number;
  /** Its place among this process's devices (which source address it connects from). */
  place: number;
  id: string;
  cert: string;
  socket: TLSSocket | undefined;
  ctx: SecureContext | undefined;
  /** CONNACK received (mqtt mode) or handshake done (tls mode), and not closed since. */
  up: boolean;
  /** The parent wants it connected (reconnected after a close while `reconnect` is on). */
  wanted: boolean;
  /** Consecutive failed attempts (the reconnect backoff doubles with them, to 5 s). */
  failures: number;
  pending: Buffer | undefined;
  acks: number;
}

const CONNECT_TIMEOUT_MS = 30_000;
const state = {
  devices: [] as Device[],
  /** Source addresses 127.<sourceNet>.0.1–250, one per device by its place in this process. */
  sourceNet: 10,
  keepalive: 900,
  ca: '',
  key: '',
  watched: new Set<string>(),
  reconnect: undefined as { port: number; inflight: number } | undefined,
  /** Waiting to reconnect, from `head` on (no `shift()`: O(n) on a long array). */
  queue: [] as Device[],
  head: 0,
  inflight: 0,
  errors: new Map<string, number>(),
};

const send = (m: object) => process.send?.(m);
const wallMs = () => performance.timeOrigin + performance.now();

function mqttConnect(clientId: string, keepalive: number): Buffer {
  const id = Buffer.from(clientId);
  const body = Buffer.concat([
    Buffer.from([0, 4]),
    Buffer.from('MQTT'),
    Buffer.from([4, 0x02, keepalive >> 8, keepalive & 0xff, id.length >> 8, id.length & 0xff]),
    id,
  ]);
  return Buffer.concat([Buffer.from([0x10, body.length]), body]);
}

function publishPacket(topic: string, packetId: number, payload: string): Buffer {
  const t = Buffer.from(topic);
  const p = Buffer.from(payload);
  const len = 2 + t.length + 2 + p.length;
  if (len > 127) throw new Error('bench publish packets stay under 128 bytes');
  return Buffer.concat([
    Buffer.from([0x32, len, t.length >> 8, t.length & 0xff]),
    t,
    Buffer.from([packetId >> 8, packetId & 0xff]),
    p,
  ]);
}

/** Whole packets in `d.pending`: CONNACK marks it up, PUBACK counts; PINGRESP and the rest are ignored. */
function onData(d: Device, chunk: Buffer, done: (ok: boolean, why?: string) => void): void {
  let b = d.pending === undefined ? chunk : Buffer.concat([d.pending, chunk]);
  for (;;) {
    if (b.length < 2) break;
    let len = 0;
    let mul = 1;
    let i = 1;
    for (; i < 5 && i < b.length; i++) {
      len += (b[i]! & 0x7f) * mul;
      mul *= 128;
      if ((b[i]! & 0x80) === 0) break;
    }
    if (i >= b.length || b.length < i + 1 + len) break;
    const type = b[0]! >> 4;
    if (type === 2) done(b[i + 2] === 0, `CONNACK ${b[i + 2]}`);
    else if (type === 4) d.acks++;
    b = b.subarray(i + 1 + len);
  }
  d.pending = b.length === 0 ? undefined : Buffer.from(b);
}

function count(why: string): void {
  state.errors.set(why, (state.errors.get(why) ?? 0) + 1);
}

/** One attempt to connect `d`; resolves true once it is up. */
function attempt(d: Device, port: number, mqtt: boolean, timeoutMs = CONNECT_TIMEOUT_MS): Promise<boolean> {
  return new Promise((resolve) => {
    let settled = false;
    // `localAddress` reaches the TCP connect (its type is missing from tls.ConnectionOptions).
    const sock = connect({
      host: '127.0.0.1',
      port,
      localAddress: `127.${state.sourceNet}.0.${1 + (d.place % 250)}`,
      servername: 'localhost',
      // Made once per device and kept, as a device loads its key and certificate once.
      secureContext: (d.ctx ??= createSecureContext({ ca: state.ca, cert: d.cert, key: state.key })),
    } as ConnectionOptions);
    d.socket = sock;
    d.pending = undefined;
    const timer = setTimeout(() => finish(false, 'timeout'), timeoutMs);
    const finish = (ok: boolean, why?: string) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (ok) {
        d.up = true;
        d.failures = 0;
      } else {
        count(why ?? 'failed');
        sock.destroy();
      }
      resolve(ok);
    };
    sock.setNoDelay(true);
    sock.once('secureConnect', () => {
      if (mqtt) sock.write(mqttConnect(d.id, state.keepalive));
      else finish(true);
    });
    if (mqtt) sock.on('data', (chunk: Buffer) => onData(d, chunk, finish));
    sock.on('error', (e: NodeJS.ErrnoException) => finish(false, e.code ?? e.message));
    sock.once('close', () => {
      finish(false, 'closed before CONNACK');
      if (d.socket !== sock) return;
      d.socket = undefined;
      const wasUp = d.up;
      d.up = false;
      if (wasUp && state.watched.delete(d.id)) send({ op: 'cut', device: d.id, at: wallMs() });
      if (wasUp && d.wanted && state.reconnect !== undefined) enqueue(d);
    });
  });
}

/** Devices waiting to reconnect, `inflight` attempts at a time; a failure retries after 0.5–5 s. */
function enqueue(d: Device): void {
  state.queue.push(d);
  pump();
}

function pump(): void {
  const r = state.reconnect;
  if (r === undefined) return;
  while (state.inflight < r.inflight && state.head < state.queue.length) {
    const d = state.queue[state.head++]!;
    if (state.head === state.queue.length) {
      state.queue = [];
      state.head = 0;
    }
    if (!d.wanted || d.up) continue;
    state.inflight++;
    void attempt(d, r.port, true).then((ok) => {
      state.inflight--;
      if (!ok && d.wanted) {
        d.failures++;
        const backoff = Math.min(5_000, 250 * 2 ** d.failures) * (0.5 + Math.random() / 2);
        setTimeout(() => enqueue(d), backoff);
      }
      pump();
    });
  }
}

async function connectRange(c: Extract<ScaleCommand, { op: 'connect' }>): Promise<object> {
  const todo = state.devices.filter((d) => d.index >= c.from && d.index < c.to && !d.up);
  let next = 0;
  let connected = 0;
  let failed = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: Math.min(c.inflight, todo.length) }, async () => {
      while (next < todo.length && failed < (c.giveUpAfter ?? Number.POSITIVE_INFINITY)) {
        const d = todo[next++]!;
        d.wanted = true;
        // One retry (unless giving up early): a connection refused for the machine's own reasons is not the server's limit.
        const once = () => attempt(d, c.port, c.mqtt, c.timeoutMs);
        if ((await once()) || (c.giveUpAfter === undefined && (await once()))) connected++;
        else {
          failed++;
          d.wanted = false;
        }
      }
    }),
  );
  return { connected, failed, untried: todo.length - next, ms: performance.now() - t0 };
}

async function dropRange(from: number, to: number): Promise<object> {
  const closing = state.devices
    .filter((d) => d.index >= from && d.index < to)
    .map((d) => {
      d.wanted = false;
      const s = d.socket;
      if (s === undefined || s.destroyed) return Promise.resolve();
      return new Promise<void>((r) => {
        s.once('close', () => r());
        s.destroy();
      });
    });
  await Promise.all(closing);
  return { dropped: closing.length };
}

/** Each device in [from, to) publishes one QoS 1 message a second for `seconds` (start spread over the first second). */
async function publishRange(from: number, to: number, seconds: number): Promise<object> {
  const devices = state.devices.filter((d) => d.index >= from && d.index < to && d.up);
  let sent = 0;
  const acks0 = devices.reduce((n, d) => n + d.acks, 0);
  await Promise.all(
    devices.map(async (d) => {
      await new Promise((r) => setTimeout(r, Math.random() * 1_000));
      const t0 = performance.now();
      for (let n = 0; n < seconds; n++) {
        const at = t0 + n * 1_000;
        const wait = at - performance.now();
        if (wait > 0) await new Promise((r) => setTimeout(r, wait));
        if (d.socket === undefined || !d.up) break;
        d.socket.write(publishPacket(`devices/${d.id}/telemetry`, (n % 65_535) + 1, `${n}`));
        sent++;
      }
    }),
  );
  // Every PUBACK, or 15 s of none.
  const acked = () => devices.reduce((n, d) => n + d.acks, 0) - acks0;
  let last = acked();
  for (let quiet = 0; acked() < sent && quiet < 60; ) {
    await new Promise((r) => setTimeout(r, 250));
    const now = acked();
    quiet = now === last ? quiet + 1 : 0;
    last = now;
  }
  return { publishers: devices.length, sent, acked: acked() };
}

function stats(): object {
  const cpu = process.cpuUsage();
  return {
    up: state.devices.reduce((n, d) => n + (d.up ? 1 : 0), 0),
    wanted: state.devices.reduce((n, d) => n + (d.wanted ? 1 : 0), 0),
    rss: process.memoryUsage().rss,
    cpu: (cpu.user + cpu.system) / 1e6,
    errors: Object.fromEntries(state.errors),
  };
}

/** A PINGREQ from every connected device once per half keepalive, spread evenly over it. */
let cursor = 0;
setInterval(() => {
  const n = state.devices.length;
  if (n === 0) return;
  const per = Math.ceil(n / (state.keepalive / 2));
  for (let k = 0; k < per; k++) {
    const d = state.devices[cursor++ % n]!;
    if (d.up) d.socket?.write(Buffer.from([0xc0, 0]));
  }
}, 1_000).unref();

process.on('message', (m: ScaleCommand) => {
  const answer = (id: number, work: Promise<object> | object) =>
    void Promise.resolve(work).then((r) => send({ reply: id, ...r }));
  switch (m.op) {
    case 'init': {
      const share = JSON.parse(readFileSync(m.file, 'utf8')) as ClientShare;
      state.sourceNet = m.sourceNet;
      state.keepalive = m.keepaliveSeconds;
      state.ca = share.ca;
      state.key = share.key;
      share.indices.forEach((index, i) => {
        const d: Device = {
          index,
          place: i,
          id: share.ids[i]!,
          cert: share.certs[i]!,
          socket: undefined,
          ctx: undefined,
          up: false,
          wanted: false,
          failures: 0,
          pending: undefined,
          acks: 0,
        };
        state.devices.push(d);
      });
      send({ reply: 0, devices: state.devices.length });
      break;
    }
    case 'connect':
      answer(m.id, connectRange(m));
      break;
    case 'drop':
      answer(m.id, dropRange(m.from, m.to));
      break;
    case 'reconnect':
      state.reconnect = m.on ? { port: m.port, inflight: m.inflight } : undefined;
      if (m.on) for (const d of state.devices) if (d.wanted && !d.up && d.socket === undefined) enqueue(d);
      answer(m.id, {});
      break;
    case 'watch':
      state.watched.add(m.device);
      break;
    case 'publish':
      answer(m.id, publishRange(m.from, m.to, m.seconds));
      break;
    case 'stats':
      answer(m.id, stats());
      break;
  }
});
// The parent gone (finished, failed, killed): nothing stays connected.
process.on('disconnect', () => process.exit(0));
