// #29 point 4: a node publishes to NATS only what another node listens to. Three buses (what a
// gateway node uses between nodes) on a nats-server of their own: announcements, a late joiner
// asking for the others' sets, a forged change forcing a resync, a malformed one refused — and
// throughout, nothing another node listens to is left unpublished.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { connect as natsConnect } from 'nats';
import pino from 'pino';
import { NatsBus } from '../gateway/cluster/bus.ts';
import { interestSubject } from '../gateway/cluster/interest.ts';
import { filterToSubjects } from '../gateway/cluster/subjects.ts';
import { Message } from '../gateway/mqtt/session.ts';
import { until } from '../harness/mqtt.ts';
import { NATS_SERVER, type NatsServer, natsAvailable, startNats } from '../harness/nats.ts';
import { freePort, measured, untilListening } from '../harness/services.ts';

if (!natsAvailable() && process.env.CI === 'true')
  throw new Error("nats-server is missing: .ci/run installs Debian's nats-server for the cluster tests");
const skip = natsAvailable() ? false : 'no nats-server (apt-get install nats-server)';

let nats: NatsServer;
const quiet = pino({ level: 'silent' });
const limits = { retainedTotal: 1_000, retainedBytesTotal: 1024 * 1024 };

interface Heard {
  messages: string[];
  shared: string[];
}

async function bus(node: string, servers = nats.url): Promise<{ bus: NatsBus; heard: Heard }> {
  const heard: Heard = { messages: [], shared: [] };
  const b = await NatsBus.connect(
    { servers },
    node,
    quiet,
    {
      message: (m) => heard.messages.push(`${m.topic}=${m.payload.toString()}`),
      shared: (key, m) => heard.shared.push(`${key} ${m.topic}=${m.payload.toString()}`),
      link: () => undefined,
      session: () => undefined,
      retained: () => undefined,
    },
    limits,
  );
  return { bus: b, heard };
}

const msg = (topic: string, payload: string) => new Message(topic, Buffer.from(payload), 0, false, 'i-sensor');
/** How many distinct NATS subjects these filters listen on (a wildcard filter also listens for long topics). */
const subjectsOf = (...filters: string[]) => new Set(filters.flatMap(filterToSubjects)).size;
const settled = (b: NatsBus) =>
  until('the node knows every peer’s set', () => b.interest?.everything === false, 20_000);

before(async () => {
  if (skip !== false) return;
  nats = await startNats();
});
after(async () => {
  await nats?.stop();
});

test('cluster/interest: a message goes to NATS only when another node listens to its subject', { skip }, async () => {
  const a = await bus('ia');
  const b = await bus('ib');
  try {
    // Just started: every message goes out (a peer's set is not known yet).
    assert.equal(a.bus.interest?.everything, true);
    await settled(a.bus);
    a.bus.publish(msg('devices/i-sensor/telemetry', 'nobody'));
    assert.equal(a.bus.counts.unwanted, 1, 'nobody listens: not published');
    assert.equal(a.bus.counts.sent, 0);

    b.bus.filterAdded('devices/+/telemetry');
    b.bus.filterAdded('devices/i-sensor/commands/#');
    const both = subjectsOf('devices/+/telemetry', 'devices/i-sensor/commands/#');
    await until('A knows B’s subjects', () => a.bus.interest?.subjects === both);
    a.bus.publish(msg('devices/i-sensor/telemetry', 't1'));
    a.bus.publish(msg('devices/i-sensor/commands', 'c1')); // `#` matches the parent level
    a.bus.publish(msg('devices/i-sensor/commands/reboot', 'c2'));
    a.bus.publish(msg('devices/i-sensor/state', 'unwanted'));
    await until('B has the three it listens to', () => b.heard.messages.length === 3);
    assert.deepEqual(b.heard.messages, [
      'devices/i-sensor/telemetry=t1',
      'devices/i-sensor/commands=c1',
      'devices/i-sensor/commands/reboot=c2',
    ]);
    assert.equal(a.bus.counts.unwanted, 2);
    assert.equal(a.bus.counts.sent, 3);

    // A filter held twice is announced once and withdrawn with its last holder.
    b.bus.filterAdded('devices/+/telemetry');
    b.bus.filterRemoved('devices/+/telemetry');
    a.bus.publish(msg('devices/i-sensor/telemetry', 't2'));
    await until('B has t2', () => b.heard.messages.includes('devices/i-sensor/telemetry=t2'));
    b.bus.filterRemoved('devices/+/telemetry');
    const commands = subjectsOf('devices/i-sensor/commands/#');
    await until('A knows B let it go', () => a.bus.interest?.subjects === commands);
    a.bus.publish(msg('devices/i-sensor/telemetry', 't3'));
    assert.equal(a.bus.counts.unwanted, 3);

    // Shared groups: B's members are interest; so are A's own (NATS's queue group may choose A).
    b.bus.sharedAdded('g1 devices/+/s', 'devices/+/s');
    const withGroup = subjectsOf('devices/i-sensor/commands/#', 'devices/+/s');
    await until('A knows B’s group', () => a.bus.interest?.subjects === withGroup);
    a.bus.publish(msg('devices/i-sensor/s', 's1'));
    await until('B’s member has s1', () => b.heard.shared.length === 1);
    b.bus.sharedRemoved('g1 devices/+/s', 'devices/+/s');
    a.bus.sharedAdded('g2 devices/+/own', 'devices/+/own');
    a.bus.publish(msg('devices/i-sensor/own', 'o1'));
    await until('A’s own member has o1 through NATS', () => a.heard.shared.length === 1);
    assert.deepEqual(a.heard.shared, ['g2 devices/+/own devices/i-sensor/own=o1']);
  } finally {
    await Promise.all([a.bus.close(), b.bus.close()]);
  }
});

