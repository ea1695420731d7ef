import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { Device } from '../firmware-sdk/device.ts';
import { enrollWithToken } from '../firmware-sdk/enroll.ts';
import { createCsr, generateKey } from '../firmware-sdk/identity.ts';
import { verifyServerCertificate } from '../firmware-sdk/protocol/server-certificate.ts';
import { fleetgateCli } from './fleet.ts';
import type { Report } from './report.ts';

interface Endpoints {
  mqttUrl: string;
  httpsUrl: string;
  provisioningUrl: string;
  ca: string;
  dataDir: string;
  mqttVersion: 3 | 5;
}

/** One connection attempt, no retries: 'tls' when the handshake failed, else the CONNACK code (0 = accepted). */
async function tryConnect(
  url: string,
  ca: string,
  cred: { cert?: string; key?: string },
  clientId: string,
  version: 3 | 5,
): Promise<'tls' | number> {
  try {
    const client = await mqtt.connectAsync(
      url,
      {
        ca,
        ...cred,
        clientId,
        reconnectPeriod: 0,
        connectTimeout: 5_000,
        protocolVersion: version === 5 ? 5 : 4,
        checkServerIdentity: verifyServerCertificate,
      } as mqtt.IClientOptions,
      false,
    );
    await client.endAsync(true);
    return 0;
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    return typeof code === 'number' ? code : 'tls';
  }
}

function opensslSelfSigned(dir: string): Promise<{ cert: string; key: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      'openssl',
      [
        'req',
        '-x509',
        '-newkey',
        'ec',
        '-pkeyopt',
        'ec_paramgen_curve:P-256',
        '-nodes',
        '-keyout',
        join(dir, 'k.pem'),
        '-out',
        join(dir, 'c.pem'),
        '-subj',
        '/CN=intruder',
        '-days',
        '1',
        '-addext',
        'extendedKeyUsage=clientAuth',
        '-addext',
        'subjectAltName=URI:urn:fleetgate:device:intruder',
      ],
      { stdio: 'ignore' },
    );
    child.on('error', reject);
    child.on('close', (code) =>
      code === 0
        ? resolve({ cert: readFileSync(join(dir, 'c.pem'), 'utf8'), key: readFileSync(join(dir, 'k.pem'), 'utf8') })
        : reject(new Error('openssl failed')),
    );
  });
}

/**
 * Injected bad identities, each must be refused with the expected outcome: no certificate,
 * another CA, expired (refused in the TLS handshake); revoked and denylisted (the exact code:
 * MQTT 5 from the CONNACK's reason, 3.1.1 from the HTTPS plane after CONNACK 5).
 */
