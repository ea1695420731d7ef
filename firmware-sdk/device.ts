import { EventEmitter } from 'node:events';
import mqtt, { type MqttClient } from 'mqtt';
import { Backoff } from './backoff.ts';
import { renew } from './enroll.ts';
import { errorFromResponse, type HttpResponse, httpsRequest } from './http.ts';
import { type DeviceIdentity, loadIdentity } from './identity.ts';
import { assertSupportedRuntime } from './preflight.ts';
import { type ErrorCode, FleetgateError, isErrorCode } from './protocol/errors.ts';
import { codeFromReason, REASON } from './protocol/mqtt5.ts';
import { verifyServerCertificate } from './protocol/server-certificate.ts';

export interface DeviceOptions {
  /** Identity directory (from enrollment). */
  identityDir: string;
  /** `mqtts://host:8883` or `wss://host:8884/mqtt`. */
  mqttUrl?: string;
  /** `https://host:8443`: for {@link Device.request}, and to learn why a connection was refused. */
  httpsUrl?: string;
  /** `https://host:9443`: for automatic renewal. */
  provisioningUrl?: string;
  /** MQTT keepalive, seconds. */
  keepalive?: number;
  /**
   * MQTT protocol: 5 (default) — the gateway says why it refuses a connection, a message or a
   * session (reason codes, surfaced as fleetgate error codes) — or 3 for MQTT 3.1.1.
   */
  mqttVersion?: 3 | 5;
  /** Renew when this fraction of the certificate's lifetime has passed (default 2/3, ± 5 % jitter). */
  renewAt?: number;
  backoff?: { baseMs?: number; maxMs?: number };
  /** Local source address for the MQTT connection (e.g. 127.0.0.2), to spread many devices over ports. */
  localAddress?: string;
  /** Optional log sink; the SDK never logs on its own. */
  log?: (event: string, detail: Record<string, unknown>) => void;
}

/** Refusals a device cannot fix by retrying: it must stop, not hammer the gateway. */
const FATAL: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  'CERT_REVOKED',
  'CERT_EXPIRED',
  'CERT_UNKNOWN',
  'CERT_INVALID',
  'DEVICE_REVOKED',
  'DEVICE_SUSPENDED',
  'DENYLISTED',
  'NOT_AUTHORIZED',
  'CLIENT_ID_MISMATCH',
  'TOPIC_DENIED',
]);

interface Outgoing {
  topic: string;
  payload: string | Buffer;
  qos: 0 | 1;
  inFlight: boolean;
  resolve(): void;
  reject(err: Error): void;
}

/**
 * A fleet device: MQTT over mTLS with reconnects (exponential backoff, full jitter), an outbox
 * that keeps QoS 1 messages until acknowledged (across reconnects and certificate renewals:
 * at least once), automatic renewal at ~2/3 of the certificate's lifetime, and HTTPS requests
 * with the client certificate. It stops for good on a refusal it cannot fix (revoked,
 * suspended, not authorized) and says why.
 *
 * Events: `connect`, `disconnect` (reason), `message` (topic, payload), `renewed` (identity),
 * `refused` (FleetgateError; the device has stopped).
 *
 * @example
 * const device = new Device({ identityDir: './id', mqttUrl: 'mqtts://127.0.0.1:8883', provisioningUrl: 'https://127.0.0.1:9443' });
 * device.on('refused', (err) => console.error('stopped:', err.code));
 * await device.start();
 * await device.publish(`devices/${device.id}/telemetry`, JSON.stringify({ t: 21.5 }), { qos: 1 });
 */
export class Device extends EventEmitter {
  readonly #opts: DeviceOptions;
  #identity: DeviceIdentity;
  #client: MqttClient | undefined;
  #outbox: Outgoing[] = [];
  #subscriptions = new Map<string, 0 | 1>();
  #backoff: Backoff;
  #stopped = false;
  #refused: FleetgateError | undefined;
  #renewTimer: NodeJS.Timeout | undefined;
  #reconnectTimer: NodeJS.Timeout | undefined;
  #connecting = false;
  /** Connection attempts made (for tests and operators: a refused device makes no more). */
  attempts = 0;
  /** Why the last connection attempt failed (a TLS error, a refused server certificate, …). */
  lastError: Error | undefined;

  constructor(opts: DeviceOptions) {
    super();
    assertSupportedRuntime();
    this.#opts = opts;
    this.#identity = loadIdentity(opts.identityDir);
    this.#backoff = new Backoff(opts.backoff);
  }

  get id(): string {
    return this.#identity.info.deviceId;
  }

  get identity(): DeviceIdentity {
    return this.#identity;
  }

  get connected(): boolean {
    return this.#client?.connected === true;
  }

  /** Why the device stopped, if a refusal stopped it. */
  get refusal(): FleetgateError | undefined {
    return this.#refused;
  }

