import { chmodSync } from 'node:fs';
import type { FleetgateConfig } from '../config/config.ts';
import { dataPaths } from '../config/paths.ts';
import { ensureDir } from '../runtime/files.ts';
import { initCa } from './ca/authority.ts';
import { RegistryWriter } from './registry/writer.ts';

/**
 * `fleetgate init`: the data directory (0700), the CA and gateway certificate, and the
 * registry at the current schema. Idempotent: creates what is missing, overwrites nothing.
 */
export async function initDataDir(config: FleetgateConfig): Promise<{ created: string[] }> {
  const paths = dataPaths(config.dataDir, config.registry);
  ensureDir(paths.dataDir);
  chmodSync(paths.dataDir, 0o700);
  const created = await initCa(paths, config.ca);
  const registry = new RegistryWriter(paths.registry);
  try {
    if (created.length > 0) registry.appendAudit(config.actor, 'ca.init', null, { created, dataDir: paths.dataDir });
  } finally {
    registry.close();
  }
  return { created };
}
