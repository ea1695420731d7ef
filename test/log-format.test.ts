// Issue #16: logs for people on a terminal, JSON for machines. Without a terminal (as here) the
// default is JSON lines; `--log-format pretty` (or log.format / FLEETGATE_LOG_FORMAT) gives
// readable lines; a wrong value is a usage error naming the choices.
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

test('log format/JSON lines without a terminal; readable lines with --log-format pretty or FLEETGATE_LOG_FORMAT=pretty', async (t) => {
  const fleet = await initFleet(t);
  const json = await firstLine(fleet.data, [], {}, /mqtt state restored/);
  assert.equal((JSON.parse(json) as { msg: string; level: number }).level, 30);
  for (const [args, env] of [
    [['--log-format', 'pretty'], {}],
    [[], { FLEETGATE_LOG_FORMAT: 'pretty' }],
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
