import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { FleetgateError } from '../firmware-sdk/protocol/errors.ts';
import { DEFAULTS, loadConfig } from './config.ts';

function withFile(content: unknown): string {
  const dir = mkdtempSync(join(tmpdir(), 'fleetgate-config-'));
  writeFileSync(join(dir, 'fleetgate.json'), JSON.stringify(content));
  return dir;
}

test('config/defaults → file → environment → flags, in that order', () => {
  const dir = withFile({ ca: { leafValidity: '7d' }, gateway: { mqttPort: 1883 } });
  const cfg = loadConfig({ dataDir: dir, env: { FLEETGATE_MQTT_PORT: '2883' }, flags: { 'ca.leafValidityMs': '2m' } });
  assert.equal(cfg.ca.leafValidityMs, 120_000);
  assert.equal(cfg.gateway.mqttPort, 2883);
  assert.equal(cfg.gateway.wssPort, DEFAULTS.gateway.wssPort);
  assert.ok(Object.isFrozen(cfg.gateway));
});

test('config/every problem is reported at once', () => {
  const dir = withFile({
    ca: { leafValidity: '30' },
    https: { routes: [{ prefix: 'no-slash', origin: 'ftp://x', audience: '' }] },
  });
  assert.throws(
    () => loadConfig({ dataDir: dir, env: { FLEETGATE_MQTT_PORT: '70000', FLEETGATE_PER_REQUEST_HANDSHAKE: 'maybe' } }),
    (e: unknown) => {
      assert.ok(e instanceof FleetgateError && e.code === 'CONFIG_INVALID');
      const problems = e.detail.problems as string[];
      for (const needle of [
        'leafValidity',
        'FLEETGATE_MQTT_PORT',
        'FLEETGATE_PER_REQUEST_HANDSHAKE',
        'prefix',
        'origin',
        'audience',
      ]) {
        assert.ok(
          problems.some((p) => p.includes(needle)),
          `${needle} reported in ${problems.join(' | ')}`,
        );
      }
      return true;
    },
  );
});

test('config/routes accept timeoutMs or a timeout duration, with defaults', () => {
  const dir = withFile({
    https: {
      routes: [
        { prefix: '/a', origin: 'http://127.0.0.1:1/ignored-path', audience: 'x', timeoutMs: 1500 },
        { prefix: '/b', origin: 'https://origin.example', audience: 'y', timeout: '2m', allow: { types: ['camera'] } },
      ],
    },
  });
  const [a, b] = loadConfig({ dataDir: dir, env: {} }).https.routes;
  assert.deepEqual([a?.timeoutMs, a?.origin, a?.bodyLimit], [1500, 'http://127.0.0.1:1', 1024 * 1024]);
  assert.deepEqual([b?.timeoutMs, b?.allow?.types], [120_000, ['camera']]);
});

test('config/unknown keys are refused, with the likely intended key', () => {
  const dir = withFile({
    gateway: { mqtPort: 1883 },
    htps: {},
    https: { routes: [{ prefix: '/a', origin: 'http://127.0.0.1:1', audience: 'x', timout: '2s' }] },
  });
  assert.throws(
    () => loadConfig({ dataDir: dir, env: {} }),
    (e: unknown) => {
      assert.ok(e instanceof FleetgateError && e.code === 'CONFIG_INVALID');
      const problems = (e.detail.problems as string[]).join('\n');
      assert.match(problems, /unknown setting gateway\.mqtPort \(did you mean gateway\.mqttPort\?\)/);
      assert.match(problems, /unknown setting htps \(did you mean https\?\)/);
      assert.match(
        problems,
        /unknown setting https\.routes\[0\]\.timout \(did you mean https\.routes\[0\]\.timeout\?\)/,
      );
      return true;
    },
  );
});

