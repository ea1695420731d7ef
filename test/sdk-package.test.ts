// Issue #16: the SDK installs the way a device software team gets it — built (ESM JavaScript +
// .d.ts by tsc), packed with `npm pack`, installed from the tarball into an empty project
// (offline), imported there by its package name, and its `fleetgate-device` bin run there.
import assert from 'node:assert/strict';
import { copyFileSync, cpSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { type AddressInfo, createServer } from 'node:net';
import { join } from 'node:path';
import { test } from 'node:test';
import { ROOT, run, tempDir } from '../harness/run.ts';

const SDK = join(ROOT, 'firmware-sdk');

test('sdk package/npm pack → install the tarball into an empty project → import it and run fleetgate-device there', {
  timeout: 180_000,
}, async (t) => {
  const dir = tempDir(t);
  const pkg = join(dir, 'pkg');
  mkdirSync(pkg);
  for (const f of ['package.json', 'README.md']) copyFileSync(join(SDK, f), join(pkg, f));
  cpSync(join(SDK, 'docs'), join(pkg, 'docs'), { recursive: true });
  // The build, into the copy (the checkout's own firmware-sdk/ is left alone: two test runs may share it).
  const build = await run(process.execPath, [
    join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'),
    '-p',
    join(SDK, 'tsconfig.build.json'),
    '--outDir',
    join(pkg, 'dist'),
  ]);
  assert.equal(build.code, 0, build.stdout + build.stderr);
  assert.ok(existsSync(join(pkg, 'dist', 'index.d.ts')), 'type declarations are built');
  const pack = await run('sh', [
    '-c',
    `cd '${pkg}' && npm pack --ignore-scripts --pack-destination '${dir}' --loglevel error`,
  ]);
  assert.equal(pack.code, 0, pack.stderr);
  const tarball = readdirSync(dir).find((f) => f.endsWith('.tgz'));
  assert.ok(tarball !== undefined, `a tarball (${pack.stdout})`);
  const list = await run('tar', ['-tzf', join(dir, tarball!)]);
  assert.match(list.stdout, /package\/dist\/index\.js/);
  const files = list.stdout.split('\n').filter(Boolean);
  assert.deepEqual(
    files.filter((f) => f.includes('.test.') || (f.endsWith('.ts') && !f.endsWith('.d.ts'))),
    [],
    'no tests and no TypeScript sources: .js and .d.ts only',
  );

  const app = join(dir, 'app');
  mkdirSync(app);
  // Tests stay on loopback: the SDK's three dependencies are taken from this checkout (npm
  // overrides with file: specs) instead of the registry; the package itself is installed by npm
  // from its tarball like any other (extracted, its bin linked).
  const deps = JSON.parse(readFileSync(join(SDK, 'package.json'), 'utf8')) as { dependencies: Record<string, string> };
  const overrides = Object.fromEntries(
    Object.keys(deps.dependencies).map((d) => [d, `file:${join(ROOT, 'node_modules', d)}`]),
  );
  writeFileSync(
    join(app, 'package.json'),
    JSON.stringify({ name: 'device-app', version: '1.0.0', private: true, type: 'module', overrides }),
  );
  const install = await run(
    'sh',
    [
      '-c',
      `cd '${app}' && npm install --offline --no-audit --no-fund --ignore-scripts --loglevel error '${join(dir, tarball!)}'`,
    ],
    { timeoutMs: 120_000 },
  );
  assert.equal(install.code, 0, `npm install of the tarball: ${install.stderr}`);

  const use = await run('sh', [
    '-c',
    `cd '${app}' && '${process.execPath}' --input-type=module -e "const sdk = await import('@fleetgate/firmware-sdk'); const e = new sdk.FleetgateError('CERT_REVOKED'); console.log(JSON.stringify({ exports: Object.keys(sdk).sort(), code: e.code, message: e.publicMessage }))"`,
  ]);
  assert.equal(use.code, 0, use.stderr);
  const out = JSON.parse(use.stdout) as { exports: string[]; code: string; message: string };
  for (const name of [
    'Device',
    'enrollWithToken',
    'enrollWithClaim',
    'renew',
    'generateKey',
    'createCsr',
    'loadIdentity',
    'FleetgateError',
  ]) {
    assert.ok(out.exports.includes(name), `exports ${name}`);
  }
  assert.deepEqual([out.code, out.message], ['CERT_REVOKED', 'certificate revoked']);

  const bin = join(app, 'node_modules', '.bin', 'fleetgate-device');
  const help = await run(process.execPath, [bin, '--help']);
  assert.equal(help.code, 0, help.stderr);
  assert.match(help.stdout, /enroll/);
  const missing = await run(process.execPath, [bin, 'status', '--identity', join(dir, 'no-such-identity'), '--json']);
  assert.notEqual(missing.code, 0);
  assert.match(missing.stderr, /"code":"[A-Z_]+"/, 'a coded JSON error from the installed CLI');

  // The packed README's links lead somewhere inside the package.
  const installed = join(app, 'node_modules', '@fleetgate', 'firmware-sdk');
  const readme = readFileSync(join(installed, 'README.md'), 'utf8');
  const links = [...readme.matchAll(/\]\(([^)#]+)(#[^)]*)?\)/g)].map((m) => m[1]!).filter((l) => !/^[a-z]+:/.test(l));
  assert.ok(links.length > 0, 'the README links its documentation');
  for (const link of links) assert.ok(existsSync(join(installed, link)), `README link ${link} is in the package`);

  // On a Node.js it does not support, the CLI says so before any network request (no token spent).
  const old = await olderNode();
  if (old === undefined)
    return t.diagnostic('no Node.js older than 22.12 on this machine: the runtime check ran as a unit test only');
  let connections = 0;
  const server = createServer((s) => {
    connections++;
    s.destroy();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.after(() => server.close());
  const port = (server.address() as AddressInfo).port;
  const ca = join(dir, 'ca.pem');
  writeFileSync(ca, 'not used');
  const enroll = await run(old, [
    bin,
    'enroll',
    '--server',
    `https://127.0.0.1:${port}`,
    '--ca',
    ca,
    '--out',
    join(dir, 'id'),
    '--token',
    'x',
    '--json',
  ]);
  assert.equal(enroll.code, 2, enroll.stderr);
  assert.match(enroll.stderr, /"code":"RUNTIME_UNSUPPORTED"/);
  assert.equal(connections, 0, 'nothing was sent');
});

/** A Node.js on PATH older than the SDK supports (the machine's own, here), if there is one. */
async function olderNode(): Promise<string | undefined> {
  const found = await run('sh', ['-c', 'which -a node nodejs 2>/dev/null || true']);
  for (const bin of found.stdout.split('\n').filter(Boolean)) {
    const v = await run(bin, ['--version']);
    const [major = 0, minor = 0] = v.stdout.trim().replace(/^v/, '').split('.').map(Number);
    if (v.code === 0 && (major < 22 || (major === 22 && minor < 12))) return bin;
  }
  return undefined;
}
