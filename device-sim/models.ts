import { join } from 'node:path';
import { Device } from '../firmware-sdk/device.ts';
import { type FleetgateError, toFleetgateError } from '../firmware-sdk/protocol/errors.ts';
import type { PlannedDevice } from './fleet.ts';
import type { Report } from './report.ts';

export interface ModelOptions {
  identitiesDir: string;
  mqttUrl: string;
  mqttVersion: 3 | 5;
  httpsUrl: string;
  provisioningUrl: string;
  /** Telemetry messages per second per sensor (and per child, for gateways). */
  rate: number;
  qos: 0 | 1;
  payloadBytes: number;
  /** Camera upload size, bytes, and one upload every this many ms. */
  uploadBytes: number;
  uploadEveryMs: number;
  uploadPath: string;
  localAddress?: string;
}

/** One running simulated device: its SDK Device, what it sent, what it saw. */
export class SimDevice {
  readonly plan: PlannedDevice;
  readonly device: Device;
  readonly children: string[];
  /** Acknowledged QoS 1 sequence numbers per publishing identity (itself or a child). */
  readonly acked = new Map<string, Set<number>>();
  readonly foreign: string[] = [];
  disconnects = 0;
  cutAt: number | undefined;
  refusedCode: string | undefined;
  #timers: NodeJS.Timeout[] = [];
  #seq = 0;
  #stopping = false;

  constructor(plan: PlannedDevice, children: string[], o: ModelOptions, report: Report) {
    this.plan = plan;
    this.children = children;
    this.device = new Device({
      identityDir: join(o.identitiesDir, plan.id),
      mqttUrl: o.mqttUrl,
      mqttVersion: o.mqttVersion,
      httpsUrl: o.httpsUrl,
      provisioningUrl: o.provisioningUrl,
      keepalive: 60,
      backoff: { baseMs: 500, maxMs: 10_000 },
      ...(o.localAddress !== undefined && { localAddress: o.localAddress }),
    });
    this.device.on('disconnect', () => {
      this.disconnects++;
      this.cutAt ??= Date.now();
    });
    this.device.on('refused', (e: FleetgateError) => {
      this.refusedCode = e.code;
      report.error(e.code);
    });
    this.device.on('message', (topic: string) => {
      // A device may only ever see its own commands.
      if (!topic.startsWith(`devices/${plan.id}/`)) this.foreign.push(topic);
    });
  }

  /** Connects (measuring connect latency), then runs the model until stop(). */
  async start(o: ModelOptions, report: Report): Promise<void> {
    const t0 = performance.now();
    await this.device.start();
    if (!this.device.connected) return;
    report.connect.recordValue(Math.max(1, Math.round((performance.now() - t0) * 1000)));
    report.connected++;
    report.handshakes++;
    this.device.on('connect', () => {
      report.handshakes++;
    });
    await this.device
      .subscribe(`devices/${this.plan.id}/commands/#`, { qos: 1 })
      .catch(() => report.error('SUBSCRIBE_FAILED'));
    const publishers = this.plan.type === 'gateway' ? this.children : [this.plan.id];
    const every = 1000 / o.rate;
    for (const [i, who] of publishers.entries()) {
      // Spread the first messages so a fleet does not publish in lockstep.
      const first = setTimeout(
        () => {
          this.#timers.push(setInterval(() => this.#telemetry(who, o, report), every));
        },
        Math.random() * every + i,
      );
      this.#timers.push(first);
    }
    if (this.plan.type === 'camera') {
      this.#timers.push(setInterval(() => void this.#upload(o, report), o.uploadEveryMs));
      this.#timers.push(
        setInterval(
          () =>
            void this.device
              .publish(`devices/${this.plan.id}/motion`, JSON.stringify({ at: Date.now() }), { qos: 0 })
              .catch(() => undefined),
          2_000,
        ),
      );
    }
  }

  #telemetry(who: string, o: ModelOptions, report: Report): void {
    const seq = this.#seq++;
    const payload = JSON.stringify({
      seq,
      t: 20 + Math.random() * 5,
      pad: 'x'.repeat(Math.max(0, o.payloadBytes - 40)),
    });
    report.published++;
    this.device.publish(`devices/${who}/telemetry`, payload, { qos: o.qos }).then(
      () => {
        let set = this.acked.get(who);
        if (set === undefined) this.acked.set(who, (set = new Set()));
        set.add(seq);
      },
      (err: unknown) => {
        if (this.#stopping) return; // the run is over: messages still queued are simply not sent
        report.error(toFleetgateError(err).code === 'INTERNAL' ? 'PUBLISH_ABANDONED' : toFleetgateError(err).code);
      },
    );
  }

  /** Every request proves the certificate again: a whoami (always routed), then the upload. */
  async #upload(o: ModelOptions, report: Report): Promise<void> {
    await this.#https(report, () => this.device.request('/v1/whoami'));
    await this.#https(report, () =>
      this.device.request(`${o.uploadPath}/${this.plan.id}-${Date.now()}.jpg`, {
        method: 'POST',
        body: Buffer.alloc(o.uploadBytes, 0xff),
        headers: { 'content-type': 'image/jpeg' },
      }),
    );
  }

  async #https(report: Report, send: () => Promise<{ status: number }>): Promise<void> {
    const t0 = performance.now();
    try {
      const res = await send();
      if (res.status === 404) report.uploadsSkipped++;
      else if (res.status >= 400) report.error(`HTTP_${res.status}`);
      else {
        report.httpsOk++;
        report.https.recordValue(Math.max(1, Math.round((performance.now() - t0) * 1000)));
      }
    } catch (err) {
      report.error(toFleetgateError(err).code);
    }
  }

  stop(): void {
    this.#stopping = true;
    for (const t of this.#timers) clearInterval(t);
    this.device.stop();
  }
}
