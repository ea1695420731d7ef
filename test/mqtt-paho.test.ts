// Issue #11: a third well-known client against the MQTT core — Eclipse Paho (Python, Debian's
// python3-paho-mqtt) — over mqtts and wss, QoS 1 and 2, with the fleet's certificates.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { after, before, test } from 'node:test';
import { startTestFleet, type TestFleet } from '../harness/gateway.ts';
import { type Credential, enrollDevice } from '../harness/pki.ts';
import { fileScope, run } from '../harness/run.ts';

// Debian's interpreter, where python3-paho-mqtt installs (a pyenv python3 on PATH would not see it).
const PYTHON = '/usr/bin/python3';

const SCRIPT = `
import json, ssl, sys, time
import paho.mqtt.client as mqtt
host, port, transport, ca, dev_cert, dev_key, svc_cert, svc_key = sys.argv[1:9]
def client(cid, cert, key):
    c = mqtt.Client(client_id=cid, transport=transport, protocol=mqtt.MQTTv311)
    c.tls_set(ca_certs=ca, certfile=cert, keyfile=key, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    if transport == 'websockets':
        c.ws_set_options(path='/mqtt')
    return c
got = []
sub = client('svc-paho', svc_cert, svc_key)
sub.on_message = lambda c, u, m: got.append({'topic': m.topic, 'payload': m.payload.decode(), 'qos': m.qos})
rc = {}
sub.on_connect = lambda c, u, f, r: rc.__setitem__('sub', r)
sub.on_subscribe = lambda c, u, mid, granted: rc.__setitem__('granted', list(granted))
sub.connect(host, int(port), keepalive=30)
sub.loop_start()
while 'sub' not in rc: time.sleep(0.02)
sub.subscribe([('devices/+/paho', 2), ('other/#', 1)])
while 'granted' not in rc: time.sleep(0.02)
pub = client('dev-paho', dev_cert, dev_key)
pub.on_connect = lambda c, u, f, r: rc.__setitem__('pub', r)
pub.connect(host, int(port), keepalive=30)
pub.loop_start()
while 'pub' not in rc: time.sleep(0.02)
for qos in (1, 2):
    info = pub.publish('devices/dev-paho/paho', 'q%d' % qos, qos=qos)
    info.wait_for_publish()
deadline = time.time() + 15
while len(got) < 2 and time.time() < deadline: time.sleep(0.02)
pub.disconnect(); sub.disconnect()
print(json.dumps({'rc': rc, 'got': got}))
`;

let fleet: TestFleet;
const c: Record<string, Credential> = {};
const scope = fileScope(after);
const available = existsSync(PYTHON) && (await run(PYTHON, ['-c', 'import paho.mqtt.client'])).code === 0;
if (!available && process.env.CI !== undefined)
  throw new Error('python3-paho-mqtt is missing: .ci/run must install it');

before(async () => {
  if (!available) return;
  fleet = await startTestFleet(scope);
  c.dev = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'dev-paho' });
  c.svc = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'svc-paho', type: 'service' });
});

for (const transport of ['tcp', 'websockets'] as const) {
  test(`paho/${transport === 'tcp' ? 'mqtts' : 'wss'}: QoS 1 and 2 delivered once at the granted QoS; a filter outside the service's scope gets 0x80`, {
    skip: available ? false : 'python3-paho-mqtt is not installed here (CI installs it)',
  }, async () => {
    const port = transport === 'tcp' ? fleet.gateway.ports.mqtts : fleet.gateway.ports.wss;
    const r = await run(
      PYTHON,
      [
        '-c',
        SCRIPT,
        'localhost',
        String(port),
        transport,
        fleet.rootFile,
        c.dev!.certFile,
        c.dev!.keyFile,
        c.svc!.certFile,
        c.svc!.keyFile,
      ],
      { timeoutMs: 60_000 },
    );
    assert.equal(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout) as {
      rc: { sub: number; pub: number; granted: number[] };
      got: { topic: string; payload: string; qos: number }[];
    };
    assert.deepEqual([out.rc.sub, out.rc.pub], [0, 0]);
    assert.deepEqual(out.rc.granted, [2, 128]);
    assert.deepEqual(out.got, [
      { topic: 'devices/dev-paho/paho', payload: 'q1', qos: 1 },
      { topic: 'devices/dev-paho/paho', payload: 'q2', qos: 2 },
    ]);
  });
}

