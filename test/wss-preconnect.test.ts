// Issue #25 point 1: before CONNECT nothing is buffered past the pre-CONNECT bound, on WSS too.
// The attack found from outside: 40 WSS connections with a *revoked* sensor certificate (TLS
// accepts it; status is checked after the handshake), each sending the start of an ~8 MiB
// WebSocket frame and never finishing it, took a gateway from 137 to 549 MiB. Now the frame is
// refused from its header (close 1009) before its payload is buffered, and connections that
// wait for their CONNECT are capped per address.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { type TestContext, test } from 'node:test';
import WebSocket from 'ws';
import { dataPaths } from '../config/paths.ts';
import { initFleet } from '../harness/fleet.ts';
import { type Credential, enrollDevice } from '../harness/pki.ts';
import { connectBytes } from '../harness/raw-mqtt.ts';
import { spawnService } from '../harness/services.ts';
import { loadCa } from '../provisioning/ca/authority.ts';
import { RegistryWriter } from '../provisioning/registry/writer.ts';

const ATTACKERS = 40;
const FRAME = 8 * 1024 * 1024;

/** Opens a WSS connection and sends the header of an 8 MiB binary frame, then payload until the server closes. */
async function attack(url: string, ca: Buffer, cred: Credential): Promise<{ code: number; sent: number }> {
  const ws = new WebSocket(url, 'mqtt', { ca, cert: cred.certPem, key: cred.keyPem });
  ws.on('error', () => undefined);
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('error', reject);
  });
  const socket = (ws as unknown as { _socket: import('node:net').Socket })._socket;
  const closed = new Promise<number>((resolve) => ws.once('close', (code) => resolve(code)));
  let open = true;
  void closed.then(() => {
    open = false;
  });
  // A masked binary frame (client frames are masked, RFC 6455 §5.3) announcing 8 MiB.
  const header = Buffer.alloc(14);
  header[0] = 0x82;
  header[1] = 0x80 | 127;
  header.writeBigUInt64BE(BigInt(FRAME), 2);
  randomBytes(4).copy(header, 10);
  socket.write(header);
  const chunk = randomBytes(64 * 1024);
  let sent = 0;
  while (open && sent < FRAME - chunk.length) {
    if (!socket.write(chunk)) await new Promise((r) => setTimeout(r, 5)); // no unbounded client buffer
    sent += chunk.length;
    await new Promise((r) => setImmediate(r));
  }
  const code = await Promise.race([closed, new Promise<number>((r) => setTimeout(() => r(-1), 30_000))]);
  ws.terminate();
  return { code, sent };
}

/** A data directory with one enrolled sensor, and a gateway in its own process on it. */
async function gatewayWithDevice(t: TestContext, id: string, env: NodeJS.ProcessEnv = {}) {
  const fleet = await initFleet(t);
  const paths = dataPaths(fleet.data);
  const registry = new RegistryWriter(paths.registry);
  t.after(() => registry.close());
  const ca = await loadCa(paths);
  const cred = await enrollDevice(registry, ca, fleet.dir, { id });
  const start = () => spawnService('gateway', fleet.data, { FLEETGATE_LOG_LEVEL: 'warn', ...env });
  return { registry, cred, ca: Buffer.from(ca.rootPem), start };
}

test('wss before CONNECT/40 revoked connections announcing 8 MiB frames are closed from the header (1009); the gateway holds no megabytes', {
  timeout: 180_000,
}, async (t) => {
  const { registry, cred, ca, start } = await gatewayWithDevice(t, 'wss-attacker');
  registry.revokeDevice('wss-attacker', 1, 'test');
  const gw = await start();
  t.after(() => gw.stop());
  const before = gw.rssBytes();
  const results = await Promise.all(
    Array.from({ length: ATTACKERS }, () => attack(gw.endpoints['mqtt+wss']!, ca, cred)),
  );
  const after = gw.rssBytes();
  for (const r of results) {
    assert.equal(r.code, 1009, 'closed by the server: message too big');
    assert.ok(r.sent < 4 * 1024 * 1024, `closed before the frame was half sent (${r.sent} bytes sent)`);
  }
  // 40 TLS connections cost ~2.5 MiB here; without the bound the gateway held each frame (~320 MiB).
  const grownMiB = (after - before) / 2 ** 20;
  t.diagnostic(`gateway RSS ${(before / 2 ** 20).toFixed(1)} → ${(after / 2 ** 20).toFixed(1)} MiB under the attack`);
  assert.ok(grownMiB < 64, `gateway RSS grew ${grownMiB.toFixed(1)} MiB`);
});

test('wss before CONNECT/connections waiting for their CONNECT are capped per address; another address still gets in', {
  timeout: 120_000,
}, async (t) => {
  const { cred, ca, start } = await gatewayWithDevice(t, 'idle-1', { FLEETGATE_MAX_PENDING_CONNECTS_PER_ADDRESS: '5' });
  const gw = await start();
  t.after(() => gw.stop());
  const url = gw.endpoints['mqtt+wss']!;
  const open = async (localAddress = '127.0.0.1') => {
    const ws = new WebSocket(url, 'mqtt', { ca, cert: cred.certPem, key: cred.keyPem, localAddress });
    ws.on('error', () => undefined);
    t.after(() => ws.terminate());
    const closed = new Promise<void>((r) => ws.once('close', () => r()));
    await new Promise<void>((r) => ws.once('open', () => r()));
    return { ws, closed };
  };
  const waiting = [];
  for (let i = 0; i < 5; i++) waiting.push(await open()); // five never send CONNECT: all held
  const sixth = await open();
  await sixth.closed; // the sixth from the same address is closed at once
  for (const w of waiting) assert.equal(w.ws.readyState, WebSocket.OPEN, 'the first five still wait');
  // Another address is not refused: its CONNECT is admitted (CONNACK 0).
  const elsewhere = await open('127.0.0.2');
  const connack = new Promise<Buffer>((r) => elsewhere.ws.once('message', (data: Buffer) => r(data)));
  elsewhere.ws.send(connectBytes('idle-1'));
  const ack = await connack;
  assert.deepEqual([ack[0], ack[3]], [0x20, 0], 'CONNACK, accepted');
});
