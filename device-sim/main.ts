import { readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Command, CommanderError, InvalidArgumentError } from 'commander';
import { Device } from '../firmware-sdk/device.ts';
import { checkBadIdentities, checkIsolation } from './checks.ts';
import { ensureIdentities, fleetgateCli, type PlannedDevice, planFleet } from './fleet.ts';
import { type ModelOptions, SimDevice } from './models.ts';
import { Progress, Report } from './report.ts';

/** Every knob of a run; a scenario file (JSON) sets any of them, flags override it. */
export interface SimOptions {
  sensors: number;
  gateways: number;
  children: number;
  cameras: number;
  duration: number; // seconds
  ramp: number; // connections per second
  rate: number; // telemetry messages per second per sensor
  qos: 0 | 1;
  payloadBytes: number;
  uploadBytes: number;
  uploadEvery: number; // seconds
  uploadPath: string;
  check: boolean;
  revokeDuring: number;
  renewDuring: number;
  cutBoundMs: number;
  /** Seconds the service subscriber may take to connect before the run is abandoned. */
  connectTimeout: number;
  data: string;
  identities: string;
  mqtt: string;
  /** MQTT 5 (default) or 3.1.1 for every simulated device and the checks. */
  mqttVersion: 3 | 5;
  https: string;
  provision: string;
  prefix: string;
  sourceAddresses: number;
  gatewayPid?: number;
  json?: string;
  concurrency: number;
}

const DEFAULTS: SimOptions = {
  sensors: 10,
  gateways: 0,
  children: 3,
  cameras: 0,
  duration: 30,
  ramp: 100,
  rate: 1,
  qos: 1,
  payloadBytes: 64,
  uploadBytes: 64 * 1024,
  uploadEvery: 5,
  uploadPath: '/upload',
  check: false,
  revokeDuring: 0,
  renewDuring: 0,
  cutBoundMs: 1_000,
  connectTimeout: 20,
  data: './data',
  identities: './data/sim-identities',
  mqtt: 'mqtts://127.0.0.1:8883',
  mqttVersion: 5,
  https: 'https://127.0.0.1:8443',
  provision: 'https://127.0.0.1:9443',
  prefix: 'sim',
  sourceAddresses: 0,
  concurrency: 16,
};

const int = (flag: string) => (v: string) => {
  if (!/^\d+$/.test(v)) throw new InvalidArgumentError(`${flag} must be a non-negative integer`);
  return Number(v);
};
const num = (flag: string) => (v: string) => {
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError(`${flag} must be a positive number`);
  return n;
};

