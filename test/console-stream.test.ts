// Issue #13: no session duration on the console either. An operator's live overview stream
// (server-sent events) carries samples while the certificate is valid, and ends with a
// `refused` event as soon as the operator's certificate is revoked.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { request } from 'node:https';
import { test } from 'node:test';
import { startTestFleet } from '../harness/gateway.ts';
import { withTimeout } from '../harness/mqtt.ts';
import { enrollDevice } from '../harness/pki.ts';

test("console stream/the live overview ends when the operator's certificate is revoked", async (t) => {
  const fleet = await startTestFleet(t);
  const op = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'carol', type: 'operator' });
  const events: string[] = [];
  let ended!: () => void;
  const end = new Promise<void>((r) => {
    ended = r;
  });
  let onData = () => undefined as undefined;
  const req = request(
    `https://127.0.0.1:${fleet.gateway.ports.console}/events`,
    {
      ca: readFileSync(fleet.rootFile),
      cert: op.certPem,
      key: op.keyPem,
      servername: 'localhost',
      agent: false,
    },
    (res) => {
      assert.equal(res.statusCode, 200);
      assert.match(String(res.headers['content-type']), /^text\/event-stream/);
      let buf = '';
      res.on('data', (b: Buffer) => {
        buf += b.toString();
        for (let i = buf.indexOf('\n\n'); i !== -1; i = buf.indexOf('\n\n')) {
          events.push(buf.slice(0, i));
          buf = buf.slice(i + 2);
        }
        onData();
      });
      res.on('end', ended);
      res.on('close', ended);
    },
  );
  req.on('error', () => ended());
  req.end();
  t.after(() => req.destroy());
  const until = (ok: () => boolean, what: string) =>
    withTimeout(
      new Promise<void>((r) => {
        onData = () => {
          if (ok()) r();
        };
        onData();
      }),
      20_000,
      what,
    );

  await until(() => events.some((e) => e.startsWith('data: ')), 'a live sample');
  const sample = JSON.parse(events.find((e) => e.startsWith('data: '))!.slice(6)) as {
    connected: number;
    intervalS: number;
  };
  assert.equal(typeof sample.connected, 'number');

  fleet.registry.revokeDevice('carol', 9, 'test');
  await until(() => events.some((e) => e.startsWith('event: refused')), 'the refusal on the stream');
  assert.match(events.find((e) => e.startsWith('event: refused'))!, /CERT_REVOKED|DEVICE_REVOKED/);
  await withTimeout(end, 20_000, 'the end of the stream');
});
