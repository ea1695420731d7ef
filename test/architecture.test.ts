// Dependency direction (STYLE.md): device-sim → firmware-sdk → firmware-sdk/protocol;
// gateway → provisioning/registry (read side only, but for the console's actions); provisioning never imports gateway;
// the SDK imports no server code.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { test } from 'node:test';
import { ROOT } from './helpers/run.ts';

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

const rules: { from: string; allow: (target: string) => boolean; why: string }[] = [
  { from: 'firmware-sdk', allow: (t) => t.startsWith('firmware-sdk/'), why: 'the SDK imports no server code' },
  {
    from: 'device-sim',
    allow: (t) => t.startsWith('firmware-sdk/') || t.startsWith('device-sim/'),
    why: 'device-sim is built on the SDK only',
  },
  {
    from: 'provisioning',
    allow: (t) => !t.startsWith('gateway/') && !t.startsWith('cli/') && !t.startsWith('device-sim/'),
    why: 'provisioning never imports the gateway or the CLI',
  },
  {
    from: 'edge',
    allow: (t) =>
      !t.startsWith('gateway/') &&
      !t.startsWith('cli/') &&
      (!t.startsWith('provisioning/') || t === 'provisioning/registry/records.ts'),
    why: 'edge/ serves every listener: it imports neither the gateway nor provisioning (records are data)',
  },
  {
    from: 'test',
    allow: (t) => !t.startsWith('bench/'),
    why: 'tests and benchmarks share harness/, they do not import each other',
  },
  {
    from: 'bench',
    allow: (t) => !t.startsWith('test/'),
    why: 'benchmarks and tests share harness/, they do not import each other',
  },
  {
    from: 'harness',
    allow: (t) => !t.startsWith('test/') && !t.startsWith('bench/'),
    why: 'harness/ is below tests and benchmarks',
  },
  {
    from: 'gateway',
    allow: (t) =>
      !t.startsWith('provisioning/') ||
      /^provisioning\/registry\/(reader|records|hex|open|schema|status|audit-appender|reasons|sql)\.ts$/.test(t),
    why: 'the gateway gets the read side of the registry only',
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

test('architecture/the scanner sees imports', () => {
  // Guards the guard: a scanner that finds nothing would pass every rule.
  assert.ok(imports('provisioning/enroll/pipeline.ts').includes('provisioning/registry/writer.ts'));
  assert.ok(imports('firmware-sdk/protocol/device-id.ts').includes('firmware-sdk/protocol/errors.ts'));
});