function parse(argv: string[]): SimOptions {
  const cmd = new Command('device-sim')
    .exitOverride()
    .configureOutput({ outputError: () => undefined })
    .description(
      'simulate a fleet (sensors, gateways with children, cameras), each device enrolled through the real flow',
    )
    .option('--scenario <file>', 'JSON scenario (any option below, camelCase); flags override it')
    .option('--sensors <n>', 'sensors', int('--sensors'))
    .option('--gateways <n>', 'gateway devices', int('--gateways'))
    .option('--children <n>', 'registered child sensors per gateway', int('--children'))
    .option('--cameras <n>', 'cameras (HTTPS uploads + MQTT motion events)', int('--cameras'))
    .option('--duration <s>', 'run time after the ramp, seconds', num('--duration'))
    .option('--ramp <n>', 'new connections per second', num('--ramp'))
    .option('--rate <n>', 'telemetry messages per second per sensor', num('--rate'))
    .option('--qos <n>', '0 or 1', (v) => {
      if (v !== '0' && v !== '1') throw new InvalidArgumentError('--qos is 0 or 1');
      return Number(v);
    })
    .option('--payload-bytes <n>', 'telemetry payload size', int('--payload-bytes'))
    .option('--upload-bytes <n>', 'camera upload size', int('--upload-bytes'))
    .option('--upload-every <s>', 'seconds between uploads per camera', num('--upload-every'))
    .option('--upload-path <path>', 'gateway HTTPS route for uploads')
    .option('--check', 'correctness mode: exit ≠ 0 when a check fails')
    .option(
      '--revoke-during <n>',
      'revoke this many sensors mid-run (checks each is cut and stays out)',
      int('--revoke-during'),
    )
    .option('--renew-during <n>', 'renew this many devices mid-run (checks they stay connected)', int('--renew-during'))
    .option('--cut-bound-ms <ms>', 'the revoke → cut bound the check enforces', int('--cut-bound-ms'))
    .option(
      '--connect-timeout <s>',
      'give up when the service subscriber cannot connect in this time (default 20)',
      num('--connect-timeout'),
    )
    .option('--data <dir>', 'fleetgate data directory (to register devices and issue tokens)')
    .option('--identities <dir>', 'where device identities are cached between runs')
    .option('--mqtt <3|5|url>', 'MQTT protocol: 5 (default) or 3 for 3.1.1; a URL here is read as --mqtt-url')
    .option('--mqtt-url <url>', 'gateway MQTT URL')
    .option('--https <url>', 'gateway HTTPS URL')
    .option('--provision <url>', 'provisioning URL')
    .option('--prefix <id>', 'device id prefix')
    .option('--source-addresses <n>', 'spread connections over 127.0.0.1..n (0: automatic)', int('--source-addresses'))
    .option('--gateway-pid <pid>', "report the gateway's RSS", int('--gateway-pid'))
    .option('--json <file>', 'write the whole report as JSON')
    .option('--concurrency <n>', 'parallel enrollments', int('--concurrency'));
  cmd.parse(argv, { from: 'user' });
  const flags = cmd.opts() as Partial<SimOptions> & { scenario?: string; mqttUrl?: string };
  // --mqtt 3|5 picks the protocol; --mqtt URL (the flag's older meaning) still sets the URL.
  if (flags.mqtt === '3' || flags.mqtt === '5') {
    flags.mqttVersion = Number(flags.mqtt) as 3 | 5;
    delete flags.mqtt;
  } else if (flags.mqtt !== undefined && !/^(mqtts|wss):\/\//.test(flags.mqtt)) {
    throw new InvalidArgumentError(`--mqtt is 3, 5 or an mqtts:// / wss:// URL, not ${JSON.stringify(flags.mqtt)}`);
  }
  if (flags.mqttUrl !== undefined) flags.mqtt = flags.mqttUrl;
  delete flags.mqttUrl;
  const scenario =
    flags.scenario === undefined ? {} : (JSON.parse(readFileSync(flags.scenario, 'utf8')) as Partial<SimOptions>);
  const merged = {
    ...DEFAULTS,
    ...scenario,
    ...Object.fromEntries(Object.entries(flags).filter(([k, v]) => v !== undefined && k !== 'scenario')),
  } as SimOptions;
  if (flags.identities === undefined && scenario.identities === undefined)
    merged.identities = join(merged.data, 'sim-identities');
  return merged;
}

