import assert from 'node:assert/strict';
import { test } from 'node:test';
import { decode, validFilter } from './decode.ts';
import { encodePublish } from './encode.ts';
import { Framer } from './framer.ts';
import { MalformedPacket } from './packets.ts';

function publish(topic: string, payloadBytes: number): Buffer {
  const p = encodePublish(topic, Buffer.alloc(payloadBytes, 0x61), 0, false);
  return Buffer.concat([p.head, p.payload]);
}

test('framing/ok/packets at the limit, split at every byte boundary', () => {
  const a = publish('t/a', 100);
  const b = publish('t/b', 200);
  const limit = b.length - 2; // remaining length of b
  for (let cut = 1; cut < a.length + b.length; cut++) {
    const seen: number[] = [];
    const f = new Framer(
      () => limit,
      (_first, body) => seen.push(body.length),
    );
    const all = Buffer.concat([a, b]);
    f.push(all.subarray(0, cut));
    f.push(all.subarray(cut));
    assert.deepEqual(seen, [a.length - 2, b.length - 3], `cut at ${cut}`);
  }
});

test('framing/error/one byte over the limit is refused from the fixed header, before the body arrives', () => {
  const big = publish('t', 1_000);
  const f = new Framer(
    () => big.length - 4,
    () => assert.fail('no packet'),
  );
  assert.throws(
    () => f.push(big.subarray(0, 3)),
    (e: unknown) => e instanceof MalformedPacket && e.rule === 'MQTT-2.2.3',
  );
});

test('framing/error/remaining length of five bytes, or not minimal', () => {
  assert.throws(
    () =>
      new Framer(
        () => 1e9,
        () => undefined,
      ).push(Buffer.from([0x30, 0xff, 0xff, 0xff, 0xff, 0x01])),
    MalformedPacket,
  );
  assert.throws(
    () =>
      new Framer(
        () => 1e9,
        () => undefined,
      ).push(Buffer.from([0x30, 0x80, 0x00])),
    MalformedPacket,
  );
});

test('decode/ok/a QoS 1 PUBLISH', () => {
  const p = encodePublish('devices/a/b', Buffer.from('x'), 1, true);
  const body = Buffer.concat([p.head.subarray(2), Buffer.from([0, 9]), p.payload]);
  assert.deepEqual(decode(p.head[0] as number, body), {
    type: 'publish',
    topic: 'devices/a/b',
    payload: Buffer.from('x'),
    qos: 1,
    retain: true,
    dup: false,
    packetId: 9,
  });
});

test('decode/error/a UTF-8 BOM is kept, not skipped [MQTT-1.5.3-3]', () => {
  const topic = '\uFEFFa';
  const p = encodePublish(topic, Buffer.alloc(0), 0, false);
  assert.equal((decode(p.head[0] as number, p.head.subarray(2)) as { topic: string }).topic, topic);
});

test('filters/valid and invalid [MQTT-4.7.1-2], [MQTT-4.7.1-3]', () => {
  for (const ok of ['#', 'a/#', '+', 'a/+/b', '+/+', '/', 'a//b']) assert.equal(validFilter(ok), true, ok);
  for (const bad of ['', 'a#', 'a/#/b', 'a+', 'a/b+/c', '#/a']) assert.equal(validFilter(bad), false, bad);
});
