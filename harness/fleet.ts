import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { RegistryReader } from '../provisioning/registry/reader.ts';
import { fleetgateOk, tempDir } from './run.ts';

/** An initialized data directory (CA + registry) in a temp dir, made by `fleetgate init`. */
export async function initFleet(t: TestContext) {
  const dir = tempDir(t);
  const data = join(dir, 'data');
  await fleetgateOk(['init', '--data', data]);
  return {
    dir,
    data,
    root: join(data, 'ca', 'root.crt'),
    intermediate: join(data, 'ca', 'intermediate.crt'),
    registry: join(data, 'registry.db'),
    /** Opens the registry read-only for assertions; closed after the test. */
    reader(): RegistryReader {
      const r = new RegistryReader(join(data, 'registry.db'));
      t.after(() => r.close());
      return r;
    },
  };
}