/** `ulimit -n` must fit every connection (and then some): say what to raise, before starting. */
function checkOpenFiles(needed: number): void {
  let soft = Number.POSITIVE_INFINITY;
  try {
    const line = readFileSync('/proc/self/limits', 'utf8')
      .split('\n')
      .find((l) => l.startsWith('Max open files'));
    soft = Number(line?.split(/\s{2,}/)[1]);
  } catch {
    return;
  }
  if (Number.isFinite(soft) && soft < needed) {
    throw new Error(
      `the open-file limit is ${soft} but this run needs about ${needed}: raise it first (ulimit -n ${Math.ceil(needed * 1.2)}), and the gateway's too`,
    );
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Until `done()` holds, checking every 100 ms, for at most `ms`. */
async function waitUntil(done: () => boolean, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (!done() && Date.now() < deadline) await sleep(100);
}
const rssOf = (pid: number) =>
  Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0) * 1024;

/**
 * One simulator run, in order: plan the fleet and make sure every device has an identity →
 * start the service subscriber → ramp the devices up → the run, with its scheduled events
 * (commands, renewals, revocations) → stop, account for every acknowledged message → checks.
 */
export async function run(o: SimOptions): Promise<Report> {
  const report = new Report();
  const progress = new Progress();
  const { plan, ca, probe } = await prepare(o, report, progress);
  const model = modelOptions(o);
  const { service, received } = await startService(o, plan, report);
  const rssStart = o.gatewayPid === undefined ? undefined : rssOf(o.gatewayPid);
  const sims = await rampUp(o, plan, model, report, progress);
  const runStart = Date.now();
  const { events, revoked, cutAt } = scheduleEvents(o, sims, service, report);
  while (Date.now() - runStart < o.duration * 1000) {
    await sleep(500);
    progress.line(runLine(report, sims, runStart));
  }
  await Promise.all(events);
  progress.endLine();
  if (o.gatewayPid !== undefined && rssStart !== undefined)
    report.gatewayRss = { startBytes: rssStart, endBytes: rssOf(o.gatewayPid) };

  // A revoked device must come back and be refused before the devices stop: wait for that
  // (bounded by --cut-bound-ms), not for a fixed time — on a busy machine its backoff may outlast the run.
  await waitUntil(() => revoked.every((s) => s.refusedCode !== undefined), o.cutBoundMs);
  for (const s of sims) s.stop();
  await sleep(Math.max(2_000, 1_000 / o.rate + 500)); // the last acknowledged messages reach the service
  const lostWhere = account(report, sims, received);
  if (o.check) await verify({ o, report, sims, revoked, cutAt, lostWhere, ca, probe });
  service.stop();
  return report;
}

/** The fleet's plan, and an identity for each of its devices (and the probe, with --check). */
async function prepare(o: SimOptions, report: Report, progress: Progress) {
  const plan = planFleet(o);
  const connections = plan.devices.filter((d) => !d.child).length + 1;
  checkOpenFiles(connections + 256);
  const ca = await fleetgateCli(['ca', 'cert', '--data', o.data]);
  const probe: PlannedDevice = { id: `${o.prefix}-probe`, type: 'sensor' };
  const withProbe = { ...plan, devices: o.check ? [...plan.devices, probe] : plan.devices };
  await ensureIdentities(withProbe, {
    dataDir: o.data,
    identitiesDir: o.identities,
    provisioningUrl: o.provision,
    ca,
    concurrency: o.concurrency,
    report,
    progress,
  });
  plan.devices = withProbe.devices.filter((d) => d.id !== probe.id);
  return { plan, ca, probe };
}

function modelOptions(o: SimOptions): ModelOptions {
  return {
    identitiesDir: o.identities,
    mqttUrl: o.mqtt,
    mqttVersion: o.mqttVersion,
    httpsUrl: o.https,
    provisioningUrl: o.provision,
    rate: o.rate,
    qos: o.qos,
    payloadBytes: o.payloadBytes,
    uploadBytes: o.uploadBytes,
    uploadEveryMs: o.uploadEvery * 1000,
    uploadPath: o.uploadPath,
  };
}

/** The service subscriber: counts what arrives, per publishing device. */
async function startService(o: SimOptions, plan: ReturnType<typeof planFleet>, report: Report) {
  const received = new Map<string, Set<number>>();
  const service = new Device({
    identityDir: join(o.identities, plan.service.id),
    mqttUrl: o.mqtt,
    mqttVersion: o.mqttVersion,
    keepalive: 60,
  });
  service.on('message', (topic: string, payload: Buffer) => {
    const [, who, kind] = topic.split('/');
    if (kind !== 'telemetry' || who === undefined) return;
    report.received++;
    const seq = (JSON.parse(payload.toString()) as { seq: number }).seq;
    let set = received.get(who);
    if (set === undefined) received.set(who, (set = new Set()));
    set.add(seq);
  });
  let serviceTimer: NodeJS.Timeout | undefined;
  await Promise.race([
    service.start(),
    new Promise<void>((resolve) => {
      serviceTimer = setTimeout(resolve, o.connectTimeout * 1000);
    }),
  ]);
  clearTimeout(serviceTimer);
  if (!service.connected) {
    service.stop();
    throw new Error(
      `the service subscriber could not connect to ${o.mqtt}: ${service.refusal?.code ?? service.lastError?.message ?? 'unreachable'}`,
    );
  }
  await service.subscribe('devices/+/telemetry', { qos: 1 });
  return { service, received };
}

/** Starts the devices at `--ramp` per second, spread over source addresses past 20,000 connections. */
async function rampUp(
  o: SimOptions,
  plan: ReturnType<typeof planFleet>,
  model: ModelOptions,
  report: Report,
  progress: Progress,
): Promise<SimDevice[]> {
  const top = plan.devices.filter((d) => !d.child);
  report.planned = top.length;
  const sources = o.sourceAddresses > 0 ? o.sourceAddresses : Math.max(1, Math.ceil(top.length / 20_000));
  const sims: SimDevice[] = top.map(
    (d, i) =>
      new SimDevice(
        d,
        plan.devices.filter((c) => c.parent === d.id).map((c) => c.id),
        { ...model, ...(sources > 1 && { localAddress: `127.0.0.${(i % sources) + 1}` }) },
        report,
      ),
  );
  const started: Promise<void>[] = [];
  const rampStart = Date.now();
  report.loadStarted = rampStart;
  for (const [i, sim] of sims.entries()) {
    started.push(sim.start(model, report).catch((err: Error) => report.error(err.message.slice(0, 40))));
    const due = rampStart + ((i + 1) * 1000) / o.ramp;
    if (due > Date.now()) await sleep(due - Date.now());
    progress.line(`ramp: ${i + 1}/${sims.length} started, ${report.connected} connected`);
  }
  await Promise.all(started);
  report.rampSeconds = Math.round((Date.now() - rampStart) / 100) / 10;
  progress.endLine();
  process.stdout.write(
    `connected ${report.connected}/${sims.length} in ${((Date.now() - rampStart) / 1000).toFixed(1)} s; running ${o.duration} s\n`,
  );
  return sims;
}

/** The progress line during the run. */
function runLine(report: Report, sims: SimDevice[], runStart: number): string {
  // The rate is from the first connection, not from enrollment.
  const seconds = Math.max(1, (Date.now() - (report.loadStarted ?? report.started)) / 1000);
  const rate = (report.published / seconds).toFixed(0);
  const connected = sims.filter((s) => s.device.connected).length;
  const errors = [...report.errors.values()].reduce((a, b) => a + b, 0);
  return `t=${Math.round((Date.now() - runStart) / 1000)}s connected=${connected}/${sims.length} published=${report.published} (${rate}/s) received=${report.received} https=${report.httpsOk} errors=${errors}`;
}

/** What happens during the run: commands to every device (--check), renewals at a third, revocations at half. */
function scheduleEvents(o: SimOptions, sims: SimDevice[], service: Device, report: Report) {
  const sensors = sims.filter((s) => s.plan.type === 'sensor' && s.device.connected);
  const revoked = o.revokeDuring > 0 ? sensors.slice(-o.revokeDuring) : [];
  const renewed =
    o.renewDuring > 0 ? sims.filter((s) => s.device.connected && !revoked.includes(s)).slice(0, o.renewDuring) : [];
  const events: Promise<void>[] = [];
  // Commands to every device: each must see its own only.
  if (o.check) events.push(sleep(1_000).then(() => commandEveryDevice(sims, service)));
  if (renewed.length > 0) events.push(sleep((o.duration * 1000) / 3).then(() => renewMidRun(renewed, report)));
  const cutAt = new Map<SimDevice, number>();
  if (revoked.length > 0) events.push(sleep((o.duration * 1000) / 2).then(() => revokeMidRun(o, revoked, cutAt)));
  return { events, revoked, cutAt };
}

async function commandEveryDevice(sims: SimDevice[], service: Device): Promise<void> {
  await Promise.all(
    sims.map((s) => service.publish(`devices/${s.plan.id}/commands/ping`, 'ping', { qos: 1 }).catch(() => undefined)),
  );
}

async function renewMidRun(renewed: SimDevice[], report: Report): Promise<void> {
  const before = new Map(renewed.map((s) => [s, s.device.identity.info.serial]));
  await Promise.all(renewed.map((s) => s.device.renewNow()));
  await sleep(1_000);
  const bad = renewed.filter((s) => s.device.identity.info.serial === before.get(s) || !s.device.connected);
  report.check(
    'renewal mid-run keeps devices connected',
    bad.length === 0,
    `${renewed.length - bad.length}/${renewed.length} renewed and connected`,
  );
}

async function revokeMidRun(o: SimOptions, revoked: SimDevice[], cutAt: Map<SimDevice, number>): Promise<void> {
  for (const s of revoked) s.cutAt = undefined;
  await Promise.all(
    revoked.map(async (s) => {
      const args = ['device', 'revoke', s.plan.id, '--reason', 'keyCompromise', '--json', '--data', o.data];
      const out = await fleetgateCli(args);
      // The registry's commit time (not when the CLI process returned, which may be after the cut).
      const committed = (JSON.parse(out) as { device?: { updatedAt?: number } }).device?.updatedAt;
      cutAt.set(s, committed ?? Date.now());
    }),
  );
}

/**
 * What was delivered, always (with or without --check): acknowledged by the gateway vs received
 * by the service; returns where acknowledged messages went missing (`device:count`).
 */
function account(report: Report, sims: SimDevice[], received: Map<string, Set<number>>): string[] {
  let acknowledged = 0;
  let missing = 0;
  const where: string[] = [];
  for (const s of sims) {
    for (const [who, acked] of s.acked) {
      acknowledged += acked.size;
      const got = received.get(who);
      let lost = 0;
      for (const n of acked) if (got === undefined || !got.has(n)) lost++;
      if (lost > 0) where.push(`${who}:${lost}`);
      missing += lost;
    }
  }
  report.acknowledged = acknowledged;
  report.lostAcknowledged = missing;
  return where;
}

async function verify(x: {
  o: SimOptions;
  report: Report;
  sims: SimDevice[];
  revoked: SimDevice[];
  cutAt: Map<SimDevice, number>;
  lostWhere: string[];
  ca: string;
  probe: PlannedDevice;
}): Promise<void> {
  const { o, report, sims, revoked, cutAt, lostWhere } = x;
  if (o.qos === 1) {
    const missing = report.lostAcknowledged;
    report.check(
      'every acknowledged QoS 1 message reached the service',
      missing === 0,
      missing === 0 ? `${report.acknowledged} messages` : `${missing} missing (${lostWhere.slice(0, 5).join(', ')})`,
    );
  }
  const foreign = sims.filter((s) => s.foreign.length > 0);
  report.check(
    "no device received another device's commands",
    foreign.length === 0,
    foreign.length === 0
      ? `${sims.length} devices`
      : foreign
          .slice(0, 3)
          .map((s) => `${s.plan.id} saw ${s.foreign[0]}`)
          .join('; '),
  );
  if (revoked.length > 0) {
    const late: string[] = [];
    for (const s of revoked) {
      const committed = cutAt.get(s);
      const cut = s.cutAt;
      if (committed === undefined || cut === undefined) {
        late.push(`${s.plan.id}: not cut`);
        continue;
      }
      const ms = Math.max(0, cut - committed);
      report.cutLatency.push(ms);
      if (ms > o.cutBoundMs) late.push(`${s.plan.id}: ${ms} ms`);
    }
    report.check(
      `revoked devices are cut within ${o.cutBoundMs} ms`,
      late.length === 0,
      late.length === 0 ? `${revoked.length} devices` : late.join(', '),
    );
    const back = revoked.filter((s) => s.device.connected || s.refusedCode !== 'CERT_REVOKED');
    report.check(
      'revoked devices stay out (refused with CERT_REVOKED)',
      back.length === 0,
      back.length === 0
        ? `${revoked.length} devices`
        : back.map((s) => `${s.plan.id}: ${s.refusedCode ?? 'no refusal'}`).join(', '),
    );
    const disturbed = sims.filter((s) => !revoked.includes(s) && s.refusedCode !== undefined);
    report.check(
      'the other devices continue untouched',
      disturbed.length === 0,
      disturbed.length === 0
        ? `${sims.length - revoked.length} devices`
        : disturbed.map((s) => `${s.plan.id}: ${s.refusedCode}`).join(', '),
    );
  }
  const endpoints = {
    mqttUrl: o.mqtt,
    httpsUrl: o.https,
    provisioningUrl: o.provision,
    ca: x.ca,
    dataDir: o.data,
    mqttVersion: o.mqttVersion,
  };
  const victim = sims.find((s) => !revoked.includes(s))?.plan.id ?? `${o.prefix}-nobody`;
  await checkIsolation(endpoints, { identityDir: join(o.identities, x.probe.id), id: x.probe.id }, victim, report);
  await checkBadIdentities(endpoints, o.prefix, report);
}

export async function main(argv: string[]): Promise<number> {
  let options: SimOptions;
  try {
    options = parse(argv);
  } catch (err) {
    if (err instanceof CommanderError && (err.code === 'commander.helpDisplayed' || err.code === 'commander.version'))
      return 0;
    process.stderr.write(`device-sim: ${(err as Error).message.replace(/^error: /, '')}\n`);
    return 2;
  }
  try {
    const report = await run(options);
    process.stdout.write(`${report.text()}\n`);
    if (options.json !== undefined)
      writeFileSync(resolve(options.json), `${JSON.stringify(report.toJSON(), null, 2)}\n`);
    return report.failed ? 1 : 0;
  } catch (err) {
    process.stderr.write(`device-sim: ${(err as Error).message}\n`);
    return 1;
  }
}
