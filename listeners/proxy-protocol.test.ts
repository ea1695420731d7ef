import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseProxyHeader, trustedBalancers } from './proxy-protocol.ts';

const SIG = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
const v2 = (cmd: number, fam: number, body: Buffer) =>
  Buffer.concat([SIG, Buffer.from([0x20 | cmd, fam, body.length >> 8, body.length & 255]), body]);

test('proxy protocol/v1 and v2 headers: addresses, LOCAL and UNKNOWN, partial input, malformed input', () => {
  const tls = Buffer.from([0x16, 0x03, 0x01]);
  const v1 = Buffer.concat([Buffer.from('PROXY TCP4 192.0.2.7 10.0.0.1 5555 8883\r\n'), tls]);
  assert.deepEqual(parseProxyHeader(v1), { consumed: v1.length - 3, address: '192.0.2.7', port: 5555 });
  assert.deepEqual(parseProxyHeader(Buffer.from('PROXY TCP6 2001:db8::1 ::1 5 6\r\n')), {
    consumed: 32,
    address: '2001:db8::1',
    port: 5,
  });
  assert.deepEqual(parseProxyHeader(Buffer.from('PROXY UNKNOWN\r\n')), { consumed: 15 });
  assert.deepEqual(parseProxyHeader(Buffer.from('PROXY TCP4 192.0.2.7')), { need: true });
  assert.deepEqual(parseProxyHeader(Buffer.from('PRO')), { need: true });
  for (const bad of [
    'PROXY TCP4 999.0.0.1 1.2.3.4 1 2\r\n',
    'PROXY TCP4 1.2.3.4 1.2.3.4 x 2\r\n',
    'PROXZ',
    `PROXY ${'x'.repeat(120)}`,
  ])
    assert.ok('invalid' in parseProxyHeader(Buffer.from(bad)), bad);
  const ipv4 = Buffer.from([198, 51, 100, 9, 10, 0, 0, 1, 0x1f, 0x90, 0x22, 0xb3]);
  assert.deepEqual(parseProxyHeader(Buffer.concat([v2(1, 0x11, ipv4), tls])), {
    consumed: 28,
    address: '198.51.100.9',
    port: 8080,
  });
  const ipv6 = Buffer.alloc(36);
  ipv6.writeUInt16BE(0x2001, 0);
  ipv6.writeUInt16BE(0x0db8, 2);
  ipv6.writeUInt16BE(7, 14);
  ipv6.writeUInt16BE(443, 32);
  assert.deepEqual(parseProxyHeader(v2(1, 0x21, ipv6)), { consumed: 52, address: '2001:db8::7', port: 443 });
  assert.deepEqual(parseProxyHeader(v2(0, 0x00, Buffer.alloc(0))), { consumed: 16 }, 'LOCAL: a health check');
  assert.deepEqual(parseProxyHeader(v2(1, 0x11, ipv4).subarray(0, 20)), { need: true });
  assert.ok('invalid' in parseProxyHeader(v2(1, 0x51, ipv4)), 'unknown family');
  assert.ok('invalid' in parseProxyHeader(Buffer.concat([SIG, Buffer.from([0x21, 0x11, 0xff, 0xff])])), 'too long');
  assert.ok('invalid' in parseProxyHeader(Buffer.from([0x0d, 0x0a, 0x0d, 0x0b])), 'not the signature');
});

test('proxy protocol/trusted balancers: addresses and CIDRs, IPv4-mapped too', () => {
  assert.equal(trustedBalancers([]), undefined);
  const list = trustedBalancers(['10.0.0.0/8', '192.0.2.7', 'fd00::/8'])!;
  assert.ok(list.check('10.1.2.3', 'ipv4'));
  assert.ok(list.check('192.0.2.7', 'ipv4'));
  assert.ok(!list.check('192.0.2.8', 'ipv4'));
  assert.ok(list.check('fd12::1', 'ipv6'));
  assert.throws(() => trustedBalancers(['nonsense']));
});