  #log(event: string, detail: Record<string, unknown> = {}): void {
    this.#opts.log?.(event, { deviceId: this.id, ...detail });
  }

  /** Connects (if an MQTT URL is set) and schedules renewal. Resolves once connected or stopped. */
  async start(): Promise<void> {
    this.#scheduleRenewal();
    if (this.#opts.mqttUrl === undefined) return;
    await new Promise<void>((resolve) => {
      const done = () => {
        this.off('connect', done);
        this.off('refused', done);
        resolve();
      };
      this.once('connect', done);
      this.once('refused', done);
      void this.#connect();
    });
  }

  async #connect(): Promise<void> {
    if (this.#stopped || this.#connecting || this.#opts.mqttUrl === undefined) return;
    this.#connecting = true;
    this.attempts++;
    const id = this.#identity;
    const v5 = (this.#opts.mqttVersion ?? 5) === 5;
    let connack: { reasonCode?: number; properties?: { reasonString?: string } } | undefined;
    try {
      const client = mqtt.connect(this.#opts.mqttUrl, {
        ca: id.caPem,
        cert: id.certPem + id.chainPem,
        key: id.keyPem,
        rejectUnauthorized: true,
        // The server's name is checked against the URL's host (mqtt.js sends it as SNI), and it must
        // be a server certificate: a device certificate of the same CA is not the gateway.
        checkServerIdentity: verifyServerCertificate,
        wsOptions: { checkServerIdentity: verifyServerCertificate },
        clientId: id.info.deviceId,
        protocolVersion: v5 ? 5 : 4,
        keepalive: this.#opts.keepalive ?? 30,
        // A PINGREQ every keepalive, whatever arrives: mqtt.js (5.x) otherwise puts its ping off each
        // time an acknowledgement *arrives*, so a device that published a burst and then only
        // receives its PUBACKs — slowly, while a cluster fails over — sends nothing, and the gateway
        // rightly closes it after 1.5 × keepalive [MQTT-3.1.2-24] (seen in the cluster soak).
        reschedulePings: false,
        clean: true,
        reconnectPeriod: 0,
        connectTimeout: 10_000,
        queueQoSZero: false,
        ...(this.#opts.localAddress !== undefined && { localAddress: this.#opts.localAddress }),
      } as mqtt.IClientOptions);
      // What the gateway says in MQTT 5: the CONNACK's reason, a server DISCONNECT's reason, a PUBACK's reason.
      client.on('packetreceive', (packet) => {
        if (packet.cmd === 'connack') connack = packet as typeof connack;
        else if (packet.cmd === 'disconnect')
          this.#serverDisconnect = packet as { reasonCode?: number; properties?: { reasonString?: string } };
        else if (
          packet.cmd === 'puback' &&
          (packet as { reasonCode?: number }).reasonCode !== undefined &&
          (packet as { reasonCode: number }).reasonCode >= 0x80
        ) {
          this.#pubackReasons.set(
            packet.messageId ?? 0,
            (packet as { properties?: { reasonString?: string } }).properties?.reasonString ?? '',
          );
        }
      });
      await new Promise<void>((resolve, reject) => {
        const settle = (err?: Error) => {
          client.off('connect', onConnect);
          client.off('error', settle);
          client.off('close', onClose);
          if (err === undefined) resolve();
          else {
            client.end(true);
            reject(err);
          }
        };
        const onConnect = () => settle();
        const onClose = () => settle(new Error('connection closed before CONNACK'));
        client.once('connect', onConnect);
        client.once('error', settle);
        client.once('close', onClose);
      });
      this.#connecting = false;
      if (this.#stopped) return void client.end(true);
      this.#client = client;
      this.#serverDisconnect = undefined;
      this.#backoff.reset();
      client.on('message', (topic, payload) => this.emit('message', topic, payload));
      client.on('error', (e) => this.#log('mqtt_error', { error: e.message })); // the close that follows reconnects
      client.once('close', () => this.#closed(client));
      for (const [topic, qos] of this.#subscriptions)
        await client.subscribeAsync(topic, { qos }).catch(() => undefined);
      this.#log('connect', { serial: id.info.serial, mqtt: v5 ? 5 : 3 });
      this.emit('connect');
      this.#pump();
    } catch (err) {
      this.#connecting = false;
      await this.#connectFailed(err as Error & { code?: number | string }, v5 ? connack : undefined);
    }
  }

  /** The last DISCONNECT the gateway sent on the current connection (MQTT 5). */
  #serverDisconnect: { reasonCode?: number; properties?: { reasonString?: string } } | undefined;
  /** Reason strings of refused PUBACKs, by packet id, until the publish callback reads them. */
  readonly #pubackReasons = new Map<number, string>();

  async #connectFailed(
    err: Error & { code?: number | string },
    connack?: { reasonCode?: number; properties?: { reasonString?: string } },
  ): Promise<void> {
    // MQTT 5: the CONNACK says why (the reason string carries the fleetgate code); no second request.
    if (connack?.reasonCode !== undefined && connack.reasonCode >= 0x80) {
      const code = codeFromReason(connack.reasonCode, connack.properties?.reasonString);
      if (FATAL.has(code))
        return this.#refuse(
          new FleetgateError(
            code,
            `the gateway refused this device: ${connack.properties?.reasonString ?? `reason 0x${connack.reasonCode.toString(16)}`}`,
          ),
        );
    } else if (typeof err.code === 'number' && err.code !== 3 && err.code < 0x80) {
      // MQTT 3.1.1 CONNACK 2/4/5: the gateway refused this identity. Ask the HTTPS plane why, if we can.
      return this.#refuse(await this.#why(err.code === 2 ? 'CLIENT_ID_MISMATCH' : 'NOT_AUTHORIZED'));
    }
    if (this.#identity.info.notAfter <= Date.now())
      return this.#refuse(new FleetgateError('CERT_EXPIRED', 'the device certificate expired before it was renewed'));
    this.lastError = err;
    this.#log('connect_failed', { error: err.message, code: err.code });
    this.#retry();
  }

  /** The exact refusal code from the HTTPS plane's whoami, when the gateway gives one. */
  async #why(fallback: ErrorCode): Promise<FleetgateError> {
    if (this.#opts.httpsUrl !== undefined) {
      try {
        const res = await this.request('/v1/whoami');
        if (res.status >= 400) {
          const e = errorFromResponse(res, 'whoami');
          if (isErrorCode(e.code) && FATAL.has(e.code)) return e;
        }
      } catch {
        // the fallback below
      }
    }
    return new FleetgateError(fallback, 'the gateway refused this device');
  }

  #retry(): void {
    if (this.#stopped) return;
    const delay = this.#backoff.next();
    this.#log('reconnect_scheduled', { delayMs: delay });
    this.#reconnectTimer = setTimeout(() => void this.#connect(), delay);
  }

  #closed(client: MqttClient): void {
    if (this.#client !== client) return; // a renewal replaced it
    this.#client = undefined;
    for (const m of this.#outbox) m.inFlight = false; // resent on the next connection
    const said = this.#serverDisconnect;
    this.#serverDisconnect = undefined;
    this.#log(
      'disconnect',
      said?.reasonCode === undefined ? {} : { reasonCode: said.reasonCode, reason: said.properties?.reasonString },
    );
    this.emit('disconnect', said);
    // MQTT 5: the gateway said why. A verdict on this device (Not authorized with a code such as
    // CERT_REVOKED, DEVICE_SUSPENDED, DENYLISTED): stop now, without asking again. Anything else —
    // a kick (0x98), a takeover (0x8E), a restart (0x8B), a timeout: reconnect as usual.
    if (said?.reasonCode === REASON.NOT_AUTHORIZED || said?.reasonCode === REASON.BANNED) {
      const code = codeFromReason(said.reasonCode, said.properties?.reasonString);
      if (FATAL.has(code))
        return this.#refuse(
          new FleetgateError(
            code,
            `the gateway closed the connection: ${said.properties?.reasonString ?? `reason 0x${said.reasonCode.toString(16)}`}`,
          ),
        );
    }
    this.#retry();
  }

  #refuse(err: FleetgateError): void {
    this.#refused = err;
    this.#log('refused', { code: err.code });
    this.stop();
    this.emit('refused', err);
  }

  /** Sends what the outbox holds on the current connection. */
  #pump(): void {
    const client = this.#client;
    if (client === undefined || !client.connected) return;
    for (const m of this.#outbox) {
      if (m.inFlight) continue;
      m.inFlight = true;
      client.publish(m.topic, m.payload, { qos: m.qos }, (err, packet) => {
        if (err !== undefined && err !== null) {
          const reasonCode = (err as Error & { code?: unknown }).code;
          if (typeof reasonCode === 'number' && reasonCode >= 0x80) {
            // MQTT 5: the gateway refused this message (PUBACK 0x87, 0x97, 0x99): final, not resent.
            const id = (packet as { messageId?: number } | undefined)?.messageId ?? 0;
            const text = this.#pubackReasons.get(id);
            this.#pubackReasons.delete(id);
            const i = this.#outbox.indexOf(m);
            if (i >= 0) this.#outbox.splice(i, 1);
            m.reject(
              new FleetgateError(
                codeFromReason(reasonCode, text),
                `the gateway refused the message on ${m.topic}: ${text || `reason 0x${reasonCode.toString(16)}`}`,
              ),
            );
            return;
          }
          m.inFlight = false; // stays queued for the next connection
          return;
        }
        const i = this.#outbox.indexOf(m);
        if (i >= 0) this.#outbox.splice(i, 1);
        m.resolve();
      });
    }
  }

  /**
   * Publishes; a QoS 1 message stays queued (across reconnects and renewals) until the gateway
   * acknowledges it, and the promise settles then.
   */
  publish(topic: string, payload: string | Buffer, opts: { qos?: 0 | 1 } = {}): Promise<void> {
    if (this.#refused !== undefined) return Promise.reject(this.#refused);
    return new Promise((resolve, reject) => {
      this.#outbox.push({ topic, payload, qos: opts.qos ?? 0, inFlight: false, resolve, reject });
      this.#pump();
    });
  }

  /** Subscribes (kept across reconnects); rejects with TOPIC_DENIED when the gateway refuses the filter. */
  async subscribe(topic: string, opts: { qos?: 0 | 1 } = {}): Promise<void> {
    this.#subscriptions.set(topic, opts.qos ?? 0);
    if (!this.#client?.connected) return;
    const granted = await this.#client
      .subscribeAsync(topic, { qos: opts.qos ?? 0 })
      .catch((err: { code?: number; packet?: { granted?: number[] } }) => [
        { qos: err.packet?.granted?.[0] ?? err.code ?? 0x80 },
      ]);
    const code = granted[0]?.qos ?? 0;
    if (code >= 0x80) {
      this.#subscriptions.delete(topic);
      throw new FleetgateError(
        code === 0x80 || code === REASON.NOT_AUTHORIZED ? 'TOPIC_DENIED' : codeFromReason(code),
        `the gateway refused the subscription to ${topic} (0x${code.toString(16)})`,
      );
    }
  }

  /** An HTTPS request through the gateway with the device certificate. */
  async request(
    pathOrUrl: string,
    opts: { method?: string; headers?: Record<string, string>; body?: string | Buffer | NodeJS.ReadableStream } = {},
  ): Promise<HttpResponse> {
    if (this.#opts.httpsUrl === undefined && !pathOrUrl.startsWith('https://'))
      throw new TypeError('request needs an https URL (httpsUrl option)');
    const url = pathOrUrl.startsWith('https://') ? pathOrUrl : `${this.#opts.httpsUrl}${pathOrUrl}`;
    const id = this.#identity;
    return httpsRequest(url, { tls: { ca: id.caPem, cert: id.certPem + id.chainPem, key: id.keyPem }, ...opts });
  }

  #scheduleRenewal(): void {
    if (this.#opts.provisioningUrl === undefined || this.#stopped) return;
    const { notBefore, notAfter } = this.#identity.info;
    const lifetime = notAfter - notBefore;
    const at = notBefore + lifetime * (this.#opts.renewAt ?? 2 / 3) + (Math.random() - 0.5) * 0.1 * lifetime;
    clearTimeout(this.#renewTimer);
    this.#renewTimer = setTimeout(() => void this.renewNow(), Math.max(0, Math.min(at, notAfter - 1_000) - Date.now()));
    this.#renewTimer.unref();
  }

  /**
   * Renews now: a new key and certificate over mTLS, stored atomically, then MQTT reconnects
   * with it; queued QoS 1 messages are resent on the new connection.
   */
  async renewNow(): Promise<void> {
    if (this.#opts.provisioningUrl === undefined || this.#stopped) return;
    try {
      this.#identity = await renew({ server: this.#opts.provisioningUrl, identityDir: this.#opts.identityDir });
    } catch (err) {
      const e = err as FleetgateError;
      if (e instanceof FleetgateError && FATAL.has(e.code)) return this.#refuse(e);
      this.#log('renew_failed', { error: e.message });
      this.#renewTimer = setTimeout(
        () => void this.renewNow(),
        Math.min(this.#backoff.next() + 1_000, Math.max(1_000, this.#identity.info.notAfter - Date.now() - 1_000)),
      );
      this.#renewTimer.unref();
      return;
    }
    this.#log('renewed', { serial: this.#identity.info.serial, notAfter: this.#identity.info.notAfter });
    this.emit('renewed', this.#identity);
    this.#scheduleRenewal();
    const old = this.#client;
    if (old !== undefined) {
      this.#client = undefined; // its close no longer schedules a retry
      for (const m of this.#outbox) m.inFlight = false;
      old.end(true);
      await this.#connect();
    }
  }

  /** Stops: no more connections, renewals or retries. Queued messages are rejected. */
  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#renewTimer);
    clearTimeout(this.#reconnectTimer);
    const client = this.#client;
    this.#client = undefined;
    client?.end(true);
    const err = this.#refused ?? new Error('device stopped');
    for (const m of this.#outbox.splice(0)) m.reject(err);
  }
}