test('cluster/interest: a node that joins late asks for the sets, and publishes everything until it has them', {
  skip,
}, async () => {
  const b = await bus('jb');
  b.bus.filterAdded('devices/j-sensor/#');
  const c = await bus('jc');
  try {
    c.bus.publish(msg('devices/j-sensor/early', 'e1'));
    c.bus.publish(msg('elsewhere/x', 'e2'));
    assert.equal(c.bus.counts.unwanted, 0, 'not settled: everything is published');
    await settled(c.bus);
    assert.equal(c.bus.interest?.subjects, subjectsOf('devices/j-sensor/#'), 'B’s set (heard or asked for)');
    c.bus.publish(msg('devices/j-sensor/late', 'l1'));
    c.bus.publish(msg('elsewhere/x', 'l2'));
    await until('B has e1 and l1', () => b.heard.messages.length === 2);
    assert.deepEqual(b.heard.messages, ['devices/j-sensor/early=e1', 'devices/j-sensor/late=l1']);
    assert.equal(c.bus.counts.unwanted, 1);
  } finally {
    await Promise.all([b.bus.close(), c.bus.close()]);
  }
});

test('cluster/interest: a change out of sequence makes the node ask again; a malformed one is refused', {
  skip,
}, async () => {
  const a = await bus('ka');
  const b = await bus('kb');
  const raw = await natsConnect({ servers: nats.url });
  try {
    b.bus.filterAdded('devices/k-sensor/telemetry');
    await settled(a.bus);
    await until('A knows B’s subject', () => a.bus.interest?.subjects === 1);
    // Under B's name, a change from an epoch A has not seen, mid-sequence: A forgets what it knew
    // of B and publishes everything until B itself is heard and asked again.
    raw.publish(interestSubject('kb'), JSON.stringify({ e: 'forged', s: 7, a: ['fg.m.x'] }));
    await until('A unsettled by it', () => a.bus.interest?.everything === true);
    a.bus.publish(msg('devices/k-sensor/telemetry', 'k1'));
    await until('B has k1 meanwhile', () => b.heard.messages.length === 1);
    await settled(a.bus);
    assert.equal(a.bus.interest?.subjects, 1, 'B’s real set again, not the forged subject');
    a.bus.publish(msg('x', 'unwanted'));
    assert.equal(a.bus.counts.unwanted, 1);

    const invalid = a.bus.counts.invalid;
    raw.publish(interestSubject('kz'), 'not json');
    raw.publish(interestSubject('kz'), JSON.stringify({ e: 'z1', s: 1, a: ['fg.m.bad subject'] }));
    raw.publish(interestSubject('kz'), JSON.stringify({ e: 'z1', s: -1 }));
    await until('three refused', () => a.bus.counts.invalid === invalid + 3);
    assert.equal(a.bus.interest?.everything, false, 'a refused announcement changes nothing');
  } finally {
    await raw.close();
    await Promise.all([a.bus.close(), b.bus.close()]);
  }
});

test('cluster/interest: a node NATS does not let hear the announcements publishes every message', {
  skip,
}, async () => {
  // A NATS whose permissions predate announcements: messages yes, `fg.i.*` no.
  const dir = mkdtempSync(join(tmpdir(), 'fleetgate-nats-old-'));
  const port = await freePort();
  const allow = '["fg.m.>", "fg.l.>", "_INBOX.>"]';
  writeFileSync(
    join(dir, 'nats.conf'),
    `listen: 127.0.0.1:${port}\nauthorization { users = [ { user: gw, password: pw, permissions: { publish: { allow: ${allow} }, subscribe: { allow: ${allow} } } } ] }\nno_auth_user: gw\n`,
  );
  let output = '';
  const child = spawn(NATS_SERVER, ['-c', join(dir, 'nats.conf')], { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout.on('data', (d: Buffer) => (output += d));
  child.stderr.on('data', (d: Buffer) => (output += d));
  const server = measured(child);
  try {
    await untilListening(port, child, 'nats-server', () => output);
    const servers = `nats://127.0.0.1:${port}`; // as user gw (no_auth_user)
    const a = await bus('oa', servers);
    const b = await bus('ob', servers);
    try {
      b.bus.filterAdded('devices/o-sensor/#');
      // NATS refuses A's subscription to the announcements: A hears no peer, so it must not
      // conclude that nobody listens — it publishes everything, for good (not only in its start's grace).
      await until('A deaf to the announcements', () => a.bus.interest?.deaf === true);
      assert.equal(a.bus.interest?.everything, true);
      for (let i = 0; ; i++) {
        a.bus.publish(msg('devices/o-sensor/t', `o${i}`));
        if (b.heard.messages.length > 0 || i >= 200) break;
        await new Promise((r) => setTimeout(r, 25));
      }
      assert.ok(b.heard.messages.length > 0, 'B hears what A publishes');
      assert.equal(a.bus.counts.unwanted, 0);
    } finally {
      await Promise.all([a.bus.close(), b.bus.close()]);
    }
  } finally {
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
