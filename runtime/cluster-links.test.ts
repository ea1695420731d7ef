import assert from 'node:assert/strict';
import { test } from 'node:test';
import { checkClusterLinks, isLoopbackHost, natsLinkSecurity, registryLinkSecurity } from './cluster-links.ts';

const identity = {
  role: 'gateway',
  name: 'n1',
  notAfter: new Date(),
  certFile: 'c',
  keyFile: 'k',
  cert: '',
  key: '',
  ca: '',
};

test('cluster links/loopback is 127.0.0.0/8, ::1 and localhost, nothing else', () => {
  for (const h of ['127.0.0.1', '127.9.8.7', '::1', '[::1]', 'localhost', 'LOCALHOST']) assert.ok(isLoopbackHost(h), h);
  for (const h of ['10.0.0.1', '0.0.0.0', '::', 'nats.internal', '128.0.0.1', '::ffff:127.0.0.1', 'localhost.evil'])
    assert.ok(!isLoopbackHost(h), h);
});

test('cluster links/NATS: tls:// with a node certificate is mTLS; nats:// off loopback is insecure', () => {
  assert.equal(natsLinkSecurity('', undefined), 'none');
  assert.equal(natsLinkSecurity('nats://127.0.0.1:4222', undefined), 'loopback');
  assert.equal(natsLinkSecurity('tls://10.0.0.5:4222', identity), 'mtls');
  assert.equal(natsLinkSecurity('tls://10.0.0.5:4222', undefined), 'insecure', 'TLS without a client certificate');
  assert.equal(natsLinkSecurity('nats://10.0.0.5:4222', identity), 'insecure');
  assert.equal(
    natsLinkSecurity('tls://10.0.0.5:4222,nats://10.0.0.6:4222', identity),
    'insecure',
    'one open URL is enough',
  );
  assert.equal(natsLinkSecurity('tls://10.0.0.5:4222,nats://127.0.0.1:4222', identity), 'loopback');
});

test('cluster links/PostgreSQL: verify-full with a client certificate is mTLS; require is not', () => {
  const files = 'sslrootcert=/r&sslcert=/c&sslkey=/k';
  assert.equal(registryLinkSecurity('/data/registry.db'), 'none');
  assert.equal(registryLinkSecurity('postgres://u@127.0.0.1/db'), 'loopback');
  assert.equal(registryLinkSecurity('postgres://u@db/x?host=/var/run/postgresql'), 'loopback', 'a Unix socket');
  assert.equal(registryLinkSecurity(`postgres://u@10.0.0.7/db?sslmode=verify-full&${files}`), 'mtls');
  assert.equal(
    registryLinkSecurity(`postgres://u@10.0.0.7/db?sslmode=require&${files}`),
    'insecure',
    'no server check',
  );
  assert.equal(registryLinkSecurity('postgres://u:pw@10.0.0.7/db?sslmode=verify-full&sslrootcert=/r'), 'insecure');
  assert.equal(registryLinkSecurity('postgresql://u@db.internal/db'), 'insecure');
});

test('cluster links/an insecure link refuses unless allowed, and says which', () => {
  const config = (nats: string, registry: string, allowInsecure = false) => ({
    registry,
    cluster: { nats, allowInsecure },
  });
  assert.throws(
    () => checkClusterLinks(config('nats://10.0.0.5:4222', ''), identity),
    (e: { code?: string; message?: string }) => e.code === 'CLUSTER_INSECURE' && /NATS/.test(e.message ?? ''),
  );
  assert.throws(
    () => checkClusterLinks(config('', 'postgres://u@10.0.0.7/db'), undefined),
    (e: { code?: string; message?: string }) => e.code === 'CLUSTER_INSECURE' && /PostgreSQL/.test(e.message ?? ''),
  );
  assert.deepEqual(checkClusterLinks(config('nats://10.0.0.5:4222', '', true), identity), {
    nats: 'insecure',
    registry: 'none',
    insecureAllowed: true,
  });
});
