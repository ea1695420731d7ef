// Issue #16: the SDK installs the way a device software team gets it — built (ESM JavaScript +
// .d.ts by tsc), packed with `npm pack`, installed from the tarball into an empty project
// (offline), imported there by its package name, and its `fleetgate-device` bin run there.
import assert from 'node:assert/strict';
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
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
});