test("config/registry: the data dir's file by default; a sqlite: path or a postgres:// URL from file, environment or flag; nonsense refused", () => {
  const dir = withFile({ registry: 'sqlite:/var/lib/fleetgate/r.db' });
  assert.equal(
    loadConfig({ dataDir: mkdtempSync(join(tmpdir(), 'fleetgate-config-')), env: {} }).registry.endsWith(
      '/registry.db',
    ),
    true,
  );
  assert.equal(loadConfig({ dataDir: dir, env: {} }).registry, '/var/lib/fleetgate/r.db');
  const url = 'postgres://fleetgate:secret@db.internal:5432/fleetgate';
  assert.equal(loadConfig({ dataDir: dir, env: { FLEETGATE_REGISTRY: url } }).registry, url);
  assert.equal(
    loadConfig({ dataDir: dir, env: { FLEETGATE_REGISTRY: url }, flags: { registry: 'sqlite:/tmp/x.db' } }).registry,
    '/tmp/x.db',
  );
  for (const bad of ['mysql://x/y', 'postgres://', 'sqlite:']) {
    assert.throws(
      () => loadConfig({ dataDir: dir, env: { FLEETGATE_REGISTRY: bad } }),
      (e: unknown) =>
        e instanceof FleetgateError && e.code === 'CONFIG_INVALID' && /FLEETGATE_REGISTRY/.test(e.message),
      bad,
    );
  }
  assert.throws(
    () => loadConfig({ dataDir: withFile({ registry: 5 }), env: {} }),
    (e: unknown) => e instanceof FleetgateError && /registry must be a string/.test(e.message),
  );
});

test('config/per-type outbound bounds: services absorb bursts by default, others follow mqtt.*; a file may set them per type', () => {
  const cfg = loadConfig({ dataDir: mkdtempSync(join(tmpdir(), 'fleetgate-config-')), env: {} });
  assert.equal(cfg.gateway.limits.service.maxOutboundBytes, 16 * 1024 * 1024);
  assert.equal(cfg.gateway.limits.service.maxQueuedMessages, 100_000);
  assert.equal(cfg.gateway.limits.sensor.maxOutboundBytes, undefined, 'a sensor uses mqtt.maxOutboundBytes');
  const dir = withFile({
    gateway: { limits: { sensor: { maxOutboundBytes: 4096 }, service: { maxQueuedMessages: 50 } } },
  });
  const set = loadConfig({ dataDir: dir, env: {} });
  assert.equal(set.gateway.limits.sensor.maxOutboundBytes, 4096);
  assert.equal(set.gateway.limits.service.maxQueuedMessages, 50);
  assert.equal(set.gateway.limits.service.maxOutboundBytes, 16 * 1024 * 1024, 'the other field keeps its default');
  assert.throws(
    () => loadConfig({ dataDir: withFile({ gateway: { limits: { camera: { maxOutboundBytes: 0 } } } }), env: {} }),
    /maxOutboundBytes is invalid/,
  );
});

test('config/cluster: sessions on JetStream by default, a node timeout of at least 6 s', () => {
  const dir = withFile({});
  const cfg = loadConfig({ dataDir: dir, env: {} });
  assert.equal(cfg.cluster.sessions, 'jetstream');
  assert.equal(cfg.cluster.nodeTimeoutMs, 30_000);
  const set = loadConfig({
    dataDir: dir,
    env: { FLEETGATE_CLUSTER_SESSIONS: 'node', FLEETGATE_CLUSTER_NODE_TIMEOUT: '2m' },
  });
  assert.equal(set.cluster.sessions, 'node');
  assert.equal(set.cluster.nodeTimeoutMs, 120_000);
  for (const value of ['5s', 'soon'])
    assert.throws(
      () => loadConfig({ dataDir: dir, env: { FLEETGATE_CLUSTER_NODE_TIMEOUT: value } }),
      (e: unknown) =>
        e instanceof FleetgateError &&
        (e.detail.problems as string[]).some((p) => /FLEETGATE_CLUSTER_NODE_TIMEOUT.*at least 6s/.test(p)),
    );
});
