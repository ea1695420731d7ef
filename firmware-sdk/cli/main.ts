import { createReadStream, readFileSync } from 'node:fs';
import { Command, CommanderError, InvalidArgumentError } from 'commander';
import { Device } from '../device.ts';
import { enrollWithClaim, enrollWithToken, estSimpleEnroll, renew } from '../enroll.ts';
import { identityFiles, type KeyType, loadIdentity } from '../identity.ts';
import { assertSupportedRuntime } from '../preflight.ts';
import { ERRORS, FleetgateError, toFleetgateError } from '../protocol/errors.ts';

interface Common {
  json?: boolean;
}

function out(opts: Common, data: unknown, human: string): void {
  process.stdout.write(opts.json === true ? `${JSON.stringify(data, null, 2)}\n` : `${human}\n`);
}

const keyType = (v: string): KeyType => {
  if (v !== 'ec-p256' && v !== 'rsa-2048') throw new InvalidArgumentError('--key-type is ec-p256 or rsa-2048');
  return v;
};

function summary(dir: string) {
  const id = loadIdentity(dir);
  const daysLeft = (id.info.notAfter - Date.now()) / 86_400_000;
  return {
    deviceId: id.info.deviceId,
    serial: id.info.serial,
    fingerprint: id.info.fingerprint,
    notBefore: new Date(id.info.notBefore).toISOString(),
    notAfter: new Date(id.info.notAfter).toISOString(),
    daysLeft: Math.round(daysLeft * 100) / 100,
    files: identityFiles(dir),
  };
}

function mqttVersion(v: string): 3 | 5 {
  if (v !== '3' && v !== '5') throw new InvalidArgumentError('--mqtt is 3 (MQTT 3.1.1) or 5');
  return Number(v) as 3 | 5;
}

/** Connects a one-shot device for pub/sub: refuses fast, says why, and gives up after 15 s of retries. */
async function connected(url: string, identity: string, timeoutMs = 15_000, mqttVersion: 3 | 5 = 5): Promise<Device> {
  const device = new Device({
    identityDir: identity,
    mqttUrl: url,
    mqttVersion,
    backoff: { baseMs: 200, maxMs: 2_000 },
  });
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    device.start(),
    new Promise<void>((resolve) => {
      timer = setTimeout(resolve, timeoutMs);
    }),
  ]);
  clearTimeout(timer);
  if (device.refusal !== undefined) throw device.refusal;
  if (!device.connected) {
    device.stop();
    throw new FleetgateError(
      'ORIGIN_UNREACHABLE',
      `cannot connect to ${url} (gave up after ${timeoutMs / 1000} s of retries${device.lastError === undefined ? '' : `; last error: ${device.lastError.message}`})`,
    );
  }
  return device;
}

export function buildProgram(): Command {
  const program = new Command('fleetgate-device')
    .description('device side of fleetgate: enroll, renew, publish, subscribe, request')
    .version('0.1.0')
    .exitOverride();
  enrollCommand(program);
  renewCommand(program);
  pubCommand(program);
  subCommand(program);
  requestCommand(program);
  statusCommand(program);
  for (const c of program.commands) c.exitOverride().configureOutput({ outputError: () => undefined });
  return program;
}

/** `fleetgate-device enroll`. */
function enrollCommand(program: Command): void {
  program
    .command('enroll')
    .description(
      'make a key here, enroll it (one-time token, EST, or claim certificate + hardware serial), store the identity atomically',
    )
    .requiredOption('--server <url>', 'provisioning service, e.g. https://127.0.0.1:9443')
    .requiredOption('--ca <file>', 'fleet root CA (PEM)')
    .requiredOption('--out <dir>', 'identity directory')
    .option('--token <token>', 'one-time enrollment token')
    .option('--est <deviceId>', 'use EST simpleenroll with this device id (and --token)')
    .option('--claim <dir>', 'claim directory (claim.crt, claim.key)')
    .option('--serial <serial>', 'hardware serial (with --claim)')
    .option('--key-type <type>', 'ec-p256 (default) or rsa-2048', keyType)
    .option('--json', 'JSON output')
    .action(
      async (
        o: Common & {
          server: string;
          ca: string;
          out: string;
          token?: string;
          est?: string;
          claim?: string;
          serial?: string;
          keyType?: KeyType;
        },
      ) => {
        const base = {
          server: o.server,
          ca: readFileSync(o.ca, 'utf8'),
          identityDir: o.out,
          ...(o.keyType && { keyType: o.keyType }),
        };
        if (o.claim !== undefined) {
          if (o.serial === undefined) throw new FleetgateError('USAGE', '--claim needs --serial');
          await enrollWithClaim({ ...base, claimDir: o.claim, hardwareSerial: o.serial });
        } else if (o.token !== undefined) {
          await (o.est !== undefined
            ? estSimpleEnroll({ ...base, deviceId: o.est, token: o.token })
            : enrollWithToken({ ...base, token: o.token }));
        } else {
          throw new FleetgateError('USAGE', 'give --token (optionally with --est DEVICE_ID) or --claim DIR --serial S');
        }
        const s = summary(o.out);
        out(o, s, `enrolled ${s.deviceId} (serial ${s.serial}, until ${s.notAfter}) → ${o.out}`);
      },
    );
}