// MQTT 5 with Paho (v5 mode): properties through, subscription identifier, a refused
// subscription's reason code (0x87), CONNACK properties as Paho reads them.
const SCRIPT_V5 = `
import json, ssl, sys, time
import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes
host, port, transport, ca, dev_cert, dev_key, svc_cert, svc_key = sys.argv[1:9]
def client(cid, cert, key):
    c = mqtt.Client(client_id=cid, transport=transport, protocol=mqtt.MQTTv5)
    c.tls_set(ca_certs=ca, certfile=cert, keyfile=key, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    if transport == 'websockets':
        c.ws_set_options(path='/mqtt')
    return c
out = {'got': []}
sub = client('svc-paho', svc_cert, svc_key)
def on_connect(c, u, flags, rc, props):
    out['sub_rc'] = rc.value
    out['connack'] = {'ReceiveMaximum': getattr(props, 'ReceiveMaximum', None), 'TopicAliasMaximum': getattr(props, 'TopicAliasMaximum', None), 'MaximumPacketSize': getattr(props, 'MaximumPacketSize', None)}
sub.on_connect = on_connect
sub.on_subscribe = lambda c, u, mid, rcs, props: out.__setitem__('granted', [r.value for r in rcs])
def on_message(c, u, m):
    p = m.properties
    out['got'].append({'topic': m.topic, 'payload': m.payload.decode(), 'qos': m.qos,
        'user': getattr(p, 'UserProperty', None), 'contentType': getattr(p, 'ContentType', None), 'subId': getattr(p, 'SubscriptionIdentifier', None)})
sub.on_message = on_message
sub.connect(host, int(port), keepalive=30, clean_start=True)
sub.loop_start()
while 'sub_rc' not in out: time.sleep(0.02)
sp = Properties(PacketTypes.SUBSCRIBE)
sp.SubscriptionIdentifier = 42
sub.subscribe([('devices/+/paho5', mqtt.SubscribeOptions(qos=1)), ('other/#', mqtt.SubscribeOptions(qos=1))], properties=sp)
while 'granted' not in out: time.sleep(0.02)
pub = client('dev-paho', dev_cert, dev_key)
pub.on_connect = lambda c, u, f, rc, props: out.__setitem__('pub_rc', rc.value)
pub.connect(host, int(port), keepalive=30, clean_start=True)
pub.loop_start()
while 'pub_rc' not in out: time.sleep(0.02)
pp = Properties(PacketTypes.PUBLISH)
pp.UserProperty = [('a', '1'), ('b', '2')]
pp.ContentType = 'text/plain'
pub.publish('devices/dev-paho/paho5', 'v5', qos=1, properties=pp).wait_for_publish()
deadline = time.time() + 15
while len(out['got']) < 1 and time.time() < deadline: time.sleep(0.02)
pub.disconnect(); sub.disconnect()
print(json.dumps(out))
`;

for (const transport of ['tcp', 'websockets'] as const) {
  test(`paho MQTT 5/${transport === 'tcp' ? 'mqtts' : 'wss'}: CONNACK properties, user properties and content type through, subscription identifier, SUBACK 0x87 for a filter outside the scope`, {
    skip: available ? false : 'python3-paho-mqtt is not installed here (CI installs it)',
  }, async () => {
    const port = transport === 'tcp' ? fleet.gateway.ports.mqtts : fleet.gateway.ports.wss;
    const r = await run(
      PYTHON,
      [
        '-c',
        SCRIPT_V5,
        'localhost',
        String(port),
        transport,
        fleet.rootFile,
        c.dev!.certFile,
        c.dev!.keyFile,
        c.svc!.certFile,
        c.svc!.keyFile,
      ],
      { timeoutMs: 60_000 },
    );
    assert.equal(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout) as {
      sub_rc: number;
      pub_rc: number;
      granted: number[];
      connack: Record<string, number>;
      got: Record<string, unknown>[];
    };
    assert.deepEqual([out.sub_rc, out.pub_rc], [0, 0]);
    assert.deepEqual(out.granted, [1, 0x87]);
    assert.deepEqual(out.connack, {
      ReceiveMaximum: fleet.config.mqtt.receiveMaximum,
      TopicAliasMaximum: fleet.config.mqtt.topicAliasMaximum,
      MaximumPacketSize: fleet.config.gateway.limits.service.maxPacketBytes,
    });
    assert.deepEqual(out.got, [
      {
        topic: 'devices/dev-paho/paho5',
        payload: 'v5',
        qos: 1,
        user: [
          ['a', '1'],
          ['b', '2'],
        ],
        contentType: 'text/plain',
        subId: [42],
      },
    ]);
  });
}

