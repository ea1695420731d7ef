// Issue #13: the operator console, driven end to end by headless Chromium (Debian's chromium,
// through playwright-core) against a real gateway: TLS refuses a browser without a certificate,
// a device certificate gets 403, an operator (PKCS#12 from `fleetgate operator issue`) revokes a
// connected device and a real MQTT client sees its session cut, an auditor looks but cannot act,
// and a page on another origin cannot make the operator's browser revoke anything.
// Screenshots of each page go to a temporary folder (its path is printed) for a person to look at.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import { auditRows, startTestFleet, type TestFleet } from '../harness/gateway.ts';
import { closed, connect } from '../harness/mqtt.ts';
import { type Credential, enrollDevice } from '../harness/pki.ts';
import { fileScope, fleetgate, run } from '../harness/run.ts';

const CHROMIUM = process.env.FLEETGATE_CHROMIUM ?? '/usr/bin/chromium';
const missing = !existsSync(CHROMIUM);
if (missing && process.env.CI === 'true')
  throw new Error(`${CHROMIUM} is missing: .ci/run installs Debian's chromium for the console tests`);
const skip = missing ? `no Chromium at ${CHROMIUM} (apt-get install chromium)` : false;

const scope = fileScope(after);
let fleet: TestFleet;
let browser: Browser;
let origin: string;
let shots: string;
const p12: Record<string, { file: string; password: string }> = {};
const cred: Record<string, Credential> = {};

async function issueP12(id: string, auditor: boolean): Promise<{ file: string; password: string }> {
  const file = join(fleet.dir, `${id}.p12`);
  const r = await fleetgate([
    'operator',
    'issue',
    id,
    '--p12',
    file,
    '--json',
    '--data',
    fleet.config.dataDir,
    ...(auditor ? ['--auditor'] : []),
  ]);
  assert.equal(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout) as { password: string; type: string; p12: string };
  assert.equal(out.type, auditor ? 'auditor' : 'operator');
  return { file: out.p12, password: out.password };
}

/** A browser context that presents this PKCS#12 bundle to the console (as a browser with it imported would). */
function contextWith(bundle?: { file: string; password: string }, pem?: Credential): Promise<BrowserContext> {
  return browser.newContext({
    ignoreHTTPSErrors: true, // the console's server certificate is from the fleet CA, not a public one
    viewport: { width: 1360, height: 900 },
    ...(bundle !== undefined && {
      clientCertificates: [{ origin, pfxPath: bundle.file, passphrase: bundle.password }],
    }),
    ...(pem !== undefined && { clientCertificates: [{ origin, certPath: pem.certFile, keyPath: pem.keyFile }] }),
  });
}

async function shot(page: Page, name: string): Promise<void> {
  await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
}

before(async () => {
  if (skip !== false) return;
  const { chromium } = await import('playwright-core');
  // Chromium beside a second test suite on two cores: the registry may answer slower than the
  // default 500 ms this test is not about.
  fleet = await startTestFleet(scope, { FLEETGATE_REGISTRY_TIMEOUT: '5s' });
  origin = `https://127.0.0.1:${fleet.gateway.ports.console}`;
  shots = process.env.FLEETGATE_SCREENSHOTS ?? mkdtempSync(join(tmpdir(), 'fleetgate-console-shots-'));
  mkdirSync(shots, { recursive: true });
  p12.alice = await issueP12('alice', false);
  p12.bob = await issueP12('bob', true);
  for (const id of ['s-live', 's-victim', 's-token'])
    cred[id] = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id, fleet: 'plant-7' });
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--disable-dev-shm-usage'] });
  scope.after(() => browser.close());
  console.log(`console screenshots: ${shots}`);
});

test('console/a browser without a client certificate is refused by TLS', { skip }, async () => {
  const context = await contextWith();
  const page = await context.newPage();
  // Chromium words the failed handshake in several ways (client auth, reset, not connected): no page either way.
  await assert.rejects(page.goto(`${origin}/`), /net::ERR_/);
  await context.close();
  // What the browser met: the server ends the handshake with a TLS alert, before any HTTP.
  const s = await run(
    'openssl',
    [
      's_client',
      '-connect',
      `127.0.0.1:${fleet.gateway.ports.console}`,
      '-CAfile',
      fleet.rootFile,
      '-servername',
      'localhost',
      '-ign_eof',
    ],
    { input: 'GET / HTTP/1.0\r\n\r\n', timeoutMs: 30_000 },
  );
  assert.match(
    s.stdout + s.stderr,
    /alert (certificate required|handshake failure)|tlsv13 alert certificate required/i,
  );
  assert.doesNotMatch(s.stdout, /HTTP\/1\.[01] \d{3}/);
});