/** `fleetgate-device renew`. */
function renewCommand(program: Command): void {
  program
    .command('renew')
    .description('renew now over mTLS with the current certificate (new key)')
    .requiredOption('--identity <dir>', 'identity directory')
    .requiredOption('--server <url>', 'provisioning service')
    .option('--json', 'JSON output')
    .action(async (o: Common & { identity: string; server: string }) => {
      await renew({ server: o.server, identityDir: o.identity });
      const s = summary(o.identity);
      out(o, s, `renewed ${s.deviceId}: serial ${s.serial}, until ${s.notAfter}`);
    });
}

/** `fleetgate-device pub`. */
function pubCommand(program: Command): void {
  program
    .command('pub')
    .description('publish one message')
    .requiredOption('--url <url>', 'mqtts://host:8883 or wss://host:8884/mqtt')
    .requiredOption('--identity <dir>', 'identity directory')
    .requiredOption('--topic <topic>', 'topic')
    .requiredOption('--message <text>', 'payload')
    .option(
      '--qos <n>',
      '0 or 1',
      (v) => {
        if (v !== '0' && v !== '1') throw new InvalidArgumentError('--qos is 0 or 1');
        return Number(v) as 0 | 1;
      },
      0,
    )
    .option('--timeout <s>', 'give up connecting after this many seconds', (v) => Number(v), 15)
    .option('--mqtt <version>', 'MQTT protocol: 5 (default) or 3 (3.1.1)', mqttVersion, 5)
    .option('--json', 'JSON output')
    .action(
      async (
        o: Common & {
          url: string;
          identity: string;
          topic: string;
          message: string;
          qos: 0 | 1;
          timeout: number;
          mqtt: 3 | 5;
        },
      ) => {
        const device = await connected(o.url, o.identity, o.timeout * 1000, o.mqtt);
        try {
          await device.publish(o.topic, o.message, { qos: o.qos });
        } finally {
          device.stop();
        }
        out(o, { deviceId: device.id, topic: o.topic, qos: o.qos }, `published to ${o.topic}`);
      },
    );
}

/** `fleetgate-device sub`. */
function subCommand(program: Command): void {
  program
    .command('sub')
    .description('subscribe and print messages (topic payload), until --count or Ctrl-C')
    .requiredOption('--url <url>', 'mqtts:// or wss:// URL')
    .requiredOption('--identity <dir>', 'identity directory')
    .requiredOption('--topic <filter>', 'topic filter')
    .option('--count <n>', 'exit after this many messages', (v) => Number(v))
    .option('--mqtt <version>', 'MQTT protocol: 5 (default) or 3 (3.1.1)', mqttVersion, 5)
    .option('--json', 'one JSON object per message')
    .action(async (o: Common & { url: string; identity: string; topic: string; count?: number; mqtt: 3 | 5 }) => {
      const device = await connected(o.url, o.identity, 15_000, o.mqtt);
      let seen = 0;
      await new Promise<void>((resolve) => {
        device.on('message', (topic: string, payload: Buffer) => {
          process.stdout.write(
            o.json === true
              ? `${JSON.stringify({ topic, payload: payload.toString() })}\n`
              : `${topic} ${payload.toString()}\n`,
          );
          if (o.count !== undefined && ++seen >= o.count) resolve();
        });
        device.on('refused', () => resolve());
        process.once('SIGINT', () => resolve());
        process.once('SIGTERM', () => resolve());
        // Say on stderr that the subscription is in place (stdout stays the messages alone).
        device.subscribe(o.topic, { qos: 1 }).then(
          () =>
            process.stderr.write(
              `subscribed to ${o.topic} as ${device.id}; waiting for messages${o.count === undefined ? ' (Ctrl-C to stop)' : ''}\n`,
            ),
          (err: Error) => process.stderr.write(`subscribe failed: ${err.message}\n`),
        );
      });
      device.stop();
      if (device.refusal !== undefined) throw device.refusal;
    });
}

