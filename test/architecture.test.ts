// The dependency direction of docs/design.md ("Layout"), checked on every relative import:
//
//   bin → cli → gateway → provisioning → listeners → runtime → config → firmware-sdk → firmware-sdk/protocol
//   device-sim → firmware-sdk;  harness (test support) → product;  test, bench → harness
//
// Inside the gateway, the MQTT core, the HTTPS plane, policy and status know nothing of the
// surfaces beside them, and the console may read the cluster but not the other way round. A
// module's own unit tests (`*.test.ts` beside it) may use the harness; they are not checked here.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { test } from 'node:test';
import { ROOT } from '../harness/run.ts';

/** Test files count as sources here only for the test/bench rule. */
function sources(dir: string, withTests = dir === 'test'): string[] {
  let out: string[] = [];
  for (const entry of readdirSync(join(ROOT, dir), { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) out = out.concat(sources(path, withTests));
    else if (entry.name.endsWith('.ts') && (withTests || !entry.name.endsWith('.test.ts'))) out.push(path);
  }
  return out;
}

/** Relative imports of a file, as paths from the project root. */
function imports(file: string): string[] {
  const text = readFileSync(join(ROOT, file), 'utf8');
  return [
    ...text.matchAll(
      /(?:^|\n)\s*(?:import|export)[^'"]*?from\s+['"](\.[^'"]+)['"]|import\(\s*['"](\.[^'"]+)['"]\s*\)/g,
    ),
  ].map((m) => relative(ROOT, resolve(ROOT, dirname(file), (m[1] ?? m[2]) as string)));
}

const under =
  (...dirs: string[]) =>
  (t: string) =>
    dirs.some((d) => t.startsWith(`${d}/`));
/** What the product's lower layers may import: everything below them, nothing above. */
const FOUNDATION = ['firmware-sdk/protocol'];
const CONFIG = [...FOUNDATION, 'config'];
const RUNTIME = [...CONFIG, 'runtime'];
const LISTENERS = [...RUNTIME, 'listeners'];
const NOT_TEST_SUPPORT = (t: string) => !under('test', 'bench', 'harness')(t);
/** The registry's read side: what the gateway may use of provisioning. */
const REGISTRY_READ =
  /^provisioning\/registry\/(reader|records|hex|open|schema|status|audit-appender|reasons|sql)\.ts$/;

const rules: { from: string; allow: (target: string) => boolean; why: string }[] = [
  {
    from: 'firmware-sdk/protocol',
    allow: under('firmware-sdk/protocol'),
    why: 'the wire contract is the ground floor',
  },
  { from: 'firmware-sdk', allow: under('firmware-sdk'), why: 'the SDK imports no server code' },
  {
    from: 'device-sim',
    allow: under('firmware-sdk', 'device-sim'),
    why: 'device-sim is built on the SDK only',
  },
  { from: 'config', allow: under(...CONFIG), why: 'configuration sits on the wire contract alone' },
  { from: 'runtime', allow: under(...RUNTIME), why: 'runtime (files, allocator) sits below every server' },
  {
    from: 'listeners',
    allow: (t) => under(...LISTENERS)(t) || t === 'provisioning/registry/records.ts',
    why: 'listeners/ serves every listener: it imports neither the gateway nor provisioning (records are data)',
  },
  {
    from: 'provisioning',
    allow: (t) => under(...LISTENERS, 'provisioning')(t),
    why: 'provisioning never imports the gateway, the CLI or test support',
  },
  {
    from: 'gateway',
    allow: (t) => under(...LISTENERS, 'gateway')(t) || REGISTRY_READ.test(t),
    why: 'the gateway gets the read side of the registry only, and nothing above it',
  },
  {
    from: 'cli',
    allow: (t) => under(...LISTENERS, 'provisioning', 'gateway', 'cli')(t),
    why: 'the CLI is below bin/ only',
  },
  { from: 'bin', allow: NOT_TEST_SUPPORT, why: 'entry points never load test support' },
  {
    from: 'harness',
    allow: (t) => !under('test', 'bench')(t),
    why: 'harness/ is below tests and benchmarks',
  },
  { from: 'test', allow: (t) => !under('bench')(t), why: 'tests and benchmarks share harness/, not each other' },
  { from: 'bench', allow: (t) => !under('test')(t), why: 'benchmarks and tests share harness/, not each other' },
  // Inside the gateway.
  {
    from: 'gateway/mqtt',
    allow: (t) => !under('gateway/https', 'gateway/console', 'gateway/admin', 'gateway/cluster')(t),
    why: 'the MQTT core knows the cluster only through its ClusterLink interface, and no other surface',
  },
  {
    from: 'gateway/https',
    allow: (t) => !under('gateway/mqtt', 'gateway/console', 'gateway/admin', 'gateway/cluster')(t),
    why: 'the HTTPS plane knows no other surface',
  },
  {
    from: 'gateway/policy',
    allow: (t) => !t.startsWith('gateway/') || under('gateway/policy')(t),
    why: 'policy is pure rules',
  },
  {
    from: 'gateway/status',
    allow: (t) => !under('gateway/mqtt', 'gateway/https', 'gateway/console', 'gateway/admin', 'gateway/cluster')(t),
    why: 'status (check + live watcher) is below every surface',
  },
  {
    from: 'gateway/cluster',
    allow: (t) => !under('gateway/console', 'gateway/admin', 'gateway/https')(t),
    why: 'the console reads the cluster, never the other way round',
  },
];
// One exception, by file: the console's actions are the CLI's registry operations (the same
// writer, transaction, audit row and status event), run on the console's own registry thread.
const EXCEPTIONS = new Set(['gateway/console/store-worker.ts imports provisioning/registry/writer.ts']);

test('architecture/imports follow the dependency direction', () => {
  const violations: string[] = [];
  for (const rule of rules) {
    for (const file of sources(rule.from)) {
      for (const target of imports(file)) {
        if (!rule.allow(target) && !EXCEPTIONS.has(`${file} imports ${target}`))
          violations.push(`${file} imports ${target}: ${rule.why}`);
      }
    }
  }
  assert.deepEqual(violations, []);
});

test('architecture/every source folder has a rule', () => {
  const covered = new Set(rules.map((r) => r.from.split('/')[0]));
  const folders = readdirSync(ROOT, { withFileTypes: true })
    .filter((e) => e.isDirectory() && !e.name.startsWith('.') && !['node_modules', 'docs', 'data'].includes(e.name))
    .filter((e) => sources(e.name, true).length > 0)
    .map((e) => e.name);
  assert.deepEqual(
    folders.filter((f) => !covered.has(f)),
    [],
  );
  const gatewayFolders = readdirSync(join(ROOT, 'gateway'), { withFileTypes: true })
    .filter((e) => e.isDirectory() && sources(join('gateway', e.name)).length > 0)
    .map((e) => `gateway/${e.name}`);
  const ruled = new Set(rules.map((r) => r.from));
  // The console and admin are surfaces on top: they may use the others; the rest each have a rule.
  assert.deepEqual(
    gatewayFolders.filter((f) => !ruled.has(f) && f !== 'gateway/console' && f !== 'gateway/admin'),
    [],
  );
});

test('architecture/the scanner sees imports', () => {
  // Guards the guard: a scanner that finds nothing would pass every rule.
  assert.ok(imports('provisioning/enroll/pipeline.ts').includes('provisioning/registry/writer.ts'));
  assert.ok(imports('firmware-sdk/protocol/device-id.ts').includes('firmware-sdk/protocol/errors.ts'));
  assert.ok(imports('gateway/console/context.ts').some((t) => t.startsWith('gateway/cluster/')));
});