test('console/a device certificate gets 403 and learns nothing', { skip }, async () => {
  const context = await contextWith(undefined, cred['s-token']);
  const page = await context.newPage();
  const response = await page.goto(`${origin}/devices`);
  assert.equal(response?.status(), 403);
  const text = await page.textContent('body');
  assert.match(text ?? '', /NOT_AUTHORIZED/);
  assert.doesNotMatch(text ?? '', /s-token|sensor|plant-7/);
  await context.close();
});

test('console/an operator finds a connected device, revokes it; the MQTT session is cut and the audit row written', {
  skip,
}, async () => {
  const device = await connect(fleet.mqttsUrl, cred['s-live'], { ca: fleet.rootFile });
  const cut = closed(device, 30_000);
  const context = await contextWith(p12.alice);
  const page = await context.newPage();

  // Overview: live numbers arrive over the event stream.
  await page.goto(`${origin}/`);
  await page.waitForSelector('body[data-live]', { timeout: 30_000 });
  assert.equal(await page.textContent('#v-connected'), '1');
  assert.match((await page.textContent('#t-connected')) ?? '', /sensor\s*mqtts\s*1/);
  assert.match((await page.textContent('header .who')) ?? '', /alice · operator/);
  await shot(page, '1-overview');

  // Devices: search by id prefix, open the device.
  await page.click('nav a[href="/devices"]');
  await page.fill('input[name="q"]', 's-li');
  await page.click('form.filters button[type="submit"]');
  assert.match((await page.textContent('#device-count')) ?? '', /^1 device$/);
  await shot(page, '2-devices');
  await page.click('a[href="/devices/s-live"]');
  assert.match((await page.textContent('main')) ?? '', /mqtts/); // its live session
  await shot(page, '3-device');

  // Revoke: a confirmation page first, then the result.
  await page.click('a.button:has-text("Revoke…")');
  assert.match((await page.textContent('.effect')) ?? '', /cannot be undone/);
  await page.selectOption('select[name="reason"]', 'keyCompromise');
  await shot(page, '4-confirm-revoke');
  await page.click('#confirm');
  assert.match((await page.textContent('.done')) ?? '', /s-live revoked \(keyCompromise\)/);
  assert.equal(await page.textContent('.facts .badge'), 'revoked');
  await shot(page, '5-revoked');

  await cut; // the real MQTT client saw its session cut
  const [row] = await auditRows(fleet.registry, (a) => a.action === 'device.revoke' && a.subject === 's-live');
  assert.equal(row?.actor, 'operator:alice');
  assert.equal(row?.detail.reason, 'keyCompromise');
  assert.equal(row?.detail.reasonCode, 1);
  const [disconnect] = await auditRows(
    fleet.registry,
    (a) => a.action === 'session.disconnect' && a.subject === 's-live',
  );
  assert.match(String(disconnect?.detail.code), /^(CERT|DEVICE)_REVOKED$/);

  // The device page shows the resulting state; its next connection is refused.
  await page.goto(`${origin}/devices/s-live`);
  assert.equal(await page.textContent('.facts .badge'), 'revoked');
  await assert.rejects(connect(fleet.mqttsUrl, cred['s-live'], { ca: fleet.rootFile }));

  // Issue an enrollment token from the console: shown once.
  await page.goto(`${origin}/devices/s-token`);
  await page.click('a.button:has-text("Issue enrollment token…")');
  await page.click('#confirm');
  const token = (await page.textContent('#token'))?.trim() ?? '';
  assert.ok(token.length >= 20, token);
  assert.equal(fleet.registry.getDevice('s-token')?.status, 'active');
  assert.ok(
    (await auditRows(fleet.registry, (a) => a.actor === 'operator:alice' && a.subject === 's-token')).length >= 1,
  );

  // The other pages, and the audit export as JSON lines.
  await page.goto(`${origin}/certificates?view=revoked`);
  assert.match((await page.textContent('main')) ?? '', /keyCompromise/);
  await shot(page, '6-certificates-revoked');
  await page.goto(`${origin}/certificates?view=findings`);
  // The refused reconnect above is a finding: a revoked certificate still seen connecting.
  assert.match((await page.textContent('table:below(#still-connecting)')) ?? '', /s-live\s*CERT_REVOKED × 1/);
  await shot(page, '7-findings');
  await page.goto(`${origin}/denylist`);
  await shot(page, '8-denylist');
  await page.goto(`${origin}/audit?device=s-live`);
  assert.match((await page.textContent('main')) ?? '', /device\.revoke/);
  await shot(page, '9-audit');
  const exported = await context.request.get(`${origin}/audit.jsonl?device=s-live`);
  assert.equal(exported.status(), 200);
  const lines = (await exported.text())
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { action: string; actor: string });
  assert.ok(lines.some((l) => l.action === 'device.revoke' && l.actor === 'operator:alice'));
  await context.close();
});