export async function checkBadIdentities(e: Endpoints, prefix: string, report: Report): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'device-sim-bad-'));
  try {
    const none = await tryConnect(e.mqttUrl, e.ca, {}, `${prefix}-nobody`, e.mqttVersion);
    report.check('bad identity: no certificate', none === 'tls', `outcome ${none}`);
    const other = await opensslSelfSigned(dir);
    const otherCa = await tryConnect(e.mqttUrl, e.ca, other, 'intruder', e.mqttVersion);
    report.check('bad identity: another CA', otherCa === 'tls', `outcome ${otherCa}`);

    // Fresh ids per run: a second --check run on the same data directory must not trip over the first one's.
    const run = Date.now().toString(36);
    const ids = {
      expired: `${prefix}-bad-expired-${run}`,
      revoked: `${prefix}-bad-revoked-${run}`,
      denied: `${prefix}-bad-denied-${run}`,
    };
    const out = await fleetgateCli(
      ['device', 'import', '--in', '-', '--data', e.dataDir],
      `${Object.values(ids)
        .map((id) => JSON.stringify({ id, type: 'sensor', fleet: 'sim', token: true }))
        .join('\n')}\n`,
    ).catch((err: Error & { stdout?: string }) => err.stdout ?? '');
    const tokens = new Map(
      out
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as { id: string; token?: string })
        .map((r) => [r.id, r.token]),
    );

    // Expired: signed by the fleet CA for one second (backdated a minute), then let it lapse.
    const key = generateKey();
    const pem = await fleetgateCli(
      ['cert', 'issue', ids.expired, '--csr', '-', '--validity', '1s', '--data', e.dataDir],
      createCsr(key, ids.expired),
    );
    await new Promise((r) => setTimeout(r, 2_000));
    const expired = await tryConnect(e.mqttUrl, e.ca, { cert: pem, key }, ids.expired, e.mqttVersion);
    report.check('bad identity: expired certificate', expired === 'tls', `outcome ${expired}`);

    for (const [kind, id, command, expected] of [
      ['revoked', ids.revoked, ['device', 'revoke', ids.revoked, '--reason', 'keyCompromise'], 'CERT_REVOKED'],
      ['denylisted', ids.denied, ['deny', 'add', '--device', ids.denied, '--reason', 'device-sim check'], 'DENYLISTED'],
    ] as const) {
      const identityDir = join(dir, id);
      if (tokens.get(id) !== undefined)
        await enrollWithToken({ server: e.provisioningUrl, ca: e.ca, identityDir, token: tokens.get(id)! });
      await fleetgateCli([...command, '--data', e.dataDir]);
      const device = new Device({
        identityDir,
        mqttUrl: e.mqttUrl,
        httpsUrl: e.httpsUrl,
        mqttVersion: e.mqttVersion,
        backoff: { baseMs: 100, maxMs: 500 },
      });
      await device.start();
      device.stop();
      report.check(
        `bad identity: ${kind}`,
        device.refusal?.code === expected,
        `refused with ${device.refusal?.code ?? 'nothing (connected!)'}, expected ${expected}`,
      );
    }
  } catch (err) {
    report.check('bad identities', false, `could not run: ${(err as Error).message}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * Topic isolation, probed by a real device: subscribing to another device's commands must be
 * refused (SUBACK 0x80; MQTT 5: 0x87), and publishing as another device must cost the
 * connection (3.1.1) or be refused with PUBACK 0x87 (MQTT 5, the connection stays).
 */
export async function checkIsolation(
  e: Endpoints,
  probe: { identityDir: string; id: string },
  victim: string,
  report: Report,
): Promise<void> {
  const current = join(probe.identityDir, 'current');
  const cred = {
    cert: readFileSync(join(current, 'device.crt'), 'utf8') + readFileSync(join(current, 'chain.crt'), 'utf8'),
    key: readFileSync(join(current, 'device.key'), 'utf8'),
  };
  const v5 = e.mqttVersion === 5;
  const client = await mqtt.connectAsync(
    e.mqttUrl,
    {
      ca: e.ca,
      ...cred,
      clientId: probe.id,
      reconnectPeriod: 0,
      protocolVersion: v5 ? 5 : 4,
      checkServerIdentity: verifyServerCertificate,
    } as mqtt.IClientOptions,
    false,
  );
  const refusedSub = v5 ? 0x87 : 0x80;
  try {
    const granted = await client.subscribeAsync(`devices/${victim}/commands/#`, { qos: 1 }).then(
      (g) => g[0]?.qos,
      (err: { packet?: { granted?: number[] } }) => err.packet?.granted?.[0],
    );
    report.check(
      "isolation: subscribe to another device's commands is refused",
      granted === refusedSub,
      `SUBACK ${granted}`,
    );
    const everything = await client.subscribeAsync('#', { qos: 0 }).then(
      (g) => g[0]?.qos,
      (err: { packet?: { granted?: number[] } }) => err.packet?.granted?.[0],
    );
    report.check('isolation: subscribe to # is refused', everything === refusedSub, `SUBACK ${everything}`);
    if (v5) {
      const code = await client
        .publishAsync(`devices/${victim}/telemetry`, JSON.stringify({ seq: -1, forged: true }), { qos: 1 })
        .then(
          () => 0,
          (err: { code?: number }) => err.code,
        );
      report.check(
        'isolation: publishing as another device is refused (PUBACK 0x87), the connection stays',
        code === 0x87 && client.connected,
        `PUBACK ${code}, connected ${client.connected}`,
      );
      return;
    }
    const closed = new Promise<boolean>((resolve) => {
      client.once('close', () => resolve(true));
      setTimeout(() => resolve(false), 3_000);
    });
    client.publish(`devices/${victim}/telemetry`, JSON.stringify({ seq: -1, forged: true }), { qos: 1 });
    report.check(
      'isolation: publishing as another device closes the connection',
      await closed,
      'connection state after a forged PUBLISH',
    );
  } finally {
    await client.endAsync(true).catch(() => undefined);
  }
}
