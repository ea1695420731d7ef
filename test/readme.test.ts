// Issue #16: the README's first-hour steps, run as a newcomer would run them, taken from the
// README itself (every ```sh block between the first-hour markers, in order) so they cannot
// drift. The only liberties: `npm install` is already done, `npm start` and the example origin
// are started as processes of the test, and the README's fixed ports are swapped for free ones
// (two test runs may share the machine). Everything else runs verbatim in bash -e, in an empty
// directory, with `npx fleetgate` meaning this checkout's CLI.
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { ROOT, tempDir } from '../harness/run.ts';
import { type GatewayProcess, spawnService, stablePort } from '../harness/services.ts';
import { RegistryReader } from '../provisioning/registry/reader.ts';

const README = readFileSync(join(ROOT, 'README.md'), 'utf8');
const start = README.indexOf('<!-- first-hour:start -->');
const end = README.indexOf('<!-- first-hour:end -->');
const blocks = [...README.slice(start, end).matchAll(/```sh\n([\s\S]*?)```/g)].map((m) => m[1]!);

/** Runs one block in bash -e -o pipefail; resolves with its output once bash exits (background jobs it started keep running). */
function runBlock(
  script: string,
  cwd: string,
  env: NodeJS.ProcessEnv,
  children: ChildProcess[],
): Promise<{ code: number | null; out: string }> {
  const child = spawn('bash', ['-e', '-o', 'pipefail', '-c', script], {
    cwd,
    env,
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.push(child);
  let out = '';
  child.stdout.on('data', (b: Buffer) => {
    out += b.toString();
  });
  child.stderr.on('data', (b: Buffer) => {
    out += b.toString();
  });
  return new Promise((resolve) => child.once('exit', (code) => setImmediate(() => resolve({ code, out }))));
}

test('readme/the first-hour steps work verbatim on a fresh stack: a connected, an enrolled and a revoked device, a proxied HTTPS request', {
  timeout: 300_000,
}, async (t) => {
  assert.ok(start > 0 && end > start && blocks.length >= 6, `the README has its first-hour blocks (${blocks.length})`);
  const dir = tempDir(t);
  const bin = join(dir, '.bin');
  mkdirSync(bin);
  writeFileSync(
    join(bin, 'npx'),
    `#!/bin/sh\n[ "$1" = fleetgate ] || { echo "npx: only fleetgate here" >&2; exit 1; }\nshift\nexec "${process.execPath}" --openssl-config="${ROOT}/config/openssl.cnf" "${ROOT}/bin/fleetgate.ts" "$@"\n`,
  );
  chmodSync(join(bin, 'npx'), 0o755);
  const children: ChildProcess[] = [];
  let stack: GatewayProcess | undefined;
  t.after(async () => {
    for (const c of children) {
      try {
        process.kill(-c.pid!, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    await stack?.stop();
  });

  // The stack's ports are only known once it runs: until then the README's own are kept, and
  // the steps before `npm start` use none.
  // Below the ephemeral range: a port from the ephemeral range, released here, can be taken by
  // anything binding port 0 (another test run beside this one) before Python binds it.
  const origin = await stablePort();
  const ports: Record<string, string> = { 8080: String(origin) };
  const env: NodeJS.ProcessEnv = { ...process.env, PATH: `${bin}:${process.env.PATH}`, FLEETGATE_ACTOR: 'readme' };
  const swap = (s: string) => s.replace(/\b(8883|8884|8443|9443|9444|9445|8080)\b/g, (p) => ports[p] ?? p);
  const outputs: string[] = [];
  for (const block of blocks) {
    const script = block
      .split('\n')
      .filter((l) => l.trim() !== 'npm install')
      .join('\n');
    if (script.trim() === 'npm start') {
      stack = await spawnService('up', join(dir, 'data'), { FLEETGATE_LOG_LEVEL: 'warn' });
      const port = (name: string) => new URL(stack!.endpoints[name]!.replace(/^(mqtts|wss)/, 'https')).port;
      Object.assign(ports, {
        8883: port('mqtt+tls'),
        8884: port('mqtt+wss'),
        8443: port('https'),
        9443: port('provision'),
        9444: port('admin'),
        9445: port('console'),
      });
      Object.assign(env, {
        FLEETGATE_MQTT_PORT: ports[8883],
        FLEETGATE_WSS_PORT: ports[8884],
        FLEETGATE_HTTPS_PORT: ports[8443],
        FLEETGATE_PROVISION_PORT: ports[9443],
        FLEETGATE_ADMIN_PORT: ports[9444],
        FLEETGATE_CONSOLE_PORT: ports[9445],
      });
      outputs.push('');
      continue;
    }
    if (script.startsWith('python3 -m http.server')) {
      // The example origin runs until stopped, from the project directory (it serves docs/).
      const server = spawn('bash', ['-c', swap(script)], { cwd: ROOT, detached: true, stdio: 'ignore' });
      children.push(server);
      let up = false;
      for (let i = 0; i < 600 && !up && server.exitCode === null; i++) {
        up = await fetch(`http://127.0.0.1:${origin}/`).then(
          (r) => r.ok,
          () => false,
        );
        if (!up) await new Promise((r) => setTimeout(r, 50));
      }
      assert.ok(up, `the example origin answers on 127.0.0.1:${origin} (python3 exit code ${server.exitCode})`);
      outputs.push('');
      continue;
    }
    const { code, out } = await runBlock(swap(script), dir, env, children);
    assert.equal(code, 0, `README block failed:\n${script}\n--- output ---\n${out}`);
    outputs.push(out);
  }
  const [, , , connectOut, , httpsOut, revokeOut] = outputs;

  // 3. The sensor's QoS 1 publish was acknowledged (bash -e); the backend is a live session.
  assert.match(connectOut!, /backend/, 'fleetgate connections lists the backend');
  // 4. cam-1 enrolled through provisioning: a recorded certificate, and it connected with it.
  const registry = new RegistryReader(join(dir, 'data', 'registry.db'));
  t.after(() => registry.close());
  assert.equal(registry.listCertificates({ deviceId: 'cam-1' }).length, 1);
  // 5. whoami answered by the gateway; /files/ proxied to the origin (its directory listing).
  assert.match(httpsOut!, /"deviceId":"sensor-1"/);
  assert.match(httpsOut!, /Directory listing/);
  // 6. Revoked: refused over HTTPS and MQTT, with the reason; audited.
  assert.match(revokeOut!, /"code":"CERT_REVOKED"/);
  assert.match(revokeOut!, /refused, as it should be/);
  assert.match(revokeOut!, /device\.revoke/);
  assert.equal(registry.getDevice('sensor-1')?.status, 'revoked');
});
