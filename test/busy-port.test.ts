// Issue #16: a listener that cannot bind is a coded one-line error naming the port and the
// setting that changes it; everything already started is closed and the process exits non-zero
// (no hang, no swallowed signal, no stack trace). Tried for each of the six listeners.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { fleetgate, tempDir } from '../harness/run.ts';
import { startStack } from '../harness/stack.ts';

test('busy port/every listener: PORT_IN_USE, which port, which setting; exits', { timeout: 180_000 }, async (t) => {
  const a = await startStack(join(tempDir(t), 'data'));
  t.after(() => a.stop());
  const port = (name: string) => new URL(a.endpoints[name]!).port;
  const cases = [
    ['FLEETGATE_MQTT_PORT', port('mqtt+tls'), 'gateway.mqttPort'],
    ['FLEETGATE_WSS_PORT', port('mqtt+wss'), 'gateway.wssPort'],
    ['FLEETGATE_HTTPS_PORT', port('https'), 'https.port'],
    ['FLEETGATE_ADMIN_PORT', port('admin'), 'gateway.adminPort'],
    ['FLEETGATE_CONSOLE_PORT', port('console'), 'gateway.consolePort'],
    ['FLEETGATE_PROVISION_PORT', port('provision'), 'provisioning.port'],
  ] as const;
  for (const [variable, busy, setting] of cases) {
    const env = {
      FLEETGATE_MQTT_PORT: '0',
      FLEETGATE_WSS_PORT: '0',
      FLEETGATE_HTTPS_PORT: '0',
      FLEETGATE_ADMIN_PORT: '0',
      FLEETGATE_CONSOLE_PORT: '0',
      FLEETGATE_PROVISION_PORT: '0',
      FLEETGATE_LOG_LEVEL: 'error',
      [variable]: busy,
    };
    const b = await fleetgate(['up', '--json', '--data', join(tempDir(t), 'data')], { env });
    assert.equal(b.signal, null, `${variable}: exited by itself (not killed by the 60 s run timeout)`);
    assert.notEqual(b.code, 0, variable);
    const lines = b.stderr.trim().split('\n');
    const error = (JSON.parse(lines.at(-1)!) as { error: { code: string; message: string } }).error;
    assert.equal(error.code, 'PORT_IN_USE', b.stderr);
    assert.match(error.message, new RegExp(`:${busy}\\b`), 'names the port');
    assert.ok(
      error.message.includes(setting) && error.message.includes(variable),
      `names the setting: ${error.message}`,
    );
    assert.doesNotMatch(b.stderr, /\n\s+at /, 'no stack trace');
  }
});