// Shared subscriptions with Paho (v5), as the Paho interoperability suite's test_shared_subscriptions
// does it: two clients in one $share group, messages published, each delivered to one of them.
const SCRIPT_SHARED = `
import json, ssl, sys, time
import paho.mqtt.client as mqtt
host, port, ca, dev_cert, dev_key, a_cert, a_key, b_cert, b_key = sys.argv[1:10]
def client(cid, cert, key):
    c = mqtt.Client(client_id=cid, protocol=mqtt.MQTTv5)
    c.tls_set(ca_certs=ca, certfile=cert, keyfile=key, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    return c
out = {'a': [], 'b': [], 'granted': [], 'shared_available': []}
subs = []
for name, cid, cert, key in (('a', 'svc-paho', a_cert, a_key), ('b', 'svc-paho-2', b_cert, b_key)):
    c = client(cid, cert, key)
    c.on_message = (lambda n: lambda cl, u, m: out[n].append(m.payload.decode()))(name)
    c.on_connect = lambda cl, u, f, rc, props: out['shared_available'].append(getattr(props, 'SharedSubscriptionAvailable', 1))
    c.on_subscribe = lambda cl, u, mid, rcs, props: out['granted'].append([r.value for r in rcs])
    c.connect(host, int(port), keepalive=30)
    c.loop_start()
    subs.append(c)
while len(out['shared_available']) < 2: time.sleep(0.02)
for c in subs: c.subscribe('$share/sharename/devices/+/shared', qos=2)
while len(out['granted']) < 2: time.sleep(0.02)
pub = client('dev-paho', dev_cert, dev_key)
pub.connect(host, int(port), keepalive=30)
pub.loop_start()
for i in range(10):
    pub.publish('devices/dev-paho/shared', 'm%d' % i, qos=2).wait_for_publish()
deadline = time.time() + 15
while len(out['a']) + len(out['b']) < 10 and time.time() < deadline: time.sleep(0.02)
time.sleep(0.2)
pub.disconnect()
for c in subs: c.disconnect()
print(json.dumps(out))
`;

test('paho/shared subscription ($share, MQTT 5): two services in one group, each message to exactly one of them', {
  skip: available ? false : 'python3-paho-mqtt is not installed here (CI installs it)',
}, async () => {
  const second = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'svc-paho-2', type: 'service' });
  const r = await run(
    PYTHON,
    [
      '-c',
      SCRIPT_SHARED,
      'localhost',
      String(fleet.gateway.ports.mqtts),
      fleet.rootFile,
      c.dev!.certFile,
      c.dev!.keyFile,
      c.svc!.certFile,
      c.svc!.keyFile,
      second.certFile,
      second.keyFile,
    ],
    { timeoutMs: 60_000 },
  );
  assert.equal(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout) as { a: string[]; b: string[]; granted: number[][]; shared_available: number[] };
  assert.deepEqual(out.shared_available, [1, 1], 'CONNACK: Shared Subscription Available');
  assert.deepEqual(out.granted, [[2], [2]]);
  const all = [...out.a, ...out.b].sort();
  assert.deepEqual(all, Array.from({ length: 10 }, (_, i) => `m${i}`).sort(), 'each message once');
  assert.deepEqual([out.a.length, out.b.length], [5, 5], 'round robin');
});
