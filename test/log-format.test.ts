// Issue #16: logs for people, JSON for machines. The default (`auto`) follows the command's own
// output (#25: a readable banner with JSON log lines in one stream was a newcomer's first sight):
// with --json, JSON lines; without it, readable lines; `--log-format` (or log.format /
// FLEETGATE_LOG_FORMAT) overrides; a wrong value is a usage error naming the choices.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { test } from 'node:test';
import { initFleet } from '../harness/fleet.ts';
import { FLEETGATE, run } from '../harness/run.ts';

const PORTS = {
  FLEETGATE_MQTT_PORT: '0',
  FLEETGATE_WSS_PORT: '0',
  FLEETGATE_ADMIN_PORT: '0',
  FLEETGATE_CONSOLE_PORT: '0',
  FLEETGATE_HTTPS_PORT: '0',
  FLEETGATE_LOG_LEVEL: 'info',
};

/** The gateway's first log line that mentions `what`, then the process is stopped. */
async function firstLine(data: string, args: string[], env: NodeJS.ProcessEnv, what: RegExp): Promise<string> {
  const child = spawn(
    process.execPath,
    ['--openssl-config=config/openssl.cnf', FLEETGATE, 'gateway', '--data', data, ...args],
    { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...PORTS, ...env } },
  );
  try {
    for await (const line of createInterface({ input: child.stderr! })) if (what.test(line)) return line;
    throw new Error('the gateway exited before logging it');
  } finally {
    child.kill('SIGTERM');
  }
}

test('log format/JSON lines with --json or --log-format json; readable lines otherwise', async (t) => {
  const fleet = await initFleet(t);
  for (const [args, env] of [
    [['--json'], {}],
    [[], { FLEETGATE_LOG_FORMAT: 'json' }],
  ] as const) {
    const json = await firstLine(fleet.data, [...args], env, /mqtt state restored/);
    assert.equal((JSON.parse(json) as { msg: string; level: number }).level, 30);
  }
  for (const [args, env] of [
    [[], {}],
    [['--log-format', 'pretty'], {}],
    [['--json'], { FLEETGATE_LOG_FORMAT: 'pretty' }],
  ] as const) {
    const line = await firstLine(fleet.data, [...args], env, /mqtt state restored/);
    assert.throws(() => JSON.parse(line), 'not JSON');
    assert.match(line, /^\[\d\d:\d\d:\d\d\.\d{3}\] INFO.*mqtt state restored/);
  }
  const bad = await run(process.execPath, [FLEETGATE, 'gateway', '--data', fleet.data, '--log-format', 'xml'], {
    env: { ...process.env, ...PORTS },
  });
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /USAGE: --log-format is auto, json or pretty/);
});