/** `fleetgate-device request`. */
function requestCommand(program: Command): void {
  program
    .command('request')
    .description('an HTTPS request through the gateway with the device certificate; prints the body')
    .requiredOption('--url <url>', 'https://host:8443/path')
    .requiredOption('--identity <dir>', 'identity directory')
    .option('-X, --method <method>', 'HTTP method')
    .option('--data <data>', 'request body, or @FILE to stream a file')
    .option('-H, --header <header...>', '"Name: value"')
    .option('--json', 'status, headers and body as JSON')
    .action(
      async (o: Common & { url: string; identity: string; method?: string; data?: string; header?: string[] }) => {
        const url = new URL(o.url);
        const device = new Device({ identityDir: o.identity, httpsUrl: url.origin });
        const headers = Object.fromEntries(
          (o.header ?? []).map((h) => {
            const i = h.indexOf(':');
            return [h.slice(0, i).trim(), h.slice(i + 1).trim()];
          }),
        );
        const fromFile = o.data?.startsWith('@') === true;
        const body = o.data === undefined ? undefined : fromFile ? createReadStream(o.data.slice(1)) : o.data;
        // Like curl: a body of our own says what it is unless -H does (a file: application/octet-stream).
        if (body !== undefined && !Object.keys(headers).some((k) => k.toLowerCase() === 'content-type')) {
          headers['content-type'] = fromFile ? 'application/octet-stream' : 'application/x-www-form-urlencoded';
        }
        const res = await device.request(url.pathname + url.search, {
          ...(o.method && { method: o.method }),
          headers,
          ...(body !== undefined && { body }),
        });
        if (o.json === true) out(o, { status: res.status, headers: res.headers, body: res.body.toString() }, '');
        else {
          process.stdout.write(res.body);
          // End with a newline on a terminal so the prompt does not glue to the body (piped output stays byte-exact).
          if (process.stdout.isTTY && res.body.length > 0 && res.body[res.body.length - 1] !== 0x0a)
            process.stdout.write('\n');
        }
        if (res.status >= 400)
          process.exitCode = res.status >= 500 ? ERRORS.ORIGIN_UNREACHABLE.exit : ERRORS.NOT_AUTHORIZED.exit;
      },
    );
}

/** `fleetgate-device status`. */
function statusCommand(program: Command): void {
  program
    .command('status')
    .description('what the stored identity is: device id, serial, expiry, days left')
    .requiredOption('--identity <dir>', 'identity directory')
    .option('--json', 'JSON output')
    .action((o: Common & { identity: string }) => {
      const s = summary(o.identity);
      out(
        o,
        s,
        `${s.deviceId}  serial ${s.serial}\nvalid ${s.notBefore} → ${s.notAfter} (${s.daysLeft} days left)\ncert ${s.files.cert}\nkey  ${s.files.key}`,
      );
    });
}

export async function main(argv: readonly string[]): Promise<number> {
  const json = argv.includes('--json');
  try {
    assertSupportedRuntime(); // before anything else, and before any network request
    await buildProgram().parseAsync(argv as string[], { from: 'user' });
    return process.exitCode === undefined ? 0 : Number(process.exitCode);
  } catch (err) {
    if (err instanceof CommanderError) {
      if (['commander.helpDisplayed', 'commander.version', 'commander.help'].includes(err.code) || err.exitCode === 0)
        return 0;
    }
    const e = toFleetgateError(
      err instanceof CommanderError ? new FleetgateError('USAGE', err.message.replace(/^error: /, '')) : err,
    );
    process.stderr.write(
      json
        ? `${JSON.stringify({ error: { code: e.code, message: e.message } })}\n`
        : `fleetgate-device: ${e.code}: ${e.message}\n`,
    );
    return ERRORS[e.code].exit;
  }
}