test('console/an auditor sees but cannot act', { skip }, async () => {
  const context = await contextWith(p12.bob);
  const page = await context.newPage();
  await page.goto(`${origin}/devices/s-victim`);
  assert.match((await page.textContent('header .who')) ?? '', /bob · auditor/);
  assert.equal(await page.locator('section.actions').count(), 0);
  assert.match((await page.textContent('main')) ?? '', /Read-only/);
  await shot(page, '10-auditor-device');
  const confirm = await page.goto(`${origin}/confirm?action=revoke&id=s-victim`);
  assert.equal(confirm?.status(), 403);
  const post = await context.request.post(`${origin}/act`, {
    form: { action: 'revoke', id: 's-victim', reason: 'keyCompromise', csrf: 'x' },
  });
  assert.equal(post.status(), 403);
  assert.equal(fleet.registry.getDevice('s-victim')?.status, 'active');
  await context.close();
});

test("console/a page on another origin cannot make the operator's browser revoke anything", { skip }, async () => {
  // The attacker's page posts a revoke form to the console; the browser attaches the operator's certificate.
  const evil: Server = createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end(`<!doctype html><form id="f" method="post" action="${origin}/act">
<input name="action" value="revoke"><input name="id" value="s-victim"><input name="reason" value="keyCompromise"><input name="csrf" value="guessed">
</form><script>document.getElementById('f').submit()</script>`);
  });
  await new Promise<void>((r) => evil.listen(0, '127.0.0.1', r));
  scope.after(() => new Promise((r) => evil.close(r)));
  const evilUrl = `http://127.0.0.1:${(evil.address() as { port: number }).port}/`;

  const context = await contextWith(p12.alice);
  const page = await context.newPage();
  const response = page.waitForResponse((r) => r.url() === `${origin}/act`);
  await page.goto(evilUrl);
  assert.equal((await response).status(), 403);
  assert.match((await page.textContent('body')) ?? '', /cross-site request refused/);
  // Even with the operator's real token for this action (a leaked page), the origin check refuses.
  const home = await context.newPage();
  await home.goto(`${origin}/confirm?action=revoke&id=s-victim`);
  const token = await home.getAttribute('input[name="csrf"]', 'value');
  const forged = await context.request.post(`${origin}/act`, {
    form: { action: 'revoke', id: 's-victim', reason: 'keyCompromise', csrf: token ?? '' },
    headers: { origin: 'http://127.0.0.1:1', 'sec-fetch-site': 'cross-site' },
  });
  assert.equal(forged.status(), 403);
  assert.equal(fleet.registry.getDevice('s-victim')?.status, 'active');
  assert.equal(
    fleet.registry.listAudit().filter((a) => a.subject === 's-victim' && a.action === 'device.revoke').length,
    0,
  );
  await context.close();
});

test('console/the PKCS#12 bundle opens with its password (as an OS or browser import does) and holds the key and the certificate', {
  skip,
}, async () => {
  const r = await run('openssl', ['pkcs12', '-in', p12.alice!.file, '-passin', 'env:P12_PASSWORD', '-nodes'], {
    env: { ...process.env, P12_PASSWORD: p12.alice!.password },
  });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /BEGIN PRIVATE KEY/);
  assert.match(r.stdout, /subject=CN\s*=\s*alice/);
  const wrong = await run('openssl', ['pkcs12', '-in', p12.alice!.file, '-passin', 'pass:not-the-password', '-nodes']);
  assert.notEqual(wrong.code, 0);
});
