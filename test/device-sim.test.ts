// Issue #7 acceptance 2 and 4: a small correctness scenario (≈ 50 devices of all three models,
// ≈ 20 s, revocations, bad identities, a renewal) passes against `fleetgate up`; with the
// gateway's topic check broken (a permissive topic policy) the same run fails. Output without a
// terminal is plain lines.
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { startOrigin } from '../harness/origin.ts';
import { ROOT, run, tempDir } from '../harness/run.ts';
import { startStack } from '../harness/stack.ts';

const SIM = join(ROOT, 'bin', 'device-sim.ts');

type SimReport = {
  ok: boolean;
  checks: { name: string; ok: boolean }[];
  devices: { connected: number; planned: number };
  mqtt: { acknowledged: number; lostAcknowledged: number };
  revocationCut?: { count: number; p50: number };
};

async function simulate(
  t: import('node:test').TestContext,
  config: Record<string, unknown>,
  extra: string[],
  mqtt: '3' | '5' = '5',
) {
  const dir = tempDir(t);
  const data = join(dir, 'data');
  mkdirSync(data, { recursive: true, mode: 0o700 });
  writeFileSync(join(data, 'fleetgate.json'), JSON.stringify(config));
  const stack = await startStack(data);
  t.after(() => stack.stop());
  const e = stack.endpoints;
  /** One run of the simulator on this stack and data directory (runs may follow each other). */
  const again = async (args: string[]) => {
    const report = join(dir, `report-${Date.now()}.json`);
    const r = await run(
      process.execPath,
      [
        SIM,
        '--data',
        data,
        '--mqtt',
        mqtt,
        '--mqtt-url',
        e['mqtt+tls']!,
        '--https',
        e.https!,
        '--provision',
        e.provision!,
        '--gateway-pid',
        String(stack.child.pid),
        '--json',
        report,
        ...args,
      ],
      { timeoutMs: 180_000 },
    );
    return {
      r,
      report: r.code === 0 || r.code === 1 ? (JSON.parse(readFileSync(report, 'utf8')) as SimReport) : undefined,
    };
  };
  return { ...(await again(extra)), again };
}

for (const mqtt of ['5', '3'] as const) {
  test(`device-sim/MQTT ${mqtt === '5' ? '5' : '3.1.1'}: the correctness scenario passes against a healthy gateway`, {
    timeout: 240_000,
  }, async (t) => {
    const origin = await startOrigin(t);
    const { r, report, again } = await simulate(
      t,
      {
        https: {
          routes: [{ prefix: '/upload', origin: origin.url, audience: 'urn:sim', allow: { types: ['camera'] } }],
        },
      },
      [
        '--sensors',
        '36',
        '--gateways',
        '3',
        '--children',
        '3',
        '--cameras',
        '4',
        '--duration',
        '20',
        '--rate',
        '2',
        '--upload-every',
        '2',
        '--check',
        '--revoke-during',
        '3',
        '--renew-during',
        '2',
        '--cut-bound-ms',
        '15000',
      ],
      mqtt,
    );
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.ok(report?.ok);
    const names = report!.checks.map((c) => c.name).join('\n');
    for (const expected of [
      'QoS 1',
      "another device's commands",
      'cut within',
      'stay out',
      'continue untouched',
      'renewal',
      'isolation',
      'no certificate',
      'another CA',
      'expired',
      'revoked',
      'denylisted',
    ]) {
      assert.match(names, new RegExp(expected), `check "${expected}" ran`);
    }
    assert.equal(report!.devices.connected, 43);
    // The load report always says what was delivered (not only under --check), and the cut is
    // measured from the registry's commit, not from when the CLI returned.
    assert.ok(report!.mqtt.acknowledged > 0);
    assert.equal(report!.mqtt.lostAcknowledged, 0);
    assert.match(r.stdout, /delivery\s+\d+ acknowledged by the gateway, all received/);
    assert.equal(report!.revocationCut?.count, 3);
    assert.ok(report!.revocationCut!.p50 > 0, `revoke→cut p50 ${report!.revocationCut!.p50} ms (from the commit)`);
    assert.ok(origin.seen.length > 0, 'cameras uploaded through the HTTPS plane');
    assert.doesNotMatch(r.stdout, /\x1b\[|\r/, 'plain lines without a terminal');
    assert.match(r.stdout, /result\s+ok/);
    if (mqtt === '3') {
      // A second --check run on the same data directory: the devices the first one revoked are
      // left out (said so), the bad identities are new ones; everything passes again.
      const second = await again([
        '--sensors',
        '36',
        '--duration',
        '6',
        '--rate',
        '2',
        '--check',
        '--revoke-during',
        '1',
        '--cut-bound-ms',
        '15000',
      ]);
      assert.equal(second.r.code, 0, second.r.stdout + second.r.stderr);
      assert.match(second.r.stdout, /3 device\(s\) revoked by an earlier run are left out/);
      assert.equal(second.report!.devices.planned, 33);
    }
  });
}

test("device-sim/the same checks fail when the gateway's topic check is broken", { timeout: 240_000 }, async (t) => {
  const permissive = { publish: ['#'], subscribe: ['#'] };
  const { r, report } = await simulate(
    t,
    { gateway: { topics: { sensor: permissive, gateway: permissive, camera: permissive } } },
    ['--sensors', '8', '--duration', '4', '--check'],
  );
  assert.equal(r.code, 1, 'exit code ≠ 0 when a check fails');
  const failed = report!.checks.filter((c) => !c.ok).map((c) => c.name);
  assert.ok(
    failed.some((n) => n.startsWith('isolation')),
    `isolation checks failed: ${failed.join('; ')}`,
  );
  assert.match(r.stdout, /check\s+FAIL isolation/);
});
