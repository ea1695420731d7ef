import assert from 'node:assert/strict';
import { test } from 'node:test';
import { PacketScanner } from './packet-limit.ts';

const publish = (bodyLength: number): Buffer => {
  const len: number[] = [];
  let n = bodyLength;
  do {
    let b = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) b |= 0x80;
    len.push(b);
  } while (n > 0);
  return Buffer.concat([Buffer.from([0x30, ...len]), Buffer.alloc(bodyLength)]);
};

test('packet limit/ok/packets at the limit, split anywhere', () => {
  const stream = Buffer.concat([publish(10), publish(1000), publish(0), publish(1024)]);
  for (const size of [1, 2, 3, 7, 100, stream.length]) {
    const s = new PacketScanner(1024);
    for (let i = 0; i < stream.length; i += size) assert.equal(s.feed(stream.subarray(i, i + size)), undefined, `chunk ${size}`);
  }
});

test('packet limit/error/one byte over the limit is refused from its header', () => {
  const s = new PacketScanner(1024);
  assert.equal(s.feed(publish(10)), undefined);
  assert.match(s.feed(publish(1025).subarray(0, 3)) ?? '', /1025 bytes exceeds the limit of 1024/);
});

test('packet limit/error/malformed remaining length', () => {
  assert.match(new PacketScanner(1 << 30).feed(Buffer.from([0x30, 0xff, 0xff, 0xff, 0xff, 0x01])) ?? '', /malformed/);
});
