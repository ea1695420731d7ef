// The servers run on jemalloc when it is installed (runtime/allocator.ts): started through the
// harness (the environment set up front) and through `bin/fleetgate.ts` (which re-executes a
// server command with it). `.ci/run` installs libjemalloc2.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { test } from 'node:test';
import { benchFleet, spawnService } from '../harness/services.ts';
import { allocatorEnv, allocatorInUse } from '../runtime/allocator.ts';

const FLEETGATE = join(import.meta.dirname, '..', 'bin', 'fleetgate.ts');
const runsOnJemalloc = (pid: number) => readFileSync(`/proc/${pid}/maps`, 'utf8').includes('libjemalloc');

test('allocator/the environment a server needs for jemalloc, and when it needs none', () => {
  const env = allocatorEnv('gateway', {});
  assert.ok(
    env.LD_PRELOAD?.endsWith('libjemalloc.so.2') && existsSync(env.LD_PRELOAD),
    `jemalloc found (install libjemalloc2; .ci/run does): ${JSON.stringify(env)}`,
  );
  assert.equal(
    env.MALLOC_CONF,
    'background_thread:true,dirty_decay_ms:0',
    'the gateway gives freed pages back at once (streamed uploads)',
  );
  assert.equal(allocatorEnv('up', {}).MALLOC_CONF, 'background_thread:true,dirty_decay_ms:0', '`up` runs the gateway');
  assert.equal(
    allocatorEnv('provision', {}).MALLOC_CONF,
    'background_thread:true,dirty_decay_ms:1000',
    'provisioning purges after 1 s (cheaper per enrollment)',
  );
  const kept = allocatorEnv('gateway', { LD_PRELOAD: '/opt/other.so', MALLOC_CONF: 'narenas:2' });
  assert.equal(kept.LD_PRELOAD, `${env.LD_PRELOAD} /opt/other.so`, 'an existing preload is kept, after jemalloc');
  assert.equal(
    kept.MALLOC_CONF,
    'background_thread:true,dirty_decay_ms:0,narenas:2',
    'existing jemalloc settings are kept (later ones win)',
  );
  assert.deepEqual(allocatorEnv('gateway', { FLEETGATE_ALLOCATOR: 'system' }), {});
  assert.deepEqual(allocatorEnv('provision', { LD_PRELOAD: env.LD_PRELOAD }), {}, 'already preloaded: nothing to add');
  assert.equal(allocatorInUse({ LD_PRELOAD: env.LD_PRELOAD }), 'jemalloc');
  assert.equal(allocatorInUse({}), 'system');
});

test('allocator/a gateway started by the harness, and one started as `fleetgate gateway` (re-executed in place: SIGKILL of its PID leaves nothing), run on jemalloc; FLEETGATE_ALLOCATOR=system does not', {
  timeout: 120_000,
}, async (t) => {
  const fleet = await benchFleet();
  t.after(() => fleet.cleanup());
  const direct = await spawnService('gateway', fleet.config.dataDir);
  t.after(() => direct.stop());
  assert.ok(
    runsOnJemalloc(direct.child.pid!),
    'the harness started the server itself on jemalloc (no re-execution: its PID is the server)',
  );
  await direct.stop();

  // As an operator starts it: plain node, no flags; the command re-executes itself.
  for (const [allocator, extra] of [
    ['jemalloc', {}],
    ['system', { FLEETGATE_ALLOCATOR: 'system' }],
  ] as const) {
    const { LD_PRELOAD: _p, MALLOC_CONF: _c, ...clean } = process.env;
    const wrapper = spawn(process.execPath, [FLEETGATE, 'gateway', '--json', '--data', fleet.config.dataDir], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: {
        ...clean,
        ...extra,
        FLEETGATE_MQTT_PORT: '0',
        FLEETGATE_WSS_PORT: '0',
        FLEETGATE_ADMIN_PORT: '0',
        FLEETGATE_CONSOLE_PORT: '0',
        FLEETGATE_HTTPS_PORT: '0',
        FLEETGATE_LOG_LEVEL: 'error',
      },
    });
    const exited = new Promise((r) => wrapper.once('exit', r));
    t.after(async () => {
      if (wrapper.exitCode === null) {
        wrapper.kill('SIGTERM');
        await exited;
      }
    });
    let text = '';
    let banner: { allocator?: string; services?: { name: string; endpoint: string }[] } | undefined;
    for await (const line of createInterface({ input: wrapper.stdout! })) {
      text += line;
      try {
        banner = JSON.parse(text) as typeof banner;
        break;
      } catch {
        // not complete yet
      }
    }
    assert.equal(banner?.allocator, allocator, `the banner says ${allocator}`);
    const children = readFileSync(`/proc/${wrapper.pid}/task/${wrapper.pid}/children`, 'utf8').trim();
    assert.equal(children, '', 'no second process: the command re-executed itself in place (execve)');
    assert.equal(runsOnJemalloc(wrapper.pid!), allocator === 'jemalloc', `the started PID runs on ${allocator}`);
    if (allocator === 'jemalloc') {
      wrapper.kill('SIGTERM');
      assert.equal(await exited, 0, 'SIGTERM to the started PID: the server stopped cleanly');
      continue;
    }
    // SIGKILL of the PID it was started as leaves nothing holding the device port.
    const endpoint = banner?.services?.find((s) => s.name === 'mqtt+tls')?.endpoint.split(' ')[0] ?? '';
    const port = Number(new URL(endpoint).port);
    assert.ok(port > 0, `the banner names the MQTT endpoint: ${endpoint}`);
    wrapper.kill('SIGKILL');
    await exited;
    const refused = await new Promise<string>((resolve) => {
      const s = connect(port, '127.0.0.1', () => {
        s.destroy();
        resolve('connected');
      });
      s.on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
    });
    assert.equal(refused, 'ECONNREFUSED', 'after SIGKILL of the started PID the MQTT port is served by nothing');
  }
});
