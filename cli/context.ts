import { existsSync } from 'node:fs';
import { type FleetgateConfig, loadConfig } from '../config/config.ts';
import { type DataPaths, dataPaths } from '../config/paths.ts';
import { FleetgateError } from '../firmware-sdk/protocol/errors.ts';
import { type CertificateAuthority, loadCa } from '../provisioning/ca/authority.ts';
import { isPostgresUrl } from '../provisioning/registry/sql.ts';
import { RegistryWriter } from '../provisioning/registry/writer.ts';

/** Options every command takes. */
export interface CommonOptions {
  data?: string;
  config?: string;
  registry?: string;
  json?: boolean;
}

/**
 * What a command works with, opened lazily: a command that only reads the CA does not open
 * the registry, and nothing is created outside `fleetgate init`/`up`.
 */
export class CliContext {
  readonly config: FleetgateConfig;
  readonly paths: DataPaths;
  #registry: RegistryWriter | undefined;
  #ca: Promise<CertificateAuthority> | undefined;

  constructor(options: CommonOptions, flags: Record<string, string | readonly string[] | undefined> = {}) {
    this.config = loadConfig({
      ...(options.data !== undefined && { dataDir: options.data }),
      ...(options.config !== undefined && { configFile: options.config }),
      flags: { ...flags, ...(options.registry !== undefined && { registry: options.registry }) },
    });
    this.paths = dataPaths(this.config.dataDir, this.config.registry);
  }

  get actor(): string {
    return this.config.actor;
  }

  registry(): RegistryWriter {
    if (this.#registry === undefined) {
      if (!isPostgresUrl(this.paths.registry) && !existsSync(this.paths.registry)) {
        throw new FleetgateError(
          'CA_NOT_INITIALIZED',
          `no registry in ${this.paths.dataDir}: run \`fleetgate init --data ${this.paths.dataDir}\``,
        );
      }
      this.#registry = new RegistryWriter(this.paths.registry);
    }
    return this.#registry;
  }

  ca(): Promise<CertificateAuthority> {
    this.#ca ??= loadCa(this.paths);
    return this.#ca;
  }

  close(): void {
    this.#registry?.close();
  }
}

/** Runs `fn` with a context and always closes it. */
export async function withContext<T>(
  options: CommonOptions,
  fn: (ctx: CliContext) => Promise<T> | T,
  flags?: Record<string, string | undefined>,
): Promise<T> {
  const ctx = new CliContext(options, flags);
  try {
    return await fn(ctx);
  } finally {
    ctx.close();
  }
}
